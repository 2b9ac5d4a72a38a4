"""The property-based config checks (tests/test_config_properties.py) with many more generated examples.

    .venv/bin/python benchmarks/fuzz_config.py                 # 20x the suite's examples, random seeds
    .venv/bin/python benchmarks/fuzz_config.py --scale 100     # longer
    .venv/bin/python benchmarks/fuzz_config.py --scale 5 -k "not snakemake"   # in-process checks only

The suite runs a few derandomized examples per property (the same ones every run) and `snakemake -n` only on
two fixed configs; here each property gets `--scale` x its suite count of fresh random examples, and the
`snakemake -n` property gets `--scale` generated configs (a few seconds each). A failure prints Hypothesis's
shrunk example: a config, name, --spec or flag that escapes as something other than one line. Writes the
pytest report to benchmarks/out/fuzz_config.txt (git-ignored).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=20, help="examples per property, as a multiple of the suite's")
    parser.add_argument("-k", default=None, help="pytest -k expression: which properties to run")
    args = parser.parse_args()
    if args.scale < 1:
        parser.error(f"--scale {args.scale}: expected a positive integer")
    out = REPO / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
           "--hypothesis-show-statistics", str(REPO / "tests" / "test_config_properties.py")]
    if args.k:
        cmd += ["-k", args.k]
    env = dict(os.environ, NANOGPT_FUZZ_SCALE=str(args.scale))
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    report = proc.stdout + proc.stderr
    (out / "fuzz_config.txt").write_text(report)
    print(report[-6000:])
    print(f"fuzz_config: scale {args.scale}, {time.monotonic() - start:.0f} s, pytest exit {proc.returncode}; "
          f"report in {out / 'fuzz_config.txt'}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
