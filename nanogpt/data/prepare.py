"""Datasets: checksummed download (or a local mirror), tokenization into train.bin/val.bin, batch sampling.

A dataset entry in config.yaml::

    shakespeare_char:
      source: {url: https://.../input.txt, sha256: 86c4e6aa...}
      tokenizer: char          # char | gpt2
      val_fraction: 0.1        # the last 10% of the text is the validation split, as in nanoGPT

A text is read as nanoGPT reads it (Python's text mode): CRLF and lone CR line ends become \\n and a leading UTF-8
BOM is dropped, unless `raw_text: true`; `vocab_from: [other, ...]` makes a char vocabulary hold the characters of
other char datasets too, so that a model trained on this one can be finetuned on them.

The .bin files are flat arrays of token ids (uint16, or uint32 when a vocabulary needs it, recorded in
meta.json) that training reads through memmaps.
"""

from __future__ import annotations

import glob
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nanogpt import fileio, paths
from nanogpt.data.entry import check_dataset, dataset_kind
from nanogpt.data.hf_corpus import download_hf, prepare_hf
from nanogpt.data.tokenizer import CharTokenizer, check_chars, find_local, gpt2_tokenizer, token_dtype
from nanogpt.errors import ChecksumError, ConfigError, DataError
from nanogpt.settings import DatasetSettings, ModelSettings, TrainSettings

if TYPE_CHECKING:
    import torch

SPLITS = ("train", "val")
_SPLIT_ID = {"train": 0, "val": 1}
DOWNLOAD_TIMEOUT_S = 60
# A `source:` text is read and tokenized in memory (nanoGPT's char datasets are ~1 MB); bigger corpora stream
# through a `files:` entry instead (nanogpt.data.hf_corpus).
SOURCE_TEXT_MAX_BYTES = 2**30


def fetch(url: str, sha256: str | None, dest: str | os.PathLike, mirror: str | os.PathLike | None = None,
          git_blob_sha1: str | None = None) -> Path:
    """Put the file at `url` on `dest`, verified against `sha256` (or, where only that is published, the git
    blob id `git_blob_sha1`: fileio.git_blob_sha1_file).

    A local copy is used instead of the network (`tokenizer.find_local`): a mirror directory's (argument,
    config `mirror` or $NANOGPT_MIRROR) file of the same name, else the package's bundled file of that name
    and sha256. Nothing is left at `dest` unless the checksum matched.
    """
    if (sha256 is None) == (git_blob_sha1 is None):
        raise ConfigError(f"source {url}: expected exactly one of sha256 and git_blob_sha1")
    kind, expected, digest = ("sha256", sha256, fileio.sha256_file) if sha256 else \
        ("git blob sha1", git_blob_sha1, fileio.git_blob_sha1_file)
    dest = Path(dest)
    filename = url.rstrip("/").rsplit("/", 1)[-1]
    local = find_local(filename, sha256 or "", mirror)
    with fileio.atomic_path(dest) as tmp:
        if local is not None:
            shutil.copyfile(local, tmp)
            origin = str(local)
        else:
            try:
                with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp, open(tmp, "wb") as out:
                    shutil.copyfileobj(resp, out)
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", e)
                raise ConnectionError(
                    f"cannot download {url} ({reason}): put {filename} in a mirror directory "
                    "(config key `mirror` or env NANOGPT_MIRROR) to work offline"
                ) from None
            origin = url
        actual = digest(tmp)
        if actual != expected:
            raise ChecksumError(f"{kind} of {filename} from {origin} is {actual}: expected {expected}")
    return dest


def write_bin(dest: str | os.PathLike, ids: np.ndarray | list[int], dtype: np.dtype) -> int:
    """Write token ids atomically; returns the token count."""
    arr = np.asarray(ids, dtype=dtype)
    with fileio.atomic_path(dest) as tmp:
        arr.tofile(tmp)
    return int(arr.size)


