"""Datasets: checksummed download (or a local mirror), tokenization into train.bin/val.bin, batch sampling.

A dataset entry in config.yaml::

    shakespeare_char:
      source: {url: https://.../input.txt, sha256: 86c4e6aa...}
      tokenizer: char          # char | gpt2
      val_fraction: 0.1        # the last 10% of the text is the validation split, as in nanoGPT

The .bin files are flat arrays of token ids (uint16, or uint32 when a vocabulary needs it, recorded in
meta.json) that training reads through memmaps.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nanogpt import fileio
from nanogpt.config import ConfigError, DatasetSettings, check_dataset, dataset_kind
from nanogpt.errors import ChecksumError, DataError
from nanogpt.hf_corpus import download_hf, prepare_hf
from nanogpt.tokenizer import CharTokenizer, find_local, gpt2_tokenizer, token_dtype

if TYPE_CHECKING:
    import torch

SPLITS = ("train", "val")
_SPLIT_ID = {"train": 0, "val": 1}
DOWNLOAD_TIMEOUT_S = 60
# A `source:` text is read and tokenized in memory (nanoGPT's char datasets are ~1 MB); bigger corpora stream
# through a `files:` entry instead (nanogpt.hf_corpus).
SOURCE_TEXT_MAX_BYTES = 2**30


def fetch(url: str, sha256: str, dest: str | os.PathLike, mirror: str | os.PathLike | None = None) -> Path:
    """Put the file at `url` on `dest`, verified against `sha256`.

    A local copy is used instead of the network (`tokenizer.find_local`): a mirror directory's (argument,
    config `mirror` or $NANOGPT_MIRROR) file of the same name, else the package's bundled file of that name
    and sha256. Nothing is left at `dest` unless the checksum matched.
    """
    dest = Path(dest)
    filename = url.rstrip("/").rsplit("/", 1)[-1]
    local = find_local(filename, sha256, mirror)
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
        actual = fileio.sha256_file(tmp)
        if actual != sha256:
            raise ChecksumError(f"sha256 of {filename} from {origin} is {actual}: expected {sha256}")
    return dest


def write_bin(dest: str | os.PathLike, ids: np.ndarray | list[int], dtype: np.dtype) -> int:
    """Write token ids atomically; returns the token count."""
    arr = np.asarray(ids, dtype=dtype)
    with fileio.atomic_path(dest) as tmp:
        arr.tofile(tmp)
    return int(arr.size)


def prepare_text(source: str | os.PathLike, out_dir: str | os.PathLike, ds: DatasetSettings | None = None,
                 mirror: str | os.PathLike | None = None) -> dict:
    """One text file -> train.bin, val.bin, meta.json, split by characters like nanoGPT's prepare scripts
    (`ds`: a text dataset's settings, DatasetSettings.for_text() when not given).

    Returns the metadata written to meta.json. meta.json is written last, so its presence means the
    bins beside it are complete.
    """
    source, out_dir = Path(source), Path(out_dir)
    ds = ds or DatasetSettings.for_text(out_dir.name)
    tokenizer, val_fraction = ds.tokenizer, ds.val_fraction
    text = _read_source_text(source)
    if not text:
        raise ConfigError(f"source {str(source)!r} is empty: expected a non-empty text corpus")
    n = len(text)
    split_at = int(n * (1 - val_fraction))
    parts = {"train": text[:split_at], "val": text[split_at:]}
    if tokenizer == "char":
        tok = CharTokenizer.from_text(text)
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
    fileio.write_json(out_dir / "meta.json", meta)
    return meta


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
            mirror: str | os.PathLike | None = None, name: str = "dataset") -> dict:
    """The prepare step of a dataset entry: tokenized bins and meta.json in `out_dir`."""
    ds = check_dataset(spec, name)
    if not 1 <= num_proc <= 1024:
        raise ConfigError(f"num_proc={num_proc}: expected a number of worker processes in [1, 1024]")
    if ds.is_text:  # one text: a downloaded one, or the user's own file
        return prepare_text(source, out_dir, ds, mirror=mirror)
    return prepare_hf(ds, source, out_dir, num_proc=num_proc, mirror=mirror)


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
