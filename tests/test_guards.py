"""One guard per parser, and bounds where a typo costs days: every bad input below is a one-line error naming
the value (or file) and what was expected, raised before anything is written.

In-process where the check lives in the package; one `snakemake -n` for the config-level refusal as a user
meets it (before Snakemake's schema dump).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from conftest import make_pipeline, run_snakemake, tiny_config
from nanogpt import checkpoint as ckpt_io
from nanogpt import fileio, interop, paths
from nanogpt.cli import main
from nanogpt.config import resolve_run, resolve_sample
from nanogpt.data.entry import check_dataset
from nanogpt.data.hf_corpus import CorpusError, prepare_hf
from nanogpt.data.prepare import BatchSampler, download_hf, load_meta, prepare_text
from nanogpt.data.tokenizer import CharTokenizer, mirror_dir
from nanogpt.errors import CheckpointError, ConfigError, DataError
from nanogpt.model import GPT, GPTConfig
from nanogpt.pipeline.entries import Pipeline
from nanogpt.pipeline.schema import check_against_schema, check_top_level_keys
from nanogpt.settings import MAX_ITERS, MAX_SAMPLE_TOKENS

TINY_MODEL = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 8, "dropout": 0.0, "bias": False}


def one_line(capsys, *argv: str) -> str:
    """`nanogpt ARGV` in-process: exit 2 and exactly one `nanogpt CMD: error: ...` line on stderr, saying what
    was expected (or suggesting the closest name)."""
    capsys.readouterr()
    assert main(list(argv)) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and ": warning: " not in ln]
    assert len(lines) == 1 and lines[0].startswith(f"nanogpt {argv[0]}: error: "), lines
    assert "expected" in lines[0] or "did you mean" in lines[0], lines[0]
    return lines[0]


def config_file_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        fileio.check_config_files([path])
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny char model.pt in our format (no training)."""
    tok = CharTokenizer.from_text("hello world, a tiny corpus\n")
    meta = {"dataset": "tiny", "tokenizer": tok.to_meta(), "vocab_size": tok.vocab_size}
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY_MODEL, vocab_size=tok.vocab_size))
    path = tmp_path_factory.mktemp("run") / "model.pt"
    ckpt_io.save({"format": ckpt_io.FORMAT, "model": model.state_dict(), "model_args": model.config.to_dict(),
                  "iter_num": 0, "best_val_loss": float("inf"), "dataset_meta": meta}, path)
    return path


# ---- YAML: where, and keys that cannot mean what was written ------------------------------------------------

@pytest.mark.parametrize("text,needle", [
    ("runs:\n  a: {dataset: x,\n    model: [1\n", "is malformed YAML at line 4, column 1"),
    ("runs: [a\nb: 1\n", "is malformed YAML at line 2, column 2"),
    ("runs:\n  tiny: {}\n  tiny: {}\n", "line 3: key 'tiny' is given twice in one mapping (first at line 2)"),
    ("runs:\n  a:\n    train: {max_iters: 5, max_iters: 6}\n", "line 3: key 'max_iters' is given twice"),
    ("runs:\n  a:\n    on: 1\n", "line 3: key 'on' reads as a YAML boolean or null"),
    ("datasets:\n  null: {path: x}\n", "line 2: key 'null' reads as a YAML boolean or null"),
])
def test_yaml_errors_say_where(tmp_path, text, needle):
    message = config_file_error(tmp_path, text)
    assert needle in message and "expected" in message, message


def test_yaml_keys_that_mean_what_they_say_pass(tmp_path):
    (tmp_path / "c.yaml").write_text("'on': 1\nruns:\n  a: {x: 1}\n  b: {x: 1}\nlist: [on, off, yes]\n"
                                     "base: &b {n: 1}\nother: *b\n")
    fileio.check_config_files([tmp_path / "c.yaml"])


# ---- the schema in one line, before Snakemake's ---------------------------------------------------------------

