"""Every setting, declared once: one line each, its type, default, help, range or choices, and whether it can
change the weights a run ends with.

From the declarations come the checks (`check_fields`), `nanogpt train --help` and the sample/eval flags
(nanogpt.cli), the JSON schema's settings blocks (nanogpt.pipeline.schema), the configuration reference
(docs/settings.md, written by `nanogpt schema --docs`) and a run's trajectory (RunConfig.trajectory).
Adding a setting is one line here, plus the code that uses it. Checks that relate several settings
(n_embd % n_head, min_lr <= learning_rate, the world size) stay short explicit code beside their dataclass.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from nanogpt.errors import ConfigError

ARCHS = ("gpt2", "modern")
OPTIMIZERS = ("adamw", "muon")
MUON_ADJUST_LR = ("original", "match_rms_adamw")  # torch.optim.Muon's adjust_lr_fn
DTYPES = ("auto", "float32", "bfloat16", "float16")
BACKENDS = ("auto", "nccl", "gloo")
COMPILE = (True, False, "auto")
DEVICE_PATTERN = r"auto|cpu|cuda|cuda:\d+|mps"

# Upper bounds a real run still fits under; past them a value is a typo that would cost days or memory.
MAX_ITERS = 10_000_000  # 16x nanoGPT's 600,000-iteration GPT-2 run
MAX_BLOCK = 2**20
MAX_SEED = 2**63


@dataclass(frozen=True)
class Declared:
    """What a setting's one line declares besides its type and default (a dataclass field's metadata)."""

    help: str
    ge: float | None = None  # value >= ge
    gt: float | None = None  # value > gt
    le: float | None = None  # value <= le
    lt: float | None = None  # value < lt
    choices: tuple | None = None
    pattern: str | None = None  # a regular expression the whole string matches
    shape: str = ""  # what the pattern stands for, in the error message
    trajectory: bool = True  # can change the weights a run ends with
    used_with: tuple[str, Any] | None = None  # (setting, value): used only when that setting has that value


def setting(default: Any, help: str, **declared: Any) -> Any:
    """A settings field: `lr: float = setting(6e-4, "peak learning rate", gt=0, le=10)`."""
    return field(default=default, metadata={"declared": Declared(help, **declared)})


def declared(f: dataclasses.Field) -> Declared:
    return f.metadata.get("declared") or Declared(help="")


def field_types(cls: type) -> dict[str, Any]:
    """Each field's real type (the annotations are strings under `from __future__ import annotations`)."""
    return typing.get_type_hints(cls)


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def check_fields(settings: Any, where: str) -> None:
    """Every declared range, choice and pattern of a settings object; the first miss is one ConfigError naming
    `where.field=value` and what was expected."""
    types = field_types(type(settings))
    for f in fields(settings):
        value, d = getattr(settings, f.name), declared(f)
        if value is None or isinstance(value, bool) and d.choices is None:
            continue
        if not in_range(value, d, types[f.name]):
            raise ConfigError(f"{where}.{f.name}={value!r}: expected {expected(d, types[f.name])}")


def in_range(value: Any, d: Declared, kind: Any) -> bool:
    if d.choices is not None:
        return any(value is c if isinstance(c, bool) or isinstance(value, bool) else value == c for c in d.choices)
    if d.pattern is not None:
        return isinstance(value, str) and re.fullmatch(d.pattern, value) is not None
    if not isinstance(value, int | float):
        return True
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return not ((d.ge is not None and value < d.ge) or (d.gt is not None and value <= d.gt)
                or (d.le is not None and value > d.le) or (d.lt is not None and value >= d.lt))


