"""First run anywhere: the files bundled in nanogpt/assets are a built-in, checksummed mirror.

Order of lookup (`tokenizer.find_local`): the explicit mirror (config `mirror:` / $NANOGPT_MIRROR) by file name,
then a bundled file of that name *and* sha256, then the network. A wrong mirror file is still an error.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from conftest import SHAKESPEARE_SHA256, SHAKESPEARE_URL, make_pipeline, run_snakemake, tiny_config
from nanogpt import fileio
from nanogpt.data.prepare import ChecksumError, fetch
from nanogpt.data.tokenizer import BUNDLED_DIR, GPT2_FILES, _gpt2_encoding, find_local, gpt2_tokenizer

BUNDLED_INPUT = BUNDLED_DIR / "tinyshakespeare" / "input.txt"
UNREACHABLE = "http://127.0.0.1:9"  # port 9 (discard): a connection is refused at once


@pytest.fixture
def no_mirror(monkeypatch):
    monkeypatch.delenv("NANOGPT_MIRROR", raising=False)


@pytest.fixture
def fresh_bpe_cache():
    """The GPT-2 encoding is cached per mirror: build it again in this test, and leave no trace for others."""
    _gpt2_encoding.cache_clear()
    yield
    _gpt2_encoding.cache_clear()


def test_bundled_files_match_their_checksums():
    sums = dict(reversed(line.split(maxsplit=1)) for line in (BUNDLED_DIR / "SHA256SUMS").read_text().splitlines())
    assert sums == {
        "tinyshakespeare/input.txt": SHAKESPEARE_SHA256,
        "gpt2-bpe/encoder.json": GPT2_FILES["encoder.json"][1],
        "gpt2-bpe/vocab.bpe": GPT2_FILES["vocab.bpe"][1],
    }
    for rel, sha in sums.items():
        assert fileio.sha256_file(BUNDLED_DIR / rel) == sha, rel
    assert (BUNDLED_DIR / "README.md").is_file() and (BUNDLED_DIR / "gpt2-bpe" / "LICENSE").is_file()


def test_lookup_order_mirror_then_bundled(no_mirror, tmp_path):
    assert find_local("input.txt", SHAKESPEARE_SHA256) == BUNDLED_INPUT
    assert find_local("input.txt", "0" * 64) is None  # bundled only under its own checksum: else the network
    assert find_local("other.txt", SHAKESPEARE_SHA256) is None

    mirror = tmp_path / "mirror"
    (mirror / "deep").mkdir(parents=True)
    assert find_local("input.txt", SHAKESPEARE_SHA256, mirror) == BUNDLED_INPUT  # the mirror lacks it
    (mirror / "deep" / "input.txt").write_text("another text")
    assert find_local("input.txt", SHAKESPEARE_SHA256, mirror) == mirror / "deep" / "input.txt"  # mirror first


def test_fetch_from_bundled_file_offline(no_mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", UNREACHABLE)
    monkeypatch.setenv("https_proxy", UNREACHABLE)
    dest = fetch(SHAKESPEARE_URL, SHAKESPEARE_SHA256, tmp_path / "source.txt")
    assert dest.read_bytes() == BUNDLED_INPUT.read_bytes()
    # a checksum nothing local has goes to the network (here: unreachable), never to the bundled file
    with pytest.raises(ConnectionError, match="cannot download"):
        fetch(SHAKESPEARE_URL, "0" * 64, tmp_path / "other.txt")
    assert not (tmp_path / "other.txt").exists()


def test_fetch_from_explicit_mirror(tmp_path, mirror_env):
    dest = fetch(SHAKESPEARE_URL, SHAKESPEARE_SHA256, tmp_path / "source.txt")
    assert fileio.sha256_file(dest) == SHAKESPEARE_SHA256


def test_wrong_checksum_mirror_file_is_refused(no_mirror, tmp_path):
    """A corrupt mirror file is an error, even though the bundled file has the right checksum."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "input.txt").write_text(BUNDLED_INPUT.read_text()[:-1])  # one character short
    dest = tmp_path / "out" / "source.txt"
    with pytest.raises(ChecksumError, match=rf"sha256 of input.txt from {mirror}.*expected {SHAKESPEARE_SHA256}"):
        fetch(SHAKESPEARE_URL, SHAKESPEARE_SHA256, dest, mirror=mirror)
    assert list((tmp_path / "out").iterdir()) == []


def test_gpt2_tokenizer_from_bundled_files_without_tiktoken_download(no_mirror, fresh_bpe_cache, monkeypatch):
    import tiktoken

    def no_download(name):
        raise AssertionError(f"tiktoken.get_encoding({name!r}) called: the bundled BPE files were not used")

    monkeypatch.setattr(tiktoken, "get_encoding", no_download)
    tok = gpt2_tokenizer()
    assert tok.encode("Hello world") == [15496, 995] and tok.decode([15496, 995]) == "Hello world"
    assert tok.encode("<|endoftext|>") != [50256] and tok.encoding.n_vocab == 50257


def test_fresh_checkout_prepares_char_and_bpe_data_offline(tmp_path, monkeypatch):
    """The download + prepare rules with no mirror, an empty HOME and tiktoken cache, and no network."""
    for var in ("NANOGPT_MIRROR", "DATA_GYM_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, UNREACHABLE)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    home, cache = tmp_path / "home", tmp_path / "tiktoken-cache"
    home.mkdir()
    cache.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))

    cfg = tiny_config()
    cfg["datasets"]["shakespeare"] = {"source": {"url": SHAKESPEARE_URL, "sha256": SHAKESPEARE_SHA256},
                                      "tokenizer": "gpt2", "val_fraction": 0.1}
    work = make_pipeline(tmp_path / "pipeline", cfg)
    run_snakemake(work, "results/data/shakespeare_char/meta.json", "results/data/shakespeare/meta.json",
                  timeout=300)

    for name, counts in {"shakespeare_char": (1_003_854, 111_540), "shakespeare": (301_966, 36_059)}.items():
        meta = json.loads((work / "results" / "data" / name / "meta.json").read_text())
        assert (meta["train_tokens"], meta["val_tokens"]) == counts, name
        assert meta["source"]["sha256"] == SHAKESPEARE_SHA256
        assert fileio.sha256_file(work / "results" / "data" / name / "source.txt") == SHAKESPEARE_SHA256
    # tiktoken caches what it reads under sha1(path or URL): only the bundled files, never the URLs
    url_keys = {hashlib.sha1(url.encode()).hexdigest() for url, _ in GPT2_FILES.values()}
    assert {p.name for p in cache.iterdir()}.isdisjoint(url_keys)
