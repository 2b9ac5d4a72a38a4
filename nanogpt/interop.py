"""Other tools' files, both ways: nanoGPT's `ckpt.pt` and `meta.pkl`, and the tokenizer of a Hugging Face export.

- `export_nanogpt`: one of our checkpoints -> `ckpt.pt` in nanoGPT's layout (model, model_args, iter_num,
  best_val_loss, config, and optimizer when the checkpoint has one), plus `meta.pkl` for char models, so
  nanoGPT's own sample.py and train.py (init_from='resume') read it with their default `torch.load`.
- `read_meta_pkl`: nanoGPT's meta.pkl through a restricted unpickler whose `find_class` refuses every global:
  only dicts, lists, tuples, strings and numbers can come out of it, so a payload pickle fails before any of
  its code could run.
- `hf_tokenizer`: the `tokenizers`-library tokenizer an HF export carries (GPT-2 BPE built from the same
  encoder.json/vocab.bpe as ours, or one token per character), so AutoTokenizer encodes like we do.
- `checkpoint_in_folder`: a run folder in; whole folders out go through nanogpt.exportdir.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
from pathlib import Path
from typing import Any

from nanogpt import exportdir, fileio
from nanogpt.errors import ConfigError

# nanoGPT's GPTConfig fields: its sample.py calls GPTConfig(**model_args), so no other key may be there.
NANOGPT_MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")
# The globals of nanoGPT's train.py that end up in its checkpoint's `config`.
NANOGPT_CONFIG_KEYS = (
    "out_dir", "eval_interval", "log_interval", "eval_iters", "eval_only", "always_save_checkpoint", "init_from",
    "dataset", "gradient_accumulation_steps", "batch_size", "block_size", "n_layer", "n_head", "n_embd", "dropout",
    "bias", "learning_rate", "max_iters", "weight_decay", "beta1", "beta2", "grad_clip", "decay_lr",
    "warmup_iters", "lr_decay_iters", "min_lr", "backend", "device", "dtype", "compile",
)
_SCALARS = (str, int, float, bool, type(None))
GPT2_SPECIAL = "<|endoftext|>"
CHAR_PATTERN = r"[\s\S]"  # any one character, newlines included: the char tokenizer's split
log = logging.getLogger(__name__)


# ---- reading nanoGPT's meta.pkl ----------------------------------------------------------------------------

META_PKL_MAX_BYTES = 2**20  # nanoGPT's char meta.pkl is a few KB; 1 MiB holds ~60,000 characters
_PICKLE_MAX_DEPTH = 20
_HASHES_TO_ITSELF = 2**61 - 1  # ints below this hash to themselves: no crafted keys that share a hash


class _Refused(pickle.UnpicklingError):
    """A pickle that asks for a global (a class or function): the only way a pickle can run code."""


def _check_key(key: Any) -> None:
    """A dict key may be a string, bytes or a small int: those cannot be crafted to share one hash (string hashes
    are salted), which would make building the dict quadratic. Unhashable keys fail as unreadable."""
    if isinstance(key, str | bytes) or (type(key) in (int, bool) and abs(key) < _HASHES_TO_ITSELF):
        return
    if isinstance(key, dict | list):
        raise TypeError(f"unhashable type: '{type(key).__name__}'")
    value = f" ({fileio.short_repr(key, 30)})" if isinstance(key, int | float) else ""
    raise _Refused(f"a dict key of type {type(key).__name__}{value}")


class _PlainUnpickler(pickle._Unpickler):
    """Builds only what pickle's own opcodes make (dict, list, tuple, str, bytes, numbers, None).

    The pure-Python unpickler, whose opcodes can be checked one by one while the pickle is read: globals (the
    way to run code), extension codes, sets and dict keys other than strings and small ints are refused before
    they are built, so a crafted small pickle cannot keep the interpreter busy for minutes.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("a persistent id")

    def _refuse_set(self) -> None:
        raise _Refused("a set")

    def _refuse_extension(self) -> None:
        raise _Refused("an extension code (a registered class)")

    def _load_dict(self) -> None:
        items = self.pop_mark()
        for key in items[::2]:
            _check_key(key)
        self.append({items[i]: items[i + 1] for i in range(0, len(items), 2)})

    def _load_setitem(self) -> None:
        _check_key(self.stack[-2])
        value, key = self.stack.pop(), self.stack.pop()
        self.stack[-1][key] = value

    def _load_setitems(self) -> None:
        items = self.pop_mark()
        for key in items[::2]:
            _check_key(key)
        target = self.stack[-1]
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    for _op in (pickle.EMPTY_SET, pickle.ADDITEMS, pickle.FROZENSET):
        dispatch[_op[0]] = _refuse_set
    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _refuse_extension
    dispatch[pickle.DICT[0]] = _load_dict
    dispatch[pickle.SETITEM[0]] = _load_setitem
    dispatch[pickle.SETITEMS[0]] = _load_setitems
    del _op


