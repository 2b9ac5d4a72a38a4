"""The faster recipes: `optimizer: muon` and `arch: modern`, opt-in beside nanoGPT's defaults.

Muon's state goes through a checkpoint and a resumed run ends bit-identical; 2 processes x 2 micro-batches train
like 1 x 4; the modern block's KV cache (rotary positions inside the cache) samples what full recomputation
samples; exports refuse what the other side cannot run; wrong names are one-line errors; and config.yaml's recipe
entries and `recipes` sweep run through snakemake.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from test_generate import eager_fixed_shape_step, reference_generate, reference_generate_refresh

from conftest import BIN, REPO, make_pipeline, prepared_shakespeare_char, run_snakemake, tiny_config
from nanogpt import checkpoint as ckpt_io
from nanogpt.config import resolve_run
from nanogpt.decoding import generate
from nanogpt.errors import ConfigError
from nanogpt.model import GPT, KVCache
from nanogpt.optim import MuonAdamW, build_optimizer, set_lr
from nanogpt.settings import GPTConfig
from nanogpt.train import train

RECIPE = {"model": {"arch": "modern"}, "train": {"optimizer": "muon", "muon_lr": 0.02}}
VOCAB = 23


def tiny_run(recipe: dict = RECIPE, **train_settings) -> dict:
    """tiny_config()'s run (fp32 on the CPU) with a recipe's model and train settings merged in."""
    entry = copy.deepcopy(tiny_config()["runs"]["tiny"])
    entry["model"].update(recipe.get("model", {}))
    entry["train"].update({**recipe.get("train", {}), **train_settings})
    return entry


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """tiny Shakespeare, char-level, prepared from the bundled copy."""
    return prepared_shakespeare_char(tmp_path_factory.mktemp("data"))


def modern_model(block_size: int = 16, seed: int = 0) -> GPT:
    """A tiny modern model with large random weights (its zero-initialised projections would hide a wrong cache)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32, arch="modern"))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model.eval()


# ---- settings --------------------------------------------------------------------------------------------------

def test_new_settings_at_their_defaults_change_no_fingerprint() -> None:
    """Existing runs keep their trajectory: every new setting written out at its default hashes the same."""
    entry = tiny_run(recipe={})
    explicit = tiny_run(recipe={"model": {"arch": "gpt2"}, "train": {
        "optimizer": "adamw", "muon_lr": 0.02, "muon_momentum": 0.95, "muon_weight_decay": 0.0,
        "muon_adjust_lr": "original"}})
    a, b = resolve_run(entry, "tiny"), resolve_run(explicit, "tiny")
    assert a.fingerprint({"v": 1}) == b.fingerprint({"v": 1}) and a.trajectory() == b.trajectory()
    assert "arch" not in a.trajectory()["model"] and "optimizer" not in a.trajectory()["train"]
    fast = resolve_run(tiny_run(), "tiny")
    assert fast.trajectory()["model"]["arch"] == "modern" and fast.trajectory()["train"]["optimizer"] == "muon"
    assert fast.fingerprint({"v": 1}) != a.fingerprint({"v": 1})


