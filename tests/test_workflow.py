"""The workflow's shape: `snakemake --lint` and `snakefmt --check` clean, documented rules, one conda environment in
step with pyproject.toml, typed `--config` overrides, and the one `nanogpt` command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import version

import torch
import yaml
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import BIN, REPO, run_snakemake
from nanogpt.cli import main as cli_main
from nanogpt.data.prepare import prepare_text
from nanogpt.pipeline.entries import coerce_config_overrides
from nanogpt.sample import SEPARATOR
from nanogpt.settings import DatasetSettings


def run(*cmd: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


# ---- lint and format -----------------------------------------------------------------------------------------

def test_snakemake_lint_is_clean():
    proc = run(str(BIN / "snakemake"), "--lint")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakefmt_check_is_clean():
    proc = run(str(BIN / "snakefmt"), "--check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_rule_has_a_docstring():
    """`snakemake -l` shows what each rule does."""
    proc = run(str(BIN / "snakemake"), "-l")
    assert proc.returncode == 0, proc.stderr
    rules = [ln for ln in proc.stdout.splitlines() if ln and not ln.startswith(" ")]
    assert {"all", "download", "download_hf", "prepare", "train", "sample", "evaluate", "summary"} <= {
        ln.split()[0] for ln in rules}
    assert [ln for ln in rules if "(" not in ln] == []


def test_conda_env_matches_pyproject_and_environment_yml():
    """workflow/envs/nanogpt.yaml: environment.yml's Python and torch pin, pyproject.toml's other dependencies."""
    env = yaml.safe_load((REPO / "workflow/envs/nanogpt.yaml").read_text())
    top = yaml.safe_load((REPO / "environment.yml").read_text())
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    top_pip = next(d["pip"] for d in top["dependencies"] if isinstance(d, dict))
    torch_pin = [d for d in top_pip if d.startswith("torch==")]
    assert [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")] == [
        d for d in top["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert pip == torch_pin + [d for d in deps if not d.startswith("torch")]


# ---- --config overrides --------------------------------------------------------------------------------------

def test_nested_config_override_is_typed_like_config_yaml(pipeline_dir):
    """`--config 'runs={tiny: {train: {max_iters: 7}}}'` reaches the train rule as the integer 7."""
    proc = run_snakemake(pipeline_dir, "-n", "-p", "--config",
                         "runs={tiny: {train: {max_iters: 7, learning_rate: 2.0e-3, compile: false}}}")
    spec = json.loads(re.search(r"train --spec '([^']*)' --name tiny", proc.stdout).group(1))
    assert (spec["train"]["max_iters"], spec["train"]["learning_rate"], spec["train"]["compile"]) == (7, 2e-3, False)
    assert spec["train"]["batch_size"] == 4  # the rest of the run still comes from config.yaml


def test_coerce_config_overrides_keeps_text():
    config = {"samples": {"s": {"start": "x", "top_k": 5}}, "mirror": None}
    coerce_config_overrides(config, {"samples": {"s": {"start": "ROMEO:", "top_k": "null", "seed": "1"}},
                                     "datasets": {"d": {"val_fraction": "0.5", "text_column": "", "x": ["1", "a"]}}})
    assert config["samples"]["s"] == {"start": "ROMEO:", "top_k": None, "seed": 1}
    assert config["datasets"]["d"] == {"val_fraction": 0.5, "text_column": "", "x": [1, "a"]}


# ---- the command line ----------------------------------------------------------------------------------------

def test_version():
    proc = run(str(BIN / "nanogpt"), "--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"nanogpt {version('nanogpt-workflow')}", proc.stderr


def test_summary_help_lists_its_steps():
    proc = run(str(BIN / "nanogpt"), "summary", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "{table,curve,baselines,sweep,run-page,sample-page}" in proc.stdout
    table = run(str(BIN / "nanogpt"), "summary", "table", "--help").stdout
    assert "the results folder to read (default: results)" in " ".join(table.split())


def test_summary_error_is_one_line(tmp_path, capsys):
    """`nanogpt summary` goes through the same error handling as the other commands (no traceback)."""
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "gpt2.json").write_text(json.dumps({"model": "gpt2", "train_loss": 3.1, "val_loss": 3.2}))
    out = tmp_path / "file" / "baselines.md"
    assert cli_main(["summary", "baselines", str(tmp_path / "gpt2.json"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nanogpt summary: error: "), err


def test_hf_corpus_does_not_import_data():
    """No import cycle: data.py dispatches to hf_corpus.py, never the other way round."""
    code = "import sys, nanogpt.data.hf_corpus; print('nanogpt.data.prepare' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_mirror_option_finds_gpt2_weights(tmp_path, monkeypatch):
    """--mirror (what the rules pass from config `mirror:`) reaches the weight lookup, without $NANOGPT_MIRROR."""
    monkeypatch.delenv("NANOGPT_MIRROR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=512, n_positions=64, n_embd=32, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "mirror" / "gpt2")  # a stand-in for the real weights
    out = tmp_path / "s.txt"
    args = ["sample", "--init-from", "gpt2", "--num-samples", "2", "--max-new-tokens", "3", "--device", "cpu",
            "--dtype", "float32", "--start", "a", "--out", str(out)]
    assert cli_main(args) == 2  # offline, no mirror: not found
    assert cli_main([*args, "--mirror", str(tmp_path / "mirror")]) == 0
    assert len(out.read_text().rstrip("\n").split(SEPARATOR)) == 2


def test_mirror_option_reaches_a_finetune_of_gpt2(tmp_path, monkeypatch, shared_data):
    """The train rule passes config `mirror:` as --mirror too: a run with init_from gpt2 finds the weights there."""
    monkeypatch.delenv("NANOGPT_MIRROR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50257, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "mirror" / "gpt2")  # a stand-in for the real weights
    (tmp_path / "text.txt").write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[:4000])
    prepare_text(tmp_path / "text.txt", tmp_path / "data", DatasetSettings.for_text(tokenizer="gpt2"))
    spec = {"dataset": "d", "init_from": "gpt2",
            "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "vocab_size": 50257},
            "train": {"max_iters": 1, "batch_size": 2, "eval_iters": 1, "eval_interval": 1, "device": "cpu",
                      "dtype": "float32", "compile": False, "warmup_iters": 0, "lr_decay_iters": 1}}
    args = ["train", "--spec", json.dumps(spec), "--name", "ft", "--data-dir", str(tmp_path / "data")]
    assert cli_main([*args, "--out-dir", str(tmp_path / "no_mirror")]) == 2  # offline, no mirror: not found
    assert cli_main([*args, "--out-dir", str(tmp_path / "run"), "--mirror", str(tmp_path / "mirror")]) == 0
    assert (tmp_path / "run" / "model.pt").is_file()


def test_every_flag_has_help():
    """ArgumentDefaultsHelpFormatter: each flag of each command says what it is (and its default, if it has one)."""
    from nanogpt.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    summary_steps = next(a for a in commands["summary"]._actions if a.dest == "summary_command").choices
    for name, parser in [*commands.items(), *summary_steps.items()]:
        for action in parser._actions:
            if action.dest in ("command", "summary_command", "hellaswag_command"):  # the subcommand choice itself
                continue
            assert action.help, f"nanogpt {name}: {action.option_strings or action.dest} has no help"
