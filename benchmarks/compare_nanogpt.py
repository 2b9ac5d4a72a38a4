"""Ours vs a reference nanoGPT checkout, side by side in one run on the same machine.

    .venv/bin/python benchmarks/compare_nanogpt.py --quick          # ~3 min: 200 training iters, short sampling
    .venv/bin/python benchmarks/compare_nanogpt.py --full           # 2000 iters each, 200 and 1000 new tokens
    NANOGPT_REF=/path/to/nanoGPT .venv/bin/python benchmarks/compare_nanogpt.py --quick

The reference is a plain nanoGPT checkout (--ref, else $NANOGPT_REF, else benchmarks/reference, git-ignored), e.g.
    git clone https://github.com/karpathy/nanoGPT benchmarks/reference
Its data/shakespeare_char/*.bin + meta.pkl are made with its own prepare.py from a local input.txt
(config.yaml's shakespeare_char source via `nanogpt download`: $NANOGPT_MIRROR if set, else the copy bundled
in nanogpt/assets), so nothing is downloaded.

Measured: prepare time (both as a fresh process), training ms/iter (median of logged iterations, like
nanoGPT's own `time` lines) and val loss at equal iterations on nanoGPT's README CPU config, and sampling
tokens/s of the char model and of a GPT-2-124M-shaped model (random weights, vocab 50304) with both
implementations holding the same weights in the same process. Ratios are ours/nanoGPT speed (>1: we are faster).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nanogpt.threads import available_cpus, choose_waits, describe_waits, set_wait_policy  # noqa: E402

# The in-process sampling runs under the OpenMP waits `nanogpt sample --out` chooses (spinning while the CPUs are
# free, else sleeping), both sides alike: libgomp reads them once, when torch loads. They are then taken out
# again, so that nanoGPT's training subprocess runs with libgomp's defaults (ours chooses its own).
_ENV_BEFORE = set(os.environ)
set_wait_policy(choose_waits(available_cpus()))
SAMPLING_WAITS = describe_waits()
import torch  # noqa: E402

for _name in set(os.environ) - _ENV_BEFORE:
    del os.environ[_name]

from nanogpt.decoding import generate  # noqa: E402
from nanogpt.model import GPT, GPTConfig  # noqa: E402
from nanogpt.runtime import CPU_FP32, Placement  # noqa: E402
from nanogpt.sample import generation_precision  # noqa: E402

CPU_CONFIG = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "batch_size": 12, "dropout": 0.0}


def default_ref() -> str:
    """$NANOGPT_REF, else benchmarks/reference/nanoGPT (or benchmarks/reference itself when it is the checkout)."""
    if os.environ.get("NANOGPT_REF"):
        return os.environ["NANOGPT_REF"]
    base = ROOT / "benchmarks" / "reference"
    return str(base / "nanoGPT" if (base / "nanoGPT" / "model.py").is_file() else base)


def child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[str, float]:
    """Run a command, fail loudly with its output tail, return (stdout+stderr, wall seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        sys.exit(f"compare_nanogpt: error: {' '.join(cmd)} exited {proc.returncode}:\n{out[-3000:]}")
    return out, wall


def prepare_both(ref: Path, work: Path) -> dict:
    """nanoGPT's prepare.py and our `nanogpt prepare` on the same input.txt, each as a fresh process."""
    src = work / "input.txt"  # checksummed: $NANOGPT_MIRROR's copy if set, else the bundled one
    run([sys.executable, "-m", "nanogpt.cli", "download", "--config", str(ROOT / "config.yaml"),
         "--name", "shakespeare_char", "--out", str(src)], cwd=ROOT)
    ref_data = ref / "data" / "shakespeare_char"
    shutil.copy(src, ref_data / "input.txt")  # present: prepare.py reads it instead of downloading
    _, ref_s = run([sys.executable, "prepare.py"], cwd=ref_data)
    ours_dir = work / "data" / "shakespeare_char"
    _, ours_s = run([sys.executable, "-m", "nanogpt.cli", "prepare", "--config", str(ROOT / "config.yaml"),
                     "--name", "shakespeare_char", "--source", str(src), "--out-dir", str(ours_dir)], cwd=ROOT)
    return {"ours_s": ours_s, "ref_s": ref_s, "ours_dir": ours_dir}


def train_ref(ref: Path, iters: int, work: Path) -> dict:
    c = CPU_CONFIG
    args = [f"--{k}={v}" for k, v in c.items()] + [
        "--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", f"--max_iters={iters}",
        f"--lr_decay_iters={iters}", f"--eval_interval={min(250, iters)}", f"--out_dir={work / 'ref-run'}"]
    cpu0 = child_cpu_s()
    out, wall = run([sys.executable, "train.py", "config/train_shakespeare_char.py", *args], cwd=ref)
    times = [float(t) for i, t in re.findall(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms", out, re.M) if int(i) > 5]
    vals = re.findall(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)", out, re.M)
    step, _, val = vals[-1]
    assert int(step) == iters, f"nanoGPT's last eval is at step {step}, expected {iters}"
    return {"ms": times, "val_loss": float(val), "wall_s": wall, "cpu_s": child_cpu_s() - cpu0,
            "dtype": "float32"}  # nanoGPT autocasts only on GPUs


def train_ours(data_dir: Path, iters: int, work: Path, dtype: str) -> dict:
    out_dir = work / f"ours-run-{dtype}"
    shutil.rmtree(out_dir, ignore_errors=True)  # a leftover checkpoint would make it resume
    c = CPU_CONFIG
    args = [f"--{k}={v}" for k, v in c.items()] + [
        "--device=cpu", f"--dtype={dtype}", "--compile=false", "--eval_iters=20", "--log_interval=1",
        f"--max_iters={iters}", f"--lr_decay_iters={iters}", f"--eval_interval={min(250, iters)}"]
    cpu0 = child_cpu_s()
    _, wall = run([sys.executable, "-m", "nanogpt.cli", "train", "--config", str(ROOT / "config.yaml"), "--name",
                   "shakespeare_char_cpu", "--data-dir", str(data_dir), "--out-dir", str(out_dir), *args], cwd=ROOT)
    m = json.loads((out_dir / "metrics.json").read_text())
    rows = [json.loads(line) for line in (out_dir / "history.jsonl").read_text().splitlines()]
    times = [row["dt"] * 1000 for row in rows if row["iter"] > 5]  # the iterations nanoGPT's side counts
    return {"ms": times, "val_loss": m["val_loss"], "wall_s": wall, "cpu_s": child_cpu_s() - cpu0,
            "dtype": m["dtype"]}


def train_both(data_dir: Path, ref: Path, iters: int, work: Path, repeats: int, dtypes: list[str]) -> dict:
    """ours (one side per dtype), nanoGPT, ours, nanoGPT, ...: load from other processes hits every side alike;
    per-iteration times pooled."""
    runs: dict[str, list[dict]] = {f"ours {d}": [] for d in dtypes} | {"nanoGPT": []}
    for _ in range(repeats):
        for d in dtypes:
            runs[f"ours {d}"].append(train_ours(data_dir, iters, work, d))
        runs["nanoGPT"].append(train_ref(ref, iters, work))
    out = {}
    for side, rs in runs.items():
        out[side] = {"dtype": rs[-1]["dtype"],
                     "ms_per_iter": statistics.median([t for r in rs for t in r["ms"]]),
                     "val_loss": rs[-1]["val_loss"], "wall_s": statistics.median(r["wall_s"] for r in rs),
                     "cpu_s": statistics.median(r["cpu_s"] for r in rs),
                     "per_run_ms": [statistics.median(r["ms"]) for r in rs]}
    return out


def load_ref_model_module(ref: Path):
    spec = importlib.util.spec_from_file_location("nanogpt_reference_model", ref / "model.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def twin_models(ref_mod, cfg: dict, dtype: torch.dtype = torch.float32):
    """Our GPT and nanoGPT's GPT holding the same random weights (parameter names are the same)."""
    torch.manual_seed(0)
    ours = GPT(GPTConfig(**cfg)).eval()
    theirs = ref_mod.GPT(ref_mod.GPTConfig(**cfg)).eval()
    theirs.load_state_dict(ours.state_dict())
    return ours.to(dtype), theirs.to(dtype)


def time_generate(model, n: int, prompt: torch.Tensor, seed: int = 1337, **options) -> tuple[float, torch.Tensor]:
    torch.manual_seed(seed)  # both draw from the global generator, like nanoGPT's sample.py
    t0 = time.perf_counter()
    with torch.no_grad():
        y = (generate(model, prompt, n, temperature=0.8, top_k=200, **options) if isinstance(model, GPT)
             else model.generate(prompt, n, temperature=0.8, top_k=200, **options))
    return n / (time.perf_counter() - t0), y


# Past block_size (the char model's 64), nanoGPT recomputes the window at every token; ours by default every
# block_size // 4 tokens, which draws other samples. Like for like here: ours with nanoGPT's cropping.
# benchmarks/generate_window.py measures our default past the window.
NANOGPT_WINDOW = {"window_refresh": 1}


def ref_tokens_per_s_estimate(theirs, n: int, points: int = 6) -> float:
    """nanoGPT's tokens/s for `n` new tokens from a 1-token prompt, without waiting minutes: its step at
    context length L is one full forward of L tokens, so time a few lengths and integrate (trapezoid)."""
    lengths = sorted({max(1, round(i * n / (points - 1))) for i in range(points)})
    per_len = []
    with torch.no_grad():
        for L in lengths:
            x = torch.zeros(1, L, dtype=torch.long)
            theirs(x)  # warm-up
            t0 = time.perf_counter()
            theirs(x)
            per_len.append(time.perf_counter() - t0)
    total = sum((lengths[i + 1] - lengths[i]) * (per_len[i] + per_len[i + 1]) / 2 for i in range(len(lengths) - 1))
    return n / (total + per_len[0])


def sampling(ref_mod, name: str, cfg: dict, lengths: list[int], estimate_ref_above: int) -> list[dict]:
    rows = []
    ours, theirs = twin_models(ref_mod, cfg)
    generation_precision(ours, CPU_FP32)  # what `nanogpt sample` does to the weights before it generates
    prompt = torch.zeros(1, 1, dtype=torch.long)
    time_generate(ours, 5, prompt, **NANOGPT_WINDOW)  # warm-up (allocator, oneDNN kernels)
    time_generate(theirs, 5, prompt)
    for n in lengths:
        ours_tps, y_ours = time_generate(ours, n, prompt, **NANOGPT_WINDOW)
        if n > estimate_ref_above:
            ref_tps, same, how = ref_tokens_per_s_estimate(theirs, n), None, "estimated"
        else:
            ref_tps, y_ref = time_generate(theirs, n, prompt)
            same, how = bool(torch.equal(y_ours, y_ref)), "measured"
        rows.append({"model": name, "new_tokens": n, "ours_tok_s": ours_tps, "ref_tok_s": ref_tps,
                     "ratio": ours_tps / ref_tps, "ref": how, "same_samples": same})
    if cfg["n_embd"] >= 512:  # bf16 weights: half the bytes to stream per token (samples differ from fp32)
        ours_bf16 = ours
        generation_precision(ours_bf16, Placement(torch.device("cpu"), torch.bfloat16))
        time_generate(ours_bf16, 5, prompt, **NANOGPT_WINDOW)
        for row in list(rows):
            tps, _ = time_generate(ours_bf16, row["new_tokens"], prompt, **NANOGPT_WINDOW)
            rows.append({**row, "model": name + " (ours bf16)", "ours_tok_s": tps, "ratio": tps / row["ref_tok_s"],
                         "same_samples": None})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="200 training iters, 124M sampling at 200 tokens")
    mode.add_argument("--full", action="store_true", help="2000 training iters, sampling at 200 and 1000 tokens")
    p.add_argument("--ref", default=default_ref(),
                   help="nanoGPT checkout (default $NANOGPT_REF, else benchmarks/reference/nanoGPT)")
    p.add_argument("--repeats", type=int, default=1,
                   help="training runs per side, alternated (ours, nanoGPT, ours, ...); medians of the pooled iterations")
    p.add_argument("--skip-sampling", action="store_true")
    p.add_argument("--iters", type=int, help="training iterations (default 200 quick, 2000 full)")
    p.add_argument("--ref-measure-max", type=int, default=200,
                   help="nanoGPT's 124M generation is run for real up to this many new tokens and estimated from "
                        "timed forward passes above it (it takes minutes at 1000 tokens); default 200")
    p.add_argument("--threads", type=int, help="torch threads for both (OMP_NUM_THREADS for the training processes); "
                   "1 is far faster than 2 when other processes share the cores")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--dtypes", default="auto,float32",
                   help="our training runs, one side per dtype (auto: bf16 on CPUs with bf16 units); default "
                        "auto,float32, so the table shows the like-for-like fp32 ratio too")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "compare_nanogpt.json"))
    args = p.parse_args()
    ref = Path(args.ref)
    if not (ref / "model.py").is_file() or not (ref / "train.py").is_file():
        sys.exit(f"compare_nanogpt: error: --ref {str(ref)!r} has no model.py/train.py: expected a nanoGPT checkout")
    full = args.full
    iters = args.iters or (2000 if full else 200)
    work = ROOT / "benchmarks" / "out"
    work.mkdir(parents=True, exist_ok=True)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by every subprocess
        torch.set_num_threads(args.threads)
    result: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "iters": iters}

    prep = prepare_both(ref, work)
    result["prepare"] = {"ours_s": prep["ours_s"], "ref_s": prep["ref_s"]}
    if not args.skip_train:
        result["train"] = train_both(prep["ours_dir"], ref, iters, work, args.repeats, args.dtypes.split(","))

    ref_mod = load_ref_model_module(ref)
    char_cfg = {k: CPU_CONFIG[k] for k in ("n_layer", "n_head", "n_embd", "block_size")}
    char_cfg.update(vocab_size=65, bias=False, dropout=0.0)
    gpt2_cfg = {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "vocab_size": 50304,
                "bias": True, "dropout": 0.0}
    lengths = [200, 1000] if full else [200]
    rows = [] if args.skip_sampling else sampling(ref_mod, "char 4x128 (block 64)", char_cfg, lengths, 10**9)
    if not args.skip_sampling:
        rows += sampling(ref_mod, "GPT-2 124M shape", gpt2_cfg, lengths, estimate_ref_above=args.ref_measure_max)
    result["sampling"] = rows
    result["sampling_waits"] = SAMPLING_WAITS

    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, nanoGPT at {ref}")
    print(f"prepare (fresh process): ours {prep['ours_s']:.2f}s, nanoGPT {prep['ref_s']:.2f}s")
    if "train" in result:
        sides, r = result["train"], result["train"]["nanoGPT"]
        print(f"\ntraining, CPU config, {iters} iters x {args.repeats} runs each, alternated | dtype | ms/iter (median) "
              "| val loss | wall s | CPU s (process) | per-run medians | tokens/s vs nanoGPT")
        for label, x in sides.items():
            print(f"  {label:<13} | {x['dtype']:<8} | {x['ms_per_iter']:7.2f} | {x['val_loss']:.4f} | {x['wall_s']:6.1f} "
                  f"| {x['cpu_s']:6.1f} | " + " ".join(f"{v:.1f}" for v in x["per_run_ms"])
                  + f" | {r['ms_per_iter'] / x['ms_per_iter']:.2f}x")
    print(f"\nsampling: {torch.get_num_threads()} threads, {SAMPLING_WAITS}, both sides")
    print("sampling (1 sample, temperature 0.8, top_k 200) | new tokens | ours tok/s | nanoGPT tok/s | ratio | "
          "same samples")
    for row in rows:
        same = "-" if row["same_samples"] is None else ("yes" if row["same_samples"] else "NO")
        print(f"  {row['model']:<26} | {row['new_tokens']:5d} | {row['ours_tok_s']:8.1f} | {row['ref_tok_s']:8.1f}"
              f" ({row['ref']}) | {row['ratio']:6.2f}x | {same}")
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
