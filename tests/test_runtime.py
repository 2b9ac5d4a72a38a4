"""GPU-readiness checks that run on the CPU: batches, RNG state across device counts, MFU under DDP, dtype and
peak-FLOP/s tables, TF32 setup, the launcher's GPU slots, and the gpt2_124m runs of config.yaml."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import yaml

from conftest import BIN, REPO, tiny_config
from nanogpt import launch, runtime
from nanogpt.config import resolve_run
from nanogpt.data.prepare import BatchSampler, prepare_text
from nanogpt.data.tokenizer import BUNDLED_DIR
from nanogpt.pipeline.entries import Pipeline
from nanogpt.pipeline.jobs import Jobs
from nanogpt.runtime import (
    Dist,
    gpu_has_native_bf16,
    gpu_peak_flops,
    mfu_or_none,
    pick_dtype,
    setup_device,
)
from nanogpt.train import Trainer, _rng_state, _set_rng_state, _StopFlag, train

SHAKESPEARE = BUNDLED_DIR / "tinyshakespeare" / "input.txt"


@pytest.fixture(scope="module")
def char_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    prepare_text(SHAKESPEARE, out)
    return out


# ---- row 1: batches -------------------------------------------------------------------------------------------
def test_batches_are_contiguous_windows_of_the_data(char_data):
    sampler = BatchSampler(char_data, block_size=16, batch_size=8, seed=3)
    data = np.fromfile(char_data / "train.bin", dtype=np.uint16).astype(np.int64)
    windows = np.lib.stride_tricks.sliding_window_view(data, 17)
    for step, index in ((0, 0), (5, 2)):
        x, y = sampler.get_batch("train", step, index)
        assert x.is_contiguous() and y.is_contiguous()
        assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
        for row_x, row_y in zip(x.numpy(), y.numpy(), strict=True):
            row = np.concatenate([row_x, row_y[-1:]])
            assert (windows == row).all(axis=1).any(), "not a window of train.bin"
            assert (row_y[:-1] == row_x[1:]).all()  # y is x shifted by one token
    same = sampler.get_batch("train", 5, 2)
    assert torch.equal(same[0], x) and torch.equal(same[1], y)  # stateless: (step, index) fix the windows


# ---- row 2: SIGTERM -------------------------------------------------------------------------------------------
def test_stop_flag_catches_sigterm_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with _StopFlag() as stop:
        assert not stop.agreed(Dist(), torch.device("cpu"))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.requested and stop.agreed(Dist(), torch.device("cpu"))
    assert signal.getsignal(signal.SIGTERM) is before


# ---- row 3: MFU of one rank -----------------------------------------------------------------------------------
def test_mfu_counts_only_this_ranks_micro_batches(char_data, tmp_path):
    """A rank of a 2-process run does half of the 4 global micro-batches: its MFU counts those 2, not all 4.

    The trainer believes it is rank 0 of 2 (a one-member gloo group stands in for the other rank, whose
    micro-batches are simply not run); the logged MFU must match the formula over the logged step times.
    """
    spec = tiny_config()["runs"]["tiny"]
    spec["train"].update(gradient_accumulation_steps=4, peak_flops=1e12, max_iters=12, lr_decay_iters=12)
    run = resolve_run(spec, "tiny")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        lines: list[str] = []
        trainer = Trainer(run, char_data, tmp_path / "run", Dist(rank=0, world_size=2), lines.append)
        assert trainer.accum == 2
        metrics = trainer.fit(time.time())
    finally:
        dist.destroy_process_group()
    rows = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    expected = None
    for row in rows:
        if row["iter"] > 5:
            mfu = trainer.raw_model.estimate_mfu(run.train.batch_size * 2, row["dt"], 1e12)
            expected = mfu if expected is None else 0.9 * expected + 0.1 * mfu
    assert metrics["mfu"] == pytest.approx(expected, rel=1e-9) and 0 < expected < 1
    last = next(line for line in reversed(lines) if line.startswith("iter 12:"))
    assert last.endswith(f"mfu {expected * 100:.2f}%")  # a percentage in train.log, as nanoGPT prints it


# ---- row 4: RNG state -----------------------------------------------------------------------------------------
def test_rng_state_from_a_machine_with_other_gpus_loads_on_cpu():
    torch.manual_seed(7)
    state = _rng_state(torch.device("cpu"))
    assert set(state) == {"torch"}
    expected = torch.rand(3)
    for cuda in ([torch.zeros(16, dtype=torch.uint8)] * 8, torch.zeros(16, dtype=torch.uint8), None):
        _set_rng_state({**state, "cuda": cuda}, torch.device("cpu"))
        assert torch.equal(torch.rand(3), expected)


def test_resume_from_a_checkpoint_with_a_list_of_cuda_states(char_data, tmp_path):
    """Older checkpoints stored torch.cuda.get_rng_state_all() (one state per GPU): resuming must not index it."""
    spec = tiny_config()["runs"]["tiny"]
    spec["train"].update(max_iters=6, lr_decay_iters=6, eval_interval=3, checkpoint_interval=3, eval_iters=1)
    out = tmp_path / "run"
    train(resolve_run(spec, "tiny"), char_data, out, log=lambda *a: None)
    path = out / "checkpoints" / "ckpt_00000003.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 4
    torch.save(ckpt, path)
    for finished in (out / "model.pt", out / "checkpoints" / "ckpt_00000006.pt"):  # as if killed after iter 3
        finished.unlink()
    lines: list[str] = []
    metrics = train(resolve_run(spec, "tiny"), char_data, out, log=lines.append)
    assert any("resuming from" in line and "ckpt_00000003" in line for line in lines)
    assert metrics["iters"] == 6


# ---- rows 9-11: dtype, peak table, TF32, MFU above 1 ----------------------------------------------------------
@pytest.mark.parametrize(("capability", "dtype"), [((7, 0), torch.float16), ((7, 5), torch.float16),
                                                   ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_auto_dtype_follows_compute_capability(capability, dtype, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert gpu_has_native_bf16(capability) == (dtype == torch.bfloat16)
    assert pick_dtype("auto", torch.device("cuda", 0)) == dtype
    assert pick_dtype("float32", torch.device("cuda", 0)) == torch.float32


@pytest.mark.parametrize(("has_bf16", "n_embd", "dtype"), [(True, 128, torch.bfloat16), (True, 64, torch.bfloat16),
                                                           (True, 32, torch.float32), (False, 768, torch.float32)])
def test_auto_dtype_on_cpu_follows_bf16_units_and_width(has_bf16, n_embd, dtype, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: has_bf16)
    assert pick_dtype("auto", torch.device("cpu"), n_embd) == dtype
    assert pick_dtype("float32", torch.device("cpu"), n_embd) == torch.float32


@pytest.mark.parametrize(("name", "peak"), [
    ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA GH200 480GB", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA L40S", 362e12), ("NVIDIA L40", 181e12), ("NVIDIA L4", 121e12), ("NVIDIA A10G", 70e12),
    ("NVIDIA A10", 125e12), ("NVIDIA GeForce RTX 4090", 165e12), ("Tesla T4", 65e12),
    ("NVIDIA H200 NVL", 836e12), ("NVIDIA H800", 989e12), ("NVIDIA H800 PCIe", 756e12),
    ("NVIDIA A800-SXM4-80GB", 312e12), ("NVIDIA B200", 2250e12), ("NVIDIA GB200", 2500e12),
    ("Some Future GPU", None),
])
def test_peak_flops_by_exact_model(name, peak):
    assert gpu_peak_flops(name, (9, 0), torch.bfloat16) == peak
    assert gpu_peak_flops(name, (9, 0), torch.float32) == (peak / 2 if peak else None)  # TF32: half of bf16


def test_fp32_peak_is_unknown_before_ampere():
    assert gpu_peak_flops("Tesla V100-SXM2-16GB", (7, 0), torch.float16) == 125e12
    assert gpu_peak_flops("Tesla V100-SXM2-16GB", (7, 0), torch.float32) is None  # no TF32 units


@pytest.fixture
def precision_restored():
    """Each TF32 setting as it was before the test, through the API that set it (never a mix of the two)."""
    before = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    yield
    torch.set_float32_matmul_precision(before[0])
    torch.backends.cudnn.allow_tf32 = before[1]


def test_setup_device_turns_on_tf32_for_cuda_only(monkeypatch, precision_restored):
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    torch.set_float32_matmul_precision("highest")
    setup_device(torch.device("cpu"))
    assert torch.get_float32_matmul_precision() == "highest"
    setup_device(torch.device("cuda", 0))
    assert torch.get_float32_matmul_precision() == "high"


def test_tf32_getters_work_after_setup(monkeypatch, precision_restored):
    """Inductor (max-autotune, and older versions for every fp32 graph) reads these getters: setting only
    torch.backends.cuda.matmul.fp32_precision made them raise ("mix of the legacy and new APIs")."""
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    setup_device(torch.device("cuda", 0))
    assert torch.get_float32_matmul_precision() == "high"
    assert torch.backends.cuda.matmul.allow_tf32 is True
    assert torch.backends.cudnn.allow_tf32 is True
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"  # the newer view agrees


@pytest.mark.parametrize("visible, local_rank, gpu", [
    ("0,1", 1, "GPU 1 of CUDA_VISIBLE_DEVICES=0,1"),  # SLURM's --gpus=2: each rank owns the entry at its local rank
    ("3,5", 0, "GPU 3 of CUDA_VISIBLE_DEVICES=3,5"),
    ("2", 1, "GPU none of CUDA_VISIBLE_DEVICES=2"),  # more ranks than entries: this one owns none
    (None, 0, "CUDA_VISIBLE_DEVICES unset"),
])
def test_each_rank_names_the_gpu_at_its_local_rank(visible, local_rank, gpu, monkeypatch):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    d = runtime.Dist(rank=local_rank + 2, local_rank=local_rank, world_size=4)
    assert runtime.rank_placement(d, torch.device("cpu")) == (
        f"rank {local_rank + 2} of 4 (local rank {local_rank}): device cpu, {gpu}")


def test_mfu_above_one_is_not_reported():
    assert mfu_or_none(0.42) == 0.42
    assert mfu_or_none(1.3) is None and mfu_or_none(0.0) is None


# ---- row 12: GPU slots for concurrent local jobs --------------------------------------------------------------
HOLDER = """
import sys, time
from pathlib import Path
from nanogpt.launch import claim_gpus
indices, handles = claim_gpus(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), log=lambda m: None)
print(",".join(map(str, indices)), flush=True)
time.sleep(60)
"""


def start_holder(n: int, count: int, lock_dir: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(n), str(count), str(lock_dir)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    return proc, proc.stdout.readline().strip()


def test_concurrent_claims_get_disjoint_gpus(tmp_path):
    holder, held = start_holder(2, 4, tmp_path)
    try:
        assert held == "0,1"
        indices, handles = launch.claim_gpus(2, 4, tmp_path, log=lambda m: None, poll_s=0.05)
        assert indices == [2, 3]
        for h in handles:
            h.close()
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_holder_frees_its_gpus_and_the_waiter_gets_them(tmp_path):
    holder, held = start_holder(2, 2, tmp_path)
    assert held == "0,1"
    threading.Timer(0.5, holder.kill).start()  # SIGKILL: no cleanup runs, the kernel drops the locks
    lines: list[str] = []
    t0 = time.monotonic()
    indices, handles = launch.claim_gpus(1, 2, tmp_path, log=lines.append, poll_s=0.05)
    holder.wait()
    assert indices == [0] and time.monotonic() - t0 >= 0.4
    assert len(lines) == 1 and "waiting for 1 free GPU(s) of 2" in lines[0]
    for h in handles:
        h.close()


@pytest.mark.parametrize(("env", "device", "claims"), [
    ({}, "auto", True),
    ({}, "cuda", True),
    ({}, "cpu", False),
    ({}, "cuda:1", False),  # the user named the GPU
    ({"CUDA_VISIBLE_DEVICES": "3"}, "auto", False),  # the user's choice
    ({"SLURM_JOB_ID": "42"}, "auto", False),  # SLURM assigns GPUs itself
    ({"NANOGPT_GPU_COUNT": "0"}, "auto", False),  # no GPUs
])
def test_gpu_slots_only_when_ours_to_assign(env, device, claims, tmp_path, monkeypatch):
    for key in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NANOGPT_GPU_COUNT", "2")
    monkeypatch.setenv("NANOGPT_GPU_LOCK_DIR", str(tmp_path))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with launch.gpu_slots("1", device, log=lambda m: None) as slots:
        assert (slots == [0]) == claims
        if claims:
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    if claims:
        assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_launcher_takes_the_run_device_as_an_argument():
    """The device comes from the resolved settings (pipeline, `nanogpt train`), not from parsing the worker's
    arguments; the rest is torchrun's command line."""
    device, args = launch.parse_args(["--run-device=cpu", "--standalone", "--nproc_per_node=2", "-m", "nanogpt.cli",
                                      "train", "--spec", '{"train": {"device": "cuda"}}'])
    assert device == "cpu" and args.nproc_per_node == "2" and args.training_script_args[:1] == ["train"]
    assert launch.parse_args(["--standalone", "-m", "x"])[0] == "auto"


