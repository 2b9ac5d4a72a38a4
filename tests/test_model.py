"""The GPT model: shapes, causality, initial loss, nanoGPT checkpoint compatibility, optimizer groups, bf16 on CPU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nanogpt import checkpoint as ckpt_io
from nanogpt import model as model_module
from nanogpt.errors import ConfigError
from nanogpt.model import GPT, GPTConfig, attention


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(block_size=16, vocab_size=65, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


def test_output_shapes():
    model = tiny()
    idx = torch.randint(65, (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 1, 65) and loss is None
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 10, 65) and loss.shape == ()


def test_causality_future_tokens_never_change_past_logits():
    model = tiny()
    idx = torch.randint(65, (2, 16))
    base, _ = model(idx, all_logits=True)
    for t in range(15):
        changed = idx.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 7) % 65
        logits, _ = model(changed, all_logits=True)
        torch.testing.assert_close(logits[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(logits[:, t + 1], base[:, t + 1])


def test_loss_at_init_is_near_uniform():
    model = tiny(vocab_size=65, bias=False)
    idx, targets = torch.randint(65, (8, 16)), torch.randint(65, (8, 16))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(65)) < 0.05


def test_gpt2_init_scales_residual_projections():
    model = tiny(n_layer=4, n_embd=64, n_head=4, block_size=64)
    std = model.transformer.h[0].attn.c_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(2 * 4)) < 0.002
    assert abs(model.transformer.h[0].attn.c_attn.weight.std().item() - 0.02) < 0.002
    assert model.lm_head.weight is model.transformer.wte.weight


def test_nanogpt_checkpoint_with_orig_mod_prefix_loads(tmp_path):
    """A nanoGPT ckpt.pt of a compiled model: `_orig_mod.` keys, config dict, loaded with weights_only."""
    model = tiny()
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, bias=True, vocab_size=65, dropout=0.0)
    ckpt = {
        "model": {f"_orig_mod.{k}": v for k, v in model.state_dict().items()},
        "optimizer": torch.optim.AdamW(model.parameters()).state_dict(),
        "model_args": args,
        "iter_num": 5000,
        "best_val_loss": torch.tensor(1.47),
        "config": {"dataset": "shakespeare_char", "learning_rate": 1e-3, "compile": True, "wandb_log": False},
    }
    torch.save(ckpt, tmp_path / "ckpt.pt")
    loaded, state = ckpt_io.load_model(tmp_path / "ckpt.pt")
    idx = torch.randint(65, (2, 16))
    torch.testing.assert_close(loaded.eval()(idx, all_logits=True)[0], model(idx, all_logits=True)[0])
    assert state["iter_num"] == 5000


def test_invalid_head_count_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"n_embd=30 is not divisible by model.n_head=4"):
        GPTConfig(n_embd=30, n_head=4)


def test_crop_block_size():
    model = tiny()
    model.crop_block_size(8)
    assert model.config.block_size == 8 and model.transformer.wpe.weight.shape[0] == 8
    model(torch.randint(65, (1, 8)))
    with pytest.raises(ValueError, match="block_size=8"):
        model(torch.randint(65, (1, 9)))


def test_optimizer_decays_only_matrices():
    model = tiny()
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() < 2 for p in no_decay["params"])
    n = sum(p.numel() for p in decay["params"]) + sum(p.numel() for p in no_decay["params"])
    assert n == sum(p.numel() for p in model.parameters())


def test_mfu_uses_the_given_peak():
    model = tiny()
    flops_per_iter = model.flops_per_token() * 16 * 4
    assert model.estimate_mfu(4, 1.0, peak_flops=flops_per_iter) == pytest.approx(1.0)
    assert model.estimate_mfu(4, 1.0, peak_flops=2 * flops_per_iter) == pytest.approx(0.5)


# ---- bf16 on the CPU: attention stays in fp32 (model.attention) -------------------------------------------------
def qkv(dtype: torch.dtype, T: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 2, T, 8, generator=g).to(dtype).requires_grad_() for _ in range(3)]


def test_cpu_attention_runs_in_fp32_under_bf16_autocast():
    q, k, v = qkv(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attention(q, k, v, is_causal=True)
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    assert y.dtype == torch.bfloat16  # the caller's dtype: bf16 weights without autocast still match
    assert torch.equal(y, expected.to(torch.bfloat16))  # the bf16 kernel rounds differently
    y.float().square().sum().backward()
    assert q.grad.dtype == k.grad.dtype == v.grad.dtype == torch.bfloat16


def test_cpu_attention_keeps_bf16_for_long_sequences(monkeypatch):
    monkeypatch.setattr(model_module, "CPU_BF16_ATTENTION_MIN_LEN", 16)
    q, k, v = qkv(torch.bfloat16, T=16)
    y = attention(q, k, v, is_causal=True)
    assert torch.equal(y, F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_bf16_training_on_cpu_tracks_fp32():
    """Same weights, same batches: 30 AdamW steps under bf16 autocast end near the fp32 loss."""
    x = torch.randint(65, (8, 16), generator=torch.Generator().manual_seed(1))
    y = torch.roll(x, -1, dims=1)
    losses = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = tiny(n_embd=64).train()
        opt = model.configure_optimizers(0.1, 3e-3, (0.9, 0.99), "cpu")
        for _ in range(30):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                _, loss = model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses[dtype] = loss.item()
    assert losses[torch.float32] < 3.0  # it learned (uniform: ln 65 = 4.17)
    assert losses[torch.bfloat16] == pytest.approx(losses[torch.float32], abs=0.05)
