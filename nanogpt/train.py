"""The training loop: nanoGPT's train.py, run the same way on 1 process, N CPU processes (gloo) or N GPUs (NCCL).

Launch it through torchrun (the train rule runs `python -m nanogpt.launch`, torchrun with one-line errors);
RANK / WORLD_SIZE / LOCAL_RANK come from torchrun's environment.

Resume is exact: the data sampler is stateless (windows depend on seed, step and micro-batch index only), and
checkpoints carry model, optimizer, scaler and RNG states, so an interrupted run that resumes from its newest
checkpoint ends with the same weights as an uninterrupted one. A checkpoint is resumed only if it belongs to the
same trajectory: same settings, same prepared data, same initial weights (see `RunConfig.fingerprint`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from nanogpt import checkpoint as ckpt_io
from nanogpt import fileio, threads, trajectory
from nanogpt.config import PRETRAINED_NAMES, RunConfig, is_pretrained_source
from nanogpt.data.prepare import BatchSampler, load_meta
from nanogpt.data.tokenizer import vocab_remap
from nanogpt.errors import ConfigError
from nanogpt.launch import report_checkpoint_saved
from nanogpt.model import GPT
from nanogpt.optim import build_optimizer, set_lr
from nanogpt.progress import Progress
from nanogpt.provenance import provenance
from nanogpt.runlock import die_with_parent, run_folder_lock
from nanogpt.runtime import (
    Dist,
    mfu_or_none,
    peak_flops_for,
    pick_device,
    place,
    rank_placement,
    resolve_compile,
    seed_device_rng,
    setup_distributed,
)
from nanogpt.settings import TrainSettings
from nanogpt.tracking import Tracker, check_wandb

# Default checkpoint cadence: at most this fraction of the wall time is spent writing periodic checkpoints.
CHECKPOINT_OVERHEAD = 0.05
# Before the first save its cost is estimated from its size (fp32 weights + AdamW's two moments) at this speed.
ASSUMED_WRITE_BYTES_PER_S = 1e9


def get_lr(it: int, t: TrainSettings) -> float:
    """nanoGPT's schedule: linear warmup to learning_rate, cosine decay to min_lr, then min_lr."""
    if not t.decay_lr:
        return t.learning_rate
    if it < t.warmup_iters:
        return t.learning_rate * (it + 1) / (t.warmup_iters + 1)
    if it > t.lr_decay_iters:
        return t.min_lr
    decay_ratio = (it - t.warmup_iters) / max(1, t.lr_decay_iters - t.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return t.min_lr + coeff * (t.learning_rate - t.min_lr)


class _StopFlag:
    """SIGTERM (SLURM's time limit, preemption, a dead parent) and Ctrl-C (SIGINT) ask the loop to checkpoint and
    exit. A second Ctrl-C interrupts at once, as Python's default does."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested: signal.Signals | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopFlag:
        try:
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        except ValueError:  # not the main thread
            self._previous = {}
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = signal.Signals(signum)
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def agreed(self, d: Dist, device: torch.device) -> bool:
        """Every rank stops at the same step (a rank that stopped alone would hang the others)."""
        if not d.enabled:
            return self.requested is not None
        flag = torch.tensor([float(self.requested or 0)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0 and self.requested is None:  # another rank's signal: name it like that rank does
            self.requested = signal.Signals(int(flag.item()))
        return flag.item() > 0


class TerminatedError(SystemExit):
    """Raised after SIGTERM or Ctrl-C once the checkpoint is safely on disk (exit status 128 + the signal, like a
    death by it: 143, 130)."""


def init_identity(source: str) -> str:
    """What the initial weights are, for the trajectory fingerprint: a file's sha256, a folder's listing."""
    path = Path(source)
    if source.endswith(".pt") and path.is_file():
        return "sha256:" + fileio.sha256_file(path)
    if path.is_dir():
        files = sorted((p.name, p.stat().st_size) for p in path.iterdir() if p.is_file())
        config = (path / "config.json").read_text() if (path / "config.json").is_file() else ""
        return json.dumps({"files": files, "config": config}, sort_keys=True)
    return source


def _initial_model(run: RunConfig, meta: dict, log, mirror: str | None = None) -> GPT:
    """init_from: scratch, gpt2*, a local HF folder or hub id, or a .pt file (resume is a resume point).

    A model from elsewhere must read this dataset's tokens: the same tokenizer, or a char vocabulary that covers
    the dataset's characters, whose embedding rows are then reordered to the dataset's ids (said in the log).
    `mirror` (else $NANOGPT_MIRROR) is searched for GPT-2 weight folders first.
    """
    source, expected = run.init_from, run.gpt_config(meta["vocab_size"])
    if source == "scratch":
        return GPT(expected)
    if source == "resume":
        raise ConfigError(f"init_from='resume' but this run's checkpoints all lie beyond max_iters="
                          f"{run.train.max_iters}: expected max_iters at least their iteration")
    if is_pretrained_source(source):
        from nanogpt.pretrained import load_pretrained

        model, model_tok = load_pretrained(source, dropout=run.model.dropout, mirror=mirror), {"kind": "gpt2"}
        model_dataset = None
    elif source.endswith(".pt"):
        ckpt = ckpt_io.load(source)
        model = ckpt_io.model_from_checkpoint(ckpt, dropout=run.model.dropout)
        model_tok = (ckpt.get("dataset_meta") or {}).get("tokenizer")
        model_dataset = (ckpt.get("dataset_meta") or {}).get("dataset")
    else:
        raise ConfigError(
            f"init_from={source!r}: expected scratch, resume, one of {', '.join(PRETRAINED_NAMES)}, "
            "a local Hugging Face GPT-2 directory, or a .pt checkpoint"
        )
    rows = vocab_remap(model_tok, meta["tokenizer"], f"init_from={source!r}", dataset=meta.get("dataset"),
                       model_dataset=model_dataset if isinstance(model_dataset, str) else None)
    if rows is not None:
        log(f"the dataset's {len(rows)} characters are all in the model's vocabulary of {model.config.vocab_size}: "
            "its embedding rows are reordered to the dataset's ids")
        model.keep_vocab_rows(rows)
    if meta["vocab_size"] > model.config.vocab_size:
        raise ConfigError(f"init_from={source!r}: the model has {model.config.vocab_size} token ids but the dataset "
                          f"{meta['vocab_size']}: expected a dataset tokenized for this model")
    if run.model.block_size < model.config.block_size:
        model.crop_block_size(run.model.block_size)
    model.config.dropout = run.model.dropout
    return model


def _resume_point(ckpt_dir: Path, out_dir: Path, fingerprints: list[str], t: TrainSettings, d: Dist,
                  log) -> Path | None:
    """The checkpoint to resume from. Rank 0 first shows this trajectory's record in the run folder (another one
    is set aside whole, this one's comes back whole: nanogpt.trajectory), then moves every live checkpoint that
    is not a resume point out of the way: another trajectory's to its record, this one's beyond max_iters to
    checkpoints/held/, unreadable ones to checkpoints/unreadable/."""
    if d.enabled:
        dist.barrier()  # every rank has read the run folder (init_from: resume) before rank 0 moves anything
    if d.is_master:
        trajectory.activate(out_dir, fingerprints, log)
    if d.enabled:
        dist.barrier()  # the record is in place before any rank chooses
    chosen, refused = ckpt_io.choose_resume(ckpt_dir, fingerprints, t.max_iters)
    if d.enabled:
        dist.barrier()  # every rank has chosen before rank 0 moves anything
    if d.is_master:
        for path, reason, fingerprint in refused:
            if fingerprint is None:
                dest = ckpt_io.move_unreadable(path, ckpt_dir)
            elif fingerprint in fingerprints:
                dest = ckpt_io.move_into(path, ckpt_dir / ckpt_io.HELD)
            else:
                dest = ckpt_io.move_into(path, out_dir / trajectory.SET_ASIDE / fingerprint / trajectory.CHECKPOINTS)
            log(f"setting aside {path.name} ({reason}) -> {dest.parent}/")
        best = out_dir / "best.pt"
        if chosen is None and best.is_file():  # a fresh start: the old best model is not this attempt's
            dest = ckpt_io.move_into(best, ckpt_dir / ckpt_io.HELD)
            log(f"setting aside {best.name} (from an earlier start) -> {dest.parent}/")
        if chosen is not None and chosen.parent != ckpt_dir:
            log(f"resuming held checkpoint {chosen.name} (within max_iters={t.max_iters} now)")
            ckpt_io.unhold(ckpt_dir, out_dir, t.max_iters)
    if d.enabled:
        dist.barrier()  # rank 0's moves are done before anyone loads
    return None if chosen is None else ckpt_dir / chosen.name


def _resume_origin(run_dir: Path, settings_fingerprint: str) -> str:
    """init_from: resume continues this run folder's trajectory of the same settings (shown or set aside, any
    initial weights): the fingerprint of its newest checkpoint."""
    for _, path in trajectory.checkpoints_of(run_dir):
        try:
            info = ckpt_io.peek(path)
        except ckpt_io.CheckpointError:
            continue
        if info.get("settings_fingerprint") == settings_fingerprint and info.get("fingerprint"):
            return info["fingerprint"]
    raise ConfigError(
        f"init_from='resume' but {run_dir / trajectory.CHECKPOINTS} holds no checkpoint made with these settings: "
        "expected a finished or interrupted run of the same settings to continue (train it first with init_from: "
        "scratch)"
    )


def _rng_state(device: torch.device) -> dict:
    """The CPU RNG and the current GPU's (one state, whatever the number of visible GPUs)."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if device.type == "cuda" and isinstance(cuda, torch.Tensor):
        torch.cuda.set_rng_state(cuda.cpu(), device)


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


