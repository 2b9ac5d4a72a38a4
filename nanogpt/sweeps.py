"""Sweeps and scaling studies: a grid (or a list) of settings around a base run, expanded into ordinary runs.

Config time (imported by the Snakefile, so nothing heavy at import): `expand_sweeps` turns config.yaml's
`sweeps:` into one run entry per point, named from its values, so the existing train rule trains each point
as a run of its own (its own job, resume, metrics, TensorBoard). Job time (`python -m nanogpt.sweeps
summarize`): the table, the plots, TensorBoard HParams events and, for scaling sweeps, the fit of
L(N) = E + A * N^-alpha to the final validation losses.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from nanogpt.config import (
    LaunchSettings,
    ModelSettings,
    RunConfig,
    TrainSettings,
    _floats_from_strings,
    _suggest,
    apply_override,
    check_name,
    resolve_run,
)
from nanogpt.errors import ConfigError, DataError
from nanogpt.fileio import SMALL_JSON_MAX_BYTES, load_json_capped
from nanogpt.paths import RUNS, SWEEP_DIR

SWEEP_KEYS = ("base", "grid", "points", "fixed", "scaling")
SCALING_KEYS = ("tokens_per_param", "flops")
RESOURCE_KEYS = ("gpus", "cpus_per_task", "mem_mb", "runtime", "slurm_partition", "slurm_extra")
SECTIONS = {"model": ModelSettings, "train": TrainSettings, "launch": LaunchSettings}
DERIVED = ("train.max_iters", "train.lr_decay_iters")  # what a scaling sweep sets from each model size
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9.]+")
SWEEP_FILES = ("summary.csv", "summary.md", "val_loss.png", "curves.png")
SCALING_FILES = ("fit.json", "scaling.png")


def sweep_files(name: str, scaling: bool) -> list[str]:
    """The files the sweep rules write for one sweep (besides the tb/ folder of hparams events)."""
    return [f"{SWEEP_DIR.format(sweep=name)}/{f}" for f in SWEEP_FILES + (SCALING_FILES if scaling else ())]


# ---- config time: expansion and validation ------------------------------------------------------------------
@dataclass
class Point:
    """One run of a sweep: its name, the values that made it, its run entry and its size."""

    run: str
    values: dict[str, Any]  # swept key as written -> value as written
    settings: dict[str, Any]  # every swept key of the sweep -> the resolved value (base's where not swept)
    entry: dict  # a complete `runs:` entry
    params: int  # non-embedding parameters, 12 * n_layer * n_embd^2 (Kaplan et al.'s N)
    tokens_per_iter: int  # batch_size * gradient_accumulation_steps * block_size
    max_iters: int


@dataclass
class Sweep:
    name: str
    base: str
    keys: list[str]  # swept keys as written, sorted
    points: list[Point] = field(default_factory=list)
    scaling: dict | None = None  # {"tokens_per_param": R} or {"flops": C}

    def spec(self) -> dict:
        """What `python -m nanogpt.sweeps summarize` needs (the rule's params: a change reruns the summary)."""
        return {"sweep": self.name, "base": self.base, "keys": self.keys, "scaling": self.scaling,
                "points": [{"run": p.run, "settings": p.settings, "params": p.params,
                            "tokens_per_iter": p.tokens_per_iter, "max_iters": p.max_iters,
                            "trajectory": resolve_run(p.entry, p.run).trajectory()} for p in self.points]}


def canonical_key(key: object, where: str) -> str:
    """`learning_rate` -> `train.learning_rate`; an unknown name is an error that suggests the closest one."""
    if not isinstance(key, str):
        raise ConfigError(f"{where}: setting {key!r} is not a name: expected e.g. learning_rate or train.learning_rate")
    section, _, sub = key.rpartition(".")
    if section == "resources":
        if sub not in RESOURCE_KEYS:
            raise ConfigError(f"{where}: unknown setting {key!r}{_suggest(sub, list(RESOURCE_KEYS))}")
        return key
    if section:
        if section not in SECTIONS:
            raise ConfigError(f"{where}: unknown setting {key!r}: expected one of "
                              f"{', '.join([*SECTIONS, 'resources'])} before the dot")
        names = [f.name for f in fields(SECTIONS[section])]
        if sub not in names:
            raise ConfigError(f"{where}: unknown setting {key!r}{_suggest(sub, names)}")
        return key
    if key in ("dataset", "init_from"):
        return key
    for name, cls in SECTIONS.items():
        if key in {f.name for f in fields(cls)}:
            return f"{name}.{key}"
    known = ["dataset", "init_from"] + [f.name for cls in SECTIONS.values() for f in fields(cls)]
    raise ConfigError(f"{where}: unknown setting {key!r}{_suggest(key, known)}")


def format_value(value: Any) -> str:
    """A value as it appears in a point's name: exact (repr for floats), no '+'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value).replace("e+", "e")
    return str(value)


def point_name(sweep: str, values: dict[str, Any]) -> str:
    """`sweep-key_value-key_value` with keys sorted: readable, independent of the YAML's order.

    Only numbers and plain strings are shown as they are; a value with other characters (or a name over 100
    characters) is cleaned and gets a hash of all the values, so distinct points never share a name.
    """
    parts = [sweep] + [f"{k}_{format_value(values[k])}" for k in sorted(values)]
    name = "-".join(parts)
    plain = all(not isinstance(v, str) or _PLAIN_VALUE.fullmatch(v) for v in values.values())
    if plain and len(name) <= 100:
        return name
    digest = hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)[:89]}-{digest}"


def _scalar(value: Any, where: str) -> Any:
    if isinstance(value, dict | list):
        raise ConfigError(f"{where}={value!r}: expected a single value (number, string, true/false or null)")
    return value


def _grid_points(grid: Any, where: str) -> list[dict]:
    """The product of the grid's value lists, keys sorted (so the YAML's order does not matter)."""
    if grid is None:
        return []
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{where}.grid={grid!r}: expected a mapping of setting -> list of values")
    for key, values in grid.items():
        if not isinstance(values, list):
            raise ConfigError(f"{where}.grid.{key}={values!r}: expected a list of values")
        if not values:
            raise ConfigError(f"{where}.grid.{key} is an empty list: expected at least one value")
        for v in values:
            _scalar(v, f"{where}.grid.{key}[]")
    keys = sorted(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]


def _listed_points(points: Any, where: str) -> list[dict]:
    if points is None:
        return []
    if not isinstance(points, list) or not points:
        raise ConfigError(f"{where}.points={points!r}: expected a non-empty list of mappings setting -> value")
    for i, p in enumerate(points):
        if not isinstance(p, dict) or not p:
            raise ConfigError(f"{where}.points[{i}]={p!r}: expected a non-empty mapping setting -> value")
        for k, v in p.items():
            _scalar(v, f"{where}.points[{i}].{k}")
    return [dict(p) for p in points]


def _check_scaling(scaling: Any, where: str) -> dict | None:
    if scaling is None:
        return None
    if not isinstance(scaling, dict) or len(scaling) != 1 or next(iter(scaling)) not in SCALING_KEYS:
        raise ConfigError(f"{where}.scaling={scaling!r}: expected one of {{tokens_per_param: R}} (tokens = R x "
                          "params) or {flops: C} (tokens = C / (6 x params))")
    key, value = next(iter(_floats_from_strings(scaling).items()))
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigError(f"{where}.scaling.{key}={value!r}: expected a positive number")
    return {key: value}


def _check_keys(fixed: dict, designs: list[dict], scaling: dict | None, where: str) -> None:
    """Known names, each setting given once per point (not as both `n_embd` and `model.n_embd`)."""
    fixed_keys = {canonical_key(k, f"{where}.fixed"): k for k in fixed}
    for values in designs:
        seen = dict(fixed_keys)
        for key in values:
            canon = canonical_key(key, where)
            if canon in seen:
                raise ConfigError(f"{where}: setting {key!r} is given twice (also as {seen[canon]!r}): "
                                  "expected each setting once, in fixed or swept")
            seen[canon] = key
        for canon in DERIVED:
            if scaling and canon in seen:
                raise ConfigError(f"{where}: {seen[canon]!r} is set by the scaling study from each model size: "
                                  "expected it left out of fixed, grid and points")


def _set(entry: dict, key: str, value: Any, name: str) -> None:
    section, _, sub = key.rpartition(".")
    if section == "resources":
        entry.setdefault("resources", {})[sub] = value
    else:
        apply_override(entry, key, value, name)


def _lookup(run: RunConfig, entry: dict, key: str) -> Any:
    section, _, sub = key.rpartition(".")
    if section == "resources":
        return (entry.get("resources") or {}).get(sub)
    return getattr(getattr(run, section), sub) if section else getattr(run, key)


def _check_resources(entry: dict, where: str) -> None:
    for key, value in (entry.get("resources") or {}).items():
        if key.startswith("slurm_"):
            ok = isinstance(value, str)
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= (0 if key == "gpus" else 1)
        if not ok:
            raise ConfigError(f"{where}.resources.{key}={value!r}: expected "
                              f"{'a string' if key.startswith('slurm_') else 'a positive integer'}")


def _iterations(scaling: dict, params: int, tokens_per_iter: int) -> int:
    """Iterations that train on R x N tokens, or on C / 6N tokens (training FLOPs ~ 6 N D)."""
    tokens = scaling["tokens_per_param"] * params if "tokens_per_param" in scaling else scaling["flops"] / (6 * params)
    return max(1, round(tokens / tokens_per_iter))


def _build_point(sweep: str, values: dict, base: dict, fixed: dict, scaling: dict | None, keys: list[str],
                 where: str) -> Point:
    """Base entry + fixed + the point's values (+ iterations from its size), resolved like any run."""
    name = point_name(sweep, values)
    entry = json.loads(json.dumps(base))
    try:
        for key, value in {**fixed, **values}.items():
            _set(entry, canonical_key(key, where), value, name)
        run = resolve_run(entry, name)
        t, m = run.train, run.model
        tokens_per_iter = t.batch_size * t.gradient_accumulation_steps * m.block_size
        params = 12 * m.n_layer * m.n_embd**2
        if scaling:
            iters = _iterations(scaling, params, tokens_per_iter)
            if t.decay_lr and t.warmup_iters >= iters:
                raise ConfigError(f"warmup_iters={t.warmup_iters} is not below its {iters} iterations: expected "
                                  "fewer (set warmup_iters in fixed)")
            entry.setdefault("train", {}).update(max_iters=iters, lr_decay_iters=iters)
            run = resolve_run(entry, name)
        _check_resources(entry, f"runs.{name}")
    except ConfigError as e:
        raise ConfigError(f"{where}: point {name}: {e}") from None
    settings = {k: _lookup(run, entry, canonical_key(k, where)) for k in keys}
    return Point(name, values, settings, entry, params, tokens_per_iter, run.train.max_iters)