def expected(d: Declared, kind: Any) -> str:
    """The 'expected ...' half of a range error, in words where the range is a common one."""
    optional = type(None) in typing.get_args(kind)
    orn = ", or null" if optional else ""
    if d.choices is not None:
        return f"one of {', '.join(_show(c) for c in d.choices)}{orn}"
    if typing.get_args(kind) == () and kind is bool:
        return "true or false"
    if typing.get_origin(kind) is tuple:
        return "a list of names"
    if d.pattern is not None:
        return f"{d.shape or 'a string matching ' + d.pattern}{orn}"
    if str in (typing.get_args(kind) or (kind,)):
        return f"text{orn}"
    integer = int in (typing.get_args(kind) or (kind,))
    noun = "an integer" if integer else "a number"
    low, high = d.ge if d.ge is not None else d.gt, d.le if d.le is not None else d.lt
    if high is None:
        if low is None:
            return f"{noun}{orn}"
        if (integer and d.ge == 1) or (not integer and d.gt == 0):
            return f"a positive {'integer' if integer else 'number'}{orn}"
        return f"{noun} {'>=' if d.ge is not None else '>'} {_show(low)}{orn}"
    opening = "[" if d.ge is not None else "(" if d.gt is not None else "(-inf"
    closing = "]" if d.le is not None else ")"
    low_text = "" if low is None else _show(low)
    return f"{noun} in {opening}{low_text}, {_show(high)}{closing}{orn}"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int) and value >= 2**32 and value & (value - 1) == 0:
        return f"2**{value.bit_length() - 1}"
    if isinstance(value, int) and value >= 10_000:
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def non_defaults(settings: Any) -> dict:
    """A settings dataclass's fields that differ from their defaults (a field without a default is always
    in): the canonical form of what was chosen, which a setting added later with a neutral default leaves as it is."""
    out = {}
    for f in fields(settings):
        value, default = getattr(settings, f.name), default_of(f)
        if default is dataclasses.MISSING or not same_value(value, default):
            out[f.name] = value
    return out


