"""A user's own data and runs: a text file or a folder of documents as a dataset, runs that inherit (`base:`),
finetuning from one's own run as a pipeline edge, and the tokenizer check that makes it safe."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import BIN, REPO, make_pipeline, run_snakemake, tiny_config, write_config
from nanogpt.config import inherit_runs, resolve_run, settings_warnings
from nanogpt.data.tokenizer import CharTokenizer, vocab_remap
from nanogpt.errors import ConfigError
from nanogpt.model import GPT, GPTConfig
from nanogpt.pipeline.entries import Pipeline

SHAKESPEARE = REPO / "nanogpt" / "assets" / "tinyshakespeare" / "input.txt"


def own_text(folder: Path, n_bytes: int = 300_000) -> Path:
    """A user's 300 kB text file (the first 300 kB of tiny Shakespeare, under another name)."""
    path = folder / "my_text.txt"
    path.write_bytes(SHAKESPEARE.read_bytes()[:n_bytes])
    return path


def own_text_config() -> dict:
    config = tiny_config()
    config["datasets"]["my_text"] = {"path": "my_text.txt"}
    config["runs"]["my_run"] = {"base": "tiny", "dataset": "my_text"}
    config["targets"] = {"runs": ["my_run"], "samples": [], "evals": []}
    return config


@pytest.fixture(scope="module")
def own_run(tmp_path_factory) -> Path:
    """One dataset entry (`path:`), one run entry (`base:`), one command."""
    work = make_pipeline(tmp_path_factory.mktemp("own") / "pipeline", own_text_config())
    own_text(work)
    run_snakemake(work)
    return work


# ---- your own text ---------------------------------------------------------------------------------------------
def test_own_text_trains_with_one_entry_and_one_command(own_run):
    meta = json.loads((own_run / "results/data/my_text/meta.json").read_text())
    assert meta["train_tokens"] == 270_000 and meta["val_tokens"] == 30_000  # split by characters, 90/10
    assert meta["source"]["file"] == "my_text.txt" and len(meta["source"]["sha256"]) == 64  # recorded, not asked
    metrics = json.loads((own_run / "results/runs/my_run/metrics.json").read_text())
    assert metrics["iters"] == 20 and metrics["provenance"]["config"]["dataset"] == "my_text"
    assert not (own_run / "results/data/my_text/source.txt").exists()  # nothing downloaded or copied


def test_editing_the_text_reprepares_and_retrains(own_run, tmp_path):
    work = tmp_path / "pipeline"
    shutil.copytree(own_run, work, symlinks=True)
    with open(work / "my_text.txt", "a") as f:
        f.write("\nA new line of the user's own.\n")
    proc = run_snakemake(work, "-n")
    assert "rule prepare:" in proc.stdout and "rule train:" in proc.stdout


