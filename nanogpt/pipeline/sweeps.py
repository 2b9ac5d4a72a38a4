"""Sweeps and scaling studies: a grid (or a list) of settings around a base run, expanded into ordinary runs.

Config time (imported by the Snakefile, so nothing heavy at import): `expand_sweeps` turns config.yaml's
`sweeps:` into one run entry per point, named from its values, so the existing train rule trains each point
as a run of its own (its own job, resume, metrics, TensorBoard). The job-time half (the table, the plots,
the HParams events and the power-law fit) is nanogpt/report/sweeps.py, `nanogpt summary sweep`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

from nanogpt.config import RunConfig, apply_override, resolve_resources, resolve_run
from nanogpt.configfile import floats_from_strings
from nanogpt.errors import ConfigError
from nanogpt.names import check_name, suggest
from nanogpt.paths import SWEEP_DIR
from nanogpt.settings import RUN_SECTIONS, Resources

SWEEP_KEYS = ("base", "grid", "points", "fixed", "scaling")
SCALING_KEYS = ("tokens_per_param", "flops")
RESOURCE_KEYS = tuple(f.name for f in fields(Resources))
SECTIONS = RUN_SECTIONS
DERIVED = ("train.max_iters", "train.lr_decay_iters")  # what a scaling sweep sets from each model size
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9.]+")
# What a sweep job writes, by the sweep rules' output names (besides the tb/ folder of hparams events).
SWEEP_FILES = {"csv": "summary.csv", "md": "summary.md", "val_loss": "val_loss.png", "curves": "curves.png"}
SCALING_FILES = {"fit": "fit.json", "scaling": "scaling.png"}


def sweep_files(name: str, scaling: bool) -> list[str]:
    """The files the sweep rules write for one sweep (besides the tb/ folder of hparams events)."""
    files = SWEEP_FILES | (SCALING_FILES if scaling else {})
    return [f"{SWEEP_DIR.format(sweep=name)}/{f}" for f in files.values()]


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
        """What `nanogpt summary sweep` needs (the rule's params: a change reruns the summary)."""
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
            raise ConfigError(f"{where}: unknown setting {key!r}{suggest(sub, list(RESOURCE_KEYS))}")
        return key
    if section:
        if section not in SECTIONS:
            raise ConfigError(f"{where}: unknown setting {key!r}: expected one of "
                              f"{', '.join([*SECTIONS, 'resources'])} before the dot")
        names = [f.name for f in fields(SECTIONS[section])]
        if sub not in names:
            raise ConfigError(f"{where}: unknown setting {key!r}{suggest(sub, names)}")
        return key
    if key in ("dataset", "init_from"):
        return key
    for name, cls in SECTIONS.items():
        if key in {f.name for f in fields(cls)}:
            return f"{name}.{key}"
    known = ["dataset", "init_from"] + [f.name for cls in SECTIONS.values() for f in fields(cls)]
    raise ConfigError(f"{where}: unknown setting {key!r}{suggest(key, known)}")


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
    key, value = next(iter(floats_from_strings(scaling).items()))
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
        resolve_resources(entry, f"runs.{name}")
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
    check_name(name, "sweeps: sweep")  # the raw name only as its repr: it may hold a line break
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}={spec!r}: expected a mapping with base and grid and/or points")
    for key in spec:
        if key not in SWEEP_KEYS:
            raise ConfigError(f"unknown key {where}.{key}{suggest(str(key), list(SWEEP_KEYS))}")
    base = spec.get("base")
    if not isinstance(base, str) or base not in runs:
        raise ConfigError(f"{where}.base={base!r}: not a run, expected one of {sorted(runs)}")
    resolve_run(runs[base], base)  # a broken base is reported as itself, not through its points
    fixed = spec.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{where}.fixed={fixed!r}: expected a mapping setting -> value")
    designs = floats_from_strings(_grid_points(spec.get("grid"), where) + _listed_points(spec.get("points"), where))
    if not designs:
        raise ConfigError(f"{where}: no points: expected a non-empty `grid` and/or `points`")
    scaling = _check_scaling(spec.get("scaling"), where)
    fixed = floats_from_strings(fixed)
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
