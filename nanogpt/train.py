"""The training loop: nanoGPT's train.py, run the same way on 1 process, N CPU processes (gloo) or N GPUs (NCCL).

Launch it through torchrun (`nanogpt train` re-executes itself under torchrun when the run asks for more
than one process); RANK / WORLD_SIZE / LOCAL_RANK come from torchrun's environment.

Resume is exact: the data sampler is stateless (windows depend on seed, step and micro-batch index only), and
checkpoints carry model, optimizer, scaler and RNG states, so an interrupted run that resumes from its newest
checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from nanogpt import checkpoint as ckpt_io
from nanogpt import fileio
from nanogpt.config import PRETRAINED_NAMES, RunConfig, is_pretrained_source
from nanogpt.data import BatchSampler, load_meta
from nanogpt.model import GPT, ConfigError
from nanogpt.provenance import provenance

# bf16 dense peak FLOP/s of common accelerators, for MFU when the run does not give `peak_flops`.
GPU_PEAK_FLOPS = {"A100": 312e12, "H100": 989e12, "H200": 989e12, "A10G": 125e12, "L4": 121e12,
                  "V100": 125e12, "4090": 165e12, "3090": 71e12}


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(backend: str, device_type: str) -> Dist:
    """Join the process group torchrun set up (nothing to do for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if backend == "auto":
        backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return Dist(rank=dist.get_rank(), local_rank=int(os.environ.get("LOCAL_RANK", "0")), world_size=world)


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    """auto: cuda > mps > cpu. Asking for a device this machine lacks is an error, not a silent fallback."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={requested!r} but this machine has no CUDA GPU: expected device: cpu or auto")
        if requested == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        index = int(requested.split(":", 1)[1])
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={requested!r} but only {torch.cuda.device_count()} CUDA device(s) exist: expected cuda:0.."
                f"cuda:{torch.cuda.device_count() - 1}"
            )
        return torch.device("cuda", index)
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device='mps' but MPS is not available on this machine: expected device: cpu or auto")
    return torch.device(requested)


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matmul units (AVX512-BF16 or AMX), where bf16 is ~2x fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# On CPUs with bf16 units, bf16 autocast pays off only once matmuls are large enough to outweigh the casts.
# Training step, bf16 vs fp32, measured here (benchmarks/train_step_ab.py): 128 wide 0.83x, 192 wide 1.27x,
# 256 wide 1.70x, 512 wide 2.32x, 768 wide 2.82x. So `auto` keeps models narrower than 256 in fp32.
CPU_BF16_MIN_WIDTH = 256


def pick_dtype(requested: str, device: torch.device, n_embd: int = 0) -> torch.dtype:
    """auto: bf16 on GPUs that support it (else fp16); on CPUs bf16 for wide models where it is faster."""
    if requested != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16() and n_embd >= CPU_BF16_MIN_WIDTH:
        return torch.bfloat16
    return torch.float32


def autocast_context(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def get_lr(it: int, learning_rate: float, warmup_iters: int, lr_decay_iters: int, min_lr: float,
           decay_lr: bool = True) -> float:
    """nanoGPT's schedule: linear warmup to learning_rate, cosine decay to min_lr, then min_lr."""
    if not decay_lr:
        return learning_rate
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


def peak_flops_for(device: torch.device, dtype: torch.dtype) -> float | None:
    """Peak FLOP/s used for MFU: a table for GPUs, a quick matmul measurement on the CPU."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in GPU_PEAK_FLOPS.items() if k in name), None)
    if device.type == "cpu":
        n = 1024
        gen = torch.Generator().manual_seed(0)  # its own stream: the training RNG (dropout) stays untouched
        a, b = (torch.randn(n, n, generator=gen).to(dtype) for _ in range(2))
        a @ b
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        return 4 * 2 * n**3 / (time.perf_counter() - t0)
    return None


class _StopFlag:
    """SIGTERM (SLURM's time limit, preemption) asks the loop to checkpoint and exit at the next step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> _StopFlag:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def agreed(self, d: Dist, device: torch.device) -> bool:
        """Every rank stops at the same step (a rank that stopped alone would hang the others)."""
        if not d.enabled:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)


class TerminatedError(SystemExit):
    """Raised after SIGTERM once the checkpoint is safely on disk (exit status 143, like a SIGTERM death)."""


def _init_model(run: RunConfig, vocab_size: int, out_dir: Path, log) -> tuple[GPT, dict | None]:
    """The starting model: the newest matching checkpoint of this run, or init_from (scratch/resume/gpt2*/file)."""
    expected = run.gpt_config(vocab_size)
    ckpt_dir = out_dir / "checkpoints"
    found = ckpt_io.newest_complete(ckpt_dir)
    if found is not None:
        path, state = found
        if state.get("fingerprint") == run.fingerprint():
            log(f"resuming from {path} (iter {state['iter_num']})")
            # a finetune's shape is the pretrained model's (cropped), not the run's model: section
            shape = expected if run.init_from == "scratch" else None
            return ckpt_io.model_from_checkpoint(state, shape, dropout=run.model.dropout), state
        log(f"checkpoints in {ckpt_dir} are from different settings: starting afresh and removing them")
        if int(os.environ.get("RANK", "0")) == 0:  # one remover; the other ranks only read
            for _, old in ckpt_io.list_checkpoints(ckpt_dir):
                old.unlink(missing_ok=True)
    source = run.init_from
    if source == "scratch":
        return GPT(expected), None
    if source == "resume":
        path = out_dir / "model.pt"
        if not path.is_file():
            raise ConfigError(
                f"init_from='resume' but neither {ckpt_dir}/ckpt_*.pt nor {path} exists: expected a checkpoint to resume"
            )
        state = ckpt_io.load(path)
        log(f"resuming from {path} (iter {state['iter_num']})")
        try:
            return ckpt_io.model_from_checkpoint(state, expected, dropout=run.model.dropout), state
        except ckpt_io.CheckpointError as e:
            raise ckpt_io.CheckpointError(f"{path}: {e}") from None
    if is_pretrained_source(source):
        from nanogpt.pretrained import load_pretrained  # a GPT-2 size, a local HF folder or a hub id

        model = load_pretrained(source, dropout=run.model.dropout)
        if run.model.block_size < model.config.block_size:
            model.crop_block_size(run.model.block_size)
        model.config.dropout = run.model.dropout
        return model, None
    if source.endswith(".pt"):
        state = ckpt_io.load(source)
        model = ckpt_io.model_from_checkpoint(state, dropout=run.model.dropout)
        if run.model.block_size < model.config.block_size:
            model.crop_block_size(run.model.block_size)
        return model, None  # weights only: a new run with its own optimizer and schedule
    raise ConfigError(
        f"init_from={source!r}: expected scratch, resume, one of {', '.join(PRETRAINED_NAMES)}, "
        "a local Hugging Face GPT-2 directory, or a .pt checkpoint"
    )


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, sampler: BatchSampler, eval_iters: int, step: int, ctx, d: Dist,
                  device: torch.device) -> dict[str, float]:
    """Mean loss over `eval_iters` batches per split, shared out across ranks and averaged over all of them."""
    was_training = model.training
    model.eval()
    out = {}
    for split in ("train", "val"):
        total = torch.zeros(1, device=device, dtype=torch.float64)
        for k in range(d.rank, eval_iters, d.world_size):
            x, y = sampler.get_batch(split, step, k, for_eval=True)
            with ctx:
                _, loss = model(x, y)
            total += loss.double()
        if d.enabled:
            dist.all_reduce(total)
        out[split] = total.item() / eval_iters
    model.train(was_training)
    return out


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def step_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed for the dropout RNG of one (step, rank), independent of every other pair."""
    return int(np.random.SeedSequence([seed, 2, step, rank]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


def check_world_size(gradient_accumulation_steps: int, world_size: int) -> int:
    """Micro-batches per rank: the global gradient_accumulation_steps must split evenly across the ranks."""
    if world_size <= 0 or gradient_accumulation_steps % world_size != 0:
        raise ConfigError(
            f"gradient_accumulation_steps={gradient_accumulation_steps} is not divisible by the world size "
            f"{world_size} (WORLD_SIZE from torchrun): expected a multiple of {world_size}, or another process count"
        )
    return gradient_accumulation_steps // world_size


def trim_history(path: Path, upto: int) -> None:
    """Keep the history rows of iterations <= `upto`: a resumed run rewrites what followed its checkpoint."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill
            continue
        if isinstance(row, dict) and row.get("iter", upto + 1) <= upto:
            kept.append(line + "\n")
    fileio.write_text(path, "".join(kept))


