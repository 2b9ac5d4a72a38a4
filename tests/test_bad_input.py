"""Bad input: one clear line naming the bad value and what is expected, exit 2, nothing left behind.

Most checks call `nanogpt.cli.main([...])` in-process; a few go through the `nanogpt` executable, and the
config-level ones also through `snakemake -n` on a copy of the pipeline (the way a user meets them).
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from conftest import BIN, REPO, SHAKESPEARE_SHA256, make_pipeline, run_snakemake, tiny_config
from nanogpt import checkpoint as ckpt_io
from nanogpt.cli import main
from nanogpt.config import resolve_run
from nanogpt.data.prepare import prepare_text
from nanogpt.errors import ConfigError
from nanogpt.model import GPT, GPTConfig
from nanogpt.pipeline.entries import Pipeline

TINY_MODEL = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 16, "dropout": 0.0, "bias": False}


# ---- helpers ------------------------------------------------------------------------------------------

def files_under(path: Path) -> list[str]:
    """Every file (and leftover folder) at or below `path`; [] when it does not exist."""
    if not path.exists():
        return []
    return [str(p) for p in path.rglob("*")] or ([] if path.is_dir() else [str(path)])


def cli_error(capsys, cmd: str, *args: str) -> str:
    """Run `nanogpt cmd args` in-process; it must exit 2 with exactly one `nanogpt cmd: error:` line (settings
    warnings, lines of their own, may come before it: the tiny runs here keep long-run defaults)."""
    capsys.readouterr()
    rc = main([cmd, *args])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(f"nanogpt {cmd}: warning: ")]
    assert rc == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"nanogpt {cmd}: error: "), err
    assert "expected" in lines[0] or "did you mean" in lines[0], err  # says what would be right
    return lines[0]


def cli_error_subprocess(cwd: Path, *args: str) -> str:
    """The same through the installed `nanogpt` executable: exit 2, one stderr line, no traceback."""
    env = dict(os.environ)  # downloads: $NANOGPT_MIRROR if set, else the files bundled in nanogpt/assets
    proc = subprocess.run([str(BIN / "nanogpt"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith(f"nanogpt {args[0]}: warning: ")]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"nanogpt {args[0]}: error: "), proc.stderr
    return lines[0]


def snakemake_dry_run_fails(tmp_path: Path, config: dict) -> str:
    """`snakemake -n` on a pipeline copy with `config`: non-zero exit, no results/; returns its output."""
    workdir = make_pipeline(tmp_path / "pipeline", config)
    proc = run_snakemake(workdir, "-n", check=False, timeout=120)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert files_under(workdir / "results") == []
    return proc.stdout + proc.stderr


def pipeline_error(config: dict) -> str:
    """What `snakemake -n` would stop on before any job, found in-process: config.yaml's round trip through YAML,
    then the pipeline's checks (the Snakefile's first step) must fail with one ConfigError."""
    with pytest.raises(ConfigError) as e:
        Pipeline(yaml.safe_load(yaml.safe_dump(config, sort_keys=False))).check()
    return str(e.value)


def spec(**sections) -> str:
    """A run entry as the JSON `--spec` the train rule passes."""
    entry = {"dataset": "tiny", "model": dict(TINY_MODEL),
             "train": {"device": "cpu", "dtype": "float32", "batch_size": 2, "max_iters": 2, "eval_iters": 1,
                       "eval_interval": 1}}
    for key, value in sections.items():
        if isinstance(value, dict):
            entry.setdefault(key, {}).update(value)
        else:
            entry[key] = value
    return json.dumps(entry)


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "input.txt"
    path.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[:20000])
    return path


@pytest.fixture(scope="module")
def data_dir(corpus, tmp_path_factory) -> Path:
    """A prepared char dataset: 18,000 train / 2,000 val tokens."""
    out = tmp_path_factory.mktemp("data") / "tiny"
    prepare_text(corpus, out)
    return out


@pytest.fixture(scope="module")
def model_pt(data_dir, tmp_path_factory) -> Path:
    """A checkpoint in our format (weights + model_args + the dataset's tokenizer), no training needed."""
    meta = json.loads((data_dir / "meta.json").read_text())
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY_MODEL, vocab_size=meta["vocab_size"]))
    path = tmp_path_factory.mktemp("run") / "model.pt"
    ckpt_io.save({"format": ckpt_io.FORMAT, "model": model.state_dict(), "model_args": model.config.to_dict(),
                  "iter_num": 0, "best_val_loss": float("inf"), "dataset_meta": meta}, path)
    return path


