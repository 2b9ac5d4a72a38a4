"""Generation past the context window: ours (window recomputed every `window_refresh` tokens) vs nanoGPT's cropping.

    .venv/bin/python benchmarks/generate_window.py                  # 1 thread, GPT-2-124M shape, ~6 min
    .venv/bin/python benchmarks/generate_window.py --skip-slow      # without ours k=1 over 100 + 1000 (~3 min less)

One process, fp32, random weights (torch.manual_seed(0)), our GPT and nanoGPT's GPT holding the same weights;
temperature 0.8, top_k 200, the global generator seeded with 1337 before each run (as nanoGPT's sample.py).
nanoGPT's step past the window is one full forward of block_size tokens (1-3 s at 1 thread), so it is timed over
a few steps only (--ref-steps, from a block_size-token prompt: every step is past the window), and ours with
window_refresh=1 is timed over the same steps, the samples compared. Target: ours past the window
within 2x of ours inside it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare_nanogpt import default_ref  # noqa: E402
from compare_nanogpt import load_ref_model_module as load_ref_module  # noqa: E402

from nanogpt.decoding import generate  # noqa: E402
from nanogpt.model import GPT, GPTConfig  # noqa: E402

SHAPE = {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "vocab_size": 50304, "bias": True,
         "dropout": 0.0}


def twin_models(ref_mod) -> tuple[GPT, torch.nn.Module | None]:
    """Our GPT and nanoGPT's (None without a module) with the same random fp32 weights."""
    torch.manual_seed(0)
    ours = GPT(GPTConfig(**SHAPE)).eval()
    if ref_mod is None:
        return ours, None
    theirs = ref_mod.GPT(ref_mod.GPTConfig(**SHAPE)).eval()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def prompt_of(length: int) -> torch.Tensor:
    """A fixed random prompt (1, length): the same tokens for every run of a given length."""
    return torch.randint(SHAPE["vocab_size"], (1, length), generator=torch.Generator().manual_seed(length))


def timed(draw, prompt_len: int, new: int) -> dict:
    """tokens/s of one generate call, by wall clock and by this process's CPU time (steadier under load)."""
    torch.manual_seed(1337)
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        y = draw(prompt_of(prompt_len), new)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"prompt": prompt_len, "new_tokens": new, "tok_s": new / wall, "tok_s_cpu": new / cpu, "wall_s": wall,
            "tokens": y}


def run_all(ours: GPT, theirs, args: argparse.Namespace) -> list[dict]:
    """The rows of the table, in the order they are printed."""
    block = SHAPE["block_size"]
    k = block // 4  # generate's default window_refresh
    default = lambda p, n: generate(ours, p, n, temperature=0.8, top_k=200)  # noqa: E731
    k1 = lambda p, n: generate(ours, p, n, temperature=0.8, top_k=200, window_refresh=1)  # noqa: E731
    with torch.no_grad():  # warm-up: allocator and the kernels of short and full-window shapes
        default(prompt_of(1), 4)
        ours(prompt_of(block))
        if theirs is not None:
            theirs(prompt_of(block))
    inside, k1_past = "ours, inside the window", "ours, every token past the window, window_refresh=1"
    runs = [(inside, default, 1, 200, None),
            (f"ours, past the window, window_refresh={k} (default)", default, 100, 1000, None),
            (f"ours, every token past the window, window_refresh={k}", default, block, 2 * k, None)]
    if not args.skip_slow:
        runs.append(("ours, past the window, window_refresh=1 (nanoGPT's cropping)", k1, 100, 1000, None))
    runs.append((k1_past, k1, block, args.ref_steps, None))
    if theirs is not None:
        nano = lambda p, n: theirs.generate(p, n, temperature=0.8, top_k=200)  # noqa: E731
        runs += [("nanoGPT, inside the window", nano, 1, 200, inside),
                 ("nanoGPT, every token past the window", nano, block, args.ref_steps, k1_past)]
    rows = []
    for label, draw, prompt_len, new, twin in runs:
        rows.append({"what": label, **timed(draw, prompt_len, new), "twin": twin})
        print(f"  {label}: {rows[-1]['tok_s']:.2f} tok/s", flush=True)
    return rows


def compare(rows: list[dict]) -> None:
    """Ratio of each of our rows to ours inside the window; nanoGPT rows: same samples as their twin of ours
    (same prompt, same number of tokens, same semantics)."""
    by_label = {row["what"]: row for row in rows}
    for row in rows:
        if row["twin"] is None:
            row["vs_ours_inside"] = row["tok_s"] / rows[0]["tok_s"]
        else:
            row["same_samples"] = bool(torch.equal(row["tokens"], by_label[row["twin"]]["tokens"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", default=default_ref(), help="nanoGPT checkout (default $NANOGPT_REF, else "
                   "benchmarks/reference/nanoGPT); left out with a note when it has no model.py")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ref-steps", type=int, default=20,
                   help="tokens generated past the window by nanoGPT and by ours with window_refresh=1 (default 20)")
    p.add_argument("--skip-slow", action="store_true", help="skip ours with window_refresh=1 over 100 + 1000 tokens")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "generate_window.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ref = Path(args.ref)
    ref_mod = load_ref_module(ref) if (ref / "model.py").is_file() else None
    if ref_mod is None:
        print(f"generate_window: no nanoGPT model.py in {str(ref)!r}: nanoGPT's rows left out", flush=True)
    ours, theirs = twin_models(ref_mod)
    load_before = os.getloadavg()
    rows = run_all(ours, theirs, args)
    compare(rows)
    load_after = os.getloadavg()

    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} thread(s), GPT-2-124M shape, fp32; load average "
          f"(1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, after "
          f"{load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}")
    print("| run | prompt + new tokens | tok/s (wall) | tok/s (CPU time) | vs ours inside | same samples |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        ratio = f"{row['vs_ours_inside']:.2f}x" if "vs_ours_inside" in row else ""
        same = {True: "yes", False: "NO"}.get(row.get("same_samples"), "")
        print(f"| {row['what']} | {row['prompt']} + {row['new_tokens']} | {row['tok_s']:.2f} | {row['tok_s_cpu']:.2f}"
              f" | {ratio} | {same} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "shape": SHAPE,
              "load_before": load_before, "load_after": load_after,
              "rows": [{k: v for k, v in row.items() if k != "tokens"} for row in rows]}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
