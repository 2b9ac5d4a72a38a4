"""A busy machine: ours and nanoGPT training the CPU config with and without a competing load on the same cores.

    .venv/bin/python benchmarks/busy_machine.py                 # 300 iters per run, ~10-15 min on 2 busy cores
    .venv/bin/python benchmarks/busy_machine.py --iters 100     # a quick look
    .venv/bin/python benchmarks/busy_machine.py --rounds 2      # every run twice, arm order rotated

With other work on the 2 cores, the default run (2 threads) took 54 minutes where 1 thread took
263 s. Each arm trains nanoGPT's README CPU config (4 x 128, block 64, batch 12) for --iters iterations as a fresh
process, once on the machine as it is ("unloaded": no load added; other users' processes are measured and reported) and
once with one busy-loop process pinned to each core this process may use, in its own session ("loaded"), and
once with those loops starting --late-s seconds into the run ("loaded late": another program starting while a
training runs), arms alternated:

- ours, 1 thread;
- ours, auto: nanogpt/threads.py's choice, the default (its thread count, and waits that spin while the CPUs
  were idle at start and sleep after the run's steps slow down);
- ours, all cores with OMP_WAIT_POLICY=PASSIVE;
- ours, all cores, libgomp's default spinning waits: the default before passive waits;
- nanoGPT's train.py at its defaults (torch's threads = cores, spinning), from a temp folder in its data layout.

ms/iter is the median of the logged iterations after the 5th (nanoGPT's `time` lines and ours). A run slower than
--cap-factor x the same condition's 1-thread run (or --max-run-s) is stopped; its wall time for --iters is then
extrapolated at its median pace (marked ~). Ours trains in its default dtype (bf16 autocast on CPUs with
bf16 units), nanoGPT in fp32: compare each side's loaded/unloaded ratio, not ours against nanoGPT's ms/iter.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nanogpt import threads  # noqa: E402

CONDITIONS = ("unloaded", "loaded", "loaded late")
CPU_CONFIG = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "batch_size": 12, "dropout": 0.0}
ITER_LINE = re.compile(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms", re.M)
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", threads.THREADS_ENV)
CLK_TCK = os.sysconf("SC_CLK_TCK")
# ours, auto: the thread choice made in the training process itself, as nanogpt/train.py makes it
AUTO_WRAPPER = (
    "import sys\n"
    "from nanogpt.threads import planned_threads\n"  # not apply_threads: torch must load after the waits are set
    "print(f'threads: {planned_threads(\"auto\", {n_embd}, {tokens})}', flush=True)\n"
    "from nanogpt.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@dataclass
class Arm:
    label: str
    side: str  # ours | nanoGPT
    env: dict[str, str]
    auto: bool = False
    runs: dict[str, list[dict]] = field(default_factory=lambda: {c: [] for c in CONDITIONS})


def default_ref() -> Path:
    """$NANOGPT_REF, else benchmarks/reference/nanoGPT (git-ignored), as benchmarks/compare_nanogpt.py."""
    if os.environ.get("NANOGPT_REF"):
        return Path(os.environ["NANOGPT_REF"])
    base = ROOT / "benchmarks" / "reference"
    return base / "nanoGPT" if (base / "nanoGPT" / "model.py").is_file() else base


def clean_env() -> dict[str, str]:
    """This environment without thread settings, so each arm sets only its own."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    return env | {"PYTHONUNBUFFERED": "1"}


def make_arms(cpus: int) -> list[Arm]:
    base = clean_env()
    spin = base | {threads.THREADS_ENV: str(cpus)}  # keeps `auto` from changing this arm once train.py calls it
    return [
        Arm("ours, 1 thread", "ours", base | {"OMP_NUM_THREADS": "1", threads.THREADS_ENV: "1"}),
        Arm("ours, auto (threads.py: threads and waits)", "ours", dict(base), auto=True),
        Arm(f"ours, {cpus} threads, PASSIVE", "ours", spin | threads.WAIT_POLICY),
        Arm(f"ours, {cpus} threads, spin (old default)", "ours", spin),
        Arm(f"nanoGPT, default ({cpus} threads, spin)", "nanoGPT", base),
    ]


def check(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"busy_machine: error: {' '.join(cmd)} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}")


def prepare(ref: Path, work: Path) -> tuple[Path, Path]:
    """Our prepared data, and a nanoGPT folder (links to its code, its prepare.py run on the same input.txt)."""
    src = work / "input.txt"  # checksummed: $NANOGPT_MIRROR's copy if set, else the bundled one (no network)
    check([sys.executable, "-m", "nanogpt.cli", "download", "--config", str(ROOT / "config.yaml"),
           "--name", "shakespeare_char", "--out", str(src)], ROOT)
    ours = work / "ours-data"
    check([sys.executable, "-m", "nanogpt.cli", "prepare", "--config", str(ROOT / "config.yaml"),
           "--name", "shakespeare_char", "--source", str(src), "--out-dir", str(ours)], ROOT)
    theirs = work / "nanoGPT"
    data = theirs / "data" / "shakespeare_char"
    data.mkdir(parents=True)
    for name in ("train.py", "model.py", "configurator.py", "config"):
        (theirs / name).symlink_to(ref / name)
    shutil.copy(ref / "data" / "shakespeare_char" / "prepare.py", data / "prepare.py")
    shutil.copy(src, data / "input.txt")  # present: prepare.py reads it instead of downloading
    check([sys.executable, "prepare.py"], data)
    return ours, theirs


