"""The pipeline through the SLURM profile on a real SLURM (scripts/slurm-local.sh up): one job per rule, the
training job's CPUs and torchrun world size, the same results as a local run, and failing jobs that fail loudly.

Skipped where `sbatch` is missing or `scontrol ping` does not answer. SLURM jobs on a 2-core node run one after
another, so the whole file takes ~2 minutes (most of it the plugin's status polling, which the local reference
run overlaps).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import BIN, make_pipeline, run_snakemake, tiny_config, write_config
from nanogpt.checkpoint import load
from nanogpt.pipeline.entries import Pipeline
from nanogpt.pipeline.jobs import Jobs

SLURM_PROFILE = "workflow/profiles/slurm"


def _slurm_up() -> bool:
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return False
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return ping.returncode == 0 and "UP" in ping.stdout


def requires_slurm(test):
    """Marks a test that submits to a real SLURM; skipped where there is none."""
    skip = pytest.mark.skipif(not _slurm_up(), reason="no SLURM here (sbatch missing or `scontrol ping` fails): "
                                                     "run `scripts/slurm-local.sh up` as root")
    return pytest.mark.slurm(skip(test))


def launch_config(nproc: int, nnodes: int, gpus: int) -> dict:
    """A run "big" (beside tiny_config's "tiny") with the given launch and per-node GPUs."""
    config = tiny_config()
    big = config["runs"]["big"] = dict(config["runs"]["tiny"])
    big["train"] = dict(big["train"], gradient_accumulation_steps=nproc * nnodes, device="cuda" if gpus else "cpu")
    big["launch"] = {"nproc_per_node": nproc, "nnodes": nnodes}
    big["resources"] = {"cpus_per_task": 8, "mem_mb": 16000, "runtime": 60, "gpus": gpus}
    return config


def test_single_node_gpu_run_is_one_task_with_all_gpus():
    p = Pipeline(launch_config(nproc=4, nnodes=1, gpus=4))
    res = Jobs(p).run_resources("big")
    assert res == {"cpus_per_task": 8, "mem_mb": 16000, "runtime": 60, "gpus": 4, "gres": None, "nodes": 1,
                   "tasks": 1, "mpi": None}  # None: the key is dropped (an `mpi` key would skip the srun step)
    assert Jobs(p).torchrun_launcher("big") == "python -m nanogpt.launch --run-device=cuda --standalone --nproc_per_node=4"


def test_multi_node_run_is_srun_torchrun_one_task_per_node():
    p = Pipeline(launch_config(nproc=4, nnodes=2, gpus=4))
    res = Jobs(p).run_resources("big")
    assert (res["nodes"], res["tasks"], res["mpi"], res["gpus"], res["gres"]) == (2, 2, "srun", None, "gpu:4")
    launcher = Jobs(p).torchrun_launcher("big")
    argv = shlex.split(launcher)
    assert argv[:8] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--cpus-per-task=8",
                        "--gres=gpu:4", "--kill-on-bad-exit=1", "bash"]
    assert argv[8] == "-c" and argv[10] == "torchrun"  # "$@" gets the rule's `-m nanogpt.cli train ...`
    script = argv[9]
    assert script.startswith("exec python -m nanogpt.launch --run-device=cuda --nnodes=2 --nproc_per_node=4 ")
    assert '--rdzv_backend=c10d' in script and '--rdzv_id="$SLURM_JOB_ID"' in script
    assert '--rdzv_endpoint="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1):29500"' in script
    # the srun step expands the variables on each node, and passes the module and its arguments through;
    # the first node of the allocation (SLURM_NODEID 0) hosts the rendezvous, the others join it
    for node_id, is_host in (("0", "1"), ("1", "0")):
        out = subprocess.run(["bash", "-c", script.replace("exec python -m nanogpt.launch", "echo"), "torchrun",
                              "-m", "x y"], capture_output=True, text=True,
                             env={"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "n1",
                                  "SLURM_NODEID": node_id}).stdout
        assert "--rdzv_id=42" in out and out.rstrip().endswith("-m x y")
        assert f"--rdzv_conf=is_host={is_host} " in out, out
    assert Jobs(Pipeline(launch_config(nproc=2, nnodes=2, gpus=0))).run_resources("big")["gres"] is None


def ddp_config() -> dict:
    """tiny_config with torchrun starting 2 CPU processes in a 2-CPU job."""
    config = tiny_config()
    run = config["runs"]["tiny"]
    run["launch"] = {"nproc_per_node": 2}
    run["train"]["gradient_accumulation_steps"] = 2  # a multiple of the world size
    run["resources"] = {"cpus_per_task": 2, "mem_mb": 1000, "runtime": 10}
    return config


