"""The multi-node train job on a real two-node SLURM (`scripts/slurm-local.sh up2`: two slurmd on this machine).

One snakemake run through the SLURM profile trains a 2-node run. Its train job is one sbatch job on both nodes
whose `srun` starts nanogpt.launch (torchrun) once per node, rendezvous on the first node, and the workers see
world size 2. The test kills the second node's worker mid-run: the job fails with the reason on the console,
the profile's retry (a new 2-node job) resumes from the newest checkpoint, and the final weights equal those of
one node with 2 processes (same global batch). Skipped where that cluster is not up; ~1.5-2.5 minutes on 2
busy cores, most of it the SLURM plugin's status polling.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from test_slurm import SLURM_PROFILE, executed_rules, scontrol_job, start_snakemake, train_job_ids

from conftest import BIN, make_pipeline, tiny_config

TWO_NODE_CONF = "/etc/slurm-2node/slurm.conf"  # written by `scripts/slurm-local.sh up2`
SLURM_ENV = {"SLURM_CONF": TWO_NODE_CONF}  # the login node's view; the nodes read it as /etc/slurm/slurm.conf
TOL = 1e-5
ITERS = 200  # checkpoints every 20: a node dies after the first one, well before the end
TIMEOUT = 600  # the whole snakemake run; generous for a busy machine (it takes ~1.5-2.5 minutes)


def two_node_cluster() -> tuple[list[str], str]:
    """(the two usable node names, "") or ([], why the two-node cluster cannot be used)."""
    if not Path(TWO_NODE_CONF).is_file():
        return [], f"no {TWO_NODE_CONF}"
    env = dict(os.environ, **SLURM_ENV)
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30, env=env)
        nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=30,
                               env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        return [], f"SLURM clients failed: {e}"
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return [], "its slurmctld does not answer `scontrol ping`"
    usable = sorted({line.split()[0] for line in nodes.stdout.splitlines()
                     if line.split()[1].rstrip("*~#") in ("idle", "mixed", "allocated", "completing")})
    return (usable, "") if len(usable) == 2 else ([], f"{len(usable)} of 2 nodes usable: {nodes.stdout.strip()!r}")


NODES, WHY_NOT = two_node_cluster()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(
    not NODES, reason=f"no two-node SLURM here ({WHY_NOT}): run `scripts/slurm-local.sh up2` as root")]


def run_entry(nproc: int, nnodes: int) -> dict:
    """The tiny run, longer, with a global batch of 4 micro-batches split over nproc x nnodes ranks."""
    run = copy.deepcopy(tiny_config()["runs"]["tiny"])
    run["train"].update(max_iters=ITERS, lr_decay_iters=ITERS, eval_interval=60, log_interval=10,
                        checkpoint_interval=20, gradient_accumulation_steps=4)
    run["launch"] = {"nproc_per_node": nproc, "nnodes": nnodes}
    run["resources"] = {"cpus_per_task": 1, "mem_mb": 1000, "runtime": 10}  # per node: the nodes have 1 CPU
    return run


def multinode_config() -> dict:
    config = tiny_config()
    config["runs"] = {"mn": run_entry(1, 2)}
    config["targets"] = {"runs": ["mn"], "samples": [], "evals": []}
    config["samples"] = {}
    return config


def train_workers(workdir: Path) -> dict[int, dict[str, str]]:
    """pid -> environment of the torchrun workers (not their launchers) now training in `workdir`."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if "nanogpt.cli" not in argv or "nanogpt.launch" in argv or os.readlink(proc / "cwd") != str(workdir):
                continue
            env = dict(item.split("=", 1) for item in (proc / "environ").read_text().split("\0") if "=" in item)
        except (OSError, UnicodeDecodeError):  # gone meanwhile
            continue
        if "RANK" in env:  # a worker; its launcher has no RANK
            found[int(proc.name)] = env
    return found


def node_view(workers: dict[int, dict[str, str]], job_id: int) -> set[tuple[str, str, str, str]]:
    """(node, SLURM node id, worker RANK, WORLD_SIZE) of each worker of one SLURM job."""
    return {(e.get("SLURMD_NODENAME", "?"), e.get("SLURM_NODEID", "?"), e["RANK"], e.get("WORLD_SIZE", "?"))
            for e in workers.values() if e.get("SLURM_JOB_ID") == str(job_id)}


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def max_difference(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory) -> dict:
    """snakemake --profile slurm for run "mn", watching its workers; kills the second node's worker once the run
    has a checkpoint (the profile's `retries: 1` then resubmits the job)."""
    workdir = make_pipeline(tmp_path_factory.mktemp("multinode") / "pipeline", multinode_config()).resolve()
    reference_dir = tmp_path_factory.mktemp("reference")
    # prepare asks for 2 threads (= CPUs per task), more than a node has
    proc = start_snakemake(workdir, "--profile", SLURM_PROFILE, "--set-threads=prepare=1", "results/runs/mn/model.pt",
                           timeout=TIMEOUT, env=SLURM_ENV)
    seen: dict[int, dict[str, str]] = {}
    killed: dict[str, str] = {}
    ckpt_dir = workdir / "results/runs/mn/checkpoints"
    snapshot = workdir / "at_kill.pt"
    reference = None
    try:
        while proc.poll() is None:
            now = train_workers(workdir)
            seen.update(now)
            ckpts = sorted(ckpt_dir.glob("ckpt_*.pt"))
            victim = next((pid for pid, e in now.items() if e.get("SLURM_NODEID") == "1"), None)
            if not killed and ckpts and victim is not None:
                os.kill(victim, signal.SIGKILL)  # the second node's worker dies mid-run
                killed = dict(now[victim], PID=str(victim))
                shutil.copy(ckpts[-1], snapshot)  # the training state when it died
                reference = start_reference(workdir, reference_dir)  # while snakemake waits for SLURM
            time.sleep(0.1)
        if reference is not None:
            reference.wait(timeout=400)
    finally:
        for p in (proc, reference):
            if p is not None and p.poll() is None:
                p.kill()
    return {"workdir": workdir, "rc": proc.returncode, "out": (workdir / "snakemake.out").read_text(),
            "workers": seen, "killed": killed, "snapshot": snapshot, "reference": (reference_dir, reference)}


