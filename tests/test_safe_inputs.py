"""Exports that never delete what they did not write, one-line errors instead of tracebacks
for bad text/corpora/full disks/read-only run folders, and every parsed input bounded (no code from configs).

Each refusal is checked the way a user meets it: exit status 2 and one `nanogpt <cmd>: error:` line naming the
file (or snakemake stopping before any job), files intact, crafted inputs refused within a generous 2 s.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import make_pipeline, run_snakemake, tiny_config
from nanogpt import checkpoint as ckpt_io
from nanogpt import exportdir, fileio, interop
from nanogpt.cli import main
from nanogpt.data.entry import check_dataset
from nanogpt.data.hf_corpus import CorpusError, download_hf, prepare_hf, read_manifest
from nanogpt.data.prepare import load_meta, prepare_text
from nanogpt.data.tokenizer import CharTokenizer, from_meta
from nanogpt.errors import ConfigError, DataError, DiskFullError
from nanogpt.model import GPT, GPTConfig
from nanogpt.sample import _read_meta

FAST_S = 2.0  # a crafted input must be refused well within this
CORPUS = "ROMEO:\nTo be, or not to be? That is the question.\nJULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n" * 4


# ---- helpers ------------------------------------------------------------------------------------------------

def one_line_error(capsys, *argv: str) -> str:
    """`nanogpt argv` in-process: exit 2 and exactly one `nanogpt <cmd>: error:` line on stderr, no traceback."""
    capsys.readouterr()
    rc = main(list(argv))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and "it/s]" not in ln]  # not transformers' progress bars
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"nanogpt {argv[0]}: error: ") and "Traceback" not in err, err
    assert "expected" in lines[0], err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` with its bytes: what must survive a refused or forced export unchanged."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden(folder: Path) -> list[str]:
    """Dot-entries of a folder other than an export's record: temp folders an export must not leave behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != exportdir.EXPORT_RECORD)


def timed_refusal(error: type[BaseException], call, *args, **kwargs) -> str:
    """`call(*args)` must raise `error` within FAST_S; returns its (one-line) message."""
    t0 = time.perf_counter()
    with pytest.raises(error) as info:
        call(*args, **kwargs)
    elapsed = time.perf_counter() - t0
    message = str(info.value)
    assert elapsed < FAST_S, f"{elapsed:.2f} s: {message}"
    assert "\n" not in message and len(message) < 600, message
    return message


def sparse_file(path: Path, size: int) -> Path:
    """A file of `size` bytes that takes no disk space: only its size is ever looked at."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One of our run folders: a tiny char model.pt (with its dataset's metadata) and a TensorBoard events file."""
    from nanogpt.tracking import add_text

    folder = tmp_path_factory.mktemp("runs") / "tiny"
    folder.mkdir()
    tok = CharTokenizer.from_text(CORPUS)
    meta = {"dataset": "tiny", "tokenizer": tok.to_meta(), "vocab_size": tok.vocab_size}
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=tok.vocab_size, bias=False))
    ckpt_io.save({"format": ckpt_io.FORMAT, "model": model.state_dict(), "model_args": model.config.to_dict(),
                  "iter_num": 3, "best_val_loss": 2.0, "dataset_meta": meta}, folder / "model.pt")
    add_text(folder, "note", "training events", 0)
    return folder


@pytest.fixture
def ckpt(run_dir) -> Path:
    return run_dir / "model.pt"


def export(fmt: str, ckpt: Path, out: Path | str, *extra: str) -> list[str]:
    return ["export", "--format", fmt, "--checkpoint", str(ckpt), "--out", str(out), *extra]


# ---- exports never delete what they did not write ----------------------------------------------------

@pytest.mark.parametrize("fmt", ["hf", "nanogpt"])
def test_export_refuses_a_folder_it_did_not_write(ckpt, tmp_path, capsys, fmt):
    """A nanoGPT out_dir (its own ckpt.pt and train.log) and an HF-looking folder with notes: both refused, intact."""
    out_dir = tmp_path / "out-shakespeare-char"
    out_dir.mkdir()
    (out_dir / "ckpt.pt").write_bytes(b"nanoGPT's own checkpoint")
    (out_dir / "train.log").write_text("iter 5000: loss 0.82\n")
    hf_dir = tmp_path / "my-model"
    (hf_dir / "data").mkdir(parents=True)
    (hf_dir / "config.json").write_text('{"model_type": "gpt2"}')
    (hf_dir / "notes.md").write_text("my notes")
    (hf_dir / "data" / "corpus.txt").write_text("my data")
    before = snapshot(tmp_path)
    for folder in (out_dir, hf_dir):
        line = one_line_error(capsys, *export(fmt, ckpt, folder))
        assert f"--out {str(folder)!r} exists and holds no" in line and "--force" in line, line
    assert snapshot(tmp_path) == before
    assert hidden(tmp_path) == []


