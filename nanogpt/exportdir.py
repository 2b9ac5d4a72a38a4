"""Whole folders out: an export is built in a temporary folder and swapped in, so a folder is either the old
export or the new one, never half of each. Each export records the files it wrote (`.nanogpt-export.json`);
only a folder with that record is replaced, and only those files: any other non-empty folder is refused unless
`--force`, and even then nothing else in it is deleted. A pipeline run folder is refused always.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from nanogpt import fileio, paths
from nanogpt.errors import ConfigError

log = logging.getLogger(__name__)

EXPORT_RECORD = ".nanogpt-export.json"  # written into every export folder: which files the export wrote
_FORMAT_OF_KIND = {"Hugging Face": "hf", "nanoGPT": "nanogpt"}
_MAX_RECORDED = 1000  # names in one record: an export writes a handful
_INNER_TEMP = ".nanogpt-export-tmp."  # the temp folder of an export written beside other files
_FORCE: contextvars.ContextVar[bool] = contextvars.ContextVar("nanogpt_export_force", default=False)


@contextlib.contextmanager
def forcing(force: bool) -> Iterator[None]:
    """Within it, exports may write into a folder that is not an earlier export (`nanogpt export --force`):
    files named like the export's are replaced, nothing else in the folder is touched."""
    token = _FORCE.set(force)
    try:
        yield
    finally:
        _FORCE.reset(token)


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def _format_of(kind: str) -> str:
    return _FORMAT_OF_KIND.get(kind, kind)


def read_export_record(folder: Path) -> tuple[dict | None, str]:
    """The record of an earlier export in `folder` ({format, files}) and, when there is none, why not."""
    path = folder / EXPORT_RECORD
    if not path.exists():
        return None, f"no {EXPORT_RECORD}"
    try:
        record = fileio.load_json_capped(path, fileio.SMALL_JSON_MAX_BYTES, "export record", ConfigError)
    except ConfigError as e:
        return None, f"an unreadable {EXPORT_RECORD}: {e}"
    files = record.get("files") if isinstance(record, dict) else None
    plain = isinstance(files, list) and len(files) <= _MAX_RECORDED and all(
        isinstance(n, str) and n not in ("", ".", "..", EXPORT_RECORD) and "/" not in n and "\\" not in n
        for n in files)
    if not plain or not isinstance(record.get("format"), str):
        return None, f"a {EXPORT_RECORD} without a format and a list of file names"
    return record, ""


def _check_out_path(out: Path, shown: str, kind: str) -> None:
    """The path itself: a folder of its own that we can write in (or create: its nearest existing ancestor is a
    folder we can write in)."""
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        where = "the current folder" if out == cwd else "a folder above the current one"
        raise ConfigError(f"--out {shown!r} is {where}: expected a folder of its own for the {kind} export "
                          f"(e.g. --out {_format_of(kind)}-export)")
    run_folder = paths.pipeline_run_folder(out)
    if run_folder is not None:  # --force or not: the train rule's files there are the pipeline's record
        raise ConfigError(f"--out {shown!r} is inside the pipeline's run folder {str(run_folder)!r}: expected a "
                          f"folder of its own for the {kind} export (e.g. --out {_format_of(kind)}-export)")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {shown!r} is a file: expected a folder to write the {kind} export into")
    ancestor = next(p for p in [out.parent, *out.parent.parents] if p.exists())
    if not ancestor.is_dir():
        raise ConfigError(f"--out {shown!r}: {str(ancestor)!r} is a file: expected a folder path to write the "
                          f"{kind} export into")
    folder = out if out.is_dir() else ancestor
    if not _writable(folder):
        raise ConfigError(f"--out {shown!r}: {str(folder)!r} is not writable by this user: expected a folder you "
                          f"can write the {kind} export into")


def check_out_dir(out: str | os.PathLike, marker: str, kind: str, force: bool | None = None) -> Path:
    """Where an export of `kind` may go, resolved: a new or empty folder, or one whose record says an earlier
    export of the same kind wrote it. Any other folder is refused unless `force` (default: `forcing`), since
    replacing it would delete what we did not write (a nanoGPT out_dir's train.log, a user's notes).

    `marker` is the export's main file (config.json, ckpt.pt), named in the messages.
    """
    shown, force = str(out), _FORCE.get() if force is None else force
    path = Path(out).expanduser().resolve()
    _check_out_path(path, shown, kind)
    if not path.is_dir() or not any(path.iterdir()) or force:
        return path
    record, why = read_export_record(path)
    if record is None:
        entries = sorted(p.name for p in path.iterdir() if p.name != EXPORT_RECORD)
        such = f"; {len(entries)} entries such as {entries[0]!r}" if entries else ""
        raise ConfigError(
            f"--out {shown!r} exists and holds no {marker} of an earlier `nanogpt export` ({why}{such}): expected a "
            f"new or empty folder, or --force to write the {kind} export beside its files (those named like the "
            "export's are replaced, nothing else is deleted)")
    if record["format"] != _format_of(kind):
        raise ConfigError(
            f"--out {shown!r} holds an earlier {record['format']!r} export: expected a new or empty folder or an "
            f"earlier {_format_of(kind)!r} export, or --force to replace the files that export wrote")
    return path


