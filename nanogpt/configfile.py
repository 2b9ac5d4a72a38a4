"""Text a user writes, read into plain data: config.yaml (with a one-line error at the bad line), `--key=value`
overrides as YAML scalars, and YAML 1.1's '6e-4' read as the number it means."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nanogpt.errors import ConfigError


def parse_overrides(args: list[str]) -> dict:
    """`--key=value` / `key=value` strings -> dict; values are parsed as YAML scalars (1e-3, true, null)."""
    out = {}
    for arg in args:
        text = arg.removeprefix("--")
        if "=" not in text:
            raise ConfigError(f"override {arg!r}: expected --key=value")
        key, raw = text.split("=", 1)
        import yaml  # here, not at the top: the package imports with torch alone (a bare GPU box)

        if raw.count("[") + raw.count("{") > 64:  # fileio.JSON_MAX_DEPTH: PyYAML would recurse, slowly, to its limit
            raise ConfigError(f"override {arg[:80]!r}: over 64 brackets: expected a number, true/false, null or text")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except (yaml.YAMLError, RecursionError) as e:  # `--x=[1`, `--x=a: b: c`, a thousand nested brackets
            problem = getattr(e, "problem", None) or type(e).__name__
            raise ConfigError(f"override {arg[:80]!r}: the value is not valid YAML ({problem}): expected a "
                              "number, true/false, null or text") from None
        out[key.replace("-", "_")] = floats_from_strings(value)
    return out


def load_yaml(path: str | Path) -> dict:
    """Read a YAML file with a one-line error for a missing or malformed file."""
    import yaml

    from nanogpt.fileio import check_config_files, not_a_file

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} {not_a_file(path)}: expected a YAML file")
    check_config_files([path])  # size, nesting, alias bombs, YTE: refused before PyYAML builds anything
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"malformed YAML in {str(path)!r}{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r}: expected a mapping at the top level, got {type(data).__name__}")
    return floats_from_strings(data)


def floats_from_strings(obj: Any) -> Any:
    """Turn YAML 1.1's string '6e-4' into 6e-4 everywhere (PyYAML needs a dot for float exponents)."""
    if isinstance(obj, dict):
        return {k: floats_from_strings(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [floats_from_strings(v) for v in obj]
    if isinstance(obj, str):
        try:
            if any(c in obj for c in "eE") and obj.strip()[0] in "+-0123456789.":
                return float(obj)
        except ValueError:
            pass
    return obj
