"""The command line a nanoGPT user types: every setting on --help, both flag spellings, a hint for typos."""

from __future__ import annotations

import subprocess
from dataclasses import fields

import pytest

from conftest import BIN
from nanogpt.cli import main as cli_main
from nanogpt.settings import LaunchSettings, ModelSettings, TrainSettings, declared


def nanogpt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "nanogpt"), *args], capture_output=True, text=True, timeout=120)


def test_every_setting_has_a_line_on_train_help():
    names = [f.name for cls in (ModelSettings, TrainSettings, LaunchSettings) for f in fields(cls)]
    assert all(declared(f).help for cls in (ModelSettings, TrainSettings, LaunchSettings) for f in fields(cls))
    out = nanogpt("train", "--help").stdout
    for name in names:
        assert f"--{name}=" in out, name
    assert "--max_iters=600000" in out and "--learning_rate=0.0006" in out and "--compile=auto" in out
    assert "--out-dir" in out and "--out_dir" not in out  # each flag shown once


@pytest.mark.parametrize("flag", ["--num-samples", "--num_samples"])
def test_both_spellings_of_a_flag_work(flag, tmp_path, capsys):
    assert cli_main(["sample", "--checkpoint", str(tmp_path / "x.pt"), flag, "2"]) == 2
    err = capsys.readouterr().err  # the flag parsed: the missing checkpoint is the error
    assert "unrecognized" not in err and "does not exist" in err


def test_an_unknown_flag_names_the_subcommand_and_the_closest_flag():
    proc = nanogpt("sample", "--checkpoint", "x", "--num-smaples", "2")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "nanogpt sample: error: unrecognized arguments: --num-smaples 2 (did you mean --num-samples?)")
    assert proc.stderr.startswith("usage: nanogpt sample")  # the subcommand's usage, not the top level's


def test_an_unknown_setting_suggests_the_closest():
    proc = nanogpt("train", "--spec", '{"dataset": "d"}', "--max_iter=5")
    assert proc.returncode == 2
    assert "unknown setting 'max_iter' (did you mean 'max_iters'?)" in proc.stderr