def test_launcher_gives_workers_their_gpus(tmp_path):
    """Two launchers at once on a '2-GPU' machine: each worker sees one GPU, never the same one."""
    env = dict(os.environ, NANOGPT_GPU_COUNT="2", NANOGPT_GPU_LOCK_DIR=str(tmp_path / "locks"),
               PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    for key in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID"):
        env.pop(key, None)
    outs = [tmp_path / f"seen{i}.txt" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "nanogpt.launch", "--standalone", "--nproc_per_node=1",
                               "--no-python", "sh", "-c", f'echo "$CUDA_VISIBLE_DEVICES" > {out}; sleep 2'],
                              env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for out in outs]
    for proc in procs:
        output = proc.communicate(timeout=120)[0]
        assert proc.returncode == 0, output
    assert sorted(out.read_text().strip() for out in outs) == ["0", "1"]


# ---- E: nanoGPT's GPT-2 124M runs -----------------------------------------------------------------------------
def repo_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_gpt2_124m_is_nanogpts_train_gpt2():
    p = Pipeline(repo_config())
    run = p.run("gpt2_124m")
    m, t = run.model, run.train
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout, m.bias) == (12, 12, 768, 1024, 0.0, False)
    assert (t.batch_size, t.gradient_accumulation_steps, t.max_iters, t.lr_decay_iters) == (12, 40, 600000, 600000)
    assert (t.learning_rate, t.min_lr, t.warmup_iters, t.weight_decay, t.beta2) == (6e-4, 6e-5, 2000, 0.1, 0.95)
    assert t.compile and run.launch.nproc_per_node == 8 and run.launch.nnodes == 1
    assert t.batch_size * t.gradient_accumulation_steps * m.block_size == 491_520  # ~0.5M tokens per step
    res = Jobs(p).run_resources("gpt2_124m")
    assert (res["gpus"], res["nodes"], res["tasks"], res["gres"], res["mpi"]) == (8, 1, 1, None, None)
    assert Jobs(p).torchrun_launcher("gpt2_124m") == "python -m nanogpt.launch --run-device=auto --standalone --nproc_per_node=8"


