"""The GPU-only paths of nanogpt, each checked on its own (benchmarks/gpu_check.py runs them as its `probes` step).

    tf32          allow_tf32() then every TF32 getter (torch.get_float32_matmul_precision, the legacy flags)
    async_batches BatchSampler.get_batch under torch.cuda.set_sync_debug_mode: no host sync
    step_syncs    host syncs per Trainer.step outside log steps (sync debug mode "warn", counted)
    token_syncs   host syncs per generated token, CUDA-graph decoding and eager KV cache
    resume        a run stopped at 10 iterations and resumed to 20 vs an uninterrupted 20: weight difference
    compile_fp32  the model compiled whole (fullgraph) in fp32 with training's TF32 setting: loss vs eager
    (max-autotune, the same probe in inductor's slowest mode, is gpu_check's last step: it gets what time is left)

A probe that raises is reported with its error; the others still run. On the CPU (--tiny) the same code runs
with tiny shapes, and what needs CUDA (sync counting, max-autotune, graph capture) is reported as skipped.
"""

from __future__ import annotations

import shutil
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

TINY = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64, "dropout": 0.0, "bias": False}


def run_probes(params: dict) -> dict:
    """Every probe, each under its own try: {name: result or {'error': ...}}."""
    from nanogpt.runtime import pick_device

    device = pick_device(params["device"])  # cuda:0, as the trainer has it
    probes: dict[str, Callable[[], dict]] = {
        "tf32": probe_tf32,
        "async_batches": lambda: probe_async_batches(device, params["data_dir"]),
        "step_syncs": lambda: probe_step_syncs(device, params),
        "token_syncs": lambda: probe_token_syncs(device, params["gen_shape"]),
        "resume": lambda: probe_resume(device, params),
        "compile_fp32": lambda: probe_compile_fp32(device, params.get("mode", "default")),
    }
    if params.get("only"):
        probes = {k: v for k, v in probes.items() if k in params["only"]}
    out = {}
    for name, probe in probes.items():
        t0 = time.perf_counter()
        try:
            out[name] = probe()
        except Exception as e:  # noqa: BLE001 - a probe's failure is its result
            traceback.print_exc()
            out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
        out[name]["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"probe {name}: {out[name]}", flush=True)
    return out


def probe_tf32() -> dict:
    from nanogpt.runtime import allow_tf32

    allow_tf32()
    return {"ok": True, "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}


def probe_compile_fp32(device: torch.device, mode: str = "default") -> dict:
    """A tiny GPT in fp32 compiled as one graph, with the TF32 setting of training: the loss matches eager.

    mode max-autotune is where inductor read the TF32 getters that a half-set precision made raise.
    """
    from nanogpt.model import GPT, GPTConfig
    from nanogpt.runtime import allow_tf32

    allow_tf32()
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, vocab_size=128)).to(device)
    x = torch.randint(128, (4, 64), device=device)
    eager = model(x, x)[1].item()
    torch._dynamo.reset()
    t0 = time.perf_counter()
    compiled = torch.compile(model, fullgraph=True, mode=None if mode == "default" else mode)
    _, loss = compiled(x, x)
    loss.backward()
    return {"ok": abs(loss.item() - eager) < 1e-2, "mode": mode, "eager_loss": eager, "compiled_loss": loss.item(),
            "compile_s": round(time.perf_counter() - t0, 1)}


def count_syncs(device: torch.device, fn: Callable[[], None]) -> int | None:
    """Host syncs `fn` causes on CUDA (torch.cuda.set_sync_debug_mode warns once per sync); None elsewhere."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


def probe_async_batches(device: torch.device, data_dir: str) -> dict:
    """Batches as the training loop draws them: no host sync. Where one happens, its stack is kept."""
    from nanogpt.data.prepare import BatchSampler

    sampler = BatchSampler(data_dir, 256, 64, 1337, device)
    first = count_syncs(device, lambda: [sampler.get_batch("train", i, 0) for i in range(5)])  # pinned pool grows
    syncs = count_syncs(device, lambda: [sampler.get_batch("train", i, 0) for i in range(5, 25)])
    out = {"ok": syncs in (0, None), "syncs_per_batch": None if syncs is None else syncs / 20,
           "syncs_in_first_5": first}
    if syncs:
        out["where"] = first_sync_stack(lambda: [sampler.get_batch("train", i, 0) for i in range(25, 45)])
    return out


def first_sync_stack(fn: Callable[[], object]) -> str:
    """The innermost frames of the first host sync `fn` makes (sync debug mode "error" raises there)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
    except RuntimeError:
        return " | ".join(line.strip() for line in traceback.format_exc().splitlines()[-8:])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return "no sync this time"


