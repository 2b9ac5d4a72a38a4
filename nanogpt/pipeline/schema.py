"""config.yaml's JSON schema: its structure written here, each settings block generated from the settings'
declarations (nanogpt.settings), so a new setting is in the schema the moment it is declared.

The Snakefile checks config.yaml against `config_schema()` itself (Pipeline.check), after nanogpt's own
checks; `nanogpt schema` writes the same schema to workflow/schemas/config.schema.yaml for editors and
readers (tests/test_settings_schema.py fails when the committed copy is stale), and `nanogpt schema --docs`
the settings reference, docs/settings.md.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import fields
from typing import Any

from nanogpt.errors import ConfigError
from nanogpt.fileio import short_repr
from nanogpt.names import suggest
from nanogpt.settings import (
    CORPUS_DEFAULTS,
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
    default_of,
    expected,
    field_types,
    show_default,
)

SCHEMA_PATH = "workflow/schemas/config.schema.yaml"
DOCS_PATH = "docs/settings.md"
JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}


def settings_block(cls: type, skip: tuple[str, ...] = ()) -> dict:
    """The schema of one settings section: a property per declared field, with its type, range and help."""
    types = field_types(cls)
    props = {f.name: setting_schema(f, types[f.name]) for f in fields(cls) if f.name not in skip}
    return {"type": "object", "additionalProperties": False, "properties": props}


def setting_schema(f: Any, kind: Any) -> dict:
    d = declared(f)
    kinds = typing.get_args(kind) or (kind,)
    out: dict = {}
    if d.choices is not None:
        out["enum"] = [*d.choices, *([None] if type(None) in kinds else [])]
    elif typing.get_origin(kind) is tuple:
        out.update(type="array", items={"type": JSON_TYPES[kinds[0]]})
    else:
        names = [JSON_TYPES[k] for k in kinds]
        out["type"] = names[0] if len(names) == 1 else names
    for key, name in (("ge", "minimum"), ("gt", "exclusiveMinimum"), ("le", "maximum"), ("lt", "exclusiveMaximum")):
        if getattr(d, key) is not None:
            out[name] = getattr(d, key)
    if d.help:
        out["description"] = d.help
    return out


def _names(description: str) -> dict:
    return {"type": "array", "items": {"type": "string"}, "description": description}


DATASET = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "path": {"type": "string", "description": "your own data: one text file (split by characters), or a "
                 "folder / glob / file of .jsonl, .parquet, .csv or .txt documents"},
        "source": {"type": "object", "additionalProperties": False, "required": ["url", "sha256"],
                   "properties": {"url": {"type": "string"},
                                  "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}},
        "hf": {"type": "object", "additionalProperties": False, "required": ["path"], "properties": {
            "path": {"type": "string", "description": "hub id or local folder"},
            "name": {"type": ["string", "null"], "description": "dataset config name"},
            "split": {"type": "string"},
            "revision": {"type": ["string", "null"]},
            "data_files": {"type": ["string", "array", "object", "null"],
                           "description": "glob(s) in the repo/folder, or split -> globs"},
            "streaming": {"type": "boolean",
                          "description": "prepare reads the hub files over the network instead of downloading them"},
        }},
        "files": {"type": "object", "additionalProperties": False, "required": ["format", "paths"], "properties": {
            "format": {"enum": ["parquet", "json", "jsonl", "text", "csv"]},
            "paths": {"type": "array", "minItems": 1, "items": {"type": "string"},
                      "description": "files or globs, relative to the workdir"},
        }},
        **settings_block(DatasetSettings, skip=("name", "kind"))["properties"],
    },
}

MODEL_NAME = {"type": "string", "description": "a run name, gpt2*, or an entry under `pretrained`"}


def run_entry() -> dict:
    return {
        "type": "object",
        "additionalProperties": False,
        "anyOf": [{"required": ["dataset"]}, {"required": ["base"]}],
        "properties": {
            "base": {"type": "string", "description": "a run whose entry this one inherits and overrides"},
            "dataset": {"type": "string"},
            "init_from": {"type": "string"},
            "model": settings_block(ModelSettings),
            "train": settings_block(TrainSettings),
            "launch": settings_block(LaunchSettings),
            "resources": settings_block(Resources),
        },
    }


EVAL_SKIPS = ("slurm_partition", "slurm_extra")  # an evaluation runs in the profile's partition


def eval_entry() -> dict:
    """An `evals:` entry: the loss on `datasets` (EvalSettings), or a task (`task: hellaswag`: HellaSwagSettings)."""
    block = settings_block(EvalSettings)
    block["required"] = ["model"]
    block["properties"] = {
        "model": MODEL_NAME,
        "datasets": {"type": "array", "minItems": 1, "items": {"type": "string"},
                     "description": "datasets to measure the loss on (not with task)"},
        "task": {"enum": ["hellaswag"], "description": "a benchmark instead of the loss (docs/evaluation.md)"},
        "source": {"type": "object", "additionalProperties": False, "required": ["url"],
                   "description": "the task's items: url and sha256 or git_blob_sha1 (default: HellaSwag's pinned)",
                   "properties": {"url": {"type": "string"},
                                  "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                                  "git_blob_sha1": {"type": "string", "pattern": "^[0-9a-f]{40}$"}}},
        **settings_block(HellaSwagSettings)["properties"],
        **block["properties"],
        "splits": {"type": "array", "items": {"enum": ["train", "val"]},
                   "description": block["properties"]["splits"]["description"]},
        "resources": settings_block(Resources, skip=EVAL_SKIPS),
    }
    return block


def sample_entry() -> dict:
    block = settings_block(SampleSettings, skip=("model",))
    block["required"] = ["model"]
    block["properties"] = {"model": MODEL_NAME, **block["properties"]}
    return block


SWEEP = {
    "type": "object",
    "additionalProperties": False,
    "required": ["base"],
    "properties": {
        "base": {"type": "string", "description": "a run under `runs`"},
        "grid": {"type": "object", "description": "setting -> list of values; the points are their product"},
        "points": {"type": "array", "items": {"type": "object"},
                   "description": "explicit points: setting -> value each"},
        "fixed": {"type": "object", "description": "setting -> value for every point (not part of the names)"},
        "scaling": {"type": "object", "description": "a scaling study: iterations from each model size",
                    "additionalProperties": False,
                    "properties": {"tokens_per_param": {"type": "number", "exclusiveMinimum": 0},
                                   "flops": {"type": "number", "exclusiveMinimum": 0}}},
    },
}


def config_schema() -> dict:
    """The whole schema of config.yaml."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "description": "nanogpt-workflow config.yaml. Generated by `nanogpt schema` from nanogpt/pipeline/schema.py and the "
                       "settings' declarations in nanogpt/settings.py: edit those, not this file.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "mirror": {"type": ["string", "null"], "description": "folder of downloaded files served by name "
                       "(offline / air-gapped); else $NANOGPT_MIRROR"},
            "targets": {"type": "object", "additionalProperties": False, "properties": {
                section: _names(f"names under `{section}` that `snakemake` builds")
                for section in ("runs", "samples", "evals", "sweeps")}},
            "datasets": {"type": "object", "additionalProperties": DATASET},
            "runs": {"type": "object", "additionalProperties": run_entry()},
            "samples": {"type": ["object", "null"], "additionalProperties": sample_entry()},
            "evals": {"type": ["object", "null"], "additionalProperties": eval_entry(),
                      "description": "loss of a model on datasets -> results/eval/{model}/{dataset}.json"},
            "sweeps": {"type": ["object", "null"], "additionalProperties": SWEEP,
                       "description": "sweep name -> a grid (or list of points) of run settings around a base "
                                      "run; each point becomes a run"},
            "pretrained": {"type": ["object", "null"], "additionalProperties": {"type": "string"},
                           "description": "model name -> hub id or local Hugging Face GPT-2 folder"},
            "summary": {"type": ["object", "null"], "additionalProperties": False, "properties": {
                "enabled": {"type": "boolean",
                            "description": "build results/summary.csv/.md and loss curves in the default target"}}},
        },
    }


