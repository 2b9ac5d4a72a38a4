"""benchmarks/gpu_call.sh (the one GPU command) end to end on the CPU (TINY=1), so its first GPU run is not its
first run.

With $NANOGPT_REFERENCE or $NANOGPT_REF pointing at a nanoGPT checkout, nanoGPT's side runs too; otherwise ours
only. Every step runs with yaml, tiktoken, transformers, datasets and snakemake made unimportable, as on a bare GPU
box (our training still needs tensorboard: nanogpt.tracking writes events).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"
BLOCKED = ("yaml", "tiktoken", "transformers", "snakemake", "datasets")  # tensorboard: our training needs it
BLOCKER = f"""
import sys
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by test_gpu_check)")
        return None
sys.meta_path.insert(0, _Blocker())
"""


def nanogpt_reference() -> Path | None:
    value = os.environ.get("NANOGPT_REFERENCE") or os.environ.get("NANOGPT_REF")
    return Path(value) if value else None


def load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_baby_settings_match_config_yaml():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    assert load_script().BABY == config["runs"]["shakespeare_char"]
    assert load_script().FAST == config["runs"]["shakespeare_char_fast"]


def test_time_to_target_is_the_first_eval_at_or_below_it():
    gpu_check = load_script()
    evals = [{"iter": i, "val_loss": v, "s": 10.0 * i} for i, v in ((0, 4.2), (1, 1.6), (2, 1.47), (3, 1.40))]
    hit = gpu_check.time_to_target(evals, 1.47)
    assert (hit["time_to_target_s"], hit["iter_at_target"], hit["best_val_loss"]) == (20.0, 2, 1.40)
    missed = gpu_check.time_to_target(evals[:2], 1.47)
    assert missed["time_to_target_s"] is None and missed["best_val_loss"] == 1.6
    line = "step 250: train loss 1.2345, val loss 1.4697"
    assert gpu_check.VAL_LINE.match(line).groups() == ("250", "1.4697")


def test_bytes_per_token_counts_every_weight_once_and_the_keys_and_values():
    """What a decoded token reads: the tied embedding once, not the position table, the KV cache so far."""
    import torch

    from nanogpt.model import GPT, GPTConfig

    gpu_check = load_script()
    model = GPT(GPTConfig(block_size=64, vocab_size=100, n_layer=2, n_head=2, n_embd=16, bias=False))
    weights = sum(p.numel() for p in model.parameters()) - 64 * 16  # parameters() lists the tied weight once
    kv = 2 * 2 * 16 * 4 * (1 + 10) / 2  # keys and values, 2 layers, fp32, 5.5 positions on average
    assert gpu_check.bytes_per_token(model, 10) == weights * 4 + kv
    assert gpu_check.bytes_per_token(model.to(torch.bfloat16), 10) == (weights * 4 + kv) / 2
    assert gpu_check.memory_bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12
    assert gpu_check.memory_bandwidth("NVIDIA H200") == 4.8e12 and gpu_check.memory_bandwidth("cpu") is None


@pytest.fixture(scope="module")
def tiny_call(tmp_path_factory) -> tuple[dict, Path]:
    """TINY=1 bash benchmarks/gpu_call.sh, as the GPU machine runs it, with optional packages blocked."""
    work = tmp_path_factory.mktemp("gpu_call")
    site = work / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    out = work / "out"
    env = dict(os.environ, PYTHONPATH=str(site), TINY="1", PYTHON=sys.executable, OUT=str(out),
               TMPDIR=str(work))
    ref = nanogpt_reference()
    env["NANOGPT_REF"] = str(ref) if ref is not None else str(work / "no-nanogpt")
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_call.sh")], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| baby GPT (20 iters): ms/iter (median) |" in proc.stdout  # the printed table
    return json.loads((out / "gpu_check.json").read_text()), out


@pytest.fixture(scope="module")
def tiny_report(tiny_call) -> dict:
    return tiny_call[0]


def test_call_leaves_its_files_in_out(tiny_call):
    """What comes back from a GPU machine: the log, the environment, the numbers, every step's log."""
    _, out = tiny_call
    assert sorted(p.name for p in out.iterdir()) == ["env.txt", "gpu_call.log", "gpu_check.json", "logs.tar.gz"]
    assert "torch" in (out / "env.txt").read_text()
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"probes.log", "train_ours.log", "generate.log", "bench_ours.log"} <= names


