"""One table of every run and evaluation (CSV, Markdown, HTML), loss-curve plots, and the GPT-2 baseline table.

Used by `nanogpt summary table|curve|baselines` (nanogpt/cli.py), which the report rules run. pandas and
matplotlib are imported inside the functions so that `--help` and the tests' imports stay fast.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from nanogpt import fileio

# nanoGPT README, "baselines": OpenAI GPT-2 checkpoints on OpenWebText (train loss, val loss).
PUBLISHED_OWT = {
    "gpt2": (3.11, 3.12),
    "gpt2-medium": (2.85, 2.84),
    "gpt2-large": (2.66, 2.67),
    "gpt2-xl": (2.56, 2.54),
}
PUBLISHED_PARAMS = {"gpt2": "124M", "gpt2-medium": "350M", "gpt2-large": "774M", "gpt2-xl": "1558M"}
COLUMNS = ["kind", "model", "dataset", "train_loss", "val_loss", "val_perplexity", "published_train_loss",
           "published_val_loss", "params", "iters", "eval_iters", "batch_size", "block_size", "tokens_per_sec",
           "mfu", "wall_time_s", "device", "dtype", "file"]


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"skipping {path}: {e}", file=sys.stderr)
        return None
    return data if isinstance(data, dict) else None


def run_row(path: Path) -> dict | None:
    m = _read_json(path)
    if m is None:
        return None
    cfg = (m.get("provenance") or {}).get("config") or {}
    model = cfg.get("model") or {}
    val = m.get("val_loss")
    return {
        "kind": "run", "model": path.parent.name, "dataset": cfg.get("dataset"),
        "train_loss": m.get("train_loss"), "val_loss": val,
        "val_perplexity": math.exp(val) if isinstance(val, (int, float)) and val < 50 else None,
        "params": m.get("params"), "iters": m.get("iters"), "eval_iters": (cfg.get("train") or {}).get("eval_iters"),
        "batch_size": (cfg.get("train") or {}).get("batch_size"), "block_size": model.get("block_size"),
        "tokens_per_sec": m.get("tokens_per_sec"), "mfu": m.get("mfu"), "wall_time_s": m.get("wall_time_s"),
        "device": m.get("device"), "dtype": m.get("dtype"), "file": str(path),
    }


def eval_row(path: Path) -> dict | None:
    e = _read_json(path)
    if e is None:
        return None
    model, dataset = e.get("model", path.parent.name), e.get("dataset", path.stem)
    published = PUBLISHED_OWT.get(model) if dataset == "openwebtext" else None
    row = {k: e.get(k) for k in COLUMNS if k in e}
    row.update(kind="eval", model=model, dataset=dataset, file=str(path),
               published_train_loss=published[0] if published else None,
               published_val_loss=published[1] if published else None)
    return row


def collect(results: str | os.PathLike = "results"):
    """Every run's metrics.json and every eval JSON under `results` as one DataFrame (runs first)."""
    import pandas as pd

    root = Path(results)
    rows = [r for p in sorted(root.glob("runs/*/metrics.json")) if (r := run_row(p))]
    rows += [r for p in sorted(root.glob("eval/*/*.json")) if (r := eval_row(p))]
    return pd.DataFrame(rows, columns=COLUMNS)


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float) and v.is_integer() and abs(v) >= 1:  # counts that pandas made float by a gap
        return f"{int(v):,}"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v).replace("|", "\\|")


