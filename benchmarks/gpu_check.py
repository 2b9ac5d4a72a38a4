"""Ours vs nanoGPT on one GPU, side by side, in one command (see benchmarks/GPU.md; run by benchmarks/gpu_call.sh).

    python benchmarks/gpu_check.py --nanogpt /path/to/nanoGPT            # GPU: < 8 minutes on one H100/H200
    python benchmarks/gpu_check.py --tiny                                  # CPU: tiny settings, a smoke test

Steps, in order of importance, each in its own process under its own timeout and within one overall budget
(--budget; a step that no longer fits is skipped and says so):
  probes                  the GPU-only paths (benchmarks/gpu_probes.py): TF32 getters, fp32 compile (default and
                          max-autotune), async batch copies, host syncs per step and per token, resume on the GPU
  train_ours / train_ref  the baby GPT (config.yaml runs.shakespeare_char = nanoGPT's train_shakespeare_char.py),
                          both compiled, same settings, 2000 iterations: median ms/iter over the same kind of
                          iterations (logged every iteration; warm-up and the iterations that contain an eval
                          excluded on both sides), MFU against the card's peak, val loss, wall time
  generate                GPT-2-124M shape, random weights shared by both models, 200 and 1000 new tokens: tok/s
                          (ours: CUDA-graph decoding and eager KV cache; nanoGPT: its generate) and whether the
                          samples are identical
  bench_ours / bench_ref  a GPT-2-124M training step, batch 16 x 1024, bf16, compiled: tokens/s and MFU
                          (`nanogpt bench`'s bench() vs nanoGPT's bench.py --real_data=False)
  autotune                the fp32 compile probe in inductor's max-autotune mode (CUDA only; last: it takes
                          whatever budget is left)

Only torch and numpy are needed (plus nanogpt's torch-only modules): the data is the bundled
nanogpt/assets/tinyshakespeare/input.txt, char-tokenized here and written in both formats. Results: a printed
table and JSON (--out); every step's output in WORK/<step>.log (nanoGPT's own output included). nanoGPT is a
checkout given by --nanogpt or $NANOGPT_REF (never committed); without one, the nanoGPT side is skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# runs.shakespeare_char in config.yaml (tests/test_gpu_check.py keeps the two equal): no YAML needed here
BABY = {
    "dataset": "shakespeare_char",
    "model": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "dropout": 0.2, "bias": False},
    "train": {"batch_size": 64, "gradient_accumulation_steps": 1, "max_iters": 5000, "lr_decay_iters": 5000,
              "learning_rate": 1.0e-3, "min_lr": 1.0e-4, "beta2": 0.99, "warmup_iters": 100, "eval_interval": 250,
              "eval_iters": 200, "log_interval": 10, "always_save_checkpoint": False, "compile": True},
    "launch": {"nproc_per_node": 1},
    "resources": {"gpus": 1, "cpus_per_task": 8, "mem_mb": 32000, "runtime": 60},
}
# runs.shakespeare_char_fast in config.yaml, over BABY (tests/test_gpu_check.py keeps the two equal): our fastest
# recipe for the baby GPT, timed to TARGET_VAL_LOSS against nanoGPT's config
FAST = {"base": "shakespeare_char", "model": {"arch": "modern"},
        "train": {"optimizer": "muon", "muon_lr": 0.02, "learning_rate": 2.0e-3, "min_lr": 2.0e-4, "warmup_iters": 50,
                  "max_iters": 1500, "lr_decay_iters": 1500}}
TARGET_VAL_LOSS = 1.47  # nanoGPT's README: val 1.4697 after 5000 iterations of config/train_shakespeare_char.py
RECIPE_EVAL_INTERVAL = 100  # both sides evaluate this often (200 batches per split, the config's), timed too
VAL_LINE = re.compile(r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)", re.M)  # nanoGPT's format, and ours
# ours' 124M training step with one lever changed (step bench_variants), beside bench_ours
# (sdpa_backend: the one attention kernel SDPA may use, torch.nn.attention.SDPBackend; CUDA only)
BENCH_VARIANTS = {"loss_chunk_rows=4096": {"loss_chunk_rows": 4096}, "batch_size=32": {"batch_size": 32},
                  "arch=modern, optimizer=muon": {"arch": "modern", "optimizer": "muon"},
                  "sdpa=cudnn": {"sdpa_backend": "CUDNN_ATTENTION"}, "sdpa=flash": {"sdpa_backend": "FLASH_ATTENTION"}}
GPT2_SHAPE = {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "vocab_size": 50304, "bias": False,
              "dropout": 0.0}
TINY_MODEL = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64}
TINY_TRAIN = {"batch_size": 8, "eval_iters": 5, "log_interval": 5}
TINY_GEN = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64, "vocab_size": 512, "bias": False,
            "dropout": 0.0}
# Each step's own limit on a GPU (the CPU smoke test doubles them); the overall --budget bounds their sum.
TIMEOUTS = {"probes": 120, "train_ours": 180, "train_ref": 180, "generate": 180, "bench_ours": 120, "bench_ref": 120,
            "bench_variants": 300, "recipe_ours": 150, "recipe_ref": 240, "autotune": 120, "decode": 90}
MIN_STEP_S = 30  # a step is skipped when less than this is left of the budget
WARMUP_ITERS = 10  # logged iterations below this are compile / warm-up, left out of the medians
OPTIONAL = {"yaml": "config.yaml loading (not used here)",
            "tensorboard": "our training writes TensorBoard events (nanogpt.tracking): train_ours and probes need it",
            "tiktoken": "GPT-2 BPE (not used here)"}


# ---- environment ------------------------------------------------------------------------------------------------
def allow_missing_optional() -> list[str]:
    """Import our package without PyYAML (nanogpt.config imports it for config files, unused here); returns the
    optional packages that are missing, for the report. A missing tensorboard fails our training step, loudly."""
    missing = [name for name in OPTIONAL if not _installed(name)]
    if "yaml" in missing:
        sys.modules["yaml"] = _unavailable("yaml", "PyYAML is not installed here")
    return missing


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a broken install
        return False


def _unavailable(name: str, why: str) -> types.ModuleType:
    """A module that raises on use: importing it works, calling into it says why it is not there."""
    module = types.ModuleType(name)

    def fail(attr: str):
        if attr.startswith("__"):  # introspection (inspect, pickle) asks for dunders: a plain absence
            raise AttributeError(attr)
        raise ImportError(f"{name}.{attr}: {why}")

    module.__getattr__ = fail  # type: ignore[method-assign]
    return module


def device_info() -> dict:
    """The card, its compute capability and its bf16 peak (runtime.gpu_peak_flops), or the CPU."""
    from nanogpt.runtime import gpu_peak_flops

    if not torch.cuda.is_available():
        return {"device": "cpu", "name": "cpu", "peak_bf16": None, "peak_fp32": None}
    name, cap = torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0)
    return {"device": "cuda", "name": name, "capability": list(cap),
            "peak_bf16": gpu_peak_flops(name, cap, torch.bfloat16), "peak_fp32": gpu_peak_flops(name, cap, torch.float32)}


# Memory bandwidth (bytes/s) by card name, first match wins: what one generated token, which reads every weight
# once, can at best stream. Vendors' data sheets.
GPU_MEMORY_BANDWIDTH: list[tuple[str, float]] = [
    (r"H100.*\bPCIe\b", 2.0e12), (r"H100.*\bNVL\b", 3.9e12), (r"\bH100\b", 3.35e12),
    (r"H200.*\bNVL\b", 4.8e12), (r"\bH200\b", 4.8e12), (r"\bA100\b.*80GB", 2.039e12), (r"\bA100\b", 1.555e12),
]


def memory_bandwidth(name: str) -> float | None:
    return next((v for pattern, v in GPU_MEMORY_BANDWIDTH if re.search(pattern, name)), None)


def bytes_per_token(model: torch.nn.Module, new_tokens: int) -> float:
    """What decoding one token reads, on average over `new_tokens` tokens from a 1-token prompt: every weight
    once (the tied embedding once; the position table's one row is left out) and the keys and values so far."""
    weights = {id(t): t for t in model.parameters()}
    wpe = getattr(model.transformer, "wpe", None)
    total = sum(t.numel() * t.element_size() for k, t in weights.items() if wpe is None or k != id(wpe.weight))
    cfg = model.config
    kv_per_position = 2 * cfg.n_layer * cfg.n_embd * next(model.parameters()).element_size()
    return total + kv_per_position * (1 + new_tokens) / 2


def mfu(shape: dict, batch_seqs: int, ms: float | None, peak: float | None) -> float | None:
    """The same MFU formula for both sides (our GPT.estimate_mfu) against the card's real peak."""
    from nanogpt.model import GPT, GPTConfig

    if not ms or not peak:
        return None
    with torch.device("meta"):
        model = GPT(GPTConfig(**{**GPT2_SHAPE, "dropout": 0.0, **shape}))
    return model.estimate_mfu(batch_seqs, ms / 1000, peak)


# ---- data ---------------------------------------------------------------------------------------------------------
def prepare_data(work: Path) -> tuple[Path, Path]:
    """Char-tokenize the bundled Shakespeare for us (meta.json) and for nanoGPT (the same bins + meta.pkl)."""
    from nanogpt.data.prepare import prepare_text

    ours = work / "data" / "shakespeare_char"
    meta = prepare_text(ROOT / "nanogpt" / "assets" / "tinyshakespeare" / "input.txt", ours)
    ref_root = work / "ref"
    ref_data = ref_root / "data" / "shakespeare_char"
    ref_data.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        shutil.copyfile(ours / f"{split}.bin", ref_data / f"{split}.bin")
    chars = meta["tokenizer"]["chars"]
    with open(ref_data / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)),
                     "stoi": {c: i for i, c in enumerate(chars)}}, f)
    return ours, ref_root


