"""benchmarks/gpu_check.py end to end on the CPU (--tiny), so its first GPU run is not its first run.

With $NANOGPT_REFERENCE or $NANOGPT_REF pointing at a nanoGPT checkout, nanoGPT's side runs too; otherwise ours
only. Every step runs with yaml, tiktoken, transformers, datasets and snakemake made unimportable, as on a bare GPU
box (our training still needs tensorboard: nanogpt.tracking writes events).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"
BLOCKED = ("yaml", "tiktoken", "transformers", "snakemake", "datasets")  # tensorboard: our training needs it
BLOCKER = f"""
import sys
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by test_gpu_check)")
        return None
sys.meta_path.insert(0, _Blocker())
"""


def nanogpt_reference() -> Path | None:
    value = os.environ.get("NANOGPT_REFERENCE") or os.environ.get("NANOGPT_REF")
    return Path(value) if value else None


def load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_baby_settings_match_config_yaml():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    assert load_script().BABY == config["runs"]["shakespeare_char"]


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("gpu_check")
    site = work / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ, PYTHONPATH=str(site))
    env.pop("NANOGPT_REF", None)
    env.pop("NANOGPT_REFERENCE", None)
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--work", str(work / "out")]
    ref = nanogpt_reference()
    if ref is not None:
        cmd += ["--nanogpt", str(ref)]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| baby GPT (20 iters): ms/iter (median) |" in proc.stdout  # the printed table
    return json.loads((work / "out" / "gpu_check.json").read_text())


def test_tiny_run_measures_ours_without_optional_packages(tiny_report):
    steps = tiny_report["steps"]
    ours = steps["train_ours"]
    assert ours["iters"] == 20 and math.isfinite(ours["best_val_loss"]) and ours["best_val_loss"] < 4.2
    assert ours["ms_per_iter"] > 0 and ours["wall_s"] > 0
    assert "yaml" in ours["missing_optional"] and "tiktoken" in ours["missing_optional"]  # blocked, and said so
    assert [row["new_tokens"] for row in steps["generate"]["rows"]] == [16, 80]  # 80 > block 64: the window slides
    assert all(row["ours_tok_s"] > 0 for row in steps["generate"]["rows"])
    assert steps["bench_ours"]["tokens_per_s"] > 0
    assert steps["syncs"]["iter_num"] == 8 and steps["syncs"]["syncs"] is None  # 3 + 5 steps ran; counted on CUDA
    assert any(note.startswith("yaml not installed") for note in tiny_report["notes"])


def test_tiny_run_compares_with_nanogpt_when_a_checkout_is_given(tiny_report):
    if nanogpt_reference() is None:
        assert "train_ref" not in tiny_report["steps"]
        assert any("nanoGPT side skipped" in note for note in tiny_report["notes"])
        pytest.skip("nanoGPT side not run: set NANOGPT_REFERENCE or NANOGPT_REF to a nanoGPT checkout")
    steps = tiny_report["steps"]
    ref = steps["train_ref"]
    assert ref["ms_per_iter"] > 0 and abs(ref["best_val_loss"] - steps["train_ours"]["best_val_loss"]) < 0.1
    for row in steps["generate"]["rows"]:
        assert row["identical"] is True, row  # same weights, same seed: the same samples
