"""A GPU run on the local SLURM's fake GPUs (`scripts/slurm-local.sh up`: gres gpu:2 backed by dummy device files),
requeued in the middle of training.

One snakemake run through the SLURM profile trains a run with `resources.gpus: 2` and `device: cpu`: one sbatch
job (--gpus=2), one torchrun with 2 workers using gloo on the CPU, each worker the owner of the entry of SLURM's
CUDA_VISIBLE_DEVICES at its local rank. Once the run has a checkpoint, the test requeues the job (`scontrol requeue`,
as a preemption does): SLURM stops it (SIGTERM), puts it back in the queue under the same job id and starts it
again; the second start resumes from the newest checkpoint and ends with the same weights, tensor for tensor, as
an uninterrupted run of the same settings; snakemake sees the one job finish. Skipped where SLURM or its GPUs are
missing; ~1-2 minutes on 2 busy cores, most of it the SLURM plugin's status polling.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from test_slurm import SLURM_PROFILE, _slurm_up, executed_rules, scontrol_job, start_snakemake, train_job_ids

from conftest import BIN, make_pipeline, tiny_config
from nanogpt import paths

GPUS = 2
ITERS = 200  # checkpoints every 20: the requeue lands after the first one, well before the end
TIMEOUT = 600  # the whole snakemake run; generous for a busy machine


def fake_gpus() -> tuple[bool, str]:
    """(True, "") where the local SLURM is up with GPUS gres GPUs on a node, else (False, why not)."""
    if not _slurm_up():
        return False, "no SLURM here (sbatch missing or `scontrol ping` fails)"
    gres = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True).stdout.split()
    counts = [int(m.group(1)) for g in gres if (m := re.fullmatch(r"gpu(?::\w+)?:(\d+)(?:\(.*\))?", g))]
    if not counts or max(counts) < GPUS:
        return False, f"the SLURM nodes offer no {GPUS} GPUs (sinfo gres: {' '.join(gres) or 'none'})"
    return True, ""


HAS_GPUS, WHY_NOT = fake_gpus()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(
    not HAS_GPUS, reason=f"{WHY_NOT}: run `scripts/slurm-local.sh up` as root")]


def gpu_run() -> dict:
    """The tiny run, longer, on 2 GPUs of one node, trained on the CPU: 2 workers, a global batch of 2 micro-batches."""
    run = copy.deepcopy(tiny_config()["runs"]["tiny"])
    run["train"].update(max_iters=ITERS, lr_decay_iters=ITERS, eval_interval=100, log_interval=10,
                        checkpoint_interval=20, gradient_accumulation_steps=GPUS, device="cpu")
    run["launch"] = {"nproc_per_node": GPUS}
    run["resources"] = {"cpus_per_task": 2, "mem_mb": 1000, "runtime": 10, "gpus": GPUS}
    return run


def gpu_config() -> dict:
    config = tiny_config()
    config["runs"] = {"gpu": gpu_run()}
    config["targets"] = {"runs": ["gpu"], "samples": [], "evals": []}
    config["samples"] = {}
    return config


def start_reference(workdir: Path, out_dir: Path) -> subprocess.Popen:
    """The same run uninterrupted, outside SLURM: torchrun --standalone with 2 CPU processes, on the data the
    SLURM jobs prepared."""
    cmd = [str(BIN / "python"), "-m", "nanogpt.launch", "--standalone", f"--nproc_per_node={GPUS}", "-m",
           "nanogpt.cli", "train", "--name", "gpu", "--spec", json.dumps(gpu_run()),
           "--data-dir", str(workdir / "results/data/shakespeare_char"), "--out-dir", str(out_dir / "run")]
    with (out_dir / "train.out").open("w") as out:
        return subprocess.Popen(cmd, cwd=out_dir, stdout=out, stderr=subprocess.STDOUT, text=True,
                                env=dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}"))


@pytest.fixture(scope="module")
def requeued_run(tmp_path_factory, shared_data) -> dict:
    """snakemake --profile slurm for run "gpu"; requeues its train job once the run has a checkpoint, and lets the
    requeued job start at once (SLURM holds a requeued job back for two minutes)."""
    workdir = make_pipeline(tmp_path_factory.mktemp("slurm_gpus") / "pipeline", gpu_config()).resolve()
    reference_dir = tmp_path_factory.mktemp("reference")
    proc = start_snakemake(workdir, "--profile", SLURM_PROFILE, "results/runs/gpu/model.pt", timeout=TIMEOUT,
                           env={"NANOGPT_MIRROR": str(shared_data)})
    ckpt_dir = workdir / "results/runs/gpu/checkpoints"
    snapshot = workdir / "at_requeue.pt"
    job_id = reference = None
    released = False
    try:
        while proc.poll() is None:
            jobs = train_job_ids(workdir, "gpu") if (workdir / ".snakemake/slurm_logs/rule_train").is_dir() else []
            ckpts = sorted(ckpt_dir.glob("ckpt_*.pt"))
            if job_id is None and jobs and ckpts and scontrol_job(jobs[0])["JobState"] == "RUNNING":
                job_id = jobs[0]
                shutil.copy(ckpts[-1], snapshot)  # the training state when it was requeued
                subprocess.run(["scontrol", "requeue", str(job_id)], check=True)
                reference = start_reference(workdir, reference_dir)  # while the job waits and resumes
            elif job_id is not None and not released and scontrol_job(job_id)["JobState"] == "PENDING":
                subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
                released = True
            time.sleep(0.1)
        if reference is not None:
            reference.wait(timeout=400)
    finally:
        for p in (proc, reference):
            if p is not None and p.poll() is None:
                p.kill()
    return {"workdir": workdir, "rc": proc.returncode, "out": (workdir / "snakemake.out").read_text(),
            "job_id": job_id, "snapshot": snapshot, "reference": (reference_dir, reference)}


@pytest.fixture(scope="module")
def reference(requeued_run) -> Path:
    """The uninterrupted run's final weights (it ran while the requeued job waited and resumed)."""
    out_dir, proc = requeued_run["reference"]
    assert proc is not None, f"no reference run: the train job ended before it could be requeued\n" \
                             f"{requeued_run['out'][-3000:]}"
    output = (out_dir / "train.out").read_text()
    assert proc.returncode == 0 and "world size 2" in output, output[-3000:]
    return out_dir / "run" / "model.pt"


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def test_gpu_run_is_one_job_one_torchrun_one_gpu_per_rank(requeued_run):
    workdir, out = requeued_run["workdir"], requeued_run["out"]
    assert requeued_run["rc"] == 0, out[-5000:]
    remote, _ = executed_rules(out)
    assert "train" in remote, out[-3000:]
    (job_id,) = train_job_ids(workdir, "gpu")  # one sbatch job, also across its requeue
    info = scontrol_job(job_id)
    assert (info["NumNodes"], info["NumTasks"], info["NumCPUs"]) == ("1", "1", "2"), info
    assert info["TresPerJob"] == f"gres:gpu:{GPUS}", info  # the plugin's --gpus=2; SLURM set CUDA_VISIBLE_DEVICES
    slurm_log = next((workdir / ".snakemake/slurm_logs/rule_train").rglob(f"{job_id}.log")).read_text()
    assert slurm_log.count(f"--standalone --nproc_per_node={GPUS}") >= 1, slurm_log[-3000:]
    # each start of the job: one torchrun, whose 2 workers train on the CPU and own the GPU at their local rank
    log = (workdir / "logs/train/gpu.log").read_text()
    assert "device cpu, dtype float32, world size 2" in log, log[-3000:]
    rank_lines = re.findall(r"^rank .*$", log, re.M)
    assert sorted(rank_lines) == [f"rank {r} of 2 (local rank {r}): device cpu, GPU {r} of CUDA_VISIBLE_DEVICES=0,1"
                                  for r in range(GPUS)], log[-3000:]


