"""Other tools' formats: HF export with its tokenizer, nanoGPT's ckpt.pt/meta.pkl both ways, run folders.

Models are tiny GPTs with large random weights (sharp logits: greedy continuations depend on every weight and
no two logits tie), saved as checkpoints laid out like train.py's `make_checkpoint`.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanogpt import checkpoint as ckpt_io
from nanogpt.cli import main as cli_main
from nanogpt.config import resolve_run
from nanogpt.data.tokenizer import CharTokenizer, gpt2_tokenizer
from nanogpt.decoding import generate
from nanogpt.model import GPT, GPTConfig
from nanogpt.sample import SEPARATOR, generate_samples, load_model_and_tokenizer
from nanogpt.settings import SampleSettings

CORPUS = "ROMEO:\nTo be, or not to be? That is the question!\n  Whether 'tis nobler; in the mind: to suffer.\t-x\n" \
    "Or to take arms against a sea of troubles, and by opposing end them. We can wait.\n"
CHAR_STRINGS = ["ROMEO:", "To be, or not to be?\n\nThat is", "  two  spaces\tand a tab\n", "'tis: a.b,c!-x;"]
BPE_STRINGS = ["Hello, world!", "ROMEO:\nTo be, or not to be?\n\n", "  two  spaces\tand a tab \n",
               "it's I'll we've 123 4567 3.14 -- (x) [y] {z}", "na\u00efve caf\u00e9 \u65e5\u672c \U0001f642 \u00fc"]


def random_gpt(vocab_size: int, n_embd: int = 32, block_size: int = 64, seed: int = 0, bias: bool = True) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=n_embd,
                          bias=bias))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model.eval()


def save_checkpoint(model: GPT, meta: dict | None, path: Path, dataset: str = "tiny_chars") -> Path:
    """What train.py's make_checkpoint writes (optimizer after one real AdamW step, run config, dataset meta)."""
    run = resolve_run({"dataset": dataset, "model": {k: getattr(model.config, k) for k in
                                                     ("n_layer", "n_head", "n_embd", "block_size", "bias")}})
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    x = torch.randint(0, model.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    model.train()
    model(x, x)[1].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    ckpt = {
        "format": ckpt_io.FORMAT, "model": model.state_dict(), "model_args": model.config.to_dict(),
        "optimizer": optimizer.state_dict(), "scaler": None, "iter_num": 42, "best_val_loss": 1.25,
        "config": run.to_dict(), "fingerprint": run.fingerprint(), "dataset_meta": meta,
    }
    if meta is None:
        del ckpt["dataset_meta"]
    ckpt_io.save(ckpt, path)
    return path


@pytest.fixture
def char_run(tmp_path) -> tuple[Path, GPT, CharTokenizer]:
    tok = CharTokenizer.from_text(CORPUS)
    model = random_gpt(tok.vocab_size)
    meta = {"dataset": "tiny_chars", "tokenizer": tok.to_meta(), "vocab_size": tok.vocab_size}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return save_checkpoint(model, meta, run_dir / "model.pt"), model, tok


@pytest.fixture
def bpe_run(tmp_path, mirror_env) -> tuple[Path, GPT]:
    model = random_gpt(50257, n_embd=16, seed=1)
    meta = {"dataset": "tiny_bpe", "tokenizer": gpt2_tokenizer().to_meta(), "vocab_size": 50257}
    return save_checkpoint(model, meta, tmp_path / "bpe.pt", dataset="tiny_bpe"), model


def saved_char_model(tmp_path: Path) -> tuple[Path, GPT, CharTokenizer]:
    """A tiny random char model saved as a run's model.pt (its vocabulary: CORPUS's characters)."""
    tok = CharTokenizer.from_text(CORPUS)
    model = random_gpt(tok.vocab_size)
    (tmp_path / "run").mkdir()
    meta = {"dataset": "tiny_chars", "tokenizer": tok.to_meta(), "vocab_size": tok.vocab_size}
    return save_checkpoint(model, meta, tmp_path / "run" / "model.pt"), model, tok


def ours_greedy(model: GPT, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        return generate(model, torch.tensor([ids]), n, top_k=1)[0].tolist()


def hf_greedy(hf, ids: list[int], n: int) -> list[int]:
    x = torch.tensor([ids])
    with torch.no_grad():
        y = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                        pad_token_id=0)
    return y[0].tolist()


def one_line_error(capsys, *argv: str) -> str:
    capsys.readouterr()  # only this command's output
    assert cli_main(list(argv)) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    assert err[0].startswith(f"nanogpt {argv[0]}: error:"), err
    return err[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---- Hugging Face export with a tokenizer --------------------------------------------------------------------

def test_hf_export_char_model_tokenizer_and_greedy(char_run, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt, model, tok = char_run
    out = tmp_path / "hf"
    assert cli_main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert "tokenizer" in capsys.readouterr().out
    mask = os.umask(0)
    os.umask(mask)
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if p.suffix == ".safetensors"} == {
        "model.safetensors": 0o666 & ~mask}  # the umask's mode, not the 0600 of safetensors' temp file
    hf_tok = AutoTokenizer.from_pretrained(out)
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert len(hf_tok) == tok.vocab_size
    for s in CHAR_STRINGS:
        ids = hf_tok(s)["input_ids"]
        assert ids == tok.encode(s), s
        assert hf_tok.decode(ids) == s
    with pytest.raises(Exception, match="UNK|unk"):  # a character outside the vocabulary, as ours refuses it
        hf_tok("caf\u00e9")
    for s in CHAR_STRINGS:
        prompt = tok.encode(s)
        ours = ours_greedy(model, prompt, 20)
        assert hf_greedy(hf, prompt, 20) == ours, s
        assert hf_tok.decode(ours) == tok.decode(ours)
    # the exported folder samples with our code too, with its char tokenizer
    m2, tok2 = load_model_and_tokenizer(str(out))
    assert isinstance(tok2, CharTokenizer) and tok2.chars == tok.chars
    assert ours_greedy(m2, tok.encode("ROMEO:"), 20) == ours_greedy(model, tok.encode("ROMEO:"), 20)


def test_hf_export_bpe_model_tokenizer_and_greedy(bpe_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt, model = bpe_run
    ours_tok = gpt2_tokenizer()
    out = tmp_path / "hf"
    assert cli_main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    hf_tok = AutoTokenizer.from_pretrained(out)
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert len(hf_tok) == 50257 and hf_tok.eos_token_id == 50256
    for s in BPE_STRINGS:
        ids = hf_tok(s)["input_ids"]
        assert ids == ours_tok.encode(s), s
        assert hf_tok.decode(ids) == s
    for s in BPE_STRINGS[:3]:
        prompt = ours_tok.encode(s)
        ours = ours_greedy(model, prompt, 12)
        assert hf_greedy(hf, prompt, 12) == ours, s
        assert hf_tok.decode(ours) == ours_tok.decode(ours)


def test_hf_export_of_nanogpt_checkpoint_with_meta_pkl(char_run, tmp_path):
    """nanoGPT ckpt.pt + its meta.pkl (--meta) -> an HF folder whose tokenizer is the char one."""
    from transformers import AutoTokenizer

    ckpt, _, tok = char_run
    assert cli_main(["export", "--format", "nanogpt", "--checkpoint", str(ckpt), "--out", str(tmp_path / "ng")]) == 0
    out = tmp_path / "hf"
    assert cli_main(["export", "--checkpoint", str(tmp_path / "ng" / "ckpt.pt"), "--out", str(out),
                     "--meta", str(tmp_path / "ng" / "meta.pkl")]) == 0
    assert AutoTokenizer.from_pretrained(out)(CHAR_STRINGS[1])["input_ids"] == tok.encode(CHAR_STRINGS[1])


# ---- nanoGPT format ------------------------------------------------------------------------------------------

def test_nanogpt_export_layout(char_run, tmp_path):
    ckpt, model, tok = char_run
    out = tmp_path / "ng"
    assert cli_main(["export", "--format", "nanogpt", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    # with the record that marks the folder as our export (a later export may replace only what it lists)
    assert sorted(p.name for p in out.iterdir()) == [".nanogpt-export.json", "ckpt.pt", "meta.pkl"]
    c = torch.load(out / "ckpt.pt")  # nanoGPT's call: default arguments (weights_only in torch >= 2.6)
    assert set(c) == {"model", "model_args", "iter_num", "best_val_loss", "config", "optimizer"}
    assert c["model_args"] == {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 64, "bias": True,
                               "vocab_size": tok.vocab_size, "dropout": 0.0}
    assert c["iter_num"] == 42 and c["best_val_loss"] == 1.25
    assert c["config"]["dataset"] == "tiny_chars" and c["config"]["n_layer"] == 2
    assert all(isinstance(v, str | int | float | bool | type(None)) for v in c["config"].values())
    for k, v in model.state_dict().items():
        assert torch.equal(c["model"][k], v), k
    with open(out / "meta.pkl", "rb") as f:
        meta = pickle.load(f)
    assert meta == {"vocab_size": tok.vocab_size, "itos": dict(enumerate(tok.chars)),
                    "stoi": {ch: i for i, ch in enumerate(tok.chars)}}
    # exporting again replaces the folder; a non-export folder is refused
    assert cli_main(["export", "--format", "nanogpt", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert leftovers(tmp_path) == []


def test_bpe_nanogpt_export_has_no_meta_pkl(bpe_run, tmp_path):
    ckpt, _ = bpe_run
    out = tmp_path / "ng"
    assert cli_main(["export", "--format", "nanogpt", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["ckpt.pt"]  # nanoGPT: GPT-2 BPE


def test_sample_from_run_folders(char_run, tmp_path, capsys):
    """A run folder (model.pt), an exported nanoGPT folder (ckpt.pt + meta.pkl beside it), and --meta meta.pkl
    all give the samples of the checkpoint itself."""
    ckpt, _, _ = char_run
    assert cli_main(["export", "--format", "nanogpt", "--checkpoint", str(ckpt), "--out", str(tmp_path / "ng")]) == 0
    base = ["--start", "ROMEO:", "--num-samples", "2", "--max-new-tokens", "15", "--device", "cpu", "--seed", "7"]
    results = {}
    for name, args in {"file": ["--checkpoint", str(ckpt)], "run_dir": ["--checkpoint", str(ckpt.parent)],
                       "nanogpt_dir": ["--checkpoint", str(tmp_path / "ng")],
                       "meta_pkl": ["--checkpoint", str(ckpt), "--meta", str(tmp_path / "ng" / "meta.pkl")]}.items():
        dest = tmp_path / f"{name}.txt"
        assert cli_main(["sample", *args, *base, "--out", str(dest)]) == 0, name
        results[name] = dest.read_text()
    assert len(set(results.values())) == 1, results
    assert all(s.startswith("ROMEO:") for s in results["file"].rstrip("\n").split(SEPARATOR))

    empty = tmp_path / "empty_run"
    empty.mkdir()
    line = one_line_error(capsys, "sample", "--checkpoint", str(empty), "--device", "cpu")
    assert f"folder {str(empty)!r} has neither model.pt nor ckpt.pt" in line


def test_meta_pkl_from_nanogpt_prepare(char_run, tmp_path):
    """A meta.pkl written exactly as nanoGPT's data/shakespeare_char/prepare.py does is read (as plain data)."""
    ckpt, model, tok = char_run
    stoi = {ch: i for i, ch in enumerate(tok.chars)}
    itos = {i: ch for i, ch in enumerate(tok.chars)}
    pkl = tmp_path / "data" / "tiny_chars" / "meta.pkl"
    pkl.parent.mkdir(parents=True)
    with open(pkl, "wb") as f:
        pickle.dump({"vocab_size": tok.vocab_size, "itos": itos, "stoi": stoi}, f)
    m, t = load_model_and_tokenizer(str(ckpt), meta_path=pkl)
    assert isinstance(t, CharTokenizer) and t.chars == tok.chars
    settings = SampleSettings(model="tiny", start="To be", num_samples=1, max_new_tokens=10, seed=3)
    ours, _ = generate_samples(model, tok, settings)
    theirs, _ = generate_samples(m, t, settings)
    assert ours == theirs


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("command", ["sample", "export"])
@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_payload_meta_pkl_is_refused_and_never_runs(char_run, tmp_path, capsys, command, protocol):
    ckpt, _, _ = char_run
    marker = tmp_path / "code-ran"
    evil = tmp_path / "meta.pkl"
    evil.write_bytes(pickle.dumps({"vocab_size": 3, "stoi": Payload(marker)}, protocol=protocol))
    out = tmp_path / "out"
    extra = ["--device", "cpu", "--num-samples", "1", "--max-new-tokens", "2"] if command == "sample" else []
    line = one_line_error(capsys, command, "--checkpoint", str(ckpt), "--meta", str(evil), "--out", str(out),
                          *extra)
    assert f"--meta {str(evil)!r} holds posix.system, refused (nothing from it was run)" in line \
        or f"--meta {str(evil)!r} holds os.system, refused (nothing from it was run)" in line, line
    assert "expected nanoGPT's meta.pkl" in line
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("payload, message", [
    (pickle.dumps({"stoi": {"a": 0}}), "expected nanoGPT's char-level meta.pkl with 'vocab_size', 'itos' and 'stoi'"),
    (pickle.dumps({"vocab_size": 2, "itos": {0: "a", 1: "bc"}, "stoi": {"a": 0, "bc": 1}}),
     "'itos' has entry 'bc': expected 2 distinct single characters"),
    (pickle.dumps({"vocab_size": 2, "itos": {0: "a", 1: "b"}, "stoi": {"a": 1, "b": 0}}),
     "'stoi' is not the inverse of 'itos'"),
    (pickle.dumps({"a": {1, 2}}), "holds a set, refused"),
    (b"\x80\x04\x95\x10\x00\x00\x00", "is not a readable pickle"),
])
def test_bad_meta_pkl_is_one_line_error(char_run, tmp_path, capsys, payload, message):
    ckpt, _, _ = char_run
    pkl = tmp_path / "meta.pkl"
    pkl.write_bytes(payload)
    line = one_line_error(capsys, "sample", "--checkpoint", str(ckpt), "--meta", str(pkl), "--device", "cpu")
    assert line.startswith(f"nanogpt sample: error: --meta {str(pkl)!r}") and message in line, line


def test_export_errors_write_nothing(char_run, tmp_path, capsys):
    ckpt, _, _ = char_run
    parent = tmp_path / "exports"
    parent.mkdir()
    # an existing folder that is not an earlier export: refused, left as it was
    busy = parent / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    for fmt, marker in (("hf", "config.json"), ("nanogpt", "ckpt.pt")):
        line = one_line_error(capsys, "export", "--format", fmt, "--checkpoint", str(ckpt), "--out", str(busy))
        assert f"--out {str(busy)!r} exists and holds no {marker}" in line
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    # a file at --out
    line = one_line_error(capsys, "export", "--checkpoint", str(ckpt), "--out", str(busy / "notes.txt"))
    assert "is a file: expected a folder" in line
    # a char meta larger than the model's vocabulary
    big = tmp_path / "big.pkl"
    chars = [chr(0x100 + i) for i in range(300)]
    big.write_bytes(pickle.dumps({"vocab_size": 300, "itos": dict(enumerate(chars)),
                                  "stoi": {c: i for i, c in enumerate(chars)}}))
    for fmt in ("hf", "nanogpt"):
        line = one_line_error(capsys, "export", "--format", fmt, "--checkpoint", str(ckpt), "--meta", str(big),
                              "--out", str(parent / "new" / "deeper"))
        assert "the char tokenizer has 300 tokens but" in line and "model.vocab_size is" in line, line
    # a missing checkpoint, and an unknown format
    line = one_line_error(capsys, "export", "--format", "nanogpt", "--checkpoint", str(tmp_path / "nope.pt"),
                          "--out", str(parent / "new"))
    assert "nope.pt" in line
    with pytest.raises(SystemExit):
        cli_main(["export", "--format", "onnx", "--checkpoint", str(ckpt), "--out", str(parent / "new")])
    assert sorted(p.name for p in parent.iterdir()) == ["busy"]  # no temp folder, no half export, no new parents


def test_failed_write_leaves_previous_export(char_run, tmp_path, monkeypatch):
    """A write that dies halfway keeps the earlier export at --out and removes its temp folder."""
    from nanogpt import interop

    ckpt, _, _ = char_run
    out = tmp_path / "ng"
    assert cli_main(["export", "--format", "nanogpt", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    before = (out / "ckpt.pt").read_bytes()

    def dies(obj, f, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(interop.pickle, "dump", dies)
    assert cli_main(["export", "--format", "nanogpt", "--checkpoint", str(ckpt), "--out", str(out)]) == 2
    assert (out / "ckpt.pt").read_bytes() == before and (out / "meta.pkl").is_file()
    assert leftovers(tmp_path) == []


# ---- against nanoGPT itself ----------------------------------------------------------------------------------

def nanogpt_reference() -> Path:
    ref = os.environ.get("NANOGPT_REFERENCE")
    if not ref:
        pytest.skip("NANOGPT_REFERENCE is not set: point it at a nanoGPT checkout (git clone "
                    "https://github.com/karpathy/nanoGPT) to run nanoGPT's own sample.py on our export")
    ref_dir = Path(ref).expanduser().resolve()
    if not (ref_dir / "sample.py").is_file() or not (ref_dir / "model.py").is_file():
        pytest.fail(f"NANOGPT_REFERENCE={ref!r} has no sample.py/model.py: expected a nanoGPT checkout")
    return ref_dir


def nanogpt_model_module(ref: Path):
    """nanoGPT's model.py, imported under its own name (no sys.path change, no clash with other `model`s)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("nanogpt_reference_model", ref / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nanogpt_sample_py_reads_our_export(char_run, tmp_path):
    """nanoGPT's sample.py on `export --format nanogpt` (ckpt.pt, meta.pkl at data/<dataset>/): the same text as
    our model draws from the same random stream."""
    ref = nanogpt_reference()
    ckpt, model, tok = char_run
    out = tmp_path / "out-tiny"
    assert cli_main(["export", "--format", "nanogpt", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    work = tmp_path / "nanogpt-cwd"  # sample.py reads configurator.py and data/<dataset>/meta.pkl from its cwd
    (work / "data" / "tiny_chars").mkdir(parents=True)
    (work / "configurator.py").write_bytes((ref / "configurator.py").read_bytes())
    (work / "data" / "tiny_chars" / "meta.pkl").write_bytes((out / "meta.pkl").read_bytes())
    proc = subprocess.run(
        [sys.executable, str(ref / "sample.py"), f"--out_dir={out}", "--device=cpu", "--compile=False",
         "--num_samples=1", "--max_new_tokens=20", "--start=ROMEO:"],
        cwd=work, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Loading meta from data/tiny_chars/meta.pkl..." in proc.stdout, proc.stdout
    text = proc.stdout.split("meta.pkl...\n", 1)[1].split("\n---------------\n", 1)[0]
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 20, text
    # nanoGPT seeds the global RNG with 1337, then builds its GPT (whose init draws from it), then samples with
    # temperature 0.8 and top_k 200 over the whole context: replay that stream for our model.
    ng = nanogpt_model_module(ref)
    c = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=True)  # what torch >= 2.6 does by default
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1337)
        ng.GPT(ng.GPTConfig(**c["model_args"]))
        generator = torch.Generator().manual_seed(0)
        generator.set_state(torch.get_rng_state())
    with torch.no_grad():
        y = generate(model, torch.tensor([tok.encode("ROMEO:")]), 20, temperature=0.8, top_k=200, use_cache=False,
                           generator=generator)
    assert text == tok.decode(y[0].tolist())


def test_nanogpt_model_and_optimizer_load_our_export(char_run, tmp_path):
    """nanoGPT's GPT loads the weights strictly (same logits) and its AdamW takes the optimizer state, as its
    train.py does for init_from='resume'."""
    ref = nanogpt_reference()
    ckpt, model, _ = char_run
    out = tmp_path / "ng"
    assert cli_main(["export", "--format", "nanogpt", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    ng = nanogpt_model_module(ref)
    c = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=True)  # what torch >= 2.6 does by default
    theirs = ng.GPT(ng.GPTConfig(**c["model_args"]))
    theirs.load_state_dict(c["model"])  # strict, like nanoGPT's sample.py and train.py
    opt = theirs.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    opt.load_state_dict(c["optimizer"])
    x = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(theirs.eval()(x)[0], model(x)[0], rtol=1e-5, atol=1e-5)