def link_reference(ref: Path, ref_root: Path) -> None:
    """nanoGPT reads configurator.py and data/ from its working directory: link its code beside our data."""
    for name in ("train.py", "model.py", "configurator.py", "bench.py", "config"):
        link = ref_root / name
        if link.is_symlink():  # from an earlier run, maybe of another checkout
            link.unlink()
        link.symlink_to((ref / name).resolve())


# ---- steps (each runs in a child process: `gpu_check.py --step NAME --params JSON`) -------------------------------
def step_train_ours(p: dict) -> dict:
    from nanogpt.config import resolve_run
    from nanogpt.train import train

    shutil.rmtree(p["out_dir"], ignore_errors=True)  # a leftover checkpoint would make it resume
    run = resolve_run(BABY, "shakespeare_char", p["overrides"])
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    m = train(run, p["data_dir"], p["out_dir"], log=log)
    # our loop logs iteration i after its step: the one that ran an eval first is i % eval_interval == 1
    timing = parse_iteration_times("\n".join(lines), p["overrides"]["eval_interval"], eval_offset=1)
    # wall time from this process's launch, like nanoGPT's (interpreter start and imports included)
    return {**timing, "best_val_loss": m["best_val_loss"], "final_val_loss": m["val_loss"],
            "wall_s": time.time() - p["launched_at"], "iters": m["iters"], "dtype": m["dtype"],
            "mfu_logged": m["mfu"], "compiled": run.train.compile}


