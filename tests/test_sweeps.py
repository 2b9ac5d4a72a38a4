"""Sweeps: expansion into named runs, validation, the power-law fit, the summary, and a tiny sweep end to end."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from conftest import make_pipeline, run_snakemake, tiny_config, write_config
from nanogpt.config import resolve_run
from nanogpt.errors import ConfigError
from nanogpt.names import NAME_PATTERN
from nanogpt.pipeline.entries import Pipeline, sweeps
from nanogpt.pipeline.jobs import Jobs
from nanogpt.report.pages import sweeps as sweep_summary


def with_sweeps(sweep_cfg: dict, targets: list[str] | None = None) -> dict:
    """tiny_config plus `sweeps:`; the default target builds only the named sweeps."""
    config = tiny_config()
    config["sweeps"] = sweep_cfg
    config["targets"] = {"runs": [], "samples": [], "evals": [], "sweeps": targets or []}
    config["summary"] = {"enabled": False}
    return config


def point_names(config: dict) -> list[str]:
    p = Pipeline(config)
    p.check()
    return sorted(set(p.runs()) - set(config["runs"]))


def planned_jobs(dry_run_output: str) -> dict[str, int]:
    """The 'Job stats' table of `snakemake -n` as {rule: count}."""
    if "Nothing to be done" in dry_run_output:
        return {}
    table = dry_run_output.split("Job stats:", 1)[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] not in ("total", "all")}


# ---- expansion and names ---------------------------------------------------------------------------------------
def test_grid_points_are_runs_with_stable_valid_names():
    grid = {"learning_rate": [1.0e-3, 3.0e-3], "n_embd": [16, 32]}
    names = point_names(with_sweeps({"lr": {"base": "tiny", "grid": grid}}))
    assert names == ["lr-learning_rate_0.001-n_embd_16", "lr-learning_rate_0.001-n_embd_32",
                     "lr-learning_rate_0.003-n_embd_16", "lr-learning_rate_0.003-n_embd_32"]
    assert all(re.fullmatch(NAME_PATTERN, n) for n in names)
    # the YAML's key order and value order do not change the names
    reordered = {"n_embd": [32, 16], "learning_rate": [3.0e-3, 1.0e-3]}
    assert point_names(with_sweeps({"lr": {"base": "tiny", "grid": reordered}})) == names
    p = Pipeline(with_sweeps({"lr": {"base": "tiny", "grid": grid}}))
    run = p.run("lr-learning_rate_0.003-n_embd_16")
    assert (run.train.learning_rate, run.model.n_embd, run.train.max_iters) == (3e-3, 16, 20)  # base's max_iters
    assert Jobs(p).run_resources("lr-learning_rate_0.003-n_embd_16")["cpus_per_task"] == 1


def test_points_list_dotted_keys_and_fixed_settings():
    sweep = {"base": "tiny", "points": [{"train.learning_rate": 2.0e-3}, {"n_layer": 2, "n_head": 4}],
             "fixed": {"max_iters": 7, "resources.cpus_per_task": 2}}
    p = Pipeline(with_sweeps({"d": sweep}))
    p.check()
    assert sorted(p.sweep("d").keys) == ["n_head", "n_layer", "train.learning_rate"]
    a, b = p.run("d-train.learning_rate_0.002"), p.run("d-n_head_4-n_layer_2")
    assert (a.train.learning_rate, a.train.max_iters, a.model.n_layer) == (2e-3, 7, 1)
    assert (b.train.learning_rate, b.model.n_head, b.model.n_layer) == (1e-3, 4, 2)
    assert Jobs(p).run_resources("d-n_head_4-n_layer_2")["cpus_per_task"] == 2
    # the summary shows every swept setting of every point, the base's value where a point does not set it
    assert p.sweep("d").points[0].settings == {"n_head": 2, "n_layer": 1, "train.learning_rate": 2e-3}


def test_awkward_values_get_valid_distinct_names():
    long_values = {f"k{i}": 1.0e-5 * (i + 1) for i in range(12)}
    assert len(sweeps.point_name("s", long_values)) == 100
    tweaked = dict(long_values, k11=9.9)  # the difference is past the truncation: the hash tells them apart
    assert sweeps.point_name("s", long_values) != sweeps.point_name("s", tweaked)
    odd = [sweeps.point_name("s", {"init_from": v}) for v in ("/a/b c.pt", "/a/b_c.pt", "a-b", "a_b")]
    assert len(set(odd)) == 4 and all(re.fullmatch(NAME_PATTERN, n) for n in odd + [sweeps.point_name("s", tweaked)])
    assert sweeps.point_name("s", {"x": 1.0e20, "y": True, "z": None}) == "s-x_1e20-y_true-z_null"


def test_scaling_iterations_follow_each_size():
    sizes = [{"n_layer": 1, "n_embd": 16}, {"n_layer": 1, "n_embd": 32}, {"n_layer": 2, "n_embd": 32}]
    p = Pipeline(with_sweeps({"s": {"base": "tiny", "points": sizes, "scaling": {"tokens_per_param": 20}},
                              "c": {"base": "tiny", "points": sizes, "scaling": {"flops": 6.0e9}}}))
    p.check()
    for point, size in zip(p.sweep("s").points, sizes, strict=True):
        n = 12 * size["n_layer"] * size["n_embd"] ** 2
        assert point.params == n and point.tokens_per_iter == 4 * 32
        run = p.run(point.run)
        assert run.train.max_iters == run.train.lr_decay_iters == round(20 * n / 128)
    assert [p.run(pt.run).train.max_iters for pt in p.sweep("c").points] == [
        round(6.0e9 / (6 * 12 * s["n_layer"] * s["n_embd"] ** 2) / 128) for s in sizes]
    assert p.sweep_files("s")[-2:] == ["results/sweeps/s/fit.json", "results/sweeps/s/scaling.png"]
    assert p.sweep_names_pattern(scaling=True) == "s|c" and p.sweep_names_pattern(scaling=False) == "(?!)"


# ---- validation ------------------------------------------------------------------------------------------------
BAD = [
    ({"base": "tiny", "gird": {"learning_rate": [1]}}, r"unknown key sweeps\.s\.gird \(did you mean 'grid'\?\)"),
    ({"base": "tiny", "grid": {"lerning_rate": [1.0]}}, r"unknown setting 'lerning_rate' \(did you mean 'learning_rate'"),
    ({"base": "tiny", "grid": {"train.lr": [1.0]}}, r"sweeps\.s: unknown setting 'train\.lr'"),
    ({"base": "tiny", "grid": {"learning_rate": []}}, r"sweeps\.s\.grid\.learning_rate is an empty list"),
    ({"base": "tiny", "grid": {"learning_rate": 0.1}}, r"grid\.learning_rate=0\.1: expected a list of values"),
    ({"base": "nope", "grid": {"learning_rate": [0.1]}}, r"sweeps\.s\.base='nope': not a run, expected one of \['tiny'\]"),
    ({"base": "tiny"}, r"sweeps\.s: no points"),
    ({"base": "tiny", "grid": {"n_head": [3]}}, r"sweeps\.s: point s-n_head_3: .*not divisible by model\.n_head=3"),
    ({"base": "tiny", "grid": {"learning_rate": [-1.0]}}, r"point s-learning_rate_-1\.0: .*expected a number in \(0, 10\]"),
    ({"base": "tiny", "points": [{"learning_rate": 1.0e-3}, {"train.learning_rate": 0.001}]},
     r"points 's-learning_rate_0\.001' and 's-train\.learning_rate_0\.001' are the same run"),
    ({"base": "tiny", "grid": {"learning_rate": [0.1]}, "fixed": {"train.learning_rate": 0.2}}, r"given twice"),
    ({"base": "tiny", "grid": {"n_embd": [16, 32, 64], "max_iters": [5]}, "scaling": {"tokens_per_param": 20}},
     r"'max_iters' is set by the scaling study"),
    ({"base": "tiny", "grid": {"n_embd": [16, 32]}, "scaling": {"tokens_per_param": 20}}, r"expected at least 3"),
    ({"base": "tiny", "grid": {"n_embd": [4, 8, 16]}, "scaling": {"tokens_per_param": 1}},
     r"point s-n_embd_4: warmup_iters=2 is not below its 2 iterations"),
    ({"base": "tiny", "grid": {"n_embd": [16]}, "scaling": {"tokens": 20}}, r"sweeps\.s\.scaling=.*expected one of"),
    ({"base": "tiny", "grid": {"learning_rate": [[0.1]]}}, r"expected a single value"),
    ({"base": "tiny", "grid": {"n_embd": [16]}, "fixed": {"resources.cpus_per_task": 0}},
     r"resources\.cpus_per_task=0: expected an integer in \[1, 4096\], or null"),
]


@pytest.mark.parametrize(("sweep", "message"), BAD)
def test_bad_sweeps_are_one_line_errors(sweep, message):
    with pytest.raises(ConfigError, match=message) as e:
        Pipeline(with_sweeps({"s": sweep})).check()
    assert "\n" not in str(e.value)


def test_point_names_do_not_clash():
    config = with_sweeps({"s": {"base": "tiny", "grid": {"learning_rate": [0.002]}}})
    config["runs"]["s-learning_rate_0.002"] = config["runs"]["tiny"]
    with pytest.raises(ConfigError, match=r"point 's-learning_rate_0\.002' has the name of a run under `runs`"):
        Pipeline(config).check()
    config = with_sweeps({"s": {"base": "tiny", "grid": {"learning_rate": [0.002]}}}, targets=["t"])
    with pytest.raises(ConfigError, match=r"targets\.sweeps: 't' is not defined under `sweeps`"):
        Pipeline(config).check()


# ---- the fit ---------------------------------------------------------------------------------------------------
def test_power_law_fit_recovers_known_exponent():
    n = np.logspace(3, 6, 7)
    exact = sweep_summary.fit_power_law(n, 1.5 + 30 * n**-0.3)
    assert exact["alpha"] == pytest.approx(0.3, rel=1e-6) and exact["E"] == pytest.approx(1.5, rel=1e-6)
    assert exact["A"] == pytest.approx(30, rel=1e-5) and exact["rmse"] < 1e-9
    noisy = 1.2 + 8 * n**-0.35 * (1 + 0.001 * np.random.default_rng(0).standard_normal(n.size))
    fit = sweep_summary.fit_power_law(n, noisy)
    assert fit["alpha"] == pytest.approx(0.35, rel=0.02) and fit["E"] == pytest.approx(1.2, rel=0.02)
    assert len(fit["residuals"]) == 7 and max(map(abs, fit["residuals"])) < 0.01


# ---- the summary, from made-up runs (no training) --------------------------------------------------------------
def fake_runs(runs_dir, spec: dict, law) -> None:
    """metrics.json and TensorBoard val-loss events for each point, with final losses law(params)."""
    from torch.utils.tensorboard import SummaryWriter

    for p in spec["points"]:
        out = runs_dir / p["run"]
        final = law(p["params"])
        with SummaryWriter(log_dir=str(out / "tb")) as w:
            for step, loss in ((0, 4.2), (p["max_iters"] // 2, final + 0.3), (p["max_iters"], final)):
                w.add_scalar("loss/val", loss, step)
        settings = resolve_run(p["trajectory"], p["run"]).to_dict()  # what the point's training records
        (out / "metrics.json").write_text(json.dumps({"iters": p["max_iters"], "val_loss": final,
                                                      "best_val_loss": final, "tokens_per_sec": 1e4,
                                                      "wall_time_s": 3.0, "provenance": {"config": settings}}))


def test_scaling_summary_table_plots_fit_and_hparams(tmp_path):
    sizes = [{"n_layer": layers, "n_embd": width} for layers in (1, 2) for width in (16, 32)]
    p = Pipeline(with_sweeps({"sc": {"base": "tiny", "points": sizes, "scaling": {"tokens_per_param": 2}}}))
    spec = json.loads(p.sweep_spec("sc"))
    fake_runs(tmp_path / "runs", spec, lambda n: 1.1 + 6.0 * n**-0.25)
    done = sweep_summary.summarize(spec, tmp_path / "runs", tmp_path / "out")

    fit = json.loads((tmp_path / "out" / "fit.json").read_text())
    assert fit["alpha"] == pytest.approx(0.25, rel=0.02) and fit["E"] == pytest.approx(1.1, rel=0.02)
    rows = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("run,n_embd,n_layer,params,") and len(rows) == 5
    best = [r for r in done["rows"] if r["best"]]
    assert [r["params"] for r in best] == [12 * 2 * 32**2]  # the largest model has the lowest loss
    md = (tmp_path / "out" / "summary.md").read_text()
    assert f"alpha = {fit['alpha']:.4f}" in md and f"**{best[0]['run']}**" in md
    assert all(md.count(r["run"]) == 2 for r in done["rows"])  # in the table and in the residuals
    # every point is in every plot
    assert sorted(done["curves"]) == sorted(r["run"] for r in done["rows"])
    assert all(len(series) == 3 for series in done["curves"].values())
    assert sorted(done["val_loss"]["n_embd"]) == ["n_layer=1", "n_layer=2"]
    assert sum(len(s) for s in done["val_loss"]["n_layer"].values()) == 4
    assert len(done["scaling"]["points"]) == 4 and len(done["scaling"]["fit"]) == 100
    for png in ("val_loss.png", "curves.png", "scaling.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert done["hparams"] == 4 and hparams_runs(tmp_path / "out" / "tb") == sorted(r["run"] for r in done["rows"])


def hparams_runs(tb_dir) -> list[str]:
    """The point folders under tb/ whose events carry a TensorBoard HParams summary."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found = []
    for d in sorted(p for p in tb_dir.iterdir() if p.is_dir()):  # (snakemake keeps a timestamp file there)
        acc = EventAccumulator(str(d))
        acc.Reload()
        if "hparams" in acc.Tags().get("tensors", []) or acc.PluginTagToContent("hparams"):
            found.append(d.name)
    return found