# ---- config -------------------------------------------------------------------------------------------

def test_malformed_yaml(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("runs:\n  a: {dataset: x,\n    model: [1\n")
    line = cli_error(capsys, "train", "--config", str(bad), "--name", "a", "--out-dir", str(tmp_path / "out"))
    assert "malformed YAML" in line and str(bad) in line and re.search(r"line \d+, column \d+", line)
    assert files_under(tmp_path / "out") == []

    # config.yaml is checked before Snakemake reads it: the same one line, with where, before any job.
    workdir = make_pipeline(tmp_path / "pipeline")
    (workdir / "config.yaml").write_text("runs:\n  tiny: {dataset: [1,\n")
    proc = run_snakemake(workdir, "-n", check=False, timeout=120)
    assert proc.returncode != 0
    assert "config file 'config.yaml' is malformed YAML at line 3, column 1" in proc.stdout + proc.stderr
    assert files_under(workdir / "results") == []


def test_unknown_config_key_suggests_closest(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"unknown key runs\.r\.train\.learnig_rate \(did you mean 'learning_rate'\?\)"):
        resolve_run({"dataset": "d", "train": {"learnig_rate": 1e-3}}, "r")
    with pytest.raises(ConfigError, match=r"unknown setting 'n_embed' \(did you mean 'n_embd'\?\)"):
        resolve_run({"dataset": "d"}, "r", {"n_embed": 64})

    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"runs": {"a": {"dataset": "d", "model": {"n_layr": 2}}}}))
    line = cli_error(capsys, "train", "--config", str(cfg), "--name", "a", "--out-dir", str(tmp_path / "out"))
    assert "runs.a.model.n_layr" in line and "did you mean 'n_layer'" in line
    assert files_under(tmp_path / "out") == []

    config = tiny_config()
    config["runs"]["tiny"]["train"]["learnig_rate"] = 1e-3  # inside train: checked by resolve_run
    assert "runs.tiny.train.learnig_rate (did you mean 'learning_rate'?)" in pipeline_error(config)

    config = tiny_config()
    config["runs"]["tiny"]["lanch"] = {"nproc_per_node": 1}  # a run's own key: resolve_run suggests the closest
    assert "runs.tiny.lanch (did you mean 'launch'?)" in pipeline_error(config)


def test_n_embd_not_divisible_by_n_head(tmp_path, data_dir, capsys):
    line = cli_error(capsys, "train", "--spec", spec(model={"n_embd": 33, "n_head": 2}), "--name", "r",
                     "--data-dir", str(data_dir), "--out-dir", str(tmp_path / "out"))
    assert "runs.r.model.n_embd=33 is not divisible by model.n_head=2" in line and "multiple of n_head" in line
    assert files_under(tmp_path / "out") == []

    config = tiny_config()
    config["runs"]["tiny"]["model"]["n_embd"] = 33
    out = snakemake_dry_run_fails(tmp_path, config)
    assert "runs.tiny.model.n_embd=33 is not divisible by model.n_head=2" in out


def test_block_size_larger_than_val_split(tmp_path, data_dir, capsys):
    out_dir = tmp_path / "out"
    line = cli_error(capsys, "train", "--spec", spec(model={"block_size": 4000}), "--data-dir", str(data_dir),
                     "--out-dir", str(out_dir))
    assert "block_size=4000 is too large: the val split of" in line and "has 2000 tokens" in line
    assert "expected block_size < 2000" in line
    assert files_under(out_dir) == [] and not out_dir.exists()


@pytest.mark.parametrize(("key", "value", "kind"), [
    ("learning_rate", 0, " number in (0, 10]"), ("learning_rate", -1e-3, " number in (0, 10]"),
    ("batch_size", 0, "n integer in [1, 1,048,576]"), ("max_iters", -5, "n integer in [1, 10,000,000]"),
    ("gradient_accumulation_steps", 0, "n integer in [1, 1,048,576]"),
])
def test_non_positive_training_settings(key, value, kind):
    with pytest.raises(ConfigError, match=rf"^runs\.r\.train\.{key}={float(value) if 'rate' in key else value}: "
                                          rf"expected a{re.escape(kind)}$"):
        resolve_run({"dataset": "d", "train": {key: value}}, "r")


