"""`nanogpt serve` as a user starts it, asked over real HTTP on 127.0.0.1 (urllib): the samples `nanogpt sample`
draws, and one-line 400s for bad requests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_interop import CORPUS, random_gpt, save_checkpoint

from nanogpt.data.tokenizer import CharTokenizer
from nanogpt.sample import generate_samples
from nanogpt.serve import REQUEST_TOKENS_MAX
from nanogpt.settings import SampleSettings

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server on a free port of 127.0.0.1 over a tiny char model; its URL, the model and its tokenizer."""
    tok = CharTokenizer.from_text(CORPUS)
    model = random_gpt(tok.vocab_size)
    folder = tmp_path_factory.mktemp("serve")
    meta = {"dataset": "tiny_chars", "tokenizer": tok.to_meta(), "vocab_size": tok.vocab_size}
    ckpt = save_checkpoint(model, meta, folder / "model.pt")
    proc = subprocess.Popen([str(BIN / "nanogpt"), "serve", "--checkpoint", str(ckpt), "--port", "0",
                             "--device", "cpu", "--max-new-tokens", "20"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        line = proc.stderr.readline()
        match = re.search(r"on (http://127\.0\.0\.1:\d+) ", line)
        assert match, line
        yield match.group(1), ckpt, model, tok
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/generate", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_generate_answers_the_samples_of_nanogpt_sample(server):
    url, ckpt, model, tok = server
    status, answer = post(url, json.dumps({"prompt": "ROMEO:", "num_samples": 2, "seed": 9}).encode())
    assert status == 200, answer
    expected, _ = generate_samples(model, tok, SampleSettings(model=str(ckpt), start="ROMEO:", num_samples=2,
                                                              max_new_tokens=20, seed=9))
    assert answer["samples"] == expected and answer["tokens_per_sec"] > 0
    with urllib.request.urlopen(f"{url}/", timeout=30) as response:
        about = json.loads(response.read())
    assert about["block_size"] == 64 and about["defaults"]["max_new_tokens"] == 20


@pytest.mark.parametrize(("body", "message"), [
    (b"not json", "the body is not JSON"),
    (b'{"prompt": ""}', "non-empty \"prompt\""),
    (b'{"prompt": "a", "start": "FILE:/etc/passwd"}', "unknown keys ['start']"),
    (b'{"prompt": "a", "temperature": 0}', "request.temperature=0"),
    (json.dumps({"prompt": "a", "max_new_tokens": REQUEST_TOKENS_MAX + 1}).encode(), f"at most {REQUEST_TOKENS_MAX}"),
    (b'{"prompt": "caf\\u00e9"}', "not in this dataset's vocabulary"),
    (b'{"prompt": "FILE:x"}', "not in this dataset's vocabulary"),  # text, never a file of the server's
])
def test_bad_requests_are_one_line_400s(server, body, message):
    url = server[0]
    status, answer = post(url, body)
    assert status == 400 and message in answer["error"] and "\n" not in answer["error"], answer
