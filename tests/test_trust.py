"""Trustworthy results: a checkpoint, a prepared bin or a name is used only when it provably belongs to this config.

Checkpoints of another trajectory (other data, other settings, beyond max_iters, unreadable) are set aside and
never resumed or counted; prepared data is checked where it is read; names never reach a shell; one trainer per
run folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import BIN, make_pipeline, run_snakemake, tiny_config, write_config
from nanogpt import checkpoint as ckpt_io
from nanogpt import fileio
from nanogpt.config import resolve_run
from nanogpt.data.prepare import prepare_text
from nanogpt.errors import BusyError, DataError, DiskFullError
from nanogpt.runlock import run_folder_lock
from nanogpt.train import train

RUN = {
    "dataset": "chars",
    "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "dropout": 0.1, "bias": False},
    "train": {"batch_size": 4, "max_iters": 30, "lr_decay_iters": 30, "warmup_iters": 2, "learning_rate": 1e-3,
              "min_lr": 1e-4, "eval_interval": 10, "eval_iters": 2, "log_interval": 1, "checkpoint_interval": 5,
              "keep_checkpoints": 10, "device": "cpu", "dtype": "float32"},
}


@pytest.fixture(scope="module")
def chars(tmp_path_factory) -> Path:
    """A small prepared char dataset (the first 60k characters of the bundled tiny Shakespeare)."""
    from nanogpt.data.prepare import fetch

    root = tmp_path_factory.mktemp("chars")
    text = root / "input.txt"
    fetch("https://example.invalid/input.txt",
          "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed", root / "full.txt")
    text.write_text((root / "full.txt").read_text()[:60_000])
    prepare_text(text, root / "data")
    return root / "data"


def run_config(**train) -> object:
    entry = json.loads(json.dumps(RUN))
    entry["train"].update(train)
    return resolve_run(entry, "trust")


def train_until(run, data: Path, out: Path, stop_at: int | None = None) -> list[str]:
    """Train in-process; with stop_at, SIGTERM ourselves when iteration stop_at is logged (as SLURM would)."""
    lines: list[str] = []

    def log(msg: str) -> None:
        lines.append(msg)
        if stop_at is not None and msg.startswith(f"iter {stop_at}:"):
            os.kill(os.getpid(), signal.SIGTERM)

    if stop_at is None:
        train(run, data, out, log=log)
    else:
        with pytest.raises(SystemExit):
            train(run, data, out, log=log)
    return lines


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.fixture(scope="module")
def reference_20(chars, tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("ref20")
    train(run_config(max_iters=20), chars, out, log=lambda m: None)
    return weights(out / "model.pt")


# ---- checkpoints -----------------------------------------------------------------------------------------

def test_shorter_max_iters_never_uses_a_later_checkpoint(chars, tmp_path, reference_20):
    """A 30-iteration run stopped by SIGTERM at 23, rerun as a 20-iteration run: model.pt has exactly 20
    iterations, equal to a fresh 20-iteration run; the checkpoints beyond 20 are set aside, not deleted."""
    out = tmp_path / "run"
    train_until(run_config(max_iters=30), chars, out, stop_at=23)
    assert (out / "checkpoints" / "ckpt_00000023.pt").is_file()
    log = train_until(run_config(max_iters=20), chars, out)
    assert "resuming from" in "\n".join(log) and "(iter 20)" in "\n".join(log), log
    state = torch.load(out / "model.pt", weights_only=True)
    assert state["iter_num"] == 20
    assert_same(state["model"], reference_20)
    # held in its own trajectory's checkpoints (the same settings: lengthened again, it would come back)
    assert [p.name for p in (out / "checkpoints" / "held").glob("ckpt_*.pt")] == ["ckpt_00000023.pt"]


def test_lengthened_again_the_held_checkpoint_is_resumed(chars, tmp_path):
    """30 stopped at 23, rerun as 20 (23 held in checkpoints/held/), then as 30 again: resumed from 23, and the
    weights equal an uninterrupted 30-iteration run."""
    out, straight = tmp_path / "run", tmp_path / "straight"
    train_until(run_config(max_iters=30), chars, out, stop_at=23)
    train_until(run_config(max_iters=20), chars, out)
    log = "\n".join(train_until(run_config(max_iters=30), chars, out))
    assert "resuming held checkpoint ckpt_00000023.pt" in log and "(iter 23)" in log, log
    assert not (out / "checkpoints" / "held").exists()
    train(run_config(max_iters=30), chars, straight, log=lambda m: None)
    assert_same(weights(out / "model.pt"), weights(straight / "model.pt"))


def test_only_a_sigterm_checkpoint_beyond_max_iters_starts_fresh(chars, tmp_path, reference_20):
    out = tmp_path / "run"
    train_until(run_config(max_iters=30, checkpoint_interval=100), chars, out, stop_at=23)
    assert [p.name for p in (out / "checkpoints").glob("ckpt_*.pt")] == ["ckpt_00000023.pt"]
    log = "\n".join(train_until(run_config(max_iters=20), chars, out))
    assert "setting aside ckpt_00000023.pt (beyond max_iters=20)" in log
    assert "resuming" not in log
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iters"] == 20 and metrics["val_loss"] is not None
    assert_same(weights(out / "model.pt"), reference_20)


def test_other_settings_are_set_aside_and_the_run_starts_fresh(chars, tmp_path, reference_20):
    out = tmp_path / "run"
    train_until(run_config(max_iters=20, learning_rate=3e-3), chars, out, stop_at=12)
    log = "\n".join(train_until(run_config(max_iters=20), chars, out))
    assert "made with other settings, data or initial weights" in log and "resuming" not in log
    assert_same(weights(out / "model.pt"), reference_20)


def test_unreadable_checkpoints_are_never_counted(chars, tmp_path):
    """Planted unreadable ckpt files with higher numbers are set aside, pruning keeps the valid ones, and a
    second interruption still resumes from a valid checkpoint; the end result equals an uninterrupted run."""
    reference = tmp_path / "reference"
    train(run_config(keep_checkpoints=2), chars, reference, log=lambda m: None)

    out = tmp_path / "run"
    run = run_config(keep_checkpoints=2)
    train_until(run, chars, out, stop_at=12)
    ckpts = out / "checkpoints"
    valid = ckpt_io.checkpoint_path(ckpts, 12).read_bytes()
    ckpt_io.checkpoint_path(ckpts, 90).write_bytes(b"")
    ckpt_io.checkpoint_path(ckpts, 95).write_bytes(np.random.default_rng(0).bytes(5000))
    ckpt_io.checkpoint_path(ckpts, 99).write_bytes(valid[: len(valid) // 2])

    log = "\n".join(train_until(run, chars, out, stop_at=17))
    assert "resuming from" in log and "(iter 12)" in log, log
    for it in (90, 95, 99):
        assert f"setting aside ckpt_{it:08d}.pt (unreadable)" in log
    assert [it for it, _ in ckpt_io.list_checkpoints(ckpts)] == [15, 17]

    log = "\n".join(train_until(run, chars, out))
    assert "(iter 17)" in log, log
    assert_same(weights(out / "model.pt"), weights(reference / "model.pt"))


def test_prune_keeps_the_newest_that_load(tmp_path):
    d = tmp_path / "checkpoints"
    for it in (1, 2, 3):
        ckpt_io.save({"model": {}, "model_args": {}, "iter_num": it}, ckpt_io.checkpoint_path(d, it))
    for it in (7, 8):
        ckpt_io.checkpoint_path(d, it).write_bytes(b"not a checkpoint")
    moved = ckpt_io.prune(d, keep=2)
    assert sorted(p.name for p in moved) == ["ckpt_00000007.pt", "ckpt_00000008.pt"]
    assert [it for it, _ in ckpt_io.list_checkpoints(d)] == [2, 3]


# ---- prepared data ---------------------------------------------------------------------------------------

def copy_data(src: Path, dest: Path) -> Path:
    dest.mkdir()
    for name in ("train.bin", "val.bin", "meta.json"):
        (dest / name).write_bytes((src / name).read_bytes())
    return dest


def nanogpt_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "nanogpt"), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert lines and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


@pytest.mark.parametrize("damage", ["truncate", "random_ids", "meta_dtype", "meta_key"])
def test_damaged_prepared_data_is_a_one_line_error(chars, tmp_path, damage):
    data = copy_data(chars, tmp_path / "data")
    meta = json.loads((data / "meta.json").read_text())
    if damage == "truncate":
        with open(data / "train.bin", "r+b") as f:
            f.truncate(10_000)
        needles = ["train.bin", "expected", "rerun prepare"]
    elif damage == "random_ids":
        (data / "train.bin").write_bytes(np.random.default_rng(1).bytes((data / "train.bin").stat().st_size))
        needles = ["train.bin", "token id", f"vocab_size {meta['vocab_size']}"]
    elif damage == "meta_dtype":
        (data / "meta.json").write_text(json.dumps(meta | {"dtype": "uint32"}))
        needles = ["train.bin", "bytes", "uint32"]
    else:
        (data / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "vocab_size"}))
        needles = ["meta.json", "vocab_size"]
    (tmp_path / "config.yaml").write_text(json.dumps({"runs": {"trust": RUN}}))
    proc = nanogpt_cli("train", "--config", "config.yaml", "--name", "trust", "--data-dir", str(data),
                       "--out-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert_one_line_error(proc, *needles)
    assert not (tmp_path / "run" / "model.pt").exists()


def test_eval_checks_the_data_too(chars, tmp_path):
    data = copy_data(chars, tmp_path / "data")
    out = tmp_path / "run"
    train(run_config(max_iters=2), chars, out, log=lambda m: None)
    with open(data / "val.bin", "r+b") as f:
        f.truncate(100)
    proc = nanogpt_cli("eval", "--checkpoint", str(out / "model.pt"), "--data-dir", str(data), "--eval-iters", "2",
                       cwd=tmp_path)
    assert_one_line_error(proc, "val.bin", "rerun prepare")


# ---- the pipeline ----------------------------------------------------------------------------------------

def text_mirror(root: Path, files: dict[str, str]) -> Path:
    mirror = root / "mirror"
    mirror.mkdir(parents=True)
    for name, text in files.items():
        (mirror / name).write_text(text)
    return mirror


def dataset_entry(name: str, mirror: Path, val_fraction: float = 0.1) -> dict:
    return {"source": {"url": f"https://example.invalid/{name}", "sha256": fileio.sha256_file(mirror / name)},
            "tokenizer": "char", "val_fraction": val_fraction}


def pipeline_config(dataset: dict) -> dict:
    cfg = tiny_config()
    cfg["datasets"] = {"shakespeare_char": dataset}
    cfg["targets"] = {"runs": ["tiny"], "samples": [], "evals": []}
    cfg["summary"] = {"enabled": False}
    return cfg


@pytest.fixture(scope="module")
def small_texts(tmp_path_factory) -> tuple[Path, str]:
    """A mirror with two texts: `a.txt` without some letters (a smaller vocabulary) and `b.txt` with them."""
    root = tmp_path_factory.mktemp("texts")
    from nanogpt.data.prepare import fetch

    fetch("https://example.invalid/input.txt",
          "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed", root / "full.txt")
    text = (root / "full.txt").read_text()[:120_000]
    mirror = text_mirror(root, {"a.txt": text.translate(str.maketrans("", "", "XQZ")), "b.txt": text})
    return mirror, text


def test_changed_split_retrains_from_scratch_bit_for_bit(small_texts, tmp_path):
    """val_fraction 0.1 -> 0.2 after a finished run: prepare and train rerun, the old checkpoints (other data)
    are set aside, and the weights equal a fresh run of the new config bit for bit."""
    mirror, _ = small_texts
    env = {"NANOGPT_MIRROR": str(mirror)}
    work = make_pipeline(tmp_path / "changed", pipeline_config(dataset_entry("b.txt", mirror, 0.1)))
    run_snakemake(work, env=env)
    write_config(work, pipeline_config(dataset_entry("b.txt", mirror, 0.2)))
    out = run_snakemake(work, env=env)
    assert "rule prepare" in out.stdout + out.stderr
    log = (work / "logs/train/tiny.log").read_text()
    assert "setting aside the run folder's record (made with other settings, data or initial weights)" in log, log
    assert (work / "results/runs/tiny/set_aside").is_dir()  # the other split's whole record, kept apart
    assert "resuming" not in log

    fresh = make_pipeline(tmp_path / "fresh", pipeline_config(dataset_entry("b.txt", mirror, 0.2)))
    run_snakemake(fresh, env=env)
    run_dir = Path("results/runs/tiny")
    assert_same(weights(work / run_dir / "model.pt"), weights(fresh / run_dir / "model.pt"))


def test_changed_vocabulary_trains_fresh_without_manual_steps(small_texts, tmp_path):
    mirror, text = small_texts
    env = {"NANOGPT_MIRROR": str(mirror)}
    work = make_pipeline(tmp_path / "vocab", pipeline_config(dataset_entry("a.txt", mirror)))
    run_snakemake(work, env=env)
    old_vocab = torch.load(work / "results/runs/tiny/model.pt", weights_only=True)["model_args"]["vocab_size"]
    write_config(work, pipeline_config(dataset_entry("b.txt", mirror)))
    run_snakemake(work, env=env)
    new_vocab = torch.load(work / "results/runs/tiny/model.pt", weights_only=True)["model_args"]["vocab_size"]
    assert old_vocab == len(set((mirror / "a.txt").read_text())) < new_vocab == len(set(text))


@pytest.mark.parametrize("name", ["$(touch PWNED)", "..", "a b", "x;touch PWNED", "-rf", ".hidden", "a/b"])
def test_entry_names_are_checked_before_any_job(pipeline_dir, name):
    for section in ("runs", "datasets"):
        cfg = tiny_config()
        if section == "runs":
            cfg["runs"] = {name: cfg["runs"]["tiny"]}
            cfg["targets"]["runs"] = [name]
            cfg["samples"]["tiny"]["model"] = name
        else:
            cfg["datasets"] = {name: cfg["datasets"]["shakespeare_char"]}
            cfg["runs"]["tiny"]["dataset"] = name
        write_config(pipeline_dir, cfg)
        proc = run_snakemake(pipeline_dir, check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out[-2000:]
        assert f"name {name!r} is not allowed" in out, out[-2000:]
        assert "expected 1-100 letters, digits" in out
        assert not (pipeline_dir / "PWNED").exists()
        assert not (pipeline_dir / "results").exists() and not (pipeline_dir / "logs").exists()


def test_a_failed_step_shows_its_one_line_error_on_the_console(pipeline_dir):
    """Plain `snakemake --cores N`: the train step's error is on the console, and its log ends with it."""
    cfg = tiny_config()
    cfg["runs"]["tiny"]["train"]["device"] = "cuda"  # this machine has no GPU
    write_config(pipeline_dir, cfg)
    proc = run_snakemake(pipeline_dir, check=False)
    assert proc.returncode != 0
    line = "nanogpt train: error: device='cuda' but torch sees no CUDA GPU (this torch"
    assert line in proc.stdout + proc.stderr
    log = (pipeline_dir / "logs/train/tiny.log").read_text().strip().splitlines()
    assert log[-1].startswith(line) and "CPU-only build" in log[-1], log[-10:]
    assert "ChildFailedError" not in "\n".join(log)