def train(run: RunConfig, data_dir: str | os.PathLike, out_dir: str | os.PathLike, log=print) -> dict:
    """Train one run; writes checkpoints/, tb/, history.jsonl, then model.pt and metrics.json (rank 0)."""
    t_start = time.time()
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    t = run.train
    check_world_size(t.gradient_accumulation_steps, int(os.environ.get("WORLD_SIZE", "1")))
    probe_device = pick_device(t.device)  # before init_process_group: picks the backend
    d = setup_distributed(run.launch.backend, probe_device.type)
    try:
        return _train(run, data_dir, out_dir, t, d, log, t_start)
    finally:
        if d.enabled:
            dist.destroy_process_group()


def _train(run: RunConfig, data_dir: Path, out_dir: Path, t, d: Dist, log, t_start: float) -> dict:
    device = pick_device(t.device, d.local_rank)
    if device.type == "cuda" and d.enabled:  # one GPU per rank on each node, whatever cuda:N the config named
        device = torch.device("cuda", d.local_rank % torch.cuda.device_count())
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dtype = pick_dtype(t.dtype, device, run.model.n_embd)
    ctx = autocast_context(device, dtype)
    if not d.is_master:
        log = _silent
    accum = check_world_size(t.gradient_accumulation_steps, d.world_size)
    tokens_per_iter = t.gradient_accumulation_steps * t.batch_size * run.model.block_size

    meta = load_meta(data_dir)
    sampler = BatchSampler(data_dir, run.model.block_size, t.batch_size, t.seed, device)
    torch.manual_seed(t.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
    model, state = _init_model(run, meta["vocab_size"], out_dir, log)
    model.to(device)
    optimizer = model.configure_optimizers(t.weight_decay, t.learning_rate, (t.beta1, t.beta2), device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=(dtype == torch.float16))
    iter_num, best_val_loss = 0, float("inf")
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        iter_num, best_val_loss = int(state["iter_num"]), float(state["best_val_loss"])
        if "rng" in state:
            _set_rng_state(state["rng"])
    raw_model = model
    if t.compile:
        model = torch.compile(model)
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    peak = t.peak_flops or peak_flops_for(device, dtype)
    log(f"device {device}, dtype {str(dtype).removeprefix('torch.')}, world size {d.world_size}, "
        f"{raw_model.get_num_params() / 1e6:.2f}M parameters, {tokens_per_iter:,} tokens/iter")

    writer = history = None
    if d.is_master:
        from torch.utils.tensorboard import SummaryWriter

        for stale in (out_dir / "checkpoints").glob(".ckpt_*.tmp"):  # left by a writer killed mid-save
            stale.unlink(missing_ok=True)
        # TensorBoard drops events at steps >= purge_step from earlier attempts; history.jsonl likewise.
        writer = SummaryWriter(log_dir=str(out_dir / "tb"), purge_step=iter_num)
        trim_history(out_dir / "history.jsonl", iter_num)
        history = (out_dir / "history.jsonl").open("a")
    ckpt_every = t.checkpoint_interval or t.eval_interval

    def make_checkpoint(step: int) -> dict:
        return {
            "format": ckpt_io.FORMAT,
            "model": raw_model.state_dict(),
            "model_args": raw_model.config.to_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "iter_num": step,
            "best_val_loss": best_val_loss,
            "config": run.to_dict(),
            "fingerprint": run.fingerprint(),
            "rng": _rng_state(),
            "dataset_meta": meta,  # the tokenizer travels with the weights
        }

    def save_periodic(step: int) -> None:
        if d.is_master:
            ckpt_io.save(make_checkpoint(step), ckpt_io.checkpoint_path(out_dir / "checkpoints", step))
            ckpt_io.prune(out_dir / "checkpoints", t.keep_checkpoints)

    last_eval: dict[str, float] = {}
    step_times: list[float] = []
    running_mfu = -1.0
    last_loss = float("nan")
    t0 = time.perf_counter()
    x, y = sampler.get_batch("train", iter_num, d.rank * accum)
    model.train()
    with _StopFlag() as stop:
        while True:
            lr = get_lr(iter_num, t.learning_rate, t.warmup_iters, t.lr_decay_iters, t.min_lr, t.decay_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if iter_num % t.eval_interval == 0 or iter_num == t.max_iters or t.eval_only:
                last_eval = estimate_loss(model, sampler, t.eval_iters, iter_num, ctx, d, device)
                log(f"step {iter_num}: train loss {last_eval['train']:.4f}, val loss {last_eval['val']:.4f}")
                if writer:
                    writer.add_scalar("loss/train_eval", last_eval["train"], iter_num)
                    writer.add_scalar("loss/val", last_eval["val"], iter_num)
                    writer.add_scalar("lr", lr, iter_num)
                if last_eval["val"] < best_val_loss:
                    best_val_loss = last_eval["val"]
                    if d.is_master and iter_num > 0 and not t.always_save_checkpoint:
                        ckpt_io.save(make_checkpoint(iter_num), out_dir / "best.pt")  # nanoGPT's ckpt.pt
            if 0 < iter_num < t.max_iters and iter_num % ckpt_every == 0:
                save_periodic(iter_num)
            if iter_num >= t.max_iters or t.eval_only:
                break

            # Dropout masks come from (seed, step, rank) alone, like the batches: each rank draws its own, and a
            # resumed run draws exactly what the uninterrupted one would have.
            torch.manual_seed(step_seed(t.seed, iter_num, d.rank))
            loss_sum = torch.zeros((), device=device)
            for micro in range(accum):
                sync = micro == accum - 1
                no_sync = model.no_sync() if (d.enabled and not sync) else contextlib.nullcontext()
                with no_sync:
                    with ctx:
                        _, loss = model(x, y)
                        loss = loss / accum
                    # fetch the next micro-batch while the backward pass runs on the GPU
                    if sync:
                        x, y = sampler.get_batch("train", iter_num + 1, d.rank * accum)
                    else:
                        x, y = sampler.get_batch("train", iter_num, d.rank * accum + micro + 1)
                    scaler.scale(loss).backward()
                loss_sum += loss.detach()
            if t.grad_clip != 0.0:
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            else:
                grad_norm = None
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            iter_num += 1

            t1 = time.perf_counter()
            dt, t0 = t1 - t0, t1
            if iter_num % t.log_interval == 0:
                if d.enabled:
                    dist.all_reduce(loss_sum)
                    loss_sum /= d.world_size
                last_loss = loss_sum.item()  # the only host sync in the loop, once per log_interval
                if iter_num > 5 or t.max_iters <= 5:
                    step_times.append(dt)
                    if peak:
                        mfu = raw_model.estimate_mfu(t.batch_size * t.gradient_accumulation_steps, dt, peak)
                        running_mfu = mfu if running_mfu < 0 else 0.9 * running_mfu + 0.1 * mfu
                log(f"iter {iter_num}: loss {last_loss:.4f}, time {dt * 1000:.2f}ms, "
                    f"mfu {max(running_mfu, 0) * 100:.2f}%")
                if writer:
                    writer.add_scalar("loss/train", last_loss, iter_num)
                    writer.add_scalar("lr", lr, iter_num)
                    writer.add_scalar("tokens_per_sec", tokens_per_iter / dt, iter_num)
                    if grad_norm is not None:
                        writer.add_scalar("grad_norm", float(grad_norm), iter_num)
                    if running_mfu >= 0:
                        writer.add_scalar("mfu", running_mfu, iter_num)
                if history:
                    history.write(json.dumps({"iter": iter_num, "loss": last_loss, "lr": lr, "dt": dt}) + "\n")
                    history.flush()
            if stop.agreed(d, device):
                save_periodic(iter_num)
                log(f"SIGTERM: checkpoint saved at iter {iter_num}; rerun to resume")
                if writer:
                    writer.close()
                if history:
                    history.close()
                raise TerminatedError(143)

    if history:
        history.close()
    median_dt = statistics.median(step_times) if step_times else float("nan")
    metrics = {
        "iters": iter_num,
        "train_loss": last_eval.get("train"),
        "val_loss": last_eval.get("val"),
        "best_val_loss": best_val_loss,
        "last_step_loss": last_loss,
        "median_ms_per_iter": median_dt * 1000,
        "tokens_per_sec": tokens_per_iter / median_dt if step_times else None,
        "mfu": running_mfu if running_mfu >= 0 else None,
        "peak_flops": peak,
        "wall_time_s": time.time() - t_start,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "world_size": d.world_size,
        "provenance": provenance(run.to_dict(), meta),
    }
    if d.is_master:
        if writer:
            writer.close()
        ckpt_io.save(make_checkpoint(iter_num), out_dir / "model.pt")
        fileio.write_json(out_dir / "metrics.json", metrics)
        log(f"done: val loss {metrics['val_loss']:.4f} after {iter_num} iters, "
            f"median {metrics['median_ms_per_iter']:.1f} ms/iter, wall {metrics['wall_time_s']:.0f}s")
    return metrics


def _silent(*args, **kwargs) -> None:
    pass
