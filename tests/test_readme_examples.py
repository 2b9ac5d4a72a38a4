"""Every config example of the README, run as a user would (`snakemake -n` on config.yaml with the example in
it), prints no warning: a warning is about a run being built, never about an entry nobody asked for."""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import REPO, make_pipeline, run_snakemake

# The README and the own-data page, read in that order, as a new user follows them.
README = "\n".join((REPO / page).read_text() for page in ("README.md", "docs/own-data.md"))
YAML_EXAMPLES = re.findall(r"```yaml\n(.*?)```", README, flags=re.S)
CONFIG_EXAMPLES = re.findall(r"snakemake [^\n]*--config '([^']*)'", README)


def merged(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def readme_pipeline(tmp_path, example: dict):
    """config.yaml with the example merged in, and the local files its `path:` datasets name; a dataset the
    example only mentions (the finetune's `other_text`) is a text file too."""
    config = merged(yaml.safe_load((REPO / "config.yaml").read_text()), example)
    for run in (example.get("runs") or {}).values():
        config["datasets"].setdefault(run.get("dataset"), {"path": "other_text.txt"})
    work = make_pipeline(tmp_path / "pipeline", config)
    for spec in config["datasets"].values():
        if "path" in spec:
            (work / spec["path"]).write_text("To be, or not to be: that is the question.\n" * 20)
    return work


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "warning" in line.lower()]


def test_the_readme_has_config_examples():
    assert len(YAML_EXAMPLES) >= 4 and CONFIG_EXAMPLES


@pytest.mark.parametrize("upto", range(len(YAML_EXAMPLES)), ids=[e.split(":")[0].strip() for e in YAML_EXAMPLES])
def test_readme_yaml_example_dry_run_warns_about_nothing(tmp_path, upto):
    """Each example with those before it (the finetune builds on the own-text run), as a user following the
    README has them."""
    entry: dict = {}
    for example in YAML_EXAMPLES[: upto + 1]:
        entry = merged(entry, yaml.safe_load(example))
    work = readme_pipeline(tmp_path, entry)
    proc = run_snakemake(work, "-n")
    assert not warnings(proc.stderr), proc.stderr[-3000:]


@pytest.mark.parametrize("example", CONFIG_EXAMPLES)
def test_readme_config_example_warns_only_about_the_run_it_builds(tmp_path, example):
    """Not about the 24 points of the sweeps built on the run it changes, nor about anything else."""
    work = readme_pipeline(tmp_path, {})
    proc = run_snakemake(work, "-n", "--config", example)
    assert not warnings(proc.stderr), proc.stderr[-3000:]


def test_an_untargeted_finetune_is_not_warned_about_until_built(tmp_path):
    """The README's finetune entry (200 iterations on a 2000-iteration schedule) warns when, and only when, a
    command builds it; `--lint` never warns."""
    example = next(yaml.safe_load(e) for e in YAML_EXAMPLES if "init_from" in e)
    config_runs = {"my_text": {"base": "shakespeare_char_cpu", "dataset": "my_text"}, **example["runs"]}
    work = readme_pipeline(tmp_path, {"datasets": {"my_text": {"path": "my_text.txt"}}, "runs": config_runs})
    assert not warnings(run_snakemake(work, "-n").stderr)
    assert not warnings(run_snakemake(work, "--lint", check=False).stderr)
    (name,) = example["runs"]
    built = run_snakemake(work, "-n", f"results/runs/{name}/model.pt").stderr
    found = warnings(built)
    assert found and all(f"runs.{name}." in w for w in found) and len(found) == len(set(found)), found