def step_train_ref(p: dict) -> dict:
    args = [f"--{k}={v}" for k, v in p["overrides"].items()] + [f"--out_dir={p['out_dir']}"]
    out, wall = run_logged([sys.executable, "train.py", "config/train_shakespeare_char.py", *args], p["ref_root"],
                           p["timeout"], p["log"])
    # nanoGPT logs iteration i with the time of the loop pass that began with i's eval: i % eval_interval == 0
    timing = parse_iteration_times(out, p["overrides"]["eval_interval"], eval_offset=0)
    vals = [float(v) for v in re.findall(r"^step \d+: train loss [\d.]+, val loss ([\d.]+)", out, re.M)]
    if not vals:
        raise RuntimeError(f"no eval lines in nanoGPT's output:\n{out[-2000:]}")
    return {**timing, "best_val_loss": min(vals), "final_val_loss": vals[-1], "wall_s": wall}


def step_recipe_ours(p: dict) -> dict:
    """Our fastest recipe for the baby GPT (FAST) from process start to the first eval at or below the target."""
    from nanogpt.config import inherit_runs, resolve_run
    from nanogpt.train import train

    shutil.rmtree(p["out_dir"], ignore_errors=True)
    entry = inherit_runs({"shakespeare_char": BABY, "shakespeare_char_fast": FAST})["shakespeare_char_fast"]
    run = resolve_run(entry, "shakespeare_char_fast", p["overrides"])
    evals: list[dict] = []

    def log(line: str) -> None:
        print(line, flush=True)
        found = VAL_LINE.match(line)
        if found:
            evals.append({"iter": int(found[1]), "val_loss": float(found[2]), "s": time.time() - p["launched_at"]})

    m = train(run, p["data_dir"], p["out_dir"], log=log)
    return {**time_to_target(evals, p["target"]), "iters": m["iters"], "final_val_loss": m["val_loss"],
            "wall_s": time.time() - p["launched_at"], "recipe": entry["train"] | {"arch": entry["model"]["arch"]}}


def step_recipe_ref(p: dict) -> dict:
    """nanoGPT's baby GPT config (5000 iterations) from process start to the first eval at or below the target;
    its output is read as it comes, and the run is stopped there (or at the step's timeout)."""
    args = [f"--{k}={v}" for k, v in p["overrides"].items()] + [f"--out_dir={p['out_dir']}"]
    cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", *args]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=p["ref_root"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timer = threading.Timer(p["timeout"], proc.kill)
    timer.start()
    lines, evals = [], []
    try:
        for line in proc.stdout:
            lines.append(line)
            found = VAL_LINE.match(line)
            if found:
                evals.append({"iter": int(found[1]), "val_loss": float(found[2]), "s": time.time() - t0})
                if evals[-1]["val_loss"] <= p["target"]:
                    break
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()
        Path(p["log"]).write_text("".join(lines))
    if not evals:
        raise RuntimeError(f"no eval lines in nanoGPT's output:\n{''.join(lines)[-2000:]}")
    return {**time_to_target(evals, p["target"]), "wall_s": time.time() - t0}


def time_to_target(evals: list[dict], target: float) -> dict:
    """When (seconds from process start) and at which iteration the val loss first reached `target`."""
    hit = next((e for e in evals if e["val_loss"] <= target), None)
    return {"target": target, "time_to_target_s": hit and hit["s"], "iter_at_target": hit and hit["iter"],
            "best_val_loss": min(e["val_loss"] for e in evals) if evals else None, "evals": evals}


