"""Generation: nanoGPT's sampling with a KV cache (`generate`), and one decoding step with fixed shapes, replayed
as a CUDA graph: one launch per generated token.

Eager decoding of one token at the GPT-2-124M shape launches ~200 small kernels, and the GPU idles while
Python issues each one: a few milliseconds per token, whatever the GPU. A step whose tensors all keep their
shapes (the whole preallocated KV cache, with a mask hiding the positions not written yet, and the position as
a tensor) can be captured once as a CUDA graph and replayed for every token. The kernels are the eager ones, so
the logits are those of the eager masked step (tests/test_generate.py checks it against the plain KV cache).
Both architectures: the step embeds and projects through the model's own `embed` and `heads`, so `modern`'s
rotary angles are read at the position tensor inside the graph.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from nanogpt.errors import ConfigError
from nanogpt.model import GPT, Block, KVCache


def single_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d), masked) v for one query per head, as two small batched matmuls.

    Measured on an H100 (benchmarks/README.md): SDPA's memory-efficient kernel, the one it picks for an fp32
    query with a mask, took 118 us per layer for 1 query over 1024 keys: 1.4 ms of the 2.1 ms model step.
    """
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
    return F.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v


@dataclasses.dataclass(frozen=True)
class Draw:
    """nanoGPT's draw of the next token (sample_next) with fixed settings: what a decoding step can record."""

    temperature: float
    top_k: int | None
    generator: torch.Generator | None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return sample_next(logits, self.temperature, self.top_k, self.generator)


class StaticDecodeStep:
    """Logits of the next token given the token at position `pos`, over a KVCache filled up to `pos`; with `draw`,
    the next token itself (B, 1), drawn inside the step.

    On CUDA (`use_graph`) the step is captured as a graph at its first call and replayed afterwards; elsewhere
    it runs eagerly (the same arithmetic, which is how the CPU tests check it). The graph holds the cache's
    buffers, not its length: after `KVCache.reset` and a new prefill (generation past block_size recomputes
    the window that way) the same step continues from the new position, and the mask hides the stale keys.

    A draw inside the graph saves the sampling's ~10 kernel launches per token. Its random numbers come from
    the generator's state at each replay, which the replay then advances as the eager draw would, so the
    samples are the eager ones for the same seed. That relies on CUDA's graph-safe generators: if the draw
    cannot be recorded, or a replay leaves the generator where it was, the step draws eagerly from the replayed
    logits instead.
    """

    def __init__(self, model: GPT, cache: KVCache, batch: int, use_graph: bool, draw: Draw | None = None,
                 compiled: bool = False):
        device = model.lm_head.weight.device
        self.model, self.cache, self.use_graph, self.draw = model, cache, use_graph, draw
        # compiled: the model step through torch.compile (fused kernels, fewer of them per token), compiled at the
        # first call; the graph then records the compiled kernels
        self.step_logits = torch.compile(self._logits, fullgraph=True, dynamic=False) if compiled else self._logits
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.positions = torch.arange(cache.max_len, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None
        self.drawn: torch.Tensor | None = None
        self.draw_in_graph = draw is not None  # until a replay shows the generator does not advance

    def __call__(self, token: torch.Tensor, pos: int) -> torch.Tensor:
        """(B, 1, vocab) logits, or with `draw` (B, 1) token ids; the returned tensor is overwritten by the next
        call."""
        self.token.copy_(token)
        self.pos.fill_(pos)
        self.cache.length = pos + 1  # host-side bookkeeping only, as the plain cached forward keeps it
        if not self.use_graph:
            logits = self.step_logits()
            return logits if self.draw is None else self.draw(logits[:, -1, :])
        if self.graph is None:
            try:
                self._capture()
            except RuntimeError:
                if not self.draw_in_graph:
                    raise
                self.draw_in_graph = False  # the draw could not be recorded: record the model step alone
                self._capture()
        offset = self._generator_offset()
        self.graph.replay()
        if self.draw is None:
            return self.logits
        if self.draw_in_graph and (offset is None or self._generator_offset() == offset):
            self.draw_in_graph = False  # no graph-safe generator here: draw outside the graph
        return self.drawn if self.draw_in_graph else self.draw(self.logits[:, -1, :])

    def _capture(self) -> None:
        """Warm up on a side stream (cuBLAS handles, allocator), then record one step. The warm-up computes the
        current step for real, and writing the same key and value at the same position again is harmless; its
        draws are undone (the generator's state restored) so that the first replay draws what eager would."""
        autocast = torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"),
                                  enabled=torch.is_autocast_enabled("cuda"), cache_enabled=False)
        generator = self._generator() if self.draw_in_graph else None
        state = generator.get_state() if generator is not None else None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), autocast:
            for _ in range(2):
                self._record()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        if generator is not None:
            generator.set_state(state)
            if self.draw.generator is not None:  # the default generator is registered by the capture itself
                self.graph.register_generator_state(generator)
        with torch.cuda.graph(self.graph), autocast:
            self._record()

    def _record(self) -> None:
        self.logits = self.step_logits()
        if self.draw_in_graph:
            self.drawn = self.draw(self.logits[:, -1, :])

    def _generator(self) -> torch.Generator | None:
        """The generator the draw uses (the device's default one when it was given none)."""
        if self.draw is None:
            return None
        if self.draw.generator is not None:
            return self.draw.generator
        device = self.token.device
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]

    def _generator_offset(self) -> int | None:
        generator = self._generator()
        try:
            return None if generator is None else generator.get_offset()
        except (AttributeError, RuntimeError):  # no offset to read: assume nothing
            return None

    def _logits(self) -> torch.Tensor:
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


