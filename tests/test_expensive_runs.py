"""A finished training run is the most expensive file: never lost, never redone for a change that cannot change
its weights. Through snakemake on the tiny pipeline, and in-process where the logic is the fingerprint's."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
import typing
from pathlib import Path

import pytest
import torch

from conftest import BIN, make_pipeline, run_snakemake, tiny_config, write_config
from nanogpt import checkpoint as ckpt_io
from nanogpt import trajectory
from nanogpt.config import RunConfig, resolve_run
from nanogpt.errors import DataError
from nanogpt.pipeline.jobs import Untracked
from nanogpt.report.sweeps import check_point_result
from nanogpt.settings import (
    ARCHS,
    OPTIMIZERS,
    ModelSettings,
    TrainSettings,
    declared,
    default_of,
    field_types,
    same_value,
)

NOTHING = "Nothing to be done"


def trains(proc: subprocess.CompletedProcess) -> bool:
    """Whether snakemake (-n) scheduled a train job."""
    return "rule train:" in proc.stdout + proc.stderr


def weights(path: Path) -> dict[str, torch.Tensor]:
    return ckpt_io.load(path)["model"]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """The tiny pipeline, run to the end once (data, a 20-iteration run, its sample)."""
    return _finished(tmp_path_factory.mktemp("finished") / "pipeline", tiny_config())


def _finished(dest: Path, config: dict) -> Path:
    make_pipeline(dest, config)
    run_snakemake(dest)
    return dest


@pytest.fixture
def pipeline(finished, tmp_path) -> Path:
    """A copy of the finished pipeline (metadata and mtimes kept) to change."""
    dest = tmp_path / "pipeline"
    shutil.copytree(finished, dest, symlinks=True)
    return dest


def changed(pipeline: Path, **train) -> dict:
    config = tiny_config()
    config["runs"]["tiny"]["train"].update(train)
    write_config(pipeline, config)
    return config


# ---- changes that cannot change the weights -------------------------------------------------------------------
def test_neutral_and_cadence_changes_rerun_nothing(pipeline):
    """A setting written out at its default, logging/eval/checkpoint cadence, compile, wandb, the launch,
    resources, and Muon's settings in this AdamW run: snakemake schedules no job, and model.pt stays the same file."""
    model = pipeline / "results/runs/tiny/model.pt"
    before = (model.stat().st_ino, model.stat().st_mtime_ns)
    config = changed(pipeline, grad_clip=1.0, seed=1337, log_interval=5, eval_interval=4, eval_iters=3,
                     checkpoint_interval=7, keep_checkpoints=3, compile=False, always_save_checkpoint=False,
                     wandb_log=True, wandb_project="other", muon_lr=0.05, muon_momentum=0.9)
    config["runs"]["tiny"]["model"]["vocab_size"] = None  # the dataset's: its default
    config["runs"]["tiny"]["launch"]["backend"] = "gloo"
    config["runs"]["tiny"]["resources"]["mem_mb"] = 2000
    config["samples"]["tiny"].update(temperature=0.8, top_k=200, device="auto")  # the sample's defaults, spelled out
    write_config(pipeline, config)
    proc = run_snakemake(pipeline, "-n")
    assert NOTHING in proc.stdout + proc.stderr, proc.stdout[-2000:]
    run_snakemake(pipeline)
    assert (model.stat().st_ino, model.stat().st_mtime_ns) == before


def test_a_sample_setting_reruns_the_sample_only(pipeline):
    """A sample's own settings are its tracked parameter (Pipeline.sample_identity): a new temperature redraws
    the sample, and trains nothing."""
    config = tiny_config()
    config["samples"]["tiny"]["temperature"] = 0.5
    write_config(pipeline, config)
    proc = run_snakemake(pipeline, "-n")
    assert "rule sample:" in proc.stdout and not trains(proc), proc.stdout[-2000:]


def test_a_setting_added_with_a_neutral_default_keeps_every_fingerprint():
    """A new version adding e.g. label_smoothing: 0.0 changes neither the trajectory nor the fingerprint."""
    entry = tiny_config()["runs"]["tiny"]
    run = resolve_run(entry, "tiny")
    newer = dataclasses.make_dataclass("TrainSettings", [("label_smoothing", float, 0.0)], bases=(TrainSettings,))
    upgraded = RunConfig(dataset=run.dataset, model=run.model, train=newer(**dataclasses.asdict(run.train)),
                         launch=run.launch)
    assert upgraded.trajectory() == run.trajectory()
    assert upgraded.fingerprint({"v": 1}, "scratch") == run.fingerprint({"v": 1}, "scratch")
    smoothed = RunConfig(dataset=run.dataset, model=run.model, launch=run.launch,
                         train=newer(**{**dataclasses.asdict(run.train), "label_smoothing": 0.1}))
    assert smoothed.fingerprint({"v": 1}, "scratch") != run.fingerprint({"v": 1}, "scratch")


