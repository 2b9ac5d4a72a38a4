"""What the Snakefile needs from config.yaml: file paths, resolved settings and command arguments per rule.

The Snakefile stays declarative (inputs, outputs, params, shell); every decision about config entries is
made here, in plain Python that tests can call.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from nanogpt import paths
from nanogpt.config import (
    PRETRAINED_NAMES,
    RunConfig,
    inherit_runs,
    resolve_eval,
    resolve_resources,
    resolve_run,
    resolve_sample,
    settings_warnings,
)
from nanogpt.configfile import floats_from_strings
from nanogpt.data.entry import check_dataset, dataset_kind
from nanogpt.errors import ConfigError
from nanogpt.hellaswag import (
    DEFAULT_SOURCE,
    HellaSwagSettings,
    is_task_entry,
    items_file_name,
    missing_characters,
    read_items,
    resolve_settings,
)
from nanogpt.names import check_name, suggest
from nanogpt.pipeline.schema import check_against_schema, check_top_level_keys
from nanogpt.pipeline.sweeps import Sweep, expand_sweeps, sweep_files
from nanogpt.settings import EvalSettings, SampleSettings, non_defaults
from nanogpt.tracking import check_wandb


def setup_rule_environment(source_dir: str | os.PathLike) -> None:
    """The environment the rules' shell commands inherit from snakemake.

    PATH starts with this interpreter's bin folder, so `nanogpt`, `torchrun` and `python` come from the environment
    snakemake runs in even when that virtualenv is not activated (SLURM jobs re-run the Snakefile with the same
    interpreter); with --sdm conda, the rule's conda environment goes in front of it. NANOGPT_SOURCE_DIR (the
    repository) tells workflow/envs/nanogpt.post-deploy.sh what to install into a new conda environment.
    """
    os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    os.environ["NANOGPT_SOURCE_DIR"] = str(source_dir)


def coerce_config_overrides(config: dict, overrides: Mapping) -> None:
    """Give `snakemake --config` values the types config.yaml would give them, in place in `config`.

    Snakemake reads a nested value (`runs={r: {train: {max_iters: 100}}}`) with YAML's BaseLoader, so each scalar
    in it arrives as a string ('100') that the settings' checks refuse. Each string from `overrides` (Snakemake's
    parsed --config) is re-read with yaml.safe_load where that gives a number, a boolean or null; any other
    string stays as it is (the quotes are gone by now, so text like 'ROMEO:' must not become a mapping).
    """
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(config.get(key), dict):
            coerce_config_overrides(config[key], value)
        else:
            config[key] = _yaml_typed(value)


def _yaml_typed(value: object) -> object:
    """`value` with its strings re-read as YAML scalars (see coerce_config_overrides)."""
    if isinstance(value, Mapping):
        return {k: _yaml_typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_yaml_typed(v) for v in value]
    if isinstance(value, str) and value.strip():  # '' stays '' (config.yaml's "")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        return parsed if parsed is None or isinstance(parsed, bool | int | float) else value
    return value


def named(entries: dict, kind: str, name: str) -> Any:
    """The entry called `name`, else a one-line error that lists the names there are."""
    if name not in entries:
        raise ConfigError(f"unknown {kind} {name!r}: expected one of {sorted(entries)}")
    return entries[name]


@dataclass
class Pipeline:
    config: dict
    _runs: dict[str, RunConfig] = field(default_factory=dict, repr=False)  # resolved once per name
    _sweeps: dict[str, Sweep] | None = field(default=None, repr=False)  # expanded once
    _inherited: dict | None = field(default=None, repr=False)  # runs with base: applied, once
    _warned: set[str] = field(default_factory=set, repr=False)  # runs whose settings warnings were printed

    def _section(self, name: str) -> dict:
        """A top-level mapping of config.yaml (targets, datasets, runs, samples, evals), or {} when absent."""
        value = self.config.get(name) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{name}={value!r}: expected a mapping of names to entries")
        return value

    # ---- datasets -------------------------------------------------------------------------------------
    def datasets(self) -> dict:
        return self._section("datasets")

    def dataset(self, name: str) -> dict:
        return named(self.datasets(), "dataset", name)

    def source_path(self, name: str) -> str:
        """What prepare reads: the downloaded text (`source`), the user's own text file (`path`), else the
        corpus manifest the download step writes."""
        kind = dataset_kind(self.dataset(name))
        if kind == "text":
            return str(self.dataset(name)["path"])
        return (paths.SOURCE_TXT if kind == "source" else paths.SOURCE_JSON).format(dataset=name)

    def vocab_metas(self, name: str) -> list[str]:
        """The meta.json of each dataset whose characters this one's vocabulary holds (`vocab_from`): inputs of its
        prepare step, so they are prepared first and preparing one again prepares this one again."""
        names = self.dataset(name).get("vocab_from") or []
        return [paths.META.format(dataset=other) for other in names]

    def _check_vocab_from(self, name: str) -> None:
        """`vocab_from` names other char datasets, and no chain of them leads back to this one."""
        seen, todo = [name], list(self.datasets()[name].get("vocab_from") or [])
        while todo:
            other = todo.pop(0)
            if other not in self.datasets():
                raise ConfigError(f"datasets.{seen[-1]}.vocab_from: {other!r} is not a dataset, expected one of "
                                  f"{sorted(self.datasets())}")
            if other == name:
                raise ConfigError(f"datasets.{name}.vocab_from: a cycle ({' -> '.join([*seen, other])}): expected "
                                  "datasets that do not take their characters from this one")
            spec = self.datasets()[other]
            if check_dataset(spec, other).tokenizer != "char":
                raise ConfigError(f"datasets.{seen[-1]}.vocab_from: {other!r} is not a char dataset: expected "
                                  "datasets with tokenizer: char")
            if other not in seen:
                seen.append(other)
                todo += spec.get("vocab_from") or []

    def data_files(self, name: str) -> dict[str, str]:
        return {"train": paths.TRAIN_BIN.format(dataset=name), "val": paths.VAL_BIN.format(dataset=name),
                "meta": paths.META.format(dataset=name)}

    def dataset_names_pattern(self, *kinds: str) -> str:
        """A wildcard regex matching the datasets of these kinds (config.dataset_kind: source, hf, files, corpus):
        it picks the rule that downloads each one, download or download_hf (a `path:` text needs neither)."""
        names = [re.escape(n) for n, spec in self.datasets().items() if dataset_kind(spec) in kinds]
        return "|".join(names) if names else "(?!)"  # (?!) matches nothing; escaped: "a.b" must not match "axb"

    @staticmethod
    def _check_local_path(name: str, spec: dict) -> None:
        """A `path:` dataset's files exist before any job starts."""
        if "path" not in spec:
            return
        pattern = os.path.expanduser(spec["path"])
        if not (glob.glob(pattern) if glob.has_magic(pattern) else os.path.exists(pattern)):
            raise ConfigError(f"datasets.{name}.path={spec['path']!r} matches no file: expected a text file, a "
                              "folder or a glob of .jsonl/.parquet/.txt files (relative to the working directory)")

    def dataset_identity(self, name: str) -> str:
        """What the data rules' rerun depends on (their tracked parameter, with the mirror): the entry as written."""
        return json.dumps(self.dataset(name), sort_keys=True)

    def dataset_spec(self, name: str) -> str:
        """The dataset as `nanogpt download/prepare --spec` take it: its source as written and every setting
        resolved (the kind's defaults filled in)."""
        settings = asdict(check_dataset(self.dataset(name), name))
        resolved = {k: v for k, v in settings.items() if k not in ("name", "kind")}
        return json.dumps({**self.dataset(name), **resolved}, sort_keys=True)

    # ---- runs -----------------------------------------------------------------------------------------
    def runs(self) -> dict:
        """The runs under `runs:` (each with its `base:` applied) and one per sweep point: a point is an ordinary
        run that the train rule trains."""
        if not self.config.get("sweeps"):
            return self._base_runs()
        return {**self._base_runs(), **{p.run: p.entry for s in self.sweeps().values() for p in s.points}}

    def _base_runs(self) -> dict:
        if self._inherited is None:
            self._inherited = inherit_runs(self._section("runs"))
        return self._inherited

    def run(self, name: str) -> RunConfig:
        if name not in self._runs:
            self._runs[name] = resolve_run(named(self.runs(), "run", name), name)
        return self._runs[name]

    def run_spec(self, name: str) -> str:
        """The run as `nanogpt train --spec` takes it: every setting resolved, and where its initial weights come
        from (`init_from` resolved to a file, folder or hub id)."""
        d = self.run(name).to_dict()
        d["init_from"] = self._init_source(d["init_from"])
        return json.dumps(d, sort_keys=True)

    def run_trajectory(self, name: str) -> str:
        """What the train rule's rerun depends on (its only tracked parameter): the settings that decide the
        weights, canonically (RunConfig.trajectory). Logging, eval, checkpoint cadence, tracking, compilation,
        the launch and resources reach the trainer untracked (`train_args`): changing them reruns nothing."""
        d = self.run(name).trajectory()
        if "init_from" in d:
            d["init_from"] = self._init_source(d["init_from"])
        return json.dumps(d, sort_keys=True)

    def _init_source(self, init_from: str) -> str:
        """A run name resolves to its model.pt, a `pretrained:` name to its folder or hub id."""
        if init_from in self.runs():
            return paths.MODEL.format(run=init_from)
        return str((self.config.get("pretrained") or {}).get(init_from, init_from))

    def train_inputs(self, name: str) -> list[str]:
        """The train rule's inputs: the prepared data, and the model.pt of a run it is initialised from (so that
        run trains first, and retraining it retrains this one)."""
        run = self.run(name)
        self.warn_about_settings(name)  # the run is in the DAG: Snakemake asks for its inputs
        inputs = list(self.data_files(run.dataset).values())
        if run.init_from in self.runs():
            inputs.append(paths.MODEL.format(run=run.init_from))
        return inputs

    def warn_about_settings(self, name: str) -> None:
        """The run's settings that disagree (config.settings_warnings), printed once per snakemake process.

        Called from the train rule's inputs, that is while Snakemake builds the DAG of what was asked for (before
        any job starts, `-n` included): a run nobody asked to build, such as the points of an untargeted sweep or
        an entry kept for later, is not warned about, and neither is anything under `--lint`.
        """
        if name in self._warned:
            return
        self._warned.add(name)
        for warning in settings_warnings(self.run(name), name):
            print(f"nanogpt: warning: {warning}", file=sys.stderr)

    def _check_init_chain(self, name: str) -> None:
        """init_from a run: never the run itself, directly or through others (Snakemake would see a cycle)."""
        seen = [name]
        source = self.run(name).init_from
        while source in self.runs():
            if source in seen:
                raise ConfigError(f"runs.{name}.init_from={self.run(name).init_from!r}: a cycle "
                                  f"({' -> '.join([*seen, source])}): expected a run that does not start from this one")
            seen.append(source)
            source = self.run(source).init_from

    def model_checkpoint(self, model: str) -> str | None:
        """A run's final checkpoint; None for pretrained models (gpt2*, local HF dirs)."""
        if model in self.runs():
            return paths.MODEL.format(run=model)
        if model in PRETRAINED_NAMES or model in (self.config.get("pretrained") or {}):
            return None
        raise ConfigError(
            f"unknown model {model!r}: expected a run name {sorted(self.runs())}, one of {list(PRETRAINED_NAMES)}, "
            "or a name under `pretrained` (local folders are named there)"
        )

    # ---- samples --------------------------------------------------------------------------------------
    def samples(self) -> dict:
        return self._section("samples")

    def sample_entry(self, name: str) -> dict:
        return named(self.samples(), "sample", name)

    def sample_settings(self, name: str) -> SampleSettings:
        return resolve_sample(self.sample_entry(name), f"samples.{name}")

    def sample_inputs(self, name: str) -> list[str]:
        ckpt = self.model_checkpoint(self.sample_entry(name)["model"])
        return [ckpt] if ckpt else []

    def sample_spec(self, name: str) -> str:
        """The resolved `samples:` entry as `nanogpt sample --spec` takes it: every setting, and where the model
        comes from (`model_source`)."""
        settings = self.sample_settings(name)
        return json.dumps({**asdict(settings), **self.model_source(settings.model)}, sort_keys=True)

    def sample_identity(self, name: str) -> str:
        """What the sample rule's rerun depends on (its tracked parameter): see `_identity`."""
        settings = self.sample_settings(name)
        return self._identity(settings.model, settings)

    def _identity(self, model: str, settings: SampleSettings | EvalSettings | HellaSwagSettings, **extra) -> str:
        """A sample's or eval's tracked parameter: the model's source and the settings that differ from their
        defaults, so a setting added later with a neutral default reruns nothing (and `extra`, e.g. the items)."""
        return json.dumps({"source": self.model_source(model), "settings": non_defaults(settings), **extra},
                          sort_keys=True)

    def model_source(self, model: str) -> dict[str, str]:
        """Where a sample or eval job loads `model` from: {"checkpoint": a run's model.pt} or {"init_from": a GPT-2
        size, hub id or local folder (a `pretrained:` name resolved)}."""
        ckpt = self.model_checkpoint(model)
        return {"checkpoint": ckpt} if ckpt else {"init_from": self._init_source(model)}

    # ---- validation and targets -----------------------------------------------------------------------
    def check(self) -> None:
        """Every entry, before any job starts: names, settings and cross-references the JSON schema cannot express,
        then the schema itself."""
        check_top_level_keys(self.config)
        for section in ("datasets", "runs", "samples", "evals", "pretrained"):
            for name in self._section(section):
                check_name(name, f"{section}: {section.removesuffix('s')}")  # the raw name only as its repr
        for name, spec in self.datasets().items():
            check_dataset(spec, name)
            self._check_local_path(name, spec)
        for name in self.datasets():
            self._check_vocab_from(name)
        self.check_sweeps()
        for name in self.runs():
            run = self.run(name)
            if run.dataset not in self.datasets():
                hint = suggest(run.dataset, list(self.datasets()))
                raise ConfigError(f"runs.{name}.dataset={run.dataset!r}: no such dataset{hint}, expected one of "
                                  f"{sorted(self.datasets())}")
            resolve_resources(self.runs()[name], f"runs.{name}")
            check_wandb(run.train, f"runs.{name}.train")  # before any job, not inside the train job
            self._check_init_chain(name)
        for name, entry in self.samples().items():
            self.model_checkpoint(resolve_sample(entry, f"samples.{name}").model)
        for name, entry in self.evals().items():
            if not isinstance(entry, dict) or "model" not in entry:
                raise ConfigError(f"evals.{name}={entry!r}: expected a mapping with 'model' and 'datasets'")
            if is_task_entry(entry):
                self._check_task_eval(name)
                continue
            resolve_eval(entry, f"evals.{name}")
            resolve_resources(entry, f"evals.{name}")
            self.model_checkpoint(entry["model"])
            if not isinstance(entry.get("datasets"), list) or not entry["datasets"]:
                raise ConfigError(f"evals.{name}.datasets={entry.get('datasets')!r}: expected a list of dataset names")
            for ds in entry["datasets"]:
                if ds not in self.datasets():
                    raise ConfigError(f"evals.{name}.datasets: {ds!r} is not a dataset, expected one of "
                                      f"{sorted(self.datasets())}")
        targets = self._section("targets")
        for section in ("runs", "samples", "evals"):
            names = targets.get(section) or []
            if not isinstance(names, list):
                raise ConfigError(f"targets.{section}={names!r}: expected a list of names under `{section}`")
            for name in names:
                if name not in self._section(section):
                    raise ConfigError(f"targets.{section}: {name!r} is not defined under `{section}`")
        check_against_schema(self.typed_config())  # the structure the checks above leave to the schema

    def typed_config(self) -> dict:
        """config.yaml as the settings read it, for the JSON schema: YAML 1.1 reads an exponent without a dot
        ('6e-4') as a string, which the runs', samples' and evals' settings take as the number it is."""
        typed = dict(self.config)
        for section in ("runs", "samples", "evals"):
            if isinstance(typed.get(section), dict):
                typed[section] = floats_from_strings(typed[section])
        return typed

    def target_files(self) -> list[str]:
        """What `rule all` builds: the runs, samples and evals named under `targets`."""
        targets = self.config.get("targets") or {}
        files = []
        for run in targets.get("runs") or []:
            files += [paths.MODEL.format(run=run), paths.METRICS.format(run=run)]
        for sample in targets.get("samples") or []:
            files.append(paths.SAMPLE.format(sample=sample))
        for name in targets.get("evals") or []:
            files += self.eval_files(name)
        for name in targets.get("sweeps") or []:
            files += self.sweep_files(name)
        if (self.config.get("summary") or {}).get("enabled", True):
            files += [paths.SUMMARY_CSV, paths.SUMMARY_MD]
        return files

    # ---- evals ----------------------------------------------------------------------------------------
    def evals(self) -> dict:
        return self._section("evals")

    def eval_files(self, name: str) -> list[str]:
        entry = self.evals()[name]
        if is_task_entry(entry):
            return [paths.TASK_EVAL.format(eval=name)]
        return [paths.EVAL.format(model=entry["model"], dataset=ds) for ds in entry.get("datasets", [])]

    def eval_entry(self, model: str, dataset: str) -> dict:
        """The `evals` entry for one (model, dataset) file; one without settings where no entry names the pair."""
        found = {n: e for n, e in self.evals().items() if e["model"] == model and dataset in e.get("datasets", [])}
        settings = [non_defaults(resolve_eval(e, f"evals.{n}")) for n, e in found.items()]
        if any(s != settings[0] for s in settings[1:]):
            raise ConfigError(f"evals: several entries evaluate {model!r} on {dataset!r} with different settings "
                              f"{settings}: expected one entry per (model, dataset)")
        return next(iter(found.values()), {"model": model, "datasets": [dataset]})

    def eval_settings(self, model: str, dataset: str) -> EvalSettings:
        """nanoGPT's eval_gpt2*.py defaults where the entry leaves a setting out."""
        return resolve_eval(self.eval_entry(model, dataset), f"evals of {model} on {dataset}")

    def eval_spec(self, model: str, dataset: str) -> str:
        """The resolved evaluation as `nanogpt eval --spec` takes it: every setting, the names the result records
        and where the model comes from (`model_source`)."""
        settings = asdict(self.eval_settings(model, dataset))
        return json.dumps({**settings, "model": model, "dataset": dataset, **self.model_source(model)},
                          sort_keys=True)

    def eval_identity(self, model: str, dataset: str) -> str:
        """What the evaluate rule's rerun depends on (its tracked parameter): see `_identity` (the dataset is in
        the output's path)."""
        return self._identity(model, self.eval_settings(model, dataset))

    def eval_inputs(self, model: str, dataset: str) -> list[str]:
        self.dataset(dataset)
        ckpt = self.model_checkpoint(model)
        return [*self.data_files(dataset).values(), *([ckpt] if ckpt else [])]

    # ---- task evals (HellaSwag) -----------------------------------------------------------------------
    def task_eval(self, name: str) -> dict:
        entry = self.evals().get(name)
        if not is_task_entry(entry):
            tasks = sorted(n for n, e in self.evals().items() if is_task_entry(e))
            raise ConfigError(f"unknown task eval {name!r}: expected one of {tasks} (entries with `task:`)")
        return entry

    def hellaswag_settings(self, name: str) -> HellaSwagSettings:
        """The entry's settings; dtype auto means the run's own train dtype (a gpt2* model: the device's)."""
        entry = self.task_eval(name)
        settings = resolve_settings(entry, f"evals.{name}")
        if settings.dtype == "auto" and entry["model"] in self.runs():
            settings.dtype = self.run(entry["model"]).train.dtype
        return settings

    def items_source(self, name: str) -> dict:
        """Where the entry's items come from: its `source:`, else HellaSwag's validation file."""
        return self.task_eval(name).get("source") or DEFAULT_SOURCE

    def items_file(self, name: str) -> str:
        return paths.HELLASWAG_ITEMS.format(file=items_file_name(self.items_source(name)))

    def source_of_items_file(self, file: str) -> dict:
        """The source that the download_hellaswag rule fetches to results/hellaswag/{file}."""
        sources = [self.items_source(n) for n, e in self.evals().items() if is_task_entry(e)]
        return next((s for s in sources if items_file_name(s) == file), DEFAULT_SOURCE)

    def hellaswag_inputs(self, name: str) -> list[str]:
        ckpt = self.model_checkpoint(self.task_eval(name)["model"])
        return [self.items_file(name), *([ckpt] if ckpt else [])]

    def hellaswag_spec(self, name: str) -> str:
        """The resolved entry as `nanogpt hellaswag score --spec` takes it: its settings, the model's name and
        where it comes from (`model_source`)."""
        model = self.task_eval(name)["model"]
        return json.dumps({**asdict(self.hellaswag_settings(name)), "model": model, **self.model_source(model)},
                          sort_keys=True)

    def hellaswag_identity(self, name: str) -> str:
        """The hellaswag rule's tracked parameter: the model's source, the settings off their defaults and the
        items' checksum."""
        model, source = self.task_eval(name)["model"], self.items_source(name)
        return self._identity(model, self.hellaswag_settings(name),
                              items={k: v for k, v in source.items() if k != "url"})

    def _check_task_eval(self, name: str) -> None:
        """A task entry's settings, model and items source; one items file name per checksum; a character-level
        run whose vocabulary cannot spell the items is refused here, before any job."""
        entry = self.task_eval(name)
        self.hellaswag_settings(name)
        self.model_checkpoint(entry["model"])
        source, file = self.items_source(name), items_file_name(self.items_source(name))
        if self.source_of_items_file(file) != source:
            raise ConfigError(f"evals.{name}.source: file name {file!r} is another entry's source with another "
                              "checksum: expected one source per file name")
        if entry["model"] in self.runs():
            self._check_char_run(name, entry["model"], self.items_file(name))

    def _check_char_run(self, name: str, run: str, items: str) -> None:
        """A run on a character dataset scores HellaSwag only if its characters spell every item: checked once
        its dataset is prepared (meta.json) and the items downloaded, refused until then."""
        dataset = self.run(run).dataset
        if check_dataset(self.dataset(dataset), dataset).tokenizer != "char":
            return
        meta_path = paths.META.format(dataset=dataset)
        where = f"evals.{name}: run {run!r} is character-level (datasets.{dataset}.tokenizer=char)"
        if not (os.path.isfile(meta_path) and os.path.isfile(items)):
            raise ConfigError(f"{where} and its vocabulary cannot be checked against the items yet: expected a "
                              f"GPT-2-tokenized run or a gpt2* model (or, with this entry left out, build {meta_path} "
                              f"and {items} first)")
        from nanogpt.fileio import METADATA_MAX_BYTES, load_json_capped
        from nanogpt.hellaswag import describe_missing

        meta = load_json_capped(meta_path, METADATA_MAX_BYTES, "dataset metadata", ConfigError)
        chars = set((meta.get("tokenizer") or {}).get("chars") or []) if isinstance(meta, dict) else set()
        missing = missing_characters(read_items(items)[0], chars)
        if missing:
            raise ConfigError(f"{where} and its vocabulary lacks {describe_missing(missing)} that the items use: "
                              "expected a GPT-2-tokenized run or a gpt2* model")

    def gpt2_hellaswag_files(self) -> list[str]:
        """The GPT-2 sizes' full HellaSwag results (entries without `limit`), for the baselines table."""
        return [paths.TASK_EVAL.format(eval=n) for n, e in self.evals().items()
                if is_task_entry(e) and e["model"] in PRETRAINED_NAMES and not e.get("limit")]

    # ---- summary --------------------------------------------------------------------------------------
    def summary_inputs(self) -> dict[str, list[str]]:
        """What the summary waits for: the targeted runs (metrics + loss curve) and evals."""
        targets = self.config.get("targets") or {}
        runs = list(targets.get("runs") or [])
        return {
            "metrics": [paths.METRICS.format(run=r) for r in runs],
            "curves": [paths.LOSS_CURVE.format(run=r) for r in runs],
            "evals": [f for name in targets.get("evals") or [] for f in self.eval_files(name)],
        }

    # ---- sweeps ---------------------------------------------------------------------------------------
    def sweeps(self) -> dict[str, Sweep]:
        """Every sweep, expanded once into its points (named runs; see nanogpt/pipeline/sweeps.py)."""
        if self._sweeps is None:
            self._sweeps = expand_sweeps(self.config.get("sweeps"), self._base_runs())
        return self._sweeps

    def sweep(self, name: str) -> Sweep:
        return named(self.sweeps(), "sweep", name)

    def check_sweeps(self) -> None:
        """Sweeps expand into valid, distinct runs, and `targets.sweeps` names sweeps (part of check())."""
        self.sweeps()
        names = self._section("targets").get("sweeps") or []
        if not isinstance(names, list):
            raise ConfigError(f"targets.sweeps={names!r}: expected a list of names under `sweeps`")
        for name in names:
            if name not in self.sweeps():
                raise ConfigError(f"targets.sweeps: {name!r} is not defined under `sweeps`: expected one of "
                                  f"{sorted(self.sweeps())}")

    def sweep_files(self, name: str) -> list[str]:
        """A sweep's outputs (tables, plots; fit.json and scaling.png for a scaling study)."""
        return sweep_files(name, scaling=self.sweep(name).scaling is not None)

    def sweep_inputs(self, name: str) -> dict[str, list[str]]:
        """The current points' metrics and loss curves: a point removed from the grid drops out of the summary."""
        runs = [p.run for p in self.sweep(name).points]
        return {"metrics": [paths.METRICS.format(run=r) for r in runs],
                "curves": [paths.LOSS_CURVE.format(run=r) for r in runs]}

    def sweep_spec(self, name: str) -> str:
        """The sweep as JSON for `nanogpt summary sweep` (the rule's params)."""
        return json.dumps(self.sweep(name).spec(), sort_keys=True)

    def sweep_names_pattern(self, scaling: bool) -> str:
        """A wildcard regex of the grid sweeps (scaling=False) or the scaling studies: it picks the rule."""
        names = [re.escape(n) for n, s in self.sweeps().items() if (s.scaling is not None) == scaling]
        return "|".join(names) if names else "(?!)"  # (?!) matches nothing
