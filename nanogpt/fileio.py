"""Atomic writes: every file a later step trusts is written to a temp name in the same folder, then renamed.

Temp names carry the writer's host and pid (`.model.pt.HOST-PID.XXXX.tmp`), so the next writer of the same
file can tell a temp file left by a killed process from one that a live process is still writing.
Finished files get the permissions the umask gives a new file (0644 under umask 022), not mkstemp's 0600.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from nanogpt.errors import DiskFullError

# A write that fails with less than this much free space left is reported as a full disk: torch.save and
# numpy report ENOSPC as a generic I/O error ("basic_ios::clear: iostream error").
_NEARLY_FULL_BYTES = 64 * 1024 * 1024


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode `open()` would give a new file under the current umask."""
    return 0o666 & ~_umask()


def _host() -> str:
    return socket.gethostname().split(".")[0].replace("-", "_") or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temps(dest: str | os.PathLike) -> list[Path]:
    """Delete temp files of `dest` whose writer (on this host) is dead; returns what was removed."""
    dest = Path(dest)
    removed = []
    prefix = f".{dest.name}.{_host()}-"
    if not dest.parent.is_dir():
        return removed
    for tmp in dest.parent.iterdir():
        if not (tmp.name.startswith(prefix) and tmp.name.endswith(".tmp")):
            continue
        pid = tmp.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _disk_full(path: Path, error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(error, OSError | RuntimeError):
        return False
    try:
        return shutil.disk_usage(path).free < _NEARLY_FULL_BYTES
    except OSError:
        return False


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `dest`; on success it is fsynced and renamed onto `dest`, on error removed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.{_host()}-{os.getpid()}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, file_mode())
        os.replace(tmp_path, dest)
    except BaseException as e:
        tmp_path.unlink(missing_ok=True)
        if _disk_full(dest.parent, e):
            free = shutil.disk_usage(dest.parent).free
            raise DiskFullError(
                f"no space left on the device holding {str(dest)!r} ({free / 1e6:.0f} MB free): expected room "
                "for the file; free some space and rerun"
            ) from e
        raise


def write_text(dest: str | os.PathLike, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


def write_json(dest: str | os.PathLike, obj: object) -> None:
    write_text(dest, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