# ---- end to end through snakemake ------------------------------------------------------------------------------
def test_tiny_sweep_end_to_end_and_exact_reruns(tmp_path):
    def config(rates: list[float]) -> dict:
        sweep = {"base": "tiny", "grid": {"learning_rate": rates},
                 "fixed": {"max_iters": 10, "lr_decay_iters": 10, "eval_interval": 5}}
        return with_sweeps({"lr": sweep}, targets=["lr"])

    workdir = make_pipeline(tmp_path / "pipeline", config([1.0e-3, 3.0e-3]))
    run_snakemake(workdir)
    out = workdir / "results" / "sweeps" / "lr"
    names = ["lr-learning_rate_0.001", "lr-learning_rate_0.003"]
    rows = [line.split(",") for line in (out / "summary.csv").read_text().splitlines()]
    assert rows[0][:3] == ["run", "learning_rate", "params"]
    assert [(r[0], float(r[1]), int(r[3])) for r in rows[1:]] == [(names[0], 1e-3, 10), (names[1], 3e-3, 10)]
    for name in names:
        metrics = json.loads((workdir / "results" / "runs" / name / "metrics.json").read_text())
        assert metrics["iters"] == 10 and metrics["provenance"]["config"]["train"]["learning_rate"] in (1e-3, 3e-3)
        assert (workdir / "results" / "plots" / f"{name}_loss.png").is_file()
    assert hparams_runs(out / "tb") == names
    # the plots hold every point: one val-loss curve per point (evals at 0, 5, 10), both on the lr axis
    spec = json.loads(Pipeline(config([1.0e-3, 3.0e-3])).sweep_spec("lr"))
    done = sweep_summary.summarize(spec, workdir / "results" / "runs", tmp_path / "again")
    assert {run: [s for s, _ in pts] for run, pts in done["curves"].items()} == {n: [0, 5, 10] for n in names}
    assert [x for x, _ in done["val_loss"]["learning_rate"]["all points"]] == [1e-3, 3e-3]
    assert planned_jobs(run_snakemake(workdir, "-n").stdout) == {}

    # a changed value trains exactly the new point, then the summary
    write_config(workdir, config([1.0e-3, 2.0e-3]))
    plan = run_snakemake(workdir, "-n").stdout
    assert planned_jobs(plan) == {"train": 1, "loss_curve": 1, "sweep": 1}
    assert "wildcards: run=lr-learning_rate_0.002" in plan
    # a removed value keeps its run on disk and drops out of the summary, with nothing trained
    write_config(workdir, config([1.0e-3]))
    assert planned_jobs(run_snakemake(workdir, "-n").stdout) == {"sweep": 1}
    run_snakemake(workdir)
    assert len((out / "summary.csv").read_text().splitlines()) == 2
    assert (workdir / "results" / "runs" / names[1] / "model.pt").is_file()


def test_bad_sweep_stops_snakemake_before_any_job(tmp_path):
    workdir = make_pipeline(tmp_path / "pipeline", with_sweeps({"s": {"base": "tiny", "grid": {"n_emb": [8]}}}))
    proc = run_snakemake(workdir, "-n", check=False)
    assert proc.returncode != 0
    assert "sweeps.s: unknown setting 'n_emb' (did you mean 'n_embd'?)" in proc.stderr + proc.stdout
    assert not (workdir / "results").exists()