def other_value(f: dataclasses.Field, kind: object) -> object:
    """A valid value of a declared setting other than its default."""
    d, default = declared(f), default_of(f)
    if d.choices is not None:
        return next(c for c in d.choices if not same_value(c, default))
    if kind is bool:
        return not default
    if f.name == "device":
        return "cpu"
    if kind in (str, str | None):
        return "other"
    if default is None:
        return 2 if int in typing.get_args(kind) else 2e12
    if isinstance(default, int):
        return default + 1
    high = d.le if d.le is not None else d.lt
    return default + (high - default) * 0.01 if high is not None else default * 2


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("arch", ARCHS)
def test_every_setting_changes_the_trajectory_exactly_when_it_can_change_the_weights(optimizer, arch):
    """Each model and train setting, moved off its default in a run of each optimizer and architecture: the
    fingerprint and the train rule's tracked trajectory change exactly when the setting is declared to change
    weights and the run's recipe uses it (Muon's settings in an AdamW run do not)."""
    entry = tiny_config()["runs"]["tiny"]
    entry = {**entry, "model": {**entry["model"], "arch": arch}, "train": {**entry["train"], "optimizer": optimizer,
                                                                             "learning_rate": 0.5, "min_lr": 0.0}}
    base = resolve_run(entry, "tiny")
    for section, cls in (("model", ModelSettings), ("train", TrainSettings)):
        types = field_types(cls)
        for f in dataclasses.fields(cls):
            if f.name in ("optimizer", "arch", "max_iters", "eval_only", "n_head", "n_embd"):
                continue  # the recipe itself; a run's length and eval_only are checked apart; shape pairs below
            value = other_value(f, types[f.name])
            if same_value(value, getattr(getattr(base, section), f.name)):
                continue
            changed = resolve_run({**entry, section: {**entry[section], f.name: value}}, "tiny")
            d = declared(f)
            used = d.used_with is None or same_value(getattr(changed.train, d.used_with[0]), d.used_with[1])
            moves = changed.fingerprint({"v": 1}, "scratch") != base.fingerprint({"v": 1}, "scratch")
            assert moves == (d.trajectory and used), f"{section}.{f.name}={value!r} with {optimizer}/{arch}"
            assert (changed.trajectory() != base.trajectory()) == (d.trajectory and used), f.name


def test_wandb_without_the_package_fails_before_any_job(pipeline, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\nclass _B:\n    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'wandb':\n            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, _B())\n")
    changed(pipeline, wandb_log=True)
    proc = run_snakemake(pipeline, "-n", check=False, env={"PYTHONPATH": str(site)})
    assert proc.returncode != 0
    assert "runs.tiny.train.wandb_log=true but the wandb package is not installed" in proc.stdout + proc.stderr
    assert (pipeline / "results/runs/tiny/model.pt").is_file()


# ---- a finished run continued, and detours -----------------------------------------------------------------------
def test_init_from_resume_continues_a_finished_run(pipeline, tmp_path):
    """20 iterations, then init_from: resume with max_iters 30: continued from iteration 20, and the weights
    equal a 30-iteration run in one go (same schedule: lr_decay_iters 20, so min_lr after 20)."""
    config = tiny_config()
    config["runs"]["tiny"]["init_from"] = "resume"
    config["runs"]["tiny"]["train"]["max_iters"] = 30
    write_config(pipeline, config)
    run_snakemake(pipeline)
    log = (pipeline / "logs/train/tiny.log").read_text()
    assert "resuming from" in log and "ckpt_00000020" in log
    straight = tiny_config()["runs"]["tiny"]
    straight["train"]["max_iters"] = 30
    from nanogpt.train import train

    train(resolve_run(straight, "tiny"), pipeline / "results/data/shakespeare_char", tmp_path / "straight",
          log=lambda *a: None)
    assert same_weights(weights(pipeline / "results/runs/tiny/model.pt"), weights(tmp_path / "straight/model.pt"))


def test_init_from_resume_without_a_run_to_continue_is_one_line(pipeline):
    shutil.rmtree(pipeline / "results/runs/tiny")
    config = tiny_config()
    config["runs"]["tiny"]["init_from"] = "resume"
    write_config(pipeline, config)
    proc = run_snakemake(pipeline, check=False)
    assert proc.returncode != 0
    assert "init_from='resume' but results/runs/tiny/checkpoints holds no checkpoint made with these settings" in (
        proc.stdout + proc.stderr)


def test_a_detour_and_back_resumes_the_original_trajectory(pipeline):
    """learning_rate changed (a new trajectory from 0), then changed back: the original final checkpoint comes
    back from set_aside/ and nothing is trained again."""
    original = weights(pipeline / "results/runs/tiny/model.pt")
    changed(pipeline, learning_rate=2e-3)
    run_snakemake(pipeline)
    assert not same_weights(weights(pipeline / "results/runs/tiny/model.pt"), original)
    write_config(pipeline, tiny_config())
    run_snakemake(pipeline)
    log = (pipeline / "results/runs/tiny/train.log").read_text()  # the full log: every iteration line
    assert "these settings came back" in log and not any(line.startswith("iter ") for line in log.splitlines())
    assert (pipeline / "results/runs/tiny/train.log.1").is_file()  # the detour's attempt, kept
    assert same_weights(weights(pipeline / "results/runs/tiny/model.pt"), original)
    aside = [p.name for p in (pipeline / "results/runs/tiny/set_aside").iterdir()]
    assert len(aside) == 1  # the detour's trajectory, kept under its own fingerprint