def prepare_text(source: str | os.PathLike, out_dir: str | os.PathLike, ds: DatasetSettings | None = None,
                 mirror: str | os.PathLike | None = None, vocab_metas: list[str | os.PathLike] | None = None) -> dict:
    """One text file -> train.bin, val.bin, meta.json, split by characters like nanoGPT's prepare scripts
    (`ds`: a text dataset's settings, DatasetSettings.for_text() when not given; `vocab_metas`: the meta.json of
    each of `ds.vocab_from`, by default where the pipeline prepares them).

    Line ends become \\n and a UTF-8 BOM is dropped unless `ds.raw_text` (nanoGPT reads its text in text mode).
    Returns the metadata written to meta.json. meta.json is written last, so its presence means the
    bins beside it are complete.
    """
    source, out_dir = Path(source), Path(out_dir)
    ds = ds or DatasetSettings.for_text(out_dir.name)
    tokenizer, val_fraction = ds.tokenizer, ds.val_fraction
    text = _read_source_text(source)
    normalized = {}
    if not ds.raw_text:
        text, normalized = normalize_text(text)
    if not text:
        raise ConfigError(f"source {str(source)!r} is empty: expected a non-empty text corpus")
    n = len(text)
    split_at = int(n * (1 - val_fraction))
    parts = {"train": text[:split_at], "val": text[split_at:]}
    shared = shared_chars(ds, vocab_metas)
    if tokenizer == "char":
        tok = CharTokenizer(sorted(set(text).union(*shared.values())))
    else:  # gpt2: DatasetSettings allows no other
        tok = gpt2_tokenizer(mirror)
    np_dtype = token_dtype(tok.vocab_size, ds.dtype)
    ids = {split: tok.encode(parts[split]) for split in SPLITS}
    for split in SPLITS:
        if not ids[split]:
            raise ConfigError(f"the {split} split of {str(source)!r} is empty: expected a larger corpus or val_fraction")
    (out_dir / "meta.json").unlink(missing_ok=True)  # an earlier meta.json must not vouch for the bins in between
    counts = {split: write_bin(out_dir / f"{split}.bin", ids[split], np_dtype) for split in SPLITS}
    meta = {
        "dataset": ds.name,
        "tokenizer": tok.to_meta(),
        "vocab_size": tok.vocab_size,
        "dtype": np_dtype.name,
        "train_tokens": counts["train"],
        "val_tokens": counts["val"],
        "val_fraction": val_fraction,
        "source": {"file": source.name, "sha256": fileio.sha256_file(source), "chars": n},
    }
    if any(normalized.values()):  # only then: a text that needed nothing keeps the meta.json it always had
        meta["normalized"] = normalized
    if shared:
        meta["vocab_from"] = {name: len(chars) for name, chars in shared.items()}
    fileio.write_json(out_dir / "meta.json", meta)
    return meta


def normalize_text(text: str) -> tuple[str, dict[str, int]]:
    """`text` as Python's text mode reads it, which nanoGPT's prepare scripts rely on: CRLF and lone CR line ends
    become \\n, and a leading UTF-8 BOM is dropped (else each would be a character of the vocabulary).
    Returns the text and how many of each were changed."""
    bom = int(text.startswith("\ufeff"))
    text = text[bom:]
    crlf = text.count("\r\n")
    lone_cr = text.count("\r") - crlf
    if crlf or lone_cr:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text, {"crlf": crlf, "lone_cr": lone_cr, "bom": bom}


def shared_chars(ds: DatasetSettings, vocab_metas: list[str | os.PathLike] | None = None) -> dict[str, list[str]]:
    """The characters of each of `ds.vocab_from` (a prepared char dataset each), read from their meta.json."""
    if not ds.vocab_from:
        if vocab_metas:
            raise ConfigError(f"--vocab-meta {' '.join(map(str, vocab_metas))}: datasets.{ds.name} has no vocab_from: "
                              "expected vocab_from in its entry naming those datasets")
        return {}
    if vocab_metas is None:
        vocab_metas = [paths.META.format(dataset=name) for name in ds.vocab_from]
    if len(vocab_metas) != len(ds.vocab_from):
        raise ConfigError(f"datasets.{ds.name}.vocab_from={list(ds.vocab_from)} names {len(ds.vocab_from)} datasets "
                          f"but {len(vocab_metas)} meta.json files were given: expected one each")
    shared = {}
    for name, meta_path in zip(ds.vocab_from, vocab_metas, strict=True):
        meta = load_meta(Path(meta_path).parent)
        kind = meta["tokenizer"].get("kind")
        if kind != "char":
            raise ConfigError(f"datasets.{ds.name}.vocab_from: {name!r} is tokenized {kind!r} ({str(meta_path)!r}): "
                              "expected char datasets")
        shared[name] = check_chars(meta["tokenizer"].get("chars"), str(meta_path))
    return shared


def describe_normalization(meta: dict, ds: DatasetSettings) -> str | None:
    """One line for the prepare log: what normalizing the text changed (None for corpora)."""
    if not ds.is_text:
        return None
    if ds.raw_text:
        return "raw_text: the text's bytes kept as they are (line ends and any BOM are characters)"
    counts = meta.get("normalized")
    if not counts:
        return "text: line ends already \\n and no BOM, nothing normalized"
    changed = [f"{counts['crlf']:,} CRLF" * bool(counts["crlf"]), f"{counts['lone_cr']:,} lone CR" * bool(
        counts["lone_cr"])]
    line_ends = " and ".join(c for c in changed if c)
    parts = [f"{line_ends} line ends made \\n"] if line_ends else []
    parts += ["a UTF-8 BOM dropped"] if counts["bom"] else []
    return f"text normalized: {', '.join(parts)} (raw_text: true keeps the bytes as they are)"


