"""HellaSwag: our completion-style scoring against a reference written here from Hugging Face logits, the items
file's checks and checksum, the character-model refusal, and the pipeline rule end to end through a mirror."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers import GPT2Tokenizer as HFGPT2Tokenizer

from conftest import make_pipeline, run_snakemake, tiny_config
from nanogpt import fileio, hellaswag
from nanogpt.cli import main
from nanogpt.data.tokenizer import BUNDLED_DIR, CharTokenizer, gpt2_tokenizer
from nanogpt.errors import ChecksumError, ConfigError, DataError
from nanogpt.pipeline.entries import Pipeline
from nanogpt.pretrained import load_pretrained
from nanogpt.report.summary import baselines
from nanogpt.runtime import CPU_FP32

FIXTURE = Path(__file__).parent / "data" / "hellaswag_val_fixture.jsonl"


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> Path:
    """A tiny random GPT-2 with the real vocabulary, saved as a Hugging Face folder."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=128, n_embd=32, n_layer=2, n_head=2,
                               activation_function="gelu")).save_pretrained(folder)
    return folder


def reference_losses(hf_model, hf_tok, item: dict) -> tuple[list[float], list[float]]:
    """llm.c's render_example and loss rule, written out on the HF model's logits: one row per ending."""
    ctx = hf_tok.encode(item["ctx"])
    sums, means = [], []
    for ending in item["endings"]:
        end = hf_tok.encode(" " + ending)
        ids = torch.tensor([ctx + end])
        logits = hf_model(ids).logits[0].double()
        logprobs = torch.log_softmax(logits[:-1], dim=-1)
        targets = ids[0, 1:]
        token_losses = -logprobs[torch.arange(len(targets)), targets][len(ctx) - 1:]  # the ending's tokens only
        sums.append(token_losses.sum().item())
        means.append(token_losses.mean().item())
    return sums, means


def test_scores_match_hf_reference(tiny_hf):
    hf_model = GPT2LMHeadModel.from_pretrained(tiny_hf).eval()
    # transformers' own GPT-2 BPE on the same files (positional: vocab_file/merges_file in v4, vocab/merges in v5)
    hf_tok = HFGPT2Tokenizer(str(BUNDLED_DIR / "gpt2-bpe/encoder.json"), str(BUNDLED_DIR / "gpt2-bpe/vocab.bpe"))
    model, tok = load_pretrained(str(tiny_hf)).eval(), gpt2_tokenizer()
    raw = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    items, total = hellaswag.read_items(FIXTURE)
    assert total == len(items) == len(raw) >= 8
    ref_correct = ref_correct_norm = 0
    with torch.no_grad():
        for item, obj in zip(items, raw, strict=True):
            ref_sum, ref_mean = reference_losses(hf_model, hf_tok, obj)
            tokens, mask, truncated = hellaswag.render(item, tok, model.config.block_size)
            summed, mean = hellaswag.score_item(model, tokens, mask, CPU_FP32)
            assert not truncated
            assert summed.tolist() == pytest.approx(ref_sum, abs=1e-5)
            assert mean.tolist() == pytest.approx(ref_mean, abs=1e-5)
            ref_pick, ref_pick_norm = min(range(4), key=ref_sum.__getitem__), min(range(4), key=ref_mean.__getitem__)
            assert int(summed.argmin()) == ref_pick and int(mean.argmin()) == ref_pick_norm
            ref_correct += ref_pick == obj["label"]
            ref_correct_norm += ref_pick_norm == obj["label"]
    result = hellaswag.score(model, tok, items)
    assert (result["correct"], result["correct_norm"], result["items"]) == (ref_correct, ref_correct_norm, len(items))
    assert result["acc_norm"] == ref_correct_norm / len(items)


def test_long_items_keep_their_last_tokens():
    tok = CharTokenizer(sorted(set("abcdefgh ")))
    item = hellaswag.Item(ctx="abcdefgh" * 4, endings=("ab", "cde", "f", "gh"), label=0)
    tokens, mask, truncated = hellaswag.render(item, tok, block_size=8)
    assert truncated and tokens.shape == (4, 8)
    assert tok.decode(tokens[1].tolist()) == "efgh cde" and mask[1].tolist() == [0] * 4 + [1] * 4
    assert tok.decode(tokens[2].tolist()) == "cdefgh f" and mask[2].tolist() == [0] * 6 + [1] * 2


