"""Datasets: checksummed fetch through the mirror, nanoGPT's exact splits, tokenizers, batch sampling."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SHAKESPEARE_SHA256, SHAKESPEARE_URL
from nanogpt.data.prepare import BatchSampler, ChecksumError, fetch, prepare_text
from nanogpt.data.tokenizer import CharTokenizer, from_meta


@pytest.fixture(scope="module")
def char_data(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("char")
    src = fetch(SHAKESPEARE_URL, SHAKESPEARE_SHA256, root / "source.txt", mirror=shared_data)
    meta = prepare_text(src, root / "data")
    return root / "data", meta


def test_shakespeare_char_counts_match_nanogpt(char_data):
    data_dir, meta = char_data
    assert meta["vocab_size"] == 65
    assert (meta["train_tokens"], meta["val_tokens"]) == (1_003_854, 111_540)
    assert np.fromfile(data_dir / "train.bin", dtype=np.uint16).size == 1_003_854
    assert np.fromfile(data_dir / "val.bin", dtype=np.uint16).size == 111_540
    assert meta["source"]["sha256"] == SHAKESPEARE_SHA256


def test_bins_decode_back_to_the_source(char_data, shared_data):
    data_dir, meta = char_data
    tok = from_meta(meta["tokenizer"])
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text()
    train = np.fromfile(data_dir / "train.bin", dtype=np.uint16)
    val = np.fromfile(data_dir / "val.bin", dtype=np.uint16)
    assert tok.decode(train.tolist()) + tok.decode(val.tolist()) == text


def test_sha256_mismatch_is_an_error_and_leaves_nothing(tmp_path, mirror_env):
    dest = tmp_path / "out" / "source.txt"
    with pytest.raises(ChecksumError, match=f"expected {'0' * 64}"):
        fetch(SHAKESPEARE_URL, "0" * 64, dest)
    assert not dest.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no temp file either


def test_char_round_trip():
    tok = CharTokenizer.from_text("hello world!\n")
    text = "hello\nworld hello!"
    assert tok.decode(tok.encode(text)) == text
    assert from_meta(tok.to_meta()).encode(text) == tok.encode(text)


def test_batch_sampler_is_deterministic_and_shifted(char_data):
    data_dir, _ = char_data
    sampler = BatchSampler(data_dir, block_size=32, batch_size=4, seed=7)
    x, y = sampler.get_batch("train", step=3, index=1)
    x2, y2 = BatchSampler(data_dir, block_size=32, batch_size=4, seed=7).get_batch("train", 3, 1)
    assert x.equal(x2) and y.equal(y2)
    assert x.shape == (4, 32) and x.dtype.is_floating_point is False
    assert x[:, 1:].equal(y[:, :-1])
    other, _ = sampler.get_batch("train", step=3, index=2)
    assert not other.equal(x)
    evalx, _ = sampler.get_batch("train", step=3, index=1, for_eval=True)
    assert not evalx.equal(x)
