"""Self-contained HTML pages for `snakemake --report`, which shows HTML (and images) inline but offers CSV,
Markdown and text files only as downloads: the summary tables, one page per run (final numbers, loss curve,
resolved settings) and one per sample.

The report embeds every page as base64, so an image inside a page is encoded twice (4/3 x 4/3 its size). A
pipeline with up to INLINE_PNG_MAX_RUNS targeted runs shows each run's full loss-curve PNG; a larger one draws
each curve as a small inline SVG instead (a few KB), so the report grows by about 13 KB per run (benchmarks/report_scaling.py).

Run by the report rules as `nanogpt summary run-page|sample-page` (a light process: no torch).
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from nanogpt import fileio

# Above this many targeted runs, run pages carry an SVG thumbnail of the curve rather than the PNG.
INLINE_PNG_MAX_RUNS = 20

STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; } td.text, th.text { text-align: left; }
pre { background: #f7f7f7; border: 1px solid #ddd; padding: 0.8em; white-space: pre-wrap; }
img, svg { max-width: 100%; }
</style>"""


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{STYLE}"
            f"</head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def table(rows: Iterable[Sequence[object]], header: Sequence[str], fmt=str) -> str:
    """An HTML table; cells go through `fmt` (numbers right-aligned, text left-aligned) and are escaped."""
    def td(v: object) -> str:
        cls = "" if isinstance(v, int | float) and not isinstance(v, bool) else " class='text'"
        return f"<td{cls}>{html.escape(fmt(v))}</td>"

    head = "".join(f"<th class='text'>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(td(v) for v in row) + "</tr>\n" for row in rows)
    return f"<table><tr>{head}</tr>\n{body}</table>"


def cell(v: object) -> str:
    """A table cell as text: blank for missing, thousands separators for counts, 4 decimals for losses."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float) and v.is_integer() and abs(v) >= 1:  # counts that pandas made float by a gap
        return f"{int(v):,}"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def write_page(out: str | os.PathLike, title: str, body: str) -> None:
    fileio.write_text(out, page(title, body))


def image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{html.escape(path.name)}' src='data:image/png;base64,{data}'>"


# ---- pages -----------------------------------------------------------------------------------------------------
def flat(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for key, value in d.items():
        out += flat(value, f"{prefix}{key}.") if isinstance(value, dict) else [(prefix + key, value)]
    return out


RUN_NUMBERS = ["iters", "train_loss", "val_loss", "best_val_loss", "last_step_loss", "median_ms_per_iter",
               "tokens_per_sec", "mfu", "wall_time_s", "device", "dtype", "world_size"]
RUN_INTRO = ("<p>From the run's <code>metrics.json</code> and events: the settings are config.yaml's entry with "
             "every default filled in.</p>")


def curve_html(curve_png: str | os.PathLike | None, run_dir: str | os.PathLike | None, title: str) -> str:
    """The full PNG when given, else an SVG thumbnail drawn from the run folder's events (or history.jsonl)."""
    if curve_png is not None and Path(curve_png).is_file():
        return image(Path(curve_png))
    if run_dir is not None:
        from nanogpt.report.curves import read_curves, svg_curve

        return svg_curve(read_curves(run_dir), title)
    return ""


def write_run_page(metrics_path: str | os.PathLike, out: str | os.PathLike, title: str,
                   curve_png: str | os.PathLike | None = None, run_dir: str | os.PathLike | None = None) -> None:
    """A run's final numbers, its loss curve and its resolved settings (from metrics.json's provenance)."""
    m = json.loads(Path(metrics_path).read_text())
    prov = m.get("provenance") or {}
    parts = [RUN_INTRO, "<h2>Final numbers</h2>",
             table([(k, m.get(k)) for k in RUN_NUMBERS if k in m], ["", "value"], cell)]
    if curve := curve_html(curve_png, run_dir, title):
        parts += ["<h2>Loss curve</h2>", curve]
    parts += ["<h2>Resolved settings</h2>", table(flat(prov.get("config") or {}), ["setting", "value"], cell)]
    data = prov.get("dataset") or {}
    extra = [("git commit", prov.get("git_commit")), ("python", prov.get("python")), ("host", prov.get("host")),
             ("finished at", prov.get("finished_at"))] + flat({"dataset": data}) + flat(prov.get("packages") or {})
    parts += ["<h2>Provenance</h2>", table([(k, v) for k, v in extra if v is not None], ["", "value"], cell)]
    write_page(out, title, "\n".join(parts))


def write_sample_page(sample_path: str | os.PathLike, out: str | os.PathLike, title: str,
                      settings: dict | None = None, separator: str = "\n---------------\n") -> None:
    """A sample file's texts, one block each, under the settings that drew them."""
    texts = Path(sample_path).read_text(encoding="utf-8").rstrip("\n").split(separator)
    parts = []
    if settings:
        parts.append(table([(k, json.dumps(v) if isinstance(v, str) else v) for k, v in settings.items()],
                           ["setting", "value"]))
    parts += [f"<h3>Sample {i}</h3><pre>{html.escape(t)}</pre>" for i, t in enumerate(texts, 1)]
    write_page(out, title, "\n".join(parts))
