"""One decoding step with fixed shapes, replayed as a CUDA graph: one launch per generated token.

Eager decoding of one token at the GPT-2-124M shape launches ~200 small kernels, and the GPU idles while
Python issues each one: a few milliseconds per token, whatever the GPU. A step whose tensors all keep their
shapes (the whole preallocated KV cache, with a mask hiding the positions not written yet, and the position as
a tensor) can be captured once as a CUDA graph and replayed for every token. The kernels are the eager ones, so
the logits are those of the eager masked step (tests/test_generate.py checks it against the plain KV cache).
Both architectures: the step embeds and projects through the model's own `embed` and `heads`, so `modern`'s
rotary angles are read at the position tensor inside the graph.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from nanogpt.model import GPT, Block, KVCache


def single_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d), masked) v for one query per head, as two small batched matmuls.

    Measured on an H100 (benchmarks/README.md): SDPA's memory-efficient kernel, the one it picks for an fp32
    query with a mask, took 118 us per layer for 1 query over 1024 keys: 1.4 ms of the 2.1 ms model step.
    """
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
    return F.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v


class StaticDecodeStep:
    """Logits of the next token given the token at position `pos`, over a KVCache filled up to `pos`.

    On CUDA (`use_graph`) the step is captured as a graph at its first call and replayed afterwards; elsewhere
    it runs eagerly (the same arithmetic, which is how the CPU tests check it). The graph holds the cache's
    buffers, not its length: after `KVCache.reset` and a new prefill (generation past block_size recomputes
    the window that way) the same step continues from the new position, and the mask hides the stale keys.
    """

    def __init__(self, model: GPT, cache: KVCache, batch: int, use_graph: bool):
        device = model.lm_head.weight.device
        self.model, self.cache, self.use_graph = model, cache, use_graph
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.positions = torch.arange(cache.max_len, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def __call__(self, token: torch.Tensor, pos: int) -> torch.Tensor:
        """(B, 1, vocab) logits; the returned tensor is overwritten by the next call."""
        self.token.copy_(token)
        self.pos.fill_(pos)
        self.cache.length = pos + 1  # host-side bookkeeping only, as the plain cached forward keeps it
        if not self.use_graph:
            return self._step()
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.logits

    def _capture(self) -> None:
        """Warm up on a side stream (cuBLAS handles, allocator), then record one step. The warm-up computes the
        current step for real, and writing the same key and value at the same position again is harmless."""
        autocast = torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"),
                                  enabled=torch.is_autocast_enabled("cuda"), cache_enabled=False)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), autocast:
            for _ in range(2):
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), autocast:
            self.logits = self._step()

    def _step(self) -> torch.Tensor:
        t = self.model.transformer
        x = self.model.embed(self.token, self.pos)
        mask = (self.positions <= self.pos).view(1, 1, 1, -1)  # the keys written so far, this one included
        for layer, block in enumerate(t.h):
            x = self._block(block, x, layer, mask)
        return self.model.lm_head(t.ln_f(x))

    def _block(self, block: Block, x: torch.Tensor, layer: int, mask: torch.Tensor) -> torch.Tensor:
        attn = block.attn
        B, T, C = x.size()
        q, k, v = attn.heads(block.ln_1(x), self.pos)  # `modern`: rotated at the position tensor, inside the graph
        keys, values = self.cache.k[layer], self.cache.v[layer]
        keys.index_copy_(2, self.pos, k.to(keys.dtype))
        values.index_copy_(2, self.pos, v.to(values.dtype))
        y = single_query_attention(q, keys.to(q.dtype), values.to(q.dtype), mask)
        x = x + attn.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + block.mlp(block.ln_2(x))
