"""One home for each setting: the dataclasses in nanogpt.config. The JSON schema of config.yaml and the
command-line defaults must agree with them, so a setting is typed, defaulted and validated in one place."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from conftest import REPO
from nanogpt.cli import build_parser
from nanogpt.config import (
    CORPUS_DEFAULTS,
    TEXT_DEFAULTS,
    DatasetSettings,
    EvalSettings,
    LaunchSettings,
    SampleSettings,
)

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
    (EvalSettings, SCHEMA["evals"][ENTRY]["properties"], {"model", "datasets", "resources"}),
    (LaunchSettings, SCHEMA["runs"][ENTRY]["properties"]["launch"]["properties"], set()),
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
def test_command_line_defaults_are_the_settings_defaults(command, cls):
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    defaults = {a.dest: a.default for a in sub._actions}
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            assert defaults[field.name] == field.default, field.name


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