def schema_yaml() -> str:
    import yaml

    header = "# Generated by `nanogpt schema` (nanogpt/pipeline/schema.py): do not edit by hand.\n"
    return header + yaml.safe_dump(config_schema(), sort_keys=False, width=110, allow_unicode=True)


def check_top_level_keys(config: dict) -> None:
    """Refuse a top-level key the schema does not know (`run:` for `runs:`) before the entries are checked: a
    misspelled section would otherwise read as an empty one."""
    known = sorted(config_schema()["properties"])
    unknown = sorted(str(k) for k in config if k not in known)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]}{suggest(unknown[0], known)}: expected one of {known}")


def check_against_schema(config: dict) -> None:
    """config.yaml against the schema; the first violation is one ConfigError naming where and what (Snakemake's
    own `validate` would print the whole schema, hundreds of lines, with no hint)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(config_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        raise ConfigError(describe(error))


def describe(error: Any) -> str:
    """One line for a jsonschema ValidationError: the dotted path, the value, and what the schema expects."""
    where = ".".join(str(p) for p in error.absolute_path) or "config.yaml"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = sorted(error.schema.get("properties") or {})
        extra = sorted(str(k) for k in error.instance if k not in known)
        key = extra[0] if extra else "?"
        label = f"{where}.{key}" if error.absolute_path else str(key)
        return f"unknown key {label}{suggest(str(key), known)}: expected one of {known}"
    if error.validator == "type":
        return f"{where}={short_repr(error.instance)}: expected {_types(error.validator_value)}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    return f"{where}={short_repr(error.instance)}: {' '.join(error.message.split())[:200]}"


def _types(value: str | list) -> str:
    names = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
             "number": "a number", "boolean": "true or false", "null": "null"}
    kinds = value if isinstance(value, list) else [value]
    return " or ".join(names.get(k, k) for k in kinds)


SECTIONS_DOC = (
    ("datasets.NAME", DatasetSettings, "how a dataset is tokenized and split (besides its source: `source`, `hf`, "
                                       "`files` or `path`)"),
    ("runs.NAME.model", ModelSettings, "the model's shape"),
    ("runs.NAME.train", TrainSettings, "training: nanoGPT's train.py options"),
    ("runs.NAME.launch", LaunchSettings, "how torchrun starts the run"),
    ("runs.NAME.resources / evals.NAME.resources", Resources, "scheduler resources (SLURM); an evaluation takes "
                                                              "all but slurm_partition and slurm_extra"),
    ("samples.NAME", SampleSettings, "text generation: nanoGPT's sample.py options"),
    ("evals.NAME", EvalSettings, "loss of a model on datasets"),
    ("evals.NAME with task: hellaswag", HellaSwagSettings, "HellaSwag accuracy of a model (docs/evaluation.md)"),
)


def settings_markdown() -> str:
    """docs/settings.md: every declared setting, its default, range and meaning, by section."""
    lines = ["# Settings reference", "",
             "Generated by `nanogpt schema --docs` from the declarations in `nanogpt/settings.py`: edit those, "
             "not this page. *weights*: a change to this setting gives a different training trajectory (the run "
             "retrains); other settings reach the trainer without retraining anything.", ""]
    for where, cls, what in SECTIONS_DOC:
        lines += [f"## `{where}`", "", what[0].upper() + what[1:] + ".", "",
                  "| setting | default | allowed | weights | meaning |", "| --- | --- | --- | --- | --- |"]
        types = field_types(cls)
        for f in fields(cls):
            if f.name in ("name", "kind"):
                continue
            d = declared(f)
            default = default_of(f)
            if cls is DatasetSettings and default is dataclasses.MISSING:
                shown = f"text: `{TEXT_DEFAULTS[f.name]}`, corpus: `{CORPUS_DEFAULTS[f.name]}`"
            else:
                shown = "required" if default is dataclasses.MISSING else f"`{show_default(default)}`"
            if cls in (ModelSettings, TrainSettings):
                weights = "yes" if d.trajectory and d.used_with is None else \
                    f"with {d.used_with[0]}: {d.used_with[1]}" if d.trajectory else "no"
            else:
                weights = ""
            lines.append(f"| `{f.name}` | {shown} | {expected(d, types[f.name])} | {weights} | "
                         f"{d.help.replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)
