"""The GPT model: nanoGPT's architecture and parameter names, plus a KV cache for fast decoding.

Parameter names match nanoGPT's `model.py` exactly, so a nanoGPT `ckpt.pt` state dict loads unchanged
(after stripping the `_orig_mod.` prefix that `torch.compile` adds).

`arch: modern` (GPTConfig) is the block of modded-nanogpt's speedrun records and nanochat, opt-in: rotary
position embeddings instead of `wpe`, QK-norm, ReLU² instead of GELU, norms without weights (of the embedding
too), zero-initialised output projections and an untied `lm_head`. Its parameters keep the gpt2 names where they
exist (`wte`, `c_attn`, `c_proj`, `c_fc`, `lm_head`); it has no `wpe` and no norm weights.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn as nn
from torch.nn import functional as F

from nanogpt.errors import ConfigError
from nanogpt.fused_loss import linear_cross_entropy
from nanogpt.settings import GPTConfig


class KVCache:
    """Keys and values of every layer, preallocated for `max_len` positions.

    Decoding writes one position per step in place; a list of tensors grown with torch.cat would copy the
    whole cache of every layer at every step (quadratic in the sequence length).
    """

    def __init__(self, n_layer: int, max_len: int, dtype: torch.dtype | None = None):
        self.max_len, self.dtype = max_len, dtype  # dtype: the keys' and values' (None: as the model gives them)
        self.length = 0  # positions filled so far (the same for every layer once a forward pass is done)
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, T, D) after the cached positions; return all keys and values so far (views)."""
        start, end = self.length, self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > max_len={self.max_len}")
        if self.k[layer] is None:  # allocated on first use: batch size and dtype (autocast) come from k
            B, H, _, D = k.shape
            # zeros, not garbage: the fixed-shape decoding step (nanogpt.decoding) masks the unwritten positions,
            # and a NaN there would survive the mask
            self.k[layer] = k.new_zeros(B, H, self.max_len, D, dtype=self.dtype or k.dtype)
            self.v[layer] = v.new_zeros(B, H, self.max_len, D, dtype=self.dtype or v.dtype)
        kc, vc = self.k[layer], self.v[layer]
        kc[:, :, start:end] = k
        vc[:, :, start:end] = v
        return kc[:, :, :end], vc[:, :, :end]

    def reset(self) -> None:
        """Forget every position. The buffers stay allocated, and in place: a captured CUDA graph
        (nanogpt.decoding) keeps reading and writing the very same memory after the window is recomputed."""
        self.length = 0


def unit_norm(x: torch.Tensor) -> torch.Tensor:
    """Normalise the last dimension, without weights (the `modern` block's norms add no parameters).

    modded-nanogpt uses RMS norm; PyTorch's CPU rms_norm is a chain of elementwise ops, 2-4x slower forward and
    backward than its fused layer_norm at these widths (benchmarks/README.md, "Faster recipes"), so this is
    layer_norm without weights: RMS norm after subtracting the mean.
    """
    return F.layer_norm(x, (x.size(-1),))


