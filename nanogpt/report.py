"""Self-contained HTML pages for `snakemake --report`, which shows HTML (and images) inline but offers CSV,
Markdown and text files only as downloads: the summary tables, one page per run (final numbers, loss curve,
resolved settings) and one per sample."""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from nanogpt import fileio

STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; } td.text, th.text { text-align: left; }
pre { background: #f7f7f7; border: 1px solid #ddd; padding: 0.8em; white-space: pre-wrap; }
img { max-width: 100%; }
</style>"""


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{STYLE}"
            f"</head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def table(rows: Iterable[Sequence[object]], header: Sequence[str], fmt=str) -> str:
    """An HTML table; cells go through `fmt` (numbers right-aligned, text left-aligned) and are escaped."""
    def cell(tag: str, v: object) -> str:
        cls = "" if isinstance(v, int | float) and not isinstance(v, bool) else " class='text'"
        return f"<{tag}{cls}>{html.escape(fmt(v))}</{tag}>"

    head = "".join(f"<th class='text'>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell("td", v) for v in row) + "</tr>\n" for row in rows)
    return f"<table><tr>{head}</tr>\n{body}</table>"


def write_page(out: str | os.PathLike, title: str, body: str, log: str | os.PathLike | None = None) -> None:
    """The page, and a line in the rule's log (a Snakemake `run:` block has no shell redirection)."""
    fileio.write_text(out, page(title, body))
    if log is not None:
        fileio.write_text(log, f"wrote {out}\n")


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{html.escape(path.name)}' src='data:image/png;base64,{data}'>"


def _flat(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for key, value in d.items():
        out += _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else [(prefix + key, value)]
    return out


RUN_NUMBERS = ["iters", "train_loss", "val_loss", "best_val_loss", "last_step_loss", "median_ms_per_iter",
               "tokens_per_sec", "mfu", "wall_time_s", "device", "dtype", "world_size"]


def write_run_page(metrics_path: str | os.PathLike, curve: str | os.PathLike | None, out: str | os.PathLike,
                   title: str, log: str | os.PathLike | None = None) -> None:
    """A run's final numbers, its loss curve and its resolved settings (from metrics.json's provenance)."""
    from nanogpt.summary import _cell as fmt

    m = json.loads(Path(metrics_path).read_text())
    prov = m.get("provenance") or {}
    parts = ["<h2>Final numbers</h2>", table([(k, m.get(k)) for k in RUN_NUMBERS if k in m], ["", "value"], fmt)]
    if curve is not None and Path(curve).is_file():
        parts += ["<h2>Loss curve</h2>", _image(Path(curve))]
    parts += ["<h2>Resolved settings</h2>", table(_flat(prov.get("config") or {}), ["setting", "value"], fmt)]
    data = prov.get("dataset") or {}
    extra = [("git commit", prov.get("git_commit")), ("python", prov.get("python")), ("host", prov.get("host")),
             ("finished at", prov.get("finished_at"))] + _flat({"dataset": data}) + _flat(prov.get("packages") or {})
    parts += ["<h2>Provenance</h2>", table([(k, v) for k, v in extra if v is not None], ["", "value"], fmt)]
    write_page(out, title, "\n".join(parts), log)


def write_sample_page(sample_path: str | os.PathLike, out: str | os.PathLike, title: str,
                      settings: dict | None = None, log: str | os.PathLike | None = None,
                      separator: str = "\n---------------\n") -> None:
    """A sample file's texts, one block each, under the settings that drew them."""
    texts = Path(sample_path).read_text(encoding="utf-8").rstrip("\n").split(separator)
    parts = []
    if settings:
        parts.append(table([(k, json.dumps(v) if isinstance(v, str) else v) for k, v in settings.items()],
                           ["setting", "value"]))
    parts += [f"<h3>Sample {i}</h3><pre>{html.escape(t)}</pre>" for i, t in enumerate(texts, 1)]
    write_page(out, title, "\n".join(parts), log)
