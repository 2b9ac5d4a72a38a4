"""One home for each setting: its declaration in nanogpt.settings. The JSON schema of config.yaml, the
command-line flags and the settings reference come from it, so a setting is typed, defaulted, bounded and
documented in one line."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import typing

import jsonschema
import pytest
import yaml

from conftest import BIN, REPO
from nanogpt.cli import build_parser
from nanogpt.pipeline.entries import Pipeline
from nanogpt.pipeline.schema import DOCS_PATH, SCHEMA_PATH, config_schema, schema_yaml, settings_markdown
from nanogpt.settings import (
    ARCHS,
    CORPUS_DEFAULTS,
    DTYPES,
    MUON_ADJUST_LR,
    OPTIMIZERS,
    TEXT_DEFAULTS,
    DatasetSettings,
    EvalSettings,
    HellaSwagSettings,
    LaunchSettings,
    ModelSettings,
    Resources,
    SampleSettings,
    TrainSettings,
    declared,
    field_types,
    show_default,
)

JSON_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "str": "string", "NoneType": "null",
              "tuple[str, ...]": "array"}


def json_type(annotation: str) -> set[str]:
    """The JSON schema types a dataclass annotation ('int | None') stands for."""
    parts = [p.strip() for p in str(annotation).split("|")]
    return {"null" if p == "None" else JSON_TYPES[p] for p in parts}


def schema_types(prop: dict) -> set[str]:
    kind = prop.get("type")
    if kind is None and "enum" in prop:
        return {JSON_TYPES[type(v).__name__] for v in prop["enum"]}
    return set(kind) if isinstance(kind, list) else {kind}


SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())["properties"]
ENTRY = "additionalProperties"


@pytest.mark.parametrize("cls,props,extra", [
    (SampleSettings, SCHEMA["samples"][ENTRY]["properties"], set()),
    # `evals:` entries hold either the loss settings or, with `task: hellaswag`, HellaSwag's
    (EvalSettings, SCHEMA["evals"][ENTRY]["properties"], {"model", "datasets", "resources", "task", "source", "limit"}),
    (HellaSwagSettings, SCHEMA["evals"][ENTRY]["properties"],
     {"model", "datasets", "resources", "task", "source", "batch_size", "eval_iters", "block_size", "splits", "seed",
      "compile"}),
    (LaunchSettings, SCHEMA["runs"][ENTRY]["properties"]["launch"]["properties"], set()),
    (TrainSettings, SCHEMA["runs"][ENTRY]["properties"]["train"]["properties"], set()),
    (ModelSettings, SCHEMA["runs"][ENTRY]["properties"]["model"]["properties"], set()),
    (Resources, SCHEMA["runs"][ENTRY]["properties"]["resources"]["properties"], set()),
])
def test_schema_has_exactly_the_settings_with_their_types(cls, props, extra):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(props) - extra == set(fields), f"schema and {cls.__name__} disagree"
    for name, field in fields.items():
        if name == "splits":  # config.yaml: a list of splits; the settings: the CLI's comma-separated form
            assert props[name]["type"] == "array"
            continue
        assert schema_types(props[name]) == json_type(field.type), name


def test_committed_schema_and_settings_reference_are_generated_from_the_declarations():
    """workflow/schemas/config.schema.yaml and docs/settings.md are what `nanogpt schema` writes today: a setting
    declared without regenerating them fails here (run `nanogpt schema --out ... --docs ...`)."""
    assert (REPO / SCHEMA_PATH).read_text() == schema_yaml(), f"stale {SCHEMA_PATH}: run nanogpt schema"
    assert (REPO / DOCS_PATH).read_text() == settings_markdown(), f"stale {DOCS_PATH}: run nanogpt schema --docs"


def test_every_setting_is_declared_with_help_and_every_number_with_bounds():
    for cls in (ModelSettings, TrainSettings, LaunchSettings, Resources, SampleSettings, EvalSettings,
                HellaSwagSettings, DatasetSettings):
        types = field_types(cls)
        for f in dataclasses.fields(cls):
            if cls is DatasetSettings and f.name in ("name", "kind"):
                continue  # the entry's name, and what its source is: not settings
            d = declared(f)
            assert d.help, f"{cls.__name__}.{f.name} has no help"
            kinds = set(typing.get_args(types[f.name]) or (types[f.name],)) - {type(None)}
            if kinds <= {int, float}:
                assert (d.ge, d.gt) != (None, None) and (d.le, d.lt) != (None, None), f"{f.name} is unbounded"


@pytest.mark.parametrize("command,cls", [("sample", SampleSettings), ("eval", EvalSettings)])
def test_command_line_flags_are_the_settings(command, cls):
    """Each setting is a flag whose help shows the settings' own default; a flag left out stays out, so the
    settings fill in their default (one default per setting)."""
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    flags = {a.dest: a for a in sub._actions}
    for field in dataclasses.fields(cls):
        if field.default is dataclasses.MISSING:
            continue
        assert flags[field.name].default is argparse.SUPPRESS, field.name
        assert flags[field.name].help.endswith(f"(default: {show_default(field.default)})"), field.name


def test_dataset_schema_has_the_dataset_settings():
    """A dataset entry: one of its four sources plus the settings of DatasetSettings (less the two it derives),
    each with its type; one default per setting and kind (TEXT_DEFAULTS, CORPUS_DEFAULTS), none in the schema."""
    props = SCHEMA["datasets"][ENTRY]["properties"]
    fields = {f.name: f for f in dataclasses.fields(DatasetSettings) if f.name not in ("name", "kind")}
    assert set(props) - {"source", "hf", "files", "path"} == set(fields)
    for name, field in fields.items():
        assert schema_types(props[name]) == json_type(field.type), name
        assert "default" not in props[name], name
    assert set(TEXT_DEFAULTS) == set(CORPUS_DEFAULTS) <= set(fields)


RUN = SCHEMA["runs"][ENTRY]["properties"]


@pytest.mark.parametrize("prop,choices", [
    (RUN["train"]["properties"]["dtype"], DTYPES),
    (RUN["train"]["properties"]["optimizer"], OPTIMIZERS),
    (RUN["train"]["properties"]["muon_adjust_lr"], MUON_ADJUST_LR),
    (RUN["model"]["properties"]["arch"], ARCHS),
    (SCHEMA["samples"][ENTRY]["properties"]["dtype"], DTYPES),
    (SCHEMA["evals"][ENTRY]["properties"]["dtype"], DTYPES),
])
def test_schema_choices_are_the_settings_choices(prop, choices):
    assert tuple(prop["enum"]) == choices


def test_shipped_config_fits_the_schema_and_a_mistyped_setting_does_not():
    """The schema types every run setting: config.yaml (with YAML's '6e-4' strings read as numbers) fits it, and a
    setting of the wrong type fails it even where nothing else would look."""
    schema = config_schema()
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    jsonschema.validate(Pipeline(config).typed_config(), schema)
    exponent = {**config, "runs": {"r": {"dataset": "shakespeare_char", "train": {"learning_rate": "6e-4"}}}}
    jsonschema.validate(Pipeline(exponent).typed_config(), schema)  # YAML 1.1 reads 6e-4 as a string
    for section, value in (("train", {"learning_rate": "fast"}), ("model", {"n_layer": 1.5}),
                           ("train", {"learnig_rate": 1e-3})):
        bad = {**config, "runs": {"r": {"dataset": "shakespeare_char", section: value}}}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(Pipeline(bad).typed_config(), schema)


def test_a_setting_declared_in_one_line_is_everywhere(tmp_path):
    """Duplicating the line that declares learning_rate under a new name, in a copy of the checkout, is all it
    takes: the new setting is on `train --help`, config.yaml may set it (`snakemake -n` plans the run), a value out
    of learning_rate's range is refused in one line naming it, and `--probe_rate=V` overrides it."""
    copy = tmp_path / "checkout"
    for name in ("nanogpt", "workflow"):
        shutil.copytree(REPO / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(REPO / name, copy / name)
    settings = copy / "nanogpt" / "settings.py"
    line = next(ln for ln in settings.read_text().splitlines() if ln.strip().startswith("learning_rate:"))
    settings.write_text(settings.read_text().replace(line, line + "\n" + line.replace("learning_rate", "probe_rate")))
    env = {**os.environ, "PYTHONPATH": str(copy)}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=copy, env=env, capture_output=True, text=True, timeout=300)

    assert "--probe_rate=0.0006" in run(sys.executable, "-m", "nanogpt.cli", "train", "--help").stdout
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["runs"]["shakespeare_char_cpu"]["train"]["probe_rate"] = 0.02
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    planned = run(str(BIN / "snakemake"), "-n", "--cores", "1")
    assert planned.returncode == 0, planned.stderr[-2000:]
    config["runs"]["shakespeare_char_cpu"]["train"]["probe_rate"] = 11.0
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    refused = run(str(BIN / "snakemake"), "-n", "--cores", "1")
    assert refused.returncode != 0
    assert "runs.shakespeare_char_cpu.train.probe_rate=11.0: expected a number in (0, 10]" in (
        refused.stdout + refused.stderr)
    override = run(sys.executable, "-c", "from nanogpt.config import resolve_run; from nanogpt.configfile import parse_overrides; "
                   "print(resolve_run({'dataset': 'd'}, 'r', parse_overrides(['--probe_rate=0.02'])).train.probe_rate)")
    assert override.stdout.strip() == "0.02", override.stderr
