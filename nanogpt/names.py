"""The one rule for every entry name, and the did-you-mean hint of every unknown name or key."""

from __future__ import annotations

import difflib
import re

from nanogpt.errors import ConfigError

# The one rule for every entry name (datasets, runs, samples, evals): names become folder names and command-line
# arguments, so they hold only letters, digits and . _ - and start with a letter or digit (no "..", no spaces, no
# shell syntax).
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
_NAME_RE = re.compile(NAME_PATTERN)


def check_name(name: object, where: str) -> str:
    """`name` if it follows NAME_PATTERN, else a ConfigError naming it."""
    if isinstance(name, bool | int | float) or name is None:  # YAML read the key as a number, boolean or null
        raise ConfigError(f"{where} name {name!r} is a {type(name).__name__} in YAML, not text: expected a name, "
                          f"quoted if it looks like a number (\"{name}\")")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"{where} name {name!r} is not allowed: expected 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def suggest(key: str, known: list[str]) -> str:
    """' (did you mean 'x'?)' for the closest of `known`, or ''."""
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
