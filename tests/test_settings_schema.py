"""One home for each setting: the dataclasses in nanogpt.config. The JSON schema of config.yaml and the
command-line defaults must agree with them, so a setting is typed, defaulted and validated in one place."""

from __future__ import annotations

import argparse
import dataclasses

import jsonschema
import pytest
import yaml

from conftest import REPO
from nanogpt.cli import build_parser
from nanogpt.config import (
    ARCHS,
    CORPUS_DEFAULTS,
    DTYPES,
    MUON_ADJUST_LR,
    OPTIMIZERS,
    TEXT_DEFAULTS,
    DatasetSettings,
    EvalSettings,
    LaunchSettings,
    ModelSettings,
    SampleSettings,
    TrainSettings,
)
from nanogpt.hellaswag import HellaSwagSettings
from nanogpt.pipeline import Pipeline

JSON_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "str": "string", "NoneType": "null"}


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
])
def test_schema_has_exactly_the_settings_with_their_types(cls, props, extra):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(props) - extra == set(fields), f"schema and {cls.__name__} disagree"
    for name, field in fields.items():
        if name == "splits":  # config.yaml: a list of splits; the settings: the CLI's comma-separated form
            assert props[name]["type"] == "array"
            continue
        assert schema_types(props[name]) == json_type(field.type), name


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
        shown = "none" if field.default is None else field.default
        assert flags[field.name].help.endswith((f"(default: {shown})", f"(default: {shown!r})")), field.name


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
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    jsonschema.validate(Pipeline(config).typed_config(), schema)
    exponent = {**config, "runs": {"r": {"dataset": "shakespeare_char", "train": {"learning_rate": "6e-4"}}}}
    jsonschema.validate(Pipeline(exponent).typed_config(), schema)  # YAML 1.1 reads 6e-4 as a string
    for section, value in (("train", {"learning_rate": "fast"}), ("model", {"n_layer": 1.5}),
                           ("train", {"learnig_rate": 1e-3})):
        bad = {**config, "runs": {"r": {"dataset": "shakespeare_char", section: value}}}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(Pipeline(bad).typed_config(), schema)
