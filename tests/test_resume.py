"""Kill anywhere, resume exactly: the train rule killed (SIGKILL) or stopped (SIGTERM) under Snakemake + torchrun,
then rerun, ends with weights bit-identical (torch.equal, CPU fp32) to an uninterrupted run.

dropout is on, so the RNG state in the checkpoints matters, not only model, optimizer and iteration.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import BIN, make_pipeline, run_snakemake, tiny_config
from nanogpt import checkpoint as ckpt_io

MAX_ITERS = 80
RUN_DIR = Path("results/runs/tiny")


def resume_config() -> dict:
    cfg = tiny_config()
    cfg["targets"] = {"runs": ["tiny"], "samples": [], "evals": []}
    run = cfg["runs"]["tiny"]
    run["model"]["dropout"] = 0.1
    run["train"].update(max_iters=MAX_ITERS, lr_decay_iters=MAX_ITERS, eval_interval=20, checkpoint_interval=4,
                        keep_checkpoints=3)
    return cfg


def start_snakemake(work: Path) -> subprocess.Popen:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")  # data: the bundled files
    cmd = ["timeout", "-k", "10", "240", str(BIN / "snakemake"), "--cores", "2", "--rerun-incomplete"]
    return subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def train_processes(work: Path) -> tuple[list[int], list[int]]:
    """(torchrun pids, worker pids) of the train rule running in `work`, found through /proc (cwd + cmdline)."""
    agents, workers = [], []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if Path(os.readlink(entry / "cwd")) != work:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone, or not ours
            continue
        text = b" ".join(argv).decode(errors="replace")
        if "nanogpt.cli train" not in text:
            continue
        (agents if "torchrun" in text else workers).append(int(entry.name))
    return agents, workers


def last_logged_iter(work: Path) -> int:
    try:
        lines = (work / RUN_DIR / "history.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["iter"] if lines else 0
    except (OSError, json.JSONDecodeError, IndexError, KeyError):
        return 0


def interrupt_at(work: Path, target: int, sig: signal.Signals, agent_too: bool = False) -> tuple[int, str]:
    """Run snakemake until the training worker has logged iteration >= target, then send it `sig`."""
    proc = start_snakemake(work)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            agents, workers = train_processes(work)
            if workers and last_logged_iter(work) >= target:
                for pid in workers + (agents if agent_too else []):
                    os.kill(pid, sig)
                break
            time.sleep(0.003)
        out = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out


def final_weights(work: Path) -> dict[str, torch.Tensor]:
    return torch.load(work / RUN_DIR / "model.pt", weights_only=True)["model"]


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], why: str) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{why}: tensors differ: {different[:5]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The uninterrupted run, through the same Snakemake + torchrun path."""
    work = make_pipeline(tmp_path_factory.mktemp("uninterrupted"), resume_config())
    run_snakemake(work, timeout=300)
    history = [json.loads(line) for line in (work / RUN_DIR / "history.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in history] == list(range(1, MAX_ITERS + 1))
    return final_weights(work)


def test_sigkill_anywhere_then_rerun_is_bit_identical(reference, tmp_path):
    """SIGKILL the torchrun worker at random iterations (3 times), rerun Snakemake each time: same weights.

    Before the last rerun the newest checkpoint is truncated (a torn file): it is skipped with a warning and
    the previous one is used.
    """
    seed = int.from_bytes(os.urandom(4), "little")
    targets = sorted(random.Random(seed).sample(range(6, MAX_ITERS - 20), 3))
    work = make_pipeline(tmp_path / "killed", resume_config())
    run_snakemake(work, "results/data/shakespeare_char/meta.json", timeout=120)
    reached = []
    for target in targets:
        target = max(target, (reached[-1] if reached else 0) + 1)
        rc, out = interrupt_at(work, target, signal.SIGKILL)
        assert rc != 0, f"seed {seed}: run was not interrupted at {target}:\n{out[-2000:]}"
        reached.append(last_logged_iter(work))
        assert not (work / RUN_DIR / "model.pt").exists()
    log = (work / "logs/train/tiny.log").read_text()
    assert "resuming from" in log, f"seed {seed}, killed at {reached}:\n{log[-2000:]}"

    ckpts = ckpt_io.list_checkpoints(work / RUN_DIR / "checkpoints")
    assert len(ckpts) >= 2, ckpts
    (_, newest), (previous_iter, _) = ckpts[-1], ckpts[-2]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])

    run_snakemake(work, "--rerun-incomplete", timeout=240)
    log = (work / "logs/train/tiny.log").read_text()
    assert f"setting aside {newest.name} (unreadable)" in log, log[-2000:]
    assert f"ckpt_{previous_iter:08d}.pt (iter {previous_iter})" in log, log[-2000:]
    assert_bit_identical(final_weights(work), reference, f"seed {seed}, killed at {reached}")
    history = [json.loads(line) for line in (work / RUN_DIR / "history.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in history] == list(range(1, MAX_ITERS + 1)), "history rows lost or repeated"


def test_sigterm_saves_a_checkpoint_and_rerun_resumes_from_it(reference, tmp_path):
    """SIGTERM (SLURM's time limit) to torchrun and its worker: checkpoint, non-zero exit; the rerun resumes there."""
    work = make_pipeline(tmp_path / "terminated", resume_config())
    rc, out = interrupt_at(work, 30, signal.SIGTERM, agent_too=True)
    assert rc != 0, out[-2000:]
    log = (work / "logs/train/tiny.log").read_text()
    m = re.search(r"SIGTERM: checkpoint saved at iter (\d+)", log)
    assert m, log[-3000:]
    stopped = int(m.group(1))
    assert stopped >= 30 and (work / RUN_DIR / "checkpoints" / f"ckpt_{stopped:08d}.pt").is_file()
    assert not (work / RUN_DIR / "model.pt").exists()

    run_snakemake(work, "--rerun-incomplete", timeout=240)
    log = (work / "logs/train/tiny.log").read_text()
    assert f"ckpt_{stopped:08d}.pt (iter {stopped})" in log, log[-2000:]
    assert_bit_identical(final_weights(work), reference, f"SIGTERM at {stopped}")


def test_truncated_newest_checkpoint_is_set_aside(tmp_path):
    """choose_resume: a torn newest file is refused (to be set aside), and the previous checkpoint is chosen."""
    d = tmp_path / "checkpoints"
    for it in (4, 8):
        ckpt_io.save({"model": {"w": torch.full((3,), float(it))}, "model_args": {}, "iter_num": it,
                      "fingerprint": "abc"}, ckpt_io.checkpoint_path(d, it))
    torn = ckpt_io.checkpoint_path(d, 8)
    torn.write_bytes(torn.read_bytes()[:100])
    chosen, refused = ckpt_io.choose_resume(d, ["abc"], max_iters=100)
    assert chosen == ckpt_io.checkpoint_path(d, 4)
    assert refused == [(torn, "unreadable", None)]