class UnitNorm(nn.Module):
    """`unit_norm` as a module: the `modern` block's ln_1, ln_2 and ln_f (no state dict entries)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return unit_norm(x)


class Rotary(nn.Module):
    """Rotary position embeddings: cos/sin of every position < max_len (buffers, not in the state dict)."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, start: int | torch.Tensor) -> torch.Tensor:
        """x (B, H, T, D) at positions start..start+T-1; `start` may be a tensor (the fixed-shape decoding step
        holds the position on the device, T = 1)."""
        if isinstance(start, torch.Tensor):
            cos, sin = self.cos.index_select(0, start), self.sin.index_select(0, start)
        else:
            cos, sin = self.cos[start : start + x.size(2)], self.sin[start : start + x.size(2)]
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class ReLUSquared(nn.Module):
    """relu(x)²: the `modern` MLP's activation (modded-nanogpt's speedrun, record 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no bias=False before 2.1)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


# PyTorch's CPU flash attention, fwd + bwd, bf16 time / fp32 time (benchmarks/README.md, "CPU training"):
# 4.0x at 64 positions, 1.08x at 256, 0.85x at 1024. Below this length the CPU computes attention in fp32.
CPU_BF16_ATTENTION_MIN_LEN = 512


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **sdpa_args) -> torch.Tensor:
    """Scaled dot-product attention, in fp32 on the CPU for short sequences, returned in q's dtype.

    On CPUs with bf16 units the matmuls around attention are ~2x faster in bf16, but at short lengths the CPU
    attention kernel is several times slower in bf16: bf16 training pays off there only with attention in fp32.
    """
    if q.device.type != "cpu" or q.dtype == torch.float32 or k.size(-2) >= CPU_BF16_ATTENTION_MIN_LEN:
        return F.scaled_dot_product_attention(q, k, v, **sdpa_args)
    with torch.autocast("cpu", enabled=False):  # autocast would cast the fp32 inputs back to bf16
        y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **sdpa_args)
    return y.to(q.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        modern = config.arch == "modern"
        self.rotary = Rotary(config.n_embd // config.n_head, config.block_size) if modern else None

    def heads(self, x: torch.Tensor, start: int | torch.Tensor = 0) -> tuple[torch.Tensor, ...]:
        """q, k, v (B, H, T, D) of x at positions start..; `modern`: QK-norm, then rotary at those positions."""
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.rotary is not None:
            q, k = unit_norm(q), unit_norm(k)
            q, k = self.rotary(q, start), self.rotary(k, start)
        return q, k, v

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, last_only: bool = False
    ) -> torch.Tensor:
        """Causal self-attention; with `cache`, x continues the cached positions (and is stored there).

        `last_only`: return the output of the last position only (every position still gives its key and
        value), which is all the final layer has to compute when only the next token's logits are wanted.
        """
        B, T, C = x.size()
        start = 0 if cache is None else cache.length
        q, k, v = self.heads(x, start)
        dtype = q.dtype
        if cache is not None:  # keys are stored rotated: a cached position keeps its rotation
            k, v = cache.update(layer, k, v)
            q = q.to(k.dtype)  # a cache wider than the model's activations: attention in the cache's dtype
        if last_only and T > 1:
            q, T = q[:, :, -1:], 1
        dropout_p = self.dropout if self.training else 0.0
        if T == 1:  # a single query (the newest position) attends to every key
            y = attention(q, k, v, dropout_p=dropout_p)
        elif start == 0:
            y = attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:  # several new queries after cached keys: causal mask shifted by the cache length
            S = k.size(2)
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
            y = attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.to(dtype).transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.act = ReLUSquared() if config.arch == "modern" else nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = _norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = _norm(config)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, last_only: bool = False
    ) -> torch.Tensor:
        attn_out = self.attn(self.ln_1(x), cache, layer, last_only)
        x = (x[:, -1:, :] if last_only else x) + attn_out
        return x + self.mlp(self.ln_2(x))


def _norm(config: GPTConfig) -> nn.Module:
    return UnitNorm() if config.arch == "modern" else LayerNorm(config.n_embd, bias=config.bias)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.modern = config.arch == "modern"
        modules = dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=_norm(config),
        )
        if self.modern:  # positions come from rotary embeddings inside attention
            del modules["wpe"]
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if not self.modern:
            self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                if self.modern:  # each block starts as the identity (modded-nanogpt's zero-init projections)
                    torch.nn.init.zeros_(p)
                else:  # GPT-2 paper: scale the residual projections by 1/sqrt(number of residual layers)
                    torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; embeddings (lookups, no FLOPs) are left out by default: gpt2's position embeddings
        (its token ones are tied to lm_head, a matmul), `modern`'s token embeddings (its lm_head is its own)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= (self.transformer.wte if self.modern else self.transformer.wpe).weight.numel()
        return n

    def embed(self, idx: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        """The residual stream's input: token + position embeddings (gpt2), or the normed token embedding
        (`modern`: positions enter as rotations of queries and keys)."""
        if self.modern:
            return unit_norm(self.transformer.wte(idx))
        return self.transformer.wte(idx) + self.transformer.wpe(pos)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        all_logits: bool = False,
        loss_chunk_rows: int | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits (and the loss when targets are given).

        Without targets only the last position's logits are computed (what generation needs), and the last
        layer runs attention output and MLP for that position alone, unless `all_logits` is set. With
        `cache`, `idx` continues the cached sequence, and its keys and values are appended to the cache.
        With targets and `loss_chunk_rows`, the loss comes from nanogpt.fused_loss and no logits (None).
        """
        _, t = idx.size()
        start = 0 if cache is None else cache.length
        if start + t > self.config.block_size:
            raise ValueError(
                f"sequence length {start + t} exceeds block_size={self.config.block_size}: "
                "crop the context to block_size tokens"
            )
        pos = None if self.modern else torch.arange(start, start + t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.embed(idx, pos))
        last_only = targets is None and not all_logits
        n = len(self.transformer.h)
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, i, last_only and i == n - 1)
        if cache is not None:
            cache.length += t
        x = self.transformer.ln_f(x)
        if targets is not None and loss_chunk_rows:
            return None, linear_cross_entropy(x, self.lm_head.weight, targets, loss_chunk_rows)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1), ignore_index=-1)
            return logits, loss
        if all_logits:
            return self.lm_head(x), None
        return self.lm_head(x[:, -1:, :]), None  # a slice, not a list index: no host-to-device copy

    def crop_block_size(self, block_size: int) -> None:
        """Model surgery: shrink the context (e.g. GPT-2's 1024 down to a smaller run's block_size)."""
        if block_size > self.config.block_size:
            raise ConfigError(
                f"block_size={block_size} is larger than the model's {self.config.block_size}: can only shrink"
            )
        self.config.block_size = block_size
        if not self.modern:  # rotary tables longer than the context are never read past it
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    def keep_vocab_rows(self, rows: list[int]) -> None:
        """Model surgery: token i of a new vocabulary is the old token rows[i] (a char model read with another
        dataset's character order). The embedding and the (tied, for gpt2) output head shrink to len(rows)."""
        index = torch.tensor(rows)
        embedding = self.transformer.wte.weight.data[index].clone()
        head = self.lm_head.weight.data[index].clone()
        self.transformer.wte = nn.Embedding(len(rows), self.config.n_embd)
        self.lm_head = nn.Linear(self.config.n_embd, len(rows), bias=False)
        if not self.modern:
            self.transformer.wte.weight = self.lm_head.weight
        self.transformer.wte.weight.data.copy_(embedding)
        self.lm_head.weight.data.copy_(head)
        self.config.vocab_size = len(rows)

    def configure_optimizers(
        self, weight_decay: float, learning_rate: float, betas: tuple[float, float], device_type: str,
        params: list[nn.Parameter] | None = None,
    ) -> torch.optim.AdamW:
        """AdamW with weight decay on matmul/embedding weights (dim >= 2) only; fused where supported.

        `params`: a subset to optimize (nanogpt.optim gives Muon the blocks' matrices), default all of them."""
        params = [p for p in (self.parameters() if params is None else params) if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        fused_ok = "fused" in inspect.signature(torch.optim.AdamW).parameters
        # Fused AdamW exists for CUDA and, in recent torch, for CPU too; it is the fast path on both.
        extra = {"fused": True} if fused_ok and device_type in ("cuda", "cpu") else {}
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)

    def flops_per_token(self) -> float:
        """Training FLOPs per token (PaLM appendix B): 6N + 12 L H Q T, N the matmul parameters of this
        architecture (get_num_params: lm_head counted once, embedding lookups not)."""
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        return 6 * self.get_num_params() + 12 * L * H * Q * T

    def estimate_mfu(self, fwdbwd_per_iter: int, dt: float, peak_flops: float) -> float:
        """Model FLOPs utilization against `peak_flops` (FLOP/s of the device, given by the caller)."""
        flops_per_iter = self.flops_per_token() * self.config.block_size * fwdbwd_per_iter
        return flops_per_iter / dt / peak_flops
