"""Checkpoints: atomic save, safe load (weights_only=True), and nanoGPT `ckpt.pt` compatibility.

Layout (a superset of nanoGPT's, so each side can read the other's model weights)::

    model, model_args, iter_num, best_val_loss, config      # nanoGPT's keys
    optimizer, scaler, rng, fingerprint, format             # ours: what exact resume needs
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Collection
from pathlib import Path

import torch

from nanogpt import fileio
from nanogpt.errors import CheckpointError, ConfigError
from nanogpt.model import GPT, GPTConfig

FORMAT = "nanogpt-workflow/1"
_CKPT_NAME = re.compile(r"^ckpt_(\d+)\.pt$")
# In a trajectory's checkpoints/ folder: held/ keeps its checkpoints beyond max_iters (a shorter rerun never resumes
# or prunes them; a longer one takes them back), unreadable/ the files that do not load (the newest few).
HELD = "held"
UNREADABLE = "unreadable"
KEEP_UNREADABLE = 4


def save(obj: dict, dest: str | os.PathLike) -> None:
    """torch.save to a temp file, then rename: a killed writer never leaves a torn checkpoint at `dest`."""
    with fileio.atomic_path(dest) as tmp:
        torch.save(obj, tmp)


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load with weights_only=True (no code runs from the file); a corrupt file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} {fileio.not_a_file(path)}: expected a .pt file")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols before refusing them
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        text = str(e).strip()
        found = re.search(r"GLOBAL (\S+)", text) if type(e).__name__ == "UnpicklingError" else None
        if found:  # weights_only refused a pickled object: unpickling it could run code
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds a pickled {found.group(1)}, refused: expected only "
                "tensors and plain values (torch.load weights_only=True)"
            ) from None
        first = text.splitlines()[0].split(". ")[0] if text else ""
        detail = f" ({first[:120]})" if len(first) > 20 and not first.startswith("Weights only") else ""
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or truncated{detail}: expected a complete torch.save file"
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has no 'model'/'model_args': expected a nanoGPT or nanogpt-workflow checkpoint"
        )
    return ckpt


def clean_state_dict(state_dict: dict) -> dict:
    """Strip the `_orig_mod.` prefix that torch.compile adds (nanoGPT saves compiled models that way)."""
    prefix = "_orig_mod."
    return {k.removeprefix(prefix): v for k, v in state_dict.items()}


def model_from_checkpoint(ckpt: dict, expected: GPTConfig | None = None, dropout: float | None = None) -> GPT:
    """Build the GPT a checkpoint describes; if `expected` is given, the architectures must agree."""
    args = dict(ckpt["model_args"])
    if dropout is not None:
        args["dropout"] = dropout
    config = GPTConfig.from_dict(args)
    if expected is not None:
        for key in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias"):
            if getattr(config, key) != getattr(expected, key):
                raise CheckpointError(
                    f"checkpoint has model.{key}={getattr(config, key)} but the config asks for "
                    f"{getattr(expected, key)}: expected the same architecture (or a fresh run directory)"
                )
    model = GPT(config)
    state = clean_state_dict(ckpt["model"])
    state = {k: v for k, v in state.items() if not k.endswith(".attn.bias")}  # old nanoGPT mask buffers
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor whose shape disagrees with model_args
        size = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise CheckpointError(f"checkpoint weights do not fit its model_args ({size[:200]})") from None
    # lm_head and wte are tied: a state dict with only one of them is complete.
    missing = [k for k in missing if k not in ("lm_head.weight", "transformer.wte.weight")]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint weights do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[GPT, dict]:
    ckpt = load(path, map_location)
    try:
        return model_from_checkpoint(ckpt), ckpt
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {str(path)!r} has invalid model_args: {e}") from None


def checkpoint_path(ckpt_dir: str | os.PathLike, iter_num: int) -> Path:
    return Path(ckpt_dir) / f"ckpt_{iter_num:08d}.pt"


def is_checkpoint_name(name: str) -> bool:
    return _CKPT_NAME.match(name) is not None


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Periodic checkpoints in a run's checkpoints/ folder, oldest first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _CKPT_NAME.match(p.name))]
    return sorted(found)


def peek(path: str | os.PathLike) -> dict:
    """A checkpoint's small entries (iter_num, fingerprint, ...), read without loading its tensors (mmap)."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or truncated: expected a complete torch.save file"
                              ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "iter_num" not in ckpt:
        raise CheckpointError(f"checkpoint {str(path)!r} has no 'model'/'iter_num': expected one of our checkpoints")
    return {k: v for k, v in ckpt.items() if not isinstance(v, dict | torch.Tensor)}


