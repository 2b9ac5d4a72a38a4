"""`python -m nanogpt.launch ARGS`: torchrun with the same arguments, ending with the worker's one-line error.

Plain torchrun ends a failed run with a 30-line ChildFailedError traceback of its own, after the error that
matters. Here the workers write their one-line user error to a file this process names ($NANOGPT_ERROR_FILE),
and a failed run ends with that line (exit status 2), or with one line naming the failed rank and its exit code
(a bug: the worker's traceback is above it in the log).

GPU slots: Snakemake runs several local train jobs at once and sets no CUDA_VISIBLE_DEVICES, so every job would
land on cuda:0. When CUDA_VISIBLE_DEVICES is unset, outside SLURM, for a run that may use CUDA, this launcher
claims nproc_per_node free GPUs through one flock'ed file per GPU index (released by the kernel when this
process dies, however it dies), waits while none are free, and gives the workers CUDA_VISIBLE_DEVICES. More
processes than GPUs is a one-line error: they would share GPUs, which NCCL refuses with a cryptic one.

On SIGTERM, rank 0 names the checkpoint it saved in a file this process gives ($NANOGPT_SAVED_FILE): the
last line says a checkpoint was saved only when one was.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from nanogpt import threads

ERROR_FILE_ENV = "NANOGPT_ERROR_FILE"
SAVED_FILE_ENV = "NANOGPT_SAVED_FILE"  # rank 0 names the checkpoint it saved on SIGTERM there
GPU_COUNT_ENV = "NANOGPT_GPU_COUNT"  # overrides the detected GPU count (tests; or to use fewer GPUs)
GPU_LOCK_DIR_ENV = "NANOGPT_GPU_LOCK_DIR"  # share one folder between users; default: a per-user temp folder
POLL_S = 5.0


def report_user_error(message: str) -> None:
    """Called by a worker: leave its one-line error for the launcher (no-op outside nanogpt.launch)."""
    _tell_launcher(ERROR_FILE_ENV, message)


def report_checkpoint_saved(message: str) -> None:
    """Called by rank 0 once its SIGTERM checkpoint is on disk: the launcher says so only then."""
    _tell_launcher(SAVED_FILE_ENV, message)


def _tell_launcher(env: str, message: str) -> None:
    path = os.environ.get(env)
    if path:
        try:
            Path(path).write_text(message + "\n")
        except OSError:
            pass


def stopped_message(signal_name: str, saved_file: str) -> str:
    """The launcher's last line after a stop: what rank 0 reported saving, or that nothing was saved."""
    try:
        saved = Path(saved_file).read_text().strip()
    except OSError:
        saved = ""
    if saved:
        return f"nanogpt train: stopped by {signal_name} after saving a checkpoint ({saved}): rerun to resume"
    return (f"nanogpt train: stopped by {signal_name} before a checkpoint was saved: rerun to resume from the "
            "newest earlier checkpoint")


def gpu_lock_dir() -> Path:
    """Where the per-GPU lock files live: $NANOGPT_GPU_LOCK_DIR, else a private folder in the temp dir."""
    configured = os.environ.get(GPU_LOCK_DIR_ENV)
    path = Path(configured) if configured else Path(tempfile.gettempdir()) / f"nanogpt-gpus-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def local_gpu_count() -> int:
    """$NANOGPT_GPU_COUNT if set, else the CUDA devices torch sees (0 without CUDA)."""
    configured = os.environ.get(GPU_COUNT_ENV)
    if configured is not None:
        return int(configured)
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _try_lock(path: Path) -> IO | None:
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")  # who holds it, for a curious user
    handle.flush()
    return handle


def claim_gpus(n: int, count: int, lock_dir: Path, log: Callable[[str], None] = print,
               poll_s: float = POLL_S) -> tuple[list[int], list[IO]]:
    """Lock `n` of the GPU indices 0..count-1 (all or none, then retry: no job holds some while waiting)."""
    waiting = False
    while True:
        held: list[tuple[int, IO]] = []
        for index in range(count):
            handle = _try_lock(lock_dir / f"gpu{index}.lock")
            if handle is not None:
                held.append((index, handle))
                if len(held) == n:
                    return [i for i, _ in held], [h for _, h in held]
        for _, handle in held:
            handle.close()
        if not waiting:
            log(f"nanogpt: waiting for {n} free GPU(s) of {count}: the others are held by running jobs "
                f"(lock files in {lock_dir})")
            waiting = True
        time.sleep(poll_s)