def test_unknown_top_level_key_is_one_line_before_the_schema_dump(tmp_path):
    config = tiny_config()
    config["run"] = config.pop("runs")
    with pytest.raises(ConfigError, match=r"unknown key run \(did you mean 'runs'\?\): expected one of \["):
        check_top_level_keys(config)
    workdir = make_pipeline(tmp_path / "pipeline", config)
    proc = run_snakemake(workdir, "-n", check=False, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "unknown key run (did you mean 'runs'?)" in out, out[-2000:]
    assert len(out.splitlines()) < 20 and "additionalProperties" not in out, out[-3000:]
    assert not (workdir / "results").exists()


@pytest.mark.parametrize("mutate,needle", [
    (lambda c: c.update(summary={"enabeld": True}), "unknown key summary.enabeld (did you mean 'enabled'?)"),
    (lambda c: c["targets"].update(sweep=[]), "unknown key targets.sweep (did you mean 'sweeps'?)"),
    (lambda c: c.update(pretrained={"mine": 3}), "pretrained.mine=3: expected a string"),
    (lambda c: c.update(mirror=5), "mirror=5: expected a string or null"),
])
def test_schema_errors_are_one_line(mutate, needle):
    config = tiny_config()
    mutate(config)
    with pytest.raises(ConfigError) as e:
        check_against_schema(config)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    check_against_schema(tiny_config())  # the good one passes


def test_dataset_wildcards_match_only_their_own_names():
    """The download rules' wildcard patterns are the names themselves: "a.b" must not also match "axb"."""
    config = tiny_config()
    config["datasets"]["a.b"] = dict(config["datasets"]["shakespeare_char"])
    config["datasets"]["axb"] = {"hf": {"path": "org/corpus"}}
    p = Pipeline(config)
    source, hub = p.dataset_names_pattern("source"), p.dataset_names_pattern("hf", "files", "corpus")
    assert not re.fullmatch(source, "axb") and re.fullmatch(source, "a.b")
    assert re.fullmatch(hub, "axb") and not re.fullmatch(hub, "a.b")


# ---- --spec: depth, and settings from one place ---------------------------------------------------------------

def test_deeply_nested_spec_is_one_line(capsys):
    deep = '{"dataset": "d", "model": ' + "[" * 100_000 + "]" * 100_000 + "}"
    line = one_line(capsys, "train", "--spec", deep)
    assert "--spec" in line and "64 levels" in line
    line = one_line(capsys, "sample", "--spec", '{"a": ' * 70 + "1" + "}" * 70)
    assert "--spec nests deeper than 64 levels" in line


def test_spec_with_config_is_refused(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_config()))
    line = one_line(capsys, "train", "--spec", json.dumps({"dataset": "d", "model": TINY_MODEL}), "--config",
                    str(tmp_path / "config.yaml"), "--name", "tiny", "--out-dir", str(tmp_path / "out"))
    assert "--config" in line and "given with --spec" in line
    assert not (tmp_path / "out").exists()


def test_spec_without_a_model_does_not_train_gpt2_size(tmp_path, capsys):
    line = one_line(capsys, "train", "--spec", '{"dataset": "d"}', "--out-dir", str(tmp_path / "out"))
    assert '--spec has no "model" section' in line and '"model": {}' in line
    assert not (tmp_path / "out").exists()
    # the pipeline always says it: its spec holds every setting, the model's included
    config = tiny_config()
    del config["runs"]["tiny"]["model"]
    assert json.loads(Pipeline(config).run_spec("tiny"))["model"]["n_layer"] == 12


# ---- data files -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,data,needle", [
    ("corpus.parquet", b'{"text": "this is JSON, not parquet"}\n', "cannot be read as parquet (Parquet magic bytes"),
    ("cut.parquet", b"PAR1" + b"\0" * 10, "cannot be read as parquet"),
    ("corpus.csv", b'text,x\n"unclosed,1\n2,3,4,5\n', "cannot be read as csv (Error tokenizing data"),
    ("corpus.jsonl", bytes(range(256)) * 4, "cannot be read as json"),
])
def test_data_file_that_is_not_its_format_names_the_file(tmp_path, name, data, needle):
    fake = tmp_path / name
    fake.write_bytes(data)
    spec = {"files": {"paths": [str(fake)]}, "val_fraction": 0.5}
    download_hf(spec, tmp_path / "source.json", name="c")
    with pytest.raises(CorpusError) as e:
        prepare_hf(check_dataset(spec, "c"), tmp_path / "source.json", tmp_path / "out")
    assert str(e.value).startswith(f"data file {str(fake)!r} {needle}"), str(e.value)
    assert "expected" in str(e.value)
    assert not (tmp_path / "out" / "meta.json").exists()


def test_a_folder_is_not_said_not_to_exist(tmp_path):
    folder = tmp_path / "model.pt"
    folder.mkdir()
    with pytest.raises(CheckpointError, match=r"model.pt' is a folder: expected a .pt file"):
        ckpt_io.load(folder)
    with pytest.raises(ConfigError, match=r"meta.pkl' is a folder: expected nanoGPT's meta.pkl"):
        (tmp_path / "meta.pkl").mkdir()
        interop.read_meta_pkl(tmp_path / "meta.pkl")
    (tmp_path / "data" / "meta.json").mkdir(parents=True)
    with pytest.raises(DataError, match=r"meta.json' is a folder: expected a prepared dataset"):
        load_meta(tmp_path / "data")
    (tmp_path / "mirror").write_text("a file")
    with pytest.raises(ConfigError, match=r"mirror' is a file, not a folder: expected a directory"):
        mirror_dir(tmp_path / "mirror")
    with pytest.raises(CheckpointError, match=r"nothing.pt' does not exist"):
        ckpt_io.load(tmp_path / "nothing.pt")