def start_reference(workdir: Path, out_dir: Path) -> subprocess.Popen:
    """The same run on one node: torchrun --standalone with 2 processes, on the data the SLURM job prepared."""
    cmd = [str(BIN / "python"), "-m", "nanogpt.launch", "--standalone", "--nproc_per_node=2", "-m", "nanogpt.cli",
           "train", "--name", "mn", "--spec", json.dumps(run_entry(2, 1)),
           "--data-dir", str(workdir / "results/data/shakespeare_char"), "--out-dir", str(out_dir / "run")]
    with (out_dir / "train.out").open("w") as out:
        return subprocess.Popen(cmd, cwd=out_dir, stdout=out, stderr=subprocess.STDOUT, text=True,
                                env=dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}"))


@pytest.fixture(scope="module")
def reference(cluster_run) -> Path:
    """The reference run's final weights (it ran while the SLURM run waited)."""
    out_dir, proc = cluster_run["reference"]
    assert proc is not None, "no reference run: the SLURM run ended before a node could be killed"
    output = (out_dir / "train.out").read_text()
    assert proc.returncode == 0 and "world size 2" in output, output[-3000:]
    return out_dir / "run" / "model.pt"


def test_each_try_is_one_sbatch_job_whose_srun_runs_on_both_nodes(cluster_run):
    workdir, out = cluster_run["workdir"], cluster_run["out"]
    assert cluster_run["rc"] == 0, out[-5000:]
    remote, local = executed_rules(out)
    assert {"prepare", "train"} <= remote and "download" in local, out[-3000:]
    jobs = train_job_ids(workdir, "mn")
    assert len(jobs) == 2, jobs  # the killed try and the profile's retry
    for job_id in jobs:
        info = scontrol_job(job_id, env=SLURM_ENV)
        assert (info["NumNodes"], info["NumTasks"], info["NumCPUs"]) == ("2", "2", "2"), info
        nodes = subprocess.run(["scontrol", "show", "hostnames", info["NodeList"]], capture_output=True, text=True,
                               check=True).stdout.split()
        assert sorted(nodes) == NODES, info
        # srun started the launcher on both nodes (SLURM node ids 0 and 1), each launcher one worker, and the
        # two joined one world of 2 (c10d hands out the ranks: either node may be rank 0)
        view = node_view(cluster_run["workers"], job_id)
        assert len(view) == 2 and {v[0] for v in view} == set(NODES), (job_id, view)
        assert {v[1] for v in view} == {v[2] for v in view} == {"0", "1"}, (job_id, view)
        assert {v[3] for v in view} == {"2"}, (job_id, view)
    log = (workdir / "logs/train/mn.log").read_text()
    assert "world size 2" in log and log.count("done: val loss") == 1, log[-3000:]
    assert json.loads((workdir / "results/runs/mn/metrics.json").read_text())["world_size"] == 2


def test_killed_node_fails_the_job_with_the_reason_on_the_console(cluster_run):
    workdir, out, killed = cluster_run["workdir"], cluster_run["out"], cluster_run["killed"]
    assert killed, f"the run ended before a node could be killed:\n{out[-3000:]}"
    first, retry = train_job_ids(workdir, "mn")
    assert killed["SLURM_JOB_ID"] == str(first)
    assert scontrol_job(first, env=SLURM_ENV)["JobState"] == "FAILED"
    assert scontrol_job(retry, env=SLURM_ENV)["JobState"] == "COMPLETED"
    assert "Error in rule train" in out and f"SLURM-job '{first}' failed" in out, out[-5000:]
    # the reason, from the failed try's log (show-failed-logs): the dead worker, and srun ending the job
    assert f"worker rank {killed['RANK']} exited with code -9" in out, out[-5000:]
    node = re.escape(killed["SLURMD_NODENAME"])
    assert re.search(rf"srun: error: {node}: task 1: Exited with exit code", out), out[-5000:]


def test_retry_resumes_and_ends_like_one_node_with_two_processes(cluster_run, reference):
    workdir = cluster_run["workdir"]
    log = (workdir / "logs/train/mn.log").read_text()
    resumed = re.search(r"resuming from \S+ckpt_(\d+)\.pt \(iter (\d+)\)", log)
    assert resumed and int(resumed.group(2)) > 0, log[-3000:]
    assert max_difference(workdir / "results/runs/mn/model.pt", reference) <= TOL
    # the comparison can fail: the weights at the kill are far from the final ones
    assert max_difference(cluster_run["snapshot"], reference) > 100 * TOL