def wants_cuda(device: str) -> bool:
    """Whether a run on `device` (its train.device) takes GPUs we assign: auto or plain cuda. A cpu/mps run
    needs none, and an explicit cuda:N names its own GPU, which a remapping would move."""
    return device in ("auto", "cuda")


class TooFewGpusError(Exception):
    """More worker processes than GPUs: they would share GPUs, which NCCL refuses with a cryptic error."""


@contextlib.contextmanager
def gpu_slots(nproc: str, device: str, log: Callable[[str], None] = print) -> Iterator[list[int] | None]:
    """Claim GPUs for torchrun's workers and set CUDA_VISIBLE_DEVICES while the run lasts."""
    with claimed_gpus(int(nproc) if nproc.isdigit() else None, wants_cuda(device), log) as slots:
        yield slots


def parse_args(argv: list[str]) -> tuple[str, argparse.Namespace]:
    """The run's device (`--run-device`, ours: whether to claim GPUs; given by whoever resolved the run's
    settings, so the launcher never reads them) and torchrun's own arguments."""
    from torch.distributed.run import get_args_parser

    ours = argparse.ArgumentParser(add_help=False)
    ours.add_argument("--run-device", default="auto")
    known, rest = ours.parse_known_args(argv)
    return known.run_device, get_args_parser().parse_args(rest)


@contextlib.contextmanager
def claimed_gpus(n: int | None, wants_cuda: bool, log: Callable[[str], None] = print
                 ) -> Iterator[list[int] | None]:
    """Claim `n` free GPUs and set CUDA_VISIBLE_DEVICES while the block lasts; None when not ours to do (the
    user or SLURM chose the GPUs, the process count is not a number, the work runs on the CPU, no GPUs).

    Also used by `nanogpt sample` and `nanogpt eval` (n=1), so that they queue for a GPU instead of piling onto
    cuda:0 beside a training. Must run before the process initialises CUDA.
    """
    if "CUDA_VISIBLE_DEVICES" in os.environ or "SLURM_JOB_ID" in os.environ or n is None or not wants_cuda:
        yield None
        return
    count = local_gpu_count()
    if count == 0:
        yield None
        return
    if n > count:
        raise TooFewGpusError(
            f"nproc_per_node={n} but this machine has {count} GPU(s): expected launch.nproc_per_node <= "
            f"{count} (one GPU per process), or device: cpu"
        )
    lock_dir = gpu_lock_dir()
    indices, handles = claim_gpus(n, count, lock_dir, log)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, indices))
    log(f"nanogpt: CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']} (free GPUs claimed in {lock_dir})")
    try:
        yield indices
    finally:
        del os.environ["CUDA_VISIBLE_DEVICES"]
        for handle in handles:
            handle.close()


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import run

    device, args = parse_args(sys.argv[1:] if argv is None else argv)
    threads.set_wait_policy()  # the workers' OpenMP threads sleep instead of spinning (a shared CPU)
    files = {}
    for env in (ERROR_FILE_ENV, SAVED_FILE_ENV):
        fd, files[env] = tempfile.mkstemp(prefix="nanogpt-launch-", suffix=".txt")
        os.close(fd)
        os.environ[env] = files[env]
    try:
        with gpu_slots(str(args.nproc_per_node), device, _stderr):
            run(args)
    except TooFewGpusError as e:
        print(f"nanogpt train: error: {e}", file=sys.stderr)
        return 2
    except ChildFailedError as e:
        message = Path(files[ERROR_FILE_ENV]).read_text().strip()
        if message:
            print(message, file=sys.stderr)
            return 2
        rank, failure = e.get_first_failure()
        code = failure.exitcode
        if code in (143, -15, 130, -2):  # the workers stopped on SIGTERM or SIGINT, after their checkpoint
            name = "SIGTERM" if code in (143, -15) else "SIGINT"
            print(stopped_message(name, files[SAVED_FILE_ENV]), file=sys.stderr)
            return 143 if name == "SIGTERM" else 130
        print(f"nanogpt train: error: worker rank {rank} exited with code {code}: see its traceback above",
              file=sys.stderr)
        return 1
    except SignalException as e:  # the launcher itself was stopped (srun ending a step, SIGTERM, Ctrl-C)
        print(stopped_message(e.sigval.name, files[SAVED_FILE_ENV]).replace(
            "stopped by", "stopped (the workers too) by", 1), file=sys.stderr)
        return 128 + int(e.sigval)
    finally:
        for path in files.values():
            Path(path).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
