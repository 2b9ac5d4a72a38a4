"""Summary and report time and size against the number of finished runs.

For each run count N (default 10, 100, 1000) it builds a copy of the workflow whose config.yaml targets N runs
(the README's CPU Shakespeare settings, learning rate varied as in a sweep), with N *synthetic finished runs*,
then times two commands, each as a fresh process, alternated over `--repeats`:

- summary: `snakemake --cores 2` from finished runs: every run's loss curve and report page, and the summary
  table (the jobs that follow training); repeats force them again with `--forcerun`. Also the CPU time of
  snakemake's own process (its scheduler; not its jobs), which other load inflates far less than wall time.
- report: `snakemake --report report.html`; also its size, and the size of results/summary.html.

Synthetic finished runs, the cheapest faithful way found: the dataset is made by the real download and prepare
rules (offline, from the bundled tiny Shakespeare). Each run folder gets what training leaves there, written
by the package's own writers: TensorBoard events from `nanogpt.tracking.Tracker` (the scalars the trainer logs
every `log_interval` = 10 and every `eval_interval` = 250 iterations of 2000, plus the HParams summary),
history.jsonl, and metrics.json with `nanogpt.provenance` (the run's resolved settings). The losses follow a
noisy decay, so the plots have a real run's shape. model.pt is a placeholder: no summary or report rule reads
it, it only has to exist as the train rule's output. Then `snakemake --touch --until train` marks the data and
train jobs done (Snakemake records their metadata as after real training), and the summary jobs run for real.
The runs are generated once under --out and copied into each work folder.

`--repo PATH` (repeatable) measures another checkout's workflow and package (e.g. `git archive HEAD` unpacked
in /tmp, for before/after): its Snakefile, workflow/ and profiles/ are copied, and its package is imported
first (PYTHONPATH). Several repos are alternated within each repeat so load hits them alike.
`--summary-repeats K` times the summary in the first K repeats only (it is the slow part at 1000 runs);
`--reuse` keeps existing work folders with their outputs and times reports only.

    .venv/bin/python benchmarks/report_scaling.py                       # 10 / 100 / 1000 runs, 3 repeats
    .venv/bin/python benchmarks/report_scaling.py --runs 500 --repeats 1 --profile   # + cProfile of the report
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: snakemake, nanogpt
OUT = REPO / "benchmarks" / "out" / "report_scaling"
MAX_ITERS, LOG_INTERVAL, EVAL_INTERVAL = 2000, 10, 250

RUN_ENTRY = {  # config.yaml's shakespeare_char_cpu (nanoGPT README's CPU settings)
    "dataset": "shakespeare_char",
    "model": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "dropout": 0.0, "bias": False},
    "train": {"batch_size": 12, "max_iters": MAX_ITERS, "lr_decay_iters": MAX_ITERS, "learning_rate": 1.0e-3,
              "min_lr": 1.0e-4, "beta2": 0.99, "warmup_iters": 100, "eval_interval": EVAL_INTERVAL,
              "eval_iters": 20, "log_interval": LOG_INTERVAL, "always_save_checkpoint": False, "device": "cpu"},
    "launch": {"nproc_per_node": 1},
    "resources": {"cpus_per_task": 1, "mem_mb": 2000, "runtime": 30},
}


def run_names(n: int) -> list[str]:
    return [f"run{i:04d}" for i in range(n)]


def pipeline_config(n: int) -> dict:
    """config.yaml for N runs, all targeted: each gets a loss curve, a report page and a summary row."""
    runs = {}
    for i, name in enumerate(run_names(n)):
        entry = json.loads(json.dumps(RUN_ENTRY))
        entry["train"]["learning_rate"] = round(1e-4 * 1.01**i, 8)  # distinct settings, as a sweep's points
        runs[name] = entry
    datasets = yaml.safe_load((REPO / "config.yaml").read_text())["datasets"]
    return {"mirror": None, "targets": {"runs": list(runs), "samples": [], "evals": [], "sweeps": []},
            "datasets": {"shakespeare_char": datasets["shakespeare_char"]}, "runs": runs, "samples": {},
            "evals": {}}


# Runs the snakemake script and, at exit, prints the CPU time of snakemake's own process (all its threads, not
# its jobs): the scheduler's share, which load from other processes does not inflate the way it does wall time.
LAUNCH = """import resource, runpy, sys
script, sys.argv = sys.argv[1], sys.argv[1:]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    use = resource.getrusage(resource.RUSAGE_SELF)
    print(f"\\nSNAKEMAKE_CPU_S {use.ru_utime + use.ru_stime:.2f}", file=sys.stderr)