def _no_duplicates(points: list[Point], where: str) -> None:
    seen: dict[str, str] = {}
    for p in points:
        spec = json.dumps({"run": resolve_run(p.entry, p.run).to_dict(), "res": p.entry.get("resources")},
                          sort_keys=True)
        if spec in seen or p.run in seen.values():
            other = seen.get(spec, p.run)
            raise ConfigError(f"{where}: points {other!r} and {p.run!r} are the same run: expected distinct points")
        seen[spec] = p.run


def expand_sweep(name: str, spec: Any, runs: dict) -> Sweep:
    """One `sweeps:` entry -> its points as complete run entries; every error is one line, before any job."""
    where = f"sweeps.{name}"
    check_name(name, f"{where}: sweep")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}={spec!r}: expected a mapping with base and grid and/or points")
    for key in spec:
        if key not in SWEEP_KEYS:
            raise ConfigError(f"unknown key {where}.{key}{_suggest(str(key), list(SWEEP_KEYS))}")
    base = spec.get("base")
    if not isinstance(base, str) or base not in runs:
        raise ConfigError(f"{where}.base={base!r}: not a run, expected one of {sorted(runs)}")
    resolve_run(runs[base], base)  # a broken base is reported as itself, not through its points
    fixed = spec.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{where}.fixed={fixed!r}: expected a mapping setting -> value")
    designs = _floats_from_strings(_grid_points(spec.get("grid"), where) + _listed_points(spec.get("points"), where))
    if not designs:
        raise ConfigError(f"{where}: no points: expected a non-empty `grid` and/or `points`")
    scaling = _check_scaling(spec.get("scaling"), where)
    fixed = _floats_from_strings(fixed)
    _check_keys(fixed, designs, scaling, where)
    keys = sorted({k for d in designs for k in d})
    points = [_build_point(name, d, runs[base], fixed, scaling, keys, where) for d in designs]
    _no_duplicates(points, where)
    if scaling and len({p.params for p in points}) < 3:
        raise ConfigError(f"{where}: {len({p.params for p in points})} distinct model size(s): expected at least 3 "
                          "(vary n_layer / n_embd) to fit L(N) = E + A * N^-alpha")
    return Sweep(name, base, keys, points, scaling)