def same_value(a: Any, b: Any) -> bool:
    """Equal as settings: 1 and 1.0 are the same learning rate, True and 1 are not the same flag."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def weight_settings(settings: Any) -> dict:
    """The non-default settings that can change the weights under this object's own recipe: declared
    `trajectory`, and used by the recipe (a Muon setting of an AdamW run is not)."""
    out = {}
    for key, value in non_defaults(settings).items():
        d = declared(next(f for f in fields(settings) if f.name == key))
        if not d.trajectory:
            continue
        if d.used_with is not None and not same_value(getattr(settings, d.used_with[0]), d.used_with[1]):
            continue
        out[key] = value
    return out


@dataclass
class GPTConfig:
    """The model's shape: nanoGPT's GPTConfig, and `arch`."""

    block_size: int = setting(1024, "context length in tokens", ge=1, le=MAX_BLOCK)
    vocab_size: int = setting(50304, "token ids the model has (GPT-2's 50257 padded to a multiple of 64)",
                              ge=1, le=2**32)
    n_layer: int = setting(12, "transformer blocks", ge=1, le=1024)
    n_head: int = setting(12, "attention heads per block", ge=1, le=1024)
    n_embd: int = setting(768, "width of the residual stream", ge=1, le=65536)
    dropout: float = setting(0.0, "dropout probability (0 for pretraining, nanoGPT)", ge=0, lt=1)
    bias: bool = setting(True, "biases in Linear and LayerNorm layers, as GPT-2")
    arch: str = setting("gpt2", "gpt2 (nanoGPT's model) or modern (rotary, QK-norm, ReLU², zero-init "
                                "projections, untied head)", choices=ARCHS)

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"model.{name}={value!r}: expected a positive integer")
        check_fields(self, "model")
        if self.n_embd % self.n_head != 0:
            raise ConfigError(
                f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}: "
                "expected n_embd to be a multiple of n_head"
            )
        if self.arch == "modern" and (self.n_embd // self.n_head) % 2:
            raise ConfigError(f"model.n_embd // model.n_head = {self.n_embd // self.n_head}: expected an even head "
                              "size for arch modern (rotary embeddings turn pairs of dimensions)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class ModelSettings(GPTConfig):
    """A run's `model:` section: GPTConfig's settings, except that vocab_size null means the dataset's.

    It is checked as a GPTConfig once the vocabulary is known (RunConfig.gpt_config), not when it is built.
    """

    vocab_size: int | None = setting(None, "token ids the model has (default: the dataset's vocabulary)",
                                     ge=1, le=2**32)

    def __post_init__(self) -> None:
        pass


_MUON = ("optimizer", "muon")


@dataclass
class TrainSettings:
    """nanoGPT's train.py options (same names, same defaults unless noted)."""

    batch_size: int = setting(12, "sequences per micro-batch", ge=1, le=2**20)
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step, in all (split across ranks; "
                                                  "nanoGPT: 40)", ge=1, le=2**20)
    max_iters: int = setting(600000, "optimizer steps of the whole run", ge=1, le=MAX_ITERS)
    learning_rate: float = setting(6e-4, "peak learning rate", gt=0, le=10)
    weight_decay: float = setting(1e-1, "AdamW weight decay of the matrices", ge=0, le=100)
    beta1: float = setting(0.9, "AdamW beta1", ge=0, lt=1)
    beta2: float = setting(0.95, "AdamW beta2", ge=0, lt=1)
    grad_clip: float = setting(1.0, "clip the gradient norm to this (0: no clipping)", ge=0, le=1e6)
    decay_lr: bool = setting(True, "linear warmup then cosine decay (false: constant learning_rate)")
    warmup_iters: int = setting(2000, "warmup steps", ge=0, le=MAX_ITERS)
    lr_decay_iters: int = setting(600000, "step where the cosine decay reaches min_lr (nanoGPT: = max_iters)",
                                  ge=0, le=MAX_ITERS)
    min_lr: float = setting(6e-5, "learning rate at the end of the decay", ge=0, le=10)
    optimizer: str = setting("adamw", "adamw, or muon: Muon for the blocks' matrices, AdamW for embeddings, head, "
                                      "norms, biases", choices=OPTIMIZERS)
    muon_lr: float = setting(0.02, "Muon's peak learning rate (same warmup and decay as learning_rate)",
                             gt=0, le=10, used_with=_MUON)
    muon_momentum: float = setting(0.95, "Muon's momentum (Nesterov)", ge=0, lt=1, used_with=_MUON)
    muon_weight_decay: float = setting(0.0, "Muon's decoupled weight decay", ge=0, le=100, used_with=_MUON)
    muon_adjust_lr: str = setting("original", "Muon's per-shape lr scale: original (sqrt(max(1, rows/cols))) or "
                                              "match_rms_adamw", choices=MUON_ADJUST_LR, used_with=_MUON)
    loss_chunk_rows: int | None = setting(None, "the head and its loss this many rows at a time, gradients "
                                                "included, instead of batch_size x block_size rows of logits at "
                                                "once (nanogpt.fused_loss): less memory, the same loss up to "
                                                "rounding", ge=1, le=2**30)
    eval_interval: int = setting(2000, "evaluate every this many steps", ge=1, le=MAX_ITERS, trajectory=False)
    eval_iters: int = setting(200, "batches per split in each evaluation", ge=1, le=10**6, trajectory=False)
    log_interval: int = setting(1, "log the loss every this many steps", ge=1, le=MAX_ITERS, trajectory=False)
    eval_only: bool = setting(False, "evaluate once and stop")
    always_save_checkpoint: bool = setting(True, "false: also keep the best-val model as best.pt", trajectory=False)
    checkpoint_interval: int | None = setting(None, "resume checkpoint every N steps (default: every eval, at most "
                                                    "5% of the time)", ge=1, le=MAX_ITERS, trajectory=False)
    keep_checkpoints: int = setting(2, "resume checkpoints kept", ge=1, le=1000, trajectory=False)
    device: str = setting("auto", "auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps", pattern=DEVICE_PATTERN,
                          shape="auto, cpu, cuda, cuda:N or mps")
    dtype: str = setting("auto", "auto, float32, bfloat16, float16", choices=DTYPES)
    compile: bool | str = setting("auto", "torch.compile: auto (on for CUDA), true, false", choices=COMPILE,
                                  trajectory=False)
    seed: int = setting(1337, "seed of the batches, dropout and initial weights", ge=0, lt=MAX_SEED)
    peak_flops: float | None = setting(None, "the device's peak FLOP/s for MFU (default: a GPU table or a CPU "
                                             "measurement)", gt=0, le=1e21, trajectory=False)
    wandb_log: bool = setting(False, "also log to Weights & Biases", trajectory=False)
    wandb_project: str = setting("nanogpt", "W&B project", trajectory=False)
    wandb_run_name: str | None = setting(None, "W&B run name (default: the run's name)", trajectory=False)


@dataclass
class LaunchSettings:
    """How torchrun starts the run (the process count does not change the weights: DDP equals one process)."""

    nproc_per_node: int = setting(1, "processes per node (torchrun): one per GPU", ge=1, le=1024, trajectory=False)
    nnodes: int = setting(1, "nodes (SLURM: one task per node)", ge=1, le=100000, trajectory=False)
    backend: str = setting("auto", "auto (nccl on CUDA, gloo otherwise), nccl, gloo", choices=BACKENDS,
                           trajectory=False)