def test_export_force_writes_beside_foreign_files(ckpt, tmp_path, capsys):
    """--force into a nanoGPT out_dir: its ckpt.pt is replaced by the export, train.log and data/ stay; exporting
    again (now our folder) needs no --force and still keeps them."""
    out_dir = tmp_path / "out"
    (out_dir / "data").mkdir(parents=True)
    (out_dir / "ckpt.pt").write_bytes(b"old")
    (out_dir / "train.log").write_text("log\n")
    (out_dir / "data" / "input.txt").write_text("corpus\n")
    assert main(export("nanogpt", ckpt, out_dir, "--force")) == 0
    assert (out_dir / "train.log").read_text() == "log\n" and (out_dir / "data" / "input.txt").read_text() == "corpus\n"
    assert torch.load(out_dir / "ckpt.pt", weights_only=True)["iter_num"] == 3  # as nanoGPT's torch.load reads it
    record = json.loads((out_dir / exportdir.EXPORT_RECORD).read_text())
    assert record["format"] == "nanogpt" and record["files"] == ["ckpt.pt", "meta.pkl"]
    assert main(export("nanogpt", ckpt, out_dir)) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        [exportdir.EXPORT_RECORD, "ckpt.pt", "data", "meta.pkl", "train.log"])
    assert hidden(out_dir) == [] and hidden(tmp_path) == []


def test_reexport_replaces_only_what_the_export_wrote(ckpt, tmp_path, capsys):
    out = tmp_path / "hf"
    assert main(export("hf", ckpt, out)) == 0
    ours = json.loads((out / exportdir.EXPORT_RECORD).read_text())["files"]
    assert "config.json" in ours and "model.safetensors" in ours and "tokenizer.json" in ours
    # a plain re-export swaps the whole folder (nothing else is in it)
    assert main(export("hf", ckpt, out)) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*ours, exportdir.EXPORT_RECORD])
    # a user's file added to the export survives a re-export
    (out / "README.md").write_text("model card")
    assert main(export("hf", ckpt, out)) == 0
    assert (out / "README.md").read_text() == "model card"
    # another format over it: refused without --force; with it, only the HF files go
    line = one_line_error(capsys, *export("nanogpt", ckpt, out))
    assert "holds an earlier 'hf' export" in line
    assert main(export("nanogpt", ckpt, out, "--force")) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(["README.md", "ckpt.pt", "meta.pkl",
                                                            exportdir.EXPORT_RECORD])
    assert hidden(tmp_path) == [] and hidden(out) == []


