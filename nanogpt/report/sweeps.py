"""A sweep's results, at job time (`nanogpt summary sweep`, the sweep rules): one row per current point, the
val loss against each swept setting, all points' curves, TensorBoard HParams events and, for a scaling study,
the fit of L(N) = E + A * N^-alpha to the final validation losses. The config-time half (expanding a sweep
into runs) is nanogpt/pipeline/sweeps.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from nanogpt.config import resolve_run
from nanogpt.errors import DataError
from nanogpt.fileio import SMALL_JSON_MAX_BYTES, load_json_capped
from nanogpt.pipeline.sweeps import format_value
from nanogpt.report.pages import flat


# ---- the power-law fit ------------------------------------------------------------------------------------------
def _fit_given_e(log_n, loss, e: float) -> tuple[float, float, float]:
    """For a fixed E: least squares of log(L - E) = log A - alpha log N; returns (sse of log L, alpha, A)."""
    import numpy as np

    slope, intercept = np.polyfit(log_n, np.log(loss - e), 1)
    pred = e + np.exp(intercept + slope * log_n)
    return float(np.sum((np.log(pred) - np.log(loss)) ** 2)), float(-slope), float(np.exp(intercept))


def fit_power_law(n: list[float], loss: list[float]) -> dict:
    """Fit L(N) = E + A * N^-alpha: a grid over E in [0, min L), refined 6 times, each with a linear fit in logs.

    Plain numpy (no scipy): for fixed E the model is a line in log(L - E) vs log N, so only E needs a search.
    """
    import numpy as np

    log_n, loss = np.log(np.asarray(n, dtype=float)), np.asarray(loss, dtype=float)
    if len(set(log_n.tolist())) < 3 or not np.all(np.isfinite(loss)) or np.any(loss <= 0):
        raise ValueError(f"need >= 3 distinct sizes and positive finite losses, got N={list(n)}, L={list(loss)}")
    top = float(loss.min()) * (1 - 1e-9)  # E must stay below every loss
    lo, hi, best = 0.0, top, (math.inf, 0.0, 0.0, 0.0)
    for _ in range(7):
        grid = np.linspace(lo, hi, 201)
        for e in grid:
            sse, alpha, a = _fit_given_e(log_n, loss, float(e))
            if sse < best[0]:
                best = (sse, alpha, a, float(e))
        step = (hi - lo) / 200
        lo, hi = max(0.0, best[3] - 2 * step), min(top, best[3] + 2 * step)
    _, alpha, a, e = best
    pred = e + a * np.exp(-alpha * log_n)
    residuals = (loss - pred).tolist()
    return {"alpha": alpha, "E": e, "A": a, "residuals": residuals,
            "rmse": float(np.sqrt(np.mean(np.square(residuals)))), "n": len(loss)}


# ---- job time: table, plots, TensorBoard hparams ------------------------------------------------------------------
COLUMNS = ["params", "iters", "tokens", "val_loss", "best_val_loss", "tokens_per_sec", "wall_time_s", "best"]


def load_rows(spec: dict, runs_dir: str | Path) -> list[dict]:
    """One row per current point: its swept settings and what its metrics.json says; the best one marked."""
    rows = []
    for p in spec["points"]:
        m = load_json_capped(Path(runs_dir) / p["run"] / "metrics.json", SMALL_JSON_MAX_BYTES, "metrics", DataError)
        check_point_result(p, m, Path(runs_dir) / p["run"])
        iters = m.get("iters") or p["max_iters"]
        rows.append({"run": p["run"], **p["settings"], "params": p["params"], "iters": iters,
                     "tokens": iters * p["tokens_per_iter"], "val_loss": m.get("val_loss"),
                     "best_val_loss": m.get("best_val_loss"), "tokens_per_sec": m.get("tokens_per_sec"),
                     "wall_time_s": m.get("wall_time_s"), "best": False})
    finite = [r for r in rows if isinstance(r["val_loss"], int | float) and math.isfinite(r["val_loss"])]
    if finite:
        min(finite, key=lambda r: r["val_loss"])["best"] = True
    return rows


def check_point_result(point: dict, metrics: dict, folder: Path) -> None:
    """A run folder counts as a point's result only when the settings its metrics.json records are the point's:
    a folder left under that name by other settings (by hand, or before the sweep) is refused, not reported."""
    recorded = (metrics.get("provenance") or {}).get("config")
    if not isinstance(recorded, dict):
        raise DataError(f"{str(folder / 'metrics.json')!r} records no settings: expected a run trained by this "
                        f"pipeline for sweep point {point['run']} (remove the folder, then rerun)")
    got = dict(flat(resolve_run(recorded, point["run"]).trajectory()))
    want = dict(flat(point["trajectory"]))
    differ = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    if differ:
        shown = ", ".join(f"{k} {got.get(k, 'default')} (expected {want.get(k, 'default')})" for k in differ[:3])
        raise DataError(f"{str(folder)!r} holds a run of other settings than sweep point {point['run']}: {shown}; "
                        "expected its own training: remove the folder, then rerun")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _axis(ax, values: list) -> tuple[list, list | None]:
    """x positions for a setting's values: numbers as they are (log scale over a decade), others as categories."""
    if all(_is_number(v) for v in values):
        if all(v > 0 for v in values) and max(values) >= 10 * min(values):
            ax.set_xscale("log")
        return values, None
    labels = sorted({format_value(v) for v in values})
    ax.set_xticks(range(len(labels)), labels)
    return [labels.index(format_value(v)) for v in values], labels