def _baby_run(params: dict, **train):
    from nanogpt.config import resolve_run

    return resolve_run(params["baby"], "probe", {**params["overrides"], "compile": False, **train})


def probe_step_syncs(device: torch.device, params: dict) -> dict:
    """Trainer.step as the loop runs it, after 3 warm-up steps; log steps are not among the counted ones."""
    from nanogpt.runtime import Dist
    from nanogpt.train import Trainer

    out_dir = Path(params["work"]) / "probe-steps"
    shutil.rmtree(out_dir, ignore_errors=True)
    trainer = Trainer(_baby_run(params), Path(params["data_dir"]), out_dir, Dist(), lambda *a: None, device)
    x, y = trainer.sampler.get_batch("train", 0, 0)
    for _ in range(3):
        x, y, _, _ = trainer.step(x, y)
    steps = 5

    def run() -> None:
        nonlocal x, y
        for _ in range(steps):
            x, y, _, _ = trainer.step(x, y)

    syncs = count_syncs(device, run)
    return {"ok": syncs in (0, None), "syncs_per_step": None if syncs is None else syncs / steps,
            "iter_num": trainer.iter_num}


def probe_token_syncs(device: torch.device, shape: dict) -> dict:
    """Per generated token: CUDA-graph decoding (the default on CUDA) and the eager KV cache."""
    from nanogpt.decoding import generate
    from nanogpt.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(**shape)).eval().to(device)
    prompt = torch.zeros(1, 1, dtype=torch.long, device=device)
    n = 32
    out = {}
    for name, graph in (("graph", True), ("eager", False)):
        if graph and device.type != "cuda":
            out[name] = "skipped: CUDA graphs need CUDA"
            continue
        generate(model, prompt, 4, top_k=50, cuda_graph=graph)  # capture, allocator
        syncs = count_syncs(device, lambda g=graph: generate(model, prompt, n, top_k=50, cuda_graph=g))
        out[name] = None if syncs is None else syncs / n
    out["ok"] = all(v in (0, None) or isinstance(v, str) or v < 0.1 for k, v in out.items() if k != "ok")
    return out


def probe_resume(device: torch.device, params: dict) -> dict:
    """Exact resume on this device: 10 iterations, then lengthened to 20 (resuming from the final checkpoint),
    against 20 in one go. Bitwise on the CPU; on CUDA the same trajectory within numeric noise (atomics)."""
    from nanogpt import checkpoint as ckpt_io
    from nanogpt.train import train

    work = Path(params["work"])
    settings = {"max_iters": 20, "lr_decay_iters": 20, "eval_interval": 10, "eval_iters": 2, "log_interval": 5,
                "device": str(device.type)}
    runs = {}
    for name, stops in (("straight", [20]), ("resumed", [10, 20])):
        out_dir = work / f"probe-resume-{name}"
        shutil.rmtree(out_dir, ignore_errors=True)
        for max_iters in stops:
            train(_baby_run(params, **{**settings, "max_iters": max_iters}), params["data_dir"], out_dir,
                  log=lambda *a: None)
        runs[name] = ckpt_io.load(out_dir / "model.pt")["model"]
    diff = max((runs["straight"][k].float() - runs["resumed"][k].float()).abs().max().item() for k in runs["straight"])
    bitwise = all(torch.equal(runs["straight"][k], runs["resumed"][k]) for k in runs["straight"])
    return {"ok": bitwise or (device.type == "cuda" and diff < 1e-2), "bitwise": bitwise, "max_abs_diff": diff}
