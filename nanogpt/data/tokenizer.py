"""Character and GPT-2 BPE tokenizers behind one small interface, described by JSON metadata.

The metadata (`to_meta()`) goes into a dataset's meta.json; `from_meta()` rebuilds the same tokenizer for
training, evaluation and sampling. Our metadata is plain JSON (nanoGPT's meta.pkl is read only by
`nanogpt.interop`, through an unpickler that admits no classes or functions).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

from nanogpt.errors import ConfigError
from nanogpt.fileio import not_a_folder, sha256_file, short_repr

# The original GPT-2 BPE files and the sha256 tiktoken itself expects of them.
GPT2_FILES = {
    "encoder.json": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
    "vocab.bpe": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
}
GPT2_EOT = 50256
GPT2_VOCAB = 50257
# Small public files shipped with the package (see its README.md): a built-in, checksummed mirror.
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "assets"


def token_dtype(vocab_size: int, requested: str | None = None) -> np.dtype:
    """The storage type of token ids in train.bin/val.bin: uint16 when the vocabulary fits, else uint32.

    Here, not in data.py, so that data.py and hf_corpus.py share it without importing each other.
    A requested dtype too small for the vocabulary is an error."""
    if requested is not None:
        dtype = np.dtype(requested)
        if dtype not in (np.uint16, np.uint32):
            raise ConfigError(f"dtype={requested!r}: expected uint16 or uint32")
        if vocab_size - 1 > np.iinfo(dtype).max:
            raise ConfigError(
                f"dtype={requested!r} cannot hold a vocabulary of {vocab_size} tokens (max id "
                f"{np.iinfo(dtype).max}): expected dtype uint32, or no dtype to choose it automatically"
            )
        return dtype
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


class Tokenizer(Protocol):
    kind: str
    vocab_size: int
    eot_token: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def to_meta(self) -> dict: ...


class CharTokenizer:
    """nanoGPT's shakespeare_char tokenizer: one id per distinct character, in sorted order."""

    kind = "char"
    eot_token = None

    def __init__(self, chars: list[str]):
        self.chars = list(chars)
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        self.vocab_size = len(self.chars)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ConfigError(
                f"character {e.args[0]!r} is not in this dataset's vocabulary of {self.vocab_size} characters: "
                "expected text made only of characters seen in the training data"
            ) from None

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_meta(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "chars": self.chars}


class GPT2Tokenizer:
    """GPT-2 BPE through tiktoken; `encode` is encode_ordinary (special tokens in text stay plain text)."""

    kind = "gpt2"
    eot_token = GPT2_EOT
    vocab_size = GPT2_VOCAB

    def __init__(self, encoding):
        self.encoding = encoding

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)

    def to_meta(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "eot_token": self.eot_token}


def mirror_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The local mirror directory: the explicit setting (config key `mirror`) or $NANOGPT_MIRROR."""
    value = explicit or os.environ.get("NANOGPT_MIRROR")
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ConfigError(f"mirror directory {str(path)!r} {not_a_folder(path)}: expected a directory of "
                          "downloaded files")
    return path


def find_in_mirror(mirror: Path | None, filename: str) -> Path | None:
    """A file of that name in the mirror: at its top level first, else anywhere below it."""
    if mirror is None:
        return None
    direct = mirror / filename
    if direct.is_file():
        return direct
    matches = sorted(p for p in mirror.rglob(filename) if p.is_file())
    return matches[0] if matches else None


def bundled_file(filename: str, sha256: str) -> Path | None:
    """The package's own copy of `filename` (under nanogpt/assets), only if its sha256 is the one asked for."""
    if not BUNDLED_DIR.is_dir():
        return None
    for path in sorted(BUNDLED_DIR.rglob("*")):
        if path.name == filename and path.is_file() and sha256_file(path) == sha256:
            return path
    return None


def find_local(filename: str, sha256: str, mirror: str | os.PathLike | None = None) -> Path | None:
    """Where file `filename` with checksum `sha256` is on this machine, or None (then: the network).

    1. the explicit mirror (argument, config `mirror`, or $NANOGPT_MIRROR): its file of that name whatever its
       content, so that the caller's checksum check refuses a wrong one rather than silently skipping it;
    2. the files bundled with the package (nanogpt/assets), only one whose sha256 matches.
    Callers still verify the sha256 of what they read.
    """
    found = find_in_mirror(mirror_dir(mirror), filename)
    return found if found is not None else bundled_file(filename, sha256)