"""


def snakemake(workdir: Path, repo: Path, *args: str, timeout: int = 7200) -> tuple[float, float]:
    """Runs snakemake in `workdir` with `repo`'s package first on the path; returns its wall time and its own
    process's CPU time, in seconds."""
    env = dict(os.environ, PYTHONPATH=str(repo), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", LAUNCH, str(BIN / "snakemake"), "--cores", "2", *args],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed in {workdir}:\n{proc.stderr[-3000:]}")
    return elapsed, float(proc.stderr.rsplit("SNAKEMAKE_CPU_S", 1)[1])


def fake_losses(rng: random.Random, lr_scale: float) -> tuple[list[tuple[int, float]], list[tuple[int, float, float]]]:
    """A real run's shape: noisy train loss every LOG_INTERVAL, train/val estimates every EVAL_INTERVAL."""
    final = 1.85 + 0.1 * abs(math.log(lr_scale))

    def loss(step: int) -> float:
        return final + (4.2 - final) * math.exp(-step / 300)

    train = [(s, loss(s) + rng.gauss(0, 0.05)) for s in range(0, MAX_ITERS + 1, LOG_INTERVAL)]
    evals = [(s, loss(s) - 0.02, loss(s) + 0.05) for s in range(0, MAX_ITERS + 1, EVAL_INTERVAL)]
    return train, evals


def write_run(run_dir: Path, name: str, entry: dict, prov: dict, dataset_meta: dict) -> None:
    """What a finished training leaves in its run folder, from the package's own writers."""
    from nanogpt.config import resolve_run
    from nanogpt.tracking import Tracker

    run = resolve_run(entry, name)
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(name)
    train, evals = fake_losses(rng, entry["train"]["learning_rate"] / 1e-3)
    tracker = Tracker(run, run_dir, 0)
    with (run_dir / "history.jsonl").open("w") as history:
        for step, value in train:
            tracker.scalars({"loss/train": value, "lr": 1e-3, "tokens_per_sec": 9000.0 + rng.random() * 500,
                             "grad_norm": 0.5 + rng.random(), "mfu": None}, step)
            history.write(json.dumps({"iter": step, "loss": value, "lr": 1e-3, "dt": 0.035}) + "\n")
    for step, tr, va in evals:
        tracker.scalars({"loss/train_eval": tr, "loss/val": va, "lr": 1e-3}, step)
    metrics = {"iters": MAX_ITERS, "train_loss": evals[-1][1], "val_loss": evals[-1][2],
               "best_val_loss": min(v for _, _, v in evals), "last_step_loss": train[-1][1],
               "median_ms_per_iter": 35.2, "tokens_per_sec": 21800.0, "mfu": None, "peak_flops": None,
               "wall_time_s": 78.0, "device": "cpu", "dtype": "bfloat16", "world_size": 1,
               "provenance": {**prov, "config": run.to_dict(),
                              "dataset": {k: dataset_meta.get(k) for k in prov["dataset"]}}}
    tracker.finish(metrics, MAX_ITERS)
    tracker.close()
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (run_dir / "model.pt").write_bytes(b"placeholder: no summary or report rule reads model.pt\n")


def make_runs(cache: Path, n: int) -> Path:
    """N synthetic finished runs under cache/runs (made once, reused by every repo and smaller count)."""
    from nanogpt.provenance import provenance

    runs = cache / "runs"
    config = pipeline_config(n)
    missing = [r for r in config["runs"] if not (runs / r / "metrics.json").is_file()]
    if missing:
        prov = provenance({})
        for name in missing:
            write_run(runs / name, name, config["runs"][name], prov, {"dataset": "shakespeare_char"})
    return runs


def make_workdir(dest: Path, repo: Path, n: int, runs_cache: Path) -> Path:
    """A copy of `repo`'s workflow with N finished runs: data by the real rules, runs copied, train jobs touched."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copy(repo / "Snakefile", dest / "Snakefile")
    for folder in ("workflow", "profiles"):
        shutil.copytree(repo / folder, dest / folder)
    (dest / "config.yaml").write_text(yaml.safe_dump(pipeline_config(n), sort_keys=False))
    snakemake(dest, repo, "results/data/shakespeare_char/meta.json")
    for name in run_names(n):
        shutil.copytree(runs_cache / name, dest / "results" / "runs" / name)
    snakemake(dest, repo, "--touch", "--until", "train")  # the train jobs count as run, with their metadata
    return dest


def time_summary(workdir: Path, repo: Path, first: bool, extra: list[str]) -> dict:
    """All post-training jobs: every run's loss curve and page, and the summary table (forced again on repeats)."""
    force = [] if first else ["--forcerun", "loss_curve", "run_page", "summary"]
    wall, cpu = snakemake(workdir, repo, *force, *extra)
    return {"summary_s": wall, "summary_snakemake_cpu_s": cpu}