def test_gpt2_124m_2node_splits_the_same_global_batch():
    p = Pipeline(repo_config())
    one, two = p.run("gpt2_124m"), p.run("gpt2_124m_2node")
    assert two.launch.nnodes == 2 and two.launch.nproc_per_node == 8
    # the same 480 sequences (491,520 tokens) per step, as micro-batches that split evenly over 16 ranks
    assert two.train.gradient_accumulation_steps % 16 == 0
    tokens = [r.train.batch_size * r.train.gradient_accumulation_steps * r.model.block_size for r in (one, two)]
    assert tokens == [491_520, 491_520]
    assert (two.train.max_iters, two.train.learning_rate, two.model) == (600000, 6e-4, one.model)
    res = Jobs(p).run_resources("gpt2_124m_2node")
    assert (res["gpus"], res["gres"], res["nodes"], res["tasks"], res["mpi"]) == (None, "gpu:8", 2, 2, "srun")
    assert Jobs(p).torchrun_launcher("gpt2_124m_2node").startswith("srun --nodes=2 --ntasks=2 --ntasks-per-node=1 ")


@pytest.mark.parametrize("run", ["gpt2_124m", "gpt2_124m_2node"])
def test_gpt2_124m_dry_run_plans_download_prepare_train(run, tmp_path):
    for item in ("Snakefile", "config.yaml"):
        shutil.copy(REPO / item, tmp_path / item)
    for folder in ("workflow", "profiles"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run([str(BIN / "snakemake"), "-n", f"results/runs/{run}/model.pt"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    stats = dict(re.findall(r"^(\w+)\s+(\d+)$", out, re.M))
    assert stats == {"download_hf": "1", "prepare": "1", "train": "1", "total": "3"}, out
    assert "--nproc_per_node=8" in out and "gpu" in out

