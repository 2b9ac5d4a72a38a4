"""Training progress on the console while Snakemake runs: one line per run every few seconds, with an ETA.

The trainer logs a `progress: iter 120/2000 (6%), loss 2.3456, 12,345 tokens/s, ETA 3m12s` line at the first and
last step and at most once per PROGRESS_EVERY_S seconds in between. The train rule pipes all of its output
through `python -m nanogpt.progress --run NAME --log FILE --full-log FULL`, which
- writes every line to FULL (the run folder's train.log; the attempts before it are kept as train.log.1, .2 ...),
- writes every line but the per-iteration ones to FILE, the log Snakemake knows (and prints when the job fails:
  short, and ending with the one-line error of a failed run),
- copies the progress, eval, done and stop lines to the console, prefixed with `[NAME]`, so that parallel
  trainings stay readable.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO, TextIO

PROGRESS_EVERY_S = 15.0
MARK = "progress: "
# The trainer's lines worth a console line: progress, evals (`step N: train loss ...`), the end, resume, stop and
# the switch to sleeping waits.
CONSOLE = re.compile(r"^(progress: |step \d+: |done: |resuming from |these settings came back|SIGTERM: |SIGINT: "
                     r"|steps slowed from )")
# What only the full log keeps: the per-iteration lines (tens of thousands in a long run).
ITERATION = re.compile(r"^iter \d+: loss ")
KEEP_ATTEMPTS = 4  # earlier attempts' full logs kept beside the newest: train.log.1 (the last) .. train.log.4
HORIZON_ITERS = 200  # the ETA's smoothing: time per iteration averaged over roughly this many iterations


def format_duration(seconds: float) -> str:
    """42s, 3m12s, 2h05m: short enough for a console line."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Throttled progress lines for one training attempt; the clock is injectable for tests."""

    def __init__(self, max_iters: int, tokens_per_iter: int, every_s: float = PROGRESS_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_iters, self.tokens_per_iter, self.every_s, self.clock = max_iters, tokens_per_iter, every_s, clock
        self.last_iter: int | None = None
        self.last_time = self.last_emit = 0.0
        self.sec_per_iter: float | None = None  # wall time, evals and checkpoints included: what the ETA needs
        self.step_dt: float | None = None  # the optimizer steps alone: what tokens/s describes

    def update(self, iter_num: int, loss: float, dt: float) -> str | None:
        """Record a logged step; returns a line when one is due (first, last, or every_s after the previous)."""
        now = self.clock()
        first = self.last_iter is None
        if not first and iter_num > self.last_iter:
            n = iter_num - self.last_iter
            sample = (now - self.last_time) / n
            w = 1.0 - math.exp(-n / HORIZON_ITERS) if self.sec_per_iter is not None else 1.0
            self.sec_per_iter = sample if self.sec_per_iter is None else (1 - w) * self.sec_per_iter + w * sample
        self.step_dt = dt if self.step_dt is None else 0.9 * self.step_dt + 0.1 * dt
        self.last_iter, self.last_time = iter_num, now
        if not (first or iter_num >= self.max_iters or now - self.last_emit >= self.every_s):
            return None
        self.last_emit = now
        return self.line(iter_num, loss)

    def line(self, iter_num: int, loss: float) -> str:
        pct = 100.0 * iter_num / self.max_iters if self.max_iters else 100.0
        tps = f"{self.tokens_per_iter / self.step_dt:,.0f} tokens/s" if self.step_dt else "? tokens/s"
        remaining = max(0, self.max_iters - iter_num)
        if remaining == 0:
            eta = "ETA 0s"
        else:
            eta = f"ETA {format_duration(remaining * self.sec_per_iter)}" if self.sec_per_iter else "ETA ?"
        return f"{MARK}iter {iter_num}/{self.max_iters} ({pct:.0f}%), loss {loss:.4f}, {tps}, {eta}"


def relay(lines: Iterable[bytes], log: BinaryIO, console: TextIO, run: str, full_log: BinaryIO | None = None) -> None:
    """Every line to `full_log`, all but the per-iteration ones to `log`, the CONSOLE ones to `console`."""
    for raw in lines:
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        if full_log is not None:
            full_log.write(raw)
            full_log.flush()
        if full_log is None or not ITERATION.match(text):
            log.write(raw)
            log.flush()
        if CONSOLE.match(text):
            try:
                console.write(f"[{run}] {text.removeprefix(MARK)}\n")
                console.flush()
            except (OSError, ValueError):  # no console left: the logs still get everything
                pass


def rotate(path: Path, keep: int = KEEP_ATTEMPTS) -> None:
    """train.log -> train.log.1 -> ... -> train.log.<keep>: an earlier attempt's log survives the rerun."""
    for i in range(keep, 0, -1):
        older = path.with_name(f"{path.name}.{i - 1}") if i > 1 else path
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{i}"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nanogpt.progress", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="the run's name, the console lines' prefix")
    p.add_argument("--log", required=True, help="the log file to write (replaced): every line but the iterations")
    p.add_argument("--full-log", help="every line (earlier attempts' files are kept as FILE.1, FILE.2, ...)")
    args = p.parse_args(argv)
    # Ctrl-C or a scheduler's SIGTERM reaches the whole job: this relay stays until the trainer has written its
    # last line (the checkpoint it saves on SIGTERM, its error), and ends with its output (EOF).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(open(args.log, "wb"))
        full = None
        if args.full_log:
            Path(args.full_log).parent.mkdir(parents=True, exist_ok=True)
            rotate(Path(args.full_log))
            full = stack.enter_context(open(args.full_log, "wb"))
        relay(sys.stdin.buffer, log, sys.stderr, args.run, full)
    return 0


if __name__ == "__main__":
    sys.exit(main())