@pytest.mark.parametrize(("section", "key", "value", "message"), [
    ("train", "optimizer", "sgd", "runs.tiny.train.optimizer='sgd': expected one of adamw, muon"),
    ("model", "arch", "llama", "runs.tiny.model.arch='llama': expected one of gpt2, modern"),
    ("train", "muon_adjust_lr", "rms", "runs.tiny.train.muon_adjust_lr='rms': expected one of original, "
                                       "match_rms_adamw"),
    ("train", "muon_momentum", 1.0, r"runs.tiny.train.muon_momentum=1.0: expected a number in [0, 1)"),
    ("train", "muon_lr", 0.0, "runs.tiny.train.muon_lr=0.0: expected a number in (0, 10]"),
    ("train", "muon_weight_decay", -0.1, "runs.tiny.train.muon_weight_decay=-0.1: expected a number in [0, 100]"),
])
def test_wrong_names_and_values_are_one_line_errors(section: str, key: str, value, message: str) -> None:
    entry = tiny_run(recipe={})
    entry[section][key] = value
    with pytest.raises(ConfigError) as err:
        resolve_run(entry, "tiny")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_wrong_optimizer_on_the_command_line_is_one_line(tmp_path) -> None:
    cmd = [str(BIN / "nanogpt"), "train", "--name", "tiny", "--spec", json.dumps(tiny_run(recipe={})),
           "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "out"), "--optimizer=adam"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "nanogpt train: error: runs.tiny.train.optimizer='adam': expected one of adamw, muon"]
    assert not (tmp_path / "out").exists()


# ---- the optimizer ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_muon_takes_the_blocks_matrices_and_follows_the_schedule(arch: str) -> None:
    run = resolve_run(tiny_run(recipe={"model": {"arch": arch}, "train": {"optimizer": "muon", "muon_lr": 0.05}},
                               learning_rate=2e-3, min_lr=2e-4), "tiny")
    model = GPT(run.gpt_config(65))
    opt = build_optimizer(model, run.train, "cpu")
    assert isinstance(opt, MuonAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = sorted(names[id(p)] for g in opt.optimizers["muon"].param_groups for p in g["params"])
    adamw = sorted(names[id(p)] for g in opt.optimizers["adamw"].param_groups for p in g["params"])
    assert muon == sorted(n for n, p in model.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2)
    assert sorted(muon + adamw) == sorted(names.values())  # every parameter once (tied ones once)
    taken = {id(p) for g in opt.optimizers["adamw"].param_groups for p in g["params"]}
    assert id(model.lm_head.weight) in taken and id(model.transformer.wte.weight) in taken  # (tied in gpt2)
    set_lr(opt, 1e-3)  # half of learning_rate: Muon's lr halves too
    assert {g["lr"] for g in opt.optimizers["adamw"].param_groups} == {1e-3}
    assert [g["lr"] for g in opt.optimizers["muon"].param_groups] == [pytest.approx(0.025)]
    # adamw stays nanoGPT's optimizer object, untouched
    plain = build_optimizer(model, resolve_run(tiny_run(recipe={}), "tiny").train, "cpu")
    assert isinstance(plain, torch.optim.AdamW) and len(plain.param_groups) == 2


def test_muon_state_round_trips_and_resume_is_bit_identical(data_dir, tmp_path) -> None:
    """Muon + AdamW, the modern block, dropout on: 8 iterations then lengthened to 16 (resumed from the
    checkpoint at 8, optimizer states and RNG included) ends with the weights of 16 in one go, bit for bit."""
    entry = tiny_run(max_iters=16, lr_decay_iters=16, eval_interval=8, checkpoint_interval=4)
    entry["model"]["dropout"] = 0.1
    log = []
    train(resolve_run(entry, "tiny"), data_dir, tmp_path / "whole", log=lambda *a: None)
    train(resolve_run({**entry, "train": {**entry["train"], "max_iters": 8}}, "tiny"), data_dir, tmp_path / "two",
          log=lambda *a: None)
    half = torch.load(tmp_path / "two" / "model.pt", weights_only=True)
    train(resolve_run(entry, "tiny"), data_dir, tmp_path / "two", log=log.append)
    assert any("resuming from" in line and "iter 8" in line for line in log)
    whole, resumed = (torch.load(tmp_path / d / "model.pt", weights_only=True) for d in ("whole", "two"))
    assert whole["model"].keys() == resumed["model"].keys()
    assert all(torch.equal(whole["model"][k], resumed["model"][k]) for k in whole["model"])
    assert not torch.equal(half["model"]["transformer.h.0.mlp.c_proj.weight"],
                           whole["model"]["transformer.h.0.mlp.c_proj.weight"])  # 8 more steps moved them
    # both optimizers' states are in the checkpoint, and load into a fresh optimizer unchanged
    state = half["optimizer"]
    assert set(state) == {"adamw", "muon"}
    buffers = [s["momentum_buffer"] for s in state["muon"]["state"].values()]
    assert len(buffers) == 4 and all(b.abs().sum() > 0 for b in buffers)  # one per matrix of the 1-layer block
    model = ckpt_io.model_from_checkpoint(half)
    opt = build_optimizer(model, resolve_run(entry, "tiny").train, "cpu")
    opt.load_state_dict(state)
    again = opt.state_dict()
    for name in ("adamw", "muon"):
        for key, s in state[name]["state"].items():
            assert all(torch.equal(v, again[name]["state"][key][k]) for k, v in s.items())


def test_ddp_two_by_two_trains_like_one_by_four(data_dir, tmp_path) -> None:
    """Muon + modern, float32: torchrun with 2 gloo ranks x 2 micro-batches = 1 process x 4, step by step."""
    def run(nproc: int) -> Path:
        entry = tiny_run(gradient_accumulation_steps=4, max_iters=12, lr_decay_iters=12, eval_interval=12)
        entry["launch"] = {"nproc_per_node": nproc}
        out = tmp_path / f"np{nproc}"
        env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")
        proc = subprocess.run([str(BIN / "nanogpt"), "train", "--name", "tiny", "--spec", json.dumps(entry),
                               "--data-dir", str(data_dir), "--out-dir", str(out)],
                              capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        return out

    one, two = run(1), run(2)
    rows = [[json.loads(line) for line in (d / "history.jsonl").read_text().splitlines()] for d in (one, two)]
    assert [r["iter"] for r in rows[0]] == [r["iter"] for r in rows[1]] == list(range(1, 13))
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(*rows, strict=True)) < 1e-5
    wa, wb = (torch.load(d / "model.pt", weights_only=True)["model"] for d in (one, two))
    diff = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert diff < 1e-5, diff
    assert json.loads((two / "metrics.json").read_text())["world_size"] == 2


# ---- the modern block ------------------------------------------------------------------------------------------

def test_modern_block_parameters_init_and_flops() -> None:
    model = GPT(GPTConfig(block_size=16, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32, bias=False,
                          arch="modern"))
    names = [n for n, _ in model.named_parameters()]
    assert "transformer.wpe.weight" not in names and not any("ln_" in n for n in names)  # rotary, weightless norms
    assert model.lm_head.weight is not model.transformer.wte.weight  # untied
    for block in model.transformer.h:  # zero-initialised output projections: every block starts as the identity
        assert block.attn.c_proj.weight.abs().sum() == 0 and block.mlp.c_proj.weight.abs().sum() == 0
    x = torch.randint(VOCAB, (2, 16))
    _, loss = model(x, x)
    assert abs(loss.item() - math.log(VOCAB)) < 0.05
    # MFU counts this architecture's matmuls: the blocks and lm_head, not the embedding lookup
    n = 2 * (32 * 96 + 32 * 32 + 32 * 128 * 2) + VOCAB * 32
    assert model.get_num_params() == n
    assert model.flops_per_token() == 6 * n + 12 * 2 * 2 * 16 * 16
    # causality, with rotary positions
    model = modern_model()
    a, _ = model(x, all_logits=True)
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 1) % VOCAB
    b, _ = model(y, all_logits=True)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_modern_surgery_keeps_the_head_untied() -> None:
    model = modern_model()
    head, emb = model.lm_head.weight.detach().clone(), model.transformer.wte.weight.detach().clone()
    model.keep_vocab_rows([3, 1, 2])
    torch.testing.assert_close(model.lm_head.weight, head[[3, 1, 2]])
    torch.testing.assert_close(model.transformer.wte.weight, emb[[3, 1, 2]])
    assert model.lm_head.weight is not model.transformer.wte.weight
    model.crop_block_size(8)
    assert model.config.block_size == 8 and model(torch.zeros(1, 8, dtype=torch.long))[0].shape == (1, 1, 3)


def test_modern_cached_logits_equal_full_recompute() -> None:
    """Keys are cached after their rotation: a prompt, then one token at a time, gives the full pass's logits;
    so does the fixed-shape decoding step (rotary at the position tensor, what a CUDA graph replays)."""
    from nanogpt.decoding import StaticDecodeStep

    model = modern_model()
    seq = torch.randint(VOCAB, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full, _ = model(seq, all_logits=True)
        plain, fixed = KVCache(2, 16), KVCache(2, 16)
        first, _ = model(seq[:, :5], cache=plain, all_logits=True)
        model(seq[:, :5], cache=fixed)
        step = StaticDecodeStep(model, fixed, batch=2, use_graph=False)
        torch.testing.assert_close(first, full[:, :5], rtol=0, atol=1e-5)
        for t in range(5, 16):
            want, _ = model(seq[:, t:t + 1], cache=plain)
            torch.testing.assert_close(want[:, 0], full[:, t], rtol=0, atol=1e-5)
            torch.testing.assert_close(step(seq[:, t:t + 1], t)[:, 0], full[:, t], rtol=0, atol=1e-5)


@pytest.mark.parametrize("prompt_len", [3, 21])  # inside the window, and cropped to it
def test_modern_samples_equal_full_recompute(prompt_len: int, monkeypatch) -> None:
    """Within block_size the cached, cache-free and fixed-shape-step samples are nanoGPT's full-recompute ones;
    past it, all three follow the window rule (positions restart at each refresh, so rotations do too)."""
    model = modern_model()
    prompt = torch.randint(VOCAB, (2, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    with torch.no_grad():
        within = reference_generate(model, prompt[:, :3], 13, 0.7, 5, gen())
        past = reference_generate_refresh(model, prompt, 40, 0.7, 5, gen(), k=4)
    assert torch.equal(generate(model, prompt[:, :3], 13, 0.7, 5, generator=gen()), within)
    for use_cache in (True, False):
        assert torch.equal(generate(model, prompt, 40, 0.7, 5, use_cache=use_cache, generator=gen()), past)
    eager_fixed_shape_step(monkeypatch)
    assert torch.equal(generate(model, prompt[:, :3], 13, 0.7, 5, generator=gen(), cuda_graph=True), within)
    assert torch.equal(generate(model, prompt, 40, 0.7, 5, generator=gen(), cuda_graph=True), past)


# ---- exports and bench -----------------------------------------------------------------------------------------

def save_checkpoint(model: GPT, path: Path, optimizer: dict | None = None) -> Path:
    meta = {"tokenizer": {"kind": "char", "chars": [chr(97 + i) for i in range(VOCAB)]}, "vocab_size": VOCAB}
    ckpt_io.save({"format": ckpt_io.FORMAT, "model": model.state_dict(), "model_args": model.config.to_dict(),
                  "iter_num": 1, "best_val_loss": 2.0, "dataset_meta": meta,
                  **({"optimizer": optimizer} if optimizer else {})}, path)
    return path


def test_exports_refuse_modern_in_one_line(tmp_path) -> None:
    from nanogpt.interop import export_nanogpt
    from nanogpt.pretrained import export_hf

    ckpt = save_checkpoint(modern_model(), tmp_path / "modern.pt")
    with pytest.raises(ConfigError, match=r"^cannot export a model.arch='modern' model in nanoGPT's format: "
                                          r"nanoGPT's model.py cannot run it .*expected an arch gpt2 model$"):
        export_nanogpt(ckpt, tmp_path / "ng")
    pytest.importorskip("transformers")
    with pytest.raises(ConfigError, match=r"^cannot export a model.arch='modern' model to Hugging Face: no "
                                          r"transformers architecture .*expected an arch gpt2 model$"):
        export_hf(ckpt, tmp_path / "hf")
    assert not (tmp_path / "ng").exists() and not (tmp_path / "hf").exists()


def test_nanogpt_export_of_a_muon_run_leaves_out_the_optimizer(tmp_path) -> None:
    """gpt2 trained with Muon: nanoGPT runs the weights, but its AdamW resume cannot read Muon + AdamW states."""
    from nanogpt.interop import export_nanogpt

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=VOCAB, n_layer=1, n_head=2, n_embd=32))
    t = resolve_run(tiny_run(recipe={"train": {"optimizer": "muon"}}), "tiny").train
    opt = build_optimizer(model, t, "cpu")
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[1].backward()
    opt.step()
    out = export_nanogpt(save_checkpoint(model, tmp_path / "muon.pt", opt.state_dict()), tmp_path / "ng")
    exported = torch.load(out / "ckpt.pt", weights_only=True)
    assert "optimizer" not in exported and exported["model_args"]["n_layer"] == 1
    assert torch.equal(exported["model"]["lm_head.weight"], model.lm_head.weight)


def test_bench_times_muon_and_modern() -> None:
    from nanogpt.bench import bench

    shape = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 16, "batch_size": 2, "device": "cpu",
             "dtype": "float32", "compile": False, "peak_flops": 1e12}
    result = bench({**shape, "arch": "modern", "optimizer": "muon"}, steps=2, warmup=1)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=50304, arch="modern"))
    assert result["params_M"] == model.get_num_params() / 1e6  # the modern model's own count
    assert result["median_ms_per_iter"] > 0 and 0 < result["mfu"] < 1


