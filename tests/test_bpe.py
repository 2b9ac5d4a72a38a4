"""GPT-2 BPE: tiktoken's `gpt2` encoding built offline from the mirror, and nanoGPT's data/shakespeare counts."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from nanogpt.data.prepare import prepare_text, token_dtype
from nanogpt.data.tokenizer import GPT2_EOT, from_meta, gpt2_tokenizer
from nanogpt.errors import ConfigError
from nanogpt.settings import DatasetSettings


def test_known_encodings(mirror_env):
    tok = gpt2_tokenizer()
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" the") == [262]
    assert tok.decode([15496, 995]) == "Hello world"
    # encode_ordinary: the special token's text is plain text, never id 50256
    ids = tok.encode("<|endoftext|>")
    assert GPT2_EOT not in ids and tok.decode(ids) == "<|endoftext|>"
    assert tok.eot_token == 50256 and tok.vocab_size == 50257
    assert from_meta(tok.to_meta()).encode("Hello world") == [15496, 995]


def test_mirror_bpe_files_are_checksummed(shared_data, tmp_path):
    shutil.copy(shared_data / "gpt2-bpe" / "encoder.json", tmp_path / "encoder.json")
    (tmp_path / "vocab.bpe").write_bytes((shared_data / "gpt2-bpe" / "vocab.bpe").read_bytes() + b"x y\n")
    with pytest.raises(ConfigError, match=r"sha256 of mirror file .*vocab\.bpe"):
        gpt2_tokenizer(tmp_path)


def test_shakespeare_bpe_counts(mirror_env, tmp_path):
    meta = prepare_text(mirror_env / "tinyshakespeare" / "input.txt", tmp_path,
                        DatasetSettings.for_text("shakespeare", tokenizer="gpt2", val_fraction=0.1))
    assert (meta["train_tokens"], meta["val_tokens"]) == (301_966, 36_059)  # nanoGPT's data/shakespeare
    assert meta["dtype"] == "uint16" and meta["tokenizer"]["kind"] == "gpt2"
    train = np.memmap(tmp_path / "train.bin", dtype=np.uint16, mode="r")
    val = np.memmap(tmp_path / "val.bin", dtype=np.uint16, mode="r")
    assert (train.size, val.size) == (301_966, 36_059)
    tok = gpt2_tokenizer()
    assert train[:4].tolist() == tok.encode("First Citizen:\n")[:4]
    assert tok.decode(train[:3].tolist()) == "First Citizen:"


def test_vocab_that_does_not_fit_the_dtype_is_an_error():
    assert token_dtype(50257) == np.uint16 and token_dtype(50257, "uint16") == np.uint16
    assert token_dtype(100_277) == np.uint32
    with pytest.raises(ConfigError, match=r"uint16.*100277.*uint32"):
        token_dtype(100_277, "uint16")