def slurm_jobs(workdir: Path) -> dict[str, list[int]]:
    """rule -> SLURM job ids, from the plugin's job logs .snakemake/slurm_logs/rule_<rule>/[<wildcards>/]<id>.log."""
    jobs: dict[str, list[int]] = {}
    for log in (workdir / ".snakemake" / "slurm_logs").rglob("*.log"):
        rule_dir = next(p for p in log.relative_to(workdir / ".snakemake" / "slurm_logs").parts if p.startswith("rule_"))
        jobs.setdefault(rule_dir.removeprefix("rule_"), []).append(int(log.stem))
    return jobs


def scontrol_job(job_id: int, env: dict | None = None) -> dict[str, str]:
    """`scontrol show job` as a dict (finished jobs stay visible for MinJobAge=300 s); env: e.g. SLURM_CONF."""
    out = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})})
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


def executed_rules(snakemake_output: str) -> tuple[set[str], set[str]]:
    """(rules submitted as jobs, local rules), from snakemake's `rule X:` / `localrule X:` headers."""
    remote = set(re.findall(r"^rule (\w+):", snakemake_output, re.M))
    local = set(re.findall(r"^localrule (\w+):", snakemake_output, re.M))
    return remote, local


def start_snakemake(workdir: Path, *args: str, timeout: int = 600, env: dict | None = None) -> subprocess.Popen:
    """conftest.run_snakemake in the background; its output goes to workdir/snakemake.out (a pipe could fill up)."""
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
    cmd = ["timeout", "-k", "10", str(timeout), str(BIN / "snakemake"), "--cores", "2", *args]
    with (workdir / "snakemake.out").open("w") as out:
        return subprocess.Popen(cmd, cwd=workdir, env=full_env, stdout=out, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, shared_data):
    """The same pipeline on the local profile, started first: it runs while the SLURM run waits on status polls."""
    local = make_pipeline(tmp_path_factory.mktemp("slurm") / "local", ddp_config())
    proc = start_snakemake(local, "--profile", "workflow/profiles/local", "results/runs/tiny/model.pt",
                           env={"NANOGPT_MIRROR": str(shared_data)})
    yield local, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def slurm_pipeline(tmp_path_factory, shared_data, local_run) -> tuple[Path, subprocess.CompletedProcess]:
    workdir = make_pipeline(tmp_path_factory.mktemp("slurm") / "pipeline", ddp_config())
    # download (local) -> prepare -> train -> sample: the core of the pipeline, 3 SLURM jobs
    proc = run_snakemake(workdir, "--profile", SLURM_PROFILE, "results/samples/tiny.txt", timeout=600,
                         env={"NANOGPT_MIRROR": str(shared_data)})
    return workdir, proc


@requires_slurm
def test_every_rule_is_its_own_slurm_job(slurm_pipeline):
    workdir, proc = slurm_pipeline
    remote, local = executed_rules(proc.stdout + proc.stderr)
    assert {"prepare", "train", "sample"} <= remote, proc.stderr[-3000:]
    assert "download" in local  # a localrule: runs where snakemake runs (the login node), never on SLURM

    jobs = slurm_jobs(workdir)
    assert set(jobs) == remote, f"SLURM job logs for {sorted(jobs)}, rules submitted {sorted(remote)}"
    all_ids = [i for ids in jobs.values() for i in ids]
    assert len(all_ids) == len(set(all_ids)) == len(remote)  # one job per rule here (one wildcard each)
    for rule, (job_id,) in jobs.items():
        info = scontrol_job(job_id)
        assert info["JobState"] == "COMPLETED", (rule, info)
        assert info["NumNodes"] == "1", (rule, info)


@requires_slurm
def test_training_job_cpus_and_torchrun_world_size(slurm_pipeline):
    workdir, _ = slurm_pipeline
    (train_id,) = slurm_jobs(workdir)["train"]
    info = scontrol_job(train_id)
    assert info["NumCPUs"] == "2" and info["NumTasks"] == "1", info  # one task; torchrun starts the workers
    assert info["MinMemoryNode"] in ("1000M", "1000"), info
    assert info["TimeLimit"] == "00:10:00", info
    # the jobstep ran the rule in one srun step with the job's CPUs
    slurm_log = next((workdir / ".snakemake" / "slurm_logs" / "rule_train").rglob(f"{train_id}.log")).read_text()
    assert "--standalone --nproc_per_node=2" in slurm_log
    train_log = (workdir / "logs" / "train" / "tiny.log").read_text()
    assert "world size 2" in train_log, train_log[-2000:]


@requires_slurm
def test_slurm_results_equal_a_local_run(slurm_pipeline, local_run):
    workdir, _ = slurm_pipeline
    local, proc = local_run
    assert proc.wait(timeout=600) == 0, (local / "snakemake.out").read_text()[-4000:]
    on_slurm = load(workdir / "results/runs/tiny/model.pt")["model"]
    here = load(local / "results/runs/tiny/model.pt")["model"]
    assert on_slurm.keys() == here.keys()
    for key in here:
        assert torch.equal(on_slurm[key], here[key]), key
    m_slurm = json.loads((workdir / "results/runs/tiny/metrics.json").read_text())
    m_local = json.loads((local / "results/runs/tiny/metrics.json").read_text())
    assert m_slurm["world_size"] == m_local["world_size"] == 2
    assert m_slurm["val_loss"] == m_local["val_loss"]
    assert (workdir / "results/samples/tiny.txt").stat().st_size > 0