def parse_iteration_times(log: str, eval_interval: int, eval_offset: int) -> dict:
    """Median ms/iter over `iter N: loss X, time Yms` lines (nanoGPT's format, which ours shares), leaving out
    warm-up iterations and the ones whose time includes an eval (N % eval_interval == eval_offset)."""
    found = [(int(i), float(t)) for i, t in re.findall(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms", log, re.M)]
    kept = [t for i, t in found if i >= WARMUP_ITERS and i % eval_interval != eval_offset]
    if not kept:
        raise RuntimeError(f"no iteration lines to time in:\n{log[-2000:]}")
    return {"ms_per_iter": statistics.median(kept), "timed_iters": len(kept), "logged_iters": len(found)}


def step_generate(p: dict) -> dict:
    """Both models hold the same random weights; each samples from a 1-token prompt with the same seed.

    Ours runs in fp32 as it runs by default (CUDA-graph decoding, the draw inside the graph, on CUDA) and with
    the eager KV cache; and with bf16 weights, cast once (`nanogpt sample --dtype bfloat16`), eager and with the
    decoding step compiled (on CUDA, compilation during the warm-up call), with the share of the card's memory
    bandwidth that its bytes per token reach.
    """
    import copy

    from nanogpt.decoding import generate
    from nanogpt.model import GPT, GPTConfig
    from nanogpt.runtime import Placement
    from nanogpt.sample import generation_precision

    device = torch.device(p["device"])
    torch.set_float32_matmul_precision("highest")  # true fp32 on both sides: the samples should match exactly
    torch.manual_seed(0)
    ours = GPT(GPTConfig(**p["shape"])).eval().to(device)
    # window_refresh=1: past block_size (the tiny CPU shape), nanoGPT's per-token cropping, so samples compare
    sampling = {"temperature": 0.8, "top_k": 200, "window_refresh": 1}
    ours_bf16 = copy.deepcopy(ours)
    generation_precision(ours_bf16, Placement(device, torch.bfloat16))
    sides = {"ours": lambda n: generate(ours, PROMPT(device), n, **sampling),
             "ours_eager": lambda n: generate(ours, PROMPT(device), n, cuda_graph=False, **sampling),
             "ours_bf16": lambda n: generate(ours_bf16, PROMPT(device), n, **sampling),
             "ours_bf16_compiled": lambda n: generate(ours_bf16, PROMPT(device), n, compile_step=True, **sampling)}
    if p.get("ref"):
        mod = load_module(Path(p["ref"]) / "model.py", "nanogpt_reference_model")
        theirs = mod.GPT(mod.GPTConfig(**p["shape"])).eval().to(device)
        theirs.load_state_dict(ours.state_dict())
        sides["nanoGPT"] = lambda n: theirs.generate(PROMPT(device), n, temperature=0.8, top_k=200)
    rows = []
    for n in p["lengths"]:
        row: dict = {"new_tokens": n}
        samples = {}
        for name, draw in sides.items():
            time_generate(draw, n, device)  # warm-up at this length: kernels, allocator, compilation, graph
            row[f"{name}_tok_s"], samples[name] = time_generate(draw, n, device)
        bandwidth = memory_bandwidth(torch.cuda.get_device_name(0)) if device.type == "cuda" else None
        for name, model in (("ours", ours), ("ours_bf16", ours_bf16), ("ours_bf16_compiled", ours_bf16)):
            row[f"{name}_bytes_per_token"] = bytes_per_token(model, n)
            if bandwidth:
                row[f"{name}_bandwidth_share"] = row[f"{name}_tok_s"] * row[f"{name}_bytes_per_token"] / bandwidth
        row["ours_bf16_vs_fp32"] = row["ours_bf16_tok_s"] / row["ours_tok_s"]
        if not torch.equal(samples["ours_bf16"], samples["ours"]):  # bf16 draws fp32's tokens for a while
            row["ours_bf16_first_difference_from_fp32"] = int((samples["ours_bf16"] != samples["ours"]).nonzero()[0, 1])
        for name in ("ours", "ours_eager"):
            if "nanoGPT" in samples:
                row[f"{name}_ratio"] = row[f"{name}_tok_s"] / row["nanoGPT_tok_s"]
                same = bool(torch.equal(samples[name], samples["nanoGPT"]))
                row[f"{name}_identical"] = same
                if not same:
                    row[f"{name}_first_difference"] = int((samples[name] != samples["nanoGPT"]).nonzero()[0, 1])
        rows.append(row)
    return {"rows": rows, "graph_decoding": device.type == "cuda"}


def PROMPT(device: torch.device) -> torch.Tensor:  # noqa: N802 - a constant made per device
    return torch.zeros(1, 1, dtype=torch.long, device=device)


def time_generate(draw, n: int, device: torch.device) -> tuple[float, torch.Tensor]:
    torch.manual_seed(1337)
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        y = draw(n)
    sync(device)
    return n / (time.perf_counter() - t0), y.cpu()


def step_bench_ours(p: dict) -> dict:
    from nanogpt.bench import bench

    r = bench(p["overrides"], steps=p["steps"], warmup=p["warmup"])
    return {"ms_per_iter": r["median_ms_per_iter"], "tokens_per_s": r["tokens_per_sec"], "first_step_s": r["first_step_s"],
            "dtype": r["dtype"]}


def step_bench_variants(p: dict) -> dict:
    """bench_ours' step with one lever changed at a time (BENCH_VARIANTS), each measured on its own. The results
    so far are written after each variant, so a step cut by its timeout keeps them (run_step)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from nanogpt.bench import bench

    out: dict = {}
    for name, change in p["variants"].items():
        change = dict(change)
        backend = change.pop("sdpa_backend", None)
        try:
            with sdpa_kernel(getattr(SDPBackend, backend)) if backend else contextlib.nullcontext():
                r = bench({**p["overrides"], **change}, steps=p["steps"], warmup=p["warmup"])
            out[name] = {"ms_per_iter": r["median_ms_per_iter"], "tokens_per_s": r["tokens_per_sec"],
                         "mfu": r["mfu"], "first_step_s": r["first_step_s"]}
        except Exception as e:  # noqa: BLE001 - one variant failing (memory, compile, backend) leaves the others
            out[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(name, out[name], flush=True)
        Path(p["result"]).write_text(json.dumps({"variants": out}, indent=2, default=str))
        torch._dynamo.reset()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {"variants": out}


def step_bench_ref(p: dict) -> dict:
    args = [f"--{k}={v}" for k, v in p["overrides"].items()]
    out, wall = run_logged([sys.executable, "bench.py", *args], p["ref_root"], p["timeout"], p["log"])
    found = re.search(r"time per iteration: ([\d.]+)ms", out)
    if not found:
        raise RuntimeError(f"no 'time per iteration' line in nanoGPT's bench.py output:\n{out[-2000:]}")
    ms = float(found.group(1))
    return {"ms_per_iter": ms, "tokens_per_s": p["tokens_per_step"] / (ms / 1000), "wall_s": wall}


def step_decode(p: dict) -> dict:
    """Where a generated token's time goes (GPT-2-124M shape, random weights, 1-token prompt): the model step
    (one CUDA-graph replay on CUDA), nanoGPT's sampling (top-k, softmax, multinomial), the whole loop in fp32 and
    bf16 (nanoGPT's sample.py default), nanoGPT's own loop in bf16, and the profiler's top kernels."""
    from nanogpt.decoding import StaticDecodeStep, generate, sample_next
    from nanogpt.model import GPT, GPTConfig, KVCache

    device = torch.device(p["device"])
    torch.set_float32_matmul_precision("highest")
    torch.manual_seed(0)
    model = GPT(GPTConfig(**p["shape"])).eval().to(device)
    prompt, n = PROMPT(device), p["tokens"]
    out: dict = {}
    with torch.no_grad():
        cache = KVCache(model.config.n_layer, model.config.block_size)
        model(prompt, cache=cache)
        step = StaticDecodeStep(model, cache, 1, use_graph=device.type == "cuda")
        out["model_step_ms"] = time_per_call(lambda: step(prompt, 1), 50, device)
        logits = step(prompt, 1)[:, -1, :].clone()
        out["sample_top200_ms"] = time_per_call(lambda: sample_next(logits, 0.8, 200), 50, device)
        out["sample_no_topk_ms"] = time_per_call(lambda: sample_next(logits, 0.8, None), 50, device)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            ctx = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
            with ctx:
                gen = lambda k: generate(model, prompt, k, temperature=0.8, top_k=200)  # noqa: E731
                out[f"ours_{name}_tok_s"] = time_generate(gen, n, device)[0]
        if p.get("ref"):
            mod = load_module(Path(p["ref"]) / "model.py", "nanogpt_reference_model")
            theirs = mod.GPT(mod.GPTConfig(**p["shape"])).eval().to(device)
            theirs.load_state_dict(model.state_dict())
            with torch.autocast(device.type, dtype=torch.bfloat16):  # nanoGPT's sample.py default on GPUs
                gen = lambda k: theirs.generate(prompt, k, temperature=0.8, top_k=200)  # noqa: E731
                short = p["tokens"] // 5
                out["nanoGPT_bf16_first_pass_tok_s"] = time_generate(gen, short, device)[0]
                out[f"nanoGPT_bf16_tok_s_{short}"] = time_generate(gen, short, device)[0]  # every length seen once
            with torch.autocast(device.type, dtype=torch.bfloat16):
                gen = lambda k: generate(model, prompt, k, temperature=0.8, top_k=200)  # noqa: E731
                out[f"ours_bf16_tok_s_{short}"] = time_generate(gen, short, device)[0]
        out["profile"] = profile_table(lambda: generate(model, prompt, 20, temperature=0.8, top_k=200), device)
    print(out["profile"])
    return out


def time_per_call(fn, n: int, device: torch.device) -> float:
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / n * 1000


def profile_table(fn, device: torch.device) -> str:
    """torch.profiler's 15 costliest ops of `fn` (device time on CUDA, CPU time elsewhere)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=60)


def step_probes(p: dict) -> dict:
    from gpu_probes import run_probes

    return run_probes(p)


STEPS = {"probes": step_probes, "train_ours": step_train_ours, "train_ref": step_train_ref,
         "generate": step_generate, "bench_ours": step_bench_ours, "bench_ref": step_bench_ref,
         "bench_variants": step_bench_variants, "recipe_ours": step_recipe_ours, "recipe_ref": step_recipe_ref,
         "autotune": step_probes, "decode": step_decode}


# ---- plumbing -----------------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def run_logged(cmd: list[str], cwd: Path, timeout: float, log: str) -> tuple[str, float]:
    """Run a nanoGPT script, its output kept in `log`; the output, or an error with its tail when it fails."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        Path(log).write_text(_text(e.stdout) + _text(e.stderr))
        raise RuntimeError(f"{' '.join(cmd[1:3])} timed out after {timeout:.0f}s (output: {log})") from None
    out = proc.stdout + proc.stderr
    Path(log).write_text(out)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:3])} exited {proc.returncode}:\n{out[-2000:]}")
    return out, time.perf_counter() - t0


