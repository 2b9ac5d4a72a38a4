"""`nanogpt bench`: time training iterations of a model shape, nanoGPT's bench.py as a subcommand."""

from __future__ import annotations

import statistics
import time

import torch

from nanogpt.config import resolve_run
from nanogpt.errors import ConfigError
from nanogpt.model import GPT
from nanogpt.optim import build_optimizer
from nanogpt.runtime import mfu_or_none, peak_flops_for, place


def bench(run_overrides: dict, steps: int = 20, warmup: int = 5, data_dir: str | None = None,
          threads: int | None = None) -> dict:
    """Median time of a full optimizer step (forward, backward, AdamW or Muon) on random or real data.

    `threads` sets torch's intra-op threads: on a CPU shared with other processes, fewer threads than cores
    avoids OpenMP barriers waiting on descheduled threads (measured 5x faster for the CPU config under load).
    """
    if threads is not None:
        if threads <= 0:
            raise ConfigError(f"threads={threads}: expected a positive integer")
        torch.set_num_threads(threads)
    entry = {"dataset": "bench", "model": {"vocab_size": 50304}, "train": {}}
    run = resolve_run(entry, "bench", run_overrides)
    t, m = run.train, run.model
    placement = place(t.device, t.dtype, m.n_embd)
    device, dtype = placement.device, placement.dtype
    torch.manual_seed(t.seed)
    model = GPT(run.gpt_config(m.vocab_size or 50304)).to(device)
    optimizer = build_optimizer(model, t, device.type, dtype)  # AdamW, or Muon + AdamW (--optimizer=muon)
    fwd = torch.compile(model) if t.compile else model
    if data_dir:
        from nanogpt.data.prepare import BatchSampler

        sampler = BatchSampler(data_dir, m.block_size, t.batch_size, t.seed, device)
        batch = lambda i: sampler.get_batch("train", i, 0)  # noqa: E731
    else:
        x = torch.randint(model.config.vocab_size, (t.batch_size, m.block_size), device=device)
        batch = lambda i: (x, x)  # noqa: E731
    ctx = placement.autocast()
    times = []
    for i in range(warmup + steps):
        xb, yb = batch(i)
        t0 = time.perf_counter()
        with ctx:
            _, loss = fwd(xb, yb, loss_chunk_rows=t.loss_chunk_rows)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i == 0:
            first_step_s = time.perf_counter() - t0  # includes torch.compile's compilation when on
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    dt = statistics.median(times)
    peak = t.peak_flops or peak_flops_for(device, dtype)
    return {
        "threads": torch.get_num_threads(),
        "device": str(device), "dtype": placement.dtype_name, "compile": t.compile,
        "params_M": model.get_num_params() / 1e6, "median_ms_per_iter": dt * 1000,
        "first_step_s": first_step_s,
        "tokens_per_sec": t.batch_size * m.block_size / dt,
        "mfu": mfu_or_none(model.estimate_mfu(t.batch_size, dt, peak)) if peak else None,
    }

