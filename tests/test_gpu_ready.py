"""GPU readiness, checked on the CPU: device choice with a mocked torch.cuda, the launcher's GPU count, NCCL's
device, the checkpoint cadence, the dropout seed path, compile: auto, and GPU slots for sample and eval."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import BIN, REPO, tiny_config
from nanogpt import launch, runtime
from nanogpt.config import resolve_run
from nanogpt.data.prepare import prepare_text
from nanogpt.errors import ConfigError
from nanogpt.model import GPT, GPTConfig
from nanogpt.runtime import Dist, pick_device, resolve_compile, seed_device_rng, setup_distributed
from nanogpt.settings import EvalSettings
from nanogpt.train import Trainer, train

SHAKESPEARE = REPO / "nanogpt" / "assets" / "tinyshakespeare" / "input.txt"


@pytest.fixture(scope="module")
def char_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    prepare_text(SHAKESPEARE, out)
    return out


@pytest.fixture
def gpus(monkeypatch):
    """A machine with `n` CUDA GPUs, as far as torch.cuda's queries go."""

    def set_count(n: int, cuda_version: str | None = "12.4") -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.version, "cuda", cuda_version)

    return set_count


# ---- which device ---------------------------------------------------------------------------------------------
def test_each_rank_gets_its_own_gpu(gpus):
    gpus(4)
    assert pick_device("auto", local_rank=3) == torch.device("cuda", 3)
    assert pick_device("cuda", local_rank=2) == torch.device("cuda", 2)


def test_more_ranks_than_gpus_is_an_error_not_a_shared_gpu(gpus):
    gpus(2)
    with pytest.raises(ConfigError, match=r"local rank 3 has no GPU of its own: 2 CUDA device\(s\) are visible"):
        pick_device("auto", local_rank=3)


def test_a_run_given_gpus_never_falls_back_to_the_cpu(gpus, monkeypatch):
    gpus(0, cuda_version=None)
    assert pick_device("auto") == torch.device("cpu")  # nothing asked for a GPU: the CPU is fine
    with pytest.raises(ConfigError, match=r"found no CUDA GPU, but the run asks for GPUs \(this torch .* CPU-only"):
        pick_device("auto", needs_gpu=True)
    assert pick_device("cpu", needs_gpu=True) == torch.device("cpu")  # explicit cpu still works
    gpus(0, cuda_version="12.4")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES='' hides every GPU"):
        pick_device("auto", needs_gpu=True)


