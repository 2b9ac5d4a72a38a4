"""Corpus preparation: our streaming prepare (nanogpt.data.hf_corpus) vs nanoGPT's data/openwebtext/prepare.py.

Both read the same generated parquet corpus (>= 200 MB of text) with `datasets` and write GPT-2 uint16 bins with
nanoGPT's split (val 0.0005, seed 2357). Each runs in its own subprocess; the parent samples the memory of the
whole process tree (sum of PSS, so forked workers' shared pages count once) every 0.1 s. Checks that both
produce the same documents (val: same documents; train: same multiset of documents, ours in corpus order).

    .venv/bin/python benchmarks/prepare_bench.py --mb 200 --num-proc 2
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VAL_FRACTION, SEED = 0.0005, 2357


def make_corpus(dest: Path, mb: int, files: int = 8) -> list[str]:
    """Documents of 200..20,000 characters cut from Shakespeare lines shuffled per document (seeded)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nanogpt.cli import main

    src = dest.parent / "input.txt"  # config.yaml's shakespeare_char source: $NANOGPT_MIRROR, else the bundled copy
    if main(["download", "--config", str(REPO / "config.yaml"), "--name", "shakespeare_char", "--out", str(src)]):
        raise SystemExit("nanogpt download failed: cannot get tinyshakespeare's input.txt")
    text = src.read_text()
    lines = np.array([ln for ln in text.splitlines() if ln.strip()], dtype=object)
    rng = np.random.default_rng(0)
    docs, total = [], 0
    while total < mb * 1_000_000:
        n_lines = int(rng.integers(5, 500))
        doc = "\n".join(lines[rng.integers(0, len(lines), size=n_lines)])
        docs.append(doc)
        total += len(doc.encode())
    paths = []
    for i, part in enumerate(np.array_split(np.array(docs, dtype=object), files)):
        path = dest / f"train-{i:05d}-of-{files:05d}.parquet"
        pq.write_table(pa.table({"text": list(part)}), path, row_group_size=1000)
        paths.append(str(path))
    print(f"corpus: {len(docs):,} documents, {total / 1e6:.0f} MB of text, {files} parquet files", flush=True)
    return paths


def run_ours(files: list[str], out: Path, num_proc: int) -> dict:
    """What the pipeline's download_hf and prepare rules run: `nanogpt download` then `nanogpt prepare`."""
    import json

    from nanogpt.cli import main

    spec = json.dumps({"files": {"format": "parquet", "paths": files}, "val_fraction": VAL_FRACTION, "seed": SEED})
    for argv in (["download", "--name", "bench", "--spec", spec, "--out", str(out / "source.json")],
                 ["prepare", "--name", "bench", "--spec", spec, "--source", str(out / "source.json"),
                  "--out-dir", str(out), "--num-proc", str(num_proc)]):
        if main(argv) != 0:
            raise SystemExit(f"nanogpt {argv[0]} failed")
    meta = json.loads((out / "meta.json").read_text())
    return {"train_tokens": meta["train_tokens"], "val_tokens": meta["val_tokens"]}


def run_nanogpt(files: list[str], out: Path, num_proc: int) -> dict:
    """nanoGPT's data/openwebtext/prepare.py, with the parquet files instead of the hub script."""
    from datasets import load_dataset
    from tqdm import tqdm

    from nanogpt.data.tokenizer import gpt2_tokenizer

    enc = gpt2_tokenizer().encoding  # tiktoken's gpt2 encoding (offline: the mirror's or the bundled BPE files)
    dataset = load_dataset("parquet", data_files={"train": files}, num_proc=num_proc, cache_dir=str(out / "hf"))
    split_dataset = dataset["train"].train_test_split(test_size=VAL_FRACTION, seed=SEED, shuffle=True)
    split_dataset["val"] = split_dataset.pop("test")

    def process(example):
        ids = enc.encode_ordinary(example["text"])
        ids.append(enc.eot_token)
        return {"ids": ids, "len": len(ids)}

    tokenized = split_dataset.map(process, remove_columns=["text"], desc="tokenizing the splits", num_proc=num_proc)
    counts = {}
    for split, dset in tokenized.items():
        arr_len = np.sum(dset["len"], dtype=np.uint64)
        arr = np.memmap(out / f"{split}.bin", dtype=np.uint16, mode="w+", shape=(arr_len,))
        total_batches = min(1024, len(dset))  # nanoGPT: 1024 (its val split has 4,007 documents)
        idx = 0
        for batch_idx in tqdm(range(total_batches), desc=f"writing {split}.bin"):
            batch = dset.shard(num_shards=total_batches, index=batch_idx, contiguous=True).with_format("numpy")
            arr_batch = np.concatenate(batch["ids"])
            arr[idx: idx + len(arr_batch)] = arr_batch
            idx += len(arr_batch)
        arr.flush()
        counts[f"{split}_tokens"] = int(arr_len)
    return counts


