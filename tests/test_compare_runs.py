"""Comparing runs, through the pipeline: the summary shows the settings that differ
between the runs, TensorBoard lists just the runs and its HParams dashboard those settings first, sweeps on disk reach the summary
page, and the report of any target (the default one, a sweep) renders without a docutils error."""

from __future__ import annotations

import json

import pandas as pd
from test_report_scaling import PNG_1X1, embedded_pages, finished_run, pipeline_with_data
from torch.utils.tensorboard import SummaryWriter

from conftest import run_snakemake, tiny_config
from nanogpt.config import resolve_run
from nanogpt.pipeline.entries import Pipeline
from nanogpt.tracking import hparams_summary

SWEEP = {"lrs": {"base": "tiny", "grid": {"learning_rate": [0.001, 0.003]}}}


def comparing_config() -> dict:
    cfg = tiny_config()
    tiny = cfg["runs"]["tiny"]
    cfg["runs"]["wide"] = {**tiny, "model": {**tiny["model"], "n_embd": 64},
                           "train": {**tiny["train"], "learning_rate": 3e-3}}
    cfg["targets"] = {"runs": ["tiny", "wide"], "samples": [], "evals": [], "sweeps": []}
    cfg["samples"] = {}
    cfg["sweeps"] = SWEEP
    return cfg


def finished_pipeline(tmp_path):
    """A pipeline whose data, runs (targeted and sweep points) and curves count as done, without training."""
    cfg = comparing_config()
    work = pipeline_with_data(tmp_path, cfg)
    p = Pipeline(cfg)
    runs = p.runs()
    for name, entry in runs.items():
        finished_run(work / f"results/runs/{name}", name, entry)
        with SummaryWriter(work / f"results/runs/{name}") as writer:  # as training's last step writes them
            writer.add_scalar("loss/train", 2.1, 200)
            writer.add_scalar("loss/val", 2.2, 200)
            writer.file_writer.add_summary(hparams_summary(resolve_run(entry, name), name), 200)
        (work / f"results/plots/{name}_loss.png").write_bytes(PNG_1X1)
    run_snakemake(work, "--touch", *[f"results/plots/{n}_loss.png" for n in runs], timeout=200)
    return work, sorted(runs)


def tensorboard_view(logdir):
    """What `tensorboard --logdir` shows, computed by TensorBoard's own code: the run names, and the HParams
    dashboard's experiment (its columns in the order shown)."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    hparams = backend_context.Context(base_plugin.TBContext(logdir=str(logdir), data_provider=provider,
                                                            multiplexer=multiplexer))
    ctx = context.RequestContext()
    experiment = hparams.experiment_from_metadata(ctx, "", True, hparams.hparams_metadata(ctx, ""),
                                                  hparams.hparams_from_data_provider(ctx, "", 1000))
    return sorted(multiplexer.Runs()), experiment


def test_summary_hparams_and_reports_compare_runs(tmp_path):
    work, runs = finished_pipeline(tmp_path)
    with SummaryWriter(work / "results/runs/_hparams") as old:  # what an earlier version's summary wrote
        old.add_scalar("x", 1.0, 0)
    # the sweep is not a target: built on its own, then the default target's summary lists it
    run_snakemake(work, "results/sweeps/lrs/summary.md", timeout=300)
    run_snakemake(work, timeout=300)

    table = pd.read_csv(work / "results/summary.csv")
    assert sorted(table["model"]) == runs
    # the columns for what differs (learning rate across all four, width between tiny and wide), not the rest
    assert {"learning_rate", "n_embd"} <= set(table.columns) and "n_layer" not in table.columns
    wide = table.set_index("model").loc["wide"]
    assert wide["learning_rate"] == 3e-3 and wide["n_embd"] == 64
    md = (work / "results/summary.md").read_text()
    assert "| kind | model | dataset | n_embd | learning_rate |" in md

    page = (work / "results/summary.html").read_text()
    assert "<th class='text'>learning_rate</th>" in page
    assert "<h2>Sweeps</h2>" in page and "<h3>lrs</h3>" in page and "data:image/png;base64," in page

    # TensorBoard: the runs and nothing else (an earlier version's `_hparams` experiment folder is gone); the
    # HParams dashboard lists the settings that differ first, marked so
    runs_listed, experiment = tensorboard_view(work / "results/runs")
    assert runs_listed == runs and not (work / "results/runs/_hparams").exists()
    infos = [(h.name, h.differs) for h in experiment.hparam_infos]
    assert sorted(infos[:2]) == [("model.n_embd", True), ("train.learning_rate", True)]
    assert not any(differs for _, differs in infos[2:]) and ("model.n_layer", False) in infos
    assert {"loss/val", "loss/train"} <= {m.name.tag for m in experiment.metric_infos}

    # the report of the default target and of a sweep target: no docutils error, only links that resolve
    for target in (), ("results/sweeps/lrs/summary.md",):
        report = work / f"report{len(target)}.html"
        run_snakemake(work, "--report", str(report), *target, timeout=300)
        text = report.read_text()
        assert "System Message" not in text and "Unknown target name" not in text, target
        if target:
            assert not any("<h2>Resolved settings</h2>" in p for p in embedded_pages(text).values())
        else:
            pages = embedded_pages(text)
            assert "summary.html" in pages and "<h3>lrs</h3>" in pages["summary.html"]


def test_differing_settings_names_columns_unambiguously():
    from nanogpt.report.summary import differing_settings

    a = {"dataset": "d", "model": {"dropout": 0.0, "n_layer": 2}, "train": {"dropout": 0.1, "learning_rate": 1e-3}}
    b = json.loads(json.dumps(a))
    b["model"]["dropout"], b["train"]["dropout"], b["train"]["learning_rate"] = 0.2, 0.0, 1e-3
    assert differing_settings([a, b]) == {"model.dropout": "model.dropout", "train.dropout": "train.dropout"}
    assert differing_settings([a]) == {}
    c = {**a, "dataset": "other", "init_from": "x"}
    # dataset has its own column; a setting missing from one run differs from one that is set
    assert differing_settings([a, c]) == {"init_from": "init_from"}
