"""Generation you can watch and talk to: `nanogpt sample --stream` and `--interactive`.

The streamed text must be the very text the plain command prints for the same seed, and must never show a
half-decoded UTF-8 character; the interactive loop is driven through stdin as a user's terminal would.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_interop import BPE_STRINGS, one_line_error, random_gpt, save_checkpoint, saved_char_model

from nanogpt.cli import main as cli_main
from nanogpt.data.tokenizer import CharTokenizer, gpt2_tokenizer
from nanogpt.decoding import generate
from nanogpt.model import GPT
from nanogpt.sample import SEPARATOR, TextStream, generate_samples, interactive
from nanogpt.settings import SampleSettings

BIN = Path(sys.executable).parent


@pytest.fixture
def char_model(tmp_path) -> tuple[Path, GPT, CharTokenizer]:
    """A tiny char model saved as a run's model.pt (its vocabulary: CORPUS's characters)."""
    return saved_char_model(tmp_path)


@pytest.fixture
def bpe_model(tmp_path, mirror_env) -> tuple[Path, GPT]:
    """A tiny model over GPT-2 BPE's whole vocabulary."""
    model = random_gpt(50257, n_embd=16, seed=1)
    meta = {"dataset": "tiny_bpe", "tokenizer": gpt2_tokenizer().to_meta(), "vocab_size": 50257}
    return save_checkpoint(model, meta, tmp_path / "bpe.pt", dataset="tiny_bpe"), model


