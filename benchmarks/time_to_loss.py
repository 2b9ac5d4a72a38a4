"""Time to a target val loss, side by side in one run: nanoGPT's train.py, our default run, our fast recipe.

    .venv/bin/python benchmarks/time_to_loss.py                       # 1 thread each, 1 run per side
    .venv/bin/python benchmarks/time_to_loss.py --repeats 3           # alternated: nanoGPT, ours, fast, nanoGPT, ...
    .venv/bin/python benchmarks/time_to_loss.py --sides fast --extra 'lr3=--muon_lr=0.03'   # try a variant
    python3 benchmarks/time_to_loss.py --task gpu                     # the baby GPT on a GPU, to val loss 1.47

Every side trains the CPU Shakespeare task (char-level tiny Shakespeare, 4 layers x 128, block 64, batch 12) as a
fresh process, evaluates every 50 iterations on 20 batches per split, and is timed from its process start to the
first eval whose val loss is <= the target (1.90): the clock includes start-up, evaluations and checkpoints, as a
user waiting for the model would count them. nanoGPT is the README CPU config (`config/train_shakespeare_char.py
--device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4
--n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`) with --eval_interval=50; ours are
config.yaml's `shakespeare_char_cpu` (the default run) and `shakespeare_char_cpu_fast` (the recipe), each with
eval_interval 50. The reference checkout and the data are prepared as in compare_nanogpt.py (nothing downloaded).
`--task gpu`: the baby GPT (nanoGPT's config/train_shakespeare_char.py as it is, 5000 iterations, compiled) against
`shakespeare_char` and `shakespeare_char_fast`, to val loss 1.47, with the same evaluation cadence.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare_nanogpt import CPU_CONFIG, default_ref, prepare_both  # noqa: E402

EVAL_LINE = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)", re.M)
ITER_LINE = re.compile(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms", re.M)  # nanoGPT's and ours alike
TASKS = {
    "cpu": {"target": 1.90, "ours": {"default": "shakespeare_char_cpu", "fast": "shakespeare_char_cpu_fast"},
            "nanogpt": [f"--{k}={v}" for k, v in CPU_CONFIG.items()] + [
                "--device=cpu", "--compile=False", "--log_interval=1", "--max_iters=2000", "--lr_decay_iters=2000"]},
    "gpu": {"target": 1.47, "ours": {"default": "shakespeare_char", "fast": "shakespeare_char_fast"}, "nanogpt": []},
}


def timed_run(cmd: list[str], cwd: Path, env: dict) -> tuple[list[tuple[float, int, float]], float, str]:
    """Run `cmd`; return each eval line as (seconds since the process started, iteration, val loss), the total
    wall time and the output. Lines are timed as they arrive (unbuffered child)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    evals, lines = [], []
    for line in proc.stdout:
        lines.append(line)
        if m := EVAL_LINE.match(line):
            evals.append((time.perf_counter() - t0, int(m.group(1)), float(m.group(3))))
    proc.wait()
    wall = time.perf_counter() - t0
    out = "".join(lines)
    if proc.returncode != 0:
        sys.exit(f"time_to_loss: error: {' '.join(cmd)} exited {proc.returncode}:\n{out[-3000:]}")
    return evals, wall, out


def side_command(side: str, task: dict, ref: Path, data_dir: Path, work: Path, extra: dict[str, list[str]],
                 eval_interval: int) -> tuple[list[str], Path]:
    """(command, cwd) of one side; its output folder is emptied first (a leftover checkpoint would resume)."""
    out_dir = work / f"run-{side}"
    shutil.rmtree(out_dir, ignore_errors=True)
    cadence = [f"--eval_interval={eval_interval}", "--eval_iters=20"]
    if side == "nanoGPT":
        return [sys.executable, "train.py", "config/train_shakespeare_char.py", *task["nanogpt"], *cadence,
                f"--out_dir={out_dir}"], ref
    ours = task["ours"]
    name, overrides = (ours[side], []) if side in ours else (ours["fast"], extra[side])
    return [sys.executable, "-m", "nanogpt.cli", "train", "--config", str(ROOT / "config.yaml"), "--name", name,
            "--data-dir", str(data_dir), "--out-dir", str(out_dir), *cadence, *overrides], ROOT