def test_probes_pass_on_the_cpu(tiny_report):
    probes = {k: v for k, v in tiny_report["steps"]["probes"].items() if k != "missing_optional"}
    assert set(probes) == {"tf32", "compile_fp32", "async_batches", "step_syncs", "token_syncs", "resume"}
    assert all(p.get("ok") for p in probes.values()), probes
    assert probes["resume"]["bitwise"] is True  # CPU: a resumed run ends bit-identical
    assert probes["tf32"]["float32_matmul_precision"] == "high"


def test_median_leaves_out_warmup_and_eval_iterations():
    """nanoGPT logs the iteration that began with an eval (i % eval_interval == 0), ours the one after it
    (== 1): each side's median is taken over plain iterations only."""
    gpu_check = load_script()
    log = "\n".join(f"iter {i}: loss 2.0, time {500.0 if i % 10 == 0 else 10.0 + i % 3}ms, mfu 1.0%"
                    for i in range(0, 41))
    timing = gpu_check.parse_iteration_times(log, 10, eval_offset=0)
    assert timing["ms_per_iter"] == 11.0 and timing["timed_iters"] == 27  # 10..40 without 10, 20, 30, 40
    shifted = gpu_check.parse_iteration_times(log.replace("500.0", "10.0"), 10, eval_offset=1)
    assert shifted["timed_iters"] == 28


def test_tiny_run_measures_ours_without_optional_packages(tiny_report):
    steps = tiny_report["steps"]
    ours = steps["train_ours"]
    assert ours["iters"] == 20 and math.isfinite(ours["best_val_loss"]) and ours["best_val_loss"] < 4.2
    assert ours["ms_per_iter"] > 0 and ours["wall_s"] > 0
    assert "yaml" in ours["missing_optional"] and "tiktoken" in ours["missing_optional"]  # blocked, and said so
    assert [row["new_tokens"] for row in steps["generate"]["rows"]] == [16, 80]  # 80 > block 64: the window slides
    assert all(row["ours_tok_s"] > 0 for row in steps["generate"]["rows"])
    assert steps["bench_ours"]["tokens_per_s"] > 0
    variants = steps["bench_variants"]["variants"]
    assert set(variants) == {"loss_chunk_rows=64", "batch_size=32", "arch=modern, optimizer=muon", "sdpa=math"}
    assert all(v["tokens_per_s"] > 0 for v in variants.values()), variants
    assert all(row["ours_bf16_tok_s"] > 0 and row["ours_bf16_bytes_per_token"] > 0
               for row in steps["generate"]["rows"])
    recipe = steps["recipe_ours"]
    assert recipe["iter_at_target"] == 0 and recipe["time_to_target_s"] > 0 and recipe["recipe"]["arch"] == "modern"
    assert steps["probes"]["step_syncs"]["iter_num"] == 8  # 3 + 5 steps ran; syncs are counted on CUDA
    assert any(note.startswith("yaml not installed") for note in tiny_report["notes"])


def test_tiny_run_compares_with_nanogpt_when_a_checkout_is_given(tiny_report):
    if nanogpt_reference() is None:
        assert "train_ref" not in tiny_report["steps"]
        assert any("nanoGPT side skipped" in note for note in tiny_report["notes"])
        pytest.skip("nanoGPT side not run: set NANOGPT_REFERENCE or NANOGPT_REF to a nanoGPT checkout")
    steps = tiny_report["steps"]
    ref = steps["train_ref"]
    assert ref["ms_per_iter"] > 0 and abs(ref["best_val_loss"] - steps["train_ours"]["best_val_loss"]) < 0.1
    for row in steps["generate"]["rows"]:
        assert row["ours_identical"] is True and row["ours_eager_identical"] is True, row  # same weights and seed
    assert steps["recipe_ref"]["iter_at_target"] == 0 and steps["recipe_ref"]["time_to_target_s"] > 0
