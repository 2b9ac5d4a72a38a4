"""Ctrl-C is a stop like SIGTERM: a checkpoint, one line on the console, the attempt's full log kept."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from conftest import BIN, make_pipeline, run_snakemake, tiny_config, write_config


def long_config() -> dict:
    config = tiny_config()
    config["runs"]["tiny"]["train"].update(max_iters=100000, lr_decay_iters=100000, checkpoint_interval=100000,
                                           eval_interval=100000)
    config["targets"]["samples"] = []
    return config


def wait_for_rows(history: Path, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if history.is_file() and len(history.read_text().splitlines()) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"{history}: fewer than {n} rows after {timeout}s")


def test_ctrl_c_on_nanogpt_train_saves_a_checkpoint(tmp_path):
    spec = long_config()["runs"]["tiny"]
    data = tmp_path / "data"
    subprocess.run([str(BIN / "nanogpt"), "prepare", "--text", str(Path(__file__).parents[1] / "nanogpt/assets/"
                    "tinyshakespeare/input.txt"), "--out-dir", str(data)], check=True, capture_output=True)
    out = tmp_path / "run"
    proc = subprocess.Popen([str(BIN / "nanogpt"), "train", "--spec", json.dumps(spec), "--data-dir", str(data),
                             "--out-dir", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    wait_for_rows(out / "history.jsonl", 5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    line = stdout.strip().splitlines()[-1]
    assert line.startswith("SIGINT: checkpoint saved at iter ") and "Traceback" not in stderr
    stopped = int(line.split("iter ")[1].split(";")[0])
    assert (out / "checkpoints" / f"ckpt_{stopped:08d}.pt").is_file()


def test_ctrl_c_on_snakemake_checkpoints_and_the_rerun_keeps_the_first_log(tmp_path):
    """A terminal's Ctrl-C goes to snakemake's whole process group: the trainer checkpoints, the console gets no
    dump of iteration lines, and the rerun resumes with the interrupted attempt's log kept as train.log.1."""
    work = make_pipeline(tmp_path / "pipeline", long_config())
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([str(BIN / "snakemake"), "--cores", "2"], cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    run = work / "results/runs/tiny"
    wait_for_rows(run / "history.jsonl", 5)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=180)
    console = stdout + stderr
    assert proc.returncode != 0
    assert sum(line.lstrip().startswith("iter ") for line in console.splitlines()) < 5, console[-3000:]
    full = (run / "train.log").read_text()
    found = re.search(r"(SIGINT|SIGTERM): checkpoint saved at iter (\d+)", full)
    assert found, full[-2000:]
    stopped = int(found.group(2))
    assert (run / "checkpoints" / f"ckpt_{stopped:08d}.pt").is_file()
    # the rerun, lengthened only a little so that it ends: resumes, and keeps the first attempt's full log
    config = long_config()
    config["runs"]["tiny"]["train"]["max_iters"] = stopped + 3
    write_config(work, config)
    run_snakemake(work)
    assert (run / "train.log.1").read_text() == full
    assert f"resuming from results/runs/tiny/checkpoints/ckpt_{stopped:08d}.pt" in (run / "train.log").read_text()
