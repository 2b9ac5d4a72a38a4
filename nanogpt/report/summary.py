"""One table of every run and evaluation (CSV, Markdown, HTML), loss-curve plots, and the GPT-2 baseline table.

Used by `nanogpt summary table|curve|baselines` (nanogpt/cli.py), which the report rules run. pandas and
matplotlib are imported inside the functions so that `--help` and the tests' imports stay fast.
"""

from __future__ import annotations

import html
import json
import math
import numbers
import os
import sys
from pathlib import Path

from nanogpt import fileio
from nanogpt.report.pages import cell, flat, table, write_page

# nanoGPT README, "baselines": OpenAI GPT-2 checkpoints on OpenWebText (train loss, val loss).
PUBLISHED_OWT = {
    "gpt2": (3.11, 3.12),
    "gpt2-medium": (2.85, 2.84),
    "gpt2-large": (2.66, 2.67),
    "gpt2-xl": (2.56, 2.54),
}
PUBLISHED_PARAMS = {"gpt2": "124M", "gpt2-medium": "350M", "gpt2-large": "774M", "gpt2-xl": "1558M"}
# HellaSwag validation acc_norm of the OpenAI GPT-2 checkpoints: (llm.c's completion-style scoring, which ours
# follows; lm-evaluation-harness's multiple-choice scoring), from llm.c's dev/data/hellaswag.py.
PUBLISHED_HELLASWAG = {"gpt2": (0.2955, 0.3114), "gpt2-xl": (0.4893, 0.5089)}
HELLASWAG_COLUMNS = ["hellaswag_acc_norm", "hellaswag_acc", "hellaswag_items", "hellaswag_limit"]
COLUMNS = ["kind", "model", "dataset", "train_loss", "val_loss", "val_perplexity", "published_train_loss",
           "published_val_loss", *HELLASWAG_COLUMNS, "params", "iters", "eval_iters", "batch_size", "block_size", "tokens_per_sec",
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
        "device": m.get("device"), "dtype": m.get("dtype"), "file": str(path), "settings": cfg,
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


def hellaswag_results(root: Path) -> dict[str, dict]:
    """model -> its HellaSwag result under results/evals/: a full one before a `limit`ed one, else the last
    by file name."""
    found: dict[str, dict] = {}
    for path in sorted(root.glob("evals/*.json")):
        e = _read_json(path)
        if not e or e.get("task") != "hellaswag" or not isinstance(e.get("model"), str):
            continue
        e["file"] = str(path)
        old = found.get(e["model"])
        if old is None or not e.get("limit") or old.get("limit"):
            found[e["model"]] = e
    return found


def add_hellaswag(rows: list[dict], results: dict[str, dict]) -> list[dict]:
    """HellaSwag beside val loss: on every row of the same model, else on a row of its own."""
    def columns(e: dict) -> dict:
        return {"hellaswag_acc_norm": e.get("acc_norm"), "hellaswag_acc": e.get("acc"),
                "hellaswag_items": e.get("items"), "hellaswag_limit": e.get("limit")}

    for row in rows:
        if row["model"] in results:
            row.update(columns(results[row["model"]]))
    shown = {row["model"] for row in rows}
    own = [{"kind": "hellaswag", "model": m, "dataset": "hellaswag", **columns(e), "params": e.get("params"),
            "device": e.get("device"), "dtype": e.get("dtype"), "wall_time_s": e.get("wall_time_s"), "file": e["file"]}
           for m, e in results.items() if m not in shown]
    return rows + own


# Settings that have a column of their own already.
OWN_COLUMN = {"dataset", "train.batch_size", "train.eval_iters", "model.block_size"}


def differing_settings(configs: list[dict]) -> dict[str, str]:
    """{column: setting} for every resolved setting whose value differs between these runs: the columns that say
    how the runs shown differ. A column is named by the setting's last part where that is unambiguous
    (`learning_rate`), else in full (`train.dropout` beside `model.dropout`)."""
    flats = [dict(flat(c)) for c in configs]
    keys = sorted({k for f in flats for k in f} - OWN_COLUMN)
    differ = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flats}) > 1]
    short = [k.rsplit(".", 1)[-1] for k in differ]
    return {(s if short.count(s) == 1 and s not in COLUMNS else k): k for s, k in zip(short, differ, strict=True)}