def _text(output: bytes | str | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def run_step(name: str, params: dict, timeout: float, work: Path) -> dict:
    """One step in a fresh process under `timeout` seconds; its result, or {'error': ...}."""
    result_file = work / f"{name}.json"
    result_file.unlink(missing_ok=True)
    params = {**params, "timeout": timeout, "result": str(result_file), "launched_at": time.time(),
              "log": str(work / f"{name}.ref.log")}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--params", json.dumps(params)]
    t0 = time.perf_counter()
    print(f"[{name}] running (timeout {timeout:.0f}s)", flush=True)
    log = work / f"{name}.log"
    with open(log, "w") as out:
        try:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=timeout + 20)
        except subprocess.TimeoutExpired:
            kept = json.loads(result_file.read_text()) if result_file.is_file() else {}  # what a step wrote so far
            return {**kept, "error": f"timed out after {timeout + 20:.0f}s (log: {log})"}
    if proc.returncode != 0 or not result_file.is_file():
        tail = log.read_text().strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {proc.returncode}: {tail[0][:300]} (log: {log})"}
    result = json.loads(result_file.read_text())
    print(f"[{name}] done in {time.perf_counter() - t0:.0f}s", flush=True)
    return result


def child(name: str, params: dict) -> None:
    """Entry of a step's process: run it, write its JSON result (an exception becomes a non-zero exit)."""
    missing = allow_missing_optional()
    result = STEPS[name](params)
    result["missing_optional"] = missing
    Path(params["result"]).write_text(json.dumps(result, indent=2, default=str))


