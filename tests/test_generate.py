"""KV-cache generation: same logits as a full forward pass and same samples as nanoGPT's cache-free loop."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from nanogpt.model import GPT, GPTConfig, KVCache

VOCAB = 23


def make_model(block_size: int = 16, seed: int = 0) -> GPT:
    """A tiny model with large random weights, so logits are sharp and depend strongly on the context
    (with GPT-2's 0.02 init every distribution is near-uniform and a wrong cache would rarely change a draw)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32, bias=True))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model.eval()


def reference_generate(model: GPT, idx: torch.Tensor, n: int, temperature: float, top_k: int | None,
                       generator: torch.Generator) -> torch.Tensor:
    """nanoGPT's GPT.generate: the whole (cropped) context through a full forward pass for every token."""
    block = model.config.block_size
    for _ in range(n):
        logits, _ = model(idx[:, -block:], all_logits=True)
        logits = logits[:, -1, :] / temperature
        if top_k is not None:
            v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
            logits[logits < v[:, [-1]]] = -float("inf")
        probs = F.softmax(logits, dim=-1)
        idx = torch.cat((idx, torch.multinomial(probs, num_samples=1, generator=generator)), dim=1)
    return idx


def sample_three_ways(model: GPT, prompt: torch.Tensor, n: int, temperature: float = 0.7,
                      top_k: int | None = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = lambda: torch.Generator().manual_seed(1234)  # noqa: E731
    with torch.no_grad():
        ref = reference_generate(model, prompt, n, temperature, top_k, gen())
    cached = model.generate(prompt, n, temperature, top_k, use_cache=True, generator=gen())
    uncached = model.generate(prompt, n, temperature, top_k, use_cache=False, generator=gen())
    return ref, cached, uncached


@pytest.mark.parametrize("top_k", [None, 5])
def test_cached_samples_equal_reference_within_block(top_k: int | None) -> None:
    model = make_model(block_size=32)
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    ref, cached, uncached = sample_three_ways(model, prompt, 29, top_k=top_k)  # ends exactly at block_size
    assert ref.shape == (2, 32)
    assert torch.equal(cached, ref)
    assert torch.equal(uncached, ref)
    assert torch.equal(cached[:, :3], prompt)
    assert len(set(ref[0, 3:].tolist())) > 2  # the draws really vary, the test compares something


@pytest.mark.parametrize("prompt_len", [3, 8, 12])  # shorter than, equal to, longer than block_size
def test_cached_samples_equal_reference_past_block_size(prompt_len: int) -> None:
    model = make_model(block_size=8)
    prompt = torch.arange(prompt_len).remainder(VOCAB)[None, :]
    ref, cached, uncached = sample_three_ways(model, prompt, 30)
    assert ref.shape == (1, prompt_len + 30)
    assert torch.equal(cached, ref)
    assert torch.equal(uncached, ref)


def test_cached_logits_equal_full_forward() -> None:
    model = make_model(block_size=16)
    torch.manual_seed(5)
    seq = torch.randint(VOCAB, (2, 16))
    with torch.no_grad():
        full, _ = model(seq, all_logits=True)
        cache = KVCache(model.config.n_layer, model.config.block_size)
        pieces = [model(seq[:, :5], cache=cache, all_logits=True)[0]]  # prefill
        pieces.append(model(seq[:, 5:8], cache=cache, all_logits=True)[0])  # a chunk after cached keys
        for t in range(8, 16):  # one token per step
            pieces.append(model(seq[:, t:t + 1], cache=cache)[0])
    assert cache.length == 16
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-5)
    assert full.abs().max() > 1.0  # sharp logits: an error of 1e-5 is far below their scale


def test_last_position_logits_equal_full_forward() -> None:
    model = make_model(block_size=16)
    seq = torch.randint(VOCAB, (3, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        last, _ = model(seq)  # last layer runs attention output and MLP for the last position only
        full, _ = model(seq, all_logits=True)
    assert last.shape == (3, 1, VOCAB)
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=0, atol=1e-5)


def test_cache_is_preallocated_and_written_in_place() -> None:
    model = make_model(block_size=16)
    cache = KVCache(model.config.n_layer, model.config.block_size)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), cache=cache)
        ptrs = [k.data_ptr() for k in cache.k]
        assert cache.k[0].shape == (1, 2, 16, 16)
        for tok in range(4):
            model(torch.tensor([[tok]]), cache=cache)
    assert [k.data_ptr() for k in cache.k] == ptrs
    assert cache.length == 7


def test_sequence_past_block_size_raises() -> None:
    model = make_model(block_size=8)
    cache = KVCache(model.config.n_layer, model.config.block_size)
    with torch.no_grad():
        model(torch.zeros(1, 6, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="sequence length 9 exceeds block_size=8"):
            model(torch.zeros(1, 3, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="sequence length 9 exceeds block_size=8"):
            model(torch.zeros(1, 9, dtype=torch.long))


def test_training_loss_unchanged_by_inference_shortcut() -> None:
    """With targets, every position is computed: the loss equals cross-entropy of the full logits."""
    model = make_model(block_size=16)
    x = torch.randint(VOCAB, (2, 16), generator=torch.Generator().manual_seed(3))
    y = torch.roll(x, -1, dims=1)
    logits, loss = model(x, y)
    assert logits.shape == (2, 16, VOCAB)
    torch.testing.assert_close(loss, F.cross_entropy(logits.view(-1, VOCAB), y.view(-1)))
    loss.backward()
    assert model.transformer.h[-1].mlp.c_fc.weight.grad.abs().sum() > 0