def _temp_dir(folder: Path, prefix: str) -> Path:
    """A new temp folder `<prefix>HOST-PID.XXXX.tmp` in `folder`, after removing those of exports that died."""
    for entry in list(folder.iterdir()):
        if fileio.left_by_dead_writer(entry.name, prefix):
            _remove(entry)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{fileio.temp_tag()}.", suffix=".tmp", dir=folder))


def _build(tmp: Path, out: Path, kind: str, write: Callable[[Path], None]) -> list[str]:
    """`write(tmp)`, then its record; the names written. A full disk becomes a one-line DiskFullError naming `out`."""
    try:
        write(tmp)
        names = sorted(p.name for p in tmp.iterdir())
        _write_record(tmp, kind, names)
    except Exception as e:
        full = fileio.disk_full_error(out, e)
        if full is not None:
            raise full from e
        raise
    return names


def _write_record(folder: Path, kind: str, names: list[str]) -> None:
    import json

    record = {"written_by": "nanogpt export", "format": _format_of(kind), "files": names}
    fileio.write_text(folder / EXPORT_RECORD, json.dumps(record, indent=2) + "\n")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _swap_in(out: Path, ours: set[str], kind: str, write: Callable[[Path], None]) -> None:
    """`out` new, empty or wholly an earlier export of ours: build a temp sibling, then rename it onto `out`. The
    earlier export is renamed aside first and deleted after, so `out` is never half-written."""
    missing = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out.name}.nanogpt-export."
    tmp = _temp_dir(out.parent, prefix)
    old = None
    try:
        _build(tmp, out, kind, write)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp's 0700 -> what mkdir would give
        if out.exists():
            old = tmp.with_name(tmp.name.removesuffix(".tmp") + ".old")
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old, out)
        for p in missing:  # parents this call created, deepest first
            with contextlib.suppress(OSError):
                p.rmdir()
        raise
    if old is not None:
        _discard_old(old, ours, out)


def _discard_old(old: Path, ours: set[str], out: Path) -> None:
    """Delete the earlier export renamed aside, entry by entry: only what its record lists. Anything else (put
    there while we exported) goes back into `out`, or stays in `old` with a warning."""
    try:  # the export itself is done: what cannot be tidied here is said, not raised
        for entry in old.iterdir():
            if entry.name in ours or entry.name == EXPORT_RECORD or fileio.left_by_dead_writer(entry.name, _INNER_TEMP):
                _remove(entry)
            elif not (out / entry.name).exists():
                os.replace(entry, out / entry.name)
        old.rmdir()
    except OSError as e:
        log.warning("kept %s, the earlier export set aside (%s): delete it when done", old, e.strerror or e)


def _write_beside(out: Path, ours: set[str], kind: str, write: Callable[[Path], None]) -> None:
    """`out` also holds files we did not write: build in a temp folder inside it, then move each new file in
    (one rename each) and remove the files of the earlier export that this one no longer writes. The record
    lists every file that may be ours at each moment, so a rerun after a crash cleans up; nothing else in
    `out` is touched."""
    tmp = _temp_dir(out, _INNER_TEMP)
    try:
        names = [n for n in _build(tmp, out, kind, write) if n != EXPORT_RECORD]
        clash = [n for n in names if (out / n).is_dir() and n not in ours]
        if clash:
            raise ConfigError(f"--out {str(out)!r} holds a folder {clash[0]!r}: expected no folder named like a "
                              f"file of the {kind} export")
        _write_record(out, kind, sorted(ours | set(names)))
        for name in names:
            if (out / name).is_dir():
                _remove(out / name)
            os.replace(tmp / name, out / name)
        for name in ours - set(names):
            _remove(out / name)
        _write_record(out, kind, names)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_folder(out: str | os.PathLike, marker: str, kind: str, write: Callable[[Path], None],
                 force: bool | None = None) -> Path:
    """Write an export: `write(tmp)` fills a temp folder, which then becomes `out`; returns `out`, resolved.

    `out` is checked first (check_out_dir). A new, empty or earlier-export folder is replaced whole by a rename,
    so a failed or killed export never leaves a half-written folder at `out`; a folder that also holds other
    files (allowed with `force`) gets the new files one rename each, and keeps its other files.
    `force` defaults to the `forcing` context (the CLI's --force).
    """
    out = check_out_dir(out, marker, kind, force)
    record = read_export_record(out)[0] if out.is_dir() else None
    ours = set(record["files"]) if record is not None else set()
    others = [p.name for p in out.iterdir() if p.name not in ours | {EXPORT_RECORD}
              and not fileio.left_by_dead_writer(p.name, _INNER_TEMP)] if out.is_dir() else []
    # a mount point, or a folder in a parent we may not write in, cannot be renamed: its files are replaced instead
    if others or (out.is_dir() and (os.path.ismount(out) or not _writable(out.parent))):
        _write_beside(out, ours, kind, write)
    else:
        _swap_in(out, ours, kind, write)
    return out


# ---- export to nanoGPT ----------------------------------------------------------------------------------