@lru_cache(maxsize=4)
def _gpt2_encoding(mirror: str | None):
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

    local = {name: find_local(name, sha256, mirror) for name, (_, sha256) in GPT2_FILES.items()}
    if all(local.values()):
        for name, path in local.items():
            actual = sha256_file(path)
            if actual != GPT2_FILES[name][1]:
                raise ConfigError(
                    f"sha256 of mirror file {str(path)!r} is {actual}: expected {GPT2_FILES[name][1]}"
                )
        ranks = data_gym_to_mergeable_bpe_ranks(  # the hashes also keep tiktoken off a stale cache entry
            vocab_bpe_file=str(local["vocab.bpe"]),
            encoder_json_file=str(local["encoder.json"]),
            vocab_bpe_hash=GPT2_FILES["vocab.bpe"][1],
            encoder_json_hash=GPT2_FILES["encoder.json"][1],
        )
        return tiktoken.Encoding(
            name="gpt2",
            pat_str=r50k_pat_str,
            mergeable_ranks=ranks,
            special_tokens={ENDOFTEXT: GPT2_EOT},
            explicit_n_vocab=GPT2_VOCAB,
        )
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # network errors come in many types
        raise ConfigError(
            f"cannot load the GPT-2 BPE files ({type(e).__name__}; the copies bundled in {str(BUNDLED_DIR)!r} "
            "are missing): put encoder.json and vocab.bpe in a mirror directory (config key `mirror` or env "
            "NANOGPT_MIRROR), or set TIKTOKEN_CACHE_DIR to a tiktoken cache"
        ) from None


def gpt2_tokenizer(mirror: str | os.PathLike | None = None) -> GPT2Tokenizer:
    """tiktoken's `gpt2` encoding, built offline from encoder.json/vocab.bpe: the mirror's, else the bundled ones."""
    m = mirror_dir(mirror)
    return GPT2Tokenizer(_gpt2_encoding(str(m) if m else None))


CHAR_VOCAB_MAX = 0x110000  # every Unicode code point: no char vocabulary is larger


def check_chars(chars: object, label: str) -> list[str]:
    """A char tokenizer's `chars` from metadata we did not write: distinct single characters, at most
    CHAR_VOCAB_MAX of them (one line naming `label` otherwise, not a KeyError or a huge repr)."""
    expected = f"expected a list of at most {CHAR_VOCAB_MAX:,} distinct single characters"
    if not isinstance(chars, list) or len(chars) > CHAR_VOCAB_MAX:
        size = f" of {len(chars):,} entries" if isinstance(chars, list) else ""
        raise ConfigError(f"{label}: 'chars' is {type(chars).__name__}{size}: {expected}")
    bad = next((c for c in chars if not isinstance(c, str) or len(c) != 1), None)
    if bad is not None:
        raise ConfigError(f"{label}: 'chars' holds {short_repr(bad)}: {expected}")
    if len(set(chars)) != len(chars):
        raise ConfigError(f"{label}: 'chars' repeats a character: {expected}")
    return chars


def from_meta(meta: object, mirror: str | os.PathLike | None = None, label: str = "tokenizer metadata") -> Tokenizer:
    """Rebuild the tokenizer described by a meta.json `tokenizer` entry, checked first: it may come from a file
    or a checkpoint we did not write (`label` names it in the errors)."""
    kind = meta.get("kind") if isinstance(meta, dict) else None
    if kind == "char":
        return CharTokenizer(check_chars(meta.get("chars"), label))
    if kind == "gpt2":
        return gpt2_tokenizer(mirror)
    found = f"kind {short_repr(kind)}" if isinstance(meta, dict) else f"a {type(meta).__name__}"
    raise ConfigError(f"{label}: tokenizer {found}: expected a 'tokenizer' entry of kind 'char' or 'gpt2'")


def vocab_remap(model_tok: dict | None, data_tok: dict, label: str, dataset: str | None = None,
                model_dataset: str | None = None) -> list[int] | None:
    """How a model trained with `model_tok` reads a dataset tokenized with `data_tok` (both meta.json entries).

    None: the same ids (or the model records no tokenizer: nanoGPT checkpoints). A list: the char model's row for
    each of the dataset's characters, when every one of them is in the model's vocabulary. Anything else (other
    kinds, characters the model never saw) is a one-line error: a silent remap would train on wrong tokens.
    """
    if not model_tok:
        return None
    kinds = (model_tok.get("kind"), data_tok.get("kind"))
    if kinds[0] != kinds[1]:
        raise ConfigError(f"{label}: the model's tokenizer is {kinds[0]!r} but the dataset's is {kinds[1]!r}: "
                          "expected a dataset tokenized the same way (tokenizer: in its datasets entry)")
    if kinds[0] != "char" or model_tok.get("chars") == data_tok.get("chars"):
        return None
    rows = {ch: i for i, ch in enumerate(model_tok["chars"])}
    missing = [ch for ch in data_tok["chars"] if ch not in rows]
    if missing:
        shown = "".join(missing[:20])
        raise ConfigError(f"{label}: {len(missing)} character(s) of the dataset are not in the model's vocabulary "
                          f"({shown!r}): expected a dataset whose characters the model knows, or give "
                          f"{f'datasets.{model_dataset}' if model_dataset else 'the dataset the model was trained on'} "
                          f"`vocab_from: [{dataset or '<this dataset>'}]` and train the model again (its vocabulary then "
                          "holds these characters too)")
    return [rows[ch] for ch in data_tok["chars"]]
