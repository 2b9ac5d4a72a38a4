"""A training trajectory is one unit: its whole record (checkpoints, best.pt, history, TensorBoard events,
metrics) lives in the run folder while it is shown, and moves whole to set_aside/<fingerprint>/ and back.

Through snakemake on the tiny pipeline where the user would meet it; the layout's moves in-process."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import make_pipeline, run_snakemake, tiny_config, write_config
from nanogpt import checkpoint as ckpt_io
from nanogpt import trajectory
from nanogpt.report.curves import load_events

RUN = "results/runs/tiny"


def val_curve(folder: Path) -> list[tuple[int, float]]:
    """The val loss as TensorBoard reads it back from the folder's event files."""
    return [(ev.step, ev.value) for ev in load_events(folder).Scalars("loss/val")]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record_of(run: Path) -> dict:
    """What the user sees of the shown trajectory: best.pt, history, val curve, event files, speed numbers."""
    metrics = json.loads((run / "metrics.json").read_text())
    return {
        "best": digest(run / "best.pt"),
        "history": (run / "history.jsonl").read_text(),
        "val": val_curve(run),
        "speed": {k: metrics[k] for k in ("median_ms_per_iter", "tokens_per_sec")},
        "model": digest(run / "model.pt"),
    }


def event_names(folder: Path) -> set[str]:
    return {p.name for p in folder.rglob("events.out.tfevents.*")}


def with_train(**train) -> dict:
    """The tiny pipeline's config, keeping best.pt (always_save_checkpoint: false), with these train settings."""
    config = tiny_config()
    config["runs"]["tiny"]["train"].update({"always_save_checkpoint": False, **train})
    return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("traj") / "pipeline"
    make_pipeline(dest, with_train())
    run_snakemake(dest)
    return dest


@pytest.fixture
def pipeline(finished, tmp_path) -> Path:
    dest = tmp_path / "pipeline"
    shutil.copytree(finished, dest, symlinks=True)
    return dest


def test_a_detour_and_back_brings_the_whole_record_back(pipeline):
    """A finished run, a trained detour (learning_rate), and back: nothing trains on the way back, and best.pt,
    history.jsonl, the TensorBoard val curve and the speed numbers are the original's as first written; every
    event file of both trajectories is still there, the detour's in its own set-aside record."""
    run = pipeline / RUN
    original, original_events = record_of(run), event_names(run)
    fingerprint = trajectory.shown_fingerprint(run)
    assert fingerprint and original["val"] and [s for s, _ in original["val"]] == [0, 10, 20]

    write_config(pipeline, with_train(learning_rate=2e-3))
    run_snakemake(pipeline)
    detour = record_of(run)
    assert detour["val"] != original["val"] and detour["best"] != original["best"]
    aside = run / "set_aside" / fingerprint
    assert not original_events & (event_names(run) - event_names(run / "set_aside"))
    assert original_events <= event_names(aside)
    assert val_curve(aside) == original["val"] and digest(aside / "best.pt") == original["best"]

    write_config(pipeline, with_train())
    run_snakemake(pipeline)
    log = (run / "train.log").read_text()
    assert "these settings came back" in log and not any(line.startswith("iter ") for line in log.splitlines())
    back = record_of(run)
    assert {k: back[k] for k in ("best", "history", "val", "speed", "model")} == original
    detour_aside = [p for p in (run / "set_aside").iterdir()]
    assert len(detour_aside) == 1 and val_curve(detour_aside[0]) == detour["val"]
    assert original_events <= event_names(run) - event_names(run / "set_aside")  # none lost, all shown again
    assert len(event_names(detour_aside[0])) >= 1


def test_tensorboard_names_the_shown_trajectory_by_the_run(pipeline):
    """`tensorboard --logdir results/runs` lists the shown trajectory as the run's own name."""
    from tensorboard.backend.event_processing import io_wrapper

    runs = pipeline / "results/runs"
    listed = {os.path.relpath(d, runs) for d in io_wrapper.GetLogdirSubdirectories(str(runs))}
    assert "tiny" in listed and not [name for name in listed if name.startswith("tiny/")], listed


