"""How many torch threads a CPU run uses, and how its OpenMP threads wait: spinning while the CPUs are the run's,
sleeping once another process wants them.

torch's CPU wheel runs its intra-op threads on GNU OpenMP (libgomp; KMP_BLOCKTIME is Intel OpenMP's and does
nothing here). A training step has hundreds of parallel regions, and between two of them the threads wait:
- spinning (GOMP_SPINCOUNT, libgomp's default 300,000) keeps them ready. On a quiet 2-core machine 2 spinning
  threads took 24 ms a step of the CPU config against 36 ms on 1 thread. But when another process takes a core,
  a spinning thread keeps its core while the sibling it waits for sits in the run queue: 6-70x slower steps.
- sleeping at once (`OMP_WAIT_POLICY=PASSIVE`) degrades gracefully (a loaded 2-thread run stayed within 2x of 1
  thread), but each wake-up costs so much (a halted virtual CPU in particular) that 2 passive threads were no
  faster than 1 on the quiet machine (benchmarks/README.md, "A quiet machine").
So a single-process CPU training spins (SPIN_COUNT) when its threads find idle CPUs at start (`choose_waits`),
and sleeps otherwise; a spinning run whose steps slow down (`SpinGuard`: another process arrived) checkpoints
and goes on in a fresh process that sleeps (nanogpt.train, nanogpt.cli). `nanogpt sample` does the same when it
writes its samples at the end (a StepWatch over its tokens; drawing them again gives the same samples); every
other process sleeps. libgomp reads the policy once, when torch is loaded, hence a fresh process. The policy
changes no result.

Threads: one per MATMUL_WORK_PER_THREAD multiply-adds of the model's matmuls, within the CPUs the process was
given: the CPU config (128 wide) on 2 cores uses both, a 64-wide model one. The count depends only on the CPUs
the process was given and the model's shape, never on the load at start, so a run's thread count (and its
floating-point results) is the same at every attempt on the same machine; a resumed run keeps the count its
checkpoint recorded (nanogpt.train), wherever it resumes.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path

from nanogpt.errors import ConfigError

# Multiply-adds of one n_embd x n_embd matmul over a micro-batch (batch_size * block_size * n_embd^2) per
# thread. The CPU config (12 x 64 tokens, 128 wide) is 12.6M: on a quiet 2-core machine 2 passive threads took
# 39.4 ms a step against 44.3 on one; 64 wide (3.1M) was faster on one thread, passive or loaded.
MATMUL_WORK_PER_THREAD = 2**22
THREADS_ENV = "NANOGPT_THREADS"  # overrides `auto` for every run (a benchmark's fixed thread count; a shared box)
WAIT_POLICY = {"OMP_WAIT_POLICY": "PASSIVE"}
# Spins before a waiting thread sleeps (GOMP_SPINCOUNT), while the CPUs are the run's: on the quiet 2-core machine
# 10,000 was as fast as libgomp's 300,000 (23.8 vs 24.2 ms a step) and 1,000 slower (26.9); the fewer, the
# less a spinning thread wastes before the guard notices another process.
SPIN_COUNT = 10_000
WAITS_ENV = "NANOGPT_WAITS"  # how this process's OpenMP threads wait, as chosen here: PASSIVE, SPIN or CONTENDED
PASSIVE, SPIN, CONTENDED = "passive", "spin", "contended"  # contended: passive for good, after a SpinGuard stop
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


def planned_threads(requested: int | str | None, n_embd: int, tokens: int,
                    environ: Mapping[str, str] = os.environ) -> int:
    """The thread count apply_threads would set in this process (no torch needed)."""
    return choose_threads(_requested_from_env(requested, environ), n_embd, tokens, available_cpus(environ))


def apply_threads(requested: int | str | None, n_embd: int, tokens: int,
                  environ: Mapping[str, str] = os.environ) -> int:
    """Set torch's intra-op threads for this process (see choose_threads) and return the count.

    Call it in each training process before the first torch op that runs in parallel: torch keeps its OpenMP
    pool, and switching counts mid-run only adds a resize.
    """
    import torch

    threads = planned_threads(requested, n_embd, tokens, environ)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def set_wait_policy(waits: str = PASSIVE, environ: MutableMapping[str, str] = os.environ) -> None:
    """How the OpenMP threads of this process (if torch is not loaded yet) and the ones it starts wait: PASSIVE
    (sleep at once) or SPIN (SPIN_COUNT spins first). A user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins, and a
    chain of processes that met contention (CONTENDED) never spins again."""
    if WAITS_ENV not in environ and ("OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ):
        return
    if environ.get(WAITS_ENV) == CONTENDED:
        waits = CONTENDED
    environ.pop("OMP_WAIT_POLICY", None)
    environ.pop("GOMP_SPINCOUNT", None)
    environ.update({"GOMP_SPINCOUNT": str(SPIN_COUNT)} if waits == SPIN else WAIT_POLICY)
    environ[WAITS_ENV] = waits


def describe_waits(environ: Mapping[str, str] = os.environ) -> str:
    """How the OpenMP threads wait, for the training log."""
    waits = environ.get(WAITS_ENV)
    if waits == SPIN:
        return f"spinning waits ({SPIN_COUNT:,} spins: the CPUs were idle at start)"
    if waits in (PASSIVE, CONTENDED):
        return "sleeping waits" + (" (the CPUs are shared)" if waits == CONTENDED else "")
    chosen = [f"{k}={environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in environ]
    return f"waits as set: {', '.join(chosen)}" if chosen else "libgomp's default waits"


def cpu_times(stat: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(idle, total) clock ticks of all CPUs since boot (idle counts iowait; total counts steal), or None."""
    try:
        ticks = [int(v) for v in stat.read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return (ticks[3] + ticks[4], sum(ticks)) if len(ticks) == 8 else None


def idle_cpus(seconds: float = 0.2, sample: Callable[[], tuple[int, int] | None] = cpu_times,
              cpus: int | None = None, windows: int = 2) -> float | None:
    """CPUs' worth of idle time in the idlest of `windows` windows of `seconds` each (None where the kernel does
    not say). The idlest, not the mean: a job starting beside the run (the pipeline's log relay, Snakemake's
    bookkeeping) busies a CPU for a moment, another program's work stays."""
    best = None
    for _ in range(windows):
        before = sample()
        time.sleep(seconds)
        after = sample()
        if before is None or after is None or after[1] <= before[1]:
            return None
        idle = (cpus or os.cpu_count() or 1) * (after[0] - before[0]) / (after[1] - before[1])
        best = idle if best is None else max(best, idle)
    return best


def choose_waits(threads: int, environ: Mapping[str, str] = os.environ,
                 idle: Callable[[], float | None] | None = None) -> str:
    """SPIN when each of a run's `threads` finds an idle CPU now (all but half of one: another program's work
    takes a whole CPU, and SpinGuard covers what the probe misses; `idle` measures it, by default idle_cpus),
    else PASSIVE."""
    if environ.get(WAITS_ENV) == CONTENDED:
        return CONTENDED
    if threads <= 1:
        return PASSIVE  # a single thread never waits for another
    free = (idle or idle_cpus)()
    return SPIN if free is not None and free >= threads - 0.5 else PASSIVE


class SpinGuard:
    """Says when a spinning run's steps have slowed down: the median of the last WINDOW steps above SLOWDOWN x
    the median of its first steps (after SKIP). On a quiet machine step times vary by a few percent; with a
    busy loop on each core, spinning 2-thread steps were 12x slower (benchmarks/README.md, "A busy machine")."""

    SKIP, BASELINE, WINDOW, SLOWDOWN = 5, 10, 8, 2.5

    def __init__(self) -> None:
        self.seen = 0
        self.first: list[float] = []
        self.recent: deque[float] = deque(maxlen=self.WINDOW)
        self.pace: float | None = None

    def contended(self, seconds: float) -> bool:
        """Record one step's time; True once the recent steps are SLOWDOWN x slower than the first ones."""
        self.seen += 1
        if self.seen <= self.SKIP:
            return False
        if self.pace is None:
            self.first.append(seconds)
            if len(self.first) == self.BASELINE:
                self.pace = statistics.median(self.first)
            return False
        self.recent.append(seconds)
        return len(self.recent) == self.WINDOW and self.now() > self.SLOWDOWN * self.pace

    def now(self) -> float:
        """The recent pace: the median of the last WINDOW steps (seconds)."""
        return statistics.median(self.recent)

    def describe(self) -> str:
        """What happened, for the log, once `contended` said so."""
        return f"steps slowed from {self.pace * 1000:.1f} to {self.now() * 1000:.1f} ms: another process is using the CPUs"


class ContendedError(Exception):
    """A spinning process stopped because another process took its CPUs (SpinGuard): a training at a checkpoint,
    a sampler before it wrote anything."""


class StepWatch:
    """A SpinGuard fed by a loop that calls this once per step (a sampling process: once per token, its time the
    gap since the last call); raises ContendedError once the steps have slowed down."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.guard, self.clock = SpinGuard(), clock
        self.last: float | None = None

    def __call__(self, *_: object) -> None:
        now = self.clock()
        if self.last is not None and self.guard.contended(now - self.last):
            raise ContendedError(self.guard.describe())
        self.last = now


def continue_passive(environ: MutableMapping[str, str] = os.environ) -> None:
    """Replace this process by the same command whose OpenMP threads sleep when they wait: a training resumes from
    the checkpoint just saved, a sampler draws again; on the same thread count, so the results are unchanged."""
    set_wait_policy(CONTENDED, environ)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, dict(environ))