def expand_sweeps(sweeps: Any, runs: dict) -> dict[str, Sweep]:
    """Every sweep; a point may not take the name of a run under `runs:` or of another sweep's point."""
    if not sweeps:
        return {}
    if not isinstance(sweeps, dict):
        raise ConfigError(f"sweeps={sweeps!r}: expected a mapping of sweep name -> sweep")
    out: dict[str, Sweep] = {}
    owner: dict[str, str] = {}
    for name, spec in sweeps.items():
        sweep = expand_sweep(name, spec, runs)
        for p in sweep.points:
            if p.run in runs:
                raise ConfigError(f"sweeps.{name}: point {p.run!r} has the name of a run under `runs`: expected "
                                  "distinct names (rename the run or the sweep)")
            if p.run in owner:
                raise ConfigError(f"sweeps.{name}: point {p.run!r} is also a point of sweep {owner[p.run]!r}: "
                                  "expected distinct names")
            owner[p.run] = name
        out[name] = sweep
    return out


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
    got = _flat(resolve_run(recorded, point["run"]).trajectory())
    want = _flat(point["trajectory"])
    differ = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    if differ:
        shown = ", ".join(f"{k} {got.get(k, 'default')} (expected {want.get(k, 'default')})" for k in differ[:3])
        raise DataError(f"{str(folder)!r} holds a run of other settings than sweep point {point['run']}: {shown}; "
                        "expected its own training: remove the folder, then rerun")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


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
    from nanogpt.curves import load_events

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
        if any(curves.values()):
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

    from nanogpt.summary import to_markdown

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
    from nanogpt.curves import read_curves

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nanogpt.sweeps", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("summarize", help="a sweep's summary.csv/.md, plots, hparams events (and fit.json)")
    sp.add_argument("--spec", required=True, help="the sweep as JSON (Pipeline.sweep_spec)")
    sp.add_argument("--runs-dir", default=RUNS)
    sp.add_argument("--out-dir", required=True)
    args = p.parse_args(argv)
    done = summarize(json.loads(args.spec), args.runs_dir, args.out_dir)
    fit = done["fit"]
    print(f"{len(done['rows'])} points -> {args.out_dir}" + (f"; alpha={fit['alpha']:.4f} E={fit['E']:.4f}"
                                                             if fit else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