@torch.no_grad()
def generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    cuda_graph: bool | None = None,
    window_refresh: int | None = None,
    on_token: Callable[[torch.Tensor], None] | None = None,
    compile_step: bool = False,
) -> torch.Tensor:
    """Sample `max_new_tokens` tokens after `idx` (B, T); nanoGPT's sampling, same draws for a same seed
    within block_size tokens (and past it with `window_refresh=1`).

    With `use_cache` the prompt is run once and each new token costs one position. Within block_size
    tokens the samples are nanoGPT's. A prompt longer than block_size is cropped to its last block_size
    tokens, as nanoGPT does.

    Past block_size, nanoGPT crops the context to the last block_size tokens at every step, so every step
    is a full forward of block_size tokens: with absolute position embeddings, sliding the window by one
    token moves every token to a new position and no cached key or value stays valid. Here the window is
    recomputed once every `window_refresh` tokens instead (default block_size // 4): when the context
    outgrows block_size it restarts from its last block_size - window_refresh + 1 tokens (one prefill
    into the same cache), then grows by one cached token per step back to block_size. Every token is
    thus drawn from at least block_size - window_refresh + 1 tokens of context. `window_refresh=1` is
    nanoGPT's per-token cropping exactly; the cache-free path (`use_cache=False`) follows the same rule.

    `cuda_graph` (default: on CUDA): each cached step, the draw included, is one replay of a captured CUDA graph
    (StaticDecodeStep), instead of ~15 kernel launches per layer and ~10 for the draw issued from Python.
    `compile_step`: that step's model part compiled first (torch.compile: fewer, fused kernels per token, at the
    cost of a compilation when the call starts).

    `on_token` is called with each new token (B,) as soon as it is drawn (streaming); it draws nothing.
    """
    block = model.config.block_size
    keep = block - window_refresh_of(model, window_refresh) + 1  # context length right after a refresh
    B, T0 = idx.size()
    out = idx.new_empty(B, T0 + max_new_tokens)  # written in place, no torch.cat per token
    out[:, :T0] = idx
    start = max(0, T0 - block)  # the context of token L is out[:, start:L]
    # the positions this call can fill: zeroing a whole window for 200 tokens was 1% of their time on a CPU
    max_len = min(block, T0 - start + max_new_tokens)
    cache = KVCache(len(model.transformer.h), max_len, cache_dtype(model)) if use_cache else None
    graph = idx.device.type == "cuda" if cuda_graph is None else cuda_graph
    draw = Draw(temperature, top_k, generator)
    step = None
    for L in range(T0, T0 + max_new_tokens):
        if L - start > block:  # the context outgrew the window: recompute it from its last `keep` tokens
            start = L - keep
            cache = cache if keep < block else None  # window_refresh=1: every step is a full window
            if cache is not None:
                cache.reset()
        if cache is None:  # cache-free: the whole context
            out[:, L : L + 1] = draw(model(out[:, start:L])[0][:, -1, :])
        elif cache.length == 0:  # prefill: the prompt, or the window after a refresh
            out[:, L : L + 1] = draw(model(out[:, start:L], cache=cache)[0][:, -1, :])
        elif graph:  # one new token at position L - 1 - start, drawn inside one replay
            step = step or StaticDecodeStep(model, cache, B, use_graph=True, draw=draw, compiled=compile_step)
            out[:, L : L + 1] = step(out[:, L - 1 : L], L - 1 - start)
        else:  # one new token at position L - 1 - start
            with one_row_kernels(model, B):
                out[:, L : L + 1] = draw(model(out[:, L - 1 : L], cache=cache)[0][:, -1, :])
        if on_token is not None:
            on_token(out[:, L])
    return out