def print_line(message: str) -> None:
    """A log line in one write: print() writes the text and its newline apart, and the ranks of a torchrun
    job share one log, where another rank's line could land between the two."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def train(run: RunConfig, data_dir: str | os.PathLike, out_dir: str | os.PathLike, log=print_line,
          needs_gpu: bool = False, mirror: str | None = None) -> dict:
    """Train one run; writes checkpoints/, TensorBoard events, history.jsonl, then model.pt and metrics.json.

    `needs_gpu`: the job was given GPUs (resources.gpus): device auto finding none is an error, not the CPU.
    `mirror`: where GPT-2 weights for init_from are looked for first (config `mirror`, else $NANOGPT_MIRROR).
    """
    t_start = time.time()
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    check_world_size(run.train.gradient_accumulation_steps, int(os.environ.get("WORLD_SIZE", "1")))
    if "LOCAL_RANK" in os.environ:
        die_with_parent()  # torchrun puts its workers in their own session: a killed pipeline must take them along
    device = run_device(run, int(os.environ.get("LOCAL_RANK", "0")), needs_gpu)
    d = setup_distributed(run.launch.backend, device)  # after the rank's GPU is chosen: NCCL uses that one
    if d.enabled:
        log(rank_placement(d, device))  # every rank's own line (the others are silent from here on)
    try:
        lock = run_folder_lock(out_dir, log) if d.is_master else contextlib.nullcontext()
        with lock:
            if d.enabled:
                dist.barrier()  # nobody reads the run folder before rank 0 owns it
            trainer = Trainer(run, data_dir, out_dir, d, log if d.is_master else _silent, device, mirror)
            return trainer.fit(t_start)
    finally:
        if d.enabled:
            dist.destroy_process_group()


def run_device(run: RunConfig, local_rank: int, needs_gpu: bool = False) -> torch.device:
    """This rank's device. Under torchrun every rank takes the GPU of its local rank (whatever cuda:N was
    named), and a rank without a GPU of its own is an error, never a GPU shared with another rank."""
    needs_gpu = needs_gpu or run.launch.backend == "nccl"
    device = pick_device(run.train.device, local_rank, needs_gpu)
    if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = pick_device("cuda", local_rank)
    return device


class Trainer:
    """One run's training state: set up in __init__, advanced by fit(), written out by finish()."""

    def __init__(self, run: RunConfig, data_dir: Path, out_dir: Path, d: Dist, log,
                 device: torch.device | None = None, mirror: str | None = None) -> None:
        self.run, self.t, self.d, self.out_dir, self.log = run, run.train, d, out_dir, log
        self.mirror = mirror
        self.ckpt_dir = out_dir / "checkpoints"
        self.t_start = time.time()  # fit() moves it back to the process's start
        self.placement = place(device or run_device(run, d.local_rank), self.t.dtype, run.model.n_embd)
        self.device, self.dtype, self.ctx = self.placement.device, self.placement.dtype, self.placement.autocast()
        self.cpu_threads = None  # torch's threads on a CPU: recorded in checkpoints, kept by a resume
        if self.device.type == "cpu":  # threads that degrade gracefully on a shared machine (nanogpt.threads)
            tokens = self.t.batch_size * run.model.block_size
            self.cpu_threads = threads.apply_threads("auto", run.model.n_embd, tokens)
        self.accum = check_world_size(self.t.gradient_accumulation_steps, d.world_size)
        self.tokens_per_iter = self.t.gradient_accumulation_steps * self.t.batch_size * run.model.block_size
        self.meta = load_meta(data_dir)
        self.sampler = BatchSampler(data_dir, run.model.block_size, self.t.batch_size, self.t.seed, self.device)
        self.settings_fingerprint = run.settings_fingerprint(self.meta)
        if run.init_from == "resume":
            self.fingerprint = _resume_origin(out_dir, self.settings_fingerprint)
            accepted = [self.fingerprint]
        else:
            identity = init_identity(run.init_from)
            self.fingerprint = run.fingerprint(self.meta, identity)
            accepted = [self.fingerprint]
        self.accepted_fingerprints = [f for f in accepted if f]
        self._build_state()
        self.peak = self.t.peak_flops or peak_flops_for(self.device, self.dtype)
        # MFU of one device: the micro-batches this rank runs per iteration (counted once: it walks the params)
        self.flops_per_iter = (self.raw_model.flops_per_token() * self.raw_model.config.block_size
                               * self.t.batch_size * self.accum)
        log(f"device {self.device}, dtype {self.placement.dtype_name}, world size {d.world_size}, "
            f"{self.raw_model.get_num_params() / 1e6:.2f}M parameters, {self.tokens_per_iter:,} tokens/iter"
            + (f", {self.cpu_threads} threads, {threads.describe_waits()}" if self.cpu_threads else ""))

    def _build_state(self) -> None:
        """Model, optimizer and scaler: from this trajectory's newest checkpoint, else from init_from."""
        t = self.t
        resume = _resume_point(self.ckpt_dir, self.out_dir, self.accepted_fingerprints, t, self.d, self.log)
        torch.manual_seed(t.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
        state = None
        if resume is not None:
            state = ckpt_io.load(resume)
            self.log(f"resuming from {resume} (iter {state['iter_num']})")
            shape = self.run.gpt_config(self.meta["vocab_size"]) if self.run.init_from == "scratch" else None
            model = ckpt_io.model_from_checkpoint(state, shape, dropout=self.run.model.dropout)
        else:
            model = _initial_model(self.run, self.meta, self.log, self.mirror)
        self.raw_model = model.to(self.device)
        self.optimizer = build_optimizer(model, t, self.device.type, self.dtype)  # AdamW, or Muon + AdamW
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=(self.dtype == torch.float16))
        self.iter_num, self.best_val_loss, self.earlier_wall_s = 0, float("inf"), 0.0
        self.resumed_config = None if state is None else state.get("config")  # the final state kept as it was
        if state is not None:
            self.earlier_wall_s = float(state.get("wall_time_s") or 0.0)
            self.optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.iter_num, self.best_val_loss = int(state["iter_num"]), float(state["best_val_loss"])
            if "rng" in state:
                _set_rng_state(state["rng"], self.device)
            self._keep_threads(state.get("cpu_threads"))
        self.compiled = resolve_compile(t.compile, self.device)
        # fullgraph: the model compiles as one graph; a future graph break is an error, not a silent slowdown
        self.model = torch.compile(model, fullgraph=True) if self.compiled else model
        if self.d.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(self.model, device_ids=ids)

    def _keep_threads(self, recorded: int | None) -> None:
        """A resumed CPU run keeps the thread count it started with: some kernels' float results depend on it,
        so resuming on another core count (or $OMP_NUM_THREADS) stays bit-identical to an uninterrupted run."""
        if self.device.type != "cpu" or not isinstance(recorded, int) or recorded < 1:
            return
        if recorded == self.cpu_threads:
            return
        self.log(f"threads: {recorded}, as this run's checkpoint recorded (auto chose {self.cpu_threads})")
        torch.set_num_threads(recorded)
        self.cpu_threads = recorded

    # ---- checkpoints ----------------------------------------------------------------------------------------
    def checkpoint(self, with_optimizer: bool = True) -> dict:
        ckpt = {
            "format": ckpt_io.FORMAT,
            "model": self.raw_model.state_dict(),
            "model_args": self.raw_model.config.to_dict(),
            "iter_num": self.iter_num,
            "best_val_loss": self.best_val_loss,
            "wall_time_s": self.wall_time(),
            "config": self.run.to_dict(),
            "fingerprint": self.fingerprint,
            "settings_fingerprint": self.settings_fingerprint,
            "dataset_meta": self.meta,  # the tokenizer travels with the weights
            "cpu_threads": self.cpu_threads,
        }
        if with_optimizer:
            ckpt.update(optimizer=self.optimizer.state_dict(), rng=_rng_state(self.device),
                        scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None)
        return ckpt

    def save_periodic(self) -> None:
        """Rank 0 writes a resume checkpoint; under DDP every rank waits for it (a rank that ran ahead and
        exited on SIGTERM would let torchrun stop rank 0 in the middle of the write)."""
        if self.d.is_master:
            t0 = time.perf_counter()
            path = ckpt_io.checkpoint_path(self.ckpt_dir, self.iter_num)
            ckpt_io.save(self.checkpoint(), path)
            self.last_save = (time.perf_counter(), time.perf_counter() - t0)
            for moved in ckpt_io.prune(self.ckpt_dir, self.t.keep_checkpoints):
                self.log(f"set aside unreadable checkpoint {moved.name} -> {moved.parent}/")
        if self.d.enabled:
            dist.barrier()

    def checkpoint_due(self) -> bool:
        """At a checkpoint boundary (checkpoint_interval, default eval_interval), is a periodic save worth it?

        An explicit checkpoint_interval is honoured exactly. By default a save is skipped while the previous one
        is too recent: at most CHECKPOINT_OVERHEAD of the wall time goes to writing checkpoints (a 124M model
        writes 1.5 GB with its AdamW state; gpt2-xl 18 GB). SIGTERM and the end of the run always save.
        """
        t = self.t
        interval = t.checkpoint_interval or t.eval_interval
        if not 0 < self.iter_num < t.max_iters or self.iter_num % interval != 0:
            return False
        if t.checkpoint_interval is not None:
            return True
        due = True
        if self.d.is_master:
            last_end, last_cost = self.last_save
            due = time.perf_counter() - last_end >= last_cost / CHECKPOINT_OVERHEAD
        if self.d.enabled:  # the same answer on every rank: they all wait in save_periodic's barrier
            flag = torch.tensor([1.0 if due else 0.0], device=self.device)
            dist.broadcast(flag, src=0)
            due = bool(flag.item() > 0)
        return due

    # ---- the loop -------------------------------------------------------------------------------------------
    def wall_time(self) -> float:
        """Seconds this run has trained, over every attempt: earlier ones come from the resumed checkpoint."""
        return self.earlier_wall_s + time.time() - self.t_start

    def fit(self, t_start: float) -> dict:
        """Train from iter_num to max_iters; evaluate, log and checkpoint once in a while; then finish()."""
        t = self.t
        self.t_start = t_start
        self.start_iter = self.iter_num
        self._open_logs()
        self.last_eval: dict[str, float] = {}
        self.step_times: list[float] = []
        self.running_mfu, self.last_loss = None, float("nan")
        spinning = os.environ.get(threads.WAITS_ENV) == threads.SPIN and (self.cpu_threads or 0) > 1
        self.spin_guard = threads.SpinGuard() if spinning and not self.d.enabled else None
        n_params = sum(p.numel() for p in self.raw_model.parameters())
        self.last_save = (time.perf_counter(), 12 * n_params / ASSUMED_WRITE_BYTES_PER_S)  # (ended at, took s)
        x, y = self.sampler.get_batch("train", self.iter_num, self.d.rank * self.accum)
        self.model.train()
        t0 = time.perf_counter()
        with _StopFlag() as stop:
            while True:
                lr = get_lr(self.iter_num, t)
                set_lr(self.optimizer, lr)
                if self.iter_num % t.eval_interval == 0 or self.iter_num == t.max_iters or t.eval_only:
                    self.evaluate(lr)
                if self.checkpoint_due():
                    self.save_periodic()
                if self.iter_num >= t.max_iters or t.eval_only:
                    break
                step_start = time.perf_counter()
                x, y, loss, grad_norm = self.step(x, y)
                t1 = time.perf_counter()
                dt, t0 = t1 - t0, t1
                logging_step = self.iter_num % t.log_interval == 0
                if logging_step:
                    self.log_step(loss, grad_norm, lr, dt)
                # single process: check every step (free); DDP: agree at log steps, where ranks sync anyway
                if (logging_step or not self.d.enabled) and stop.agreed(self.d, self.device):
                    self.stop_with_checkpoint(stop.requested)
                if self.spin_guard is not None and self.spin_guard.contended(t1 - step_start):
                    self.stop_for_sleeping_waits()
        return self.finish(t_start)

    def stop_for_sleeping_waits(self) -> None:
        """Spinning OpenMP threads met another process on their CPUs (threads.SpinGuard): checkpoint, then the
        command goes on in a fresh process whose threads sleep when they wait (nanogpt.cli, cmd_train)."""
        self.save_periodic()
        self.log(f"{self.spin_guard.describe()}. Checkpoint saved at iter {self.iter_num}; continuing from it in a "
                 "fresh process whose OpenMP threads sleep when they wait (the same threads, so the same results)")
        self._close_logs()
        raise threads.ContendedError(self.iter_num)

    def stop_with_checkpoint(self, sig: signal.Signals) -> None:
        """SIGTERM or Ctrl-C: every rank waits for rank 0's checkpoint, rank 0 tells the launcher it is on disk,
        then exit."""
        self.save_periodic()
        path = ckpt_io.checkpoint_path(self.ckpt_dir, self.iter_num)
        if self.d.is_master:
            report_checkpoint_saved(f"checkpoint {path} saved at iter {self.iter_num}")
        self.log(f"{sig.name}: checkpoint saved at iter {self.iter_num}; rerun to resume")
        self._close_logs()
        raise TerminatedError(128 + int(sig))

    def step(self, x: torch.Tensor, y: torch.Tensor):
        """One optimizer step over `accum` micro-batches; returns the next batch, the loss and the grad norm."""
        t, d = self.t, self.d
        # Dropout masks come from (seed, step, rank) alone, like the batches: a resumed run draws exactly what
        # the uninterrupted one would have.
        seed_device_rng(self.device, step_seed(t.seed, self.iter_num, d.rank))
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.accum):
            last = micro == self.accum - 1
            no_sync = self.model.no_sync() if (d.enabled and not last) else contextlib.nullcontext()
            with no_sync:
                with self.ctx:
                    _, loss = self.model(x, y, loss_chunk_rows=t.loss_chunk_rows)
                    loss = loss / self.accum
                # fetch the next micro-batch while the backward pass runs on the GPU
                nxt = (self.iter_num + 1, d.rank * self.accum) if last else (self.iter_num, d.rank * self.accum + micro + 1)
                x, y = self.sampler.get_batch("train", *nxt)
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
        grad_norm = None
        if t.grad_clip != 0.0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.iter_num += 1
        return x, y, loss_sum, grad_norm

    # ---- once in a while ------------------------------------------------------------------------------------
    def evaluate(self, lr: float) -> None:
        self.last_eval = estimate_loss(self.model, self.sampler, self.t.eval_iters, self.iter_num, self.ctx, self.d,
                                       self.device, self.t.loss_chunk_rows)
        self.log(f"step {self.iter_num}: train loss {self.last_eval['train']:.4f}, "
                 f"val loss {self.last_eval['val']:.4f}")
        if self.tracker:
            self.tracker.scalars({"loss/train_eval": self.last_eval["train"], "loss/val": self.last_eval["val"],
                                  "lr": lr}, self.iter_num)
        if self.last_eval["val"] < self.best_val_loss:
            self.best_val_loss = self.last_eval["val"]
            if self.d.is_master and self.iter_num > 0 and not self.t.always_save_checkpoint:
                # nanoGPT's ckpt.pt: the best weights (no optimizer state: resuming uses the periodic ones)
                ckpt_io.save(self.checkpoint(with_optimizer=False), self.out_dir / "best.pt")

    def log_step(self, loss_sum: torch.Tensor, grad_norm: torch.Tensor | None, lr: float, dt: float) -> None:
        """The only host sync of the loop: once per log_interval."""
        t, d = self.t, self.d
        if d.enabled:
            dist.all_reduce(loss_sum)
            loss_sum /= d.world_size
        self.last_loss = loss_sum.item()
        if self.iter_num > 5 or t.max_iters <= 5:
            self.step_times.append(dt)
            if self.peak:
                # MFU of one device: the micro-batches this rank ran, against this device's peak
                mfu = self.flops_per_iter / dt / self.peak
                avg = mfu if self.running_mfu is None else 0.9 * self.running_mfu + 0.1 * mfu
                self.running_mfu = avg
        mfu = mfu_or_none(self.running_mfu) if self.running_mfu else None
        self.log(f"iter {self.iter_num}: loss {self.last_loss:.4f}, time {dt * 1000:.2f}ms, "
                 f"mfu {f'{mfu * 100:.2f}%' if mfu else 'n/a'}")  # nanoGPT's percentage
        if (line := self.progress.update(self.iter_num, self.last_loss, dt)) is not None:
            self.log(line)  # the console's throttled view (nanogpt.progress)
        if self.tracker:
            self.tracker.scalars({"loss/train": self.last_loss, "lr": lr, "tokens_per_sec": self.tokens_per_iter / dt,
                                  "grad_norm": None if grad_norm is None else float(grad_norm),
                                  "mfu": self.running_mfu if mfu else None}, self.iter_num)
        if self.history:
            row = {"iter": self.iter_num, "loss": self.last_loss, "lr": lr, "dt": dt}
            self.history.write(json.dumps(row) + "\n")
            self.history.flush()  # watchable while it trains (tail -f), and the resume tests read it

    # ---- outputs --------------------------------------------------------------------------------------------
    def _open_logs(self) -> None:
        """Rank 0's TensorBoard/W&B tracker and history.jsonl; every rank's progress lines (only rank 0 logs)."""
        check_wandb(self.t)  # every rank, before any step: a missing wandb is one line, not a hung DDP job
        self.tracker = self.history = None
        self.progress = Progress(self.t.max_iters, self.tokens_per_iter)
        if not self.d.is_master:
            return
        # TensorBoard drops events at steps >= the start from earlier attempts; history.jsonl likewise.
        self.tracker = Tracker(self.run, self.out_dir, self.iter_num)
        trim_history(self.out_dir / "history.jsonl", self.iter_num)
        self.history = (self.out_dir / "history.jsonl").open("a")

    def _close_logs(self, exit_code: int = 143) -> None:
        """Called by finish() with 0, and on SIGTERM (the W&B run is marked as stopped)."""
        if self.tracker:
            self.tracker.close(exit_code)
        if self.history:
            self.history.close()

    def finish(self, t_start: float) -> dict:
        """metrics.json, then model.pt (rank 0); returns the metrics.

        The final state is also kept as the newest checkpoint (model.pt is a hard link to it where the file
        system allows): when Snakemake deletes model.pt before rerunning the job, or the run is lengthened, the
        rerun resumes from it instead of training again.
        """
        median_dt = statistics.median(self.step_times) if self.step_times else None
        metrics = {
            "iters": self.iter_num,
            "train_loss": self.last_eval.get("train"),
            "val_loss": self.last_eval.get("val"),
            "best_val_loss": self.best_val_loss,
            "last_step_loss": self.last_loss,
            "median_ms_per_iter": median_dt * 1000 if median_dt else None,
            "tokens_per_sec": self.tokens_per_iter / median_dt if median_dt else None,
            "mfu": mfu_or_none(self.running_mfu) if self.running_mfu else None,
            "peak_flops": self.peak,
            "wall_time_s": self.wall_time(),  # all attempts; this one alone is in the log
            "device": str(self.device),
            "dtype": self.placement.dtype_name,
            "world_size": self.d.world_size,
            "provenance": provenance(self.run.to_dict(), self.meta),
        }
        if self.iter_num == self.start_iter:  # nothing trained this time (it came back finished): its own numbers
            metrics.update(self._earlier_step_numbers())
        if self.tracker:
            self.tracker.finish(metrics, self.iter_num)
        self._close_logs(exit_code=0)
        if self.d.is_master:
            trajectory.write_marker(self.out_dir, self.fingerprint, metrics=metrics)
            fileio.write_json(self.out_dir / "metrics.json", metrics)
            self.save_final()
            self.log(f"done: val loss {_fmt(metrics['val_loss'])} after {self.iter_num} iters, "
                     f"median {_fmt(metrics['median_ms_per_iter'], '.1f')} ms/iter, wall {metrics['wall_time_s']:.0f}s")
        return metrics

    def _earlier_step_numbers(self) -> dict:
        """The speed and last step loss this trajectory recorded when it reached this iteration (its
        trajectory.json, which comes back with it; metrics.json may have been deleted by Snakemake before the job)."""
        earlier = trajectory.read_marker(self.out_dir).get("metrics")
        if not isinstance(earlier, dict) or earlier.get("iters") != self.iter_num:
            return {}
        return {k: earlier.get(k) for k in ("median_ms_per_iter", "tokens_per_sec", "mfu", "last_step_loss")}

    def save_final(self) -> None:
        model_pt = self.out_dir / "model.pt"
        if self.iter_num == 0:  # nothing trained (eval_only): no trajectory to keep
            ckpt_io.save(self.checkpoint(), model_pt)
            return
        final = ckpt_io.checkpoint_path(self.ckpt_dir, self.iter_num)
        if self.iter_num > self.start_iter or self.resumed_config != self.run.to_dict() or not final.is_file():
            ckpt_io.save(self.checkpoint(), final)
        ckpt_io.prune(self.ckpt_dir, self.t.keep_checkpoints)
        fileio.link_or_copy(final, model_pt)


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, sampler: BatchSampler, eval_iters: int, step: int, ctx, d: Dist,
                  device: torch.device, loss_chunk_rows: int | None = None) -> dict[str, float]:
    """Mean loss over `eval_iters` batches per split, shared out across ranks and averaged over all of them."""
    was_training = model.training
    model.eval()
    out = {}
    acc_dtype = torch.float32 if device.type == "mps" else torch.float64  # Apple GPUs have no float64
    for split in ("train", "val"):
        total = torch.zeros(1, device=device, dtype=acc_dtype)
        for k in range(d.rank, eval_iters, d.world_size):
            x, y = sampler.get_batch(split, step, k, for_eval=True)
            with ctx:
                _, loss = model(x, y, loss_chunk_rows=loss_chunk_rows)
            total += loss.to(acc_dtype)
        if d.enabled:
            dist.all_reduce(total)
        out[split] = total.item() / eval_iters
    model.train(was_training)
    return out


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def _silent(*args, **kwargs) -> None:
    pass