def test_non_positive_on_the_command_line(tmp_path, data_dir, capsys):
    """(The pipeline reports it through the same resolve_run as the n_embd and unknown-key cases.)"""
    line = cli_error(capsys, "train", "--spec", spec(), "--name", "r", "--data-dir", str(data_dir),
                     "--out-dir", str(tmp_path / "out"), "--batch_size=-1")
    assert line.endswith("runs.r.train.batch_size=-1: expected an integer in [1, 1,048,576]")
    assert files_under(tmp_path / "out") == []
    config = tiny_config()
    config["runs"]["tiny"]["train"]["learning_rate"] = -1.0
    with pytest.raises(ConfigError, match=r"runs.tiny.train.learning_rate=-1.0: expected a number in \(0, 10\]"):
        Pipeline(config).check()


def test_gradient_accumulation_not_divisible_by_world_size(tmp_path, data_dir, capsys):
    line = cli_error(capsys, "train", "--spec", spec(train={"gradient_accumulation_steps": 3},
                                                     launch={"nproc_per_node": 2}),
                     "--name", "r", "--data-dir", str(data_dir), "--out-dir", str(tmp_path / "out"))
    assert "runs.r.train.gradient_accumulation_steps=3 is not divisible by the world size 2" in line
    assert "expected a multiple of 2" in line
    assert files_under(tmp_path / "out") == []


def test_model_vocab_smaller_than_dataset():
    run = resolve_run({"dataset": "d", "model": {**TINY_MODEL, "vocab_size": 10}}, "r")
    with pytest.raises(ConfigError, match=r"model.vocab_size=10 is smaller than the dataset's vocabulary of 65"):
        run.gpt_config(vocab_size=65)


# ---- cross-references between entries ----------------------------------------------------------------

def test_missing_dataset_referenced_by_a_run(tmp_path):
    config = tiny_config()
    config["runs"]["tiny"]["dataset"] = "shakespeare_chr"
    with pytest.raises(ConfigError, match=r"runs.tiny.dataset='shakespeare_chr': no such dataset \(did you mean "
                                          r"'shakespeare_char'\?\), expected one of \['shakespeare_char'\]"):
        Pipeline(copy.deepcopy(config)).check()
    out = snakemake_dry_run_fails(tmp_path, config)
    assert "runs.tiny.dataset='shakespeare_chr': no such dataset" in out


def test_missing_run_referenced_by_a_sample_or_target(tmp_path):
    config = tiny_config()
    config["targets"]["runs"] = ["tiny", "huge"]
    with pytest.raises(ConfigError, match=r"targets.runs: 'huge' is not defined under `runs`"):
        Pipeline(config).check()

    config = tiny_config()
    config["samples"]["tiny"]["model"] = "tinny"
    assert re.search(r"unknown model 'tinny': expected a run name \['tiny'\]", pipeline_error(config))


# ---- data -----------------------------------------------------------------------------------------------

def test_sha256_mismatch(tmp_path, mirror_env, capsys):
    wrong = "0" * 64
    dest = tmp_path / "dl" / "source.txt"
    entry = json.dumps({"source": {"url": "https://example.invalid/input.txt", "sha256": wrong}})
    line = cli_error(capsys, "download", "--name", "s", "--spec", entry, "--out", str(dest))
    assert f"sha256 of input.txt from {mirror_env}" in line and f"is {SHAKESPEARE_SHA256}: expected {wrong}" in line
    assert files_under(tmp_path / "dl") == [] and not (tmp_path / "dl").exists()

    # Through the pipeline: the download job fails, its log says why, nothing lands in results/.
    config = tiny_config()
    config["datasets"]["shakespeare_char"]["source"]["sha256"] = wrong
    workdir = make_pipeline(tmp_path / "pipeline", config)
    proc = run_snakemake(workdir, "results/data/shakespeare_char/source.txt", check=False, timeout=120)
    assert proc.returncode != 0
    log = (workdir / "logs" / "download" / "shakespeare_char.log").read_text()
    assert log.strip().startswith("nanogpt download: error: sha256 of input.txt") and f"expected {wrong}" in log
    assert [p for p in files_under(workdir / "results") if Path(p).is_file()] == []


