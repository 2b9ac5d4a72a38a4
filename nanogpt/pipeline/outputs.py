"""The short block `snakemake` prints when it succeeds: where the files a user came for are.

Snakemake's own last lines name its log under .snakemake/; the model, sample, loss curve and summary are what a
user looks for, so the Snakefile's `onsuccess` prints them, for what the finished DAG holds.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from nanogpt import paths

# (label, pattern): the files worth naming, in the order a user reads them.
SHOWN = [("model", paths.MODEL), ("log", paths.TRAIN_LOG), ("curve", paths.LOSS_CURVE), ("sample", paths.SAMPLE),
         ("eval", paths.EVAL), ("sweep", f"{paths.SWEEP_DIR}/summary.md"), ("summary", paths.SUMMARY_MD)]
MAX_PER_LABEL = 3  # a sweep's dozens of points: the first few, then a count
REPORT_COMMAND = "snakemake --report report.html"


def _regex(pattern: str) -> re.Pattern:
    """A paths pattern ('results/runs/{run}/model.pt') as a regex matching its files."""
    parts = re.split(r"\{\w+\}", pattern)
    return re.compile("[^/]+".join(re.escape(p) for p in parts) + r"\Z")


def outputs_block(files: Iterable[str]) -> str:
    """Lines naming the files among `files` that a user wants and that exist; '' when there are none. A model's
    run folder also shows its train.log and loss curve when they exist, built this time or not."""
    found = {str(f) for f in files}
    for f in list(found):
        if (m := re.fullmatch(r"(.*)/model\.pt", f)) and _regex(paths.MODEL).match(f):
            run = Path(m.group(1)).name
            found |= {paths.TRAIN_LOG.format(run=run), paths.LOSS_CURVE.format(run=run)}
    lines, labels = [], set()
    for label, pattern in SHOWN:
        regex = _regex(pattern)
        matched = sorted(f for f in found if regex.match(f) and Path(f).is_file())
        labels |= {label} if matched else set()
        lines += [f"  {label:<8}{f}" for f in matched[:MAX_PER_LABEL]]
        if len(matched) > MAX_PER_LABEL:
            lines.append(f"  {'':<8}... and {len(matched) - MAX_PER_LABEL} more {label} files")
    if not lines:
        return ""
    if labels & {"model", "summary"}:  # the report shows runs and the summary
        lines.append(f"  {'report':<8}{REPORT_COMMAND}")
    return "\n".join(["Your outputs:", *lines])


def dag_output_files(workflow: object) -> list[str]:
    """The output files of every job in the DAG Snakemake just finished (ran or already up to date)."""
    dag = getattr(workflow, "dag", None)
    return [str(f) for job in getattr(dag, "jobs", ()) for f in job.output]


def print_outputs(workflow: object, stream: TextIO | None = None) -> None:
    """The Snakefile's `onsuccess`: the outputs block, when there is anything to name."""
    block = outputs_block(dag_output_files(workflow))
    if block:
        print(block, file=stream or sys.stderr)