def tree_memory(pid: int) -> tuple[int, int]:
    """(sum of PSS, sum of RSS) in bytes over a process and its descendants."""
    import psutil

    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0
    pss = rss = 0
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return pss, rss


def measure(which: str, files: list[str], out: Path, num_proc: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "files.json").write_text(json.dumps(files))
    cmd = [sys.executable, __file__, "--child", which, "--out", str(out), "--num-proc", str(num_proc)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(out / "log.txt", "w"), text=True)
    peak_pss = peak_rss = 0
    while proc.poll() is None:
        pss, rss = tree_memory(proc.pid)
        peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{which} failed:\n{(out / 'log.txt').read_text()[-3000:]}")
    counts = json.loads(proc.stdout.read().strip().splitlines()[-1])
    tokens = counts["train_tokens"] + counts["val_tokens"]
    return {"which": which, "wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall,
            "peak_pss_mb": peak_pss / 2**20, "peak_rss_mb": peak_rss / 2**20, **counts}


def doc_hashes(path: Path) -> collections.Counter:
    ids = np.fromfile(path, dtype=np.uint16)
    ends = np.flatnonzero(ids == 50256)
    starts = np.r_[0, ends[:-1] + 1]
    return collections.Counter(hashlib.blake2b(ids[a:b + 1].tobytes(), digest_size=16).digest()
                               for a, b in zip(starts, ends, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=200, help="MB of text in the generated corpus")
    ap.add_argument("--num-proc", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="default: a temp folder, removed afterwards")
    ap.add_argument("--child", choices=["ours", "nanogpt"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        out = Path(args.out)
        files = json.loads((out / "files.json").read_text())
        fn = run_ours if args.child == "ours" else run_nanogpt
        print(json.dumps(fn(files, out, args.num_proc)), flush=True)
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        (tmp / "corpus").mkdir()
        files = make_corpus(tmp / "corpus", args.mb)
        results = [measure(w, files, tmp / w, args.num_proc) for w in ("ours", "nanogpt")]
        for r in results:
            print(f"{r['which']:>8}: {r['tokens']:,} tokens in {r['wall_s']:.1f} s = {r['tokens_per_s']:,.0f} tokens/s, "
                  f"peak PSS {r['peak_pss_mb']:.0f} MB (RSS sum {r['peak_rss_mb']:.0f} MB)")
        ours, ref = results
        print(f"speedup {ours['tokens_per_s'] / ref['tokens_per_s']:.2f}x, "
              f"peak PSS ratio {ours['peak_pss_mb'] / ref['peak_pss_mb']:.2f}, num_proc={args.num_proc}, "
              f"cpus={os.cpu_count()}")
        same_val = doc_hashes(tmp / "ours" / "val.bin") == doc_hashes(tmp / "nanogpt" / "val.bin")
        same_train = doc_hashes(tmp / "ours" / "train.bin") == doc_hashes(tmp / "nanogpt" / "train.bin")
        print(f"same val documents: {same_val}; same train documents (as a multiset): {same_train}")
        if not (same_val and same_train and ours["tokens"] == ref["tokens"]):
            sys.exit("outputs differ")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