def split_warnings(meta: dict) -> list[str]:
    """What prepare can tell of a validation split too small to measure a model on: fewer tokens than one evaluation
    batch of the default run settings, or a single document."""
    batch_size, block_size = TrainSettings.batch_size, ModelSettings.block_size
    warnings = []
    name, val = meta.get("dataset"), meta["val_tokens"]
    if val < batch_size * block_size:
        warnings.append(f"datasets.{name}: the validation split has {val:,} tokens, fewer than one evaluation batch "
                        f"of the default batch_size x block_size ({batch_size} x {block_size} = "
                        f"{batch_size * block_size:,}): its loss is noisy, and a run with block_size {val} or more "
                        "cannot evaluate on it; expected a larger val_fraction or more text")
    if meta.get("val_documents") == 1:
        warnings.append(f"datasets.{name}: the validation split is a single document (of {1 + meta['train_documents']:,}): "
                        "its loss measures that one text; expected a larger val_fraction or more documents")
    return warnings


def _read_source_text(source: Path) -> str:
    """A `source:` corpus as text: UTF-8, at most SOURCE_TEXT_MAX_BYTES (it is tokenized in memory)."""
    return fileio.read_text_capped(source, SOURCE_TEXT_MAX_BYTES, "source", DataError)


def download(spec: dict, out: str | os.PathLike, mirror: str | os.PathLike | None = None, name: str = "dataset"
             ) -> Path:
    """The download step of a dataset entry: a checksummed file for `source` entries."""
    check_dataset(spec, name)
    if "source" in spec:
        src = spec["source"]
        return fetch(src["url"], src["sha256"], out, mirror)
    if dataset_kind(spec) == "text":
        raise ConfigError(f"datasets.{name}.path={spec['path']!r} is one local text file: nothing to download, "
                          "expected `nanogpt prepare` on it directly")
    return download_hf(spec, out, mirror=mirror, name=name)


def prepare(spec: dict, source: str | os.PathLike, out_dir: str | os.PathLike, num_proc: int = 1,
            mirror: str | os.PathLike | None = None, name: str = "dataset",
            vocab_metas: list[str | os.PathLike] | None = None) -> dict:
    """The prepare step of a dataset entry: tokenized bins and meta.json in `out_dir`."""
    ds = check_dataset(spec, name)
    if not 1 <= num_proc <= 1024:
        raise ConfigError(f"num_proc={num_proc}: expected a number of worker processes in [1, 1024]")
    if ds.is_text:  # one text: a downloaded one, or the user's own file
        return prepare_text(source, out_dir, ds, mirror=mirror, vocab_metas=vocab_metas)
    return prepare_hf(ds, source, out_dir, num_proc=num_proc, mirror=mirror)


def prepare_path(spec: dict, out_dir: str | os.PathLike, num_proc: int = 1, mirror: str | os.PathLike | None = None,
                 name: str = "dataset", vocab_metas: list[str | os.PathLike] | None = None) -> dict:
    """A `path:` entry's two pipeline steps in one (`nanogpt prepare --text`): a text file is prepared as it is; a
    corpus (a .jsonl/.parquet/.csv file, a folder or a glob) has its data files listed in out_dir/source.json by
    the download step first, exactly as the pipeline does."""
    check_dataset(spec, name)
    pattern = os.path.expanduser(str(spec.get("path")))
    if "path" not in spec or not (glob.glob(pattern) if glob.has_magic(pattern) else os.path.exists(pattern)):
        raise ConfigError(f"datasets.{name}.path={spec.get('path')!r} matches no file: expected a text file, a folder "
                          "or a glob of .jsonl/.parquet/.txt files")
    if dataset_kind(spec) == "text":
        source = Path(pattern)
    else:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        source = download_hf(spec, Path(out_dir) / Path(paths.SOURCE_JSON).name, mirror=mirror, name=name)
    return prepare(spec, source, out_dir, num_proc=num_proc, mirror=mirror, name=name, vocab_metas=vocab_metas)


META_KEYS = {"vocab_size": int, "dtype": str, "train_tokens": int, "val_tokens": int, "tokenizer": dict}


