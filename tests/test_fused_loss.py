"""nanogpt.fused_loss: the head and its cross-entropy a chunk of rows at a time give F.cross_entropy's loss and
gradients over the full logits, for any chunk size, ignored targets, tied weights, autocast and a training run."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from nanogpt.fused_loss import linear_cross_entropy
from nanogpt.model import GPT, GPTConfig


def reference(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """nanoGPT's loss: the full logits, then F.cross_entropy (fp32) with ignore_index=-1."""
    logits = x @ weight.t()
    return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1), ignore_index=-1)


def loss_and_grads(fn, x, weight, targets):
    x, weight = x.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = fn(x, weight, targets)
    loss.backward()
    return loss.detach(), x.grad, weight.grad


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 40), vocab=st.integers(2, 70), width=st.integers(1, 24), chunk=st.integers(1, 50),
       ignored=st.floats(0.0, 0.9), seed=st.integers(0, 2**31 - 1))
def test_loss_and_gradients_are_cross_entropys(rows, vocab, width, chunk, ignored, seed):
    """Any shape and chunk size (one row, a chunk larger than the rows, a ragged last chunk) and any share of
    ignored targets (-1): the loss, and the gradients for the input and the head, within float rounding."""
    g = torch.Generator().manual_seed(seed)
    x, weight = torch.randn(rows, width, generator=g), torch.randn(vocab, width, generator=g)
    targets = torch.randint(0, vocab, (rows,), generator=g)
    targets[torch.rand(rows, generator=g) < ignored] = -1
    targets[0] = 0  # at least one counted row: with none, both are nan
    want = loss_and_grads(reference, x, weight, targets)
    got = loss_and_grads(lambda a, b, t: linear_cross_entropy(a, b, t, chunk), x, weight, targets)
    for w, h in zip(want, got, strict=True):
        torch.testing.assert_close(h, w, rtol=1e-5, atol=1e-6)


def test_every_target_ignored_is_nan_like_cross_entropy():
    x, weight, targets = torch.randn(4, 3), torch.randn(5, 3), torch.full((4,), -1)
    assert torch.isnan(reference(x, weight, targets)) and torch.isnan(linear_cross_entropy(x, weight, targets, 2))


def test_without_gradients_it_only_computes_the_loss():
    """Under no_grad (evaluation) the loss is the same and no gradient is computed."""
    x, weight, targets = torch.randn(6, 4), torch.randn(9, 4), torch.randint(0, 9, (6,))
    with torch.no_grad():
        loss = linear_cross_entropy(x, weight.requires_grad_(), targets, 4)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, reference(x, weight.detach(), targets))


def test_bf16_autocast_stays_within_bf16_rounding_of_the_plain_head():
    """Under CPU bf16 autocast the matmuls run in bf16 like the plain head's: loss and gradients within bf16
    rounding of the plain path's, and the weight's gradient comes back in the weight's dtype (fp32)."""
    g = torch.Generator().manual_seed(0)
    x, weight = torch.randn(64, 32, generator=g), torch.randn(300, 32, generator=g) * 0.1
    targets = torch.randint(0, 300, (64,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = loss_and_grads(reference, x, weight, targets)
        got = loss_and_grads(lambda a, b, t: linear_cross_entropy(a, b, t, 16), x, weight, targets)
    assert got[2].dtype == torch.float32 and got[1].dtype == torch.float32
    for w, h in zip(want, got, strict=True):
        torch.testing.assert_close(h.float(), w.float(), rtol=0.02, atol=0.02 * w.float().abs().max().item())


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_the_models_loss_and_every_parameters_gradient_match(arch):
    """GPT.forward with loss_chunk_rows: nanoGPT's loss, and every parameter's gradient, the tied embedding
    (gpt2: the head's weight is also the token embedding) included."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=97, n_layer=2, n_head=2, n_embd=32, arch=arch, bias=False))
    chunked = copy.deepcopy(model)
    idx = torch.randint(0, 97, (3, 16))
    targets = torch.randint(0, 97, (3, 16))
    targets[0, :5] = -1
    _, want = model(idx, targets)
    logits, got = chunked(idx, targets, loss_chunk_rows=7)
    assert logits is None
    want.backward()
    got.backward()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for (name, p), (_, q) in zip(model.named_parameters(), chunked.named_parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_training_run_with_chunked_loss_ends_where_the_plain_one_does(tmp_path):
    """train.loss_chunk_rows in a real run: the losses along the way and the final weights within float rounding
    of the plain run's, and the setting is part of the run's trajectory (a different fingerprint)."""
    from conftest import prepared_shakespeare_char, tiny_config
    from nanogpt.config import resolve_run
    from nanogpt.train import train

    data_dir = prepared_shakespeare_char(tmp_path / "data")
    entry = copy.deepcopy(tiny_config()["runs"]["tiny"])
    entry["train"].update(max_iters=6, lr_decay_iters=6, eval_interval=3, eval_iters=2, dtype="float32")
    plain = resolve_run(entry, "tiny")
    chunked = resolve_run({**entry, "train": {**entry["train"], "loss_chunk_rows": 50}}, "tiny")
    assert plain.fingerprint() != chunked.fingerprint()
    assert chunked.trajectory()["train"]["loss_chunk_rows"] == 50
    logs = {}
    for name, run in (("plain", plain), ("chunked", chunked)):
        lines: list[str] = []
        train(run, data_dir, tmp_path / name, log=lines.append)
        logs[name] = [line for line in lines if "val loss" in line]
    assert len(logs["plain"]) == len(logs["chunked"]) >= 2
    a, b = (torch.load(tmp_path / n / "model.pt", weights_only=True)["model"] for n in ("plain", "chunked"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


def test_it_compiles_as_one_graph_with_the_model():
    """The trainer compiles with fullgraph=True: the chunked loss traces into the model's graph (no graph break),
    and the compiled loss and gradients are the eager ones."""
    torch.manual_seed(1)
    model = GPT(GPTConfig(block_size=16, vocab_size=97, n_layer=1, n_head=2, n_embd=32, bias=False))
    compiled_copy = copy.deepcopy(model)
    idx = torch.randint(0, 97, (2, 16))
    _, want = model(idx, idx, loss_chunk_rows=10)
    _, got = torch.compile(compiled_copy, fullgraph=True, backend="aot_eager")(idx, idx, loss_chunk_rows=10)
    want.backward()
    got.backward()
    torch.testing.assert_close(got, want)
    for p, q in zip(model.parameters(), compiled_copy.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad)
