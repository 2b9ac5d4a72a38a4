"""HellaSwag, scored completion-style as llm.c's dev/data/hellaswag.py scores it.

Each item is a context and four endings, one of them right (`label`). The four rows `context + " " + ending`
go through the model as one batch; each ending's tokens get their cross-entropy given everything before them.
The prediction is the ending with the lowest summed loss (`acc`) and the one with the lowest mean loss per
token (`acc_norm`, the number llm.c and Karpathy's GPT-2 reproduction report: 0.2955 for GPT-2 124M, 0.4893
for XL on the 10,042 validation items).

The items come from the original validation file of rowanz/hellaswag, which publishes no sha256: the download
is pinned by its git blob id (fileio.git_blob_sha1_file), the hash git itself stores for that file.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nanogpt import fileio
from nanogpt.data.entry import SHA256_RE
from nanogpt.errors import ConfigError, DataError
from nanogpt.names import check_name
from nanogpt.settings import HellaSwagSettings, check_fields

if TYPE_CHECKING:
    import torch

    from nanogpt.data.tokenizer import Tokenizer
    from nanogpt.model import GPT
    from nanogpt.runtime import Placement

TASK = "hellaswag"
# llm.c's URL; the file at rowanz/hellaswag commit a29ff8e has git blob id 0f5ee25d... (`git ls-tree a29ff8e
# data/hellaswag_val.jsonl`), which is what a download from it, a mirror or a fork must hash to.
DEFAULT_SOURCE = {
    "url": "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl",
    "git_blob_sha1": "0f5ee25d72216f12317d5d8a7b92deafa423d81e",
}
VALIDATION_ITEMS = 10042
ENDINGS = 4
ITEMS_MAX_BYTES = 256 * 2**20  # the validation file is ~11 MB
# An `evals:` entry of this task: its own keys beside the settings (HellaSwagSettings' fields).
ENTRY_KEYS = ("model", "task", "source", "resources")
_SHA1_LEN = 40


def is_task_entry(entry: object) -> bool:
    """An `evals:` entry that runs a task (`task: hellaswag`) rather than the loss on datasets."""
    return isinstance(entry, dict) and "task" in entry


def resolve_settings(entry: dict, where: str) -> HellaSwagSettings:
    """A HellaSwag `evals:` entry -> its checked settings (the entry's keys checked too)."""
    from nanogpt.config import build_settings
    from nanogpt.configfile import floats_from_strings

    if entry.get("task") != TASK:
        raise ConfigError(f"{where}.task={entry.get('task')!r}: expected {TASK!r}")
    if "datasets" in entry:
        raise ConfigError(f"{where}.datasets: a {TASK} entry reads its own items, expected no datasets")
    if "source" in entry:
        check_source(entry["source"], f"{where}.source")
    settings = floats_from_strings({k: v for k, v in entry.items() if k not in ENTRY_KEYS})
    hellaswag = build_settings(HellaSwagSettings, settings, where)
    check_fields(hellaswag, where)
    return hellaswag


def check_source(source: object, where: str) -> dict:
    """A `source:` of items: url and exactly one checksum (sha256, or the git blob id of a file in a repo)."""
    if not isinstance(source, dict) or not isinstance(source.get("url"), str) or set(source) - {
            "url", "sha256", "git_blob_sha1"}:
        raise ConfigError(f"{where}={fileio.short_repr(source)}: expected a mapping of url and sha256 or "
                          "git_blob_sha1")
    sums = [k for k in ("sha256", "git_blob_sha1") if k in source]
    if len(sums) != 1:
        raise ConfigError(f"{where}: has {sums or 'no checksum'}: expected exactly one of sha256, git_blob_sha1")
    value = source[sums[0]]
    ok = isinstance(value, str) and (SHA256_RE.fullmatch(value) if sums[0] == "sha256" else (
        len(value) == _SHA1_LEN and all(c in "0123456789abcdef" for c in value)))
    if not ok:
        size = 64 if sums[0] == "sha256" else _SHA1_LEN
        raise ConfigError(f"{where}.{sums[0]}={value!r}: expected {size} lowercase hex digits")
    check_name(items_file_name(source), f"{where}.url: file")
    return source


def items_file_name(source: dict) -> str:
    """The file name a source is stored (and found in a mirror) under: the URL's last part."""
    return source["url"].rstrip("/").rsplit("/", 1)[-1]


def fetch_items(source: dict, dest: str | os.PathLike, mirror: str | os.PathLike | None = None) -> Path:
    """The items file, checksum-verified, from the mirror or the network (nanogpt.data.prepare.fetch)."""
    from nanogpt.data.prepare import fetch

    check_source(source, "source")
    return fetch(source["url"], source.get("sha256"), dest, mirror, git_blob_sha1=source.get("git_blob_sha1"))


# ---- items ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    ctx: str
    endings: tuple[str, ...]
    label: int


def read_items(path: str | os.PathLike, limit: int | None = None) -> tuple[list[Item], int]:
    """(the first `limit` items, or all; how many the file holds) of a HellaSwag jsonl file. Every item is
    checked, so a bad one anywhere is a one-line error before any scoring."""
    label = f"HellaSwag items {str(path)!r}"
    text = fileio.read_text_capped(path, ITEMS_MAX_BYTES, "HellaSwag items", DataError)
    items = [parse_item(line, f"{label} line {n}") for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not items:
        raise DataError(f"{label} holds no items: expected HellaSwag's jsonl, one item per line")
    return items[:limit] if limit else items, len(items)


def parse_item(line: str, where: str) -> Item:
    """One jsonl line: a context (`ctx`), four endings and the index of the right one (`label`)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where} is not valid JSON ({e.msg} at column {e.colno}): expected one item") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where} is a JSON {type(obj).__name__}: expected an object with ctx, endings, label")
    ctx, endings, label = obj.get("ctx"), obj.get("endings"), obj.get("label")
    if not isinstance(ctx, str) or not ctx:
        raise DataError(f"{where}: ctx={fileio.short_repr(ctx)}: expected the context text")
    if not isinstance(endings, list) or len(endings) != ENDINGS or not all(isinstance(e, str) for e in endings):
        raise DataError(f"{where}: endings={fileio.short_repr(endings)}: expected a list of {ENDINGS} strings")
    if isinstance(label, str) and label.isdigit():  # the hub's copy writes the label as text
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < ENDINGS:
        raise DataError(f"{where}: label={fileio.short_repr(label)}: expected the right ending's index, 0 to "
                        f"{ENDINGS - 1}")
    return Item(ctx, tuple(endings), label)


def check_encodable(items: list[Item], tok: Tokenizer, where: str) -> None:
    """A character-level model can score the items only if its vocabulary has every character they use."""
    stoi = getattr(tok, "stoi", None)
    if stoi is None:  # GPT-2 BPE encodes any text
        return
    missing = missing_characters(items, set(stoi))
    if missing:
        raise ConfigError(f"{where}: the model's character vocabulary ({len(stoi)} characters) lacks "
                          f"{describe_missing(missing)} that HellaSwag's items use: expected a GPT-2-tokenized "
                          "run or a gpt2* model")


def missing_characters(items: list[Item], vocabulary: set[str]) -> list[str]:
    used = {" "}.union(*(set(item.ctx).union(*item.endings) for item in items))
    return sorted(used - vocabulary)


def describe_missing(missing: list[str]) -> str:
    shown = "".join(missing[:30])
    return f"{len(missing)} character(s) ({shown!r}{', ...' if len(missing) > 30 else ''})"


# ---- scoring -------------------------------------------------------------------------------------------------

def render(item: Item, tok: Tokenizer, block_size: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(tokens, mask, truncated) of one item, llm.c's render_example: four rows `ctx + " " + ending`, padded
    with 0 on the right; mask 1 on the ending's tokens. A row longer than the model's context keeps its last
    `block_size` tokens (the start of the context goes; `truncated` says so)."""
    import torch

    ctx = tok.encode(item.ctx)
    rows = [(ctx + end, [0] * len(ctx) + [1] * len(end)) for end in (tok.encode(" " + e) for e in item.endings)]
    truncated = any(len(r) > block_size for r, _ in rows)
    rows = [(r[-block_size:], m[-block_size:]) for r, m in rows]
    width = max(len(r) for r, _ in rows)
    tokens = torch.zeros((ENDINGS, width), dtype=torch.long)
    mask = torch.zeros((ENDINGS, width), dtype=torch.long)
    for i, (row, row_mask) in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = torch.tensor(row_mask)
    return tokens, mask, truncated


def ending_losses(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed, mean) cross-entropy of each row's ending tokens, each predicted from the position before it:
    per token in float32 whatever the logits' dtype, summed in float64 (a float32 sum near 100 nats is only
    good to 1e-5; MPS has no float64)."""
    import torch
    import torch.nn.functional as F

    losses = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    losses = losses.to(torch.float32 if losses.device.type == "mps" else torch.float64)
    shift_mask = mask[:, 1:].to(losses.dtype)
    summed = (losses.view(tokens.size(0), -1) * shift_mask).sum(dim=1)
    return summed, summed / shift_mask.sum(dim=1)


def score_item(model: GPT, tokens: torch.Tensor, mask: torch.Tensor, placement: Placement
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The four endings' (summed, mean) losses: one forward pass over the item's batch of four rows."""
    tokens, mask = tokens.to(placement.device), mask.to(placement.device)
    with placement.autocast():
        logits, _ = model(tokens, all_logits=True)
    return ending_losses(logits, tokens, mask)


def score(model: GPT, tok: Tokenizer, items: list[Item], placement: Placement | None = None) -> dict:
    """acc (lowest summed loss is the label) and acc_norm (lowest mean loss) over `items`."""
    import torch

    from nanogpt.runtime import CPU_FP32

    placement = placement or CPU_FP32
    model.eval().to(placement.device)
    correct = correct_norm = truncated = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for item in items:
            tokens, mask, cut = render(item, tok, model.config.block_size)
            summed, mean = score_item(model, tokens, mask, placement)
            correct += int(summed.argmin().item() == item.label)
            correct_norm += int(mean.argmin().item() == item.label)
            truncated += int(cut)
    n = len(items)
    return {"acc": correct / n, "acc_norm": correct_norm / n, "items": n, "correct": correct,
            "correct_norm": correct_norm, "truncated_items": truncated, "wall_time_s": time.perf_counter() - t0}
