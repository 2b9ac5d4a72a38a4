"""config.yaml against its JSON schema, as one line: where the first problem is, and what was expected.

Snakemake's own `validate` reports a failure with the whole schema (hundreds of lines) and no hint; this check
runs first, so the user reads the path of the bad value (`runs.tiny.train`), the value, and for a key the
schema does not know, the closest key it does know.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nanogpt.config import suggest
from nanogpt.errors import ConfigError
from nanogpt.fileio import short_repr


def check_top_level_keys(config: dict, schema_path: str | os.PathLike) -> None:
    """Refuse a top-level key the schema does not know (`run:` for `runs:`) before the entries are checked: a
    misspelled section would otherwise read as an empty one."""
    known = sorted(_schema(schema_path).get("properties") or {})
    unknown = sorted(str(k) for k in config if k not in known)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]}{suggest(unknown[0], known)}: expected one of {known}")


def check_schema(config: dict, schema_path: str | os.PathLike) -> None:
    """Refuse `config` in one line if it breaks the schema at `schema_path` (a YAML JSON-schema file)."""
    import jsonschema

    schema = _schema(schema_path)
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        raise ConfigError(describe(error))


def describe(error: Any) -> str:
    """One line for a jsonschema ValidationError: the dotted path, the value, and what the schema expects."""
    where = ".".join(str(p) for p in error.absolute_path) or "config.yaml"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = sorted(error.schema.get("properties") or {})
        extra = sorted(k for k in error.instance if k not in known)
        key = extra[0] if extra else "?"
        label = f"{where}.{key}" if error.absolute_path else str(key)
        return f"unknown key {label}{suggest(str(key), known)}: expected one of {known}"
    if error.validator == "type":
        return f"{where}={short_repr(error.instance)}: expected {_types(error.validator_value)}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    return f"{where}={short_repr(error.instance)}: {' '.join(error.message.split())[:200]}"


def _schema(path: str | os.PathLike) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text())


def _types(value: str | list) -> str:
    names = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
             "number": "a number", "boolean": "true or false", "null": "null"}
    kinds = value if isinstance(value, list) else [value]
    return " or ".join(names.get(k, k) for k in kinds)