def test_prepare_text_needs_no_config(tmp_path):
    text = own_text(tmp_path, 100_000)
    proc = subprocess.run([str(BIN / "nanogpt"), "prepare", "--text", str(text), "--out-dir", str(tmp_path / "d")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "90,000 train / 10,000 val tokens" in proc.stdout
    ids = np.fromfile(tmp_path / "d" / "train.bin", dtype=np.uint16)
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert CharTokenizer(meta["tokenizer"]["chars"]).decode(ids[:40].tolist()) == text.read_text()[:40]


def test_a_folder_of_documents_is_a_corpus(tmp_path):
    """`path:` a folder of .jsonl files: documents, GPT-2 BPE, nanoGPT's document split."""
    docs = tmp_path / "pipeline" / "docs"
    docs.mkdir(parents=True)
    for part in range(2):
        lines = [json.dumps({"text": f"Document {part}-{i}: " + "words " * 20}) for i in range(40)]
        (docs / f"part{part}.jsonl").write_text("\n".join(lines) + "\n")
    config = tiny_config()
    config["datasets"] = {"docs": {"path": "docs", "val_fraction": 0.1}}
    config["runs"], config["samples"] = {}, {}
    config["targets"] = {"runs": [], "samples": [], "evals": []}
    work = make_pipeline(tmp_path / "pipeline", config)
    run_snakemake(work, "results/data/docs/meta.json")
    meta = json.loads((work / "results/data/docs/meta.json").read_text())
    assert meta["tokenizer"]["kind"] == "gpt2" and meta["train_tokens"] > 0 and meta["val_tokens"] > 0


def test_a_path_that_does_not_exist_fails_before_any_job(tmp_path, monkeypatch):
    """The pipeline's checks (the Snakefile's first step) find it; paths are relative to the working directory."""
    monkeypatch.chdir(tmp_path)  # my_text.txt not created
    with pytest.raises(ConfigError, match=r"datasets.my_text.path='my_text.txt' matches no file"):
        Pipeline(own_text_config()).check()


# ---- runs that inherit ---------------------------------------------------------------------------------------
def test_base_merges_deeply_and_the_entry_wins():
    runs = inherit_runs({"a": {"dataset": "d", "model": {"n_layer": 4, "n_embd": 128}, "train": {"max_iters": 9}},
                         "b": {"base": "a", "model": {"n_layer": 2}},
                         "c": {"base": "b", "train": {"learning_rate": 1e-3}}})
    assert runs["c"] == {"dataset": "d", "model": {"n_layer": 2, "n_embd": 128},
                         "train": {"max_iters": 9, "learning_rate": 1e-3}}
    assert runs["a"]["model"] == {"n_layer": 4, "n_embd": 128}  # the base is left as it was


@pytest.mark.parametrize(("runs", "message"), [
    ({"b": {"base": "nope"}}, r"runs.b.base='nope': not a run, expected one of \['b'\]"),
    ({"a": {"base": "b"}, "b": {"base": "a"}}, r"runs.b.base='a': a cycle \(a -> b -> a\)"),
])
def test_a_broken_base_is_one_line(runs, message):
    with pytest.raises(ConfigError, match=message):
        inherit_runs(runs)


def test_a_short_run_with_long_run_defaults_is_warned_about(tmp_path):
    run = resolve_run({"dataset": "d", "train": {"max_iters": 200}}, "short")
    assert [w.split(":")[0] for w in settings_warnings(run, "short")] == [
        "runs.short.train.warmup_iters=2000 >= max_iters=200",
        "runs.short.train.lr_decay_iters=600000 is far beyond max_iters=200",
        "runs.short.train.eval_interval=2000 > max_iters=200"]
    config = tiny_config()
    config["runs"]["tiny"]["train"]["warmup_iters"] = 50
    work = make_pipeline(tmp_path / "pipeline", config)
    proc = run_snakemake(work, "-n")
    assert "nanogpt: warning: runs.tiny.train.warmup_iters=50 >= max_iters=20" in proc.stderr


# ---- finetuning one's own run -----------------------------------------------------------------------------------
def test_finetune_from_own_run_is_a_pipeline_edge(own_run, tmp_path):
    """init_from: a run name makes that run's model.pt an input: trained first, and retrained -> finetune again."""
    work = tmp_path / "pipeline"
    shutil.copytree(own_run, work, symlinks=True)
    config = own_text_config()
    config["runs"]["my_ft"] = {"base": "my_run", "init_from": "my_run",
                               "train": {"max_iters": 4, "lr_decay_iters": 4, "learning_rate": 1e-4}}
    config["targets"]["runs"] = ["my_ft"]
    write_config(work, config)
    run_snakemake(work)
    log = (work / "logs/train/my_ft.log").read_text()
    assert "done:" in log and "reordered" not in log  # the same dataset: the same ids
    config["runs"]["my_run"]["train"] = {"learning_rate": 2e-3}
    write_config(work, config)
    proc = run_snakemake(work, "-n")
    assert "results/runs/my_run/model.pt" in proc.stdout and "results/runs/my_ft/model.pt" in proc.stdout


def test_init_from_a_run_that_starts_from_itself_is_refused():
    config = tiny_config()
    config["runs"]["a"] = {"base": "tiny", "init_from": "b"}
    config["runs"]["b"] = {"base": "tiny", "init_from": "a"}
    with pytest.raises(ConfigError, match=r"runs.a.init_from='b': a cycle \(a -> b -> a\)"):
        Pipeline(config).check()


def test_tokenizers_must_agree():
    model = {"kind": "char", "chars": list("abcdef")}
    assert vocab_remap(model, {"kind": "char", "chars": list("abcdef")}, "x") is None
    assert vocab_remap(model, {"kind": "char", "chars": list("fca")}, "x") == [5, 2, 0]  # a covered subset
    with pytest.raises(ConfigError, match=r"x: 2 character\(s\) of the dataset are not in the model's vocabulary"):
        vocab_remap(model, {"kind": "char", "chars": list("abxy")}, "x")
    with pytest.raises(ConfigError, match="the model's tokenizer is 'gpt2' but the dataset's is 'char'"):
        vocab_remap({"kind": "gpt2"}, {"kind": "char", "chars": list("ab")}, "x")
    assert vocab_remap(None, {"kind": "char", "chars": list("ab")}, "x") is None  # nanoGPT: nothing recorded


def test_remapped_vocabulary_gives_the_same_logits_per_character():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=6)).eval()
    chars = list("abcdef")
    before, _ = model(torch.tensor([[chars.index(c) for c in "fca"]]))
    model.keep_vocab_rows([5, 2, 0])  # the new vocabulary "fca"
    after, _ = model(torch.tensor([[0, 1, 2]]))
    assert model.config.vocab_size == 3 and model.lm_head.weight is model.transformer.wte.weight
    torch.testing.assert_close(after[0, -1], before[0, -1, [5, 2, 0]])