def test_an_old_layout_reruns_nothing_and_is_migrated_on_first_use(pipeline):
    """A run folder of the earlier layout (another trajectory's checkpoints and best.pt in
    checkpoints/set_aside/<fingerprint>/, the restart archive in checkpoints/restarted/, no trajectory.json):
    `snakemake -n` has nothing to do; the next training moves it into the trajectory layout, losing no file,
    and resumes the finished run without training."""
    run = pipeline / RUN
    fingerprint = trajectory.shown_fingerprint(run)
    old = run / "checkpoints" / "set_aside" / fingerprint
    old.mkdir(parents=True)
    for _, path in ckpt_io.list_checkpoints(run / "checkpoints"):
        os.replace(path, old / path.name)  # as the earlier layout kept a trajectory's checkpoints apart
    os.replace(run / "best.pt", old / "best.pt")
    (run / "checkpoints" / "restarted").mkdir()
    (run / "checkpoints" / "restarted" / "metrics.json").write_text("{}")
    (run / trajectory.MARKER).unlink()
    dry = run_snakemake(pipeline, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr

    run_snakemake(pipeline, "--forcerun", "train")
    log = (run / "train.log").read_text()
    assert not any(line.startswith("iter ") for line in log.splitlines()), log
    assert not (run / "checkpoints" / "set_aside").exists() and not (run / "checkpoints" / "restarted").exists()
    assert (run / "set_aside" / "restarted" / "metrics.json").read_text() == "{}"
    assert (run / "best.pt").is_file() and ckpt_io.peek(run / "model.pt")["iter_num"] == 20
    assert [i for i, _ in ckpt_io.list_checkpoints(run / "checkpoints")] == [15, 20]


def test_old_layout_migration_is_lossless(tmp_path):
    """migrate() on a fabricated earlier layout: every file keeps its bytes, each in its new place."""
    run = tmp_path / "run"
    files = {
        "checkpoints/set_aside/fpA/ckpt_00000005.pt": b"a5",
        "checkpoints/set_aside/fpA/best.pt": b"abest",
        "checkpoints/set_aside/unreadable/ckpt_00000009.pt": b"torn",
        "checkpoints/restarted/ckpt_00000003.pt": b"r3",
        "checkpoints/ckpt_00000010.pt": b"live",
        "history.jsonl": b"{}\n",
    }
    for name, data in files.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(data)
    trajectory.migrate(run, log=lambda *_: None)
    moved = {
        "set_aside/fpA/checkpoints/ckpt_00000005.pt": b"a5",
        "set_aside/fpA/best.pt": b"abest",
        "checkpoints/unreadable/ckpt_00000009.pt": b"torn",
        "set_aside/restarted/ckpt_00000003.pt": b"r3",
        "checkpoints/ckpt_00000010.pt": b"live",
        "history.jsonl": b"{}\n",
    }
    found = {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert found == moved
    assert not (run / "checkpoints" / "set_aside").exists()


def test_a_record_moves_whole_and_old_ones_keep_all_but_their_weights(tmp_path):
    """Whatever the trainer writes into the run folder follows its trajectory (no list names it); records set
    aside longer ago than the SET_ASIDE_TRAJECTORIES newest lose only their .pt files."""
    run = tmp_path / "run"
    for i in range(6):
        run.mkdir(exist_ok=True)
        (run / ".lock").write_text("")
        (run / "train.log").write_text(f"attempt {i}")
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "ckpt_00000010.pt").write_bytes(b"w")
        (run / f"events.out.tfevents.{i}").write_bytes(b"e")
        (run / "something_new_later.txt").write_text(str(i))
        trajectory.set_aside_record(run, f"fp{i}")
        os.utime(run / "set_aside" / f"fp{i}", (i, i))  # set aside one after the other
        trajectory.retain(run)
        assert sorted(p.name for p in run.iterdir()) == [".lock", "set_aside", "train.log"]
    for i in range(6):
        folder = run / "set_aside" / f"fp{i}"
        assert (folder / f"events.out.tfevents.{i}").is_file() and (folder / "something_new_later.txt").is_file()
        assert (folder / "checkpoints" / "ckpt_00000010.pt").is_file() == (i >= 2)
    assert trajectory.bring_back(run, "fp3") and (run / "something_new_later.txt").read_text() == "3"
    assert not (run / "set_aside" / "fp3").exists()
