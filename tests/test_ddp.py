"""DDP through torchrun on the CPU (gloo): 2 processes x 2 micro-batches must train exactly like 1 process x 4.

The same global batch (BatchSampler: micro-batch g of step i is fixed by seed and i; rank r takes g = r*accum ..
r*accum+accum-1) and the same seed must give the same loss at every step and the same final weights, whether the
ranks run under one `torchrun --standalone` (through Snakemake) or as two "nodes" joined by a c10d rendezvous.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import BIN, make_pipeline, run_snakemake, tiny_config
from nanogpt.config import resolve_run
from nanogpt.errors import ConfigError
from nanogpt.train import check_world_size, train

TOL = 1e-5
ACCUM = 4  # global micro-batches per step


def ddp_config(nproc: int) -> dict:
    cfg = tiny_config()
    cfg["runs"]["tiny"]["train"]["gradient_accumulation_steps"] = ACCUM
    cfg["runs"]["tiny"]["launch"]["nproc_per_node"] = nproc
    cfg["runs"]["tiny"]["resources"]["cpus_per_task"] = 2
    return cfg


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)["model"]


def assert_same_training(a: Path, b: Path) -> None:
    ha, hb = history(a), history(b)
    assert [r["iter"] for r in ha] == [r["iter"] for r in hb] == list(range(1, 21))
    for ra, rb in zip(ha, hb, strict=True):
        assert abs(ra["loss"] - rb["loss"]) < TOL, (ra, rb)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=0, atol=TOL), (k, (wa[k] - wb[k]).abs().max().item())
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert abs(ma["val_loss"] - mb["val_loss"]) < TOL and abs(ma["train_loss"] - mb["train_loss"]) < TOL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> dict[int, Path]:
    """The tiny pipeline run end to end (download, prepare, train, sample) with 1 and with 2 processes."""
    out = {}
    for nproc in (1, 2):
        work = make_pipeline(tmp_path_factory.mktemp(f"ddp{nproc}"), ddp_config(nproc))
        run_snakemake(work, timeout=300)
        out[nproc] = work
    return out


def test_two_processes_train_like_one(pipelines):
    """Same loss at every step and same final weights: the ranks split the global batch, not duplicate it."""
    one, two = (pipelines[n] / "results" / "runs" / "tiny" for n in (1, 2))
    assert_same_training(one, two)
    assert json.loads((two / "metrics.json").read_text())["world_size"] == 2
    assert json.loads((one / "metrics.json").read_text())["world_size"] == 1
    # A sanity check that the comparison can fail: training moved the weights well beyond the tolerance.
    init = torch.load(two / "checkpoints" / "ckpt_00000015.pt", weights_only=True)["model"]
    assert (init["lm_head.weight"] - weights(two)["lm_head.weight"]).abs().max() > 10 * TOL


def test_two_process_rule_makes_the_same_files(pipelines):
    """The train rule with nproc_per_node=2 (Snakemake -> torchrun) leaves the files a 1-process run leaves."""
    def files(work: Path) -> set[str]:
        return {str(p.relative_to(work)) for p in (work / "results").rglob("*")
                if p.is_file() and not p.name.startswith("events.out.tfevents.")}

    one, two = pipelines[1], pipelines[2]
    assert files(one) == files(two)
    assert "results/runs/tiny/checkpoints/ckpt_00000015.pt" in files(two)
    for work in (one, two):
        assert list((work / "results/runs/tiny").glob("events.out.tfevents.*")), "no TensorBoard events"
    assert (one / "results/samples/tiny.txt").read_text() == (two / "results/samples/tiny.txt").read_text()
    # Only rank 0 logs: one 'done' line and one history row per step, although both ranks ran.
    log = (two / "logs/train/tiny.log").read_text()
    assert "world size 2" in log and log.count("done: val loss") == 1


def test_two_node_rendezvous_matches_single_node(pipelines, tmp_path):
    """Two torchrun 'nodes' (one process each) joined by a c10d rendezvous on 127.0.0.1 = the 2-process run."""
    work = pipelines[2]
    spec = copy.deepcopy(ddp_config(2)["runs"]["tiny"])
    spec["launch"] = {"nproc_per_node": 1, "nnodes": 2}
    out_dir = tmp_path / "two_nodes"
    port = free_port()
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    procs = []
    for node in (0, 1):
        cmd = [str(BIN / "torchrun"), "--nnodes=2", "--nproc_per_node=1", f"--node-rank={node}",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=ddp-test",
               f"--rdzv-conf=is_host={int(node == 0)}", "-m", "nanogpt.cli", "train", "--name", "tiny",
               "--spec", json.dumps(spec), "--data-dir", str(work / "results/data/shakespeare_char"),
               "--out-dir", str(out_dir)]
        procs.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert "world size 2" in "".join(outputs)
    assert_same_training(work / "results/runs/tiny", out_dir)


def test_accumulation_must_split_across_ranks(monkeypatch, tmp_path):
    """A world size that does not divide gradient_accumulation_steps is a one-line error, before any work."""
    assert check_world_size(4, 2) == 2
    with pytest.raises(ConfigError, match=r"gradient_accumulation_steps=4 is not divisible by the world size 3"):
        check_world_size(4, 3)
    # torchrun started with more processes than the config asked for: caught from WORLD_SIZE at startup.
    run = resolve_run(ddp_config(1)["runs"]["tiny"], "tiny")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="not divisible by the world size 3"):
        train(run, tmp_path / "no-data", tmp_path / "out")
    # And in config.yaml already: nproc_per_node x nnodes must divide it.
    entry = ddp_config(2)["runs"]["tiny"]
    entry["train"]["gradient_accumulation_steps"] = 3
    with pytest.raises(ConfigError, match="gradient_accumulation_steps=3 is not divisible by the world size 2"):
        resolve_run(entry, "tiny")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_precision_on_cpu(pipelines, tmp_path, dtype):
    """bf16 autocast runs on the CPU; fp16 trains through the GradScaler, whose state the checkpoint keeps."""
    spec = ddp_config(1)["runs"]["tiny"]
    out = tmp_path / dtype
    cmd = [sys.executable, "-m", "nanogpt.cli", "train", "--name", "tiny", "--spec", json.dumps(spec),
           "--data-dir", str(pipelines[1] / "results/data/shakespeare_char"), "--out-dir", str(out),
           f"dtype={dtype}", "max_iters=10"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"dtype {dtype}" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dtype"] == dtype
    ref = {r["iter"]: r["loss"] for r in history(pipelines[1] / "results/runs/tiny")}
    for row in history(out):  # same trajectory as fp32 up to rounding (the schedule differs after step 10)
        assert abs(row["loss"] - ref[row["iter"]]) < 0.05 and row["loss"] == row["loss"]
    scaler = torch.load(out / "model.pt", weights_only=True)["scaler"]
    if dtype == "float16":
        assert scaler is not None and scaler["scale"] > 0 and scaler["_growth_tracker"] > 0
    else:
        assert scaler is None


@pytest.mark.slow
def test_compile_in_ddp_matches_eager(pipelines, tmp_path):
    """compile: true under DDP (2 gloo ranks) on the CPU: torch.compile + inductor, same training as eager."""
    spec = ddp_config(2)["runs"]["tiny"]
    cmd = [sys.executable, "-m", "nanogpt.cli", "train", "--name", "tiny", "--spec", json.dumps(spec),
           "--data-dir", str(pipelines[2] / "results/data/shakespeare_char"), "--out-dir", str(tmp_path / "c"),
           "compile=true"]
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    ha, hb = history(pipelines[2] / "results/runs/tiny"), history(tmp_path / "c")
    for ra, rb in zip(ha, hb, strict=True):
        assert abs(ra["loss"] - rb["loss"]) < 1e-4, (ra, rb)
