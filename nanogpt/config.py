"""A config entry -> its checked settings: a run (RunConfig: inheritance, overrides, validation, the trajectory
and its fingerprint), a sample, an evaluation, a job's resources. The settings themselves are declared in
nanogpt.settings.

A run entry in config.yaml looks like::

    dataset: shakespeare_char
    init_from: scratch            # scratch | resume | gpt2 | gpt2-medium | gpt2-large | gpt2-xl | a local HF dir
    model: {n_layer: 4, n_head: 4, n_embd: 128, block_size: 64, dropout: 0.0}
    train: {batch_size: 12, max_iters: 2000, ...}
    launch: {nproc_per_node: 1}

`resolve_run` fills every default so the resolved dict is complete: Snakemake passes it to the train rule as
`params`, so changing any setting of one run reruns exactly that run.
"""

from __future__ import annotations

import hashlib
import json
import math
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from nanogpt.configfile import floats_from_strings
from nanogpt.errors import ConfigError
from nanogpt.names import check_name, suggest
from nanogpt.settings import (
    MAX_SAMPLE_TOKENS,
    RUN_SECTIONS,
    EvalSettings,
    GPTConfig,
    LaunchSettings,
    ModelSettings,
    Resources,
    SampleSettings,
    TrainSettings,
    check_fields,
    field_types,
    non_defaults,
    weight_settings,
)

# A run's training tokens (max_iters x batch x accumulation x block) beyond this are a typo: 100 trillion is
# several times what the largest open models were trained on.
MAX_TRAIN_TOKENS = 10**14

PRETRAINED_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


def is_pretrained_source(source: str) -> bool:
    """A GPT-2 size, a local Hugging Face folder or a hub id (owner/name), as opposed to a .pt checkpoint."""
    source = str(source)
    if source in PRETRAINED_NAMES or Path(source).is_dir():
        return True
    return "/" in source and not source.endswith(".pt") and not Path(source).is_file()