def train_command(arm: Arm, iters: int, data: Path, ref_dir: Path, work: Path) -> tuple[list[str], Path]:
    """The command and folder of one training run, with evals only at the start and the end."""
    common = [f"--{k}={v}" for k, v in CPU_CONFIG.items()] + [
        "--device=cpu", "--eval_iters=20", "--log_interval=1", f"--max_iters={iters}",
        f"--lr_decay_iters={iters}", f"--eval_interval={iters}"]
    if arm.side == "nanoGPT":
        out = work / "ref-run"
        shutil.rmtree(out, ignore_errors=True)
        return [sys.executable, "train.py", "config/train_shakespeare_char.py", *common, "--compile=False",
                f"--out_dir={out}"], ref_dir
    out = work / "ours-run"
    shutil.rmtree(out, ignore_errors=True)  # a leftover checkpoint would make it resume
    tokens = CPU_CONFIG["batch_size"] * CPU_CONFIG["block_size"]
    head = ([sys.executable, "-c", AUTO_WRAPPER.replace("{n_embd}", str(CPU_CONFIG["n_embd"]))
             .replace("{tokens}", str(tokens))] if arm.auto else [sys.executable, "-m", "nanogpt.cli"])
    return [*head, "train", "--config", str(ROOT / "config.yaml"), "--name", "shakespeare_char_cpu",
            "--data-dir", str(data), "--out-dir", str(out), *common, "--compile=false"], ROOT


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat), to tell other users' load during a run."""
    idle, total = threads.cpu_times()
    return (total - idle) / CLK_TCK