def test_empty_corpus(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    entry = json.dumps({"source": {"url": "x/empty.txt", "sha256": "0" * 64}, "tokenizer": "char"})
    line = cli_error(capsys, "prepare", "--name", "e", "--spec", entry, "--source", str(empty),
                     "--out-dir", str(tmp_path / "out"))
    assert f"source {str(empty)!r} is empty: expected a non-empty text corpus" in line
    assert files_under(tmp_path / "out") == []


def test_vocabulary_too_large_for_uint16(tmp_path, capsys):
    big = tmp_path / "big.txt"
    big.write_text("".join([chr(c) for c in range(0x4E00, 0x20000) if not 0xD800 <= c < 0xE000][:70_000]))
    entry = {"source": {"url": "x/big.txt", "sha256": "0" * 64}, "tokenizer": "char", "dtype": "uint16"}
    line = cli_error(capsys, "prepare", "--name", "big", "--spec", json.dumps(entry), "--source", str(big),
                     "--out-dir", str(tmp_path / "out"))
    assert "dtype='uint16' cannot hold a vocabulary of 70000 tokens (max id 65535): expected dtype uint32" in line
    assert files_under(tmp_path / "out") == []
    # Left to choose, the same corpus gets uint32 and its ids survive the round trip.
    meta = prepare_text(big, tmp_path / "auto")
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 70_000


# ---- checkpoints ----------------------------------------------------------------------------------------

def test_corrupt_checkpoint(tmp_path, model_pt):
    torn = tmp_path / "torn.pt"
    torn.write_bytes(model_pt.read_bytes()[:1000])
    out = tmp_path / "samples.txt"
    line = cli_error_subprocess(tmp_path, "sample", "--checkpoint", str(torn), "--num-samples", "1",
                                "--max-new-tokens", "2", "--device", "cpu", "--out", str(out))
    assert f"checkpoint {str(torn)!r} is corrupt or truncated" in line and "expected a complete torch.save file" in line
    assert not out.exists()
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(ckpt_io.CheckpointError, match="is corrupt or truncated: expected a complete"):
        ckpt_io.load(garbage)


def test_checkpoint_architecture_differs_from_config(tmp_path, data_dir, model_pt, capsys):
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    (out_dir / "model.pt").write_bytes(model_pt.read_bytes())
    line = cli_error(capsys, "train", "--spec", spec(init_from="resume", model={"n_embd": 64}), "--name", "r",
                     "--data-dir", str(data_dir), "--out-dir", str(out_dir))
    # resume continues a checkpoint of the same settings: a wider model has none to continue
    assert "init_from='resume' but" in line and "holds no checkpoint made with these settings" in line
    assert sorted(p.name for p in out_dir.iterdir() if p.name != ".lock") == ["model.pt"]  # nothing new written

    ckpt = ckpt_io.load(model_pt)
    wrong = GPTConfig(**{**TINY_MODEL, "n_layer": 2}, vocab_size=ckpt["model_args"]["vocab_size"])
    with pytest.raises(ckpt_io.CheckpointError, match=r"model.n_layer=1 but the config asks for 2"):
        ckpt_io.model_from_checkpoint(ckpt, expected=wrong)
    lying = {**ckpt, "model_args": {**ckpt["model_args"], "n_embd": 64}}  # shapes disagree with model_args
    with pytest.raises(ckpt_io.CheckpointError, match=r"checkpoint weights do not fit its model_args \(size mismatch"):
        ckpt_io.model_from_checkpoint(lying)


def test_nanogpt_checkpoint_loads_with_weights_only(tmp_path):
    """nanoGPT's train.py saves raw_model.state_dict() of a compiled model, its config globals, a tensor loss."""
    torch.manual_seed(0)
    config = GPTConfig(block_size=16, vocab_size=65, n_layer=1, n_head=2, n_embd=32, dropout=0.0, bias=False)
    model = GPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[1].backward()
    optimizer.step()
    state = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    state["_orig_mod.transformer.h.0.attn.bias"] = torch.tril(torch.ones(16, 16)).view(1, 1, 16, 16)
    nanogpt_config = {"out_dir": "out-shakespeare-char", "eval_interval": 250, "always_save_checkpoint": False,
                      "dataset": "shakespeare_char", "learning_rate": 1e-3, "compile": True, "dtype": "bfloat16"}
    path = tmp_path / "ckpt.pt"
    torch.save({"model": state, "optimizer": optimizer.state_dict(),
                "model_args": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 16, "bias": False,
                               "vocab_size": 65, "dropout": 0.0},
                "iter_num": 250, "best_val_loss": torch.tensor(1.4697), "config": nanogpt_config}, path)

    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain values only: no unpickling needed
    assert raw["config"] == nanogpt_config and raw["iter_num"] == 250
    loaded, ckpt = ckpt_io.load_model(path)
    x = torch.randint(0, 65, (2, 8))
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], model(x)[0], rtol=0, atol=0)
    assert float(ckpt["best_val_loss"]) == pytest.approx(1.4697)