# ---- the plan -----------------------------------------------------------------------------------------------------
def train_overrides(iters: int, tiny: bool, compile_: bool) -> dict:
    """The same settings for both sides: nanoGPT's flags are these keys (its configurator), ours are overrides.

    Every iteration is logged (so synced) on both sides: the logged time is then that iteration's own, where
    with log_interval 10 a logged time holds the GPU backlog of the nine unsynced iterations before it.
    """
    o = {"max_iters": iters, "lr_decay_iters": iters, "eval_interval": min(10 if tiny else 250, iters),
         "log_interval": 1, "compile": compile_}
    if tiny:
        o.update(TINY_MODEL, **TINY_TRAIN, device="cpu", dtype="float32")
    return o


def plan(args: argparse.Namespace, info: dict, data: Path, ref_root: Path | None, work: Path) -> dict[str, dict]:
    """Every step's parameters; nanoGPT's steps only with a checkout, bench_ref only on CUDA."""
    tiny, cuda = args.tiny, info["device"] == "cuda"
    compile_ = cuda if args.compile is None else args.compile
    train = train_overrides(args.iters or (20 if tiny else 2000), tiny, compile_)
    bench = ({**TINY_MODEL, "batch_size": 4, "dtype": "float32", "device": "cpu", "compile": compile_} if tiny else
             {**{k: GPT2_SHAPE[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "bias", "dropout")},
              "batch_size": 16, "dtype": "bfloat16", "device": "cuda", "compile": compile_})
    gen_shape = TINY_GEN if tiny else GPT2_SHAPE
    bench_steps = {"steps": 3 if tiny else 20, "warmup": 1 if tiny else 10}
    variants = {k: v for k, v in BENCH_VARIANTS.items() if cuda or "sdpa_backend" not in v}
    if tiny:  # chunks smaller than the tiny batch's rows, so the loss really is chunked
        del variants["loss_chunk_rows=4096"]
        variants["loss_chunk_rows=64"] = {"loss_chunk_rows": 64}
    if not cuda:  # the backend choice itself, with the one kernel every device has
        variants["sdpa=math"] = {"sdpa_backend": "MATH"}
    recipe = ({**train_overrides(20, True, compile_), "warmup_iters": 2} if tiny else
              {"eval_interval": RECIPE_EVAL_INTERVAL, "log_interval": 10, "compile": compile_})
    target = 10.0 if tiny else TARGET_VAL_LOSS  # tiny: the first eval reaches it, so every branch runs
    # In order of importance: what the last GPU call did not measure comes first.
    steps = {
        "bench_ours": {"overrides": bench, **bench_steps},
        "bench_ref": {"overrides": {"batch_size": 16, "real_data": False, "compile": compile_},
                      "ref_root": str(ref_root), "tokens_per_step": 16 * 1024},
        "bench_variants": {"overrides": bench, "variants": variants, **bench_steps},
        "generate": {"device": info["device"], "shape": gen_shape,
                     "lengths": [16, 80] if tiny else [200, 1000], "ref": str(args.nanogpt) if ref_root else None},
        "recipe_ours": {"overrides": recipe, "data_dir": str(data), "out_dir": str(work / "ours-recipe"),
                        "target": target},
        "recipe_ref": {"overrides": recipe, "ref_root": str(ref_root), "out_dir": str(work / "ref-recipe"),
                       "target": target},
        "train_ours": {"overrides": train, "data_dir": str(data), "out_dir": str(work / "ours-run")},
        "train_ref": {"overrides": train, "ref_root": str(ref_root), "out_dir": str(work / "ref-run")},
        "probes": {"device": info["device"], "data_dir": str(data), "work": str(work), "baby": BABY,
                   "overrides": {k: v for k, v in train.items() if k not in ("max_iters", "lr_decay_iters")},
                   "gen_shape": TINY_GEN if tiny else {**gen_shape, "n_layer": 6, "n_head": 6, "n_embd": 384}},
        "autotune": {"device": info["device"], "only": ["compile_fp32"], "mode": "max-autotune"},
        "decode": {"device": info["device"], "shape": gen_shape, "tokens": 80 if tiny else 1000,
                   "ref": str(args.nanogpt) if ref_root else None},
    }
    if not cuda:
        del steps["autotune"]  # inductor's max-autotune benchmarks GPU kernels
    if ref_root is None:
        del steps["train_ref"], steps["bench_ref"], steps["recipe_ref"]
    elif not cuda:
        del steps["bench_ref"]  # nanoGPT's bench.py calls torch.cuda.synchronize() and builds the 124M model
    return steps