def collect(results: str | os.PathLike = "results"):
    """Every run's metrics.json and every eval JSON under `results` as one DataFrame (runs first), with a column
    for each setting that differs between the runs (after `dataset`)."""
    import pandas as pd

    root = Path(results)
    runs = [r for p in sorted(root.glob("runs/*/metrics.json")) if (r := run_row(p))]
    configs = [r.pop("settings") for r in runs]
    settings = differing_settings(configs)
    for r, cfg in zip(runs, configs, strict=True):
        values = dict(flat(cfg))
        r.update({col: _plain(values.get(key)) for col, key in settings.items()})
    rows = runs + [r for p in sorted(root.glob("eval/*/*.json")) if (r := eval_row(p))]
    rows = add_hellaswag(rows, hellaswag_results(root))
    at = COLUMNS.index("dataset") + 1
    df = pd.DataFrame(rows, columns=COLUMNS[:at] + list(settings) + COLUMNS[at:])
    df.attrs["setting_columns"] = settings  # column -> setting, for those that differ
    return df


def _plain(v: object) -> object:
    """A setting as one table cell: lists and such as their JSON text."""
    return v if v is None or isinstance(v, bool | int | float | str) else json.dumps(v)


def to_markdown(df, columns: list[str] | None = None) -> str:
    """A GitHub Markdown table (pandas' to_markdown needs `tabulate`, which we do not depend on)."""
    cols = [c for c in (columns or list(df.columns)) if c in df.columns and df[c].notna().any()]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(cell(row[c]).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_table(results: str | os.PathLike, csv: str | os.PathLike, md: str | os.PathLike) -> int:
    """summary.csv/.md/.html from every result on disk."""
    from nanogpt.tracking import remove_old_experiment

    df = collect(results)
    remove_old_experiment(Path(results) / "runs")
    with fileio.atomic_path(csv) as tmp:
        df.to_csv(tmp, index=False)
    shown = [c for c in df.columns if c != "file"]
    body = to_markdown(for_display(df), shown) if len(df) else "_no runs or evaluations yet_\n"
    fileio.write_text(md, "# nanogpt-workflow summary\n\nLosses are mean cross-entropy (nats/token). "
                      "`published_*`: nanoGPT README's GPT-2 baselines on OpenWebText. " + HELLASWAG_NOTE + "\n\n"
                      + body)
    write_html(for_display(df), Path(md).with_suffix(".html"), results)  # what `snakemake --report` shows inline
    return len(df)


def for_display(df):
    """The table as people read it (summary.csv keeps the numbers): `mfu` as a percentage, as nanoGPT logs it,
    and `wall_time_s` with one decimal whatever its size."""
    shown = df.copy()
    formats = {"mfu": lambda v: f"{v * 100:.2f}%", "wall_time_s": lambda v: f"{v:,.1f}"}
    for column, fmt in formats.items():
        if column in shown.columns:
            shown[column] = shown[column].map(lambda v, fmt=fmt: fmt(v) if _is_number(v) else None).astype(object)
    return shown


def _is_number(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


HELLASWAG_NOTE = ("`hellaswag_*`: HellaSwag validation accuracy, completion-style (llm.c's scoring); "
                  "`hellaswag_limit`: scored on the first N items only.")
RUN_COLUMNS = ["model", "dataset", "train_loss", "val_loss", "val_perplexity", *HELLASWAG_COLUMNS, "iters",
               "batch_size", "block_size", "tokens_per_sec", "mfu", "wall_time_s", "device", "dtype"]
EVAL_COLUMNS = ["model", "dataset", "train_loss", "val_loss", "val_perplexity", "published_train_loss",
                "published_val_loss", *HELLASWAG_COLUMNS, "eval_iters", "batch_size", "block_size", "device", "dtype"]


def write_html(df, out: str | os.PathLike, results: str | os.PathLike | None = None) -> None:
    """The summary as HTML tables: runs (with the settings that differ between them), evaluations, and nanoGPT's
    GPT-2 baselines when they were evaluated."""
    def section(title: str, rows, columns: list[str]) -> str:
        cols = [c for c in columns if c in rows.columns and rows[c].notna().any()]
        records = [[None if cell(r[c]) == "" else r[c] for c in cols] for _, r in rows.iterrows()]
        return f"<h2>{title}</h2>" + table(records, cols, cell)

    parts = ["<p>Losses are mean cross-entropy (nats/token) over <code>eval_iters</code> random batches per split; "
             "<code>published_*</code>: nanoGPT README's GPT-2 baselines on OpenWebText. "
             f"{html.escape(HELLASWAG_NOTE).replace('`', '')}</p>"]
    runs, evals = df[df["kind"] == "run"], df[df["kind"].isin(["eval", "hellaswag"])]
    if len(runs):
        settings = list(df.attrs.get("setting_columns", {}))
        parts.append(section("Training runs", runs, RUN_COLUMNS[:2] + settings + RUN_COLUMNS[2:]))
    if len(evals):
        parts.append(section("Evaluations", evals, EVAL_COLUMNS))
    gpt2 = evals[evals["published_val_loss"].notna()] if len(evals) else evals
    if len(gpt2):
        parts.append(section("GPT-2 baselines (OpenWebText, beside nanoGPT's README)", gpt2,
                             ["model", "params", "train_loss", "val_loss", "published_train_loss", "published_val_loss"]))
    parts += sweep_sections(Path(results)) if results is not None else []
    if not len(df):
        parts.append("<p>No runs or evaluations yet.</p>")
    write_page(out, "nanogpt-workflow summary", "\n".join(parts))


def sweep_sections(results: Path) -> list[str]:
    """Each sweep summarized on disk (results/sweeps/<sweep>/): its table and its val-loss plot, so the report
    shows every sweep that was run, listed under `targets.sweeps` or not."""
    import pandas as pd

    from nanogpt.report.pages import image

    parts = []
    for csv in sorted(results.glob("sweeps/*/summary.csv")):
        try:
            df = pd.read_csv(csv)
        except (OSError, ValueError) as e:
            print(f"skipping {csv}: {e}", file=sys.stderr)
            continue
        if not parts:
            parts.append("<h2>Sweeps</h2>")
        records = [[None if cell(v) == "" else v for v in row] for row in df.itertuples(index=False)]
        parts += [f"<h3>{html.escape(csv.parent.name)}</h3>", table(records, list(df.columns), cell)]
        if (plot := csv.parent / "val_loss.png").is_file():
            parts.append(image(plot))
    return parts


def baselines(files: list[str], out: str | os.PathLike, hellaswag_files: list[str] | None = None) -> None:
    """The nanoGPT README table with our measured losses beside the published ones, and HellaSwag where
    `hellaswag_files` holds a size's result."""
    lines = ["| model | params | train loss (ours) | val loss (ours) | train loss (nanoGPT) | val loss (nanoGPT) | "
             "HellaSwag acc_norm (ours) | HellaSwag acc_norm (llm.c) | HellaSwag acc_norm (lm-eval-harness) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    scores = {e["model"]: e for f in hellaswag_files or [] if (e := _read_json(Path(f))) and "model" in e}
    for f in files:
        e = _read_json(Path(f)) or {}
        model = e.get("model", Path(f).parent.name)
        pub = PUBLISHED_OWT.get(model, (None, None))
        ours, hs_pub = scores.get(model, {}), PUBLISHED_HELLASWAG.get(model, (None, None))
        limit = f" (first {ours['limit']} items)" if ours.get("limit") else ""
        lines.append(f"| {model} | {PUBLISHED_PARAMS.get(model, cell(e.get('params')))} | "
                     f"{cell(e.get('train_loss'))} | {cell(e.get('val_loss'))} | {cell(pub[0])} | {cell(pub[1])} | "
                     f"{cell(ours.get('acc_norm'))}{limit} | {cell(hs_pub[0])} | {cell(hs_pub[1])} |")
    notes = ["", "HellaSwag: validation acc_norm, completion-style as llm.c scores it (each ending's mean token loss "
                 "given the context); llm.c's numbers from its dev/data/hellaswag.py, lm-evaluation-harness's "
                 "(multiple-choice style) as llm.c quotes them."]
    fileio.write_text(out, "\n".join(lines + notes) + "\n")
