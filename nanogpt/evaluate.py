"""Loss and perplexity of a model (one of our runs or a pretrained GPT-2) on a prepared dataset's splits."""

from __future__ import annotations

import math
import time

import torch

from nanogpt.data import BatchSampler
from nanogpt.errors import ConfigError
from nanogpt.model import GPT
from nanogpt.runtime import autocast_context


@torch.no_grad()
def evaluate(model: GPT, data_dir: str, splits: tuple[str, ...] = ("train", "val"), batch_size: int = 8,
             block_size: int | None = None, eval_iters: int = 500, seed: int = 1337, device: str = "cpu",
             dtype: torch.dtype = torch.float32, compile: bool = False) -> dict:
    """Mean cross-entropy over `eval_iters` random batches of each split (nanoGPT's estimate_loss).

    The losses are summed on the device and read once per split: one host sync per split, not per batch.
    """
    if eval_iters <= 0 or batch_size <= 0:
        raise ConfigError(f"eval_iters={eval_iters}, batch_size={batch_size}: expected positive integers")
    block_size = block_size or model.config.block_size
    if block_size > model.config.block_size:
        raise ConfigError(f"block_size={block_size} exceeds the model's {model.config.block_size}: expected <= it")
    sampler = BatchSampler(data_dir, block_size, batch_size, seed, device)
    vocab = sampler.meta["vocab_size"]
    if vocab > model.config.vocab_size:
        raise ConfigError(
            f"dataset vocabulary ({vocab}) is larger than the model's ({model.config.vocab_size}): "
            "expected a dataset tokenized for this model"
        )
    model.eval().to(device)
    forward = torch.compile(model, fullgraph=True) if compile else model
    ctx = autocast_context(torch.device(device), dtype)
    acc_dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64  # MPS has no float64
    out = {}
    t0 = time.perf_counter()
    for split in splits:
        total = torch.zeros((), device=device, dtype=acc_dtype)
        for k in range(eval_iters):
            x, y = sampler.get_batch(split, 0, k, for_eval=True)
            with ctx:
                _, loss = forward(x, y)
            total += loss.to(acc_dtype)
        out[f"{split}_loss"] = total.item() / eval_iters
        out[f"{split}_perplexity"] = math.exp(out[f"{split}_loss"])
    out.update(batch_size=batch_size, block_size=block_size, eval_iters=eval_iters, seed=seed,
               tokens_per_split=eval_iters * batch_size * block_size, wall_time_s=time.perf_counter() - t0)
    return out