@dataclass
class Resources:
    """A job's scheduler resources (`resources:` of a run or an eval; SLURM reads them, locally only the threads
    and GPUs matter). None: the job's own default (Jobs)."""

    gpus: int | None = setting(None, "GPUs per node (0: none)", ge=0, le=1024)
    cpus_per_task: int | None = setting(None, "CPUs per node (the rule's threads)", ge=1, le=4096)
    mem_mb: int | None = setting(None, "memory per node in MB", ge=1, le=2**30)
    runtime: int | None = setting(None, "time limit in minutes", ge=1, le=10**6)
    slurm_partition: str | None = setting(None, "SLURM partition")
    slurm_extra: str | None = setting(None, "extra sbatch options, as one string")


# Generation beyond this many tokens per sample is a typo, not a plan (the output is held in memory).
MAX_NEW_TOKENS_LIMIT = 1_000_000
MAX_NUM_SAMPLES = 100_000
MAX_SAMPLE_TOKENS = 10_000_000  # num_samples x max_new_tokens: hours of generation for a GPT-2 on a GPU


@dataclass
class SampleSettings:
    """A `samples:` entry (or `nanogpt sample`'s flags): nanoGPT's sample.py options."""

    model: str = field(metadata={"declared": Declared("a run name, gpt2*, or an entry under `pretrained`")})
    start: str = setting("\n", "prompt text, or FILE:path", pattern=r"(?s).+", shape="prompt text or FILE:path")
    num_samples: int = setting(10, "how many samples", ge=1, le=MAX_NUM_SAMPLES)
    max_new_tokens: int = setting(500, "tokens generated per sample", ge=1, le=MAX_NEW_TOKENS_LIMIT)
    temperature: float = setting(0.8, "softmax temperature (lower: more likely tokens)", gt=0, le=100)
    top_k: int | None = setting(200, "keep the k likeliest tokens (null: all)", ge=1, le=2**32)
    seed: int = setting(1337, "random seed", ge=0, lt=MAX_SEED)
    device: str = setting("auto", "cpu, cuda, cuda:N, mps, or auto (cuda > mps > cpu)", pattern=DEVICE_PATTERN,
                          shape="auto, cpu, cuda, cuda:N or mps")
    dtype: str = setting("auto", "float32, bfloat16 (the weights cast once), float16 (autocast), or auto (bf16 "
                                 "where the device has bf16 units, as training's auto)", choices=DTYPES)


@dataclass
class EvalSettings:
    """How a model is evaluated on a dataset (nanoGPT's eval_gpt2*.py defaults)."""

    batch_size: int = setting(8, "sequences per batch", ge=1, le=2**20)
    eval_iters: int = setting(500, "batches per split", ge=1, le=10**6)
    block_size: int | None = setting(None, "tokens per sequence (null: the model's)", ge=1, le=MAX_BLOCK)
    seed: int = setting(1337, "random seed of the batch positions", ge=0, lt=MAX_SEED)
    device: str = setting("auto", "cpu, cuda, cuda:N, mps, or auto (cuda > mps > cpu)", pattern=DEVICE_PATTERN,
                          shape="auto, cpu, cuda, cuda:N or mps")
    dtype: str = setting("auto", "float32, bfloat16, float16, or auto", choices=DTYPES)
    splits: str = setting("train,val", "comma-separated splits to evaluate (config.yaml: a list)",
                          pattern=r"(train|val)(,(train|val))?", shape="a comma-separated subset of train,val")
    compile: bool | str = setting("auto", "torch.compile the model: true, false, or auto (on for CUDA)",
                                  choices=COMPILE)

    @property
    def split_names(self) -> tuple[str, ...]:
        return tuple(self.splits.split(","))


@dataclass
class HellaSwagSettings:
    """How a HellaSwag `evals:` entry (`task: hellaswag`) is scored. dtype auto: the run's own train dtype (the
    pipeline passes it), else the device's default (bf16 on a GPU that has it)."""

    limit: int | None = setting(None, "score the first N items only (null: all); stated in every output",
                                ge=1, le=10**6)
    device: str = setting("auto", "cpu, cuda, cuda:N, mps, or auto (cuda > mps > cpu)", pattern=DEVICE_PATTERN,
                          shape="auto, cpu, cuda, cuda:N or mps")
    dtype: str = setting("auto", "float32, bfloat16, float16, or auto (the run's own)", choices=DTYPES)