def test_requeued_job_resumes_and_ends_bit_identical(requeued_run, reference):
    workdir, out, job_id = requeued_run["workdir"], requeued_run["out"], requeued_run["job_id"]
    assert requeued_run["rc"] == 0, out[-5000:]
    info = scontrol_job(job_id)
    assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1"), info
    assert "Error in rule train" not in out, out[-5000:]
    # the first start saved a checkpoint on SLURM's SIGTERM (its full log is kept as FILE.1), the second resumed
    # from it (its log replaced the first's)
    first = (workdir / (paths.TRAIN_LOG.format(run="gpu") + ".1")).read_text()
    saved = re.search(r"^SIGTERM: checkpoint saved at iter (\d+)", first, re.M)
    assert saved and 0 < int(saved.group(1)) < ITERS, first[-3000:]
    log = (workdir / "logs/train/gpu.log").read_text()
    iteration = int(saved.group(1))
    assert re.search(rf"^resuming from \S+/ckpt_{iteration:08d}\.pt \(iter {iteration}\)$", log, re.M), log[-3000:]
    assert log.count("done: val loss") == 1, log[-3000:]
    on_slurm, uninterrupted = weights(workdir / "results/runs/gpu/model.pt"), weights(reference)
    assert on_slurm.keys() == uninterrupted.keys()
    for key in uninterrupted:
        assert torch.equal(on_slurm[key], uninterrupted[key]), key
    # the comparison can fail: the weights at the requeue are far from the final ones
    at_requeue = weights(requeued_run["snapshot"])
    assert any(not torch.equal(at_requeue[k], uninterrupted[k]) for k in uninterrupted)
