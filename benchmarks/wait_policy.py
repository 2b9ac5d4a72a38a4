"""OpenMP waits and thread counts for the CPU config's training step, each arm a fresh process, arms alternated.

    .venv/bin/python benchmarks/wait_policy.py                    # 40 steps per run, 2 rounds: ~1 min quiet
    .venv/bin/python benchmarks/wait_policy.py --rounds 3 --spins 300,1000,3000

libgomp reads OMP_WAIT_POLICY and GOMP_SPINCOUNT once, when torch loads, so every arm is its own process. Each
trains nanoGPT's README CPU config (4 x 128, block 64, batch 12) in the default dtype (bf16 autocast on CPUs
with bf16 units, else fp32) with our model and fused AdamW, and prints the median step time and the process CPU
time per step. Arms: 1 thread; all cores with passive waits; all cores with each --spins count; all cores with
libgomp's default (300,000 spins). A run past --max-run-s is stopped and marked.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEP = """
import json, statistics, sys, time, torch
sys.path.insert(0, {root!r})
from nanogpt.settings import GPTConfig
from nanogpt.model import GPT
from nanogpt.runtime import pick_dtype
torch.set_num_threads({threads})
dtype = pick_dtype("auto", torch.device("cpu"), 128)
torch.manual_seed(0)
model = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, dropout=0.0, bias=False))
opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
g = torch.Generator().manual_seed(1)
times = []
cpu0 = time.process_time()
for _ in range({steps}):
    t0 = time.perf_counter()
    x, y = torch.randint(0, 65, (12, 64), generator=g), torch.randint(0, 65, (12, 64), generator=g)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        _, loss = model(x, y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - t0)
print(json.dumps({{"ms": statistics.median(times[5:]) * 1e3, "cpu_ms": (time.process_time() - cpu0) / {steps} * 1e3,
                  "dtype": str(dtype)}}))
"""
WAIT_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "NANOGPT_THREADS")


def arms(cpus: int, spins: list[int]) -> dict[str, tuple[int, dict[str, str]]]:
    out = {"1 thread": (1, {"OMP_WAIT_POLICY": "PASSIVE"}),
           f"{cpus} threads, PASSIVE": (cpus, {"OMP_WAIT_POLICY": "PASSIVE"})}
    for n in spins:
        out[f"{cpus} threads, GOMP_SPINCOUNT={n}"] = (cpus, {"GOMP_SPINCOUNT": str(n)})
    out[f"{cpus} threads, libgomp default spin"] = (cpus, {})
    return out


def run_arm(threads: int, env: dict[str, str], steps: int, max_run_s: float) -> dict | None:
    clean = {k: v for k, v in os.environ.items() if k not in WAIT_ENV}
    code = STEP.format(root=str(ROOT), threads=threads, steps=steps)
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=clean | env, capture_output=True, text=True,
                              timeout=max_run_s)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        sys.exit(f"wait_policy: error: a step run exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40, help="training steps per run (the first 5 untimed)")
    p.add_argument("--rounds", type=int, default=2, help="runs per arm, arms alternated (default 2)")
    p.add_argument("--spins", default="1000,10000", help="GOMP_SPINCOUNT values to try (default 1000,10000)")
    p.add_argument("--max-run-s", type=float, default=60.0, help="stop a run after this long (default 60)")
    args = p.parse_args()
    cpus = len(os.sched_getaffinity(0))
    table = arms(cpus, [int(s) for s in args.spins.split(",")])
    results: dict[str, list[dict | None]] = {label: [] for label in table}
    for r in range(args.rounds):
        for label, (threads, env) in table.items():
            res = run_arm(threads, env, args.steps, args.max_run_s)
            results[label].append(res)
            shown = "over --max-run-s" if res is None else f"{res['ms']:.1f} ms/step, CPU {res['cpu_ms']:.1f} ms/step"
            print(f"round {r + 1} | {label:<36} | {shown} | load {os.getloadavg()[0]:.1f}", flush=True)
    base = statistics.median(x["ms"] for x in results["1 thread"] if x)
    print(f"\n| arm ({args.steps} steps, {args.rounds} rounds) | ms/step (median of runs) | CPU ms/step | vs 1 thread |")
    print("|---|---|---|---|")
    for label, runs in results.items():
        done = [x for x in runs if x]
        if not done:
            print(f"| {label} | over {args.max_run_s:.0f} s | | |")
            continue
        ms, cpu = statistics.median(x["ms"] for x in done), statistics.median(x["cpu_ms"] for x in done)
        print(f"| {label} | {ms:.1f} | {cpu:.1f} | {base / ms:.2f}x |")


if __name__ == "__main__":
    main()
