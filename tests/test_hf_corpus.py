"""Document corpora through `datasets` (nanogpt.data.hf_corpus): generated parquet/jsonl corpora, offline."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import make_pipeline, run_snakemake, tiny_config
from nanogpt import fileio
from nanogpt.data.entry import check_dataset
from nanogpt.data.hf_corpus import CorpusError, download_hf, prepare_hf, val_mask
from nanogpt.data.tokenizer import GPT2_EOT, gpt2_tokenizer
from nanogpt.errors import ConfigError
from nanogpt.settings import DatasetSettings

N_DOCS = 3000
WORDS = ["the", "cat", "sat", "on", "mat", "naïve", "café", "日本", "GPT-2", "\n", "  ", "1234", "!?"]


def documents(n: int = N_DOCS, seed: int = 0) -> list[str]:
    """Generated documents of 0..40 words; document 7 is empty."""
    rng = np.random.default_rng(seed)
    docs = [" ".join(rng.choice(WORDS, size=rng.integers(1, 40))) for _ in range(n)]
    docs[7] = ""
    return docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("corpus")
    docs = documents()
    half = N_DOCS // 2
    for i, part in enumerate((docs[:half], docs[half:])):  # two files, several row groups each
        pq.write_table(pa.table({"id": list(range(len(part))), "text": part}), d / f"part-{i}.parquet",
                       row_group_size=400)
    with open(d / "corpus.jsonl", "w") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc, "meta": 1}) + "\n")
    return {"dir": d, "docs": docs}


def _prepare(spec: dict, out, num_proc: int = 1) -> dict:
    download_hf(spec, out / "source.json", name="corpus")
    return prepare_hf(check_dataset(spec, "corpus"), out / "source.json", out, num_proc=num_proc)


def _parquet_spec(corpus, **kw) -> dict:
    return {"files": {"format": "parquet", "paths": [str(corpus["dir"] / "part-*.parquet")]},
            "val_fraction": 0.01, "seed": 2357, **kw}


def _split_docs(path) -> list[list[int]]:
    ids = np.fromfile(path, dtype=np.uint16)
    assert ids[-1] == GPT2_EOT
    ends = np.flatnonzero(ids == GPT2_EOT)
    return [ids[a + 1:b].tolist() for a, b in zip(np.r_[-1, ends[:-1]], ends, strict=True)]


def test_documents_end_with_eot_and_split_is_nanogpts(corpus, mirror_env, tmp_path):
    meta = _prepare(_parquet_spec(corpus), tmp_path)
    docs, tok = corpus["docs"], gpt2_tokenizer()
    # the val documents are those of datasets' train_test_split (nanoGPT's openwebtext split), in corpus order
    from datasets import Dataset

    split = Dataset.from_dict({"text": docs}).train_test_split(test_size=0.01, seed=2357)
    want_val = [d for d in docs if d in set(split["test"]["text"])]
    is_val = val_mask(N_DOCS, DatasetSettings("corpus", "files", "gpt2", val_fraction=0.01, seed=2357))
    assert [d for d, v in zip(docs, is_val, strict=True) if v] == want_val
    want_train = [d for d, v in zip(docs, is_val, strict=True) if not v]
    assert [tok.decode(d) for d in _split_docs(tmp_path / "val.bin")] == want_val
    assert [tok.decode(d) for d in _split_docs(tmp_path / "train.bin")] == want_train
    # the empty document 7 is a lone end-of-text token
    assert not is_val[7] and _split_docs(tmp_path / "train.bin")[7] == []
    train_ids = sum(len(tok.encode(d)) + 1 for d in want_train)
    assert (meta["train_tokens"], meta["val_documents"], meta["train_documents"]) == (train_ids, 30, 2970)
    assert meta["val_tokens"] == (tmp_path / "val.bin").stat().st_size // 2
    files = meta["source"]["files"]
    assert [f["name"] for f in files] == ["part-0.parquet", "part-1.parquet"]
    assert files[0]["sha256"] == fileio.sha256_file(corpus["dir"] / "part-0.parquet")
    assert json.loads((tmp_path / "meta.json").read_text()) == meta


def test_output_identical_for_any_num_proc_and_format(corpus, mirror_env, tmp_path):
    _prepare(_parquet_spec(corpus), tmp_path / "p1", num_proc=1)
    _prepare(_parquet_spec(corpus), tmp_path / "p2", num_proc=2)
    jsonl = {"files": {"format": "jsonl", "paths": [str(corpus["dir"] / "corpus.jsonl")]},
             "val_fraction": 0.01, "seed": 2357}
    _prepare(jsonl, tmp_path / "j2", num_proc=2)
    for split in ("train.bin", "val.bin"):
        ref = (tmp_path / "p1" / split).read_bytes()
        assert len(ref) > 1000
        assert (tmp_path / "p2" / split).read_bytes() == ref
        assert (tmp_path / "j2" / split).read_bytes() == ref


def test_hub_id_served_from_mirror_folder(corpus, shared_data, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / "acme" / "web" / "data").mkdir(parents=True)
    for f in ("encoder.json", "vocab.bpe"):
        (mirror / f).symlink_to(shared_data / "gpt2-bpe" / f)
    for i in range(2):
        (mirror / "acme" / "web" / "data" / f"part-{i}.parquet").symlink_to(corpus["dir"] / f"part-{i}.parquet")
    monkeypatch.setenv("NANOGPT_MIRROR", str(mirror))
    spec = {"hf": {"path": "acme/web", "split": "train", "data_files": "data/*.parquet"}, "val_fraction": 0.01}
    meta = _prepare(spec, tmp_path / "out", num_proc=1)
    assert meta["source"]["hub_id"] == "acme/web" and meta["seed"] == 2357
    ref = tmp_path / "ref"
    _prepare(_parquet_spec(corpus), ref)
    assert (tmp_path / "out" / "train.bin").read_bytes() == (ref / "train.bin").read_bytes()


def test_empty_corpus_and_empty_split_are_errors(mirror_env, tmp_path):
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"text": pa.array([], type=pa.string())}), empty)
    spec = {"files": {"format": "parquet", "paths": [str(empty)]}}
    with pytest.raises(CorpusError, match="no documents"):
        _prepare(spec, tmp_path / "a")
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"text": "a single document"}) + "\n")
    spec = {"files": {"format": "jsonl", "paths": [str(one)]}, "val_fraction": 0.0005}
    with pytest.raises(CorpusError, match=r"1 document\(s\) with val_fraction=0.0005 leave the train split empty"):
        _prepare(spec, tmp_path / "b")
    assert not (tmp_path / "b" / "train.bin").exists() and not (tmp_path / "b" / "meta.json").exists()


def test_bad_corpus_inputs_name_the_value(corpus, mirror_env, tmp_path):
    with pytest.raises(CorpusError, match=r"text_column='body' is not a column .*'text'"):
        _prepare(_parquet_spec(corpus, text_column="body"), tmp_path / "a")
    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"text": ["ok", None, "fine"]}), nulls)
    with pytest.raises(CorpusError, match="document 1 has no text"):
        _prepare({"files": {"format": "parquet", "paths": [str(nulls)]}, "val_fraction": 0.4}, tmp_path / "b")
    with pytest.raises(ConfigError, match="does not exist"):
        download_hf({"files": {"format": "parquet", "paths": [str(tmp_path / "nope.parquet")]}},
                    tmp_path / "c.json", name="corpus")
    with pytest.raises(ConfigError, match="tokenizer='char'"):
        _prepare(_parquet_spec(corpus, tokenizer="char"), tmp_path / "d")


def test_snakemake_rule_end_to_end(corpus, mirror_env, tmp_path):
    config = tiny_config()
    config["datasets"]["corpus"] = _parquet_spec(corpus)
    workdir = make_pipeline(tmp_path / "pipeline", config)
    run_snakemake(workdir, "results/data/corpus/meta.json")
    out = workdir / "results" / "data" / "corpus"
    manifest = json.loads((out / "source.json").read_text())
    assert manifest["kind"] == "files" and len(manifest["files"]) == 2
    meta = json.loads((out / "meta.json").read_text())
    assert meta["val_documents"] == 30 and meta["dataset"] == "corpus"
    ref = tmp_path / "ref"
    _prepare(_parquet_spec(corpus), ref, num_proc=1)  # the rule ran with num_proc 2 (its threads)
    for split in ("train.bin", "val.bin"):
        assert (out / split).read_bytes() == (ref / split).read_bytes()
    assert "tokenizing corpus" in (workdir / "logs" / "prepare" / "corpus.log").read_text()
    dry = run_snakemake(workdir, "-n", "results/data/corpus/meta.json")
    assert "Nothing to be done" in dry.stdout + dry.stderr
