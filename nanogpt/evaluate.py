"""Loss and perplexity of a model (one of our runs or a pretrained GPT-2) on a prepared dataset's splits."""

from __future__ import annotations

import math
import time

import torch

from nanogpt.data.prepare import BatchSampler
from nanogpt.errors import ConfigError
from nanogpt.model import GPT
from nanogpt.runtime import CPU_FP32, Placement, resolve_compile
from nanogpt.settings import EvalSettings


@torch.no_grad()
def evaluate(model: GPT, data_dir: str, settings: EvalSettings | None = None, placement: Placement | None = None
             ) -> dict:
    """Mean cross-entropy over `eval_iters` random batches of each split (nanoGPT's estimate_loss), with the
    settings' defaults (nanoGPT's eval_gpt2*.py) where none are given, on the CPU in fp32 unless placed.

    The losses are summed on the device and read once per split: one host sync per split, not per batch.
    """
    s = settings or EvalSettings()
    placement = placement or CPU_FP32
    device, block_size = placement.device, s.block_size or model.config.block_size
    if block_size > model.config.block_size:
        raise ConfigError(f"block_size={block_size} exceeds the model's {model.config.block_size}: expected <= it")
    sampler = BatchSampler(data_dir, block_size, s.batch_size, s.seed, device)
    vocab = sampler.meta["vocab_size"]
    if vocab > model.config.vocab_size:
        raise ConfigError(
            f"dataset vocabulary ({vocab}) is larger than the model's ({model.config.vocab_size}): "
            "expected a dataset tokenized for this model"
        )
    model.eval().to(device)
    forward = torch.compile(model, fullgraph=True) if resolve_compile(s.compile, device) else model
    acc_dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    out = {}
    t0 = time.perf_counter()
    for split in s.split_names:
        total = torch.zeros((), device=device, dtype=acc_dtype)
        for k in range(s.eval_iters):
            x, y = sampler.get_batch(split, 0, k, for_eval=True)
            with placement.autocast():
                _, loss = forward(x, y)
            total += loss.to(acc_dtype)
        out[f"{split}_loss"] = total.item() / s.eval_iters
        out[f"{split}_perplexity"] = math.exp(out[f"{split}_loss"])
    out.update(batch_size=s.batch_size, block_size=block_size, eval_iters=s.eval_iters, seed=s.seed,
               tokens_per_split=s.eval_iters * s.batch_size * block_size, wall_time_s=time.perf_counter() - t0)
    return out