def test_git_blob_sha1_is_gits_own(tmp_path):
    expected = subprocess.run(["git", "hash-object", str(FIXTURE)], capture_output=True, text=True, check=True)
    assert fileio.git_blob_sha1_file(FIXTURE) == expected.stdout.strip()


def test_fetch_checks_the_git_blob_id(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(FIXTURE, mirror / FIXTURE.name)
    source = {"url": f"https://example.invalid/{FIXTURE.name}", "git_blob_sha1": fileio.git_blob_sha1_file(FIXTURE)}
    out = hellaswag.fetch_items(source, tmp_path / "items.jsonl", mirror=mirror)
    assert out.read_bytes() == FIXTURE.read_bytes()
    with pytest.raises(ChecksumError, match="git blob sha1 of .* expected 0f5ee25d"):
        hellaswag.fetch_items(hellaswag.DEFAULT_SOURCE | {"url": source["url"]}, tmp_path / "bad.jsonl", mirror=mirror)
    assert not (tmp_path / "bad.jsonl").exists()


GOOD = json.loads(FIXTURE.read_text().splitlines()[0])


@pytest.mark.parametrize("change, message", [
    ({"endings": None}, r"line 2: endings=None: expected a list of 4 strings"),
    ({"endings": ["a", "b", "c"]}, r"line 2: endings=a list of 3 entries: expected a list of 4 strings"),
    ({"label": 4}, r"line 2: label=4: expected the right ending's index, 0 to 3"),
    ({"label": True}, r"line 2: label=True: expected"),
    ({"ctx": ""}, r"line 2: ctx='': expected the context text"),
])
def test_bad_items_are_one_line_errors(tmp_path, change, message):
    bad = tmp_path / "items.jsonl"
    bad.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD | change) + "\n")
    with pytest.raises(DataError, match=message) as e:
        hellaswag.read_items(bad)
    assert "\n" not in str(e.value)


def test_bad_item_refused_by_the_command_before_the_model_loads(tmp_path, capsys):
    bad = tmp_path / "items.jsonl"
    bad.write_text(json.dumps(GOOD | {"label": 7}) + "\n")
    code = main(["hellaswag", "score", "--init-from", str(tmp_path / "no-such-model"), "--items", str(bad)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "label=7" in err


def char_eval_config() -> dict:
    cfg = tiny_config()
    cfg["evals"] = {"hs": {"model": "tiny", "task": "hellaswag", "device": "cpu"}}
    return cfg


def test_char_run_refused_before_any_job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"evals.hs: run 'tiny' is character-level .*expected a GPT-2-tokenized"):
        Pipeline(char_eval_config()).check()
    # once its vocabulary and the items are on disk, the characters it lacks are named
    meta = Path("results/data/shakespeare_char/meta.json")
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"tokenizer": CharTokenizer(sorted(set("abcdefghijklmnopqrstuvwxyz .,"))).to_meta()}))
    items = Path("results/hellaswag/hellaswag_val.jsonl")
    items.parent.mkdir(parents=True)
    shutil.copy(FIXTURE, items)
    with pytest.raises(ConfigError, match=r"""lacks 14 character\(s\) \("'ABCGHIMPSTW\[\]"\) that the items use"""):
        Pipeline(char_eval_config()).check()
    # a vocabulary that spells every item passes
    chars = set(" ").union(*(set(i.ctx).union(*i.endings) for i in hellaswag.read_items(FIXTURE)[0]))
    meta.write_text(json.dumps({"tokenizer": CharTokenizer(sorted(chars)).to_meta()}))
    Pipeline(char_eval_config()).check()


def test_snakemake_refuses_a_char_run_in_one_line(tmp_path):
    work = make_pipeline(tmp_path / "pipeline", {**char_eval_config(), "targets": {"evals": ["hs"]}})
    proc = run_snakemake(work, "-n", check=False, timeout=120)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "character-level" in ln]
    assert proc.returncode != 0 and len(lines) == 1 and "evals.hs: run 'tiny'" in lines[0]
    assert not (work / "results").exists()


