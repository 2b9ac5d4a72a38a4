"""Text as users have it: Windows line ends, a BOM and non-ASCII letters; `nanogpt prepare --text` on a text, a
.jsonl file or a folder (the `path:` entry's own code path); a char vocabulary shared across datasets so a char
model can be finetuned on a text with new characters; warnings for a validation split too small to measure on."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import (
    BIN,
    REPO,
    SHAKESPEARE_SHA256,
    SHAKESPEARE_URL,
    make_pipeline,
    run_snakemake,
    tiny_config,
    write_config,
)
from nanogpt.data.prepare import normalize_text, split_warnings
from nanogpt.data.tokenizer import CharTokenizer, vocab_remap
from nanogpt.errors import ConfigError
from nanogpt.pipeline.entries import Pipeline

SHAKESPEARE = REPO / "nanogpt" / "assets" / "tinyshakespeare" / "input.txt"
# What the bundled tiny Shakespeare prepared to before text was normalized (sha256 of each file): a text with
# LF line ends and no BOM must keep them, so that finished runs are not trained again.
SHAKESPEARE_PREPARED = {
    "meta.json": "fcafcf4e054f618de7554d488a35661c1ddca4c64ad66474deb5e1da3b014551",
    "train.bin": "6ec305602a99ac2802745a134e1f5e33e2231b4855525b00b9aebb730ac2626f",
    "val.bin": "d37d30cc0c8327c270d493299c3dca54135f6d5f1c9ef60cda78076e311204b1",
}
# French, German and Greek lines as a Windows editor saves them: a BOM, CRLF line ends, one lone CR (old Mac).
LINES = ["Où est la bibliothèque ? Déjà vu, garçon, cœur.", "Grüße aus München: Straße, Äpfel, Öl, Übung.",
         "Καλημέρα κόσμε· ἡ γλῶσσα ἑλληνική.", "Noël à Zürich, Ἀθῆναι."]


def windows_text(folder: Path, repeats: int = 40) -> tuple[Path, str]:
    """The file a user has, and the text nanoGPT (Python's text mode) would read from it."""
    body = "\r\n".join(LINES * repeats) + "\rlast line after a lone CR\r\n"
    path = folder / "fr_de_el.txt"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    return path, body.replace("\r\n", "\n").replace("\r", "\n")


def nanogpt(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "nanogpt"), *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def decoded(data_dir: Path) -> str:
    """The whole text a char dataset holds, read back from its bins."""
    meta = json.loads((data_dir / "meta.json").read_text())
    tok = CharTokenizer(meta["tokenizer"]["chars"])
    ids = [np.fromfile(data_dir / f"{split}.bin", dtype=meta["dtype"]).tolist() for split in ("train", "val")]
    return tok.decode(ids[0] + ids[1])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- line ends, BOM, encoding ---------------------------------------------------------------------------------
def test_windows_text_prepares_to_the_text_nanogpt_reads(tmp_path):
    path, expected = windows_text(tmp_path)
    proc = nanogpt("prepare", "--text", str(path), "--out-dir", str(tmp_path / "d"))
    assert proc.returncode == 0, proc.stderr
    assert decoded(tmp_path / "d") == expected and open(path, encoding="utf-8-sig").read() == expected
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert "\r" not in meta["tokenizer"]["chars"] and "\ufeff" not in meta["tokenizer"]["chars"]
    assert {"ü", "ß", "ç", "œ", "λ", "ῶ", "Ἀ"} <= set(meta["tokenizer"]["chars"])
    crlf = len(LINES) * 40  # between the lines, and after the last
    assert meta["normalized"] == {"crlf": crlf, "lone_cr": 1, "bom": 1}
    assert f"d: text normalized: {crlf:,} CRLF and 1 lone CR line ends made \\n, a UTF-8 BOM dropped" in proc.stdout


def test_raw_text_keeps_the_bytes_as_they_are(tmp_path):
    path, _ = windows_text(tmp_path)
    spec = json.dumps({"path": str(path), "raw_text": True})
    proc = nanogpt("prepare", "--name", "raw", "--spec", spec, "--source", str(path), "--out-dir", str(tmp_path / "d"))
    assert proc.returncode == 0, proc.stderr
    assert decoded(tmp_path / "d").encode("utf-8") == path.read_bytes()
    assert "raw_text: the text's bytes kept as they are" in proc.stdout
    assert "normalized" not in json.loads((tmp_path / "d" / "meta.json").read_text())


def test_normalizing_changes_only_line_ends_and_a_leading_bom():
    assert normalize_text("\ufeffa\r\nb\rc\n\r\n\ufeffd") == ("a\nb\nc\n\n\ufeffd", {"crlf": 2, "lone_cr": 1, "bom": 1})
    assert normalize_text("plain\ntext\n") == ("plain\ntext\n", {"crlf": 0, "lone_cr": 0, "bom": 0})


def test_an_undecodable_byte_is_one_line_naming_the_file_and_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Grüße\n".encode() + "Straße".encode("latin-1"))
    proc = nanogpt("prepare", "--text", str(path), "--out-dir", str(tmp_path / "d"))
    assert proc.returncode != 0
    line = proc.stderr.strip().splitlines()[-1]
    assert str(path) in line and "byte 0xdf at offset 12" in line and "Traceback" not in proc.stderr
    assert not (tmp_path / "d" / "meta.json").exists()


def test_the_bundled_shakespeare_prepares_exactly_as_before(tmp_path):
    """The same bins and meta.json, byte for byte, as before normalizing existed: finished runs stay finished."""
    spec = json.dumps({"source": {"url": SHAKESPEARE_URL, "sha256": SHAKESPEARE_SHA256}, "tokenizer": "char",
                       "val_fraction": 0.1})
    proc = nanogpt("prepare", "--name", "shakespeare_char", "--spec", spec, "--source", str(SHAKESPEARE),
                   "--out-dir", str(tmp_path / "shakespeare_char"))
    assert proc.returncode == 0, proc.stderr
    assert {name: sha256(tmp_path / "shakespeare_char" / name) for name in SHAKESPEARE_PREPARED} == SHAKESPEARE_PREPARED
    assert "line ends already \\n and no BOM, nothing normalized" in proc.stdout
    assert "warning" not in proc.stderr


# ---- --text takes what a path: entry takes ---------------------------------------------------------------------
def write_docs(folder: Path, parts: int = 2, docs: int = 30) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for part in range(parts):
        lines = [json.dumps({"text": f"Dokument {part}-{i}: Grüße, ελληνικά, déjà. " * 5}) for i in range(docs)]
        (folder / f"part{part}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def own_data_pipeline(tmp_path_factory) -> Path:
    """A folder, a .jsonl file and a Windows text as `path:` entries, prepared by snakemake."""
    work = tmp_path_factory.mktemp("own") / "pipeline"
    config = tiny_config()
    config["datasets"] = {"folder": {"path": "docs", "val_fraction": 0.1}, "one_file": {"path": "docs/part0.jsonl"},
                          "windows": {"path": "fr_de_el.txt"}}
    config["runs"], config["samples"] = {}, {}
    config["targets"] = {"runs": [], "samples": [], "evals": []}
    make_pipeline(work, config)
    write_docs(work / "docs")
    windows_text(work)
    proc = run_snakemake(work, *(f"results/data/{name}/meta.json" for name in config["datasets"]))
    (work / "console.txt").write_text(proc.stderr)
    return work


@pytest.mark.parametrize(("dataset", "typed"), [("folder", ["--text", "docs", "--val-fraction", "0.1"]),
                                                ("one_file", ["--text", "docs/part0.jsonl"]),
                                                ("windows", ["--text", "fr_de_el.txt"])])
def test_prepare_text_gives_what_the_path_entry_gives(own_data_pipeline, dataset, typed):
    """As the user types it, in the folder with their files: the same bins and tokens as the pipeline's entry."""
    work = own_data_pipeline
    proc = nanogpt("prepare", *typed, "--out-dir", f"by_hand/{dataset}", cwd=work)
    assert proc.returncode == 0, proc.stderr
    for split in ("train.bin", "val.bin"):
        assert sha256(work / "by_hand" / dataset / split) == sha256(work / "results/data" / dataset / split)
    by_hand, pipeline = (json.loads((d / "meta.json").read_text()) for d in (work / "by_hand" / dataset,
                                                                                 work / "results/data" / dataset))
    assert by_hand["tokenizer"] == pipeline["tokenizer"] and by_hand["val_tokens"] == pipeline["val_tokens"] > 0


def test_prepare_of_a_user_file_never_says_manifest(tmp_path):
    write_docs(tmp_path / "docs")
    (tmp_path / "docs" / "part1.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    proc = nanogpt("prepare", "--text", str(tmp_path / "docs"), "--out-dir", str(tmp_path / "d"))
    assert proc.returncode != 0 and "part1.jsonl" in proc.stderr and "manifest" not in proc.stderr.lower()


def test_the_prepare_log_and_console_say_what_was_normalized_and_warn(own_data_pipeline):
    log = (own_data_pipeline / "logs/prepare/windows.log").read_text()
    assert "CRLF and 1 lone CR line ends made \\n, a UTF-8 BOM dropped" in log
    console = (own_data_pipeline / "console.txt").read_text()
    # 1 of 30 documents in the .jsonl file's validation split (0.0005 of them, rounded up); all are small splits
    assert "datasets.one_file: the validation split is a single document (of 30)" in console
    for name in ("folder", "one_file", "windows"):
        assert f"datasets.{name}: the validation split has " in console
        assert "fewer than one evaluation batch" in (own_data_pipeline / f"logs/prepare/{name}.log").read_text()
    assert "datasets.folder: the validation split is a single document" not in console


def test_split_warnings_follow_the_counts():
    big = {"dataset": "d", "val_tokens": 12 * 1024}
    assert split_warnings(big) == []
    assert len(split_warnings({**big, "val_tokens": 12 * 1024 - 1})) == 1
    assert "single document (of 9)" in split_warnings({**big, "val_documents": 1, "train_documents": 8})[0]


# ---- a char vocabulary shared across datasets ------------------------------------------------------------------
def test_vocab_from_is_checked_before_any_job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("abc" * 100)
    config = tiny_config()

    def check(datasets: dict) -> None:
        config["datasets"] = {**datasets, "shakespeare_char": tiny_config()["datasets"]["shakespeare_char"]}
        Pipeline(config).check()

    with pytest.raises(ConfigError, match=r"datasets.a.vocab_from: 'nope' is not a dataset"):
        check({"a": {"path": "a.txt", "vocab_from": ["nope"]}})
    with pytest.raises(ConfigError, match=r"datasets.a.vocab_from: a cycle \(a -> b -> a\)"):
        check({"a": {"path": "a.txt", "vocab_from": ["b"]}, "b": {"path": "a.txt", "vocab_from": ["a"]}})
    with pytest.raises(ConfigError, match=r"datasets.a.vocab_from: 'g' is not a char dataset"):
        check({"a": {"path": "a.txt", "vocab_from": ["g"]}, "g": {"path": "a.txt", "tokenizer": "gpt2"}})
    with pytest.raises(ConfigError, match=r"datasets.a.vocab_from=\['a'\]: expected a list of other char datasets"):
        check({"a": {"path": "a.txt", "vocab_from": ["a"]}})
    with pytest.raises(ConfigError, match=r"datasets.g.vocab_from=\['a'\]: expected .* on a char dataset"):
        check({"a": {"path": "a.txt"}, "g": {"path": "a.txt", "tokenizer": "gpt2", "vocab_from": ["a"]}})


def test_the_refusal_names_the_shared_vocabulary_remedy():
    model = {"kind": "char", "chars": list("abc")}
    with pytest.raises(ConfigError, match=r"or give datasets.english `vocab_from: \[greek\]` and train the model again"):
        vocab_remap(model, {"kind": "char", "chars": list("aλ")}, "init_from='base'", dataset="greek",
                    model_dataset="english")


def test_a_char_model_finetunes_on_new_characters_with_a_shared_vocabulary(tmp_path):
    """The base text has no Greek: the finetune on a Greek text is refused with the remedy, and taken: the base
    dataset takes the Greek text's characters (vocab_from), so the base model's vocabulary holds them and the
    finetune trains, through snakemake."""
    work = tmp_path / "pipeline"
    config = tiny_config()
    config["datasets"] = {"english": {"path": "english.txt"}, "greek": {"path": "greek.txt"}}
    config["runs"] = {"base": {**tiny_config()["runs"]["tiny"], "dataset": "english"},
                      "ft": {**tiny_config()["runs"]["tiny"], "dataset": "greek", "init_from": "base"}}
    config["runs"]["ft"]["train"] = {**config["runs"]["ft"]["train"], "max_iters": 4, "lr_decay_iters": 4,
                                     "eval_interval": 2, "checkpoint_interval": 2}
    config["samples"] = {"ft": {"model": "ft", "start": "Κ", "num_samples": 1, "max_new_tokens": 20, "seed": 1}}
    config["targets"] = {"runs": ["ft"], "samples": ["ft"], "evals": []}
    make_pipeline(work, config)
    (work / "english.txt").write_text(SHAKESPEARE.read_text()[:4000])
    (work / "greek.txt").write_text("\n".join(LINES[2:3] * 60) + "\n", encoding="utf-8")
    refused = run_snakemake(work, check=False)
    assert refused.returncode != 0
    assert "or give datasets.english `vocab_from: [greek]` and train the model again" in refused.stderr
    config["datasets"]["english"]["vocab_from"] = ["greek"]
    write_config(work, config)
    run_snakemake(work)
    english, greek = (json.loads((work / f"results/data/{n}/meta.json").read_text()) for n in ("english", "greek"))
    assert set(greek["tokenizer"]["chars"]) - set(SHAKESPEARE.read_text()[:4000])  # new characters ...
    assert set(greek["tokenizer"]["chars"]) <= set(english["tokenizer"]["chars"])  # ... held by the base vocabulary
    assert english["vocab_from"] == {"greek": greek["vocab_size"]}
    assert decoded(work / "results/data/english") == SHAKESPEARE.read_text()[:4000]  # its own text, unchanged
    log = (work / "logs/train/ft.log").read_text()
    assert "reordered" in log and "done:" in log
    assert (work / "results/samples/ft.txt").read_text(encoding="utf-8").startswith("Κ")  # a Greek prompt samples


def test_editing_a_vocab_from_text_prepares_the_dataset_again(tmp_path):
    work = make_pipeline(tmp_path / "pipeline", tiny_config())
    config = tiny_config()
    config["datasets"] = {"english": {"path": "english.txt", "vocab_from": ["greek"]}, "greek": {"path": "greek.txt"}}
    config["runs"], config["samples"] = {}, {}
    config["targets"] = {"runs": [], "samples": [], "evals": []}
    make_pipeline(work, config)
    (work / "english.txt").write_text("english text\n" * 100)
    (work / "greek.txt").write_text("ελληνικά\n" * 100, encoding="utf-8")
    run_snakemake(work, "results/data/english/meta.json")
    with open(work / "greek.txt", "a", encoding="utf-8") as f:
        f.write("Ω\n")
    proc = run_snakemake(work, "-n", "results/data/english/meta.json")
    assert "results/data/greek/meta.json" in proc.stdout and "results/data/english/meta.json" in proc.stdout
