"""Where and how the model runs: device, dtype, autocast, the distributed process group, and the peak FLOP/s that
MFU is measured against. Shared by training, evaluation, sampling and the benchmark."""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from nanogpt.errors import ConfigError

# Dense bf16/fp16 tensor-core peak FLOP/s per GPU model, matched as whole words in order (H100 PCIe before H100).
GPU_PEAK_FLOPS: list[tuple[str, float]] = [
    (r"H100.*\bPCIe\b", 756e12),
    (r"H100.*\bNVL\b", 835e12),
    (r"\bH100\b", 989e12),  # SXM
    (r"H200.*\bNVL\b", 836e12),
    (r"\bGH200\b", 989e12),
    (r"\bH200\b", 989e12),  # SXM
    (r"H800.*\bPCIe\b", 756e12),
    (r"\bH800\b", 989e12),
    (r"\bH20\b", 148e12),
    (r"\bGB200\b", 2500e12),
    (r"\bB200\b", 2250e12),
    (r"\bB100\b", 1750e12),
    (r"\bA100\b", 312e12),
    (r"\bA800\b", 312e12),
    (r"\bL40S\b", 362e12),
    (r"\bL40\b", 181e12),
    (r"\bL4\b", 121e12),
    (r"\bA10G\b", 70e12),
    (r"\bA10\b", 125e12),
    (r"\bV100\b", 125e12),  # fp16
    (r"\bT4\b", 65e12),  # fp16
    (r"RTX 4090\b", 165e12),
    (r"RTX 3090\b", 71e12),
]


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


def setup_distributed(backend: str, device: torch.device) -> Dist:
    """Join the process group torchrun set up (nothing to do for a single process).

    On CUDA the rank's GPU is selected first and named to init_process_group (device_id), so NCCL's
    communicators, the first barrier's included, live on the GPU this rank owns, never on a guessed cuda:0.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    extra = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        extra["device_id"] = device
    dist.init_process_group(backend=backend, **extra)
    return Dist(rank=dist.get_rank(), local_rank=int(os.environ.get("LOCAL_RANK", "0")), world_size=world)


def rank_placement(d: Dist, device: torch.device) -> str:
    """One rank's line for the log: its device and the GPU it owns under CUDA_VISIBLE_DEVICES (the entry at its
    local rank, as pick_device chooses cuda:<local rank>), so a job's log shows which GPU each rank took."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        gpu = "CUDA_VISIBLE_DEVICES unset"
    else:
        entries = [e.strip() for e in visible.split(",") if e.strip()]
        own = entries[d.local_rank] if d.local_rank < len(entries) else "none"
        gpu = f"GPU {own} of CUDA_VISIBLE_DEVICES={visible}"
    return f"rank {d.rank} of {d.world_size} (local rank {d.local_rank}): device {device}, {gpu}"


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def why_no_cuda() -> str:
    """Why torch sees no CUDA GPU here, in words a user can act on."""
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU: a scheduler job without a GPU request?"
    return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable GPU: none in this machine or "
            "job, or a driver too old for this CUDA (see nvidia-smi)")


def cuda_index(local_rank: int) -> int:
    """The GPU of this node's rank `local_rank`: one GPU per rank, never two ranks sharing one."""
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(
            f"local rank {local_rank} has no GPU of its own: {count} CUDA device(s) are visible "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): expected "
            f"launch.nproc_per_node <= {count}, or a job with one GPU per process"
        )
    return local_rank


def pick_device(requested: str, local_rank: int = 0, needs_gpu: bool = False) -> torch.device:
    """auto: cuda > mps > cpu. Asking for a device this machine lacks is an error, not a silent fallback.

    `needs_gpu`: the run asked for GPUs (resources.gpus, an nccl backend), so `auto` falling back to the CPU
    would grind for hours where the user expects minutes: that is an error too.
    """
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", cuda_index(local_rank))
        if needs_gpu:
            raise ConfigError(f"device=auto found no CUDA GPU, but the run asks for GPUs ({why_no_cuda()}): "
                              "expected a GPU that torch can use, or device: cpu to train on the CPU on purpose")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={requested!r} but torch sees no CUDA GPU ({why_no_cuda()}): expected a GPU "
                              "that torch can use, or device: cpu")
        if requested == "cuda":
            return torch.device("cuda", cuda_index(local_rank))
        index = int(requested.split(":", 1)[1])
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={requested!r} but only {torch.cuda.device_count()} CUDA device(s) exist: expected cuda:0.."
                f"cuda:{torch.cuda.device_count() - 1}"
            )
        return torch.device("cuda", index)
    if requested == "mps" and not _mps_available():
        raise ConfigError("device='mps' but MPS is not available on this machine: expected device: cpu or auto")
    return torch.device(requested)


