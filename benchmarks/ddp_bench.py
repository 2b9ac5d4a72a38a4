"""Training throughput through the real entry point (`nanogpt train` under torchrun): 1 vs 2 processes, fp32 vs bf16.

Every configuration trains the same global batch (batch_size x gradient_accumulation_steps x block_size tokens per
step) for the same iterations; tokens/s is metrics.json's (median step time, after warm-up). The configurations
run interleaved, `--repeats` rounds, so load from other processes on the machine hits all of them alike.

    .venv/bin/python benchmarks/ddp_bench.py [--data-dir results/data/shakespeare_char] [--iters 40] [--repeats 2]

Not run by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# (label, nproc, threads per process, dtype, model): the small CPU model of config.yaml, and a wider one where
# bf16 pays off. torchrun gives each of several processes OMP_NUM_THREADS=1; 1 process is shown both ways.
SMALL = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64}
WIDE = {"n_layer": 2, "n_head": 8, "n_embd": 512, "block_size": 64}
CASES = [
    ("128-wide, 1 proc x 1 thread, fp32", 1, 1, "float32", SMALL),
    ("128-wide, 1 proc x 2 threads, fp32", 1, 2, "float32", SMALL),
    ("128-wide, 2 procs x 1 thread, fp32", 2, 1, "float32", SMALL),
    ("128-wide, 1 proc x 1 thread, bf16", 1, 1, "bfloat16", SMALL),
    ("512-wide, 1 proc x 1 thread, fp32", 1, 1, "float32", WIDE),
    ("512-wide, 1 proc x 1 thread, bf16", 1, 1, "bfloat16", WIDE),
    ("512-wide, 2 procs x 1 thread, fp32", 2, 1, "float32", WIDE),
]


def prepared_data(data_dir: str | None, tmp: Path) -> Path:
    if data_dir:
        return Path(data_dir)
    from nanogpt.cli import main as nanogpt_cli
    from nanogpt.data.prepare import prepare_text

    src = tmp / "input.txt"  # config.yaml's shakespeare_char source: $NANOGPT_MIRROR if set, else the bundled copy
    if nanogpt_cli(["download", "--config", str(REPO / "config.yaml"), "--name", "shakespeare_char", "--out", str(src)]):
        sys.exit("ddp_bench: error: cannot get tinyshakespeare's input.txt (see above)")
    out = tmp / "data"
    prepare_text(src, out)
    return out


def run_case(nproc: int, threads: int, dtype: str, model: dict, data: Path, out: Path, iters: int, batch: int) -> dict:
    spec = {
        "dataset": "bench",
        "model": {**model, "dropout": 0.0, "bias": False},
        "train": {"batch_size": batch, "gradient_accumulation_steps": 2, "max_iters": iters, "lr_decay_iters": iters,
                  "warmup_iters": 2, "eval_interval": 10 * iters, "eval_iters": 1, "log_interval": 1,
                  "device": "cpu", "dtype": dtype, "always_save_checkpoint": False},
        "launch": {"nproc_per_node": nproc},
    }
    cmd = [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", "-m", "nanogpt.cli", "train",
           "--name", "bench", "--spec", json.dumps(spec), "--data-dir", str(data), "--out-dir", str(out)]
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed:\n{(proc.stdout + proc.stderr)[-2000:]}")
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="a prepared char dataset (default: tokenize the offline Shakespeare)")
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=12, help="per micro-batch; 2 micro-batches per step")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = prepared_data(args.data_dir, tmp)
        results: dict[str, list[float]] = {label: [] for label, *_ in CASES}
        for r in range(args.repeats):
            for i, (label, nproc, threads, dtype, model) in enumerate(CASES):
                m = run_case(nproc, threads, dtype, model, data, tmp / f"run{r}_{i}", args.iters, args.batch_size)
                results[label].append(m["tokens_per_sec"])
                print(f"round {r}: {label}: {m['tokens_per_sec']:.0f} tokens/s ({m['median_ms_per_iter']:.1f} ms/iter)",
                      file=sys.stderr)
    print(f"\n{os.cpu_count()} CPU cores; global batch {args.batch_size} x 2 x 64 tokens; median of {args.repeats}\n")
    print("| configuration | tokens/s |")
    print("|---|---:|")
    for label, values in results.items():
        print(f"| {label} | {statistics.median(values):,.0f} |")


if __name__ == "__main__":
    main()
