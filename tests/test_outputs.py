"""What a user reads after a build: the outputs block `snakemake` ends with, and the summary table's units."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from nanogpt import paths
from nanogpt.pipeline.outputs import MAX_PER_LABEL, REPORT_COMMAND, outputs_block
from nanogpt.report.summary import write_table


def touch(root: Path, *files: str) -> None:
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("x")


def test_outputs_block_names_what_exists_in_reading_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, sample = paths.MODEL.format(run="tiny"), paths.SAMPLE.format(sample="tiny")
    curve, log = paths.LOSS_CURVE.format(run="tiny"), paths.TRAIN_LOG.format(run="tiny")
    touch(tmp_path, model, sample, curve, log, paths.SUMMARY_MD)
    dag = [paths.TRAIN_BIN.format(dataset="d"), paths.METRICS.format(run="tiny"), model, sample,
           paths.SUMMARY_CSV, paths.SUMMARY_MD, paths.SAMPLE.format(sample="not_written")]
    assert outputs_block(dag).splitlines() == [
        "Your outputs:", f"  model   {model}", f"  log     {log}", f"  curve   {curve}", f"  sample  {sample}",
        f"  summary {paths.SUMMARY_MD}", f"  report  {REPORT_COMMAND}"]


def test_outputs_block_counts_what_it_leaves_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    models = [paths.MODEL.format(run=f"sweep-p{i}") for i in range(MAX_PER_LABEL + 4)]
    touch(tmp_path, *models)
    lines = outputs_block(models).splitlines()
    assert [ln.split()[-1] for ln in lines[1 : 1 + MAX_PER_LABEL]] == sorted(models)[:MAX_PER_LABEL]
    assert "... and 4 more model files" in lines[1 + MAX_PER_LABEL]
    assert outputs_block([paths.TRAIN_BIN.format(dataset="d")]) == ""  # nothing a user came for: no block


def test_summary_shows_mfu_as_a_percentage_and_wall_time_one_way(tmp_path):
    """summary.md and .html: mfu 0.1234 -> 12.34%, every wall_time_s with one decimal; summary.csv keeps numbers."""
    results = tmp_path / "results"
    for name, mfu, wall in (("a", 0.1234, 83.0), ("b", None, 5.4321), ("c", 0.05, 1234.56)):
        run = results / "runs" / name
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({
            "val_loss": 2.0, "train_loss": 1.9, "iters": 10, "mfu": mfu, "wall_time_s": wall,
            "provenance": {"config": {"dataset": "d", "train": {"batch_size": 4}}}}))
    (results / "eval" / "gpt2").mkdir(parents=True)
    (results / "eval" / "gpt2" / "d.json").write_text(json.dumps({"model": "gpt2", "dataset": "d", "val_loss": 3.0,
                                                                   "wall_time_s": 12.0}))
    csv, md = tmp_path / "summary.csv", tmp_path / "summary.md"
    assert write_table(results, csv, md) == 4
    rows = [ln for ln in md.read_text().splitlines() if ln.startswith("| ") and "---" not in ln]
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    header = cells[0]
    mfu = [r[header.index("mfu")] for r in cells[1:]]
    wall = [r[header.index("wall_time_s")] for r in cells[1:]]
    assert mfu == ["12.34%", "", "5.00%", ""]
    assert wall == ["83.0", "5.4", "1,234.6", "12.0"]
    table = pd.read_csv(csv)
    assert table["mfu"].tolist()[0] == 0.1234 and table["wall_time_s"].tolist()[2] == 1234.56
    html = md.with_suffix(".html").read_text()
    assert "12.34%" in html and "1,234.6" in html
