"""The head and its cross-entropy a chunk of rows at a time, gradients included: no (rows, vocab) logits tensor.

A GPT-2-124M micro-batch of 16 x 1024 tokens has 16,384 rows of 50,304 logits: 1.6 GB in bf16, 3.3 GB once
cast to fp32 for the loss, and as much again for their gradient. The loss's gradient with respect to the logits
is known in the forward pass (softmax minus the one-hot target), so each chunk's logits can be computed, turned
into that chunk's loss and its gradients with respect to the head's input and weight, and dropped. The backward
pass then only scales the stored gradients: no logits are recomputed, and the head costs the same matmuls as
before. Whether it is faster on a given GPU is measured, not assumed (benchmarks/gpu_check.py).

Numerics: the loss and gradients of F.cross_entropy over the full logits, up to rounding (tests/test_fused_loss.py).
Under autocast the matmuls run in its dtype like the plain head's; the weight's gradient sums the chunks in fp32.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

IGNORE_INDEX = -1  # nanoGPT's: targets of -1 count for nothing


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int) -> torch.Tensor:
    """F.cross_entropy(x @ weight.T, targets, ignore_index=-1), the mean over counted rows, `chunk_rows` rows at a
    time. x (..., C), weight (V, C), targets (...)."""
    x2, t = x.reshape(-1, x.size(-1)), targets.reshape(-1)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(x2, weight, t, chunk_rows)
    total, count = _loss_sums(x2, weight, t, chunk_rows)
    return total / count


def _chunks(rows: int, chunk_rows: int) -> range:
    return range(0, rows, chunk_rows)


def _chunk_loss(logits: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row losses (0 where ignored) of fp32 logits, and their log-probabilities."""
    counted = t != IGNORE_INDEX
    logp = F.log_softmax(logits, dim=-1)
    picked = logp.gather(1, t.clamp(min=0).unsqueeze(1)).squeeze(1)
    return torch.where(counted, -picked, 0.0), logp


def _loss_sums(x: torch.Tensor, weight: torch.Tensor, t: torch.Tensor, chunk_rows: int) -> tuple[torch.Tensor, ...]:
    total = torch.zeros((), dtype=torch.float32, device=x.device)
    for i in _chunks(x.size(0), chunk_rows):
        losses, _ = _chunk_loss((x[i : i + chunk_rows] @ weight.t()).float(), t[i : i + chunk_rows])
        total = total + losses.sum()
    return total, (t != IGNORE_INDEX).sum()


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, t: torch.Tensor, chunk_rows: int) -> torch.Tensor:
        count = (t != IGNORE_INDEX).sum()
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for i in _chunks(x.size(0), chunk_rows):
            xc, tc = x[i : i + chunk_rows], t[i : i + chunk_rows]
            logits = xc @ weight.t()  # autocast's dtype, as the plain head's
            losses, logp = _chunk_loss(logits.float(), tc)
            total = total + losses.sum()
            # d(sum of losses)/d(logits): softmax minus one-hot, zero on ignored rows; entries in [-1, 1]
            grad_logits = logp.exp_()
            grad_logits.scatter_add_(1, tc.clamp(min=0).unsqueeze(1), torch.full_like(grad_logits[:, :1], -1.0))
            grad_logits.mul_((tc != IGNORE_INDEX).unsqueeze(1))
            grad_logits = grad_logits.to(logits.dtype)
            grad_x[i : i + chunk_rows] = grad_logits @ weight.to(logits.dtype)
            grad_w += (grad_logits.t() @ xc.to(logits.dtype)).float()
        ctx.save_for_backward(grad_x, grad_w, count)
        ctx.weight_dtype = weight.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_x, grad_w, count = ctx.saved_tensors
        scale = grad_out / count
        return (grad_x * scale.to(grad_x.dtype), (grad_w * scale).to(ctx.weight_dtype), None, None)
