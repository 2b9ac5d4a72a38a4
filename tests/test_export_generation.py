"""A Hugging Face export generates within its context: transformers' own text-generation pipeline, which adds
256 new tokens by default, stops at block_size instead of indexing past the position embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_interop import saved_char_model

from nanogpt.cli import main as cli_main
from nanogpt.data.tokenizer import CharTokenizer
from nanogpt.decoding import generate
from nanogpt.model import GPT


@pytest.fixture
def char_model(tmp_path) -> tuple[Path, GPT, CharTokenizer]:
    """A tiny char model saved as a run's model.pt (its vocabulary: CORPUS's characters)."""
    return saved_char_model(tmp_path)


def test_text_generation_pipeline_stops_at_the_context(char_model, tmp_path, capsys):
    from transformers import pipeline

    ckpt, model, tok = char_model
    block = model.config.block_size
    out = tmp_path / "hf"
    assert cli_main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert f"context {block} tokens" in line and f"max_length={block}" in line

    generator = pipeline("text-generation", model=str(out), device="cpu")
    prompt = "ROMEO:"
    for kwargs in ({"do_sample": False}, {"do_sample": True, "temperature": 0.8}):
        text = generator(prompt, **kwargs)[0]["generated_text"]
        assert text.startswith(prompt)
        assert len(tok.encode(text)) == block, kwargs  # prompt + continuation fill the context, no further
    # greedy through the pipeline is our greedy continuation
    ids = tok.encode(prompt)
    ours = generate(model, torch.tensor([ids]), block - len(ids), top_k=1)[0].tolist()
    assert generator(prompt, do_sample=False)[0]["generated_text"] == tok.decode(ours)
    assert json.loads((out / "generation_config.json").read_text())["max_length"] == block