def notes_for(steps: dict, ref_root: Path | None, info: dict, missing: list[str]) -> list[str]:
    notes = [f"{name} not installed: {OPTIONAL[name]}" for name in missing]
    if ref_root is None:
        notes.append("nanoGPT side skipped: no checkout (--nanogpt or $NANOGPT_REF)")
    elif "bench_ref" not in steps:
        notes.append("nanoGPT's bench.py skipped: it needs CUDA (torch.cuda.synchronize, a 124M model)")
    if info["device"] != "cuda":
        notes.append("host syncs not counted, CUDA graphs and max-autotune not run: they need CUDA (the rest ran)")
    return notes


def add_mfu(results: dict, info: dict, args: argparse.Namespace) -> None:
    """MFU from each side's ms/iter with the same formula, against the card's bf16 (or TF32) peak."""
    tiny = args.tiny
    peak = info["peak_fp32"] if tiny else info["peak_bf16"]
    baby = {**BABY["model"], **(TINY_MODEL if tiny else {}), "vocab_size": 65}
    batch = (TINY_TRAIN if tiny else BABY["train"])["batch_size"]
    for name in ("train_ours", "train_ref"):
        if "ms_per_iter" in results.get(name, {}):
            results[name]["mfu"] = mfu(baby, batch, results[name]["ms_per_iter"], peak)
    shape = {**GPT2_SHAPE, **(TINY_MODEL if tiny else {})}
    for name in ("bench_ours", "bench_ref"):
        if "ms_per_iter" in results.get(name, {}):
            results[name]["mfu"] = mfu(shape, 4 if tiny else 16, results[name]["ms_per_iter"], peak)


def fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(r: dict) -> None:
    s = r["steps"]
    print(f"\n{r['device']['name']}, torch {r['torch']}, nanoGPT: {r['nanogpt'] or 'none'}")
    print("\n| what | ours | nanoGPT | ours/nanoGPT |\n|---|---|---|---|")
    o, n = s.get("train_ours", {}), s.get("train_ref", {})
    it = r["iters"]
    rows = [(f"baby GPT ({it} iters): ms/iter (median)", o.get("ms_per_iter"), n.get("ms_per_iter"), "inv", ".2f"),
            ("baby GPT: MFU", o.get("mfu"), n.get("mfu"), "", ".3f"),
            ("baby GPT: final val loss", o.get("final_val_loss"), n.get("final_val_loss"), None, ".4f"),
            ("baby GPT: best val loss", o.get("best_val_loss"), n.get("best_val_loss"), None, ".4f"),
            ("baby GPT: wall s (incl. compile, eval)", o.get("wall_s"), n.get("wall_s"), "inv", ".1f")]
    for row in s.get("generate", {}).get("rows", []):
        for side, label in (("ours", "default"), ("ours_eager", "eager KV cache")):
            same = {True: "identical", False: f"DIFFER at {row.get(f'{side}_first_difference')}"}.get(
                row.get(f"{side}_identical"), "")
            rows.append((f"generate {row['new_tokens']} tokens, ours {label}: tok/s, {same}", row.get(f"{side}_tok_s"),
                         row.get("nanoGPT_tok_s"), "", ".1f"))
        for side, label in (("ours_bf16", "bf16 weights"), ("ours_bf16_compiled", "bf16 weights, compiled step")):
            share = row.get(f"{side}_bandwidth_share")
            rows.append((f"generate {row['new_tokens']} tokens, ours {label}: tok/s"
                         + (f", {share:.1%} of the memory bandwidth" if share else ""), row.get(f"{side}_tok_s"),
                         row.get("nanoGPT_tok_s"), "", ".1f"))
    bo, bn = s.get("bench_ours", {}), s.get("bench_ref", {})
    rows += [("train step (bench): tokens/s", bo.get("tokens_per_s"), bn.get("tokens_per_s"), "", ".0f"),
             ("train step (bench): MFU", bo.get("mfu"), bn.get("mfu"), "", ".3f")]
    for name, v in s.get("bench_variants", {}).get("variants", {}).items():
        rows += [(f"train step, {name}: tokens/s", v.get("tokens_per_s"), bn.get("tokens_per_s"), "", ".0f"),
                 (f"train step, {name}: MFU", v.get("mfu"), bn.get("mfu"), "", ".3f")]
    ro, rn = s.get("recipe_ours", {}), s.get("recipe_ref", {})
    if ro or rn:
        target = ro.get("target", rn.get("target"))
        rows += [(f"baby GPT to val {target}: s from process start (ours: fast recipe)", ro.get("time_to_target_s"),
                  rn.get("time_to_target_s"), "inv", ".1f"),
                 (f"baby GPT to val {target}: iteration", ro.get("iter_at_target"), rn.get("iter_at_target"), None,
                  ".0f"),
                 ("baby GPT recipe: best val loss seen", ro.get("best_val_loss"), rn.get("best_val_loss"), None,
                  ".4f")]
    for label, ours, ref, kind, spec in rows:
        ratio = None
        if ours and ref and kind is not None:
            ratio = ref / ours if kind == "inv" else ours / ref
        print(f"| {label} | {fmt(ours, spec)} | {fmt(ref, spec)} | {fmt(ratio, '.2f')}{'x' if ratio else ''} |")
    for step in ("probes", "autotune"):
        for name, probe in s.get(step, {}).items():
            if isinstance(probe, dict) and name != "error":
                shown = {k: v for k, v in probe.items() if k != "seconds"}
                print(f"probe {name}: {'ok' if probe.get('ok') else 'NOT OK'} {json.dumps(shown, default=str)}")
    for name, res in s.items():
        if "error" in res:
            print(f"\n{name}: ERROR {res['error']}")
    for note in r["notes"]:
        print(f"note: {note}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nanogpt", type=Path, default=os.environ.get("NANOGPT_REF") or os.environ.get("NANOGPT_REFERENCE"),
                   help="a nanoGPT checkout (default $NANOGPT_REF); without one the nanoGPT side is skipped")
    p.add_argument("--tiny", action="store_true", help="tiny models on the CPU: a smoke test of every step")
    p.add_argument("--iters", type=int, help="baby GPT training iterations (default 2000; --tiny: 20)")
    p.add_argument("--budget", type=float, default=450,
                   help="seconds for all steps together (default 450); a step that no longer fits is skipped")
    p.add_argument("--threads", type=int, help="torch/OpenMP threads of every step (default: torch's; --tiny: 1)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile (default: on CUDA)")
    p.add_argument("--only", help="comma-separated steps to run (default all): " + ",".join(STEPS))
    p.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "gpu_check")
    p.add_argument("--out", type=Path, help="results JSON (default WORK/gpu_check.json)")
    p.add_argument("--step", help=argparse.SUPPRESS)
    p.add_argument("--params", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.step:
        child(args.step, json.loads(args.params))
        return 0
    return orchestrate(args)


def orchestrate(args: argparse.Namespace) -> int:
    missing = allow_missing_optional()
    info = device_info()
    if info["device"] != "cuda" and not args.tiny:
        sys.exit("gpu_check: error: no CUDA GPU here: expected a GPU machine, or --tiny for the CPU smoke test")
    ref = args.nanogpt
    if ref is not None and not (Path(ref) / "model.py").is_file():
        sys.exit(f"gpu_check: error: --nanogpt {str(ref)!r} has no model.py: expected a nanoGPT checkout")
    args.work.mkdir(parents=True, exist_ok=True)
    threads = args.threads or (1 if args.tiny else None)
    if threads:  # inherited by every step and nanoGPT's scripts; 1 is far faster on a loaded shared CPU
        os.environ["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    data, ref_root = prepare_data(args.work)
    if ref is not None:
        link_reference(Path(ref), ref_root)
    steps = plan(args, info, data, ref_root if ref is not None else None, args.work)
    only = set(args.only.split(",")) if args.only else set(steps)
    scale = 1 if info["device"] == "cuda" else 2
    report = {"torch": torch.__version__, "device": info, "nanogpt": str(ref) if ref else None,
              "iters": steps["train_ours"]["overrides"]["max_iters"], "budget_s": args.budget, "steps": {},
              "notes": notes_for(steps, ref_root if ref else None, info, missing)}
    out = args.out or args.work / "gpu_check.json"
    for name, params in steps.items():
        if name not in only:
            continue
        left = args.budget - (time.perf_counter() - t0)
        if left < MIN_STEP_S:
            report["steps"][name] = {"error": f"skipped: {left:.0f}s of the {args.budget:.0f}s budget left"}
            continue
        report["steps"][name] = run_step(name, params, min(TIMEOUTS[name] * scale, left - 20), args.work)
        add_mfu(report["steps"], info, args)
        report["wall_s"] = time.perf_counter() - t0
        out.write_text(json.dumps(report, indent=2, default=str))  # after every step: a cut call keeps the rest
    print_table(report)
    print(f"\nwritten {out} ({report['wall_s']:.0f}s)")
    return 1 if any("error" in r for r in report["steps"].values()) else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
