"""Typed run configuration: nanoGPT's options as dataclasses, filled from YAML/JSON and `key=value` overrides.

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

import dataclasses
import difflib
import hashlib
import json
import math
import re
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from nanogpt.errors import ConfigError

# The one rule for every entry name (datasets, runs, samples, evals): names become folder names and command-line
# arguments, so they hold only letters, digits and . _ - and start with a letter or digit (no "..", no spaces, no
# shell syntax).
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
_NAME_RE = re.compile(NAME_PATTERN)


def check_name(name: object, where: str) -> str:
    """`name` if it follows NAME_PATTERN, else a ConfigError naming it."""
    if isinstance(name, bool | int | float) or name is None:  # YAML read the key as a number, boolean or null
        raise ConfigError(f"{where} name {name!r} is a {type(name).__name__} in YAML, not text: expected a name, "
                          f"quoted if it looks like a number (\"{name}\")")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"{where} name {name!r} is not allowed: expected 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


# 16x nanoGPT's 600,000-iteration GPT-2 run: a real run can still ask for it, a typo of several extra digits cannot.
MAX_ITERS = 10_000_000
ARCHS = ("gpt2", "modern")
OPTIMIZERS = ("adamw", "muon")
MUON_ADJUST_LR = ("original", "match_rms_adamw")  # torch.optim.Muon's adjust_lr_fn


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for efficiency
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # True: biases in Linears and LayerNorms, like GPT-2
    arch: str = "gpt2"  # gpt2 (nanoGPT's) | modern (rotary, QK-norm, ReLU², zero-init projections, untied head)

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"model.{name}={value!r}: expected a positive integer")
        if self.n_embd % self.n_head != 0:
            raise ConfigError(
                f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}: "
                "expected n_embd to be a multiple of n_head"
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"model.dropout={self.dropout!r}: expected a number in [0, 1)")
        if self.arch not in ARCHS:
            raise ConfigError(f"model.arch={self.arch!r}: expected one of {', '.join(ARCHS)}")
        if self.arch == "modern" and (self.n_embd // self.n_head) % 2:
            raise ConfigError(f"model.n_embd // model.n_head = {self.n_embd // self.n_head}: expected an even head "
                              "size for arch modern (rotary embeddings turn pairs of dimensions)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


PRETRAINED_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


def is_pretrained_source(source: str) -> bool:
    """A GPT-2 size, a local Hugging Face folder or a hub id (owner/name), as opposed to a .pt checkpoint."""
    source = str(source)
    if source in PRETRAINED_NAMES or Path(source).is_dir():
        return True
    return "/" in source and not source.endswith(".pt") and not Path(source).is_file()


@dataclass
class ModelSettings(GPTConfig):
    """A run's `model:` section: GPTConfig's fields and defaults, except that vocab_size None means the dataset's.

    It is checked as a GPTConfig once the vocabulary is known (RunConfig.gpt_config), not when it is built.
    """

    vocab_size: int | None = None

    def __post_init__(self) -> None:
        pass


@dataclass
class TrainSettings:
    """nanoGPT's train.py options (same names, same defaults unless noted)."""

    batch_size: int = 12
    gradient_accumulation_steps: int = 1  # global micro-batches per step, split across ranks (nanoGPT: 40)
    max_iters: int = 600000
    learning_rate: float = 6e-4
    weight_decay: float = 1e-1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    decay_lr: bool = True
    warmup_iters: int = 2000
    lr_decay_iters: int = 600000
    min_lr: float = 6e-5
    # Muon (torch.optim.Muon) for the blocks' 2-D matrices, AdamW (the settings above) for the rest; the muon_*
    # settings are used only with optimizer: muon, and follow the same warmup and decay as learning_rate.
    optimizer: str = "adamw"  # adamw | muon
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0
    muon_adjust_lr: str = "original"  # original | match_rms_adamw
    eval_interval: int = 2000
    eval_iters: int = 200
    log_interval: int = 1
    eval_only: bool = False
    always_save_checkpoint: bool = True
    checkpoint_interval: int | None = None  # resume checkpoints every N iters; None = every eval_interval
    keep_checkpoints: int = 2
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    compile: bool | str = "auto"  # auto: on for CUDA (nanoGPT's default there), off on CPU/MPS; or true/false
    seed: int = 1337
    peak_flops: float | None = None  # device peak FLOP/s for MFU; None = a table (GPU) or a measurement (CPU)
    wandb_log: bool = False  # also log to Weights & Biases (pip install wandb; WANDB_MODE=offline works too)
    wandb_project: str = "nanogpt"
    wandb_run_name: str | None = None  # None: the run's name


