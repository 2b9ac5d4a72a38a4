"""A run's loss curves: read from its TensorBoard events (or history.jsonl), drawn as a PNG (matplotlib, for
`nanogpt summary curve` and the sweep plots) or as a few-KB inline SVG (for report pages of many runs).

Light to import: tensorboard and matplotlib are imported inside the functions that need them.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path

from nanogpt import fileio


def load_events(folder: str | os.PathLike):
    """A loaded TensorBoard EventAccumulator for the events in `folder`, without TensorBoard's INFO lines
    ("No path found after ...", "Directory watcher advancing ...") on the console."""
    import logging

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def read_curves(run_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Scalar loss series from the run's TensorBoard events (in the run folder, or tb/ for older runs), else its
    history.jsonl."""
    run_dir = Path(run_dir)
    curves: dict[str, list[tuple[int, float]]] = {}
    tb = next((d for d in (run_dir, run_dir / "tb") if any(d.glob("events.out.tfevents.*"))), None)
    if tb is not None:
        acc = load_events(tb)
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


# ---- as a small inline SVG ----------------------------------------------------------------------------------
# The colours and styles of plot_curve (matplotlib's first three), so both plots read alike.
SERIES_STYLE = {"loss/train": ("#1f77b4", 0.5, False), "loss/train_eval": ("#ff7f0e", 1.0, True),
                "loss/val": ("#2ca02c", 1.0, True)}
SVG_W, SVG_H, LEFT, RIGHT, TOP, BOTTOM = 480, 240, 46, 18, 22, 30
MAX_SVG_POINTS = 160  # per series: more than the plot's pixel columns would show


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _thin(points: list[tuple[int, float]], limit: int = MAX_SVG_POINTS) -> list[tuple[int, float]]:
    """Every k-th point (and the last), so a long run's curve stays a few KB."""
    if len(points) <= limit:
        return points
    k = math.ceil(len(points) / limit)
    return points[::k] + ([points[-1]] if (len(points) - 1) % k else [])


def svg_curve(curves: dict[str, list[tuple[int, float]]], title: str) -> str:
    """The run's loss curves as a small inline SVG (integer pixel coordinates): a thumbnail that costs ~3 KB."""
    series = {tag: sorted(points) for tag, points in sorted(curves.items()) if points}
    head = f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {SVG_W} {SVG_H}' width='{SVG_W}' height='{SVG_H}' "
    head += "font-family='sans-serif' font-size='10'>"
    parts = [head, f"<text x='{SVG_W // 2}' y='14' text-anchor='middle' font-size='12'>{html.escape(title)}</text>"]
    if not series:
        parts.append(f"<text x='{SVG_W // 2}' y='{SVG_H // 2}' text-anchor='middle'>no loss events found</text>")
        return "".join(parts) + "</svg>"
    xs = [s for pts in series.values() for s, _ in pts]
    ys = [v for pts in series.values() for _, v in pts if math.isfinite(v)]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y0, y1 = (min(ys), max(ys)) if ys else (0.0, 1.0)
    y0, y1 = (y0 - 0.5, y1 + 0.5) if y1 - y0 < 1e-9 else (y0, y1)
    pw, ph = SVG_W - LEFT - RIGHT, SVG_H - TOP - BOTTOM

    def px(step: float) -> int:
        return round(LEFT + (step - x0) / (x1 - x0) * pw)

    def py(value: float) -> int:
        return round(TOP + (y1 - value) / (y1 - y0) * ph)

    parts.append(f"<rect x='{LEFT}' y='{TOP}' width='{pw}' height='{ph}' fill='none' stroke='#888'/>")
    for t in _nice_ticks(y0, y1):
        parts.append(f"<path d='M{LEFT} {py(t)}h{pw}' stroke='#ddd'/>"
                     f"<text x='{LEFT - 4}' y='{py(t) + 3}' text-anchor='end'>{t:g}</text>")
    for t in _nice_ticks(x0, x1):
        parts.append(f"<text x='{px(t)}' y='{TOP + ph + 12}' text-anchor='middle'>{t:g}</text>")
    parts.append(f"<text x='{LEFT + pw // 2}' y='{SVG_H - 3}' text-anchor='middle'>iteration</text>"
                 f"<text transform='translate(10 {TOP + ph // 2}) rotate(-90)' text-anchor='middle'>loss</text>")
    for i, (tag, points) in enumerate(series.items()):
        color, opacity, markers = SERIES_STYLE.get(tag, ("#555", 1.0, False))
        pts = [(px(s), py(v)) for s, v in _thin(points) if math.isfinite(v)]
        coords = " ".join(f"{x},{y}" for x, y in pts)
        parts.append(f"<polyline points='{coords}' fill='none' stroke='{color}' stroke-opacity='{opacity}'/>")
        if markers and len(pts) <= 40:
            parts.append(f"<g fill='{color}'>" + "".join(f"<circle cx='{x}' cy='{y}' r='2.5'/>" for x, y in pts)
                         + "</g>")
        ly = TOP + 12 + 13 * i
        parts.append(f"<path d='M{SVG_W - RIGHT - 110} {ly - 3}h16' stroke='{color}' stroke-width='2'/>"
                     f"<text x='{SVG_W - RIGHT - 90}' y='{ly}'>{html.escape(tag.removeprefix('loss/'))}</text>")
    return "".join(parts) + "</svg>"