def time_report(workdir: Path, repo: Path) -> dict:
    """`snakemake --report report.html`: its wall time and size, and the size of the summary page it shows."""
    report = workdir / "report.html"
    report.unlink(missing_ok=True)
    seconds, _ = snakemake(workdir, repo, "--report", str(report))
    return {"report_s": seconds, "report_mb": report.stat().st_size / 1e6,
            "summary_html_kb": (workdir / "results" / "summary.html").stat().st_size / 1e3}


def profile_report(workdir: Path, repo: Path, out: Path) -> None:
    """cProfile of `snakemake --report` (the workflow's outputs must exist): the top of its cumulative times."""
    env = dict(os.environ, PYTHONPATH=str(repo), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), str(BIN / "snakemake"), "--cores", "2",
                    "--report", str(workdir / "report.html")], cwd=workdir, env=env, check=True,
                   capture_output=True)
    import pstats

    pstats.Stats(str(out)).sort_stats("cumulative").print_stats(40)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--repeats", type=int, default=3, help="timed reports per checkout and count")
    ap.add_argument("--summary-repeats", type=int, default=3, help="timed summaries (<= --repeats; 0: none)")
    ap.add_argument("--repo", type=Path, action="append", help="checkout(s) to measure (default: this one)")
    ap.add_argument("--snakemake-args", default="", help="extra arguments for the summary's snakemake")
    ap.add_argument("--reuse", action="store_true",
                    help="keep an existing work folder and its outputs (e.g. made with --touch); time reports only")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--profile", action="store_true", help="also cProfile one `snakemake --report` per count")
    args = ap.parse_args(argv)
    repos = [r.resolve() for r in (args.repo or [REPO])]
    extra = shlex.split(args.snakemake_args)
    runs_cache = make_runs(args.out, max(args.runs))
    results: dict[tuple[str, int], list[dict]] = {}
    for n in args.runs:
        dirs = {repo: args.out / f"w{i}-{n}" for i, repo in enumerate(repos)}
        for repo, workdir in dirs.items():
            if not (args.reuse and workdir.is_dir()):
                make_workdir(workdir, repo, n, runs_cache)
        for rep in range(args.repeats):
            for repo, workdir in dirs.items():  # alternated, so load from elsewhere hits every checkout alike
                m = {}
                if rep < args.summary_repeats and not args.reuse:
                    m.update(time_summary(workdir, repo, rep == 0, extra))
                m.update(time_report(workdir, repo))
                results.setdefault((str(repo), n), []).append(m)
                print(f"{repo} N={n} repeat {rep}: {json.dumps(m)}", flush=True)
        if args.profile:
            for i, (repo, workdir) in enumerate(dirs.items()):
                profile_report(workdir, repo, args.out / f"report-{i}-{n}.prof")
    (args.out / "results.json").write_text(json.dumps({f"{r} {n}": ms for (r, n), ms in results.items()}, indent=1))
    print_table(results, args.runs)


def _median(ms: list[dict], key: str) -> float | None:
    values = [m[key] for m in ms if key in m]
    return statistics.median(values) if values else None


def print_table(results: dict[tuple[str, int], list[dict]], counts: list[int]) -> None:
    """Medians per checkout and run count, with each time's ratio to the previous count's."""
    print("\n| checkout | runs | summary s | x prev | snakemake's own CPU s in it | report s | x prev | report MB "
          "| summary.html KB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for repo in dict.fromkeys(r for r, _ in results):
        prev: dict[str, float | None] = {}
        for n in counts:
            ms = results[(repo, n)]
            cells = []
            for key in ("summary_s", "summary_snakemake_cpu_s", "report_s"):
                value, before = _median(ms, key), prev.get(key)
                cells.append(f"{value:.1f}" if value is not None else "-")
                if key != "summary_snakemake_cpu_s":
                    cells.append(f"{value / before:.1f}x" if value is not None and before else "")
                prev[key] = value
            print(f"| {repo} | {n} | {' | '.join(cells)} | {ms[-1]['report_mb']:.2f} "
                  f"| {ms[-1]['summary_html_kb']:.0f} |")


if __name__ == "__main__":
    main()
