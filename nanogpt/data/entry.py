"""A `datasets:` entry: which kind of source it names and its settings, checked before any job starts."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from nanogpt.errors import ConfigError
from nanogpt.names import suggest
from nanogpt.settings import CORPUS_DEFAULTS, TEXT_DEFAULTS, DatasetSettings

SOURCE_KEYS = ("source", "hf", "files", "path")  # exactly one: where the data comes from
SETTING_KEYS = tuple(f.name for f in fields(DatasetSettings) if f.name not in ("name", "kind"))
DATASET_KEYS = SOURCE_KEYS + SETTING_KEYS
# A `path:` file with one of these endings is a corpus of documents (read like `files:`); any other file is one
# text, split by characters like a `source:` text.
CORPUS_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")


def dataset_kind(spec: dict) -> str:
    """source | hf | files (as written), or for `path:` entries: text (one text file) | corpus (documents)."""
    if "path" not in spec:
        return next(k for k in ("source", "hf", "files") if k in spec)
    path = Path(str(spec["path"])).expanduser()
    return "text" if path.is_file() and path.suffix.lower() not in CORPUS_SUFFIXES else "corpus"


def as_files_spec(spec: dict) -> dict:
    """A corpus `path:` entry as the `files:` entry it stands for: the file, the glob, or a folder's data files."""
    path = Path(str(spec["path"])).expanduser()
    if path.is_dir():
        found = sorted(str(p) for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        found = [str(spec["path"])]
    return {**{k: v for k, v in spec.items() if k != "path"}, "files": {"paths": found}}
SHA256_RE = re.compile(r"[0-9a-f]{64}")


def check_dataset(spec: dict, name: str) -> DatasetSettings:
    """A `datasets:` entry: known keys, one kind of source, and its settings (before any job starts)."""
    where = f"datasets.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}={spec!r}: expected a mapping")
    for key in spec:
        if key not in DATASET_KEYS:
            raise ConfigError(f"unknown key {where}.{key}{suggest(key, list(DATASET_KEYS))}")
    kinds = [k for k in SOURCE_KEYS if k in spec]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: has {kinds or 'none'} of source / hf / files / path: expected exactly one")
    if "source" in spec:
        src = spec["source"]
        if not isinstance(src, dict) or not isinstance(src.get("url"), str) or "sha256" not in src:
            raise ConfigError(f"{where}.source={src!r}: expected a mapping with url and sha256")
        if not isinstance(src["sha256"], str) or not SHA256_RE.fullmatch(src["sha256"]):
            raise ConfigError(f"{where}.source.sha256={src['sha256']!r}: expected 64 lowercase hex digits")
    elif "path" in spec:
        if not isinstance(spec["path"], str) or not spec["path"].strip():
            raise ConfigError(f"{where}.path={spec['path']!r}: expected a text file, a folder or a glob of data files")
    elif not isinstance(spec[kinds[0]], dict):
        raise ConfigError(f"{where}.{kinds[0]}={spec[kinds[0]]!r}: expected a mapping")
    kind = dataset_kind(spec)
    defaults = TEXT_DEFAULTS if kind in ("source", "text") else CORPUS_DEFAULTS
    settings = {k: spec[k] for k in SETTING_KEYS if k in spec}
    if "vocab_from" in spec:
        names = spec["vocab_from"]
        settings["vocab_from"] = tuple(names) if isinstance(names, list) else names
    return DatasetSettings(name=name, kind=kind, **defaults | settings)
