"""The pipeline run for real on a tiny config: files produced, nothing to redo, exact reruns on a change."""

from __future__ import annotations

import json
import re

import numpy as np
import torch

from conftest import run_snakemake, tiny_config, write_config


def planned_jobs(dry_run_output: str) -> dict[str, int]:
    """The 'Job stats' table of `snakemake -n` as {rule: count}."""
    if "Nothing to be done" in dry_run_output:
        return {}
    table = dry_run_output.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


def two_run_config() -> dict:
    """The tiny config plus a second, shorter run with its own sample: edits to one must not touch the other."""
    config = tiny_config()
    other = json.loads(json.dumps(config["runs"]["tiny"]))
    other["train"].update(max_iters=10, lr_decay_iters=10)
    config["runs"]["other"] = other
    config["samples"]["other"] = {"model": "other", "num_samples": 1, "max_new_tokens": 10}
    config["targets"] = {"runs": ["tiny", "other"], "samples": ["tiny", "other"], "evals": []}
    return config


def test_tiny_pipeline_end_to_end(pipeline_dir):
    write_config(pipeline_dir, two_run_config())
    built = run_snakemake(pipeline_dir).stderr
    res = pipeline_dir / "results"
    # snakemake ends with where the files a user wants are, for both runs
    block = built[built.index("Your outputs:"):].splitlines()
    assert "  model   results/runs/tiny/model.pt" in block and "  sample  results/samples/other.txt" in block
    assert "  curve   results/plots/tiny_loss.png" in block and "  summary results/summary.md" in block
    assert "  report  snakemake --report report.html" in block
    data = res / "data" / "shakespeare_char"
    meta = json.loads((data / "meta.json").read_text())
    assert (meta["train_tokens"], meta["val_tokens"], meta["vocab_size"]) == (1_003_854, 111_540, 65)
    assert np.fromfile(data / "train.bin", dtype=np.uint16).size == 1_003_854

    run = res / "runs" / "tiny"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["iters"] == 20 and 0 < metrics["val_loss"] < 4.3
    assert metrics["provenance"]["dataset"]["source"]["sha256"] == meta["source"]["sha256"]
    assert metrics["provenance"]["config"]["train"]["learning_rate"] == 1e-3
    state = torch.load(run / "model.pt", weights_only=True)
    assert state["iter_num"] == 20 and state["model_args"]["n_embd"] == 32
    assert list(run.glob("events.out.tfevents.*")), "no TensorBoard events"
    # keep_checkpoints (2) newest: the last periodic one and the final state, which model.pt is a link to
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["ckpt_00000015.pt", "ckpt_00000020.pt"]
    assert (run / "checkpoints" / "ckpt_00000020.pt").samefile(run / "model.pt")

    samples = (res / "samples" / "tiny.txt").read_text()
    assert samples.count("---------------") == 1 and len(samples) > 40
    for rule in ("download", "prepare", "train", "sample"):
        assert list((pipeline_dir / "logs" / rule).glob("*.log")), f"no log for {rule}"

    # A second run has nothing to do.
    assert planned_jobs(run_snakemake(pipeline_dir, "-n").stdout) == {}

    # Changing one run's learning rate reruns exactly that run's training, its samples, its loss curve and
    # the summary table that lists it.
    config = two_run_config()
    config["runs"]["tiny"]["train"]["learning_rate"] = 2.0e-3
    write_config(pipeline_dir, config)
    dry_run = run_snakemake(pipeline_dir, "-n").stdout
    assert planned_jobs(dry_run) == {"train": 1, "sample": 1, "loss_curve": 1, "run_page": 1, "sample_page": 1,
                                     "summary": 1, "all": 1}
    assert "run=other" not in dry_run and "sample=other" not in dry_run
