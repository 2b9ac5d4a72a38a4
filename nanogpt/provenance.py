"""Provenance: what a result was made from, so it can be traced and reproduced."""

from __future__ import annotations

import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "numpy", "tiktoken", "transformers", "datasets", "snakemake", "nanogpt-workflow")


def git_commit(path: str | Path = ".") -> str | None:
    """The commit of the checkout (with '-dirty' when it has changes), or None outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(config: dict, dataset_meta: dict | None = None) -> dict:
    meta = dataset_meta or {}
    return {
        "config": config,
        "dataset": {k: meta.get(k) for k in ("dataset", "source", "train_tokens", "val_tokens", "vocab_size")},
        "packages": package_versions(),
        "python": platform.python_version(),
        "host": platform.node(),
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