def test_restart_starts_a_run_over_and_keeps_the_old_state(pipeline):
    run_dir = pipeline / "results/runs/tiny"
    proc = subprocess.run([str(BIN / "nanogpt"), "restart", "--run-dir", str(run_dir)], capture_output=True,
                          text=True, cwd=pipeline, timeout=60)
    assert proc.returncode == 0, proc.stderr
    archived = run_dir / trajectory.SET_ASIDE / trajectory.RESTARTED
    assert (archived / "checkpoints" / "ckpt_00000020.pt").is_file() and not (run_dir / "model.pt").exists()
    assert list(archived.glob("events.out.tfevents.*")) and (archived / "history.jsonl").is_file()
    run_snakemake(pipeline)
    log = (pipeline / "results/runs/tiny/train.log").read_text()
    assert "resuming" not in log and "iter 1:" in log


# ---- folders that are not the run they look like ---------------------------------------------------------------
def test_cli_train_never_writes_into_the_pipelines_folders(pipeline):
    model = pipeline / "results/runs/tiny/model.pt"
    before = model.stat().st_mtime_ns
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([str(BIN / "nanogpt"), "train", "--config", "config.yaml", "--name", "tiny",
                           "--max_iters=4"], capture_output=True, text=True, cwd=pipeline, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (pipeline / "out/tiny/model.pt").is_file() and model.stat().st_mtime_ns == before
    proc = subprocess.run([str(BIN / "nanogpt"), "train", "--config", "config.yaml", "--name", "tiny",
                           "--out-dir", "results/runs/tiny"], capture_output=True, text=True, cwd=pipeline,
                          timeout=120, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "nanogpt train: error: --out-dir 'results/runs/tiny' is a run folder of the pipeline: expected another "
        "folder (the default is out/NAME), or `snakemake` to train the pipeline's runs"]


def test_a_stale_run_folder_is_not_reported_as_a_sweep_point(tmp_path):
    point = {"run": "lr-learning_rate_0.004", "trajectory": {"dataset": "d", "train": {"learning_rate": 0.004}}}
    stale = {"provenance": {"config": resolve_run({"dataset": "d", "train": {"learning_rate": 0.001}}).to_dict()}}
    with pytest.raises(DataError, match=r"holds a run of other settings than sweep point lr-learning_rate_0.004: "
                                        r"train.learning_rate 0.001 \(expected 0.004\)"):
        check_point_result(point, stale, tmp_path / point["run"])
    ok = {"provenance": {"config": resolve_run({"dataset": "d", "train": {"learning_rate": 0.004}}).to_dict()}}
    check_point_result(point, ok, tmp_path / point["run"])
    with pytest.raises(DataError, match="records no settings"):
        check_point_result(point, {}, tmp_path / point["run"])


def test_wall_time_counts_every_attempt(tmp_path):
    """A run trained in two attempts reports the time of both, not only of the last."""
    from nanogpt.train import train

    data = tmp_path / "data"
    from nanogpt.data.prepare import prepare_text

    prepare_text(Path(__file__).parents[1] / "nanogpt/assets/tinyshakespeare/input.txt", data)
    spec = tiny_config()["runs"]["tiny"]
    spec["train"].update(lr_decay_iters=8, eval_iters=1)
    first = train(resolve_run({**spec, "train": {**spec["train"], "max_iters": 4}}, "tiny"), data, tmp_path / "r",
                  log=lambda *a: None)
    t0 = time.time()
    second = train(resolve_run({**spec, "train": {**spec["train"], "max_iters": 8}}, "tiny"), data, tmp_path / "r",
                   log=lambda *a: None)
    own = time.time() - t0  # the second attempt alone
    assert second["iters"] == 8 and abs(second["wall_time_s"] - (first["wall_time_s"] + own)) < 0.5
    assert ckpt_io.load(tmp_path / "r" / "model.pt")["wall_time_s"] >= first["wall_time_s"]


def test_snakemake_records_no_untracked_parameter():
    """The train, sample, eval and data rules pass their resolved settings as `Untracked` parameters, which
    Snakemake's persistence leaves out of its params record (only builtin types are recorded); the tracked
    parameters are plain strings. If a Snakemake upgrade starts recording other objects, every cadence change
    would retrain every run: this fails first, naming the cause."""
    from snakemake.persistence import UNREPRESENTABLE, PersistenceBase

    probe = type("Probe", (), {name: getattr(PersistenceBase, name)
                               for name in ("_serialize_param_builtin", "_serialize_param_pandas")})()
    record = probe._serialize_param_pandas  # what Persistence._params applies to each parameter
    assert record(Untracked("--spec {}")) is UNREPRESENTABLE, "Snakemake now records Untracked params: see nanogpt.pipeline.jobs"
    assert record('{"dataset": "d"}') == repr('{"dataset": "d"}')