def plot_val_loss(rows: list[dict], keys: list[str], out: str | Path) -> dict[str, dict[str, list]]:
    """Final val loss against each swept setting, one line per value of the others; returns the plotted series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), dpi=100, squeeze=False)
    series: dict[str, dict[str, list]] = {}
    for key, ax in zip(keys, axes[0], strict=True):
        done = [r for r in rows if r["val_loss"] is not None]
        xs, _ = _axis(ax, [r[key] for r in done])
        groups: dict[str, list] = {}
        for r, x in zip(done, xs, strict=True):
            label = ", ".join(f"{k}={format_value(r[k])}" for k in keys if k != key) or "all points"
            groups.setdefault(label, []).append((x, r["val_loss"]))
        for label, pts in sorted(groups.items()):
            pts.sort(key=lambda p: p[0])
            ax.plot(*zip(*pts, strict=True), marker="o", label=label)
        series[key] = groups
        ax.set_xlabel(key)
        ax.set_ylabel("final val loss (nats/token)")
        ax.grid(alpha=0.3)
        if len(groups) > 1:
            ax.legend(fontsize="small")
    _save(fig, out)
    return series


def val_seconds(run_dir: str | Path) -> dict[int, float]:
    """Iteration -> seconds since the run's first evaluation, for each val-loss point, from the TensorBoard events'
    wall times (a resumed run's pause counts too); empty without events."""
    run_dir = Path(run_dir)
    if not any(run_dir.glob("events.out.tfevents.*")):
        return {}
    from nanogpt.report.curves import load_events

    acc = load_events(run_dir)
    if "loss/val" not in acc.Tags().get("scalars", []):
        return {}
    events = acc.Scalars("loss/val")
    start = min(ev.wall_time for ev in events)
    return {ev.step: ev.wall_time - start for ev in events}


def plot_curves(curves: dict[str, list[tuple[int, float]]], out: str | Path, title: str,
                tokens_per_iter: dict[str, int] | None = None,
                seconds: dict[str, dict[int, float]] | None = None) -> dict[str, list]:
    """The val-loss curves of all points overlaid against iterations, and beside it against tokens
    (`tokens_per_iter` of each run) and wall time (`seconds` of each run's evaluations), where given: the axes on
    which recipes that differ in batch or speed compare. Returns the plotted series by iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_x = [("iteration", lambda run, it: it)]
    if tokens_per_iter:
        axes_x.append(("tokens", lambda run, it: it * tokens_per_iter[run]))
    if seconds:
        axes_x.append(("seconds since the first evaluation", lambda run, it: seconds.get(run, {}).get(it)))
    fig, axes = plt.subplots(1, len(axes_x), figsize=(8 if len(axes_x) == 1 else 6 * len(axes_x), 5), dpi=100,
                             squeeze=False)
    for ax, (label, x_of) in zip(axes[0], axes_x, strict=True):
        for run, points in sorted(curves.items()):
            xy = [(x_of(run, it), v) for it, v in sorted(points)]
            xy = [(x, v) for x, v in xy if x is not None]
            if xy:
                ax.plot(*zip(*xy, strict=True), marker=".", label=run)
        ax.set_xlabel(label)
        ax.set_ylabel("val loss (nats/token)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a curve was drawn on this axis (an x may be unknown for all)
            ax.legend(fontsize="x-small")
    axes[0][0].set_title(title)
    _save(fig, out)
    return {run: sorted(points) for run, points in curves.items() if points}


def plot_scaling(rows: list[dict], fit: dict | None, out: str | Path, title: str) -> dict[str, list]:
    """Final val loss against parameters (log x) with the fitted E + A * N^-alpha; returns the plotted series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    done = sorted((r["params"], r["val_loss"]) for r in rows if r["val_loss"] is not None)
    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    ax.plot(*zip(*done, strict=True), "o", label="runs")
    series = {"points": done}
    if fit:
        n = np.logspace(math.log10(done[0][0]) - 0.1, math.log10(done[-1][0]) + 0.1, 100)
        curve = fit["E"] + fit["A"] * n ** -fit["alpha"]
        ax.plot(n, curve, "-", label=f"E + A N^-α: α={fit['alpha']:.3f}, E={fit['E']:.3f}, A={fit['A']:.3g}")
        if fit["E"] > 0:
            ax.axhline(fit["E"], ls=":", color="gray", label="E (irreducible)")
        series["fit"] = list(zip(n.tolist(), curve.tolist(), strict=True))
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters N = 12 n_layer n_embd²")
    ax.set_ylabel("final val loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    _save(fig, out)
    return series


def _save(fig, out: str | Path) -> None:
    import matplotlib.pyplot as plt

    from nanogpt import fileio

    fig.tight_layout()
    with fileio.atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_hparams(rows: list[dict], keys: list[str], tb_dir: str | Path) -> int:
    """One TensorBoard HParams event per point (tb/<point>): the swept settings and its final/best val loss."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    Path(tb_dir).mkdir(parents=True, exist_ok=True)
    written = 0
    for r in rows:
        if r["val_loss"] is None:
            continue
        hp = {k: r[k] if isinstance(r[k], int | float | str | bool) else format_value(r[k]) for k in keys}
        hp["params"] = r["params"]
        metrics = {"hparam/val_loss": float(r["val_loss"]), "hparam/best_val_loss": float(r["best_val_loss"])}
        with SummaryWriter(log_dir=str(Path(tb_dir) / r["run"])) as w:
            for summary in hparams(hp, metrics):
                w.file_writer.add_summary(summary)
            for tag, value in metrics.items():
                w.add_scalar(tag, value)
        written += 1
    return written


def _markdown(spec: dict, rows: list[dict], fit: dict | None) -> str:
    """summary.md: the table (best point in bold), the fit for scaling sweeps, and the plots."""
    import pandas as pd

    from nanogpt.report.summary import to_markdown

    df = pd.DataFrame([{**r, **{k: format_value(r[k]) for k in spec["keys"]},
                        "run": f"**{r['run']}**" if r["best"] else r["run"], "best": "best" if r["best"] else ""}
                       for r in rows], columns=["run", *spec["keys"], *COLUMNS])
    scaling = spec.get("scaling")
    design = (f"scaling study at {next(iter(scaling))} = {format_value(next(iter(scaling.values())))}"
              if scaling else "grid")
    text = (f"# Sweep {spec['sweep']}\n\n{len(rows)} points around run `{spec['base']}` ({design}), swept: "
            f"{', '.join(spec['keys'])}. Losses are mean cross-entropy (nats/token) at the last iteration (val_loss) "
            "and the lowest seen (best_val_loss); params = 12 n_layer n_embd² (non-embedding); the best point "
            "(lowest final val loss) is in bold.\n\n" + to_markdown(df) + "\n")
    if scaling:
        text += _fit_markdown(rows, fit)
        text += "\n![val loss against parameters](scaling.png)\n"
    return text + "\n![final val loss against each setting](val_loss.png)\n\n![val-loss curves](curves.png)\n"


def _fit_markdown(rows: list[dict], fit: dict | None) -> str:
    if not fit:
        return "## Fit L(N) = E + A N^-alpha\n\nnot enough finished points (need 3 sizes)\n"
    lines = [f"## Fit L(N) = E + A N^-alpha\n\nalpha = {fit['alpha']:.4f}, E = {fit['E']:.4f}, "
             f"A = {fit['A']:.4g}, rmse = {fit['rmse']:.4f} over {fit['n']} points\n",
             "| run | params | val_loss | fitted | residual |", "| --- | --- | --- | --- | --- |"]
    for run, n, loss, res in fit["points"]:
        lines.append(f"| {run} | {n:,} | {loss:.4f} | {loss - res:.4f} | {res:+.4f} |")
    return "\n".join(lines) + "\n"


def summarize(spec: dict, runs_dir: str | Path, out_dir: str | Path) -> dict:
    """Every output of a sweep into out_dir; returns what was plotted and fitted (for tests and the log)."""
    import pandas as pd

    from nanogpt import fileio
    from nanogpt.report.curves import read_curves

    out = Path(out_dir)
    rows = load_rows(spec, runs_dir)
    fit = None
    if spec.get("scaling"):
        done = [r for r in rows if r["val_loss"] is not None]
        if len({r["params"] for r in done}) >= 3:
            fit = fit_power_law([r["params"] for r in done], [r["val_loss"] for r in done])
            fit["points"] = [(r["run"], r["params"], r["val_loss"], res)
                             for r, res in zip(done, fit["residuals"], strict=True)]
        fileio.write_json(out / "fit.json", {"model": "L(N) = E + A * N^-alpha", "N": "12 * n_layer * n_embd^2",
                                             "scaling": spec["scaling"], **(fit or {"alpha": None})})
    with fileio.atomic_path(out / "summary.csv") as tmp:
        pd.DataFrame(rows, columns=["run", *spec["keys"], *COLUMNS]).to_csv(tmp, index=False)
    fileio.write_text(out / "summary.md", _markdown(spec, rows, fit))
    curves = {r["run"]: read_curves(Path(runs_dir) / r["run"]).get("loss/val", []) for r in rows}
    tokens = {p["run"]: p["tokens_per_iter"] for p in spec["points"]}
    seconds = {r["run"]: val_seconds(Path(runs_dir) / r["run"]) for r in rows}
    plotted = {"val_loss": plot_val_loss(rows, spec["keys"], out / "val_loss.png"),
               "curves": plot_curves(curves, out / "curves.png", f"sweep {spec['sweep']}: val loss", tokens,
                                     seconds),
               "seconds": seconds,
               "hparams": write_hparams(rows, spec["keys"], out / "tb"), "rows": rows, "fit": fit}
    if spec.get("scaling"):
        plotted["scaling"] = plot_scaling(rows, fit, out / "scaling.png", f"sweep {spec['sweep']}")
    return plotted