@dataclass
class LaunchSettings:
    """How torchrun starts the run."""

    nproc_per_node: int = 1
    nnodes: int = 1
    backend: str = "auto"  # auto (nccl on CUDA, gloo otherwise) | nccl | gloo


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
        """Every setting in range and consistent with the others (messages name runs.NAME); returns self."""
        t, m, launch = self.train, self.model, self.launch
        for key in ("batch_size", "max_iters", "gradient_accumulation_steps", "eval_iters", "log_interval",
                    "eval_interval", "keep_checkpoints"):
            if getattr(t, key) <= 0:
                raise ConfigError(f"runs.{name}.train.{key}={getattr(t, key)}: expected a positive integer")
        if t.max_iters > MAX_ITERS:
            raise ConfigError(f"runs.{name}.train.max_iters={t.max_iters}: expected an integer in [1, {MAX_ITERS:,}]")
        if t.learning_rate <= 0:
            raise ConfigError(f"runs.{name}.train.learning_rate={t.learning_rate}: expected a positive number")
        for key, low, high in (("weight_decay", 0.0, None), ("beta1", 0.0, 1.0), ("beta2", 0.0, 1.0),
                               ("grad_clip", 0.0, None)):
            value = getattr(t, key)
            if value < low or (high is not None and value >= high):
                expected = f"a number in [{low}, {high})" if high is not None else f"a number >= {low}"
                raise ConfigError(f"runs.{name}.train.{key}={value}: expected {expected}")
        if t.lr_decay_iters < 0:
            raise ConfigError(f"runs.{name}.train.lr_decay_iters={t.lr_decay_iters}: expected >= 0")
        if not 0 <= t.seed < 2**63:
            raise ConfigError(f"runs.{name}.train.seed={t.seed}: expected an integer in [0, 2**63)")
        if t.peak_flops is not None and t.peak_flops <= 0:
            raise ConfigError(f"runs.{name}.train.peak_flops={t.peak_flops}: expected a positive number of FLOP/s")
        if t.min_lr < 0 or t.min_lr > t.learning_rate:
            raise ConfigError(f"runs.{name}.train.min_lr={t.min_lr}: expected 0 <= min_lr <= learning_rate")
        if t.warmup_iters < 0:
            raise ConfigError(f"runs.{name}.train.warmup_iters={t.warmup_iters}: expected >= 0")
        if t.checkpoint_interval is not None and t.checkpoint_interval <= 0:
            raise ConfigError(f"runs.{name}.train.checkpoint_interval={t.checkpoint_interval}: "
                              "expected a positive integer")
        if t.compile not in (True, False, "auto"):
            raise ConfigError(f"runs.{name}.train.compile={t.compile!r}: expected true, false or auto")
        _validate_optimizer(t, name)
        check_dtype(t.dtype, f"runs.{name}.train.dtype")
        check_device(t.device, f"runs.{name}.train.device")
        if launch.nproc_per_node <= 0 or launch.nnodes <= 0:
            raise ConfigError(f"runs.{name}.launch: nproc_per_node and nnodes must be positive integers")
        if launch.backend not in ("auto", "nccl", "gloo"):
            raise ConfigError(f"runs.{name}.launch.backend={launch.backend!r}: expected auto, nccl or gloo")
        world = launch.nproc_per_node * launch.nnodes
        if t.gradient_accumulation_steps % world != 0:
            raise ConfigError(
                f"runs.{name}.train.gradient_accumulation_steps={t.gradient_accumulation_steps} is not divisible by "
                f"the world size {world} (nproc_per_node x nnodes): expected a multiple of {world}"
            )
        # Building the GPTConfig checks n_embd % n_head and the positive sizes; the message gains the run's name.
        try:
            self.gpt_config(vocab_size=m.vocab_size or 1)
        except ConfigError as e:
            raise ConfigError(f"runs.{name}.{e}") from None
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
        """The settings that decide the weights a run ends with, canonically: each one only where it differs
        from its default, so that a setting added later with a neutral default changes nothing.

        Left out: logging, eval and checkpoint cadence, tracking, compilation and the launch (NOT_TRAJECTORY).
        max_iters is in (a longer run ends elsewhere), although lengthening a run keeps its checkpoints.
        """
        out = self.non_defaults()
        out.pop("launch", None)
        train = {k: v for k, v in out.pop("train", {}).items() if k not in NOT_TRAJECTORY}
        if train:
            out["train"] = train
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

    def legacy_fingerprint(self, dataset_meta: dict | None = None, init_identity: str = "") -> str | None:
        """The fingerprint checkpoints written before the canonical form carry (every setting of that version,
        defaults included), so that an upgrade resumes them; None where a newer setting is not at its default."""
        d = self.to_dict()
        for section, legacy in (("train", LEGACY_TRAIN), ("model", LEGACY_MODEL)):
            defaults = asdict(type(getattr(self, section))())
            if any(not _same_value(d[section][k], v) for k, v in defaults.items() if k not in legacy):
                return None
            d[section] = {k: d[section][k] for k in legacy if k not in LEGACY_EXCLUDED}
        d.pop("launch")
        return _hash({"settings": d, "data": dataset_meta or {}, "init": init_identity})


