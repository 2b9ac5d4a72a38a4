"""Checkpoints: atomic save, safe load (weights_only=True), and nanoGPT `ckpt.pt` compatibility.

Layout (a superset of nanoGPT's, so each side can read the other's model weights)::

    model, model_args, iter_num, best_val_loss, config      # nanoGPT's keys
    optimizer, scaler, rng, fingerprint, format             # ours: what exact resume needs
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch

from nanogpt import fileio
from nanogpt.errors import CheckpointError, ConfigError
from nanogpt.model import GPT, GPTConfig

FORMAT = "nanogpt-workflow/1"
_CKPT_NAME = re.compile(r"^ckpt_(\d+)\.pt$")
SET_ASIDE = "set_aside"  # checkpoints/set_aside/: what resume and pruning refused, kept for a human to look at


def save(obj: dict, dest: str | os.PathLike) -> None:
    """torch.save to a temp file, then rename: a killed writer never leaves a torn checkpoint at `dest`."""
    with fileio.atomic_path(dest) as tmp:
        torch.save(obj, tmp)


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load with weights_only=True (no code runs from the file); a corrupt file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist: expected a .pt file")
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


def choose_resume(ckpt_dir: str | os.PathLike, fingerprint: str, max_iters: int
                  ) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest periodic checkpoint of this exact trajectory within max_iters, and the others to set aside.

    Newer checkpoints that are unreadable, belong to other settings or data, or lie beyond max_iters are set
    aside; older ones of other trajectories too (they would otherwise be pruned as if they were ours).
    """
    chosen, refused = None, []
    for _, path in reversed(list_checkpoints(ckpt_dir)):
        try:
            info = peek(path)
        except CheckpointError:
            refused.append((path, "unreadable"))
            continue
        if info.get("fingerprint") != fingerprint:
            refused.append((path, "made with other settings, data or initial weights"))
        elif int(info["iter_num"]) > max_iters:
            refused.append((path, f"beyond max_iters={max_iters}"))
        elif chosen is None:
            chosen = path
    return chosen, refused


def set_aside(path: str | os.PathLike) -> Path:
    """Move a checkpoint into checkpoints/set_aside/ (replacing one of the same name there)."""
    path = Path(path)
    dest = path.parent / SET_ASIDE / path.name
    dest.parent.mkdir(exist_ok=True)
    os.replace(path, dest)
    return dest


def prune(ckpt_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Keep the newest `keep` periodic checkpoints that load; set unreadable ones aside, never count them."""
    kept, moved = 0, []
    for _, path in reversed(list_checkpoints(ckpt_dir)):
        try:
            peek(path)
        except CheckpointError:
            moved.append(set_aside(path))
            continue
        if kept < keep:
            kept += 1
        else:
            path.unlink(missing_ok=True)
    return moved
