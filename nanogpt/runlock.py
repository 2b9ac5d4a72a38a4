"""One trainer per run folder, and trainers that die with the process that started them.

The lock is an flock on RUN_DIR/.lock: the kernel releases it when its holder dies, however it dies, so a killed
run never leaves a stale lock behind. (flock works across processes of one machine, and across nodes on
filesystems with shared locking: NFSv4, Lustre and GPFS.)
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from nanogpt.errors import BusyError

LOCK_NAME = ".lock"
# A trainer killed with its parent saves a checkpoint at the end of its step: give it that long to let go.
LOCK_WAIT_S = 60.0
_PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def run_folder_lock(run_dir: str | os.PathLike, log=print, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold RUN_DIR/.lock while training; another live holder is waited for, then a BusyError naming it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + wait_s
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                if time.monotonic() >= deadline:
                    raise BusyError(
                        f"run folder {str(run_dir)!r} is in use by {holder}: expected one trainer per run; wait for "
                        "it to finish or stop it, then rerun"
                    ) from None
                if not announced:
                    log(f"waiting up to {wait_s:.0f}s for {holder} to release {path}")
                    announced = True
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send `sig` when our parent dies (torchrun starts workers in their own session, so a
    SIGKILL of the pipeline's process group would otherwise leave them training). SIGTERM makes the trainer
    save a checkpoint and exit. A no-op where prctl does not exist."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)
