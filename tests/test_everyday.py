"""Everyday use: training progress on the console, TensorBoard (one chart for train/val, HParams, samples as
text, runs named by their run name), the HTML report, and optional Weights & Biases logging."""

from __future__ import annotations

import base64
import html
import importlib.util
import io
import json
import re
import time
from pathlib import Path

import pytest

from conftest import make_pipeline, run_snakemake, tiny_config
from nanogpt.config import resolve_run
from nanogpt.errors import ConfigError
from nanogpt.progress import Progress, format_duration, relay
from nanogpt.sample import add_samples_to_tensorboard
from nanogpt.tracking import check_wandb


def events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny pipeline, run once by snakemake: its folder and the console output."""
    work = make_pipeline(tmp_path_factory.mktemp("everyday") / "pipeline", tiny_config())
    proc = run_snakemake(work)
    return work, proc.stdout + proc.stderr


# ---- progress --------------------------------------------------------------------------------------------

def test_progress_lines_are_throttled_and_carry_an_eta():
    now = [0.0]
    p = Progress(max_iters=1000, tokens_per_iter=2048, every_s=15, clock=lambda: now[0])
    lines = []
    for it in range(1, 1001):
        now[0] += 0.125  # s per iteration (evals included): 1000 iterations take 125 s
        lines.append(p.update(it, 2.0, 0.05))
    shown = [line for line in lines if line]
    assert shown[0] == "progress: iter 1/1000 (0%), loss 2.0000, 40,960 tokens/s, ETA ?"
    assert shown[1] == "progress: iter 121/1000 (12%), loss 2.0000, 40,960 tokens/s, ETA 1m50s"  # 879 x 0.125 s
    assert shown[-1] == "progress: iter 1000/1000 (100%), loss 2.0000, 40,960 tokens/s, ETA 0s"
    assert len(shown) == 10  # the first, the last, and one per 15 s of a 125 s run
    assert [format_duration(s) for s in (42, 192, 7500)] == ["42s", "3m12s", "2h05m"]


def test_relay_keeps_the_whole_output_in_the_log_and_shows_progress_prefixed():
    out = [b"device cpu, dtype float32\n", b"iter 1: loss 4.1, time 10ms, mfu n/a\n",
           b"progress: iter 1/20 (5%), loss 4.1, 9 tokens/s, ETA ?\n", b"step 10: train loss 3.9, val loss 3.9\n",
           b"nanogpt train: error: something a user can fix\n"]
    log, console = io.BytesIO(), io.StringIO()
    relay(out, log, console, "tiny")
    assert log.getvalue() == b"".join(out)  # the log still ends with the one-line error
    assert console.getvalue().splitlines() == ["[tiny] iter 1/20 (5%), loss 4.1, 9 tokens/s, ETA ?",
                                               "[tiny] step 10: train loss 3.9, val loss 3.9"]


def test_snakemake_shows_each_trainings_progress_and_the_log_keeps_everything(finished):
    work, console = finished
    assert re.search(r"^\[tiny\] iter 1/20 \(5%\), loss \d\.\d{4}, [\d,]+ tokens/s, ETA \?$", console, re.M)
    assert re.search(r"^\[tiny\] iter 20/20 \(100%\), .* ETA 0s$", console, re.M)
    assert re.search(r"^\[tiny\] step 10: train loss \d\.\d{4}, val loss \d\.\d{4}$", console, re.M)
    assert re.search(r"^\[tiny\] done: val loss", console, re.M)
    assert "[tiny] iter 5/" not in console  # throttled: not every step
    full = (work / "results/runs/tiny/train.log").read_text().splitlines()  # every line
    assert sum(line.startswith("iter ") for line in full) == 20 and full[-1].startswith("done: val loss")
    log = (work / "logs/train/tiny.log").read_text().splitlines()  # Snakemake's: all but the iteration lines
    assert not any(line.startswith("iter ") for line in log) and log[-1].startswith("done: val loss")


# ---- TensorBoard -----------------------------------------------------------------------------------------

def test_tensorboard_events_are_in_the_run_folder_with_layout_hparams_and_samples(finished):
    work, _ = finished
    run = work / "results/runs/tiny"
    assert not (run / "tb").exists() and list(run.glob("events.out.tfevents.*"))
    acc = events(run)
    scalars = set(acc.Tags()["scalars"])
    assert {"loss/train", "loss/train_eval", "loss/val", "lr", "tokens_per_sec"} <= scalars
    assert [e.step for e in acc.Scalars("loss/val")] == [0, 10, 20]
    from tensorboard.plugins.custom_scalar import layout_pb2

    (tag,) = acc.PluginTagToContent("custom_scalars")
    layout = layout_pb2.Layout.FromString(acc.Tensors(tag)[0].tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert ["loss/train", "loss/train_eval", "loss/val"] in charts.values()  # train and val on one chart

    from tensorboard.plugins.hparams import metadata

    start = acc.PluginTagToContent("hparams")[metadata.SESSION_START_INFO_TAG]
    hparams = metadata.parse_session_start_info_plugin_data(start).hparams
    assert hparams["train.learning_rate"].number_value == pytest.approx(1e-3)
    assert hparams["model.n_layer"].number_value == 1 and hparams["dataset"].string_value == "shakespeare_char"

    # the sample step's text, beside the curves (nanogpt.sample.add_samples_to_tensorboard)
    assert add_samples_to_tensorboard(run / "model.pt", ["ROMEO:\nhello", "JULIET:\n`x`"], "tiny") == run
    text_events = events(run).Tensors("samples/tiny/text_summary")
    assert text_events[-1].step == 20
    text = text_events[-1].tensor_proto.string_val[0].decode()
    assert "```\nROMEO:\nhello\n```" in text and "JULIET:\n`x`" in text
    assert add_samples_to_tensorboard("gpt2", ["x"], "gpt2") is None


# ---- report ----------------------------------------------------------------------------------------------

def embedded(report: Path) -> dict[str, str]:
    """The files a Snakemake HTML report embeds, by file name (HTML pages only)."""
    found = re.findall(r"data:text/html;charset=utf8;filename=([^;]+);base64,([A-Za-z0-9+/=]+)", report.read_text())
    return {f"{name}#{i}": base64.b64decode(data).decode() for i, (name, data) in enumerate(found)}


def test_the_report_shows_the_summary_table_runs_and_samples(finished):
    work, _ = finished
    run_snakemake(work, "--report", "report.html", timeout=300)
    report = work / "report.html"
    text = report.read_text()
    assert "nanogpt-workflow" in text and "Samples" in text  # the description page (workflow.rst)
    pages = embedded(report)
    summary = next(p for name, p in pages.items() if name.startswith("summary.html"))
    metrics = json.loads((work / "results/runs/tiny/metrics.json").read_text())
    assert "<h2>Training runs</h2>" in summary and "<th class='text'>val_loss</th>" in summary
    assert f"<td>{metrics['val_loss']:.4f}</td>" in summary
    samples = (work / "results/samples/tiny.txt").read_text().split("\n---------------\n")
    sample_page = next(p for p in pages.values() if "<h1>sample tiny</h1>" in p)
    assert all(html.escape(s.strip("\n")) in sample_page for s in samples)
    run_page = next(p for p in pages.values() if "<h1>run tiny</h1>" in p)
    assert "train.learning_rate" in run_page and "data:image/png;base64," in run_page


# ---- Weights & Biases ------------------------------------------------------------------------------------

def test_wandb_settings_stay_out_of_the_trajectory_and_a_missing_wandb_is_one_line(monkeypatch):
    base = tiny_config()["runs"]["tiny"]
    logged = resolve_run(base, "tiny", {"wandb_log": True, "wandb_project": "p", "wandb_run_name": "r"})
    assert logged.fingerprint() == resolve_run(base, "tiny").fingerprint()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^train.wandb_log=true but the wandb package is not installed"):
        check_wandb(logged.train)
    check_wandb(resolve_run(base, "tiny").train)  # not asked for: nothing to check


def wandb_records(path: Path):
    """The records of an offline run's .wandb file (LevelDB log blocks of W&B protobuf records)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunk = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            yield wandb_internal_pb2.Record.FromString(chunk)
            chunk = b""


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed (pip install wandb)")
def test_wandb_offline_run_logs_the_scalars_and_settings(finished, tmp_path, monkeypatch):
    from nanogpt.train import train

    work, _ = finished
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = resolve_run(tiny_config()["runs"]["tiny"], "tiny",
                      {"max_iters": 6, "eval_interval": 3, "wandb_log": True, "wandb_project": "everyday"})
    metrics = train(run, work / "results/data/shakespeare_char", tmp_path / "wb", log=lambda m: None)
    (path,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    for _ in range(100):  # wandb's service process may still be writing the file's last block
        records = list(wandb_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        time.sleep(0.2)
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            history.setdefault(row.get("_step", r.history.step.num), {}).update(row)
    assert sorted(history) == [0, 1, 2, 3, 4, 5, 6]
    assert history[6]["loss/val"] == pytest.approx(metrics["val_loss"])
    assert {"loss/train", "lr", "tokens_per_sec", "grad_norm"} <= set(history[6])
    (header,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert header.project == "everyday" and header.display_name == "wb"  # wandb_run_name unset: the run's name
    config = {i.key: json.loads(i.value_json) for i in header.config.update}
    assert config["train"]["learning_rate"] == 1e-3 and config["model"]["n_layer"] == 1