def sample_cli(capsys, *argv: str) -> tuple[str, str]:
    capsys.readouterr()
    assert cli_main(["sample", *argv]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_stream_prints_the_same_text_as_plain_sampling(char_model, capsys):
    ckpt, _, _ = char_model
    base = ["--checkpoint", str(ckpt), "--start", "ROMEO:", "--num-samples", "3", "--max-new-tokens", "80",
            "--device", "cpu", "--seed", "11"]
    plain, _ = sample_cli(capsys, *base)
    streamed, err = sample_cli(capsys, *base, "--stream")
    assert streamed == plain
    assert plain.count(SEPARATOR) == 2 and plain.startswith("ROMEO:")
    assert "seed 11" in err  # the user is told the seed decides the samples


def test_bpe_stream_never_shows_half_a_character(bpe_model, mirror_env):
    """Byte-level BPE: a character of several byte tokens is written once it is whole, and the pieces join to
    the text the whole sequence decodes to."""
    tok = gpt2_tokenizer()
    text = BPE_STRINGS[-1] + " \u00e9t\u00e9 \U0001f600\U0001f680 \u4e2d\u6587"
    ids = tok.encode(text)
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # the case under test: tokens ending mid-character
    pieces: list[str] = []
    stream = TextStream(tok, pieces.append, ids[:1], echo=True)
    for i in ids[1:]:
        stream.push([i])
    stream.finish()
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_bpe_stream_equals_plain_samples_with_the_model(bpe_model, mirror_env):
    ckpt, model = bpe_model
    tok = gpt2_tokenizer()
    settings = SampleSettings(model=str(ckpt), start="caf\u00e9 \U0001f642", num_samples=2, max_new_tokens=40,
                              temperature=1.5, top_k=None, seed=3)
    plain, _ = generate_samples(model, tok, settings)
    pieces: list[str] = []
    streamed, _ = generate_samples(model, tok, settings, write=pieces.append)
    assert streamed == plain
    assert "".join(pieces) == SEPARATOR.join(plain)


def test_stream_from_an_export_a_local_gpt2_folder_and_gpt2(char_model, tmp_path, capsys, mirror_env, monkeypatch):
    """Every model source streams the plain samples: an HF export (char tokenizer), a local HF GPT-2 folder and
    `gpt2` from the mirror (tiny random stand-ins, GPT-2 BPE: their 512-token vocabulary is mostly single bytes,
    so most characters arrive in pieces)."""
    from test_pretrained import tiny_hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ckpt, _, _ = char_model
    export = tmp_path / "hf"
    assert cli_main(["export", "--checkpoint", str(ckpt), "--out", str(export)]) == 0
    tiny_hf(mirror_env / "gpt2")
    sources = {"export": (["--checkpoint", str(export)], "ROMEO:"),
               "hf_dir": (["--init-from", str(mirror_env / "gpt2")], "a"),
               "gpt2": (["--init-from", "gpt2"], "a")}
    for name, (source, start) in sources.items():
        base = [*source, "--start", start, "--num-samples", "2", "--max-new-tokens", "30", "--device", "cpu",
                "--dtype", "float32", "--temperature", "2.0", "--top-k", "none"]
        plain, _ = sample_cli(capsys, *base)
        streamed, _ = sample_cli(capsys, *base, "--stream")
        assert streamed == plain and plain.count(SEPARATOR) == 1 and plain.startswith(start), name


def test_stream_is_seen_before_generation_ends(char_model):
    """The first text arrives through a pipe while the process is still generating: not at its end."""
    ckpt, _, _ = char_model
    proc = subprocess.Popen([str(BIN / "nanogpt"), "sample", "--checkpoint", str(ckpt), "--start", "ROMEO:",
                             "--num-samples", "1", "--max-new-tokens", "100000", "--device", "cpu", "--stream"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "no streamed output within 60 s"
        first = os.read(proc.stdout.fileno(), 4096)
        assert first.startswith(b"ROMEO:")
        time.sleep(0.5)
        more = os.read(proc.stdout.fileno(), 65536)
        assert more  # still coming
        assert proc.poll() is None  # 100,000 tokens take minutes: generation has not ended
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_interactive_loop_through_stdin(char_model):
    """Prompts typed one a line (the bad one reported and skipped), each answered by a streamed continuation,
    EOF ends it cleanly; the answers are the continuations plain sampling draws from one seeded generator."""
    ckpt, model, tok = char_model
    stdin = "ROMEO:\n\nTo be\ncaf\u00e9\nOr\n"
    proc = subprocess.run([str(BIN / "nanogpt"), "sample", "--checkpoint", str(ckpt), "--interactive",
                           "--max-new-tokens", "25", "--device", "cpu", "--seed", "5"],
                          input=stdin, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    answers = proc.stdout.split("\n")
    assert "character '\u00e9' is not in this dataset's vocabulary" in proc.stderr
    # the same answers in-process, from one generator seeded once
    settings = SampleSettings(model=str(ckpt), num_samples=1, max_new_tokens=25, seed=5)
    generator = torch.Generator().manual_seed(5)
    expected = []
    for prompt in ("ROMEO:", "To be", "Or"):
        ids = tok.encode(prompt)
        y = generate(model, torch.tensor([ids]), 25, settings.temperature, settings.top_k, generator=generator)
        expected.append(tok.decode(y[0].tolist())[len(prompt):])
    assert "\n".join(expected) + "\n" == proc.stdout, (answers, expected)


def test_interactive_in_process_counts_answers(char_model):
    ckpt, model, tok = char_model
    out: list[str] = []
    errors: list[str] = []
    settings = SampleSettings(model=str(ckpt), num_samples=2, max_new_tokens=5, seed=1)
    from nanogpt.runtime import CPU_FP32

    assert interactive(model, tok, settings, CPU_FP32, iter(["ROMEO:", "", "\u00e9"]), out.append,
                       errors.append) == 1
    assert "".join(out).count("\n") == 2 and len(errors) == 1


@pytest.mark.parametrize("flag", ["--stream", "--interactive"])
def test_stream_or_interactive_with_out_is_one_line_error(char_model, tmp_path, capsys, flag):
    ckpt, _, _ = char_model
    line = one_line_error(capsys, "sample", "--checkpoint", str(ckpt), flag, "--out", str(tmp_path / "s.txt"))
    assert f"with {flag}" in line
    assert not (tmp_path / "s.txt").exists()
