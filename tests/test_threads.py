"""nanogpt/threads.py: torch threads from the CPUs a process was given and the model's size, and the OpenMP wait
policy (fast alone, and no collapse on a busy machine). benchmarks/busy_machine.py measures the effect; the one training
here checks that a resumed run keeps its recorded thread count."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, prepared_shakespeare_char, tiny_config
from nanogpt import threads
from nanogpt.config import resolve_run
from nanogpt.errors import ConfigError
from nanogpt.train import train

CPUS = len(os.sched_getaffinity(0))


def write_files(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "150000 100000\n"}, 1.5),  # cgroup v2: docker --cpus=1.5
    ({"cpu.max": "max 100000\n"}, None),  # v2, no limit
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, no limit
    ({"cpu.max": "garbage\n"}, None),
    ({"cpu.max": "abc 100000\n"}, None),
    ({}, None),  # no cgroup files at all (macOS, old kernels)
])
def test_cgroup_cpu_limit(tmp_path, files, expected):
    assert threads.cgroup_cpu_limit(write_files(tmp_path, files)) == expected


def test_available_cpus_is_affinity_without_limits(tmp_path):
    assert threads.available_cpus({}, tmp_path) == CPUS


def test_available_cpus_respects_quota_omp_and_workers(tmp_path):
    quota = write_files(tmp_path / "q", {"cpu.max": "50000 100000\n"})  # half a CPU still gets one thread
    assert threads.available_cpus({}, quota) == 1
    assert threads.available_cpus({"OMP_NUM_THREADS": "1"}, tmp_path) == 1  # Snakemake's `threads: 1`
    assert threads.available_cpus({"OMP_NUM_THREADS": "64"}, tmp_path) == CPUS  # never more than the cores
    assert threads.available_cpus({"OMP_NUM_THREADS": "zero"}, tmp_path) == CPUS  # unreadable: ignored
    # torchrun's workers on one node share its cores: 2 workers on 2 cores get one thread each, not two
    assert threads.available_cpus({"LOCAL_WORLD_SIZE": str(CPUS)}, tmp_path) == 1
    assert threads.available_cpus({"LOCAL_WORLD_SIZE": str(CPUS * 4)}, tmp_path) == 1


def run_threads(name: str, available: int, requested: int | str | None = "auto") -> int:
    """choose_threads for a run of config.yaml, as training would call it."""
    entry = yaml.safe_load((REPO / "config.yaml").read_text())["runs"][name]
    run = resolve_run(entry, name)
    return threads.choose_threads(requested, run.model.n_embd, run.train.batch_size * run.model.block_size,
                                  available)


def test_cpu_config_trains_on_every_core_of_a_laptop():
    """The default run's matmuls (12 x 64 tokens, 128 wide: 12.6M multiply-adds) use 2 cores, not 64."""
    assert run_threads("shakespeare_char_cpu", available=1) == 1
    assert run_threads("shakespeare_char_cpu", available=2) == 2
    assert run_threads("shakespeare_char_cpu", available=64) == 3


def test_narrow_models_train_on_one_thread():
    """64 wide at the CPU config's tokens (3.1M multiply-adds) was faster on one thread than on two."""
    assert threads.choose_threads("auto", 64, 12 * 64, available=2) == 1


def test_large_models_use_every_available_cpu():
    assert run_threads("shakespeare_char", available=2) == 2  # nanoGPT's GPU config, trained on a CPU
    assert run_threads("shakespeare_char", available=8) == 8
    assert run_threads("gpt2_124m", available=16) == 16
    assert run_threads("gpt2_124m", available=1) == 1


