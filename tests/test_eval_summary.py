"""Through Snakemake: evaluate a local tiny GPT-2 (a `pretrained:` entry) and one of our runs, finetune from the
tiny GPT-2, sample from it, and gather everything into the summary table, loss curves and the HTML report."""

from __future__ import annotations

import json
import math
import shlex

import pandas as pd
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import SHAKESPEARE_SHA256, SHAKESPEARE_URL, make_pipeline, run_snakemake, tiny_config
from nanogpt import checkpoint as ckpt_io
from nanogpt.evaluate import evaluate
from nanogpt.pipeline.entries import Pipeline
from nanogpt.pipeline.jobs import Jobs
from nanogpt.pretrained import load_pretrained
from nanogpt.report.summary import collect, eval_row
from nanogpt.settings import EvalSettings

VOCAB = 50257  # the BPE dataset's vocabulary


def pipeline_config(hf_dir: str) -> dict:
    cfg = tiny_config()
    cfg["datasets"]["shakespeare"] = {"source": {"url": SHAKESPEARE_URL, "sha256": SHAKESPEARE_SHA256},
                                      "tokenizer": "gpt2", "val_fraction": 0.1}
    cfg["pretrained"] = {"tinyhf": hf_dir}
    cfg["runs"]["ft"] = {
        "dataset": "shakespeare", "init_from": "tinyhf",
        "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "vocab_size": VOCAB, "bias": True},
        "train": {"batch_size": 2, "gradient_accumulation_steps": 2, "max_iters": 3, "learning_rate": 3.0e-5,
                  "min_lr": 3.0e-6, "decay_lr": False, "eval_interval": 3, "eval_iters": 2, "log_interval": 1,
                  "device": "cpu", "dtype": "float32"},
        "launch": {"nproc_per_node": 1}, "resources": {"cpus_per_task": 1, "mem_mb": 2000, "runtime": 10},
    }
    common = {"batch_size": 2, "eval_iters": 3, "device": "cpu", "dtype": "float32"}
    cfg["evals"] = {"tinyhf": {"model": "tinyhf", "datasets": ["shakespeare"], "block_size": 32, **common},
                    "tiny": {"model": "tiny", "datasets": ["shakespeare_char"], **common}}
    cfg["samples"]["tinyhf"] = {"model": "tinyhf", "start": "\n", "num_samples": 1, "max_new_tokens": 5,
                                "device": "cpu", "dtype": "float32"}
    cfg["targets"] = {"runs": ["tiny", "ft"], "samples": ["tinyhf"], "evals": ["tinyhf", "tiny"]}
    return cfg


