"""KV-cache generation: same logits as a full forward pass and same samples as nanoGPT's cache-free loop within
block_size; past it, the samples of the documented window rule (`window_refresh`), nanoGPT's with window_refresh=1."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from nanogpt.decoding import generate
from nanogpt.errors import ConfigError
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


def next_token(logits: torch.Tensor, temperature: float, top_k: int | None,
               generator: torch.Generator) -> torch.Tensor:
    """nanoGPT's sampling of the next token from the last position's logits."""
    logits = logits[:, -1, :] / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits[logits < v[:, [-1]]] = -float("inf")
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator)


def reference_generate(model: GPT, idx: torch.Tensor, n: int, temperature: float, top_k: int | None,
                       generator: torch.Generator) -> torch.Tensor:
    """nanoGPT's GPT.generate: the whole (cropped) context through a full forward pass for every token."""
    block = model.config.block_size
    for _ in range(n):
        logits, _ = model(idx[:, -block:], all_logits=True)
        idx = torch.cat((idx, next_token(logits, temperature, top_k, generator)), dim=1)
    return idx


def sample_three_ways(model: GPT, prompt: torch.Tensor, n: int, temperature: float = 0.7,
                      top_k: int | None = 5, window_refresh: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """nanoGPT's loop, our cached and our cache-free generate (window_refresh=1: nanoGPT's cropping)."""
    gen = lambda: torch.Generator().manual_seed(1234)  # noqa: E731
    with torch.no_grad():
        ref = reference_generate(model, prompt, n, temperature, top_k, gen())
    cached = generate(model, prompt, n, temperature, top_k, use_cache=True, generator=gen(),
                            window_refresh=window_refresh)
    uncached = generate(model, prompt, n, temperature, top_k, use_cache=False, generator=gen(),
                              window_refresh=window_refresh)
    return ref, cached, uncached


def refresh_context_start(L: int, T0: int, block: int, k: int) -> int:
    """Where the context of token L starts under GPT.generate's documented rule, in closed form: the prompt
    cropped to block tokens; the context grows to block, then every k tokens restarts from its last
    block - k + 1 tokens (the first restart at the first token whose context would exceed block)."""
    first = max(0, T0 - block)
    overflow = first + block + 1  # the first token whose context would be block + 1 tokens
    if L < overflow:
        return first
    return overflow + (L - overflow) // k * k - (block - k + 1)


def reference_generate_refresh(model: GPT, idx: torch.Tensor, n: int, temperature: float, top_k: int | None,
                               generator: torch.Generator, k: int) -> torch.Tensor:
    """The window rule with nanoGPT's loop: a full forward of each token's (closed-form) context, no cache."""
    block, T0 = model.config.block_size, idx.size(1)
    for L in range(T0, T0 + n):
        start = refresh_context_start(L, T0, block, k)
        assert block - k + 1 <= L - start <= block or start == 0
        logits, _ = model(idx[:, start:], all_logits=True)
        idx = torch.cat((idx, next_token(logits, temperature, top_k, generator)), dim=1)
    return idx


def eager_fixed_shape_step(monkeypatch) -> list:
    """cuda_graph=True on the CPU would fail at capture: run the same fixed-shape step eagerly (what the graph
    records). Returns the list of steps created, one per generate call."""
    from nanogpt import decoding

    original = decoding.StaticDecodeStep.__init__
    made = []

    def eager_init(self, *args, use_graph: bool, **kwargs):  # same step, never captured
        original(self, *args, use_graph=False, **kwargs)
        made.append(self)

    monkeypatch.setattr(decoding.StaticDecodeStep, "__init__", eager_init)
    return made


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
def test_window_refresh_one_equals_reference_past_block_size(prompt_len: int) -> None:
    """window_refresh=1 recomputes the window at every token: nanoGPT's per-token cropping, sample for sample."""
    model = make_model(block_size=8)
    prompt = torch.arange(prompt_len).remainder(VOCAB)[None, :]
    ref, cached, uncached = sample_three_ways(model, prompt, 30, window_refresh=1)
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


def test_fixed_shape_decode_step_equals_cached_forward() -> None:
    """nanogpt.decoding's step (what a CUDA graph replays on GPUs; eager here): the whole cache with a mask
    gives the logits of the plain cached forward, position by position, batch rows independent."""
    from nanogpt.decoding import StaticDecodeStep

    model = make_model(block_size=16)
    seq = torch.randint(VOCAB, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain = KVCache(model.config.n_layer, 16)
        fixed = KVCache(model.config.n_layer, 16)
        model(seq[:, :4], cache=plain)
        model(seq[:, :4], cache=fixed)
        step = StaticDecodeStep(model, fixed, batch=2, use_graph=False)
        for t in range(4, 16):
            want, _ = model(seq[:, t:t + 1], cache=plain)
            got = step(seq[:, t:t + 1], t)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert fixed.k[0].shape[2] == 16 and torch.equal(fixed.k[0], plain.k[0][:, :, :16])


def test_generate_with_the_fixed_shape_step_equals_reference(monkeypatch) -> None:
    """The loop with the eager fixed-shape step (what the CUDA graph records) draws nanoGPT's samples."""
    model = make_model(block_size=32)
    prompt = torch.tensor([[1, 2, 3]])
    gen = lambda: torch.Generator().manual_seed(99)  # noqa: E731
    with torch.no_grad():
        ref = reference_generate(model, prompt, 29, 0.7, 5, gen())
    eager_fixed_shape_step(monkeypatch)
    assert torch.equal(generate(model, prompt, 29, 0.7, 5, generator=gen(), cuda_graph=True), ref)


@pytest.mark.parametrize("prompt_len", [5, 16, 21])  # shorter than, equal to, longer than block_size
@pytest.mark.parametrize("batch", [1, 3])
def test_samples_past_block_size_follow_the_window_rule(prompt_len: int, batch: int, monkeypatch) -> None:
    """Default window_refresh (block_size // 4 = 4): cached, cache-free and fixed-shape-step generation draw the
    samples of the closed-form rule, token for token, across several refreshes."""
    model = make_model(block_size=16)
    prompt = torch.randint(VOCAB, (batch, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    n = 45  # past block_size by at least 29 tokens: 7 refreshes or more
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    with torch.no_grad():
        ref = reference_generate_refresh(model, prompt, n, 0.7, 5, gen(), k=4)
        nanogpt = reference_generate(model, prompt, n, 0.7, 5, gen())
    cached = generate(model, prompt, n, 0.7, 5, generator=gen(), cuda_graph=False)
    uncached = generate(model, prompt, n, 0.7, 5, use_cache=False, generator=gen())
    steps = eager_fixed_shape_step(monkeypatch)
    fixed = generate(model, prompt, n, 0.7, 5, generator=gen(), cuda_graph=True)
    assert ref.shape == (batch, prompt_len + n)
    assert torch.equal(cached, ref)
    assert torch.equal(uncached, ref)
    assert torch.equal(fixed, ref)
    assert len(steps) == 1  # one step (one graph on CUDA) for the whole call, refreshes included
    assert not torch.equal(ref, nanogpt)  # the rule really draws from other contexts than nanoGPT's cropping


@pytest.mark.parametrize("k", [2, 3, 15, 16])  # 16 = block_size: a refresh keeps the newest token only
def test_samples_past_block_size_with_any_window_refresh(k: int, monkeypatch) -> None:
    model = make_model(block_size=16)
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    gen = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    with torch.no_grad():
        ref = reference_generate_refresh(model, prompt, 50, 0.7, 5, gen(), k=k)
    assert torch.equal(generate(model, prompt, 50, 0.7, 5, generator=gen(), window_refresh=k), ref)
    assert torch.equal(generate(model, prompt, 50, 0.7, 5, use_cache=False, generator=gen(), window_refresh=k), ref)
    eager_fixed_shape_step(monkeypatch)
    assert torch.equal(generate(model, prompt, 50, 0.7, 5, generator=gen(), cuda_graph=True, window_refresh=k), ref)


def test_window_refresh_one_is_nanogpt_with_the_fixed_shape_step(monkeypatch) -> None:
    model = make_model(block_size=8)
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    with torch.no_grad():
        ref = reference_generate(model, prompt, 30, 0.7, 5, gen())
    eager_fixed_shape_step(monkeypatch)
    assert torch.equal(generate(model, prompt, 30, 0.7, 5, generator=gen(), cuda_graph=True, window_refresh=1), ref)


def test_fixed_shape_step_continues_after_a_refresh() -> None:
    """The step keeps the cache object it was made with: after reset and a new prefill into the same buffers it
    gives the logits of the plain cached forward at the restarted positions."""
    from nanogpt.decoding import StaticDecodeStep

    model = make_model(block_size=16)
    seq = torch.randint(VOCAB, (2, 30), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        fixed = KVCache(model.config.n_layer, 16)
        model(seq[:, :4], cache=fixed)
        step = StaticDecodeStep(model, fixed, batch=2, use_graph=False)
        for t in range(4, 16):
            step(seq[:, t:t + 1], t)
        buffers = [k.data_ptr() for k in fixed.k]
        fixed.reset()
        model(seq[:, 10:20], cache=fixed)  # the window restarted at token 10, positions from 0
        plain = KVCache(model.config.n_layer, 16)
        model(seq[:, 10:20], cache=plain)
        for t in range(20, 26):
            want, _ = model(seq[:, t:t + 1], cache=plain)
            got = step(seq[:, t:t + 1], t - 10)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert [k.data_ptr() for k in fixed.k] == buffers and fixed.length == plain.length == 16


@pytest.mark.parametrize("bad", [0, -1, 17, 2.5, True, "4"])
def test_bad_window_refresh_is_one_config_error(bad) -> None:
    model = make_model(block_size=16)
    with pytest.raises(ConfigError, match=r"window_refresh=.*: expected an integer in \[1, block_size=16\]"):
        generate(model, torch.tensor([[1]]), 2, window_refresh=bad)


def large_vocab_case(n_embd: int, seed: int) -> tuple:
    """A model with a vocabulary large enough for MKL to pick its big-matrix kernels, a prompt, a generator maker
    and nanoGPT's 40 tokens after the prompt."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=64, vocab_size=4096, n_layer=2, n_head=4, n_embd=n_embd, bias=True)).eval()
    prompt = torch.tensor([[5, 6, 7]])
    gen = lambda: torch.Generator().manual_seed(seed + 90)  # noqa: E731
    with torch.no_grad():
        ref = reference_generate(model, prompt, 40, 1.0, None, gen())
    return model, prompt, gen, ref


def test_column_major_weights_keep_nanogpts_samples() -> None:
    """`nanogpt sample` on a CPU in fp32 stores the weights transposed (MKL's one-row matmul streams them faster):
    the logits are the row-major model's and the samples nanoGPT's, at a vocabulary large enough for MKL to pick
    its big-matrix kernels."""
    from nanogpt.runtime import CPU_FP32
    from nanogpt.sample import generation_precision

    model, prompt, gen, ref = large_vocab_case(n_embd=256, seed=3)
    with torch.no_grad():
        row_logits, _ = model(ref[:, :20], all_logits=True)
    generation_precision(model, CPU_FP32)
    assert model.lm_head.weight.stride() == (1, 4096) and model.transformer.wte.weight is model.lm_head.weight
    assert model.transformer.h[0].mlp.c_fc.weight.stride() == (1, 1024)
    with torch.no_grad():
        col_logits, _ = model(ref[:, :20], all_logits=True)
    torch.testing.assert_close(col_logits, row_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(generate(model, prompt, 40, 1.0, None, generator=gen()), ref)
    assert len(set(ref[0, 3:].tolist())) > 20  # the draws really vary


@pytest.mark.parametrize("threads", [2, 3])
def test_one_row_steps_split_over_threads_keep_nanogpts_samples(threads: int, monkeypatch) -> None:
    """On several threads a one-row fp32 step runs each linear as partial products over slices of its input
    dimension, one per thread (decoding.SplitInputLinear): logits within 1e-5 of the unsplit step's, and
    nanoGPT's samples. Prefills and several rows are not split."""
    from nanogpt import decoding
    from nanogpt.runtime import CPU_FP32
    from nanogpt.sample import generation_precision

    model, prompt, gen, ref = large_vocab_case(n_embd=192, seed=4)
    generation_precision(model, CPU_FP32)
    splits = []  # (weight values, slices) of each linear
    measure = decoding.SplitInputLinear.splits_of
    monkeypatch.setattr(decoding.SplitInputLinear, "splits_of",
                        lambda self, x, w: splits.append((w.numel(), measure(self, x, w))) or splits[-1][1])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            cache = KVCache(2, 64)
            model(ref[:, :20], cache=cache)
            assert not splits  # the prefill: not one row
            plain, _ = model(ref[:, 20:21], cache=cache)
            cache.length = 20
            with decoding.one_row_kernels(model, 1):
                split, _ = model(ref[:, 20:21], cache=cache)
        assert len(splits) == 4 * 2 + 1  # 4 linears per layer, and the head
        assert [n for n, k in splits if k == threads] == [n for n, _ in splits if n >= decoding.SPLIT_MIN_WEIGHT]
        assert splits[-1] == (4096 * 192, threads) and splits[2] == (4 * 192 * 192, threads)  # head, MLP
        torch.testing.assert_close(split, plain, rtol=1e-5, atol=1e-5)
        assert torch.equal(generate(model, prompt, 40, 1.0, None, generator=gen()), ref)
    finally:
        torch.set_num_threads(before)
    assert len(set(ref[0, 3:].tolist())) > 20  # the draws really vary


def test_split_input_linear_leaves_what_it_cannot_split() -> None:
    """Several rows, bf16, row-major or small weights and an input dimension with no divisor up to the thread count
    run as F.linear; an input dimension gets the largest divisor up to the threads."""
    from nanogpt.decoding import SplitInputLinear

    col = torch.randn(30, 12).t().contiguous().t()
    assert SplitInputLinear(5).splits_of(torch.randn(1, 12), col) == 1  # 360 values: in cache
    mode = SplitInputLinear(5, min_weight=360)
    assert mode.splits_of(torch.randn(1, 12), col) == 4
    assert mode.splits_of(torch.randn(1, 1, 12), col) == 4
    assert mode.splits_of(torch.randn(2, 12), col) == 1
    assert mode.splits_of(torch.randn(1, 12), col.contiguous()) == 1
    assert mode.splits_of(torch.randn(1, 12).bfloat16(), col.bfloat16()) == 1
    prime = torch.randn(30, 7).t().contiguous().t()
    assert SplitInputLinear(5, min_weight=1).splits_of(torch.randn(1, 7), prime) == 1  # 7 is prime
    x, bias = torch.randn(1, 1, 12), torch.randn(30)
    with mode:
        y = F.linear(x, col, bias)
    torch.testing.assert_close(y, F.linear(x, col, bias), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("graph", ["graph-safe", "stale", "capture fails"])
def test_a_draw_inside_the_graph_falls_back_when_it_cannot_be_replayed(graph: str, monkeypatch):
    """The step draws the token inside its graph while each replay advances the generator (CUDA's graph-safe
    generators). If the draw cannot be captured, the step records the model alone; if a replay leaves the
    generator where it was, the step draws eagerly from the replayed logits from then on. Either way nanoGPT's
    samples. The graph is stood in for by a replay of the recorded step: a graph-safe one draws afresh, a stale
    one repeats its recorded token."""
    from nanogpt import decoding

    class Replay:
        def __init__(self, step):
            self.step = step

        def replay(self):
            logits = self.step._logits()
            self.step.logits.copy_(logits)
            if self.step.draw_in_graph and graph == "graph-safe":
                self.step.drawn.copy_(self.step.draw(logits[:, -1, :]))
                offsets.append(len(offsets))

    offsets = [0]
    steps = []

    def capture(self):
        if graph == "capture fails" and self.draw_in_graph:
            raise RuntimeError("operation not permitted when stream is capturing")
        state = self.draw.generator.get_state()
        self._record()  # the recording run: its draw is undone, as _capture restores the generator's state
        self.draw.generator.set_state(state)
        self.graph = Replay(self)
        steps.append(self)

    monkeypatch.setattr(decoding.StaticDecodeStep, "_capture", capture)
    monkeypatch.setattr(decoding.StaticDecodeStep, "_generator_offset", lambda self: offsets[-1])
    model = make_model(block_size=32)
    prompt = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        ref = reference_generate(model, prompt, 20, 0.7, 5, torch.Generator().manual_seed(3))
    got = generate(model, prompt, 20, 0.7, 5, generator=torch.Generator().manual_seed(3), cuda_graph=True)
    assert torch.equal(got, ref)
    assert len(steps) == 1 and steps[0].draw_in_graph is (graph == "graph-safe")


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch's inductor
def test_a_compiled_decoding_step_gives_the_eager_steps_logits() -> None:
    """generate(compile_step=True) compiles the fixed-shape step's model part (what the CUDA graph then records):
    the eager step's logits at every position, from one compilation (the position is a tensor, not a constant)."""
    from nanogpt.decoding import StaticDecodeStep

    model = make_model(block_size=16)
    seq = torch.randint(VOCAB, (2, 16), generator=torch.Generator().manual_seed(5))
    graphs = []

    def counter(graph, example_inputs):  # a torch.compile backend that counts its compilations, then runs eagerly
        graphs.append(graph)
        return graph.forward
    with torch.no_grad():
        caches = [KVCache(model.config.n_layer, 16) for _ in range(2)]
        for cache in caches:
            model(seq[:, :4], cache=cache)
        eager = StaticDecodeStep(model, caches[0], batch=2, use_graph=False)
        compiled = StaticDecodeStep(model, caches[1], batch=2, use_graph=False, compiled=True)
        assert compiled.step_logits is not compiled._logits
        counted = StaticDecodeStep(model, KVCache(model.config.n_layer, 16), batch=2, use_graph=False)
        counted.step_logits = torch.compile(counted._logits, fullgraph=True, dynamic=False, backend=counter)
        model(seq[:, :4], cache=counted.cache)
        for t in range(4, 12):
            want = eager(seq[:, t : t + 1], t)
            torch.testing.assert_close(compiled(seq[:, t : t + 1], t), want, rtol=1e-5, atol=1e-5)
            counted(seq[:, t : t + 1], t)
    assert len(graphs) == 1