def load_meta(data_dir: str | os.PathLike) -> dict:
    """meta.json of a prepared dataset, checked: its required keys, and bins whose sizes match its counts."""
    data_dir = Path(data_dir)
    path = data_dir / "meta.json"
    rerun = "rerun prepare (snakemake -R prepare, or `nanogpt prepare`)"
    if not path.is_file():
        raise DataError(f"{str(path)!r} {fileio.not_a_file(path)}: expected a prepared dataset; {rerun}")
    try:
        meta = fileio.load_json_capped(path, fileio.METADATA_MAX_BYTES, "dataset metadata", DataError)
    except DataError as e:
        raise DataError(f"{e}; {rerun}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{str(path)!r} holds no JSON object: expected prepare's metadata; {rerun}")
    for key, kind in META_KEYS.items():
        value = meta.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise DataError(f"{str(path)!r}: {key}={fileio.short_repr(value)} is missing or not a {kind.__name__}; "
                            f"{rerun}")
    if not 0 < meta["vocab_size"] <= 2**32 or min(meta["train_tokens"], meta["val_tokens"]) < 0:
        raise DataError(f"{str(path)!r}: vocab_size={meta['vocab_size']}, train_tokens={meta['train_tokens']}, "
                        f"val_tokens={meta['val_tokens']}: expected a positive vocabulary of at most 2**32 and token "
                        f"counts of at least 0; {rerun}")
    if meta["dtype"] not in ("uint16", "uint32") or meta["vocab_size"] - 1 > np.iinfo(meta["dtype"]).max:
        raise DataError(f"{str(path)!r}: dtype={meta['dtype']!r} cannot hold vocab_size={meta['vocab_size']}: "
                        f"expected uint16 or uint32 wide enough; {rerun}")
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in SPLITS:
        bin_path = data_dir / f"{split}.bin"
        expected = meta[f"{split}_tokens"] * itemsize
        actual = bin_path.stat().st_size if bin_path.is_file() else None
        if actual != expected:
            found = "is missing" if actual is None else f"has {actual:,} bytes"
            raise DataError(f"{str(bin_path)!r} {found}: expected {expected:,} bytes ({meta[f'{split}_tokens']:,} "
                            f"{meta['dtype']} tokens, as meta.json says); {rerun}")
    return meta


def _split_too_short(split: str, tokens: int, block_size: int, data_dir: str | os.PathLike) -> str:
    """Why a split cannot give one training example (block_size + 1 tokens), and what would fix it."""
    label = f"the {split} split of {str(data_dir)!r} has {tokens} tokens"
    if tokens < 2:  # no block_size fits: the text is what is too short
        return (f"{label}: expected at least block_size + 1 = {block_size + 1}, and no block_size fits in fewer "
                "than 2; give a longer text, or a val_fraction that leaves both splits enough tokens")
    return f"block_size={block_size} is too large: {label}, expected block_size < {tokens}"

class BatchSampler:
    """Random windows from the train/val memmaps, chosen by (seed, split, step, index) alone.

    Being stateless makes resume exact (nothing to checkpoint) and lets every DDP rank take its own
    micro-batches of the same global batch: micro-batch `index` of step `step` is the same windows
    whichever rank or world size draws it.
    """

    def __init__(self, data_dir: str | os.PathLike, block_size: int, batch_size: int, seed: int,
                 device: torch.device | str = "cpu"):
        self.meta = load_meta(data_dir)
        self.vocab_size = self.meta["vocab_size"]
        self.paths = {s: Path(data_dir) / f"{s}.bin" for s in SPLITS}
        self.data = {s: np.memmap(p, dtype=np.dtype(self.meta["dtype"]), mode="r") for s, p in self.paths.items()}
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        import torch  # training-side only: preparing data never needs torch

        self.device = torch.device(device)
        self._offsets = np.arange(block_size + 1, dtype=np.int64)
        for split, arr in self.data.items():
            if len(arr) <= block_size:
                raise ConfigError(_split_too_short(split, len(arr), block_size, data_dir))

    def get_batch(self, split: str, step: int, index: int, for_eval: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Micro-batch `index` of `step`; evaluation draws from its own stream, never a training batch."""
        data = self.data[split]
        rng = np.random.default_rng([self.seed, _SPLIT_ID[split], int(for_eval), step, index])
        starts = rng.integers(0, len(data) - self.block_size, size=self.batch_size)
        import torch

        windows = data[starts[:, None] + self._offsets]
        if int(windows.max()) >= self.vocab_size:  # a corrupt bin: cheap to catch here, cryptic in the embedding
            raise DataError(
                f"{str(self.paths[split])!r} holds token id {int(windows.max())}: expected ids below meta.json's "
                f"vocab_size {self.vocab_size}; rerun prepare (snakemake -R prepare, or `nanogpt prepare`)"
            )
        chunk = torch.from_numpy(windows.astype(np.int64))
        if self.device.type == "cuda":
            # one pinned buffer and one asynchronous copy of the windows; x and y are split on the GPU
            on_gpu = chunk.pin_memory().to(self.device, non_blocking=True)
            return on_gpu[:, :-1].contiguous(), on_gpu[:, 1:].contiguous()
        return chunk[:, :-1].contiguous().to(self.device), chunk[:, 1:].contiguous().to(self.device)