def test_eval_finetune_sample_summary_pipeline(tmp_path, mirror_env):
    torch.manual_seed(0)
    hf_dir = tmp_path / "tiny-gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                               activation_function="gelu")).save_pretrained(hf_dir)
    cfg = pipeline_config(str(hf_dir))
    work = make_pipeline(tmp_path / "pipeline", cfg)
    run_snakemake(work, timeout=500)
    res = work / "results"

    # the eval rule's number is what evaluate() gives in this process for the same model, data and settings
    ev = json.loads((res / "eval/tinyhf/shakespeare.json").read_text())
    direct = evaluate(load_pretrained(str(hf_dir)), str(res / "data/shakespeare"),
                      EvalSettings(batch_size=2, block_size=32, eval_iters=3))
    assert ev["model"] == "tinyhf" and ev["block_size"] == 32 and ev["eval_iters"] == 3
    assert abs(ev["val_loss"] - direct["val_loss"]) < 1e-5 and abs(ev["train_loss"] - direct["train_loss"]) < 1e-5
    assert abs(ev["val_loss"] - math.log(VOCAB)) < 0.5  # an untrained model is near uniform
    assert json.loads((res / "eval/tiny/shakespeare_char.json").read_text())["val_loss"] < math.log(65) + 0.5

    # finetuned from the tiny HF model, context cropped from 64 to the run's 16
    state = ckpt_io.load(res / "runs/ft/model.pt")
    assert state["model_args"]["block_size"] == 16 and state["model_args"]["n_embd"] == 32
    assert state["model"]["transformer.wpe.weight"].shape == (16, 32)
    assert (res / "samples/tinyhf.txt").read_text().strip()

    # the summary: one row per run and per eval, and a PNG loss curve per run
    df = pd.read_csv(res / "summary.csv")
    assert sorted(zip(df["kind"], df["model"], strict=True)) == [
        ("eval", "tiny"), ("eval", "tinyhf"), ("run", "ft"), ("run", "tiny")]
    row = df[(df["kind"] == "eval") & (df["model"] == "tinyhf")].iloc[0]
    assert row["val_loss"] == ev["val_loss"] and row["dataset"] == "shakespeare"
    assert df[df["model"] == "ft"].iloc[0]["val_loss"] == json.loads((res / "runs/ft/metrics.json").read_text())["val_loss"]
    md = (res / "summary.md").read_text()
    assert "| kind | model | dataset |" in md and "tinyhf" in md
    for run in ("tiny", "ft"):
        assert (res / f"plots/{run}_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a result built outside the targets (e.g. `snakemake gpt2_baselines`) joins the table on `-R summary`
    assert "Nothing to be done" in run_snakemake(work, "-n").stdout
    extra = res / "eval/tinyhf/shakespeare_char.json"
    extra.write_text(json.dumps({**ev, "dataset": "shakespeare_char"}))
    run_snakemake(work, "-R", "summary", timeout=120)
    assert len(pd.read_csv(res / "summary.csv")) == 5

    # snakemake --report bundles the summary and loss curves
    run_snakemake(work, "--report", "report.zip", timeout=200)
    assert (work / "report.zip").stat().st_size > 1000


def test_eval_settings_and_published_numbers(tmp_path):
    cfg = pipeline_config("/nowhere")
    p = Pipeline(cfg)
    words = shlex.split(str(Jobs(p).eval_args("tinyhf", "shakespeare")))
    assert words[0] == "--spec" and words[2:] == ["--data-dir", "results/data/shakespeare"]
    spec = json.loads(words[1])
    assert spec["init_from"] == "/nowhere" and spec["block_size"] == 32 and spec["eval_iters"] == 3
    assert (spec["model"], spec["dataset"]) == ("tinyhf", "shakespeare")
    assert json.loads(p.eval_spec("tiny", "shakespeare_char"))["checkpoint"] == "results/runs/tiny/model.pt"
    assert json.loads(p.eval_spec("tinyhf", "shakespeare_char"))["batch_size"] == 8  # no entry: nanoGPT's defaults
    # tracked: the source and the settings off their defaults only
    assert json.loads(p.eval_identity("tinyhf", "shakespeare_char")) == {"source": {"init_from": "/nowhere"},
                                                                          "settings": {}}
    cfg["evals"]["clash"] = {"model": "tinyhf", "datasets": ["shakespeare"], "batch_size": 4}
    try:
        Jobs(Pipeline(cfg)).eval_args("tinyhf", "shakespeare")
        raise AssertionError("expected a ConfigError for two differing entries")
    except ValueError as e:
        assert "tinyhf" in str(e) and "shakespeare" in str(e)
    assert '"init_from": "/nowhere"' in p.run_spec("ft")  # a `pretrained` name resolves for init_from too

    (tmp_path / "eval/gpt2-xl").mkdir(parents=True)
    f = tmp_path / "eval/gpt2-xl/openwebtext.json"
    f.write_text(json.dumps({"model": "gpt2-xl", "dataset": "openwebtext", "train_loss": 2.5, "val_loss": 2.6}))
    row = eval_row(f)
    assert (row["published_train_loss"], row["published_val_loss"]) == (2.56, 2.54)
    df = collect(tmp_path)
    assert list(df["model"]) == ["gpt2-xl"] and df.iloc[0]["published_val_loss"] == 2.54