def summarize(evals: list[tuple[float, int, float]], wall: float, target: float, out: str) -> dict:
    """The first eval at or below the target, the last eval, and the median logged iteration time (iterations
    after the 5th, as compare_nanogpt.py counts them)."""
    hit = next(((t, it, v) for t, it, v in evals if v <= target), None)
    times = [float(ms) for it, ms in ITER_LINE.findall(out) if int(it) > 5]
    return {"time_to_target_s": hit[0] if hit else None, "iter_at_target": hit[1] if hit else None,
            "final_val_loss": evals[-1][2], "final_iter": evals[-1][1], "wall_s": wall,
            "ms_per_iter": statistics.median(times) if times else None,
            "curve": [(round(t, 2), it, v) for t, it, v in evals]}


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", default=default_ref(), help="nanoGPT checkout (default $NANOGPT_REF, else "
                   "benchmarks/reference/nanoGPT)")
    p.add_argument("--task", choices=sorted(TASKS), default="cpu", help="cpu: the CPU Shakespeare config to 1.90 "
                   "(default); gpu: the baby GPT to 1.47")
    p.add_argument("--target", type=float, help="val loss to reach (default: the task's)")
    p.add_argument("--eval-interval", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every side (default 1)")
    p.add_argument("--repeats", type=int, default=1, help="runs per side, alternated")
    p.add_argument("--sides", default="nanoGPT,default,fast", help="comma-separated: nanoGPT, default, fast, or "
                   "names given by --extra")
    p.add_argument("--extra", action="append", default=[], metavar="NAME=OVERRIDES",
                   help="a variant of the fast recipe: NAME='--key=value --key=value' (repeatable)")
    p.add_argument("--out", help="results JSON (default benchmarks/out/time_to_loss_TASK.json)")
    args = p.parse_args()
    task = TASKS[args.task]
    args.target = args.target or task["target"]
    ref = Path(args.ref)
    if not (ref / "train.py").is_file():
        sys.exit(f"time_to_loss: error: --ref {str(ref)!r} has no train.py: expected a nanoGPT checkout")
    extra = {}
    for spec in args.extra:
        name, _, overrides = spec.partition("=")
        extra[name] = overrides.split()
    sides = args.sides.split(",")
    work = ROOT / "benchmarks" / "out" / f"time_to_loss_{args.task}"
    work.mkdir(parents=True, exist_ok=True)
    data_dir = prepare_both(ref, work)["ours_dir"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    loads = [load_average()]
    for r in range(args.repeats):
        for side in sides:
            cmd, cwd = side_command(side, task, ref, data_dir, work, extra, args.eval_interval)
            evals, wall, out = timed_run(cmd, cwd, env)
            runs[side].append(summarize(evals, wall, args.target, out))
            loads.append(load_average())
            s = runs[side][-1]
            print(f"[{r + 1}/{args.repeats}] {side}: {s['time_to_target_s'] or float('nan'):.1f}s to val <= "
                  f"{args.target} (iter {s['iter_at_target']}), final val {s['final_val_loss']:.4f} at iter "
                  f"{s['final_iter']}, wall {wall:.1f}s, load {loads[-1]}", flush=True)
    table = report(runs, args, loads)
    args.out = args.out or str(ROOT / "benchmarks" / "out" / f"time_to_loss_{args.task}.json")
    Path(args.out).write_text(json.dumps({"args": vars(args), "load_average": loads, "runs": runs,
                                          "table": table}, indent=2))
    print(f"written {args.out}")


def report(runs: dict[str, list[dict]], args, loads: list[str]) -> list[dict]:
    """The median of each side over its repeats, and its speed-up over nanoGPT's median time to the target."""
    def med(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    ref_t = med(r["time_to_target_s"] for r in runs.get("nanoGPT", []))
    print(f"\ntime to val loss <= {args.target}, {args.threads} thread(s), eval every {args.eval_interval} iters x 20 "
          f"batches, {args.repeats} run(s) per side alternated (median); load average {loads[0]} .. {loads[-1]}")
    print("| side | time to target (s) | iter at target | ms/iter | final val loss (iter) | wall (s) | "
          "speed-up vs nanoGPT |")
    print("|---|---|---|---|---|---|---|")
    table = []
    for side, rs in runs.items():
        t = med(r["time_to_target_s"] for r in rs)
        row = {"side": side, "time_to_target_s": t, "iter_at_target": med(r["iter_at_target"] for r in rs),
               "ms_per_iter": med(r["ms_per_iter"] for r in rs),
               "final_val_loss": med(r["final_val_loss"] for r in rs), "final_iter": rs[-1]["final_iter"],
               "wall_s": med(r["wall_s"] for r in rs), "speedup": ref_t / t if ref_t and t else None}
        table.append(row)
        fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
        print(f"| {side} | {fmt(t, '.1f')} | {fmt(row['iter_at_target'], '.0f')} | {fmt(row['ms_per_iter'], '.1f')} | "
              f"{row['final_val_loss']:.4f} ({row['final_iter']}) | {row['wall_s']:.1f} | {fmt(row['speedup'], '.2f')}x |")
    return table


if __name__ == "__main__":
    main()