def _check_plain(obj: Any) -> None:
    """Only plain containers, strings and numbers, at most 20 levels deep. Each container is checked once (by
    id), so a pickle that shares one list many times over costs its distinct objects, not its paths."""
    seen, stack = set(), [(obj, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, _SCALARS):
            continue
        if not isinstance(node, dict | list | tuple):
            raise _Refused(f"a {type(node).__name__}")
        if depth >= _PICKLE_MAX_DEPTH:
            raise _Refused(f"nesting deeper than {_PICKLE_MAX_DEPTH} levels")
        if id(node) not in seen:
            seen.add(id(node))
            stack.extend((child, depth + 1) for child in ([*node, *node.values()] if isinstance(node, dict) else node))


def load_plain_pickle(data: bytes, label: str) -> Any:
    """Unpickle `data` admitting only plain containers, strings and numbers; anything else is a ConfigError."""
    expected = "expected nanoGPT's meta.pkl: a pickle of plain dicts, strings and numbers"
    if len(data) > META_PKL_MAX_BYTES:
        raise ConfigError(f"{label} is {len(data):,} bytes: expected at most {META_PKL_MAX_BYTES // 2**20} MiB, the "
                          f"size limit of {expected.removeprefix('expected ')}")
    try:
        obj = _PlainUnpickler(io.BytesIO(data)).load()
        _check_plain(obj)
    except _Refused as e:
        raise ConfigError(f"{label} holds {e}, refused (nothing from it was run): {expected}") from None
    except Exception as e:  # truncated or not a pickle at all: UnpicklingError, EOFError, ValueError, ...
        detail = str(e).strip().splitlines()[0][:80] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{label} is not a readable pickle ({detail}): {expected}") from None
    return obj


def meta_from_nanogpt(obj: Any, label: str, dataset: str | None = None) -> dict:
    """nanoGPT's char meta {'vocab_size', 'itos', 'stoi'} -> our meta.json dict (tokenizer kind 'char')."""
    expected = "expected nanoGPT's char-level meta.pkl with 'vocab_size', 'itos' and 'stoi'"
    if not isinstance(obj, dict) or "itos" not in obj or "stoi" not in obj:
        keys = sorted(fileio.short_repr(k) for k in obj)[:5] if isinstance(obj, dict) else type(obj).__name__
        raise ConfigError(f"{label} has {keys}: {expected}")
    itos, stoi = obj["itos"], obj["stoi"]
    if isinstance(itos, list):
        itos = dict(enumerate(itos))
    if not isinstance(itos, dict) or not isinstance(stoi, dict):
        raise ConfigError(f"{label}: 'itos' and 'stoi' are {type(itos).__name__} and {type(stoi).__name__}: "
                          f"{expected}")
    n = len(itos)
    if set(itos) != set(range(n)) or any(isinstance(i, bool) for i in itos):
        raise ConfigError(f"{label}: 'itos' keys are not 0..{n - 1}: {expected}")
    chars = [itos[i] for i in range(n)]
    bad = next((c for c in chars if not isinstance(c, str) or len(c) != 1), None)
    if bad is not None or len(set(chars)) != n:
        what = f"entry {fileio.short_repr(bad)}" if bad is not None else "a repeated character"
        raise ConfigError(f"{label}: 'itos' has {what}: expected {n} distinct single characters")
    if stoi != {c: i for i, c in enumerate(chars)}:
        raise ConfigError(f"{label}: 'stoi' is not the inverse of 'itos': {expected}")
    if obj.get("vocab_size", n) != n:
        raise ConfigError(f"{label}: vocab_size={fileio.short_repr(obj['vocab_size'])} but 'itos' has {n} entries: "
                          f"{expected}")
    meta = {"tokenizer": {"kind": "char", "vocab_size": n, "chars": chars}, "vocab_size": n}
    if dataset:
        meta["dataset"] = dataset
    return meta


def read_meta_pkl(path: str | os.PathLike, label: str | None = None) -> dict:
    """nanoGPT's data/<dataset>/meta.pkl as our meta.json dict, read without running anything from it."""
    path = Path(path)
    label = label or f"meta.pkl {str(path)!r}"
    if not path.is_file():
        raise ConfigError(f"{label} {fileio.not_a_file(path)}: expected nanoGPT's meta.pkl")
    data = fileio.read_capped(path, META_PKL_MAX_BYTES, "meta.pkl", ConfigError)
    return meta_from_nanogpt(load_plain_pickle(data, label), label, dataset=path.parent.name)


def nanogpt_meta(tokenizer_meta: dict) -> dict:
    """Our char tokenizer description -> the dict nanoGPT's prepare.py pickles as meta.pkl."""
    chars = list(tokenizer_meta["chars"])
    return {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}}