def test_threads_grow_with_matmul_work():
    per_thread = threads.MATMUL_WORK_PER_THREAD
    assert threads.choose_threads(None, 64, 768, 16) == 1
    assert threads.choose_threads("auto", 64, per_thread // 64**2 * 3, 16) == 3
    assert threads.choose_threads("auto", 64, per_thread // 64**2 * 3, 2) == 2


def test_explicit_threads_win():
    assert run_threads("shakespeare_char_cpu", available=2, requested=2) == 2
    assert threads.choose_threads(4, 128, 768, available=2) == 4  # the user's call, even past the cores


@pytest.mark.parametrize("bad", [0, -1, "two", 1.5, True])
def test_bad_requests_are_config_errors(bad):
    with pytest.raises(ConfigError, match="threads="):
        threads.choose_threads(bad, 128, 768, 2)


@pytest.fixture
def torch_threads():
    """Restores torch's thread count after a test changes it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_apply_threads_sets_torch(torch_threads):
    assert threads.apply_threads("auto", 64, 768, environ={}) == 1
    assert torch.get_num_threads() == 1
    assert threads.apply_threads(2, 128, 768, environ={}) == 2
    assert torch.get_num_threads() == 2


def test_env_overrides_auto_but_not_an_explicit_number(torch_threads):
    env = {threads.THREADS_ENV: "2"}
    assert threads.apply_threads("auto", 128, 768, environ=env) == 2
    assert threads.apply_threads(None, 128, 768, environ=env) == 2
    assert threads.apply_threads(1, 128, 768, environ=env) == 1
    with pytest.raises(ConfigError, match="NANOGPT_THREADS='many'"):
        threads.apply_threads("auto", 128, 768, environ={threads.THREADS_ENV: "many"})
    assert threads.apply_threads("auto", 64, 768, environ={threads.THREADS_ENV: ""}) == 1  # empty: unset


def test_set_wait_policy_keeps_the_users_choice():
    env: dict[str, str] = {}
    threads.set_wait_policy(environ=env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", threads.WAITS_ENV: "passive"}
    threads.set_wait_policy(threads.SPIN, env)  # ours to change: spinning replaces passive, not beside it
    assert env == {"GOMP_SPINCOUNT": str(threads.SPIN_COUNT), threads.WAITS_ENV: "spin"}
    for mine in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "10000"}, {"OMP_WAIT_POLICY": "PASSIVE"}):
        env = dict(mine)
        threads.set_wait_policy(threads.SPIN, env)
        assert env == mine


def test_a_contended_process_chain_never_spins_again():
    env = {threads.WAITS_ENV: threads.CONTENDED, "OMP_WAIT_POLICY": "PASSIVE"}
    assert threads.choose_waits(2, env, idle=lambda: 2.0) == threads.CONTENDED
    threads.set_wait_policy(threads.SPIN, env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", threads.WAITS_ENV: threads.CONTENDED}
    assert "shared" in threads.describe_waits(env)


@pytest.mark.parametrize("wanted, idle, waits", [
    (2, 2.0, "spin"), (2, 1.6, "spin"), (2, 1.4, "passive"), (2, 1.0, "passive"), (2, 0.3, "passive"),
    (4, 3.6, "spin"), (4, 3.0, "passive"),  # a 4-thread run on 4 CPUs, one of them taken
    (2, None, "passive"),  # no /proc/stat: do not guess
])
def test_spin_only_when_every_thread_finds_an_idle_cpu(wanted, idle, waits):
    assert threads.choose_waits(wanted, {}, idle=lambda: idle) == waits


def test_one_thread_never_probes():
    def probe():
        raise AssertionError("a single thread waits for no other: nothing to measure")
    assert threads.choose_waits(1, {}, idle=probe) == threads.PASSIVE


def test_idle_cpus_from_the_kernels_counters(tmp_path):
    stat = tmp_path / "stat"
    lines = iter(["cpu  100 0 50 1000 10 0 0 0 0 0\ncpu0 ...\n",  # user nice system idle iowait irq softirq steal
                  "cpu  200 0 100 1300 20 0 0 30 0 0\ncpu0 ...\n",  # +100 +50 busy, +310 idle, +30 stolen: 490
                  "cpu  200 0 100 1300 20 0 0 30 0 0\ncpu0 ...\n",  # a second window:
                  "cpu  210 0 100 1390 20 0 0 30 0 0\ncpu0 ...\n"])  # +10 busy, +90 idle: the idlest wins

    def sample():
        stat.write_text(next(lines))
        return threads.cpu_times(stat)

    assert threads.idle_cpus(0, sample, cpus=2) == pytest.approx(2 * 90 / 100)  # not the first window's 1.27
    lines = iter(["cpu  100 0 50 1000 10 0 0 0 0 0\n", "cpu  200 0 100 1300 20 0 0 30 0 0\n"])
    assert threads.idle_cpus(0, sample, cpus=2, windows=1) == pytest.approx(2 * 310 / 490)
    stat.write_text("intr 1 2 3\n")
    assert threads.cpu_times(stat) is None and threads.cpu_times(tmp_path / "missing") is None
    if Path("/proc/stat").exists():
        measured = threads.idle_cpus(0.05)
        assert measured is not None and 0 <= measured <= os.cpu_count() + 0.01


def test_spin_guard_sees_a_slowdown_not_a_hiccup():
    steady = [0.030, 0.031, 0.029] * 20
    guard = threads.SpinGuard()
    assert not any(guard.contended(t) for t in [0.5] * guard.SKIP + steady)  # slow first steps are skipped
    assert guard.pace == pytest.approx(0.030, rel=0.05)
    assert not any(guard.contended(t) for t in [0.030] * 4 + [0.9] * 3 + [0.030] * 10)  # one eval-sized stall
    assert not any(guard.contended(0.070) for _ in range(20))  # 2.3x: not yet
    hits = [guard.contended(0.4) for _ in range(guard.WINDOW)]
    assert hits.index(True) == guard.WINDOW // 2 - 1  # as soon as most of the window is slow
    assert guard.now() == pytest.approx(0.4)


@pytest.mark.skipif(sys.platform != "linux", reason="Linux wheels bundle libgomp; macOS ones libomp")
def test_torch_runs_on_gnu_openmp():
    """The wait policy above is libgomp's (OMP_WAIT_POLICY, GOMP_SPINCOUNT); an Intel OpenMP build of torch
    would read KMP_BLOCKTIME instead, and threads.py would need it too."""
    lib = Path(torch.__file__).parent / "lib"
    assert "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()
    assert list(lib.glob("libgomp*")) and not list(lib.glob("libiomp*"))



@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """tiny Shakespeare, char-level, prepared from the bundled copy."""
    return prepared_shakespeare_char(tmp_path_factory.mktemp("data"))


def test_resume_keeps_the_recorded_threads_and_stays_bit_identical(data_dir, tmp_path, monkeypatch):
    """8 iterations on 2 threads, resumed to 12 where auto would pick 1 thread, end with the weights of 12 in
    one go on 2 threads: the checkpoint's thread count wins (float results depend on it)."""
    entry = copy.deepcopy(tiny_config()["runs"]["tiny"])
    entry["train"].update(max_iters=12, lr_decay_iters=12, eval_interval=8, checkpoint_interval=4)
    monkeypatch.setenv(threads.THREADS_ENV, "2")
    train(resolve_run(entry, "tiny"), data_dir, tmp_path / "whole", log=lambda *a: None)
    first = {**entry, "train": {**entry["train"], "max_iters": 8}}
    train(resolve_run(first, "tiny"), data_dir, tmp_path / "two", log=lambda *a: None)
    assert torch.load(tmp_path / "two" / "model.pt", weights_only=True)["cpu_threads"] == 2
    monkeypatch.setenv(threads.THREADS_ENV, "1")
    log: list[str] = []
    train(resolve_run(entry, "tiny"), data_dir, tmp_path / "two", log=log.append)
    assert any(line.startswith("threads: 2, as this run's checkpoint recorded") for line in log)
    assert torch.get_num_threads() == 2
    whole, resumed = (torch.load(tmp_path / d / "model.pt", weights_only=True) for d in ("whole", "two"))
    assert resumed["cpu_threads"] == 2
    assert all(torch.equal(whole["model"][k], resumed["model"][k]) for k in whole["model"])


CONTENTION_AT_STEP = """
import sys
from nanogpt import threads

threads.idle_cpus = lambda *args, **kwargs: 64.0  # the CPUs are free at start: the run spins
measure = threads.SpinGuard.contended


def contended(self, seconds):  # another process takes the CPUs at the 20th step
    measure(self, seconds)
    return self.seen == 20


threads.SpinGuard.contended = contended
from nanogpt.cli import main

sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("launcher", [[], ["-m", "nanogpt.launch", "--run-device=cpu", "--standalone",
                                           "--nproc_per_node=1"]], ids=["alone", "torchrun"])
def test_a_spinning_run_that_meets_contention_goes_on_sleeping_with_the_same_weights(data_dir, tmp_path, launcher):
    """`nanogpt train` spins while the CPUs are free; when its steps slow down it checkpoints and replaces
    itself by the same command with sleeping waits, which resumes: the run ends with the weights of a run that
    slept throughout (same thread count), and its log says what happened. Alone, and as the only worker of the
    torchrun the pipeline starts."""
    entry = copy.deepcopy(tiny_config()["runs"]["tiny"])
    entry["train"].update(max_iters=30, lr_decay_iters=30, eval_interval=30, checkpoint_interval=None,
                          log_interval=10)
    spec = json.dumps({**entry, "dataset": "shakespeare_char"})
    (tmp_path / "contention.py").write_text(CONTENTION_AT_STEP)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", threads.WAITS_ENV)}
    env.update({threads.THREADS_ENV: "2", "PYTHONPATH": str(REPO)})
    runs = {}
    for name, cmd, extra in (("spun", [*launcher, str(tmp_path / "contention.py")], {}),
                             ("slept", ["-m", "nanogpt.cli"], {"OMP_WAIT_POLICY": "PASSIVE"})):
        proc = subprocess.run([sys.executable, *cmd, "train", "--spec", spec, "--name", "tiny",
                               "--data-dir", str(data_dir), "--out-dir", str(tmp_path / name)],
                              env=env | extra, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = proc.stdout + proc.stderr
    out = runs["spun"]
    assert "2 threads, spinning waits" in out and "2 threads, sleeping waits (the CPUs are shared)" in out
    assert "another process is using the CPUs. Checkpoint saved at iter 20" in out
    assert "resum" in out.split("Checkpoint saved at iter 20")[1].lower()
    assert "waits as set: OMP_WAIT_POLICY=PASSIVE" in runs["slept"]
    spun, slept = (torch.load(tmp_path / name / "model.pt", weights_only=True) for name in ("spun", "slept"))
    assert spun["iter_num"] == slept["iter_num"] == 30 and spun["cpu_threads"] == slept["cpu_threads"] == 2
    assert all(torch.equal(spun["model"][k], slept["model"][k]) for k in slept["model"])


def test_step_watch_raises_once_the_steps_slow_down():
    """A sampling process's StepWatch: the gap between two calls is a step; a hiccup passes, a slowdown of the
    last WINDOW steps to SLOWDOWN x the first ones raises ContendedError, saying from what to what."""
    now = [0.0]
    watch = threads.StepWatch(clock=lambda: now[0])
    guard = threads.SpinGuard
    for gap in [0.010] * (guard.SKIP + guard.BASELINE) + [0.100] + [0.010] * guard.WINDOW:
        now[0] += gap
        watch()
    with pytest.raises(threads.ContendedError, match=r"steps slowed from 10\.0 to 30\.0 ms: another process"):
        for _ in range(guard.WINDOW):
            now[0] += 0.030
            watch()


@pytest.mark.skipif(threads.available_cpus({}) < 2, reason="spinning waits need two CPUs")
def test_a_spinning_sampler_that_meets_contention_draws_the_same_samples_sleeping(data_dir, tmp_path):
    """`nanogpt sample --out` spins while the CPUs are free; when its tokens slow down it replaces itself by the
    same command with sleeping waits, which writes the samples a sampler that slept throughout writes. Streamed
    text cannot be drawn again: --stream never spins."""
    entry = copy.deepcopy(tiny_config()["runs"]["tiny"])
    entry["train"].update(max_iters=2, lr_decay_iters=2, eval_interval=2, eval_iters=1, checkpoint_interval=None)
    train(resolve_run(entry, "tiny"), data_dir, tmp_path / "run", log=lambda *a: None)
    (tmp_path / "contention.py").write_text(CONTENTION_AT_STEP)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", threads.WAITS_ENV)}
    env.update({"OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)})
    args = ["sample", "--checkpoint", str(tmp_path / "run" / "model.pt"), "--num-samples", "2",
            "--max-new-tokens", "40", "--device", "cpu"]
    runs = {}
    for name, cmd, extra in (("spun", [str(tmp_path / "contention.py")], ["--out", str(tmp_path / "spun.txt")]),
                             ("slept", ["-m", "nanogpt.cli"], ["--out", str(tmp_path / "slept.txt")]),
                             ("streamed", [str(tmp_path / "contention.py")], ["--stream"])):
        proc = subprocess.run([sys.executable, *cmd, *args, *extra], env=env | {"OMP_WAIT_POLICY": "PASSIVE"}
                              if name == "slept" else env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = proc
    spun = runs["spun"].stderr
    assert "steps slowed from" in spun and "drawing the samples again in a fresh process" in spun
    assert "on 2 CPU threads, sleeping waits (the CPUs are shared)" in spun
    assert (tmp_path / "spun.txt").read_text() == (tmp_path / "slept.txt").read_text()
    assert "waits as set: OMP_WAIT_POLICY=PASSIVE" in runs["slept"].stderr
    assert "on 2 CPU threads, sleeping waits" in runs["streamed"].stderr
    assert "slowed" not in runs["streamed"].stderr
    assert runs["streamed"].stdout.rstrip("\n") == (tmp_path / "slept.txt").read_text().rstrip("\n")