@contextlib.contextmanager
def one_row_kernels(model: GPT, rows: int) -> Iterator[None]:
    """A CPU decoding step of one row runs its matmuls on the kernels that stream weights fastest there
    (benchmarks/README.md, "A quiet machine"):
    - bf16 weights: ATen's reduced-precision GEMV (oneDNN off for the step): the 124M shape's head takes 2.1 ms
      there against 4.7 in oneDNN, on 2 threads. Only for one row: at 64 rows ATen's bf16 matmul is 7x slower
      than oneDNN's, so a prefill keeps oneDNN.
    - fp32 column-major weights, on more than one thread: `SplitInputLinear`, one slice of the input dimension
      per torch thread, where a weight has SPLIT_MIN_WEIGHT values or more.
    Anything else runs as it would."""
    weight = model.lm_head.weight
    if rows != 1 or weight.device.type != "cpu":
        yield
    elif weight.dtype == torch.float32:
        threads = torch.get_num_threads()
        largest = max(weight.numel(), 4 * model.config.n_embd**2)  # the head, or the MLP's matmuls
        with SplitInputLinear(threads) if threads > 1 and largest >= SPLIT_MIN_WEIGHT else contextlib.nullcontext():
            yield
    else:
        before = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False
        try:
            yield
        finally:
            torch.backends.mkldnn.enabled = before


# Values of a weight from which a one-row fp32 matmul is split over the threads. On the 2-core machine, per token
# on 2 threads: the 384-wide baby GPT (weights of 147K-590K values) 159 -> 197 tokens/s; the 128-wide CPU config
# (65K and less) 645 -> 618, the function mode's own cost per op with nothing to gain.
SPLIT_MIN_WEIGHT = 2**17


class SplitInputLinear(TorchFunctionMode):
    """One-row fp32 linears as `threads` partial products over slices of the input dimension, summed.

    MKL runs a one-row sgemm on a single thread's memory bandwidth: on the 2-core machine the 124M shape's layer
    weights took 23 ms per token on 2 threads and on 1. A column-major weight (K, N) in memory splits along K
    into contiguous (K/threads, N) blocks, so a batched matmul streams one block per thread, no copy: 13 ms, and
    the head 4.5 ms against 8.8. Each logit is then a sum of `threads` partial dot products, a rounding
    different from one dot product's (within 1e-5 relative); nanoGPT's samples stay the same
    (tests/test_generate.py). Other calls, weights under `min_weight` values (in cache, where the mode's own cost
    outweighs the gain) and a K that `threads` does not divide run as they would."""

    def __init__(self, threads: int, min_weight: int = SPLIT_MIN_WEIGHT):
        super().__init__()
        self.threads, self.min_weight = threads, min_weight

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            splits = self.splits_of(x, weight)
            if splits > 1:
                K = x.size(-1)
                parts = torch.bmm(x.reshape(splits, 1, K // splits), weight.t().view(splits, K // splits, -1))
                y = parts.sum(0).view(*x.shape[:-1], -1)
                return y if bias is None else y + bias
        return func(*args, **kwargs)

    def splits_of(self, x: torch.Tensor, weight: torch.Tensor) -> int:
        """How many slices this call is worth: 1 (as it would run) unless x is one fp32 row and the weight a
        large column-major one; else the largest count up to `threads` that divides K."""
        K = x.size(-1)
        one_fp32_row = x.numel() == K and x.dtype == weight.dtype == torch.float32
        if not one_fp32_row or weight.numel() < self.min_weight or not weight.t().is_contiguous():
            return 1
        return next(s for s in range(min(self.threads, K), 0, -1) if K % s == 0)


def cache_dtype(model: GPT) -> torch.dtype | None:
    """fp32 keys and values for bf16 weights on a CPU (they hold the bf16 values exactly): one query's attention
    over 900 keys took 580 us per layer in the CPU's bf16 SDPA and 78 in its fp32 one (2-core machine, 2
    threads). Elsewhere the cache keeps the model's dtype (None)."""
    weight = model.lm_head.weight
    return torch.float32 if weight.device.type == "cpu" and weight.dtype == torch.bfloat16 else None


def window_refresh_of(model: GPT, value: int | None) -> int:
    """The tokens between two recomputations of the window past block_size; block_size // 4 by default:
    each refresh (a prefill of 3/4 of a window) is shared by that many tokens, and every token still sees
    at least 3/4 of a window of context."""
    block = model.config.block_size
    if value is None:
        return max(1, block // 4)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= block:
        raise ConfigError(f"window_refresh={value!r}: expected an integer in [1, block_size={block}]")
    return value


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """nanoGPT's draw: temperature, top-k, softmax, multinomial; (B, 1) token ids, without a host sync."""
    logits = logits.float() / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, -1:], -float("inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)