@dataclass
class RunConfig:
    dataset: str
    init_from: str = "scratch"
    model: ModelSettings = field(default_factory=ModelSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    launch: LaunchSettings = field(default_factory=LaunchSettings)

    def to_dict(self) -> dict:
        return asdict(self)

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        m = self.model
        if m.vocab_size is not None and m.vocab_size < vocab_size:  # token ids would index past the embedding
            raise ConfigError(f"model.vocab_size={m.vocab_size} is smaller than the dataset's vocabulary of "
                              f"{vocab_size} tokens: expected >= {vocab_size} (or leave it unset)")
        return GPTConfig(**{**asdict(m), "vocab_size": m.vocab_size or vocab_size})

    def validate(self, name: str) -> RunConfig:
        """Every setting in its declared range (nanogpt.settings), and the rules that relate several settings;
        messages name runs.NAME. Returns self."""
        t, m, launch = self.train, self.model, self.launch
        for section in ("train", "launch"):
            check_fields(getattr(self, section), f"runs.{name}.{section}")
        if t.decay_lr and t.min_lr > t.learning_rate:
            raise ConfigError(f"runs.{name}.train.min_lr={t.min_lr}: expected 0 <= min_lr <= learning_rate")
        if not 0 <= t.muon_weight_decay * t.muon_lr < 1:
            raise ConfigError(f"runs.{name}.train.muon_weight_decay={t.muon_weight_decay}: expected a number >= 0 "
                              f"with muon_weight_decay x muon_lr < 1")
        world = launch.nproc_per_node * launch.nnodes
        if t.gradient_accumulation_steps % world != 0:
            raise ConfigError(
                f"runs.{name}.train.gradient_accumulation_steps={t.gradient_accumulation_steps} is not divisible by "
                f"the world size {world} (nproc_per_node x nnodes): expected a multiple of {world}"
            )
        # Building the GPTConfig checks the model's ranges, n_embd % n_head and the head size; the message gains
        # the run's name.
        try:
            self.gpt_config(vocab_size=m.vocab_size or 1)
        except ConfigError as e:
            raise ConfigError(f"runs.{name}.{e}") from None
        tokens = t.max_iters * t.batch_size * t.gradient_accumulation_steps * m.block_size
        if tokens > MAX_TRAIN_TOKENS:
            raise ConfigError(f"runs.{name}.train: max_iters x batch_size x gradient_accumulation_steps x "
                              f"block_size = {tokens:.3g} tokens: expected at most {MAX_TRAIN_TOKENS:.0e} (a typo?)")
        return self

    def non_defaults(self) -> dict:
        """Every setting that differs from its default, by section: resolve_run of it gives this RunConfig."""
        out: dict = {"dataset": self.dataset}
        if self.init_from != "scratch":
            out["init_from"] = self.init_from
        for section in ("model", "train", "launch"):
            changed = non_defaults(getattr(self, section))
            if changed:
                out[section] = changed
        return out

    def trajectory(self) -> dict:
        """The settings that can change the weights a run ends with, canonically: each one only where it differs
        from its default (a setting added later with a neutral default changes nothing), is declared to
        change weights (not logging, eval and checkpoint cadence, tracking, compilation, the launch), and is
        used by the run's own recipe (not Muon's settings in an AdamW run). max_iters is in (a longer run ends
        elsewhere), although lengthening a run keeps its checkpoints.
        """
        out: dict = {"dataset": self.dataset}
        if self.init_from != "scratch":
            out["init_from"] = self.init_from
        for section in ("model", "train"):
            changed = weight_settings(getattr(self, section))
            if changed:
                out[section] = changed
        return out

    def fingerprint(self, dataset_meta: dict | None = None, init_identity: str = "") -> str:
        """Hash of what shapes the training trajectory: a checkpoint is resumed only if its hash is the same.

        The trajectory is the settings (`trajectory()`, less max_iters: lengthening a run keeps its
        checkpoints), the prepared data as meta.json describes it (source sha256, tokenizer, split, counts) and
        the identity of the initial weights. The code version is not in it: it is recorded in provenance.
        """
        return _hash({"settings": self._hashed_settings(), "data": dataset_meta or {}, "init": init_identity})

    def settings_fingerprint(self, dataset_meta: dict | None = None) -> str:
        """The fingerprint less the initial weights: what `init_from: resume` matches a checkpoint by."""
        return _hash({"settings": self._hashed_settings(), "data": dataset_meta or {}})

    def _hashed_settings(self) -> dict:
        settings = self.trajectory()
        train = settings.pop("train", {})
        for key in ("max_iters", "eval_only"):  # a longer run, or an evaluation of it, is the same trajectory
            train.pop(key, None)
        if train:
            settings["train"] = train
        settings.pop("init_from", None)  # the init identity stands for it
        return settings


def _hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def resolve_sample(entry: dict, where: str = "sample") -> SampleSettings:
    """A `samples:` entry (or the CLI's flags as a dict) -> validated SampleSettings."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}={entry!r}: expected a mapping")
    entry = floats_from_strings(dict(entry))
    if "model" not in entry:
        raise ConfigError(f"{where}: missing required key 'model'")
    settings = build_settings(SampleSettings, entry, where)
    check_fields(settings, where)
    if settings.num_samples * settings.max_new_tokens > MAX_SAMPLE_TOKENS:
        raise ConfigError(f"{where}: num_samples={settings.num_samples} x max_new_tokens={settings.max_new_tokens} = "
                          f"{settings.num_samples * settings.max_new_tokens:,} tokens: expected at most "
                          f"{MAX_SAMPLE_TOKENS:,} tokens in all")
    return settings


def resolve_eval(entry: dict, where: str = "eval") -> EvalSettings:
    """The evaluation settings of an `evals:` entry (model, datasets and resources are the pipeline's)."""
    entry = floats_from_strings({k: v for k, v in entry.items() if k not in ("model", "datasets", "resources")})
    if isinstance(entry.get("splits"), list):
        entry["splits"] = ",".join(map(str, entry["splits"]))
    settings = build_settings(EvalSettings, entry, where)
    check_fields(settings, where)
    if len(set(settings.split_names)) != len(settings.split_names):
        raise ConfigError(f"{where}.splits={settings.splits!r}: expected a comma-separated subset of train,val")
    return settings


def resolve_resources(entry: dict, where: str) -> Resources:
    """The `resources:` of a run or an eval entry, checked (None where the entry leaves one to the job's default)."""
    resources = build_settings(Resources, entry.get("resources") or {}, f"{where}.resources")
    check_fields(resources, f"{where}.resources")
    return resources


def _check_type(where: str, value: Any, expected: Any) -> Any:
    """Coerce ints to floats where a float is expected; reject anything of the wrong kind. `expected` is a
    field's type (int, float | None, ...); a choice of several types (bool | str) is left to the settings' checks."""
    kinds = typing.get_args(expected) or (expected,)
    optional, kinds = type(None) in kinds, [k for k in kinds if k is not type(None)]
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}=null: expected a {' or '.join(k.__name__ for k in kinds)}")
    if kinds == [bool]:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}={value!r}: expected true or false")
    if kinds == [int]:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}={value!r}: expected an integer")
    if kinds == [float]:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ConfigError(f"{where}={value!r}: expected a finite number")
    if kinds == [str]:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}={value!r}: expected a string")
    return value