def allow_tf32() -> None:
    """TF32 matmuls and convolutions (nanoGPT's setting) through the API that keeps every getter consistent.

    Setting only the newer `fp32_precision` attributes makes `torch.get_float32_matmul_precision()` and
    `torch.backends.cuda.matmul.allow_tf32` raise ("mix of the legacy and new APIs"), and inductor reads them.
    """
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True


def setup_device(device: torch.device) -> None:
    """Select the GPU and allow TF32 matmuls (nanoGPT's setting)."""
    if device.type == "cuda":
        if device.index is not None:  # plain "cuda" means the current GPU
            torch.cuda.set_device(device)
        allow_tf32()


def seed_device_rng(device: torch.device, seed: int) -> None:
    """Reseed the generator that `device`'s random ops (dropout) draw from: the same stream as
    `torch.manual_seed(seed)` gives on that device, without seeding every backend and GPU each step."""
    if device.type == "cuda":
        torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()
                                      ].manual_seed(seed)
    elif device.type == "cpu":
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)


def resolve_compile(requested: bool | str, device: torch.device) -> bool:
    """compile: auto is on for CUDA (nanoGPT's default there) and off elsewhere (compile time outweighs the
    gain for the small CPU runs, and MPS support is partial)."""
    if requested == "auto":
        return device.type == "cuda"
    return bool(requested)


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matmul units (AVX512-BF16 or AMX), where bf16 is ~2x fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# On CPUs with bf16 units, bf16 autocast pays off once matmuls are large enough to outweigh the casts.
# Training step, bf16 vs fp32 (attention kept in fp32: model.attention), 1 thread, measured with
# benchmarks/train_step_ab.py: 16 wide 0.86x, 32 wide 1.10x, 64 wide 1.26x, 128 wide 1.47x, 256 wide 1.80x.
CPU_BF16_MIN_WIDTH = 64


def gpu_has_native_bf16(capability: tuple[int, int]) -> bool:
    """bf16 tensor cores arrived with Ampere (8.0); older GPUs only emulate bf16, where fp16 is the fast type."""
    return capability >= (8, 0)


def pick_dtype(requested: str, device: torch.device, n_embd: int = 0) -> torch.dtype:
    """auto: bf16 on GPUs with bf16 units (else fp16); on CPUs with them from CPU_BF16_MIN_WIDTH wide (else fp32)."""
    if requested != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[requested]
    if device.type == "cuda":
        native = gpu_has_native_bf16(torch.cuda.get_device_capability(device))
        return torch.bfloat16 if native else torch.float16
    if device.type == "cpu" and cpu_has_bf16() and n_embd >= CPU_BF16_MIN_WIDTH:
        return torch.bfloat16
    return torch.float32


def autocast_context(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class Placement:
    """Where and in what precision a model runs: the one choice train, sample, eval and bench all make."""

    device: torch.device
    dtype: torch.dtype

    def autocast(self):
        """Mixed precision in `dtype` (nothing for float32)."""
        return autocast_context(self.device, self.dtype)

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


CPU_FP32 = Placement(torch.device("cpu"), torch.float32)  # where a step runs when given no placement


def place(device: str | torch.device, dtype: str, n_embd: int = 0) -> Placement:
    """The device (a setting such as "auto", or one already chosen, e.g. a rank's GPU), set up for use (its GPU
    selected, TF32 allowed), and the dtype for it (`pick_dtype`)."""
    device = device if isinstance(device, torch.device) else pick_device(device)
    setup_device(device)
    return Placement(device, pick_dtype(dtype, device, n_embd))


def gpu_peak_flops(name: str, capability: tuple[int, int], dtype: torch.dtype) -> float | None:
    """The card's dense peak for `dtype` from GPU_PEAK_FLOPS; fp32 runs use TF32, half the bf16 rate (Ampere+)."""
    peak = next((v for pattern, v in GPU_PEAK_FLOPS if re.search(pattern, name)), None)
    if peak is None or dtype != torch.float32:
        return peak
    return peak / 2 if capability >= (8, 0) else None


def measure_cpu_flops(dtype: torch.dtype, n: int = 1024, repeats: int = 5) -> float:
    """The best of several timed n x n matmuls: what this CPU's cores reach in `dtype` (an upper bound for MFU)."""
    gen = torch.Generator().manual_seed(0)  # its own stream: the training RNG (dropout) stays untouched
    a, b = (torch.randn(n, n, generator=gen).to(dtype) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_flops_for(device: torch.device, dtype: torch.dtype) -> float | None:
    """Peak FLOP/s used for MFU: a table for GPUs, a matmul measurement on the CPU, None when unknown."""
    if device.type == "cuda":
        return gpu_peak_flops(torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device), dtype)
    if device.type == "cpu":
        return measure_cpu_flops(dtype)
    return None


def mfu_or_none(mfu: float) -> float | None:
    """An MFU above 1 means the peak was wrong (noise in a measured CPU peak): report n/a, not a wrong number."""
    return mfu if 0 < mfu <= 1 else None
