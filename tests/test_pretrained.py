"""GPT-2 weights both ways: a tiny random transformers GPT-2 -> our GPT -> HF again, logits compared in fp32."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from nanogpt import checkpoint as ckpt_io
from nanogpt.cli import main as cli_main
from nanogpt.model import GPT, GPTConfig
from nanogpt.pretrained import PretrainedError, export_hf, load_pretrained
from nanogpt.sample import SEPARATOR

BIN = Path(sys.executable).parent
VOCAB = 512


def tiny_hf(path: Path, activation: str = "gelu", seed: int = 0, vocab: int = VOCAB) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                     activation_function=activation, bos_token_id=0, eos_token_id=0)
    hf = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorm parameters, so a dropped bias or scale would show
        for name, p in hf.named_parameters():
            if "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(path)
    return hf


def ours_logits(model: GPT, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x, all_logits=True)[0]


def hf_logits(hf: GPT2LMHeadModel, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf.eval()(x).logits


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> tuple[Path, GPT2LMHeadModel]:
    path = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    return path, tiny_hf(path)


def test_load_matches_hf_logits(hf_dir):
    path, hf = hf_dir
    model = load_pretrained(str(path))
    assert model.config.n_layer == 2 and model.config.n_embd == 64 and model.config.bias
    assert model.config.block_size == 64 and model.config.vocab_size == VOCAB
    assert model.lm_head.weight is model.transformer.wte.weight  # tied again after loading
    x = torch.randint(0, VOCAB, (3, 64), generator=torch.Generator().manual_seed(1))
    diff = (ours_logits(model, x) - hf_logits(hf, x)).abs().max().item()
    assert diff < 1e-5, diff


def test_dropout_override(hf_dir):
    path, hf = hf_dir
    assert load_pretrained(str(path)).config.dropout == pytest.approx(hf.config.resid_pdrop)
    assert load_pretrained(str(path), dropout=0.0).config.dropout == 0.0


def test_gelu_new_checkpoint_loads_with_exact_gelu(tmp_path):
    """OpenAI's checkpoints use tanh-GELU; like nanoGPT we run exact GELU: close but not bit-identical."""
    hf = tiny_hf(tmp_path / "m", activation="gelu_new")
    x = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(2))
    diff = (ours_logits(load_pretrained(str(tmp_path / "m")), x) - hf_logits(hf, x)).abs().max().item()
    assert 0 < diff < 1e-3, diff


def test_export_roundtrip_matches(hf_dir, tmp_path):
    path, _ = hf_dir
    model = load_pretrained(str(path))
    out = export_hf(model, tmp_path / "exported")
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    back = GPT2LMHeadModel.from_pretrained(out).eval()
    x = torch.randint(0, VOCAB, (2, 64), generator=torch.Generator().manual_seed(3))
    assert (hf_logits(back, x) - ours_logits(model, x)).abs().max().item() < 1e-5


def test_export_cli_bias_false_checkpoint_is_exact(tmp_path, capsys):
    """Our bias=False model exports with zero biases (exactly the same function), then loads back into ours."""
    torch.manual_seed(4)
    model = GPT(GPTConfig(block_size=32, vocab_size=300, n_layer=2, n_head=2, n_embd=32, bias=False))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    ckpt = tmp_path / "model.pt"
    ckpt_io.save({"model": model.state_dict(), "model_args": model.config.to_dict(), "iter_num": 0}, ckpt)
    assert cli_main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "hf")]) == 0
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["activation_function"] == "gelu"
    assert torch.count_nonzero(hf.transformer.h[0].attn.c_attn.bias) == 0
    x = torch.randint(0, 300, (2, 32), generator=torch.Generator().manual_seed(5))
    assert (hf_logits(hf, x) - ours_logits(model, x)).abs().max().item() < 1e-5
    again = load_pretrained(str(tmp_path / "hf"))
    assert again.config.bias and (ours_logits(again, x) - ours_logits(model, x)).abs().max().item() < 1e-5


def test_export_cli_missing_checkpoint_is_one_line_error(tmp_path, capsys):
    assert cli_main(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nanogpt export: error:") and "nope.pt" in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_not_a_gpt2_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(PretrainedError, match="model_type='llama'"):
        load_pretrained(str(tmp_path))


@pytest.mark.parametrize("offline", ["1", ""])
def test_unreachable_hub_fails_fast_in_one_line(tmp_path, offline):
    """No cache, no hub: exit 2 within seconds, naming the `pretrained:` config key (huggingface_hub alone retries)."""
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE=offline,
               HF_ENDPOINT="http://127.0.0.1:9", NANOGPT_MIRROR=str(tmp_path))  # port 9: refused at once
    t0 = time.perf_counter()
    proc = subprocess.run([str(BIN / "nanogpt"), "sample", "--init-from", "gpt2-medium", "--num-samples", "1"],
                          env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("nanogpt sample: error: 'gpt2-medium'"), proc.stderr
    assert "pretrained:" in lines[0] and ("HF_HUB_OFFLINE" in lines[0]) == bool(offline)
    assert elapsed < 25, elapsed


def test_sample_from_local_hf_dir(hf_dir, tmp_path, mirror_env):
    path, _ = hf_dir
    out = tmp_path / "s.txt"
    assert cli_main(["sample", "--init-from", str(path), "--num-samples", "2", "--max-new-tokens", "5",
                     "--device", "cpu", "--dtype", "float32", "--start", "a", "--out", str(out)]) == 0
    samples = out.read_text().rstrip("\n").split(SEPARATOR)  # "a" is token 64: inside the tiny vocabulary
    assert len(samples) == 2 and all(s.startswith("a") and len(s) > 1 for s in samples)