# ---- run folders in, whole folders out ---------------------------------------------------------------------

def checkpoint_in_folder(folder: str | os.PathLike) -> Path | None:
    """The checkpoint of a run folder: our model.pt, else nanoGPT's ckpt.pt; None for a Hugging Face folder."""
    folder = Path(folder)
    for name in ("model.pt", "ckpt.pt"):
        if (folder / name).is_file():
            return folder / name
    if (folder / "config.json").is_file():
        return None
    from nanogpt.checkpoint import CheckpointError

    raise CheckpointError(
        f"folder {str(folder)!r} has neither model.pt nor ckpt.pt: expected a run folder (ours: model.pt; "
        "nanoGPT's out_dir: ckpt.pt), a .pt file, or a Hugging Face model folder (config.json)"
    )


def _plain_scalars(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(k, str) and isinstance(v, _SCALARS)}


def nanogpt_config(ckpt: dict, model_args: dict, dataset: str | None) -> dict:
    """nanoGPT's flat train.py `config` from ours (dataset, init_from, model/train/launch sections)."""
    cfg = ckpt.get("config")
    cfg = cfg if isinstance(cfg, dict) else {}
    if isinstance(cfg.get("train"), dict) or isinstance(cfg.get("model"), dict):  # one of our runs
        flat = {k: cfg[k] for k in ("dataset", "init_from") if isinstance(cfg.get(k), str)}
        for section in ("train", "launch"):
            if isinstance(cfg.get(section), dict):
                flat.update(_plain_scalars(cfg[section]))
        flat = {k: v for k, v in flat.items() if k in NANOGPT_CONFIG_KEYS}
    else:  # nanoGPT's own (flat) config, or none
        flat = _plain_scalars(cfg)
    flat.update({k: model_args[k] for k in NANOGPT_MODEL_ARGS if k in NANOGPT_CONFIG_KEYS})
    if dataset and not isinstance(flat.get("dataset"), str):
        flat["dataset"] = dataset
    return flat