def to_markdown(df, columns: list[str] | None = None) -> str:
    """A GitHub Markdown table (pandas' to_markdown needs `tabulate`, which we do not depend on)."""
    cols = [c for c in (columns or list(df.columns)) if c in df.columns and df[c].notna().any()]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(_cell(row[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_table(results: str | os.PathLike, csv: str | os.PathLike, md: str | os.PathLike) -> int:
    df = collect(results)
    with fileio.atomic_path(csv) as tmp:
        df.to_csv(tmp, index=False)
    shown = [c for c in COLUMNS if c != "file"]
    body = to_markdown(df, shown) if len(df) else "_no runs or evaluations yet_\n"
    fileio.write_text(md, "# nanogpt-workflow summary\n\nLosses are mean cross-entropy (nats/token). "
                      "`published_*`: nanoGPT README's GPT-2 baselines on OpenWebText.\n\n" + body)
    write_html(df, Path(md).with_suffix(".html"))  # what `snakemake --report` shows inline
    return len(df)


RUN_COLUMNS = ["model", "dataset", "train_loss", "val_loss", "val_perplexity", "iters", "batch_size", "block_size",
               "tokens_per_sec", "mfu", "wall_time_s", "device", "dtype"]
EVAL_COLUMNS = ["model", "dataset", "train_loss", "val_loss", "val_perplexity", "published_train_loss",
                "published_val_loss", "eval_iters", "batch_size", "block_size", "device", "dtype"]


def write_html(df, out: str | os.PathLike) -> None:
    """The summary as HTML tables: runs, evaluations, and nanoGPT's GPT-2 baselines when they were evaluated."""
    from nanogpt.report import table, write_page

    def section(title: str, rows, columns: list[str]) -> str:
        cols = [c for c in columns if c in rows.columns and rows[c].notna().any()]
        records = [[None if _cell(r[c]) == "" else r[c] for c in cols] for _, r in rows.iterrows()]
        return f"<h2>{title}</h2>" + table(records, cols, lambda v: _cell(v) if v is not None else "")

    parts = ["<p>Losses are mean cross-entropy (nats/token) over <code>eval_iters</code> random batches per split; "
             "<code>published_*</code>: nanoGPT README's GPT-2 baselines on OpenWebText.</p>"]
    runs, evals = df[df["kind"] == "run"], df[df["kind"] == "eval"]
    if len(runs):
        parts.append(section("Training runs", runs, RUN_COLUMNS))
    if len(evals):
        parts.append(section("Evaluations", evals, EVAL_COLUMNS))
    gpt2 = evals[evals["published_val_loss"].notna()] if len(evals) else evals
    if len(gpt2):
        parts.append(section("GPT-2 baselines (OpenWebText, beside nanoGPT's README)", gpt2,
                             ["model", "params", "train_loss", "val_loss", "published_train_loss", "published_val_loss"]))
    if not len(df):
        parts.append("<p>No runs or evaluations yet.</p>")
    write_page(out, "nanogpt-workflow summary", "\n".join(parts))


def baselines(files: list[str], out: str | os.PathLike) -> None:
    """The nanoGPT README table with our measured losses beside the published ones."""
    lines = ["| model | params | train loss (ours) | val loss (ours) | train loss (nanoGPT) | val loss (nanoGPT) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for f in files:
        e = _read_json(Path(f)) or {}
        model = e.get("model", Path(f).parent.name)
        pub = PUBLISHED_OWT.get(model, (None, None))
        lines.append(f"| {model} | {PUBLISHED_PARAMS.get(model, _cell(e.get('params')))} | "
                     f"{_cell(e.get('train_loss'))} | {_cell(e.get('val_loss'))} | {_cell(pub[0])} | {_cell(pub[1])} |")
    fileio.write_text(out, "\n".join(lines) + "\n")


def read_curves(run_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Scalar loss series from the run's TensorBoard events (in the run folder, or tb/ for older runs), else its
    history.jsonl."""
    run_dir = Path(run_dir)
    curves: dict[str, list[tuple[int, float]]] = {}
    tb = next((d for d in (run_dir, run_dir / "tb") if any(d.glob("events.out.tfevents.*"))), None)
    if tb is not None:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if tag.startswith("loss"):
                curves[tag] = [(ev.step, ev.value) for ev in acc.Scalars(tag)]
    if not curves and (run_dir / "history.jsonl").is_file():
        rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines() if line.strip()]
        curves["loss/train"] = [(r["iter"], r["loss"]) for r in rows if "loss" in r]
    return curves


def plot_curve(run_dir: str | os.PathLike, out: str | os.PathLike, title: str | None = None) -> int:
    """Write the run's loss curves as a PNG; returns the number of points plotted (0: an empty, labelled plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = read_curves(run_dir)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    styles = {"loss/train": dict(alpha=0.5, lw=1), "loss/train_eval": dict(marker="o"), "loss/val": dict(marker="o")}
    for tag, points in sorted(curves.items()):
        steps, values = zip(*sorted(points), strict=True) if points else ((), ())
        ax.plot(steps, values, label=tag.removeprefix("loss/"), **styles.get(tag, {}))
    if not curves:
        ax.text(0.5, 0.5, "no loss events found", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title or Path(run_dir).name)
    if curves:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with fileio.atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return sum(len(p) for p in curves.values())