def _per_kind(help: str, **declared: Any) -> dict:
    """A dataset setting whose default depends on what the dataset holds (TEXT_DEFAULTS, CORPUS_DEFAULTS)."""
    return {"declared": Declared(help, **declared)}


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
    tokenizer: str = field(metadata=_per_kind("char (one character per token) or gpt2 (GPT-2 BPE)",
                                              choices=("char", "gpt2")))
    val_fraction: float = field(metadata=_per_kind("the share held out for validation (a text: its last "
                                                   "characters; a corpus: whole documents)", gt=0, lt=1))
    seed: int = field(metadata=_per_kind("seed of the documents drawn for validation", ge=0, lt=2**32))
    dtype: str | None = setting(None, "token dtype of train.bin/val.bin (null: uint16 when the vocabulary fits)",
                                choices=("uint16", "uint32"))
    text_column: str = setting("text", "a corpus's column (or JSON key) holding the text")
    raw_text: bool = setting(False, "a text's bytes as they are (false: CRLF and lone CR line ends become \\n, a "
                                    "UTF-8 BOM is dropped)")
    vocab_from: tuple[str, ...] = setting((), "char datasets whose characters this dataset's vocabulary also holds "
                                              "(to finetune its model on them)")

    def __post_init__(self) -> None:
        where = f"datasets.{self.name}"
        tokenizers = ("char", "gpt2") if self.is_text else ("gpt2",)
        if self.tokenizer not in tokenizers:
            raise ConfigError(f"{where}.tokenizer={self.tokenizer!r}: expected one of {', '.join(tokenizers)}")
        if isinstance(self.val_fraction, bool) or not isinstance(self.val_fraction, int | float):
            raise ConfigError(f"{where}.val_fraction={self.val_fraction!r}: expected a number in (0, 1)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"{where}.seed={self.seed!r}: expected an integer")
        check_fields(self, where)
        if not isinstance(self.text_column, str):
            raise ConfigError(f"{where}.text_column={self.text_column!r}: expected a column name")
        if not isinstance(self.raw_text, bool) or (self.raw_text and not self.is_text):
            raise ConfigError(f"{where}.raw_text={self.raw_text!r}: expected true or false, on a text dataset")
        names = self.vocab_from
        if not isinstance(names, tuple) or not all(isinstance(n, str) and n != self.name for n in names) or (
                names and self.tokenizer != "char"):
            raise ConfigError(f"{where}.vocab_from={list(names) if isinstance(names, tuple) else names!r}: expected "
                              "a list of other char datasets' names, on a char dataset (tokenizer: char)")

    @property
    def is_text(self) -> bool:
        """One text split by characters (a downloaded `source:` or a local text file), not documents."""
        return self.kind in ("source", "text")

    @classmethod
    def for_text(cls, name: str = "dataset", **settings: Any) -> DatasetSettings:
        """A text dataset's settings: TEXT_DEFAULTS where `settings` leave them out (None counts as left out)."""
        return cls(name=name, kind="text", **TEXT_DEFAULTS | {k: v for k, v in settings.items() if v is not None})




# A run entry's settings sections, in the order `nanogpt train --help` lists them.
RUN_SECTIONS: dict[str, type] = {"model": ModelSettings, "train": TrainSettings, "launch": LaunchSettings}


def settings_help() -> str:
    """Every run setting as `--name=default  meaning`, by section: the epilog of `nanogpt train --help`."""
    lines = ["settings (nanoGPT style --key=value; --key-name=value works too):",
             f"  {'--dataset=NAME':34} the prepared dataset (a `datasets:` name)",
             f"  {'--init_from=scratch':34} scratch, resume, gpt2*, a run's name, a local HF folder or a .pt file"]
    for section, cls in RUN_SECTIONS.items():
        lines.append(f" {section}:")
        for f in fields(cls):
            lines.append(f"  {f'--{f.name}={show_default(default_of(f))}':34} {declared(f).help}")
    return "\n".join(lines)


def show_default(value: Any) -> str:
    """A default as config.yaml spells it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str) and not value.isprintable():
        return repr(value)
    if isinstance(value, tuple):
        return str(list(value))
    return str(value)
