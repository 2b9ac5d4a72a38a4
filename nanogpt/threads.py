"""How many torch threads a CPU run uses, and how its OpenMP threads wait (fast alone, and no collapse on a busy machine).

torch's CPU wheel runs its intra-op threads on GNU OpenMP (libgomp; KMP_BLOCKTIME is Intel OpenMP's and does
nothing here). By default a libgomp thread spins 300,000 times (milliseconds) at every barrier before it sleeps.
When another process takes a core, the spinning thread keeps its core while its descheduled sibling waits in the
run queue, and every parallel region (hundreds per training step) waits for it. On 2 shared cores, 2 threads
made the CPU config 6-70x slower than 1 thread. Two settings (benchmarks/README.md, "A busy machine" and "CPU
threads and waits"):

- `OMP_WAIT_POLICY=PASSIVE`: waiting threads sleep, so a loaded 2-thread run stayed within 2x of 1 thread. It
  must be in the environment before torch is imported (libgomp reads it once, at load): `set_wait_policy`.
  A bounded spin (GOMP_SPINCOUNT 100 to 10,000) was measured too: no faster than PASSIVE on a busy machine,
  and up to 3x slower (benchmarks/wait_policy.py); untested on a quiet one.
- one thread per MATMUL_WORK_PER_THREAD multiply-adds of the model's matmuls, within the CPUs the process was
  given: the CPU config (128 wide) on 2 cores uses both, a 64-wide model one.

The choice depends only on the CPUs the process was given and the model's shape, never on the load at start,
so a run's thread count (and its floating-point results) is the same at every attempt on the same machine; a
resumed run keeps the count its checkpoint recorded (nanogpt.train), wherever it resumes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from nanogpt.errors import ConfigError

# Multiply-adds of one n_embd x n_embd matmul over a micro-batch (batch_size * block_size * n_embd^2) per
# thread. The CPU config (12 x 64 tokens, 128 wide) is 12.6M: on a quiet 2-core machine 2 passive threads took
# 39.4 ms a step against 44.3 on one; 64 wide (3.1M) was faster on one thread, passive or loaded.
MATMUL_WORK_PER_THREAD = 2**22
THREADS_ENV = "NANOGPT_THREADS"  # overrides `auto` for every run (a benchmark's fixed thread count; a shared box)
WAIT_POLICY = {"OMP_WAIT_POLICY": "PASSIVE"}
CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPUs' worth of time a container's CPU quota allows (cgroup v2 cpu.max, else v1 cfs quota), or None.

    Docker's --cpus and Kubernetes' CPU limits set it; affinity still shows every core, so threads = cores
    would spend most of the run throttled.
    """
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1"):
        return None
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _positive_int(text: str | None) -> int | None:
    try:
        value = int(text or "")
    except ValueError:
        return None
    return value if value > 0 else None


def available_cpus(environ: Mapping[str, str] = os.environ, root: Path = CGROUP_ROOT) -> int:
    """The CPUs one training process may use: its affinity and container quota, shared among the node's
    torchrun workers ($LOCAL_WORLD_SIZE), and at most $OMP_NUM_THREADS (Snakemake sets it to the rule's
    threads, SLURM jobs' to the allocation)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, max(1, math.floor(limit)))
    cpus = max(1, cpus // (_positive_int(environ.get("LOCAL_WORLD_SIZE")) or 1))
    omp = _positive_int(environ.get("OMP_NUM_THREADS"))
    return min(cpus, omp) if omp else cpus


def choose_threads(requested: int | str | None, n_embd: int, tokens: int, available: int) -> int:
    """torch's intra-op threads for a run: `requested` when it is a number, else (`auto`/None) one thread per
    MATMUL_WORK_PER_THREAD of tokens * n_embd^2 (tokens: batch_size * block_size), within `available`."""
    if requested is not None and requested != "auto":
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ConfigError(f"threads={requested!r}: expected auto or a positive integer")
        return requested
    useful = tokens * n_embd * n_embd // MATMUL_WORK_PER_THREAD
    return max(1, min(available, useful))


def _requested_from_env(requested: int | str | None, environ: Mapping[str, str]) -> int | str | None:
    """$NANOGPT_THREADS stands in for `auto` (an explicit per-run number still wins)."""
    if requested not in (None, "auto") or not environ.get(THREADS_ENV):
        return requested
    value = _positive_int(environ[THREADS_ENV])
    if value is None:
        raise ConfigError(f"{THREADS_ENV}={environ[THREADS_ENV]!r}: expected a positive integer")
    return value


def apply_threads(requested: int | str | None, n_embd: int, tokens: int,
                  environ: Mapping[str, str] = os.environ) -> int:
    """Set torch's intra-op threads for this process (see choose_threads) and return the count.

    Call it in each training process before the first torch op that runs in parallel: torch keeps its OpenMP
    pool, and switching counts mid-run only adds a resize.
    """
    import torch

    threads = choose_threads(_requested_from_env(requested, environ), n_embd, tokens, available_cpus(environ))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def set_wait_policy(environ: MutableMapping[str, str] = os.environ) -> None:
    """OMP_WAIT_POLICY=PASSIVE for the processes started after this (torchrun's workers), unless the user chose
    a wait policy or spin count. libgomp reads it when torch is imported, so it cannot be set from inside a
    process that has already imported torch."""
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        environ.update(WAIT_POLICY)