def test_export_path_arguments_are_one_line_errors(ckpt, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("keep")
    monkeypatch.chdir(work)
    assert "is the current folder" in one_line_error(capsys, *export("hf", ckpt, "."))
    assert "is a folder above the current one" in one_line_error(capsys, *export("nanogpt", ckpt, ".."))
    assert "is a file: expected a folder" in one_line_error(capsys, *export("hf", ckpt, "keep.txt"))
    line = one_line_error(capsys, *export("nanogpt", ckpt, "keep.txt/sub"))
    assert f"{str(work / 'keep.txt')!r} is a file: expected a folder path" in line
    locked = work / "locked"
    locked.mkdir()
    monkeypatch.setattr(exportdir, "_writable", lambda folder: folder != locked)  # root ignores chmod
    line = one_line_error(capsys, *export("hf", ckpt, locked / "new" / "deeper"))
    assert f"{str(locked)!r} is not writable by this user" in line
    assert sorted(p.name for p in work.iterdir()) == ["keep.txt", "locked"] and not any(locked.iterdir())
    assert (work / "keep.txt").read_text() == "keep"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_export_into_a_read_only_parent(ckpt, tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        line = one_line_error(capsys, *export("nanogpt", ckpt, parent / "out"))
        assert "is not writable by this user" in line
    finally:
        parent.chmod(0o755)


def test_full_disk_during_export_is_one_line(ckpt, tmp_path, capsys, monkeypatch):
    """safetensors reports ENOSPC as its own error type: still one DiskFullError line, and nothing at --out."""
    from transformers import modeling_utils

    class SafetensorError(Exception):
        pass

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                              "\"No space left on device\" })")

    monkeypatch.setattr(modeling_utils, "safe_save_file", full)  # save_pretrained's own import of it
    line = one_line_error(capsys, *export("hf", ckpt, tmp_path / "hf"))
    assert f"no space left on the device holding {str(tmp_path / 'hf')!r}" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with pytest.raises(DiskFullError):
        exportdir.write_folder(tmp_path / "x", "ckpt.pt", "nanoGPT", lambda tmp: full())


def test_export_removes_temp_folders_of_dead_exports(ckpt, tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = f"{fileio._host()}-{proc.pid}"
    stale = tmp_path / f".ng.nanogpt-export.{dead}.abc.tmp"
    stale.mkdir()
    (stale / "ckpt.pt").write_bytes(b"half")
    assert main(export("nanogpt", ckpt, tmp_path / "ng")) == 0
    assert hidden(tmp_path) == []


# ---- one line naming the file, nothing half-written ---------------------------------------------------

def test_source_text_not_utf8(tmp_path, capsys):
    source = tmp_path / "input.txt"
    source.write_bytes("ROMEO: caf\xe9\n".encode("latin-1") * 50)
    spec = json.dumps({"source": {"url": "https://example.org/input.txt", "sha256": "0" * 64},
                       "tokenizer": "char"})
    out = tmp_path / "data"
    line = one_line_error(capsys, "prepare", "--spec", spec, "--name", "d", "--source", str(source),
                          "--out-dir", str(out))
    assert f"source {str(source)!r} is not UTF-8 text (byte 0xe9 at offset 10)" in line
    assert not out.exists()


def test_failed_prepare_leaves_no_meta_json_vouching_for_new_bins(tmp_path, monkeypatch):
    from nanogpt.data import prepare as data

    out = tmp_path / "data"
    good = tmp_path / "good.txt"
    good.write_text(CORPUS)
    prepare_text(good, out)
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("a")
    with pytest.raises(ConfigError, match="the train split .* is empty"):
        prepare_text(tiny, out)
    load_meta(out)  # refused before writing anything: the earlier dataset is whole
    other = tmp_path / "other.txt"
    other.write_text(CORPUS.upper())
    real_write_bin = data.write_bin

    def full_at_val(dest, ids, dtype):
        if Path(dest).name == "val.bin":
            raise DiskFullError("no space left")
        return real_write_bin(dest, ids, dtype)

    monkeypatch.setattr(data, "write_bin", full_at_val)
    with pytest.raises(DiskFullError):
        prepare_text(other, out)
    with pytest.raises(DataError, match="meta.json' does not exist"):  # not the old meta.json beside a new train.bin
        load_meta(out)


def test_prompt_file_not_utf8_or_too_large(ckpt, tmp_path, capsys):
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes(b"ROMEO: \xff\xfe")
    out = tmp_path / "samples.txt"
    args = ["--checkpoint", str(ckpt), "--num-samples", "1", "--max-new-tokens", "2", "--device", "cpu",
            "--out", str(out)]
    line = one_line_error(capsys, "sample", "--start", f"FILE:{prompt}", *args)
    assert f"prompt file {str(prompt)!r} is not UTF-8 text (byte 0xff at offset 7)" in line
    big = sparse_file(tmp_path / "big.txt", fileio.PROMPT_MAX_BYTES + 1)
    line = one_line_error(capsys, "sample", "--start", f"FILE:{big}", *args)
    assert f"prompt file {str(big)!r} is {fileio.PROMPT_MAX_BYTES + 1:,} bytes: expected at most 4 MiB" in line
    assert not out.exists()


def _jsonl(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("rows,needle,after_a_good_file", [
    (['{"body": "a"}', '{"body": "b"}', '{"body": "c"}'], "text_column='text' is not a column of the corpus", True),
    (['{"text": "a"}', '{"text": "b"', '{"text": "c"}'], "cannot be read as json (JSON parse error", True),
    # after a file of strings, `datasets` itself casts a later file's numbers to text: only alone is 5 refused
    (['{"text": "a"}', '{"text": 5}', '{"text": "c"}'], "document 1 has 5 (int) instead of text", False),
    (['{"text": "a"}', '{"text": null}', '{"text": "c"}'], "document 1 has no text (null)", True),
    (['{"text": ["a"]}', '{"text": ["b"]}', '{"text": ["c"]}'], "document 0 has a list of 1 entries instead of text",
     True),
    (['{"text": "a"}', '{"body": "b"}', '{"text": "c"}'], "document 1 has no text (null)", True),
])
def test_bad_local_corpus_names_the_file(tmp_path, rows, needle, after_a_good_file):
    good = _jsonl(tmp_path / "good.jsonl", [json.dumps({"text": f"document {i}"}) for i in range(20)])
    bad = _jsonl(tmp_path / "bad.jsonl", rows)
    for paths in ([str(bad)], [str(good), str(bad)])[:2 if after_a_good_file else 1]:
        spec = {"files": {"paths": paths}, "val_fraction": 0.2}
        download_hf(spec, tmp_path / "source.json", name="c")
        message = timed_refusal(CorpusError, prepare_hf, check_dataset(spec, "c"), tmp_path / "source.json",
                                tmp_path / "out")
        assert message.startswith(f"data file {str(bad)!r}") and needle in message, message
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bad_local_corpus_through_the_cli(tmp_path, capsys):
    bad = tmp_path / "latin.jsonl"
    bad.write_bytes('{"text": "caf\xe9"}\n{"text": "b"}\n'.encode("latin-1"))
    pq_bad = tmp_path / "ints.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [1, 2, 3]}), pq_bad)
    for path, needle in ((bad, "cannot be read as json"), (pq_bad, "column 'text' holds int64 values")):
        spec = json.dumps({"files": {"paths": [str(path)]}})
        assert main(["download", "--spec", spec, "--name", "c", "--out", str(tmp_path / "source.json")]) == 0
        line = one_line_error(capsys, "prepare", "--spec", spec, "--name", "c", "--source",
                              str(tmp_path / "source.json"), "--out-dir", str(tmp_path / "out"))
        assert f"data file {str(path)!r}" in line and needle in line, line


def _events(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("events.out.tfevents.*"))


def _sample_args(run_dir: Path, out: Path) -> list[str]:
    return ["sample", "--checkpoint", str(run_dir), "--start", "RO", "--num-samples", "1", "--max-new-tokens", "3",
            "--device", "cpu", "--out", str(out)]


def test_sample_into_a_read_only_run_folder(run_dir, tmp_path, capsys, caplog, monkeypatch):
    """The samples are the product: a run folder that cannot take TensorBoard events gets none, says so in one
    line (a log warning: stderr from the CLI), and the command succeeds."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != run_dir and real_access(p, mode))
    events = _events(run_dir)
    out = tmp_path / "samples.txt"
    assert main(_sample_args(run_dir, out)) == 0
    assert out.read_text().startswith("RO") and _events(run_dir) == events
    assert [r.getMessage() for r in caplog.records if "TensorBoard" in r.getMessage()] == [
        f"samples not added to the TensorBoard events of {str(run_dir)!r}: the folder is not writable by this user"]
    assert "Traceback" not in capsys.readouterr().err


def test_sample_events_write_that_fails_leaves_no_partial_file(run_dir, tmp_path, caplog, monkeypatch):
    from nanogpt import tracking

    def fails(folder, tag, markdown, step):
        (Path(folder) / "events.out.tfevents.999.partial").write_bytes(b"torn")
        raise OSError(28, "No space left on device")

    events = _events(run_dir)
    monkeypatch.setattr(tracking, "add_text", fails)
    out = tmp_path / "samples.txt"
    assert main(_sample_args(run_dir, out)) == 0
    assert out.is_file() and _events(run_dir) == events
    assert any("TensorBoard" in r.getMessage() and "No space left on device" in r.getMessage()
               for r in caplog.records)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_sample_into_a_chmod_read_only_run_folder(run_dir, tmp_path):
    events = _events(run_dir)
    run_dir.chmod(0o555)
    try:
        assert main(_sample_args(run_dir, tmp_path / "samples.txt")) == 0
    finally:
        run_dir.chmod(0o755)
    assert _events(run_dir) == events


def test_failed_sample_writes_no_events(run_dir, tmp_path, capsys):
    events = _events(run_dir)
    one_line_error(capsys, "sample", "--checkpoint", str(run_dir), "--start", "\u00e9", "--device", "cpu",
                   "--out", str(tmp_path / "samples.txt"))
    assert _events(run_dir) == events and not (tmp_path / "samples.txt").exists()
    assert main(_sample_args(run_dir, tmp_path / "samples.txt")) == 0  # a writable run folder gets them
    assert len(_events(run_dir)) == len(events) + 1


# ---- nothing runs from a config, every parsed input bounded -------------------------------------------

def test_yte_config_is_refused_before_any_job(tmp_path):
    """Snakemake would evaluate `?...` expressions of a config with __use_yte__ even for -n: refused first."""
    workdir = make_pipeline(tmp_path / "pipeline")
    marker = tmp_path / "ran"
    config = yaml.safe_dump(tiny_config(), sort_keys=False).replace(
        "max_iters: 20", f"max_iters: ?__import__('pathlib').Path({str(marker)!r}).touch() or 20")
    (workdir / "config.yaml").write_text("__use_yte__: true\n" + config)
    proc = run_snakemake(workdir, "-n", check=False, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "config file 'config.yaml' contains '__use_yte__', refused: Snakemake would evaluate" in out, out[-3000:]
    assert not marker.exists() and not (workdir / "results").exists()
    # a --configfile is read by Snakemake before the Snakefile runs (README): still refused before any job
    (workdir / "evil.yaml").write_text((workdir / "config.yaml").read_text())
    (workdir / "config.yaml").write_text(yaml.safe_dump(tiny_config(), sort_keys=False))
    proc = run_snakemake(workdir, "-n", "--configfile", "evil.yaml", check=False, timeout=120)
    assert proc.returncode != 0 and "evil.yaml' contains '__use_yte__', refused" in proc.stdout + proc.stderr
    assert not (workdir / "results").exists()


@pytest.mark.parametrize("text,needle", [
    ('"\\x5f_use_yte__": true\nruns: {}\n', "contains '__use_yte__'"),  # the same key, spelled with an escape
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)), "expands to over 1,000,000 YAML nodes"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nests deeper than 64 levels"),
])
def test_crafted_config_files_are_refused_fast(tmp_path, text, needle):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert needle in timed_refusal(ConfigError, fileio.check_config_files, [path])


def test_project_configs_pass_the_config_check():
    repo = Path(__file__).resolve().parents[1]
    fileio.check_config_files([repo / "config.yaml", *sorted(repo.glob(".test/config/*.yaml"))])


def _dag_pickle(width: int, depth: int) -> bytes:
    """A few KB pickle whose one list is shared `width` times per level: width**depth paths, depth objects."""
    node: list = ["a"]
    for _ in range(depth):
        node = [node] * width
    return pickle.dumps({"vocab_size": 1, "itos": node, "stoi": {"a": 0}})


@pytest.mark.parametrize("payload,needle", [
    (_dag_pickle(1000, 10), "'itos' has entry a list of 1000 entries"),  # 1000**10 paths: walked once each object
    (pickle.dumps({k * (2**61 - 1): 0 for k in range(1, 3000)}), "holds a dict key of type int (23058"),  # keys sharing one hash
    (pickle.dumps({"itos": {(1, 2): "a"}, "stoi": {}}), "holds a dict key of type tuple, refused"),
    (pickle.dumps({"itos": frozenset(range(100))}), "holds a set, refused"),
])
def test_crafted_meta_pkl_is_refused_fast(tmp_path, payload, needle):
    path = tmp_path / "meta.pkl"
    path.write_bytes(payload)
    assert len(payload) < 200_000
    assert needle in timed_refusal(ConfigError, interop.read_meta_pkl, path)


def test_oversized_metadata_is_refused_by_its_size(tmp_path, capsys, ckpt):
    cap = fileio.METADATA_MAX_BYTES
    data = tmp_path / "data"
    data.mkdir()
    sparse_file(data / "meta.json", cap + 1)
    message = timed_refusal(DataError, load_meta, data)
    assert f"{str(data / 'meta.json')!r} is {cap + 1:,} bytes: expected at most 32 MiB" in message
    big = sparse_file(tmp_path / "big.json", cap + 1)
    line = one_line_error(capsys, "sample", "--checkpoint", str(ckpt), "--meta", str(big), "--device", "cpu")
    assert f"--meta {str(big)!r} is {cap + 1:,} bytes" in line
    pkl = sparse_file(tmp_path / "meta.pkl", interop.META_PKL_MAX_BYTES + 1)
    assert "expected at most 1 MiB" in timed_refusal(ConfigError, interop.read_meta_pkl, pkl)
    assert "expected at most 32 MiB" in timed_refusal(CorpusError, read_manifest, sparse_file(tmp_path / "s.json",
                                                                                              cap + 1))
    out = tmp_path / "export"
    out.mkdir()
    (out / "ckpt.pt").write_bytes(b"x")
    sparse_file(out / exportdir.EXPORT_RECORD, fileio.SMALL_JSON_MAX_BYTES + 1)
    line = one_line_error(capsys, *export("nanogpt", ckpt, out))
    assert "unreadable .nanogpt-export.json" in line and (out / "ckpt.pt").read_bytes() == b"x"


@pytest.mark.parametrize("text,needle", [
    ("[" * 100_000 + "]" * 100_000, "nests too deeply"),
    ('{"a": ' * 100 + "1" + "}" * 100, "nests deeper than 64 levels"),
    ('{"vocab_size": 1' + "1" * 5000 + "}", "is not usable JSON (Exceeds the limit (4300 digits)"),
    ('{"vocab_size": 3, "dtype": "uint16"', "is not valid JSON (Expecting ',' delimiter at line 1"),
])
def test_crafted_json_metadata_is_refused_fast(tmp_path, capsys, ckpt, text, needle):
    data = tmp_path / "data"
    data.mkdir()
    (data / "meta.json").write_text(text)
    assert needle in timed_refusal(DataError, load_meta, data)
    assert needle in timed_refusal(ConfigError, _read_meta, data / "meta.json")
    (tmp_path / "source.json").write_text(text)
    assert needle in timed_refusal(CorpusError, read_manifest, tmp_path / "source.json")


@pytest.mark.parametrize("tokenizer,needle", [
    ({"kind": "char", "chars": "abc"}, "'chars' is str: expected a list of at most 1,114,112 distinct single"),
    ({"kind": "char", "chars": ["a", "bc"]}, "'chars' holds 'bc'"),
    ({"kind": "char", "chars": ["a", "a"]}, "'chars' repeats a character"),
    ({"kind": "char", "chars": [[["a"]]]}, "'chars' holds a list of 1 entries"),
    ({"kind": "bpe"}, "tokenizer kind 'bpe': expected a 'tokenizer' entry of kind 'char' or 'gpt2'"),
])
def test_tokenizer_metadata_is_checked(tmp_path, capsys, ckpt, tokenizer, needle):
    with pytest.raises(ConfigError, match="^my meta: "):
        from_meta(tokenizer, label="my meta")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"tokenizer": tokenizer, "vocab_size": 3}))
    line = one_line_error(capsys, "sample", "--checkpoint", str(ckpt), "--meta", str(meta), "--device", "cpu")
    assert f"--meta {str(meta)!r}: " in line and needle in line, line


@pytest.mark.parametrize("manifest,needle", [
    ({"format": "python", "files": []}, "format='python': expected one of"),
    ({"format": "json", "files": {"path": "x"}}, "files=a dict of 1 entries: expected a list of 1 to 100,000"),
    ({"format": "json", "files": [{"path": 5}]}, "files[0] is a dict of 1 entries: expected a record"),
])
def test_manifest_structure_is_checked(tmp_path, manifest, needle):
    path = tmp_path / "source.json"
    path.write_text(json.dumps(manifest))
    message = timed_refusal(CorpusError, read_manifest, path)
    assert message.startswith(f"{str(path)!r} (the download step's list of data files)") and needle in message and "rerun the download" in message


def test_bad_meta_json_values_are_short_in_messages(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "meta.json").write_text(json.dumps({"vocab_size": list(range(100_000)), "dtype": "uint16",
                                                "train_tokens": 1, "val_tokens": 1, "tokenizer": {}}))
    message = timed_refusal(DataError, load_meta, data)
    assert "vocab_size=a list of 100000 entries is missing or not a int" in message