# ---- one trainer per run folder ----------------------------------------------------------------------------

def test_run_folder_lock_refuses_a_second_trainer_and_dies_with_its_holder(tmp_path):
    with run_folder_lock(tmp_path, log=lambda m: None):
        with pytest.raises(BusyError, match=rf"in use by pid {os.getpid()}"):
            with run_folder_lock(tmp_path, log=lambda m: None, wait_s=0.3):
                pass
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from nanogpt.runlock import run_folder_lock\n"
        f"with run_folder_lock({str(tmp_path)!r}): print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(BusyError):
        with run_folder_lock(tmp_path, log=lambda m: None, wait_s=0.3):
            pass
    holder.kill()
    holder.wait()
    with run_folder_lock(tmp_path, log=lambda m: None, wait_s=5):  # a dead holder leaves no lock behind
        pass


def worker_pids(run_dir: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"nanogpt.cli" in argv and str(run_dir).encode() in argv and b"nanogpt.launch" not in argv[1:3]:
                found.append(int(entry.name))
    return found


def test_workers_die_with_the_killed_pipeline(chars, tmp_path):
    """SIGKILL of the launcher's process group (what killing snakemake does): the torchrun worker, in its own
    session, gets SIGTERM, saves a checkpoint and exits; no trainer is left running in the folder."""
    out = tmp_path / "run"
    (tmp_path / "config.yaml").write_text(json.dumps({"runs": {"trust": RUN | {
        "train": RUN["train"] | {"max_iters": 100000, "lr_decay_iters": 100000}}}}))
    cmd = [sys.executable, "-m", "nanogpt.launch", "--standalone", "--nproc_per_node=1", "-m", "nanogpt.cli",
           "train", "--config", "config.yaml", "--name", "trust", "--data-dir", str(chars), "--out-dir", str(out)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list((out / "checkpoints").glob("ckpt_*.pt")):
            time.sleep(0.2)
        assert worker_pids(out), "no training worker found"
        os.killpg(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while worker_pids(out) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not worker_pids(out), "the training worker outlived its killed parent"
    finally:
        for pid in worker_pids(out):
            os.kill(pid, signal.SIGKILL)
        proc.wait()
    with run_folder_lock(out, log=lambda m: None, wait_s=1):  # free for the rerun
        pass


# ---- files -------------------------------------------------------------------------------------------------

def test_full_disk_is_reported_with_the_path(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 4096, 4096))
    dest = tmp_path / "ckpt.pt"
    with pytest.raises(DiskFullError, match=rf"no space left on the device holding '{dest}'"):
        with fileio.atomic_path(dest):
            raise RuntimeError("basic_ios::clear: iostream error")
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    host = fileio._host()
    stale = tmp_path / f".train.bin.{host}-{dead}.abc123.tmp"
    live = tmp_path / f".train.bin.{host}-{os.getpid()}.def456.tmp"
    other = tmp_path / f".val.bin.{host}-{dead}.abc123.tmp"
    for p in (stale, live, other):
        p.write_bytes(b"x" * 1000)
    fileio.write_text(tmp_path / "train.bin", "ok")
    assert not stale.exists() and live.exists() and other.exists()


def test_outputs_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        fileio.write_json(tmp_path / "m.json", {"a": 1})
        ckpt_io.save({"model": {}}, tmp_path / "c.pt")
    finally:
        os.umask(old)
    for name in ("m.json", "c.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644


def test_data_errors_name_the_file(chars, tmp_path):
    from nanogpt.data.prepare import BatchSampler

    data = copy_data(chars, tmp_path / "data")
    (data / "val.bin").unlink()
    with pytest.raises(DataError, match=r"val.bin' is missing: expected"):
        BatchSampler(data, 8, 2, 0)
