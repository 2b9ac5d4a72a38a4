"""A/B timing of one training step (forward, backward, fused AdamW) with variants interleaved round by round,
so load from other processes on a shared machine hits every variant alike.

    .venv/bin/python benchmarks/train_step_ab.py --variants ours,ref,ours-t1,ours-bf16 --rounds 5
    .venv/bin/python benchmarks/train_step_ab.py --n-embd 512 --n-layer 2 --block 64 --variants ours,ours-bf16

Variants: ours / ref (nanoGPT's model.py from --ref), suffixes -t1 (1 thread), -bf16 (bf16 autocast),
-compile (torch.compile; its compile time is reported separately).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nanogpt.model import GPT, GPTConfig  # noqa: E402


def build(variant: str, cfg: dict, ref: Path):
    torch.manual_seed(0)
    if variant.startswith("ref"):
        spec = importlib.util.spec_from_file_location("nanogpt_reference_model", ref / "model.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up
        spec.loader.exec_module(mod)
        model = mod.GPT(mod.GPTConfig(**cfg))
        opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")  # nanoGPT: fused only on cuda
    else:
        model = GPT(GPTConfig(**cfg))
        opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    fwd = model
    compile_s = 0.0
    if "-compile" in variant:
        fwd = torch.compile(model)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if "-bf16" in variant else contextlib.nullcontext
    threads = 1 if "-t1" in variant else os.cpu_count()
    return model, fwd, opt, ctx, threads, compile_s


def step(fwd, opt, ctx, x, y) -> None:
    with ctx():
        _, loss = fwd(x, y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--variants", default="ours,ref,ours-t1")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--vocab", type=int, default=65)
    p.add_argument("--steps", type=int, default=20, help="steps per round per variant")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cpu-time", action="store_true",
                   help="time steps by process CPU time (user + sys) instead of wall time: steadier on a loaded machine, "
                        "meaningful with 1 thread")
    p.add_argument("--ref", default=os.environ.get("NANOGPT_REF", str(ROOT / "benchmarks" / "reference" / "nanoGPT")))
    a = p.parse_args()
    cfg = dict(n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd, block_size=a.block, vocab_size=a.vocab,
               bias=False, dropout=0.0)
    x = torch.randint(a.vocab, (a.batch, a.block))
    y = torch.randint(a.vocab, (a.batch, a.block))
    clock = time.process_time if a.cpu_time else time.perf_counter
    setups = {}
    for v in a.variants.split(","):
        model, fwd, opt, ctx, threads, _ = build(v, cfg, Path(a.ref))
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        for _ in range(3):  # warm-up; includes compilation for -compile
            step(fwd, opt, ctx, x, y)
        setups[v] = (fwd, opt, ctx, threads, time.perf_counter() - t0)
    times: dict[str, list[float]] = {v: [] for v in setups}
    for _ in range(a.rounds):
        for v, (fwd, opt, ctx, threads, _) in setups.items():
            torch.set_num_threads(threads)
            for _ in range(a.steps):
                t0 = clock()
                step(fwd, opt, ctx, x, y)
                times[v].append(clock() - t0)
    base = statistics.median(times[next(iter(times))])
    print(f"config {cfg} batch {a.batch}; {a.rounds} rounds x {a.steps} steps, interleaved")
    for v, ts in times.items():
        med = statistics.median(ts)
        print(f"  {v:<16} median {med * 1000:7.2f} ms/iter  (p25 {statistics.quantiles(ts, n=4)[0] * 1000:6.2f})"
              f"  vs first {base / med:5.2f}x  warm-up(3 steps) {setups[v][4]:.1f}s")


if __name__ == "__main__":
    main()