def test_pickled_object_in_checkpoint_is_refused(tmp_path, model_pt, capsys):
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (os.makedirs, (str(marker),))

    evil = tmp_path / "evil.pt"
    ckpt = torch.load(model_pt, weights_only=True)
    torch.save({**ckpt, "extra": Payload()}, evil)
    out = tmp_path / "samples.txt"
    line = cli_error(capsys, "sample", "--checkpoint", str(evil), "--device", "cpu", "--out", str(out))
    assert f"checkpoint {str(evil)!r} holds a pickled os.makedirs, refused" in line
    assert "expected only tensors and plain values" in line
    assert not marker.exists() and not out.exists()


def test_package_never_unpickles_or_execs():
    """torch.load only with weights_only=True; no pickle, exec or eval of config/data anywhere in the package."""
    sources = {p: p.read_text() for p in [*(REPO / "nanogpt").glob("*.py"), REPO / "Snakefile",
                                           *(REPO / "workflow" / "rules").glob("*.smk")]}
    for path, text in sources.items():
        if path.name == "interop.py":  # nanoGPT's meta.pkl: only through an Unpickler whose find_class refuses all
            assert "def find_class" in text and not re.search(r"pickle\.loads?\(", text), path
        else:
            assert not re.search(r"^\s*(import pickle|from pickle|import dill|import cloudpickle)", text, re.M), path
        assert not re.search(r"(?<![\w.])(exec|eval)\(", text), path
        assert "yaml.load(" not in text and "yaml.unsafe_load" not in text, path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
    assert any("torch.load(" in t for t in sources.values())  # the scan sees the real loader


# ---- sampling -------------------------------------------------------------------------------------------

def test_prompt_outside_char_vocabulary(tmp_path, model_pt, capsys):
    out = tmp_path / "samples.txt"
    line = cli_error(capsys, "sample", "--checkpoint", str(model_pt), "--start", "caf\u00e9", "--num-samples", "1",
                     "--max-new-tokens", "2", "--device", "cpu", "--out", str(out))
    assert "character '\u00e9' is not in this dataset's vocabulary of" in line
    assert "expected text made only of characters seen in the training data" in line
    assert not out.exists()


def test_missing_prompt_file(tmp_path, model_pt, capsys):
    out = tmp_path / "samples.txt"
    missing = tmp_path / "prompt.txt"
    line = cli_error(capsys, "sample", "--checkpoint", str(model_pt), "--start", f"FILE:{missing}",
                     "--num-samples", "1", "--max-new-tokens", "2", "--device", "cpu", "--out", str(out))
    assert f"prompt file {str(missing)!r}" in line and "does not exist: expected a text file" in line
    assert not out.exists()


