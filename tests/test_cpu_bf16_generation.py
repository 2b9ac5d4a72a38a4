"""Generation from bf16 weights on the CPU (nanogpt.sample.generation_precision): the weights are cast once, and
the logits stay close to the fp32 model's. Small random models, so the bounds are about bf16, not training."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from nanogpt.data.tokenizer import CharTokenizer
from nanogpt.model import GPT, KVCache
from nanogpt.runtime import CPU_FP32, Placement
from nanogpt.sample import generate_samples, generation_precision
from nanogpt.settings import GPTConfig, SampleSettings

VOCAB = 40
CPU_BF16 = Placement(torch.device("cpu"), torch.bfloat16)


def random_model(arch: str, seed: int = 0) -> GPT:
    """2 layers x 64 wide, every weight drawn at GPT-2's init scale (the zero biases too, so they count)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=32, vocab_size=VOCAB, n_layer=2, n_head=4, n_embd=64, arch=arch, bias=True))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model.eval()


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_bf16_weights_logits_match_fp32(arch):
    """Every position's logits within 5% of the logits' spread, and the same top token almost everywhere."""
    fp32 = random_model(arch)
    bf16 = copy.deepcopy(fp32)
    assert isinstance(generation_precision(bf16, CPU_BF16), type(generation_precision(fp32, CPU_FP32)))
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    assert all(p.dtype == torch.float32 for p in fp32.parameters())  # the fp32 placement leaves weights alone
    idx = torch.randint(0, VOCAB, (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, _ = fp32(idx, all_logits=True)
        got, _ = bf16(idx, all_logits=True)
    assert got.dtype == torch.bfloat16
    err = (got.float() - want).abs().max().item()
    spread = want.std().item()
    assert 0 < err < 0.05 * spread, (err, spread)  # not 0: the weights really are bf16
    agree = (got.float().argmax(-1) == want.argmax(-1)).float().mean().item()
    assert agree >= 0.95, agree


def test_bf16_cached_decoding_matches_its_full_forward():
    """The KV cache in bf16 gives the logits of a full bf16 forward over the same tokens (bf16 rounding only)."""
    model = random_model("gpt2")
    generation_precision(model, CPU_BF16)
    idx = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(2))
    cache = KVCache(len(model.transformer.h), 32)
    with torch.no_grad():
        model(idx[:, :10], cache=cache)
        steps = [model(idx[:, t : t + 1], cache=cache)[0][:, -1].float() for t in range(10, 20)]
        full, _ = model(idx, all_logits=True)
    assert cache.k[0].dtype == torch.bfloat16
    for t, logits in zip(range(10, 20), steps, strict=True):
        torch.testing.assert_close(logits, full[:, t].float(), atol=0.03, rtol=0.03)


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_bf16_decoding_keeps_fp32_keys_and_values_closer_to_fp32(arch):
    """`generate` keeps a bf16 model's keys and values in fp32 on the CPU (decoding.cache_dtype: the CPU's fp32
    attention is the fast one): the values stored are the bf16 ones exactly, the activations stay bf16, and
    the logits are at least as close to the fp32 model's as with a bf16 cache."""
    from nanogpt.decoding import cache_dtype

    fp32 = random_model(arch)
    bf16 = copy.deepcopy(fp32)
    generation_precision(bf16, CPU_BF16)
    assert cache_dtype(bf16) == torch.float32 and cache_dtype(fp32) is None
    idx = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(4))
    caches = {dtype: KVCache(len(bf16.transformer.h), 32, dtype) for dtype in (torch.float32, None)}
    errors = {}
    with torch.no_grad():
        want = fp32(idx, all_logits=True)[0]
        for dtype, cache in caches.items():
            bf16(idx[:, :10], cache=cache)
            steps = torch.stack([bf16(idx[:, t : t + 1], cache=cache)[0][:, -1] for t in range(10, 20)], 1)
            assert steps.dtype == torch.bfloat16
            errors[dtype] = (steps.float() - want[:, 10:]).abs().max().item()
    wide, narrow = caches[torch.float32], caches[None]
    assert wide.k[0].dtype == torch.float32 and narrow.k[0].dtype == torch.bfloat16
    assert torch.equal(wide.k[0][:, :, :20], narrow.k[0][:, :, :20].float())  # the first layer's keys, exactly
    assert errors[torch.float32] <= errors[None] * 1.05 + 1e-3, errors
    assert errors[torch.float32] < 0.05 * want.std().item()


def test_bf16_samples_are_reproducible_and_mostly_the_fp32_ones():
    """Same seed, same samples; and on this model the bf16 text agrees with fp32's from its start."""
    tok = CharTokenizer([chr(ord("a") + i) if i < 26 else chr(ord("A") + i - 26) for i in range(VOCAB)])
    settings = SampleSettings(model="tiny", start="abc", num_samples=2, max_new_tokens=25, seed=5)
    fp32_text, _ = generate_samples(random_model("gpt2"), tok, settings)
    first, _ = generate_samples(random_model("gpt2"), tok, settings, CPU_BF16)
    again, _ = generate_samples(random_model("gpt2"), tok, settings, CPU_BF16)
    assert first == again
    assert first[0][:8] == fp32_text[0][:8]  # the prompt, then the first 5 new tokens drawn alike


def test_one_row_decoding_steps_skip_onednn_and_stay_close_to_fp32():
    """A bf16 decoding step of one row runs with oneDNN off (ATen's one-row kernel), restored after it; its logits
    are the fp32 model's within bf16 rounding. Prefills, several rows and fp32 weights leave oneDNN alone."""
    from nanogpt.decoding import one_row_kernels

    fp32 = random_model("gpt2")
    bf16 = copy.deepcopy(fp32)
    generation_precision(bf16, CPU_BF16)
    assert all(p.is_contiguous() for p in bf16.parameters())  # the row-major layout that kernel streams
    assert torch.backends.mkldnn.enabled
    for model, rows, off in ((bf16, 1, True), (bf16, 2, False), (fp32, 1, False)):
        with one_row_kernels(model, rows):
            assert torch.backends.mkldnn.enabled is not off
        assert torch.backends.mkldnn.enabled
    idx = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(3))
    cache = KVCache(len(bf16.transformer.h), 32)
    with torch.no_grad():
        bf16(idx[:, :8], cache=cache)
        for t in range(8, 12):
            with one_row_kernels(bf16, 1):
                got = bf16(idx[:, t : t + 1], cache=cache)[0][:, -1].float()
            want = fp32(idx[:, : t + 1])[0][:, -1]
            assert (got - want).abs().max().item() < 0.05 * want.std().item()


def test_bf16_generation_casts_the_weights_once_on_a_gpu_too():
    """On a GPU a bf16 placement also casts the weights once (no autocast re-reading fp32 weights at every token);
    the CPU's row-major layout is a CPU matter. fp32 on a GPU keeps its weights and autocasts as before."""
    model = random_model("gpt2")
    cuda_bf16 = Placement(torch.device("cuda"), torch.bfloat16)
    strides = [p.stride() for p in model.parameters()]
    assert isinstance(generation_precision(model, cuda_bf16), contextlib.nullcontext)  # no autocast
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert [p.stride() for p in model.parameters()] == strides
    fp32 = random_model("gpt2")
    strides = [p.stride() for p in fp32.parameters()]
    generation_precision(fp32, Placement(torch.device("cuda"), torch.float32))
    assert all(p.dtype == torch.float32 for p in fp32.parameters())
    assert [p.stride() for p in fp32.parameters()] == strides