def build_settings(cls: type, values: dict, where: str) -> Any:
    """A settings dataclass from an entry's section: known keys only (a did-you-mean otherwise), each value of
    its field's type; the declared ranges are checked apart (settings.check_fields)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}={values!r}: expected a mapping")
    known = field_types(cls)
    for key in values:
        if key not in known:
            raise ConfigError(f"unknown key {where}.{key}{suggest(key, list(known))}")
    kwargs = {k: _check_type(f"{where}.{k}", v, known[k]) for k, v in values.items()}
    return cls(**kwargs)


def resolve_run(entry: dict, name: str = "run", overrides: dict | None = None) -> RunConfig:
    """A run entry from config.yaml (plus flat `key=value` overrides) -> a complete, validated RunConfig."""
    if not isinstance(entry, dict):
        raise ConfigError(f"runs.{name}={entry!r}: expected a mapping")
    entry = floats_from_strings(json.loads(json.dumps(entry)))  # deep copy, plain types, '6e-4' -> 6e-4
    top_keys = ["dataset", "init_from", "model", "train", "launch", "resources"]
    for key in entry:
        if key not in top_keys:
            raise ConfigError(f"unknown key runs.{name}.{key}{suggest(key, top_keys)}")
    if "dataset" not in entry:
        raise ConfigError(f"runs.{name}: missing required key 'dataset'")
    for key, value in (overrides or {}).items():
        apply_override(entry, key, value, name)
    run = RunConfig(
        dataset=check_name(entry["dataset"], f"runs.{name}.dataset: dataset"),
        init_from=_check_type(f"runs.{name}.init_from", entry.get("init_from", "scratch"), str),
        model=build_settings(ModelSettings, entry.get("model", {}), f"runs.{name}.model"),
        train=build_settings(TrainSettings, entry.get("train", {}), f"runs.{name}.train"),
        launch=build_settings(LaunchSettings, entry.get("launch", {}), f"runs.{name}.launch"),
    )
    return run.validate(name)


def inherit_runs(entries: dict) -> dict:
    """Every `runs:` entry with its `base:` applied: the base run's entry (itself inherited), deep-merged with the
    entry's own keys, which win. A missing base or a cycle is a one-line error."""
    done: dict[str, dict] = {}

    def resolve(name: str, chain: tuple[str, ...]) -> dict:
        if name in done:
            return done[name]
        entry = entries[name]
        if not isinstance(entry, dict) or "base" not in entry:
            done[name] = entry
            return entry
        base = entry["base"]
        if not isinstance(base, str) or base not in entries:
            raise ConfigError(f"runs.{name}.base={base!r}: not a run, expected one of {sorted(entries)}")
        if base in chain:
            raise ConfigError(f"runs.{name}.base={base!r}: a cycle ({' -> '.join((*chain, name, base))}): "
                              "expected bases that end in a run without base")
        merged = _deep_merge(resolve(base, (*chain, name)), {k: v for k, v in entry.items() if k != "base"})
        done[name] = merged
        return merged

    return {name: resolve(name, ()) for name in entries}


def _deep_merge(base: dict, own: dict) -> dict:
    out = json.loads(json.dumps(base))  # a copy: the base entry stays as it is
    for key, value in own.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def settings_warnings(run: RunConfig, name: str) -> list[str]:
    """Settings that are valid but disagree with each other, usually a short run that kept a long run's defaults."""
    t, out = run.train, []
    if t.decay_lr and t.warmup_iters >= t.max_iters:
        out.append(f"runs.{name}.train.warmup_iters={t.warmup_iters} >= max_iters={t.max_iters}: the learning rate "
                   "never reaches learning_rate (set warmup_iters below max_iters)")
    if t.decay_lr and t.lr_decay_iters > t.max_iters * 2:
        out.append(f"runs.{name}.train.lr_decay_iters={t.lr_decay_iters} is far beyond max_iters={t.max_iters}: the "
                   "cosine decay barely starts (nanoGPT sets lr_decay_iters = max_iters)")
    if t.eval_interval > t.max_iters:
        out.append(f"runs.{name}.train.eval_interval={t.eval_interval} > max_iters={t.max_iters}: only the first and "
                   "the last iteration are evaluated")
    return out


def apply_override(entry: dict, key: str, value: Any, name: str = "run") -> None:
    """Set a flat nanoGPT-style key (`learning_rate`, `n_layer`) or a dotted one (`train.learning_rate`)."""
    if "." in key:
        section, sub = key.split(".", 1)
        if section not in RUN_SECTIONS:
            raise ConfigError(f"unknown override {key!r}: expected one of {', '.join(RUN_SECTIONS)} before the dot")
        entry.setdefault(section, {})[sub] = value
        return
    if key in ("dataset", "init_from"):
        entry[key] = value
        return
    for section, cls in RUN_SECTIONS.items():
        if key in {f.name for f in fields(cls)}:
            entry.setdefault(section, {})[key] = value
            return
    known = ["dataset", "init_from"] + [f.name for cls in RUN_SECTIONS.values() for f in fields(cls)]
    raise ConfigError(f"unknown setting {key!r}{suggest(key, known)}")