@requires_slurm
def test_sbatch_lines_for_gpu_and_multi_node_runs(slurm_pipeline, shared_data):
    """The plugin's real sbatch commands (--verbose); this cluster has one node of 2 CPUs (and 2 fake GPUs), so
    they are refused (a real 2-node job: tests/test_multinode.py; a real GPU job: tests/test_slurm_gpus.py)."""
    workdir, _ = slurm_pipeline
    config = ddp_config()
    for name, (nproc, nnodes, gpus) in {"gpu4": (4, 1, 4), "mn2": (2, 2, 0), "mngpu": (4, 2, 4)}.items():
        config["runs"][name] = launch_config(nproc, nnodes, gpus)["runs"]["big"]
    write_config(workdir, config)
    targets = [f"results/runs/{name}/model.pt" for name in ("gpu4", "mn2", "mngpu")]
    proc = run_snakemake(workdir, "--profile", SLURM_PROFILE, "--verbose", "--keep-going", "--retries", "0",
                         *targets, timeout=300, check=False, env={"NANOGPT_MIRROR": str(shared_data)})
    out = proc.stdout + proc.stderr
    assert proc.returncode not in (0, 124, 137), out[-3000:]
    calls = {m.group(1): m.group(0) for m in re.finditer(r"sbatch call: sbatch .*?--comment rule_train_wildcards_"
                                                         r"(\w+) .*?--wrap", out)}
    assert set(calls) == {"gpu4", "mn2", "mngpu"}, out[-3000:]
    flags = {name: set(re.sub(r"--wrap$", "", call).split()) for name, call in calls.items()}
    # one node, 4 GPUs: one task (torchrun starts the 4 workers), never --ntasks-per-gpu
    assert {"--nodes=1", "--cpus-per-task=8", "--gpus=4", "-t", "60", "--mem", "16000"} <= flags["gpu4"]
    assert not any(f.startswith(("--ntasks", "--gres")) for f in flags["gpu4"]), calls["gpu4"]
    # two nodes: one task per node, GPUs per node through --gres
    assert {"--nodes=2", "--ntasks=2", "--cpus-per-task=8"} <= flags["mn2"]
    assert not any(f.startswith(("--gpus", "--gres", "--ntasks-per-gpu")) for f in flags["mn2"]), calls["mn2"]
    assert {"--nodes=2", "--ntasks=2", "--cpus-per-task=8", "--gres=gpu:4"} <= flags["mngpu"]
    assert not any(f.startswith(("--gpus", "--ntasks-per-gpu")) for f in flags["mngpu"]), calls["mngpu"]
    assert "srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --cpus-per-task=8 --gres=gpu:4" in out
    # and SLURM's refusal reaches the user, for each of the three (the reason depends on the machine's CPUs)
    refusals = re.findall(r"SLURM sbatch failed\. The error message was 'sbatch: error: Batch job submission failed: "
                          r"[^']+'", out)
    assert len(refusals) >= 3, out[-3000:]


@requires_slurm
def test_failing_slurm_job_fails_snakemake_with_the_reason(slurm_pipeline, shared_data):
    """A setting that only fails at run time (a missing init_from checkpoint) inside a SLURM job."""
    workdir, _ = slurm_pipeline
    config = ddp_config()
    broken = config["runs"]["broken"] = dict(config["runs"]["tiny"], init_from="no/such/model.pt")
    broken["launch"] = {"nproc_per_node": 1}
    broken["train"] = dict(broken["train"], gradient_accumulation_steps=1)
    write_config(workdir, config)
    proc = run_snakemake(workdir, "--profile", SLURM_PROFILE, "--retries", "0", "results/runs/broken/model.pt",
                         timeout=400, check=False, env={"NANOGPT_MIRROR": str(shared_data)})
    out = proc.stdout + proc.stderr
    assert proc.returncode not in (0, 124, 137), out[-3000:]
    assert "Error in rule train" in out and "SLURM" in out, out[-3000:]
    reason = "checkpoint 'no/such/model.pt' does not exist"
    assert reason in (workdir / "logs/train/broken.log").read_text()
    assert reason in out  # show-failed-logs prints the rule's log
    assert not (workdir / "results/runs/broken/model.pt").exists()
    (job_id,) = train_job_ids(workdir, "broken")
    assert scontrol_job(job_id)["JobState"] == "FAILED"


def train_job_ids(workdir: Path, run: str) -> list[int]:
    """The SLURM job ids of one run's train jobs, oldest first (from the plugin's job logs)."""
    return sorted(int(p.stem) for p in (workdir / ".snakemake/slurm_logs/rule_train" / run).glob("*.log"))
