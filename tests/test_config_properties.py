"""Property-based checks of every way settings come in: config entries, names, numbers, nestings, CLI flags.

The property: an input is accepted (and the Snakefile's regexes match what it names), or refused with ONE line
(a ConfigError) that names the setting or the value, and nothing is written. Anything else a generated input
raises is a bug the example shows. The suite runs few examples (derandomized: the same ones every run);
benchmarks/fuzz_config.py runs many more by setting NANOGPT_FUZZ_SCALE.
"""

from __future__ import annotations

import copy
import json
import os
import re

import yaml
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from snakemake.io import regex_from_filepattern, update_wildcard_constraints

from conftest import make_pipeline, run_snakemake, tiny_config
from nanogpt import paths
from nanogpt.cli import _spec_json
from nanogpt.config import resolve_run
from nanogpt.configfile import parse_overrides
from nanogpt.errors import ConfigError
from nanogpt.fileio import check_config_files
from nanogpt.names import NAME_PATTERN, check_name
from nanogpt.pipeline.entries import Pipeline
from nanogpt.pipeline.schema import check_against_schema, check_top_level_keys

SCALE = int(os.environ.get("NANOGPT_FUZZ_SCALE", "1"))


def examples(n: int) -> settings:
    """n generated examples in the suite, n x NANOGPT_FUZZ_SCALE in the benchmark; n=0: the explicit examples only
    in the suite, NANOGPT_FUZZ_SCALE generated ones in the benchmark."""
    count = n * SCALE if n else (SCALE if SCALE > 1 else 0)
    phases = tuple(Phase) if count else (Phase.explicit,)
    return settings(max_examples=max(1, count), deadline=None, derandomize=SCALE == 1, database=None,
                    phases=phases, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def one_line_refusal(error: ConfigError, *names: object) -> str:
    """The refusal is one line and names one of `names` (a setting's key or the value given)."""
    message = str(error)
    assert "\n" not in message and message.strip(), message
    shown = [str(n) for n in names] + [repr(n) for n in names]
    assert any(s and s in message for s in shown), (message, names)
    return message


def pipeline_verdict(config: dict) -> str | None:
    """What the Snakefile decides before any job, in-process and in its order: None (accepted) or the error."""
    try:
        check_top_level_keys(config)
        p = Pipeline(config)
        p.check()
        check_against_schema(p.typed_config())
        p.target_files()
    except ConfigError as e:
        return str(e)
    return None


# ---- names: the name rule and the Snakefile's wildcards agree ------------------------------------------------

WILDCARD_PATHS = [v for k, v in vars(paths).items() if k.isupper() and isinstance(v, str) and "{" in v]
names = st.one_of(st.from_regex(NAME_PATTERN, fullmatch=True),
                  st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=110),
                  st.text(alphabet="aZ09._-/ $;'\"\n{}*", max_size=12))


@given(name=names)
@examples(100)
def test_name_rule_agrees_with_the_wildcards(name):
    """A name is accepted exactly when every path pattern of the pipeline, under the Snakefile's wildcard
    constraints, matches the path made from it and gives the name back."""
    try:
        check_name(name, "runs.x: run")
        accepted = True
    except ConfigError as e:
        one_line_refusal(e, name)
        accepted = False
    constraints = {w: NAME_PATTERN for w in ("dataset", "run", "sample", "model", "sweep", "eval", "file")}
    for pattern in WILDCARD_PATHS:
        wildcards = re.findall(r"{(\w+)}", pattern)
        regex = regex_from_filepattern(update_wildcard_constraints(pattern, constraints, {}))
        match = re.match(regex, pattern.format(**dict.fromkeys(wildcards, name)))
        assert bool(match and set(match.groupdict().values()) == {name}) == accepted, (pattern, name)