def export_nanogpt(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, meta: dict | None = None,
                   force: bool | None = None) -> Path:
    """Write `out_dir/ckpt.pt` in nanoGPT's layout and, for a char model, nanoGPT's `out_dir/meta.pkl`.

    `meta` (a dataset's meta.json dict) overrides the checkpoint's own `dataset_meta`. Only tensors and plain
    values go into ckpt.pt, so nanoGPT's `torch.load` (weights_only by default since torch 2.6) accepts it.
    `force` lets it write into a folder that is not an earlier export (see `write_folder`).
    """
    import torch

    from nanogpt import checkpoint as ckpt_io

    exportdir.check_out_dir(out_dir, "ckpt.pt", "nanoGPT", force)
    model, ckpt = ckpt_io.load_model(checkpoint)
    if model.config.arch != "gpt2":
        raise ConfigError(f"cannot export a model.arch={model.config.arch!r} model in nanoGPT's format: nanoGPT's "
                          "model.py cannot run it (rotary, QK-norm, ReLU², untied head); expected an arch gpt2 model")
    meta = meta if meta is not None else ckpt.get("dataset_meta")
    tok_meta = meta.get("tokenizer") if isinstance(meta, dict) else None
    meta_pkl = None
    if isinstance(tok_meta, dict) and tok_meta.get("kind") == "char":
        meta_pkl = nanogpt_meta(tok_meta)
        if meta_pkl["vocab_size"] > model.config.vocab_size:
            raise ConfigError(f"the char tokenizer has {meta_pkl['vocab_size']} tokens but the checkpoint's "
                              f"model.vocab_size is {model.config.vocab_size}: expected the meta of its dataset")
    c = model.config
    model_args = {k: getattr(c, k) for k in NANOGPT_MODEL_ARGS}
    dataset = meta.get("dataset") if isinstance(meta, dict) else None
    best = ckpt.get("best_val_loss", 1e9)
    out = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_args": model_args,
        "iter_num": int(ckpt.get("iter_num", 0)),
        "best_val_loss": float(best) if isinstance(best, int | float | torch.Tensor) else 1e9,
        "config": nanogpt_config(ckpt, model_args, dataset if isinstance(dataset, str) else None),
    }
    optimizer = ckpt.get("optimizer")
    if isinstance(optimizer, dict) and "param_groups" in optimizer:  # AdamW's: nanoGPT's train.py resume loads it
        out["optimizer"] = optimizer
    elif isinstance(optimizer, dict):  # optimizer: muon (Muon + AdamW states): nanoGPT's AdamW cannot take it
        log.info("the checkpoint's optimizer is Muon + AdamW, which nanoGPT's train.py cannot resume: "
                 "exported without optimizer state")

    def write(tmp: Path) -> None:
        torch.save(out, tmp / "ckpt.pt")
        if meta_pkl is not None:
            with open(tmp / "meta.pkl", "wb") as f:
                pickle.dump(meta_pkl, f)

    written = exportdir.write_folder(out_dir, "ckpt.pt", "nanoGPT", write, force)
    if meta_pkl is not None:  # nanoGPT's sample.py reads data/<config['dataset']>/meta.pkl relative to its cwd
        log.info("for nanoGPT's sample.py, copy %s to data/%s/meta.pkl in the nanoGPT checkout",
                 written / "meta.pkl", out["config"].get("dataset", "<dataset>"))
    return written


# ---- the tokenizer of a Hugging Face export ----------------------------------------------------------------

def _gpt2_bpe_files(mirror: str | os.PathLike | None) -> dict[str, Path]:
    """encoder.json and vocab.bpe where our GPT-2 tokenizer finds them, checked against tiktoken's sha256."""
    from nanogpt.data.tokenizer import GPT2_FILES, find_local
    from nanogpt.fileio import sha256_file

    found = {}
    for name, (_, sha256) in GPT2_FILES.items():
        path = find_local(name, sha256, mirror)
        if path is None:
            raise ConfigError(f"GPT-2 BPE file {name} not found: expected encoder.json and vocab.bpe in the mirror "
                              "(--mirror, config key `mirror` or $NANOGPT_MIRROR) or bundled with the package")
        actual = sha256_file(path)
        if actual != sha256:
            raise ConfigError(f"sha256 of {str(path)!r} is {actual}: expected {sha256}")
        found[name] = path
    return found