def test_two_character_dataset_says_the_text_is_too_short(tmp_path):
    (tmp_path / "two.txt").write_text("ab")
    prepare_text(tmp_path / "two.txt", tmp_path / "data")
    with pytest.raises(ConfigError) as e:
        BatchSampler(tmp_path / "data", block_size=1, batch_size=1, seed=0)
    message = str(e.value)
    assert "tokens: expected at least block_size + 1 = 2" in message and "give a longer text" in message, message
    assert "block_size < 1" not in message and "block_size < 0" not in message


# ---- bounds where a typo costs days ---------------------------------------------------------------------------

def test_max_iters_has_an_upper_bound():
    resolve_run({"dataset": "d", "train": {"max_iters": MAX_ITERS}}, "r")
    with pytest.raises(ConfigError, match=rf"runs.r.train.max_iters={MAX_ITERS + 1}: expected an integer in "
                                          r"\[1, 10,000,000\]"):
        resolve_run({"dataset": "d", "train": {"max_iters": MAX_ITERS + 1}}, "r")


def test_tokens_to_generate_are_bounded_as_a_product():
    resolve_sample({"model": "m", "num_samples": 10, "max_new_tokens": MAX_SAMPLE_TOKENS // 10}, "samples.s")
    with pytest.raises(ConfigError, match=r"samples.s: num_samples=100000 x max_new_tokens=1000000 = "
                                          r"100,000,000,000 tokens: expected at most 10,000,000"):
        resolve_sample({"model": "m", "num_samples": 100_000, "max_new_tokens": 1_000_000}, "samples.s")


# ---- export never writes into the pipeline's run folders ------------------------------------------------------

@pytest.mark.parametrize("fmt", ["nanogpt", "hf"])
def test_export_force_refuses_the_pipelines_run_folder(checkpoint, tmp_path, capsys, monkeypatch, fmt):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / paths.RUN_DIR.format(run="tiny")
    run.mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    for out in (run, run / "export", tmp_path / paths.RUNS):
        line = one_line(capsys, "export", "--format", fmt, "--checkpoint", str(checkpoint), "--out", str(out),
                        "--force")
        assert "is inside the pipeline's run folder" in line, line
    elsewhere = tmp_path / "elsewhere" / "tiny"  # a run folder by its marker, wherever it lies
    elsewhere.mkdir(parents=True)
    (elsewhere / paths.PIPELINE_MARKER).touch()
    line = one_line(capsys, "export", "--format", fmt, "--checkpoint", str(checkpoint), "--out",
                    str(elsewhere / "x"), "--force")
    assert f"run folder {str(elsewhere)!r}" in line
    assert sorted(p.name for p in run.iterdir()) == ["metrics.json"] and not (elsewhere / "x").exists()


# ---- CLI flags and names ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag,needle", [
    ("--learning_rate=[1", "the value is not valid YAML (expected ',' or ']'"),
    ("--device=a: b: c", "the value is not valid YAML (mapping values are not allowed here)"),
    ("--dtype=" + "[" * 3000, "over 64 brackets"),
])
def test_override_values_that_are_not_yaml_are_one_line(tmp_path, capsys, flag, needle):
    line = one_line(capsys, "train", "--spec", json.dumps({"dataset": "d", "model": TINY_MODEL}), flag,
                    "--out-dir", str(tmp_path / "out"))
    assert needle in line and flag[:20] in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key,needle", [
    (1.5, "run name 1.5 is a float in YAML, not text: expected a name, quoted"),
    (True, "run name True is a bool in YAML"),
    ("a\nb", "runs: run name 'a\\nb' is not allowed"),  # one line even for a name holding a line break
    ("  ", "runs: run name '  ' is not allowed"),  # its spaces as they are
])
def test_entry_names_are_refused_in_one_line(key, needle):
    config = tiny_config()
    config["runs"][key] = config["runs"]["tiny"]
    with pytest.raises(ConfigError) as e:
        Pipeline(config).check()
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_key_with_a_line_break_is_still_one_line(capsys):
    line = one_line(capsys, "train", "--spec", json.dumps({"dataset": "d", "model": TINY_MODEL, "trian\nx": {}}))
    assert "unknown key runs.run.trian x" in line, line
