"""The report stays small and cheap with many runs: 30 synthetic finished runs, more than
INLINE_PNG_MAX_RUNS, go through the real run_page and summary jobs and `snakemake --report`; each run page carries an
SVG thumbnail of its curve instead of a PNG, and the report grows by a bounded amount per run."""

from __future__ import annotations

import base64
import json
import re

from conftest import make_pipeline, run_snakemake, tiny_config
from nanogpt.config import resolve_run
from nanogpt.report.curves import svg_curve
from nanogpt.report.pages import INLINE_PNG_MAX_RUNS, write_run_page

N_RUNS = 30
PNG_1X1 = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg==")


def embedded_pages(report_html: str) -> dict[str, str]:
    """The HTML pages a Snakemake HTML report embeds (base64 data URIs), by file name."""
    found = re.findall(r"data:text/html;charset=utf8;filename=([^;]+);base64,([A-Za-z0-9+/=]+)", report_html)
    return {name: base64.b64decode(data).decode() for name, data in found}


def finished_run(run_dir, name: str, entry: dict, iters: int = 200) -> None:
    """What training leaves in a run folder (history.jsonl for the curve; model.pt a placeholder nobody reads)."""
    run_dir.mkdir(parents=True)
    (run_dir / "history.jsonl").write_text("".join(json.dumps({"iter": i, "loss": 4.0 - i / 100}) + "\n"
                                                   for i in range(0, iters + 1, 2)))
    metrics = {"iters": iters, "train_loss": 2.1, "val_loss": 2.2, "best_val_loss": 2.2, "device": "cpu",
               "provenance": {"config": resolve_run(entry, name).to_dict(), "git_commit": "abc"}}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "model.pt").write_bytes(b"placeholder")


def pipeline_with_data(tmp_path, cfg: dict):
    """A pipeline copy whose dataset files exist (placeholders: no job reads them once training counts as done)."""
    work = make_pipeline(tmp_path / "pipeline", cfg)
    data = work / "results/data/shakespeare_char"
    data.mkdir(parents=True)
    for f in ("source.txt", "train.bin", "val.bin", "meta.json"):
        (data / f).write_text("{}")
    (work / "results/plots").mkdir()
    return work


def test_svg_thumbnail_is_small_and_plots_every_series(tmp_path):
    curves = {"loss/train": [(i, 4.0 - i / 5000) for i in range(0, 5001, 1)],
              "loss/val": [(i, 3.9 - i / 5000) for i in range(0, 5001, 250)]}
    svg = svg_curve(curves, "run <x>")
    assert svg.startswith("<svg") and svg.endswith("</svg>") and "run &lt;x&gt;" in svg
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 21  # markers on the 21 evals only
    assert len(svg) < 5000  # 5001 train points thinned to at most ~160
    assert "no loss events found" in svg_curve({}, "empty")

    # a page for a few runs embeds the PNG it is given; without one it draws the thumbnail from the run folder
    entry = tiny_config()["runs"]["tiny"]
    finished_run(tmp_path / "r", "r", entry)
    (tmp_path / "c.png").write_bytes(PNG_1X1)
    write_run_page(tmp_path / "r/metrics.json", tmp_path / "full.html", "run r", curve_png=tmp_path / "c.png")
    write_run_page(tmp_path / "r/metrics.json", tmp_path / "thumb.html", "run r", run_dir=tmp_path / "r")
    full, thumb = (tmp_path / "full.html").read_text(), (tmp_path / "thumb.html").read_text()
    assert "data:image/png;base64," in full and "<svg" not in full
    assert "<svg" in thumb and "data:image/png" not in thumb and "train.learning_rate" in thumb


def test_many_runs_report_has_thumbnails_and_bounded_size(tmp_path):
    assert N_RUNS > INLINE_PNG_MAX_RUNS
    cfg = tiny_config()
    base = cfg["runs"].pop("tiny")
    names = [f"r{i:02d}" for i in range(N_RUNS)]
    cfg["runs"] = {n: base for n in names}
    cfg["targets"] = {"runs": names, "samples": [], "evals": []}
    cfg["samples"] = {}
    work = pipeline_with_data(tmp_path, cfg)
    for name in names:
        finished_run(work / f"results/runs/{name}", name, base)
        (work / f"results/plots/{name}_loss.png").write_bytes(PNG_1X1)
    # data, training and curves count as done; the pages and the summary are made by their real jobs
    run_snakemake(work, "--touch", *[f"results/plots/{n}_loss.png" for n in names], timeout=200)
    run_snakemake(work, timeout=300)
    report = work / "report.html"
    run_snakemake(work, "--report", str(report), timeout=300)

    text = report.read_text()
    pages = embedded_pages(text)
    run_pages = {n: p for n, p in pages.items() if "<h2>Resolved settings</h2>" in p}
    assert len(run_pages) == N_RUNS and "summary.html" in pages
    for html_page in run_pages.values():
        assert "<svg" in html_page and "data:image/png" not in html_page and "train.learning_rate" in html_page
        assert len(html_page) < 12_000
    assert "data:image/png" not in text  # the curve PNGs are files beside the report, not items in it
    # Snakemake's own scripts and styles are ~3.1 MB; each run adds its page, base64-encoded (4/3)
    assert report.stat().st_size < 3_300_000 + N_RUNS * 16_000