def test_a_run_is_scored_in_its_own_dtype():
    cfg = char_eval_config()
    cfg["runs"]["tiny"]["train"]["dtype"] = "bfloat16"
    spec = json.loads(Pipeline(cfg).hellaswag_spec("hs"))
    assert (spec["dtype"], spec["checkpoint"], spec["model"]) == ("bfloat16", "results/runs/tiny/model.pt", "tiny")
    cfg["evals"]["hs"]["dtype"] = "float32"  # unless the entry says otherwise
    assert json.loads(Pipeline(cfg).hellaswag_spec("hs"))["dtype"] == "float32"


def test_task_entry_checks():
    cfg = tiny_config()
    for entry, message in [
        ({"model": "gpt2", "task": "mmlu"}, r"evals.x.task='mmlu': expected 'hellaswag'"),
        ({"model": "gpt2", "task": "hellaswag", "limit": 0}, r"evals.x.limit=0: expected an integer in \[1, 1,000,000\], or null"),
        ({"model": "gpt2", "task": "hellaswag", "datasets": ["shakespeare_char"]}, r"expected no datasets"),
        ({"model": "gpt2", "task": "hellaswag", "source": {"url": "https://x/a.jsonl"}}, r"expected exactly one of"),
        ({"model": "gpt2", "task": "hellaswag", "batch_size": 4}, r"unknown key evals.x.batch_size"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Pipeline({**cfg, "evals": {"x": entry}}).check()


def test_pipeline_scores_through_the_mirror(tmp_path, tiny_hf, shared_data):
    mirror = tmp_path / "mirror"
    shutil.copytree(shared_data, mirror)
    shutil.copy(FIXTURE, mirror / FIXTURE.name)
    source = {"url": f"https://example.invalid/hellaswag/{FIXTURE.name}",
              "git_blob_sha1": fileio.git_blob_sha1_file(FIXTURE)}
    cfg = tiny_config()
    cfg["mirror"] = str(mirror)
    cfg["pretrained"] = {"tinyhf": str(tiny_hf)}
    common = {"model": "tinyhf", "task": "hellaswag", "source": source, "device": "cpu", "dtype": "float32",
              "resources": {"cpus_per_task": 1}}
    cfg["evals"] = {"hs": common, "hs_quick": {**common, "limit": 5}}
    cfg["targets"] = {"runs": [], "samples": [], "evals": ["hs", "hs_quick"]}
    work = make_pipeline(tmp_path / "pipeline", cfg)
    run_snakemake(work, "results/evals/hs.json", "results/evals/hs_quick.json", "results/summary.csv", timeout=300,
                  env={"NANOGPT_MIRROR": ""})
    res = work / "results"
    full, quick = (json.loads((res / f"evals/{n}.json").read_text()) for n in ("hs", "hs_quick"))
    direct = hellaswag.score(load_pretrained(str(tiny_hf)), gpt2_tokenizer(), hellaswag.read_items(FIXTURE)[0])
    assert (full["correct"], full["correct_norm"], full["items"]) == (direct["correct"], direct["correct_norm"], 12)
    assert (full["model"], full["limit"], full["dtype"], full["items_in_file"]) == ("tinyhf", None, "float32", 12)
    assert (quick["items"], quick["limit"]) == (5, 5)
    assert (res / "hellaswag" / FIXTURE.name).read_bytes() == FIXTURE.read_bytes()
    row = pd.read_csv(res / "summary.csv").set_index("model").loc["tinyhf"]
    assert (row["kind"], row["hellaswag_acc_norm"], row["hellaswag_items"]) == ("hellaswag", full["acc_norm"], 12)
    assert "hellaswag_acc_norm" in (res / "summary.md").read_text()
    assert "hellaswag_acc_norm" in (res / "summary.html").read_text()


def test_baselines_table_shows_hellaswag(tmp_path):
    loss = tmp_path / "eval/gpt2/openwebtext.json"
    loss.parent.mkdir(parents=True)
    loss.write_text(json.dumps({"model": "gpt2", "train_loss": 3.1, "val_loss": 3.12}))
    score = tmp_path / "evals/hellaswag_gpt2.json"
    score.parent.mkdir()
    score.write_text(json.dumps({"task": "hellaswag", "model": "gpt2", "acc_norm": 0.2957, "limit": None}))
    baselines([str(loss)], tmp_path / "table.md", [str(score)])
    row = next(line for line in (tmp_path / "table.md").read_text().splitlines() if line.startswith("| gpt2 "))
    assert row.split("|")[7:10] == [" 0.2957 ", " 0.2955 ", " 0.3114 "]