def test_meta_that_is_not_json(tmp_path, model_pt, capsys):
    """A broken meta.pkl is refused in one line."""
    pkl = tmp_path / "meta.pkl"
    pkl.write_bytes(b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x04stoi\x94s.")
    line = cli_error(capsys, "sample", "--checkpoint", str(model_pt), "--meta", str(pkl), "--device", "cpu")
    assert f"--meta {str(pkl)!r} is not a readable pickle" in line and "expected nanoGPT's meta.pkl" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_that_does_not_exist(tmp_path, data_dir, model_pt, capsys):
    out_dir = tmp_path / "run"
    line = cli_error(capsys, "train", "--spec", spec(train={"device": "cuda"}), "--name", "r",
                     "--data-dir", str(data_dir), "--out-dir", str(out_dir))
    assert ("device='cuda' but torch sees no CUDA GPU (this torch" in line
            and "expected a GPU that torch can use, or device: cpu" in line)
    assert not out_dir.exists()

    out = tmp_path / "samples.txt"
    line = cli_error(capsys, "sample", "--checkpoint", str(model_pt), "--device", "cuda:1", "--out", str(out))
    assert "device='cuda:1' but torch sees no CUDA GPU" in line
    assert not out.exists()

    with pytest.raises(ConfigError, match=r"runs.r.train.device='tpu': expected auto, cpu, cuda, cuda:N or mps"):
        resolve_run({"dataset": "d", "train": {"device": "tpu"}}, "r")


# ---- every settings class, from the command line and from config.yaml -------------------------------------

@pytest.mark.parametrize("flag,value,needle", [
    ("--temperature", "nan", "temperature=nan: expected a finite number"),
    ("--temperature", "inf", "temperature=inf: expected a finite number"),
    ("--temperature", "0", "temperature=0.0: expected a number in (0, 100]"),
    ("--top-k", "0", "top_k=0: expected an integer in [1, 2**32], or null"),
    ("--top-k", "-5", "top_k=-5: expected an integer in [1, 2**32], or null"),
    ("--max-new-tokens", "10000000000", "max_new_tokens=10000000000: expected an integer in [1, 1,000,000]"),
    ("--max-new-tokens", "0", "max_new_tokens=0: expected an integer in [1,"),
    ("--num-samples", "-1", "num_samples=-1: expected an integer in [1,"),
    ("--seed", "-1", "seed=-1: expected an integer in [0, 2**63)"),
    ("--device", "gpu", "device='gpu': expected auto, cpu, cuda, cuda:N or mps"),
    ("--dtype", "fp8", "dtype='fp8': expected one of auto, float32, bfloat16, float16"),
    ("--start", "", "start='': expected prompt text or FILE:path"),
])
def test_sample_settings_on_the_command_line(tmp_path, model_pt, capsys, flag, value, needle):
    out = tmp_path / "samples.txt"
    line = cli_error(capsys, "sample", "--checkpoint", str(model_pt), flag, value, "--out", str(out))
    assert needle in line, line
    assert not out.exists()


@pytest.mark.parametrize("flag,value,needle", [
    ("--batch-size", "0", "batch_size=0: expected an integer in [1, 1,048,576]"),
    ("--eval-iters", "-3", "eval_iters=-3: expected an integer in [1, 1,000,000]"),
    ("--block-size", "0", "block_size=0: expected an integer in [1, 1,048,576], or null"),
    ("--splits", "train,test", "splits='train,test': expected a comma-separated subset of train,val"),
    ("--seed", "-2", "seed=-2: expected an integer in [0, 2**63)"),
])
def test_eval_settings_on_the_command_line(tmp_path, data_dir, model_pt, capsys, flag, value, needle):
    out = tmp_path / "eval.json"
    line = cli_error(capsys, "eval", "--checkpoint", str(model_pt), "--data-dir", str(data_dir), flag, value,
                     "--out", str(out))
    assert needle in line, line
    assert not out.exists()


def test_sample_and_eval_specs(tmp_path, data_dir, model_pt, capsys):
    """The rules pass a resolved entry as --spec; its settings are checked like the flags', and flags beside it
    are refused (one source of settings per job)."""
    sample = {"checkpoint": str(model_pt), "model": "tiny", "temperature": -1.0}
    line = cli_error(capsys, "sample", "--spec", json.dumps(sample), "--name", "s", "--out", str(tmp_path / "s.txt"))
    assert "samples.s.temperature=-1.0: expected a number in (0, 100]" in line
    line = cli_error(capsys, "sample", "--spec", json.dumps({**sample, "temperature": 1.0}), "--num-samples", "2")
    assert line.endswith("--num-samples given with --spec: expected the settings in --spec only, or flags only")
    line = cli_error(capsys, "sample", "--spec", json.dumps({"model": "tiny"}))
    assert line.endswith("--spec has neither checkpoint nor init_from: expected exactly one of them")
    evaluation = {"checkpoint": str(model_pt), "model": "tiny", "dataset": "tiny", "eval_iters": 1, "splits": "val",
                  "block_size": 8, "device": "cpu"}
    line = cli_error(capsys, "eval", "--spec", json.dumps({**evaluation, "batch_size": 0}), "--data-dir", str(data_dir))
    assert "eval.batch_size=0: expected an integer in [1, 1,048,576]" in line
    line = cli_error(capsys, "eval", "--spec", "[1]", "--data-dir", str(data_dir))
    assert line.endswith("--spec is list JSON: expected a JSON object")
    assert not (tmp_path / "s.txt").exists()

    by_spec, by_flags = tmp_path / "spec.json", tmp_path / "flags.json"
    assert main(["eval", "--spec", json.dumps(evaluation), "--data-dir", str(data_dir), "--out", str(by_spec)]) == 0
    assert main(["eval", "--checkpoint", str(model_pt), "--model-name", "tiny", "--dataset-name", "tiny",
                 "--eval-iters", "1", "--splits", "val", "--block-size", "8", "--device", "cpu",
                 "--data-dir", str(data_dir), "--out", str(by_flags)]) == 0
    results = [{k: v for k, v in json.loads(p.read_text()).items() if k != "wall_time_s"} for p in (by_spec, by_flags)]
    assert results[0] == results[1] and results[0]["model"] == "tiny"


@pytest.mark.parametrize("override,needle", [
    ("--learning_rate=.nan", "learning_rate=nan: expected a finite number"),
    ("--beta2=1.5", "beta2=1.5: expected a number in [0, 1)"),
    ("--weight_decay=-0.1", "weight_decay=-0.1: expected a number in [0, 100]"),
    ("--grad_clip=.inf", "grad_clip=inf: expected a finite number"),
    ("--seed=-1", "seed=-1: expected an integer in [0, 2**63)"),
    ("--peak_flops=0", "peak_flops=0.0: expected a number in (0, 1e+21], or null"),
    ("--dropout=.nan", "dropout=nan: expected a finite number"),
    ("--lr_decay_iters=-5", "lr_decay_iters=-5: expected an integer in [0, 10,000,000]"),
])
def test_run_settings_on_the_command_line(tmp_path, data_dir, capsys, override, needle):
    out_dir = tmp_path / "out"
    line = cli_error(capsys, "train", "--spec", spec(), "--data-dir", str(data_dir), "--out-dir", str(out_dir),
                     override)
    assert needle in line, line
    assert files_under(out_dir) == []


@pytest.mark.parametrize("section,entry,key,value,needle", [
    ("samples", "tiny", "temperature", float("nan"), "samples.tiny.temperature=nan: expected a finite number"),
    ("samples", "tiny", "top_k", 0, "samples.tiny.top_k=0: expected an integer in [1, 2**32], or null"),
    ("samples", "tiny", "max_new_tokens", 10**10, "samples.tiny.max_new_tokens=10000000000: expected an integer"),
    ("datasets", "shakespeare_char", "val_fraction", 1.0,
     "datasets.shakespeare_char.val_fraction=1.0: expected a number in (0, 1)"),
    ("datasets", "shakespeare_char", "tokenizer", "bpe",
     "datasets.shakespeare_char.tokenizer='bpe': expected one of char, gpt2"),
    ("evals", "e", "batch_size", 0, "evals.e.batch_size=0: expected an integer in [1, 1,048,576]"),
])
def test_settings_in_config_yaml_fail_before_any_job(tmp_path, section, entry, key, value, needle):
    """Each entry kind's bad setting, found by the pipeline's checks; one of each kind also through `snakemake -n`
    (samples: test_bad_sample_setting_keeps_the_previous_sample, runs: the n_embd and missing-dataset tests)."""
    config = tiny_config()
    config["evals"] = {"e": {"model": "tiny", "datasets": ["shakespeare_char"]}}
    config[section][entry][key] = value
    assert needle in pipeline_error(config)
    if (section, key) in (("datasets", "val_fraction"), ("evals", "batch_size")):
        out = snakemake_dry_run_fails(tmp_path, config)
        assert needle in out, out[-3000:]


def test_bad_sample_setting_keeps_the_previous_sample(tmp_path):
    """A NaN temperature added after a good run: snakemake stops before any job and the old sample survives."""
    workdir = make_pipeline(tmp_path / "pipeline")
    run_snakemake(workdir)
    sample = workdir / "results" / "samples" / "tiny.txt"
    before = sample.read_text()
    config = tiny_config()
    config["samples"]["tiny"]["temperature"] = float("nan")
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    proc = run_snakemake(workdir, check=False)
    assert proc.returncode != 0 and "samples.tiny.temperature=nan: expected a finite number" in proc.stdout + proc.stderr
    assert sample.read_text() == before