def test_train_with_gpus_on_a_cpu_machine_fails_in_one_line(tmp_path, char_data):
    """`nanogpt train --gpus 1` (what the pipeline passes for resources.gpus: 1) on this CPU-only machine."""
    spec = tiny_config()["runs"]["tiny"]
    spec["train"]["device"] = "auto"
    proc = subprocess.run([str(BIN / "nanogpt"), "train", "--name", "tiny", "--spec", json.dumps(spec),
                           "--data-dir", str(char_data), "--out-dir", str(tmp_path / "run"), "--gpus", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "nanogpt train: error: device=auto found no CUDA GPU, but the run asks for GPUs (this torch "
        f"({torch.__version__}) is a CPU-only build): expected a GPU that torch can use, or device: cpu to train "
        "on the CPU on purpose"]
    assert not (tmp_path / "run").exists()  # nothing left behind


def test_nccl_learns_the_gpu_before_the_first_collective(monkeypatch):
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(runtime.dist, "init_process_group", lambda **kw: calls.append(("init", kw)))
    monkeypatch.setattr(runtime.dist, "get_rank", lambda: 1)
    d = setup_distributed("auto", torch.device("cuda", 1))
    assert calls == [("set_device", torch.device("cuda", 1)),
                     ("init", {"backend": "nccl", "device_id": torch.device("cuda", 1)})]
    assert (d.rank, d.local_rank, d.world_size) == (1, 1, 2)


# ---- the launcher ---------------------------------------------------------------------------------------------
def test_launcher_refuses_more_workers_than_gpus(tmp_path, char_data):
    spec = tiny_config()["runs"]["tiny"]
    spec["train"]["device"] = "auto"
    env = dict(os.environ, NANOGPT_GPU_COUNT="2", NANOGPT_GPU_LOCK_DIR=str(tmp_path / "locks"))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.pop("SLURM_JOB_ID", None)
    proc = subprocess.run([sys.executable, "-m", "nanogpt.launch", "--standalone", "--nproc_per_node=4", "-m",
                           "nanogpt.cli", "train", "--spec", json.dumps(spec), "--data-dir",
                           str(char_data), "--out-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "nanogpt train: error: nproc_per_node=4 but this machine has 2 GPU(s): expected launch.nproc_per_node <= 2 "
        "(one GPU per process), or device: cpu")


def test_launcher_says_a_checkpoint_was_saved_only_when_rank_0_reported_it(tmp_path):
    saved = tmp_path / "saved.txt"
    saved.write_text("")
    assert "before a checkpoint was saved" in launch.stopped_message("SIGTERM", str(saved))
    saved.write_text("checkpoint results/runs/x/checkpoints/ckpt_00000040.pt saved at iter 40\n")
    assert launch.stopped_message("SIGTERM", str(saved)) == (
        "nanogpt train: stopped by SIGTERM after saving a checkpoint (checkpoint results/runs/x/checkpoints/"
        "ckpt_00000040.pt saved at iter 40): rerun to resume")
    assert "before a checkpoint" in launch.stopped_message("SIGTERM", str(tmp_path / "missing.txt"))


# ---- the training loop ----------------------------------------------------------------------------------------
def trainer(tmp_path: Path, char_data: Path, **train_settings) -> Trainer:
    spec = tiny_config()["runs"]["tiny"]
    spec["train"].update(train_settings)
    t = Trainer(resolve_run(spec, "tiny"), char_data, tmp_path / "run", Dist(), lambda *a: None)
    t.last_save = (time.perf_counter(), 0.0)
    return t


def test_default_checkpoint_cadence_skips_saves_that_would_cost_too_much(tmp_path, char_data):
    t = trainer(tmp_path, char_data, checkpoint_interval=None, eval_interval=10, max_iters=100)
    t.iter_num = 10
    t.last_save = (time.perf_counter() - 1, 0.001)  # a 1 ms save, a second ago: due
    assert t.checkpoint_due()
    t.last_save = (time.perf_counter(), 60.0)  # a minute to write, just now: 5% allows one per 20 minutes
    assert not t.checkpoint_due()
    t.last_save = (time.perf_counter() - 1300, 60.0)  # 21+ minutes later: due again
    assert t.checkpoint_due()
    t.iter_num = 15
    assert not t.checkpoint_due()  # not a boundary
    t.iter_num = 100
    assert not t.checkpoint_due()  # the end saves the final state instead


def test_an_explicit_checkpoint_interval_is_honoured_exactly(tmp_path, char_data):
    t = trainer(tmp_path, char_data, checkpoint_interval=5, max_iters=100)
    t.iter_num = 5
    t.last_save = (time.perf_counter(), 60.0)
    assert t.checkpoint_due()


def test_the_first_save_is_estimated_from_the_checkpoint_size(tmp_path, char_data):
    """gpt2-xl with AdamW: ~19 GB, ~19 s at 1 GB/s, so no periodic save within its first ~6 minutes."""
    from nanogpt.train import ASSUMED_WRITE_BYTES_PER_S, CHECKPOINT_OVERHEAD

    n = 1.56e9
    assert 12 * n / ASSUMED_WRITE_BYTES_PER_S / CHECKPOINT_OVERHEAD > 360


def test_dropout_seed_path_draws_what_manual_seed_draws():
    """seed_device_rng reseeds only the device's generator (cheap, every step) with the same stream."""
    torch.manual_seed(123)
    want = torch.rand(5)
    torch.manual_seed(0)
    seed_device_rng(torch.device("cpu"), 123)
    assert torch.equal(torch.rand(5), want)


def test_compile_auto_is_on_for_cuda_only():
    assert resolve_compile("auto", torch.device("cuda", 0)) is True
    assert resolve_compile("auto", torch.device("cpu")) is False
    assert resolve_compile(False, torch.device("cuda", 0)) is False
    assert resolve_compile(True, torch.device("cpu")) is True
    assert resolve_run({"dataset": "d"}, "r").train.compile == "auto"
    with pytest.raises(ConfigError, match=r"runs.r.train.compile='sometimes': expected true, false or auto"):
        resolve_run({"dataset": "d", "train": {"compile": "sometimes"}}, "r")


@pytest.mark.parametrize("training", [True, False])
def test_the_model_compiles_as_one_graph(training):
    """fullgraph=True guards against graph breaks: dynamo traces the whole forward (and loss) in one graph."""
    torch._dynamo.reset()
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, dropout=0.1))
    model.train(training)
    x = torch.randint(50, (2, 16))
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    logits, loss = compiled(x, x)
    assert logits.shape == (2, 16, 50) and loss.ndim == 0