def hf_tokenizer(tok_meta: dict | None, vocab_size: int, block_size: int, mirror: str | os.PathLike | None = None):
    """A transformers fast tokenizer that encodes like ours, or None when the tokenizer is unknown.

    gpt2: byte-level BPE from encoder.json/vocab.bpe (ids equal tiktoken's encode_ordinary for ordinary text;
    like HF's GPT-2 and nanoGPT's sample.py, the literal text <|endoftext|> becomes token 50256).
    char: one token per character (WordLevel over single characters), no special tokens, decoded without spaces.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    kind = tok_meta.get("kind") if tok_meta else None
    if kind is None:
        return None
    if kind == "char":
        chars = tok_meta.get("chars")
        if not isinstance(chars, list) or not all(isinstance(ch, str) and len(ch) == 1 for ch in chars) \
                or len(set(chars)) != len(chars):
            raise ConfigError("the checkpoint's char tokenizer metadata has no list of distinct single characters: "
                              "expected a dataset meta.json 'tokenizer' entry with 'chars'")
        if len(chars) > vocab_size:
            raise ConfigError(f"the char tokenizer has {len(chars)} tokens but model.vocab_size is {vocab_size}: "
                              "expected the meta of the dataset the model was trained on")
        tok = Tokenizer(models.WordLevel({ch: i for i, ch in enumerate(chars)}, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(CHAR_PATTERN), behavior="isolated")  # every character
        tok.decoder = decoders.Fuse()  # join the characters as they are (no spaces between tokens)
        return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=block_size,
                                       clean_up_tokenization_spaces=False)
    if kind == "gpt2":
        from nanogpt.data.tokenizer import GPT2_VOCAB

        if vocab_size < GPT2_VOCAB:
            raise ConfigError(f"model.vocab_size={vocab_size} is smaller than GPT-2's {GPT2_VOCAB} BPE tokens: "
                              "expected a model trained on a gpt2-tokenized dataset")
        files = _gpt2_bpe_files(mirror)
        tok = Tokenizer(models.BPE.from_file(str(files["encoder.json"]), str(files["vocab.bpe"])))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=block_size,
                                       clean_up_tokenization_spaces=False, bos_token=GPT2_SPECIAL,
                                       eos_token=GPT2_SPECIAL, unk_token=GPT2_SPECIAL)
    raise ConfigError(f"tokenizer kind {kind!r}: expected 'char' or 'gpt2'")


def save_hf_tokenizer(tokenizer, folder: Path) -> None:
    """save_pretrained, naming the generic class that transformers 4 and 5 both load from tokenizer.json."""
    import json

    tokenizer.save_pretrained(folder)
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg.pop("backend", None)  # transformers 5's name for it; 4 passes unknown keys to __init__
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def chars_of_hf_export(folder: str | os.PathLike) -> list[str] | None:
    """The characters of a char tokenizer written by `hf_tokenizer` (its exports sample with our code), else None:
    any other tokenizer.json, including one over fileio.METADATA_MAX_BYTES or nested too deeply to be ours."""
    from nanogpt.errors import UserError
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        spec = fileio.load_json_capped(path, fileio.METADATA_MAX_BYTES, "tokenizer")
        model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
        ours = model.get("type") == "WordLevel" and pre.get("pattern") == {"Regex": CHAR_PATTERN}
        if not ours or spec.get("added_tokens"):
            return None
        vocab = model["vocab"]
        chars = sorted(vocab, key=vocab.get)
    except (UserError, ValueError, KeyError, TypeError, AttributeError):
        return None
    ok = all(len(ch) == 1 for ch in chars) and [vocab[ch] for ch in chars] == list(range(len(chars)))
    return chars if ok else None
