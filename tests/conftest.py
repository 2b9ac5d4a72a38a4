"""Shared fixtures: an offline data mirror, and a tiny copy of the pipeline to run snakemake on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nanogpt.data.tokenizer import BUNDLED_DIR


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Each test's in-process work on one thread (a training may change the count): on a busy 2-core machine
    two OpenMP threads wait on each other (measured: a 60-step 1-layer training at 43.7 s on 2
    threads, 0.2 s on 1). Subprocesses choose their own."""
    import torch

    torch.set_num_threads(1)
    yield


REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: snakemake, nanogpt, torchrun

SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def tiny_config() -> dict:
    """A pipeline config small enough for seconds per rule: one char dataset, one 1-layer run, one sample."""
    return {
        "mirror": None,
        "targets": {"runs": ["tiny"], "samples": ["tiny"], "evals": []},
        "datasets": {
            "shakespeare_char": {
                "source": {"url": SHAKESPEARE_URL, "sha256": SHAKESPEARE_SHA256},
                "tokenizer": "char",
                "val_fraction": 0.1,
            }
        },
        "runs": {
            "tiny": {
                "dataset": "shakespeare_char",
                "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "dropout": 0.0, "bias": False},
                "train": {"batch_size": 4, "max_iters": 20, "lr_decay_iters": 20, "warmup_iters": 2,
                          "learning_rate": 1.0e-3, "min_lr": 1.0e-4, "eval_interval": 10, "eval_iters": 2,
                          "log_interval": 1, "checkpoint_interval": 5, "device": "cpu", "dtype": "float32"},
                "launch": {"nproc_per_node": 1},
                "resources": {"cpus_per_task": 1, "mem_mb": 1000, "runtime": 10},
            }
        },
        "samples": {"tiny": {"model": "tiny", "start": "\n", "num_samples": 2, "max_new_tokens": 20, "seed": 1}},
        "evals": {},
    }


def prepared_shakespeare_char(work: Path) -> Path:
    """tiny Shakespeare, char-level, downloaded (from the bundled copy) and prepared under `work`."""
    from nanogpt.data.prepare import download, prepare

    spec = tiny_config()["datasets"]["shakespeare_char"]
    download(spec, work / "input.txt")
    prepare(spec, work / "input.txt", work / "shakespeare_char")
    return work / "shakespeare_char"


@pytest.fixture(scope="session")
def shared_data(tmp_path_factory) -> Path:
    """A mirror folder as an air-gapped site would lay it out (tinyshakespeare/input.txt, gpt2-bpe/encoder.json,
    gpt2-bpe/vocab.bpe, SHA256SUMS), built in tmp from the files bundled in nanogpt/assets."""
    mirror = tmp_path_factory.mktemp("mirror")
    shutil.copy(BUNDLED_DIR / "SHA256SUMS", mirror / "SHA256SUMS")
    for line in (BUNDLED_DIR / "SHA256SUMS").read_text().splitlines():
        rel = line.split(maxsplit=1)[1]
        (mirror / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(BUNDLED_DIR / rel, mirror / rel)
    return mirror


@pytest.fixture
def mirror_env(shared_data, monkeypatch) -> Path:
    """Serve downloads from an explicit mirror ($NANOGPT_MIRROR), not from the bundled files."""
    monkeypatch.setenv("NANOGPT_MIRROR", str(shared_data))
    return shared_data


def make_pipeline(dest: Path, config: dict | None = None) -> Path:
    """A runnable copy of the workflow (Snakefile, rules, schema, profiles) with `config` as config.yaml."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "Snakefile", dest / "Snakefile")
    shutil.copytree(REPO / "workflow", dest / "workflow", dirs_exist_ok=True)
    shutil.copytree(REPO / "profiles", dest / "profiles", dirs_exist_ok=True)  # the default workflow profile
    write_config(dest, config or tiny_config())
    return dest


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def run_snakemake(workdir: Path, *args: str, timeout: int = 600, check: bool = True,
                  env: dict | None = None) -> subprocess.CompletedProcess:
    """snakemake in `workdir`, under `timeout -k` (Snakemake ignores a plain SIGTERM while jobs run).

    $NANOGPT_MIRROR passes through as it is: unset, downloads come from the files bundled in nanogpt/assets.
    """
    full_env = dict(os.environ)
    full_env["PATH"] = f"{BIN}{os.pathsep}{full_env.get('PATH', '')}"
    full_env.update(env or {})
    cmd = ["timeout", "-k", "10", str(timeout), str(BIN / "snakemake"), "--cores", "2", *args]
    proc = subprocess.run(cmd, cwd=workdir, env=full_env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in sorted((workdir / "logs").rglob("*.log")))
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}\n{logs}")
    return proc


@pytest.fixture
def pipeline_dir(tmp_path) -> Path:
    return make_pipeline(tmp_path / "pipeline")