def test_a_short_run_keeps_its_final_state_as_a_checkpoint(tmp_path, char_data):
    """model.pt is the newest checkpoint (a hard link here): Snakemake deleting model.pt loses no training."""
    spec = tiny_config()["runs"]["tiny"]
    spec["train"].update(max_iters=6, lr_decay_iters=6, eval_interval=3, eval_iters=1)
    out = tmp_path / "run"
    train(resolve_run(spec, "tiny"), char_data, out, log=lambda *a: None)
    final = out / "checkpoints" / "ckpt_00000006.pt"
    assert final.is_file() and os.path.samefile(final, out / "model.pt")
    (out / "model.pt").unlink()
    lines: list[str] = []
    train(resolve_run(spec, "tiny"), char_data, out, log=lines.append)
    assert any("resuming from" in line and "ckpt_00000006" in line for line in lines)
    assert not any(line.startswith("iter ") for line in lines)  # nothing trained again


# ---- sample and eval queue for a GPU ----------------------------------------------------------------------------
HOLDER = """
import sys, time
from pathlib import Path
from nanogpt.launch import claim_gpus
indices, handles = claim_gpus(1, 1, Path(sys.argv[1]), log=lambda m: None)  # held while they live
print("held", flush=True)
time.sleep(60)
"""


def test_sample_waits_for_a_free_gpu(tmp_path, char_data):
    """On a '1-GPU' machine whose GPU a training holds, `nanogpt sample` queues instead of sharing cuda:0."""
    spec = tiny_config()["runs"]["tiny"]
    spec["train"].update(max_iters=2, lr_decay_iters=2, eval_interval=2, eval_iters=1)
    train(resolve_run(spec, "tiny"), char_data, tmp_path / "run", log=lambda *a: None)
    locks = tmp_path / "locks"
    locks.mkdir()
    env = dict(os.environ, NANOGPT_GPU_COUNT="1", NANOGPT_GPU_LOCK_DIR=str(locks), OMP_NUM_THREADS="1")
    for key in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID"):
        env.pop(key, None)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(locks)], stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout.readline().strip() == "held"
    sample = subprocess.Popen([str(BIN / "nanogpt"), "sample", "--checkpoint", str(tmp_path / "run" / "model.pt"),
                               "--num-samples", "1", "--max-new-tokens", "5", "--out", str(tmp_path / "s.txt")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        waiting = sample.stderr.readline()
        assert "waiting for 1 free GPU(s) of 1" in waiting
        time.sleep(1)
        assert sample.poll() is None and not (tmp_path / "s.txt").exists()  # still queued
    finally:
        holder.kill()
        holder.wait()
    assert sample.wait(timeout=120) == 0, sample.stderr.read()
    assert (tmp_path / "s.txt").is_file()


def test_eval_reads_the_loss_once_per_split(tmp_path, char_data, monkeypatch):
    """The losses add up on the device; `.item()` runs once per split, not per batch."""
    from nanogpt import evaluate as evaluate_module

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=65))
    reads = []
    real_item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: reads.append(1) or real_item(self))
    result = evaluate_module.evaluate(model, str(char_data), EvalSettings(batch_size=2, eval_iters=7))
    assert len(reads) == 2
    monkeypatch.setattr(torch.Tensor, "item", real_item)
    sampler = evaluate_module.BatchSampler(str(char_data), 32, 2, 1337, "cpu")
    with torch.no_grad():
        want = sum(model(*sampler.get_batch("val", 0, k, for_eval=True))[1].item() for k in range(7)) / 7
    assert result["val_loss"] == pytest.approx(want, abs=1e-6)