def choose_resume(ckpt_dir: str | os.PathLike, fingerprints: Collection[str], max_iters: int
                  ) -> tuple[Path | None, list[tuple[Path, str, str | None]]]:
    """The newest checkpoint of this trajectory within max_iters, and the checkpoints to move out of the way.

    `fingerprints`: the ones this run accepts (its own). The candidates are the live
    checkpoints and the held ones (beyond an earlier, shorter max_iters). Live ones that are unreadable, of
    another trajectory, or beyond max_iters are returned as (path, reason, fingerprint) to move: older ones too,
    since pruning would otherwise count them as this run's.
    """
    ckpt_dir = Path(ckpt_dir)
    chosen, refused = None, []
    for _, path in reversed(list_checkpoints(ckpt_dir)):
        try:
            info = peek(path)
            fingerprint, iter_num = info.get("fingerprint"), int(info["iter_num"])
        except (CheckpointError, TypeError, ValueError):
            refused.append((path, "unreadable", None))
            continue
        if fingerprint not in fingerprints:
            refused.append((path, "made with other settings, data or initial weights", fingerprint))
        elif iter_num > max_iters:
            refused.append((path, f"beyond max_iters={max_iters}", fingerprint))
        elif chosen is None:
            chosen = (iter_num, path)
    for iter_num, path in list_checkpoints(ckpt_dir / HELD):
        if iter_num <= max_iters and (chosen is None or iter_num > chosen[0]) and _loads(path, fingerprints):
            chosen = (iter_num, path)
    return (chosen[1] if chosen else None), refused


def _loads(path: Path, fingerprints: Collection[str]) -> bool:
    try:
        return peek(path).get("fingerprint") in fingerprints
    except CheckpointError:
        return False


def move_into(path: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Move a file into `folder` (made if missing); a file of the same name there is replaced."""
    path, folder = Path(path), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    os.replace(path, folder / path.name)
    return folder / path.name


def unhold(ckpt_dir: Path, out_dir: Path, max_iters: int) -> None:
    """A longer max_iters: held checkpoints within it rejoin the live ones, and held best.pt returns unless the run
    folder has one."""
    held = ckpt_dir / HELD
    for iter_num, path in list_checkpoints(held):
        if iter_num <= max_iters:
            os.replace(path, ckpt_dir / path.name)
    if (held / "best.pt").is_file() and not (out_dir / "best.pt").exists():
        os.replace(held / "best.pt", out_dir / "best.pt")
    if held.is_dir() and not any(held.iterdir()):
        held.rmdir()


def prune(ckpt_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Keep the newest `keep` periodic checkpoints that load; move unreadable ones to unreadable/, never count them."""
    kept, moved = 0, []
    for _, path in reversed(list_checkpoints(ckpt_dir)):
        try:
            peek(path)
        except CheckpointError:
            moved.append(move_unreadable(path, ckpt_dir))
            continue
        if kept < keep:
            kept += 1
        else:
            path.unlink(missing_ok=True)
    return moved


def move_unreadable(path: Path, ckpt_dir: str | os.PathLike) -> Path:
    """Into checkpoints/unreadable/, which keeps the KEEP_UNREADABLE newest."""
    dest = move_into(path, Path(ckpt_dir) / UNREADABLE)
    os.utime(dest)
    files = sorted(dest.parent.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[KEEP_UNREADABLE:]:
        old.unlink(missing_ok=True)
    return dest