def process_cpu_s(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(stat[11]) + int(stat[12])) / CLK_TCK  # utime, stime


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def start_load(cpus: list[int]) -> list[subprocess.Popen]:
    """One busy loop per core, each pinned to its core, in a session of its own: other work on the machine.

    Its own session puts it in its own scheduler group where the kernel groups by session (autogroup, on by
    default in desktop kernels and here), as another terminal's or program's work would be. Loops in the
    benchmark's session would share a group with the training threads, and fairness per thread would then hand
    a run with 2 passive threads twice the CPU of a 1-thread run (benchmarks/README.md, "A busy machine").
    """
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True,
                             preexec_fn=lambda c=c: os.sched_setaffinity(0, {c})) for c in cpus]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def run_once(cmd: list[str], cwd: Path, env: dict[str, str], limit_s: float, iters: int, log: Path,
             load: list[subprocess.Popen], late: tuple[float, list[int]] | None = None) -> dict:
    """One training run, stopped after limit_s: ms/iter median, wall (extrapolated when stopped), CPU use.
    `late`: (seconds, cores): busy loops on those cores start that long after the run (and end with it)."""
    busy0, cpu0 = machine_busy_s(), children_cpu_s()
    load0 = sum(process_cpu_s(p.pid) for p in load)
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            if late is not None:
                try:
                    proc.wait(timeout=late[0])
                except subprocess.TimeoutExpired:
                    load = start_load(late[1])
            proc.wait(timeout=max(0.0, limit_s - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        finally:
            late_cpu = sum(process_cpu_s(p.pid) for p in load) if late is not None else 0.0
            if late is not None:
                stop(load)  # reaped here: their CPU time joins this process's children's
    wall = time.perf_counter() - t0
    cpu = children_cpu_s() - cpu0 - late_cpu
    other = machine_busy_s() - busy0 - cpu - (sum(process_cpu_s(p.pid) for p in load) - load0)
    if late is not None:
        other = 0.0  # the late loops are gone: their CPU time is no longer readable, nor is other users' share
    text = log.read_text()
    lines = [(int(i), float(ms)) for i, ms in ITER_LINE.findall(text)]
    done = max((i for i, _ in lines), default=0)
    finished = proc.returncode == 0
    if not finished and proc.returncode != -9:
        sys.exit(f"busy_machine: error: {' '.join(cmd)} exited {proc.returncode}:\n{text[-3000:]}")
    times = [ms for i, ms in lines if i > 5]
    chosen = re.search(r"^threads: (\d+)", text, re.M)
    switched = re.search(r"^steps slowed from ([\d.]+) to ([\d.]+) ms", text, re.M)
    ms = statistics.median(times) if times else None
    rest = (iters - done) * (ms or 0.0) / 1000  # a stopped run: its remaining iterations at its median pace
    return {"finished": finished, "iters_done": done, "wall_s": wall if finished else wall + rest,
            "ms_per_iter": ms, "cpu_s": cpu, "cores_used": cpu / wall,
            "other_cores": max(other, 0.0) / wall, "threads": int(chosen.group(1)) if chosen else None,
            "switched_to_sleeping_waits": switched.group(0) if switched else None}


def median_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r[key] is not None]
    return statistics.median(values) if values else None


def fmt(value: float | None, spec: str = ".1f", approx: bool = False) -> str:
    return "-" if value is None else ("~" if approx else "") + format(value, spec)


def table(arms: list[Arm], iters: int) -> str:
    """Markdown: per arm and condition, ms/iter and wall (medians over rounds), and each loaded wall against the
    unloaded one."""
    rows = [f"| arm | unloaded ms/iter | unloaded wall s ({iters} it) | loaded ms/iter | loaded wall s "
            "| loaded / unloaded | loaded late wall s | late / unloaded |", "|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        walls = {c: median_of(arm.runs[c], "wall_s") for c in CONDITIONS}
        approx = {c: not all(r["finished"] for r in arm.runs[c]) for c in CONDITIONS}
        ratio = {c: walls[c] / walls["unloaded"] if walls[c] and walls["unloaded"] else None for c in CONDITIONS}
        rows.append(
            f"| {arm.label} | {fmt(median_of(arm.runs['unloaded'], 'ms_per_iter'))} | "
            f"{fmt(walls['unloaded'], approx=approx['unloaded'])} | {fmt(median_of(arm.runs['loaded'], 'ms_per_iter'))} | "
            f"{fmt(walls['loaded'], approx=approx['loaded'])} | {fmt(ratio['loaded'], '.2f')}x | "
            f"{fmt(walls['loaded late'], approx=approx['loaded late'])} | {fmt(ratio['loaded late'], '.2f')}x |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=300, help="training iterations per run (default 300)")
    p.add_argument("--rounds", type=int, default=1, help="runs per arm and condition, arm order rotated (default 1)")
    p.add_argument("--cap-factor", type=float, default=3.0,
                   help="stop a run after this many times the same condition's 1-thread wall time (default 3)")
    p.add_argument("--max-run-s", type=float, default=150.0, help="stop any run after this long (default 150)")
    p.add_argument("--late-s", type=float, default=4.0,
                   help="'loaded late': the loops start this long after the run (default 4 s: past its first steps)")
    p.add_argument("--ref", type=Path, default=default_ref(), help="nanoGPT checkout (default: as compare_nanogpt.py)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "busy_machine.json")
    args = p.parse_args()
    if not (args.ref / "train.py").is_file():
        sys.exit(f"busy_machine: error: --ref {str(args.ref)!r} has no train.py: expected a nanoGPT checkout")
    cpus = sorted(os.sched_getaffinity(0))
    arms = make_arms(len(cpus))
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="busy-machine-") as tmp:
        work = Path(tmp)
        data, ref_dir = prepare(args.ref.resolve(), work)
        for r in range(args.rounds):
            for condition in CONDITIONS:
                load = start_load(cpus) if condition == "loaded" else []
                late = (args.late_s, cpus) if condition == "loaded late" else None
                try:
                    one_wall = None
                    order = arms[:1] + arms[1:][r % (len(arms) - 1):] + arms[1:][:r % (len(arms) - 1)]
                    for arm in order:  # 1 thread first: it sets the cap of the others
                        limit = args.max_run_s if one_wall is None else min(args.max_run_s,
                                                                            args.cap_factor * one_wall)
                        cmd, cwd = train_command(arm, args.iters, data, ref_dir, work)
                        res = run_once(cmd, cwd, arm.env, limit, args.iters, work / "train.log", load, late)
                        res["load_avg_1m"] = os.getloadavg()[0]
                        one_wall = one_wall or res["wall_s"]
                        arm.runs[condition].append(res)
                        print(f"[{time.perf_counter() - t_start:6.0f}s] {condition:<8} {arm.label:<40} "
                              f"{fmt(res['ms_per_iter'])} ms/iter, wall {fmt(res['wall_s'], approx=not res['finished'])}"
                              f" s, iters {res['iters_done']}, cores used {res['cores_used']:.2f}, other users' load "
                              f"{res['other_cores']:.2f} cores",
                              flush=True)
                finally:
                    stop(load)
    other = {c: statistics.median(r["other_cores"] for a in arms for r in a.runs[c]) for c in ("unloaded", "loaded")}
    switched = [r["switched_to_sleeping_waits"] for r in arms[1].runs["loaded late"]]
    auto_threads = arms[1].runs["unloaded"][0]["threads"]
    print(f"\n{len(cpus)} CPUs, {args.iters} iters per run, {args.rounds} round(s), total "
          f"{time.perf_counter() - t_start:.0f} s; ours auto chose {auto_threads} thread(s); other users' load "
          f"(median, cores busy besides this benchmark): unloaded {other['unloaded']:.2f}, loaded {other['loaded']:.2f}\n")
    print(table(arms, args.iters))
    print(f"\nours auto, loaded late: {switched}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpus": len(cpus), "iters": args.iters, "rounds": args.rounds,
                                    "other_users_cores": other, "auto_threads": auto_threads,
                                    "arms": {a.label: a.runs for a in arms}}, indent=2))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