# ---- config.yaml's recipes through snakemake -------------------------------------------------------------------

def test_recipe_entries_and_the_recipes_sweep_run_through_snakemake(tmp_path) -> None:
    """config.yaml's `recipes` sweep (4 points: adamw/muon x gpt2/modern around shakespeare_char_cpu_fast), its
    iterations cut to a few, trains, samples the modern + muon point and plots through snakemake; both recipe
    entries resolve into training jobs (dry run)."""
    from nanogpt.report.sweeps import val_seconds

    repo = yaml.safe_load((REPO / "config.yaml").read_text())
    short = {"max_iters": 6, "lr_decay_iters": 6, "warmup_iters": 2, "eval_interval": 3, "eval_iters": 2,
             "log_interval": 1}
    cfg = tiny_config()
    for name in ("shakespeare_char_cpu", "shakespeare_char_cpu_fast", "shakespeare_char", "shakespeare_char_fast"):
        cfg["runs"][name] = copy.deepcopy(repo["runs"][name])
    cfg["sweeps"] = {"recipes": copy.deepcopy(repo["sweeps"]["recipes"])}
    cfg["sweeps"]["recipes"]["fixed"].update(short)
    cfg["samples"] = {"fast": {"model": "recipes-arch_modern-optimizer_muon", "num_samples": 1,
                               "max_new_tokens": 80}}
    cfg["targets"] = {"runs": [], "samples": ["fast"], "evals": [], "sweeps": ["recipes"]}
    cfg["summary"] = {"enabled": False}
    work = make_pipeline(tmp_path / "p", cfg)
    for recipe in ("shakespeare_char_cpu_fast", "shakespeare_char_fast"):
        dry = run_snakemake(work, "-n", f"results/runs/{recipe}/model.pt")
        assert f"run={recipe}" in dry.stdout
    run_snakemake(work, timeout=400)

    assert len((work / "results/samples/fast.txt").read_text()) > 80
    assert len((work / "results/sweeps/recipes/summary.csv").read_text().splitlines()) == 5
    combos = set()
    for point in (work / "results/runs").glob("recipes-*"):
        state = torch.load(point / "model.pt", weights_only=True)
        combos.add((state["model_args"]["arch"], "muon" if "muon" in state["optimizer"] else "adamw"))
        assert json.loads((point / "metrics.json").read_text())["iters"] == 6
        seconds = val_seconds(point)  # the wall-time axis of curves.png
        assert sorted(seconds) == [0, 3, 6] and seconds[0] == 0 < seconds[3] < seconds[6]
    assert combos == {(a, o) for a in ("gpt2", "modern") for o in ("adamw", "muon")}
    assert (work / "results/sweeps/recipes/curves.png").read_bytes()[:4] == b"\x89PNG"


def test_our_muon_is_torchs_with_the_iteration_in_float32_when_asked() -> None:
    """bf16 Newton-Schulz: torch.optim.Muon's step bit for bit; float32: the same update up to bf16's rounding."""
    from nanogpt.optim import Muon

    torch.manual_seed(0)
    shapes = [(96, 32), (32, 128), (32, 32)]
    for dtype, tol in ((torch.bfloat16, 0.0), (torch.float32, 2e-3)):
        ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
        theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
        a = Muon(ours, ns_dtype=dtype, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
        b = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
        for _ in range(3):
            for p, q in zip(ours, theirs, strict=True):
                p.grad = torch.randn_like(p)
                q.grad = p.grad.clone()
            a.step()
            b.step()
        diff = max((p - q).abs().max().item() for p, q in zip(ours, theirs, strict=True))
        assert diff <= tol and (dtype == torch.bfloat16 or diff > 0)
        assert a.state_dict()["state"].keys() == b.state_dict()["state"].keys()