@given(name=names, section=st.sampled_from(["runs", "samples", "datasets"]))
@examples(15)
def test_a_renamed_entry_is_planned_or_refused_in_one_line(name, section, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tiny_config()
    old = {"runs": "tiny", "samples": "tiny", "datasets": "shakespeare_char"}[section]
    config[section] = {name: config[section].pop(old)}
    if section == "runs":
        config["targets"]["runs"] = [name]
        config["samples"]["tiny"]["model"] = name
    elif section == "samples":
        config["targets"]["samples"] = [name]
    else:
        config["runs"]["tiny"]["dataset"] = name
    verdict = pipeline_verdict(config)
    if re.fullmatch(NAME_PATTERN, name):
        assert verdict is None, verdict
    else:
        one_line_refusal(ConfigError(verdict), name)
    assert list(tmp_path.iterdir()) == []


# ---- numbers and values of every setting ---------------------------------------------------------------------

RUN_SETTINGS = {
    "train": ["max_iters", "batch_size", "learning_rate", "weight_decay", "beta1", "beta2", "grad_clip",
              "warmup_iters", "lr_decay_iters", "min_lr", "eval_interval", "eval_iters", "seed",
              "gradient_accumulation_steps", "keep_checkpoints", "decay_lr", "dtype", "device"],
    "model": ["n_layer", "n_head", "n_embd", "block_size", "dropout", "bias", "vocab_size"],
}
SAMPLE_SETTINGS = ["num_samples", "max_new_tokens", "temperature", "top_k", "seed", "start"]
values = st.one_of(
    st.integers(min_value=-2**70, max_value=2**70),
    st.integers(min_value=-3, max_value=70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.none(), st.text(max_size=20),
    st.sampled_from(["1e-3", "6e-4", "nan", "inf", "-1", "0x10", "1_000", "cuda", "float16"]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@given(section=st.sampled_from(["train", "model", "sample"]), data=st.data(), value=values)
@examples(30)
def test_a_setting_is_accepted_or_refused_in_one_line(section, data, value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tiny_config()
    if section == "sample":
        key = data.draw(st.sampled_from(SAMPLE_SETTINGS))
        config["samples"]["tiny"][key] = value
    else:
        key = data.draw(st.sampled_from(RUN_SETTINGS[section]))
        config["runs"]["tiny"][section][key] = value
    config = yaml.safe_load(yaml.safe_dump(config))  # as config.yaml gives it
    verdict = pipeline_verdict(config)
    if verdict is not None:
        one_line_refusal(ConfigError(verdict), key)
    assert list(tmp_path.iterdir()) == []


# ---- nestings: --spec JSON of any shape and depth -------------------------------------------------------------

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                               st.sampled_from(["dataset", "model", "train", "n_layer", "max_iters", "x"]) | st.text(max_size=6),
                               inner, max_size=3),
                           max_leaves=20)


@given(spec=json_values)
@examples(60)
def test_any_spec_is_a_run_or_one_line(spec):
    try:
        resolve_run(_spec_json(json.dumps(spec)), "r")
    except ConfigError as e:
        assert "\n" not in str(e) and ("--spec" in str(e) or "runs.r" in str(e)), str(e)


@given(depth=st.integers(min_value=1, max_value=5000), kind=st.sampled_from(["[", '{"a": ']))
@examples(15)
def test_spec_nesting_is_bounded(depth, kind):
    close = "]" if kind == "[" else "}"
    text = '{"dataset": "d", "model": ' + kind * depth + "1" + close * depth + "}"
    try:
        resolve_run(_spec_json(text), "r")
    except ConfigError as e:
        message = one_line_refusal(e, "--spec", "runs.r.model")
        assert depth + 2 <= 64 or "64 levels" in message, message


# ---- CLI flags: nanoGPT-style --key=value overrides -----------------------------------------------------------

flag_keys = st.sampled_from([k for keys in RUN_SETTINGS.values() for k in keys]) | st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz_.-", min_size=1, max_size=15)
flag_values = st.one_of(st.text(max_size=15), st.sampled_from(["[1", "{a: [", "a: b: c", "[" * 2000, "1e400",
                                                               "-0", ".5", "true", "~", "!!python/object:os.system"]))


@given(flags=st.lists(st.tuples(flag_keys, flag_values), min_size=1, max_size=3))
@examples(30)
def test_cli_flags_are_accepted_or_refused_in_one_line(flags):
    argv = [f"--{k}={v}" for k, v in flags]
    try:
        resolve_run({"dataset": "d", "model": {"n_layer": 1}}, "r", parse_overrides(argv))
    except ConfigError as e:
        keys = [k for k, _ in flags] + [k.replace("-", "_") for k, _ in flags]  # as given, and as a setting name
        one_line_refusal(e, *keys, *[a[:80] for a in argv])


# ---- config entries: whole configs, in-process and through `snakemake -n` -------------------------------------

entry_changes = st.lists(st.tuples(st.sampled_from(["train", "model", "sample", "top"]),
                                   st.sampled_from(["max_iters", "n_layer", "learning_rate", "num_samples",
                                                    "max_new_tokens", "summary", "runz", "n_head"]),
                                   values), min_size=1, max_size=3)


def _apply(config: dict, changes: list) -> dict:
    config = copy.deepcopy(config)
    for where, key, value in changes:
        target = {"train": config["runs"]["tiny"]["train"], "model": config["runs"]["tiny"]["model"],
                  "sample": config["samples"]["tiny"], "top": config}[where]
        target[key] = value
    return yaml.safe_load(yaml.safe_dump(config))


@given(changes=entry_changes)
@examples(20)
def test_config_entries_in_process(changes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    verdict = pipeline_verdict(_apply(tiny_config(), changes))
    if verdict is not None:
        one_line_refusal(ConfigError(verdict), *[k for _, k, _ in changes])
    assert list(tmp_path.iterdir()) == []


@given(changes=entry_changes)
@example(changes=[("train", "max_iters", 30)])  # accepted: planned
@example(changes=[("top", "runz", {})])  # refused: an unknown top-level key, one line before the schema dump
@examples(0)
def test_snakemake_plans_what_the_checks_accept(changes, tmp_path_factory):
    """`snakemake -n` agrees with the in-process verdict: it plans the accepted config, and stops on the same
    one line for a refused one, with no results/ written. (Each example starts snakemake: several seconds, so
    the suite runs the two explicit ones; the benchmark generated ones too.)"""
    config = _apply(tiny_config(), changes)
    verdict = pipeline_verdict(config)
    workdir = make_pipeline(tmp_path_factory.mktemp("fuzz"), config)
    check_config_files([workdir / "config.yaml"])
    proc = run_snakemake(workdir, "-n", check=False, timeout=120)
    out = proc.stdout + proc.stderr
    if verdict is None:
        assert proc.returncode == 0, out[-3000:]
    else:
        assert proc.returncode != 0 and verdict in out, (verdict, out[-3000:])
    assert not (workdir / "results").exists()
