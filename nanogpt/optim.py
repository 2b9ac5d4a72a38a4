"""The optimizer of a run: nanoGPT's AdamW, or Muon for the blocks' matrices with AdamW for everything else.

Muon (torch.optim.Muon: momentum, then the update orthogonalised by a Newton-Schulz iteration, here in the run's
precision: see `Muon`) is an optimizer for the 2-D weights of hidden layers; embeddings, the output head, norms
and biases keep AdamW. The two are driven as one optimizer (`MuonAdamW`): the trainer sets one learning rate per
step, and every group follows it scaled by its own `lr_scale` (Muon's groups: muon_lr / learning_rate), so both
share the warmup and decay. Under DDP both step on the gradients DDP has already averaged, so every rank computes
the same update.
"""

from __future__ import annotations

import math

import torch

from nanogpt.errors import CheckpointError
from nanogpt.model import GPT
from nanogpt.settings import TrainSettings


class MuonAdamW:
    """Several torch optimizers as one: param_groups, step, zero_grad and a state dict holding each one's state
    by name (what GradScaler, gradient clipping and the checkpoint need of an optimizer)."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for opt in self.optimizers.values() for group in opt.param_groups]

    def step(self, closure=None) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or set(state) != set(self.optimizers):
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(f"checkpoint optimizer state has {found}: expected the states of "
                                  f"{sorted(self.optimizers)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


def newton_schulz(grad: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz orthogonalisation of a 2-D update, computed in `dtype`."""
    a, b, c = coefficients
    x = grad.to(dtype)
    tall = grad.size(0) > grad.size(1)
    if tall:
        x = x.T.contiguous()
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Muon):
    """torch.optim.Muon (its settings, checks, param groups and state) with the Newton-Schulz iteration in
    `ns_dtype`. torch's runs it in bfloat16, whose rounding turns the last-bit differences between DDP's averaged
    gradients and one process's into weight differences of ~1e-3 within a few steps (measured: 4e-3 after 12
    steps, 2 ranks x 2 micro-batches against 1 x 4); in float32 a float32 run's ranks train like one process.
    """

    def __init__(self, params, ns_dtype: torch.dtype = torch.bfloat16, **settings) -> None:
        super().__init__(params, **settings)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None) -> None:
        """torch.optim.Muon's single-tensor step: Nesterov momentum, orthogonalised update, decoupled weight decay,
        the learning rate scaled by the matrix's shape."""
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"],
                                       self.ns_dtype)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-lr * _shape_scale(group["adjust_lr_fn"], p.shape))


def _shape_scale(adjust_lr: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's lr adjustment: sqrt(max(1, rows/cols)) (original), or 0.2 sqrt(max(rows, cols))
    (match_rms_adamw: updates of AdamW's RMS, so AdamW's learning rate carries over)."""
    rows, cols = shape[:2]
    if adjust_lr == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1, rows / cols))


def muon_params(model: GPT) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(Muon's, AdamW's): the blocks' 2-D weights, and the rest (embeddings, lm_head, norms, biases)."""
    hidden, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (hidden if name.startswith("transformer.h.") and p.dim() == 2 else rest).append(p)
    return hidden, rest


def build_optimizer(model: GPT, t: TrainSettings, device_type: str,
                    train_dtype: torch.dtype = torch.float32) -> torch.optim.Optimizer | MuonAdamW:
    """The run's optimizer: `model.configure_optimizers` for adamw (nanoGPT's, unchanged), Muon + AdamW for muon.

    Muon's Newton-Schulz runs in float32 for a float32 run (DDP equal to one process), in bfloat16 (torch's
    choice) under mixed precision, where a GPU computes it fastest."""
    ns_dtype = torch.float32 if train_dtype == torch.float32 else torch.bfloat16
    if t.optimizer == "adamw":
        return model.configure_optimizers(t.weight_decay, t.learning_rate, (t.beta1, t.beta2), device_type)
    hidden, rest = muon_params(model)
    adamw = model.configure_optimizers(t.weight_decay, t.learning_rate, (t.beta1, t.beta2), device_type, rest)
    muon = Muon(hidden, ns_dtype=ns_dtype, lr=t.muon_lr, momentum=t.muon_momentum,
                weight_decay=t.muon_weight_decay, adjust_lr_fn=t.muon_adjust_lr)
    for group in muon.param_groups:
        group["lr_scale"] = t.muon_lr / t.learning_rate
    return MuonAdamW({"adamw": adamw, "muon": muon})


def set_lr(optimizer: torch.optim.Optimizer | MuonAdamW, lr: float) -> None:
    """This step's learning rate: `lr` for AdamW's groups, `lr` x lr_scale for Muon's (the same schedule)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"] if "lr_scale" in group else lr