def non_defaults(settings: Any) -> dict:
    """A settings dataclass's fields that differ from their defaults (a field without a default is always
    in): the canonical form of what was chosen, which a setting added later with a neutral default leaves as it is."""
    out = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if default is dataclasses.MISSING or not _same_value(value, default):
            out[f.name] = value
    return out


def _same_value(a: Any, b: Any) -> bool:
    """Equal as settings: 1 and 1.0 are the same learning rate, True and 1 are not the same flag."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def _hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


# Train settings that cannot change the weights a run ends with: outside the fingerprint, and passed to the
# train rule without making Snakemake rerun a finished run (nanogpt.pipeline). max_iters is handled apart.
NOT_TRAJECTORY = ("log_interval", "eval_interval", "eval_iters", "always_save_checkpoint", "checkpoint_interval",
                  "keep_checkpoints", "compile", "peak_flops", "wandb_log", "wandb_project", "wandb_run_name")
# The train settings of the version before the canonical fingerprint (frozen: do not add to them), and the
# ones that version left out of its hash.
LEGACY_TRAIN = ("batch_size", "gradient_accumulation_steps", "max_iters", "learning_rate", "weight_decay", "beta1",
                "beta2", "grad_clip", "decay_lr", "warmup_iters", "lr_decay_iters", "min_lr", "eval_interval",
                "eval_iters", "log_interval", "eval_only", "always_save_checkpoint", "checkpoint_interval",
                "keep_checkpoints", "device", "dtype", "compile", "seed", "peak_flops", "wandb_log",
                "wandb_project", "wandb_run_name")
LEGACY_MODEL = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias")
LEGACY_EXCLUDED = ("max_iters", "log_interval", "eval_interval", "eval_iters", "eval_only", "always_save_checkpoint",
                   "checkpoint_interval", "keep_checkpoints", "compile", "peak_flops", "wandb_log", "wandb_project",
                   "wandb_run_name")


_SECTIONS = {"model": ModelSettings, "train": TrainSettings, "launch": LaunchSettings}

# One line per run setting, for `nanogpt train --help` (tests/test_cli_help.py checks that every field has one).
SETTING_HELP = {
    "dataset": "the prepared dataset (a `datasets:` name)",
    "init_from": "scratch, resume, gpt2*, a run's name, a local HF folder or a .pt file",
    "block_size": "context length in tokens",
    "vocab_size": "token ids the model has (default: the dataset's vocabulary)",
    "n_layer": "transformer blocks",
    "n_head": "attention heads per block",
    "n_embd": "width of the residual stream",
    "dropout": "dropout probability (0 for pretraining, nanoGPT)",
    "bias": "biases in Linear and LayerNorm layers, as GPT-2",
    "arch": "gpt2 (nanoGPT's model) or modern (rotary, QK-norm, ReLU², zero-init projections, untied head)",
    "batch_size": "sequences per micro-batch",
    "gradient_accumulation_steps": "micro-batches per optimizer step, in all (split across ranks)",
    "max_iters": "optimizer steps of the whole run",
    "learning_rate": "peak learning rate",
    "weight_decay": "AdamW weight decay of the matrices",
    "beta1": "AdamW beta1",
    "beta2": "AdamW beta2",
    "grad_clip": "clip the gradient norm to this (0: no clipping)",
    "decay_lr": "linear warmup then cosine decay (false: constant learning_rate)",
    "warmup_iters": "warmup steps",
    "lr_decay_iters": "step where the cosine decay reaches min_lr (nanoGPT: = max_iters)",
    "min_lr": "learning rate at the end of the decay",
    "optimizer": "adamw, or muon: Muon for the blocks' matrices, AdamW for embeddings, head, norms, biases",
    "muon_lr": "Muon's peak learning rate (same warmup and decay as learning_rate)",
    "muon_momentum": "Muon's momentum (Nesterov)",
    "muon_weight_decay": "Muon's decoupled weight decay",
    "muon_adjust_lr": "Muon's per-shape lr scale: original (sqrt(max(1, rows/cols))) or match_rms_adamw",
    "eval_interval": "evaluate every this many steps",
    "eval_iters": "batches per split in each evaluation",
    "log_interval": "log the loss every this many steps",
    "eval_only": "evaluate once and stop",
    "always_save_checkpoint": "false: also keep the best-val model as best.pt",
    "checkpoint_interval": "resume checkpoint every N steps (default: every eval, at most 5% of the time)",
    "keep_checkpoints": "resume checkpoints kept",
    "device": "auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps",
    "dtype": "auto, float32, bfloat16, float16",
    "compile": "torch.compile: auto (on for CUDA), true, false",
    "seed": "seed of the batches, dropout and initial weights",
    "peak_flops": "the device's peak FLOP/s for MFU (default: a GPU table or a CPU measurement)",
    "wandb_log": "also log to Weights & Biases",
    "wandb_project": "W&B project",
    "wandb_run_name": "W&B run name (default: the run's name)",
    "nproc_per_node": "processes per node (torchrun): one per GPU",
    "nnodes": "nodes (SLURM: one task per node)",
    "backend": "auto (nccl on CUDA, gloo otherwise), nccl, gloo",
}


def settings_help() -> str:
    """Every run setting as `--name=default  meaning`, by section: the epilog of `nanogpt train --help`."""
    lines = ["settings (nanoGPT style --key=value; --key-name=value works too):",
             f"  {'--dataset=NAME':34} {SETTING_HELP['dataset']}",
             f"  {'--init_from=scratch':34} {SETTING_HELP['init_from']}"]
    for section, cls in _SECTIONS.items():
        lines.append(f" {section}:")
        for f in fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            shown = "null" if default is None else str(default).lower() if isinstance(default, bool) else default
            lines.append(f"  {f'--{f.name}={shown}':34} {SETTING_HELP[f.name]}")
    return "\n".join(lines)
DTYPES = ("auto", "float32", "bfloat16", "float16")


def check_dtype(value: str, where: str) -> str:
    if value not in DTYPES:
        raise ConfigError(f"{where}={value!r}: expected one of {', '.join(DTYPES)}")
    return value


def check_device(value: str, where: str) -> str:
    if not (value in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", value)):
        raise ConfigError(f"{where}={value!r}: expected auto, cpu, cuda, cuda:N or mps")
    return value


# Generation beyond this many tokens per sample is a typo, not a plan (the output is held in memory).
MAX_NEW_TOKENS_LIMIT = 1_000_000
MAX_NUM_SAMPLES = 100_000
MAX_SAMPLE_TOKENS = 10_000_000  # num_samples x max_new_tokens: hours of generation for a GPT-2 on a GPU


@dataclass
class SampleSettings:
    """A `samples:` entry (or `nanogpt sample`'s flags): nanoGPT's sample.py options."""

    model: str
    start: str = "\n"
    num_samples: int = 10
    max_new_tokens: int = 500
    temperature: float = 0.8
    top_k: int | None = 200
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"

    def validate(self, where: str) -> SampleSettings:
        if not 1 <= self.num_samples <= MAX_NUM_SAMPLES:
            raise ConfigError(f"{where}.num_samples={self.num_samples}: expected an integer in [1, {MAX_NUM_SAMPLES}]")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise ConfigError(f"{where}.max_new_tokens={self.max_new_tokens}: expected an integer in "
                              f"[1, {MAX_NEW_TOKENS_LIMIT:,}]")
        if self.num_samples * self.max_new_tokens > MAX_SAMPLE_TOKENS:
            raise ConfigError(f"{where}: num_samples={self.num_samples} x max_new_tokens={self.max_new_tokens} = "
                              f"{self.num_samples * self.max_new_tokens:,} tokens: expected at most "
                              f"{MAX_SAMPLE_TOKENS:,} tokens in all")
        if self.temperature <= 0:
            raise ConfigError(f"{where}.temperature={self.temperature}: expected a positive finite number")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"{where}.top_k={self.top_k}: expected a positive integer, or null for no top-k")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"{where}.seed={self.seed}: expected an integer in [0, 2**63)")
        if not self.start:
            raise ConfigError(f"{where}.start is empty: expected prompt text or FILE:path")
        check_device(self.device, f"{where}.device")
        check_dtype(self.dtype, f"{where}.dtype")
        return self


@dataclass
class EvalSettings:
    """How a model is evaluated on a dataset (nanoGPT's eval_gpt2*.py defaults)."""

    batch_size: int = 8
    eval_iters: int = 500
    block_size: int | None = None  # None: the model's
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"
    splits: str = "train,val"
    compile: bool | str = "auto"  # auto: on for CUDA

    def validate(self, where: str) -> EvalSettings:
        for key in ("batch_size", "eval_iters"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}={getattr(self, key)}: expected a positive integer")
        if self.block_size is not None and self.block_size < 1:
            raise ConfigError(f"{where}.block_size={self.block_size}: expected a positive integer or null")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"{where}.seed={self.seed}: expected an integer in [0, 2**63)")
        parts = self.splits.split(",")
        if not parts or any(p not in ("train", "val") for p in parts) or len(set(parts)) != len(parts):
            raise ConfigError(f"{where}.splits={self.splits!r}: expected a comma-separated subset of train,val")
        if self.compile not in (True, False, "auto"):
            raise ConfigError(f"{where}.compile={self.compile!r}: expected true, false or auto")
        check_device(self.device, f"{where}.device")
        check_dtype(self.dtype, f"{where}.dtype")
        return self

    @property
    def split_names(self) -> tuple[str, ...]:
        return tuple(self.splits.split(","))


DATASET_KEYS = ("source", "hf", "files", "path", "tokenizer", "val_fraction", "seed", "dtype", "text_column")
# A `path:` file with one of these endings is a corpus of documents (read like `files:`); any other file is one
# text, split by characters like a `source:` text.
CORPUS_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")


def dataset_kind(spec: dict) -> str:
    """source | hf | files (as written), or for `path:` entries: text (one text file) | corpus (documents)."""
    if "path" not in spec:
        return next(k for k in ("source", "hf", "files") if k in spec)
    path = Path(str(spec["path"])).expanduser()
    return "text" if path.is_file() and path.suffix.lower() not in CORPUS_SUFFIXES else "corpus"


def as_files_spec(spec: dict) -> dict:
    """A corpus `path:` entry as the `files:` entry it stands for: the file, the glob, or a folder's data files."""
    path = Path(str(spec["path"])).expanduser()
    if path.is_dir():
        found = sorted(str(p) for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        found = [str(spec["path"])]
    return {**{k: v for k, v in spec.items() if k != "path"}, "files": {"paths": found}}
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


# A dataset's settings, one default each, by what it holds: nanoGPT's prepare scripts split one text 90/10 by
# characters (shakespeare_char), and hold out 0.05% of a corpus's documents, drawn with seed 2357 (openwebtext).
TEXT_DEFAULTS = {"tokenizer": "char", "val_fraction": 0.1, "seed": 0}
CORPUS_DEFAULTS = {"tokenizer": "gpt2", "val_fraction": 0.0005, "seed": 2357}


@dataclass(frozen=True)
class DatasetSettings:
    """How a dataset is tokenized and split, checked when made (its source stays in the entry: source, hf,
    files or path). `kind`: source | text (one text, split by characters) | hf | files | corpus (documents)."""

    name: str
    kind: str
    tokenizer: str
    val_fraction: float
    seed: int
    dtype: str | None = None
    text_column: str = "text"

    def __post_init__(self) -> None:
        where = f"datasets.{self.name}"
        tokenizers = ("char", "gpt2") if self.is_text else ("gpt2",)
        if self.tokenizer not in tokenizers:
            raise ConfigError(f"{where}.tokenizer={self.tokenizer!r}: expected one of {', '.join(tokenizers)}")
        fraction = self.val_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
            raise ConfigError(f"{where}.val_fraction={fraction!r}: expected a number between 0 and 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"{where}.seed={self.seed!r}: expected an integer in [0, 2**32)")
        if self.dtype not in (None, "uint16", "uint32"):
            raise ConfigError(f"{where}.dtype={self.dtype!r}: expected uint16, uint32 or null")
        if not isinstance(self.text_column, str):
            raise ConfigError(f"{where}.text_column={self.text_column!r}: expected a column name")

    @property
    def is_text(self) -> bool:
        """One text split by characters (a downloaded `source:` or a local text file), not documents."""
        return self.kind in ("source", "text")

    @classmethod
    def for_text(cls, name: str = "dataset", **settings: Any) -> DatasetSettings:
        """A text dataset's settings: TEXT_DEFAULTS where `settings` leave them out (None counts as left out)."""
        return cls(name=name, kind="text", **TEXT_DEFAULTS | {k: v for k, v in settings.items() if v is not None})


def check_dataset(spec: dict, name: str) -> DatasetSettings:
    """A `datasets:` entry: known keys, one kind of source, and its settings (before any job starts)."""
    where = f"datasets.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}={spec!r}: expected a mapping")
    for key in spec:
        if key not in DATASET_KEYS:
            raise ConfigError(f"unknown key {where}.{key}{suggest(key, list(DATASET_KEYS))}")
    kinds = [k for k in ("source", "hf", "files", "path") if k in spec]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: has {kinds or 'none'} of source / hf / files / path: expected exactly one")
    if "source" in spec:
        src = spec["source"]
        if not isinstance(src, dict) or not isinstance(src.get("url"), str) or "sha256" not in src:
            raise ConfigError(f"{where}.source={src!r}: expected a mapping with url and sha256")
        if not isinstance(src["sha256"], str) or not _SHA256_RE.fullmatch(src["sha256"]):
            raise ConfigError(f"{where}.source.sha256={src['sha256']!r}: expected 64 lowercase hex digits")
    elif "path" in spec:
        if not isinstance(spec["path"], str) or not spec["path"].strip():
            raise ConfigError(f"{where}.path={spec['path']!r}: expected a text file, a folder or a glob of data files")
    elif not isinstance(spec[kinds[0]], dict):
        raise ConfigError(f"{where}.{kinds[0]}={spec[kinds[0]]!r}: expected a mapping")
    kind = dataset_kind(spec)
    defaults = TEXT_DEFAULTS if kind in ("source", "text") else CORPUS_DEFAULTS
    settings = {k: spec[k] for k in ("tokenizer", "val_fraction", "seed", "dtype", "text_column") if k in spec}
    return DatasetSettings(name=name, kind=kind, **defaults | settings)


def resolve_sample(entry: dict, where: str = "sample") -> SampleSettings:
    """A `samples:` entry (or the CLI's flags as a dict) -> validated SampleSettings."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}={entry!r}: expected a mapping")
    entry = floats_from_strings(dict(entry))
    if "model" not in entry:
        raise ConfigError(f"{where}: missing required key 'model'")
    return _build(SampleSettings, entry, where).validate(where)


def resolve_eval(entry: dict, where: str = "eval") -> EvalSettings:
    """The evaluation settings of an `evals:` entry (model, datasets and resources are the pipeline's)."""
    entry = floats_from_strings({k: v for k, v in entry.items() if k not in ("model", "datasets", "resources")})
    if isinstance(entry.get("splits"), list):
        entry["splits"] = ",".join(map(str, entry["splits"]))
    return _build(EvalSettings, entry, where).validate(where)


def suggest(key: str, known: list[str]) -> str:
    """' (did you mean 'x'?)' for the closest of `known`, or ''."""
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


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


def _build(cls: type, values: dict, where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}={values!r}: expected a mapping")
    known = typing.get_type_hints(cls)  # the fields' types (annotations are strings under __future__)
    for key in values:
        if key not in known:
            raise ConfigError(f"unknown key {where}.{key}{suggest(key, list(known))}")
    kwargs = {k: _check_type(f"{where}.{k}", v, known[k]) for k, v in values.items()}
    return cls(**kwargs)


def _validate_optimizer(t: TrainSettings, name: str) -> None:
    """The optimizer's name and Muon's own settings (checked whichever optimizer is chosen: a typo stays one)."""
    if t.optimizer not in OPTIMIZERS:
        raise ConfigError(f"runs.{name}.train.optimizer={t.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
    if t.muon_adjust_lr not in MUON_ADJUST_LR:
        raise ConfigError(f"runs.{name}.train.muon_adjust_lr={t.muon_adjust_lr!r}: expected one of "
                          f"{', '.join(MUON_ADJUST_LR)}")
    if not 0 < t.muon_lr <= 10:
        raise ConfigError(f"runs.{name}.train.muon_lr={t.muon_lr}: expected a number in (0, 10]")
    if not 0 <= t.muon_momentum < 1:
        raise ConfigError(f"runs.{name}.train.muon_momentum={t.muon_momentum}: expected a number in [0, 1)")
    if not 0 <= t.muon_weight_decay * t.muon_lr < 1:
        raise ConfigError(f"runs.{name}.train.muon_weight_decay={t.muon_weight_decay}: expected a number >= 0 "
                          f"with muon_weight_decay x muon_lr < 1")


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
        model=_build(ModelSettings, entry.get("model", {}), f"runs.{name}.model"),
        train=_build(TrainSettings, entry.get("train", {}), f"runs.{name}.train"),
        launch=_build(LaunchSettings, entry.get("launch", {}), f"runs.{name}.launch"),
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
        if section not in _SECTIONS:
            raise ConfigError(f"unknown override {key!r}: expected one of {', '.join(_SECTIONS)} before the dot")
        entry.setdefault(section, {})[sub] = value
        return
    if key in ("dataset", "init_from"):
        entry[key] = value
        return
    for section, cls in _SECTIONS.items():
        if key in {f.name for f in fields(cls)}:
            entry.setdefault(section, {})[key] = value
            return
    known = ["dataset", "init_from"] + [f.name for cls in _SECTIONS.values() for f in fields(cls)]
    raise ConfigError(f"unknown setting {key!r}{suggest(key, known)}")


def parse_overrides(args: list[str]) -> dict:
    """`--key=value` / `key=value` strings -> dict; values are parsed as YAML scalars (1e-3, true, null)."""
    out = {}
    for arg in args:
        text = arg.removeprefix("--")
        if "=" not in text:
            raise ConfigError(f"override {arg!r}: expected --key=value")
        key, raw = text.split("=", 1)
        import yaml  # here, not at the top: the package imports with torch alone (a bare GPU box)

        if raw.count("[") + raw.count("{") > 64:  # fileio.JSON_MAX_DEPTH: PyYAML would recurse, slowly, to its limit
            raise ConfigError(f"override {arg[:80]!r}: over 64 brackets: expected a number, true/false, null or text")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except (yaml.YAMLError, RecursionError) as e:  # `--x=[1`, `--x=a: b: c`, a thousand nested brackets
            problem = getattr(e, "problem", None) or type(e).__name__
            raise ConfigError(f"override {arg[:80]!r}: the value is not valid YAML ({problem}): expected a "
                              "number, true/false, null or text") from None
        out[key.replace("-", "_")] = floats_from_strings(value)
    return out


def load_yaml(path: str | Path) -> dict:
    """Read a YAML file with a one-line error for a missing or malformed file."""
    import yaml

    from nanogpt.fileio import check_config_files, not_a_file

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} {not_a_file(path)}: expected a YAML file")
    check_config_files([path])  # size, nesting, alias bombs, YTE: refused before PyYAML builds anything
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"malformed YAML in {str(path)!r}{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r}: expected a mapping at the top level, got {type(data).__name__}")
    return floats_from_strings(data)


def floats_from_strings(obj: Any) -> Any:
    """Turn YAML 1.1's string '6e-4' into 6e-4 everywhere (PyYAML needs a dot for float exponents)."""
    if isinstance(obj, dict):
        return {k: floats_from_strings(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [floats_from_strings(v) for v in obj]
    if isinstance(obj, str):
        try:
            if any(c in obj for c in "eE") and obj.strip()[0] in "+-0123456789.":
                return float(obj)
        except ValueError:
            pass
    return obj
