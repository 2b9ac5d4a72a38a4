"""What the Snakefile needs from config.yaml: file paths, resolved settings and command arguments per rule.

The Snakefile stays declarative (inputs, outputs, params, shell); every decision about config entries is
made here, in plain Python that tests can call.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

from nanogpt.config import (
    PRETRAINED_NAMES,
    RunConfig,
    check_dataset,
    check_name,
    resolve_eval,
    resolve_run,
    resolve_sample,
)
from nanogpt.errors import ConfigError

RESULTS = "results"


def _option_args(entry: dict, keys: tuple[str, ...]) -> list[str]:
    """`--some-key value` (shell-quoted) for each of `keys` that the config entry sets."""
    return [f"--{k.replace('_', '-')} {shlex.quote(str(entry[k]))}" for k in keys if entry.get(k) is not None]


@dataclass
class Pipeline:
    config: dict
    _runs: dict[str, RunConfig] = field(default_factory=dict, repr=False)  # resolved once per name

    # ---- datasets -------------------------------------------------------------------------------------
    def datasets(self) -> dict:
        return self.config.get("datasets") or {}

    def dataset(self, name: str) -> dict:
        if name not in self.datasets():
            raise ConfigError(f"unknown dataset {name!r}: expected one of {sorted(self.datasets())}")
        return self.datasets()[name]

    def source_path(self, name: str) -> str:
        """Where the download step leaves a dataset's source (a file for `source` entries)."""
        kind = "txt" if "source" in self.dataset(name) else "json"
        return f"{RESULTS}/data/{name}/source.{kind}"

    def data_files(self, name: str) -> dict[str, str]:
        base = f"{RESULTS}/data/{name}"
        return {"train": f"{base}/train.bin", "val": f"{base}/val.bin", "meta": f"{base}/meta.json"}

    def mirror_arg(self) -> str:
        mirror = self.config.get("mirror")
        return f"--mirror {shlex.quote(str(mirror))}" if mirror else ""

    def spec(self, section: str, name: str) -> str:
        return json.dumps(self.config[section][name], sort_keys=True)

    # ---- runs -----------------------------------------------------------------------------------------
    def runs(self) -> dict:
        return self.config.get("runs") or {}

    def run(self, name: str) -> RunConfig:
        if name not in self.runs():
            raise ConfigError(f"unknown run {name!r}: expected one of {sorted(self.runs())}")
        if name not in self._runs:
            self._runs[name] = resolve_run(self.runs()[name], name)
        return self._runs[name]

    def run_spec(self, name: str) -> str:
        """The run's complete resolved settings: the train rule's params, so any change reruns it."""
        d = self.run(name).to_dict()
        d["init_from"] = str((self.config.get("pretrained") or {}).get(d["init_from"], d["init_from"]))
        return json.dumps(d, sort_keys=True)

    def run_resources(self, name: str) -> dict:
        """Per-run scheduler resources for the train rule (SLURM reads them; locally only threads and gpu matter).

        One SLURM task per node runs torchrun, which starts the per-GPU workers itself. Keys whose value is
        None are dropped by Snakemake: the SLURM jobstep plugin treats a present `mpi` key (even "") as "run
        the command without an srun wrapper", so `mpi` exists only for multi-node runs.
        """
        res = dict(self.runs()[name].get("resources") or {})
        launch = self.run(name).launch
        gpus = int(res.get("gpus", 0))  # per node
        multi = launch.nnodes > 1
        out = {
            "cpus_per_task": int(res.get("cpus_per_task", max(2, launch.nproc_per_node))),  # per node
            "mem_mb": int(res.get("mem_mb", 8000)),  # per node
            "runtime": int(res.get("runtime", 120)),
            # one node: --gpus=G (also Snakemake's local `gpu` count); several: --gres=gpu:G is per node,
            # while --gpus=G*N could land unevenly on the nodes
            "gpus": None if multi else gpus,
            "gres": f"gpu:{gpus}" if multi and gpus else None,
            "nodes": launch.nnodes,
            "tasks": launch.nnodes,
            "mpi": "srun" if multi else None,
        }
        if res.get("slurm_partition"):
            out["slurm_partition"] = res["slurm_partition"]
        if res.get("slurm_extra"):
            out["slurm_extra"] = res["slurm_extra"]
        return out

    def torchrun_launcher(self, name: str) -> str:
        """torchrun for one node; across nodes, one `srun` task per node runs torchrun with a c10d rendezvous.

        The multi-node form is `srun ... bash -c 'exec torchrun ... "$@"' torchrun` so the rule appends the
        module and its arguments unchanged; $SLURM_JOB_NODELIST is expanded inside the step (the jobstep plugin
        strips it from the job's own environment). The step repeats the job's per-node CPUs and GPUs because
        srun does not inherit --cpus-per-task from sbatch.
        """
        launch = self.run(name).launch
        if launch.nnodes == 1:
            return f"python -m nanogpt.launch --standalone --nproc_per_node={launch.nproc_per_node}"
        res = self.run_resources(name)
        n = launch.nnodes
        step = f"srun --nodes={n} --ntasks={n} --ntasks-per-node=1 --cpus-per-task={res['cpus_per_task']}"
        if res["gres"]:
            step += f" --gres={res['gres']}"
        torchrun = (
            f"exec python -m nanogpt.launch --nnodes={n} --nproc_per_node={launch.nproc_per_node} "
            '--rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d '
            '--rdzv_endpoint="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1):29500" "$@"'
        )
        return f"{step} --kill-on-bad-exit=1 bash -c {shlex.quote(torchrun)} torchrun"

    def model_checkpoint(self, model: str) -> str | None:
        """A run's final checkpoint; None for pretrained models (gpt2*, local HF dirs)."""
        if model in self.runs():
            return f"{RESULTS}/runs/{model}/model.pt"
        if model in PRETRAINED_NAMES or model in (self.config.get("pretrained") or {}):
            return None
        raise ConfigError(
            f"unknown model {model!r}: expected a run name {sorted(self.runs())}, one of {list(PRETRAINED_NAMES)}, "
            "or a name under `pretrained` (local folders are named there)"
        )

    def model_source_args(self, model: str) -> str:
        """`--checkpoint PATH` for our runs, `--init-from ID_OR_DIR` for pretrained GPT-2."""
        ckpt = self.model_checkpoint(model)
        if ckpt:
            return f"--checkpoint {shlex.quote(ckpt)}"
        source = (self.config.get("pretrained") or {}).get(model, model)
        return f"--init-from {shlex.quote(str(source))}"

    # ---- samples --------------------------------------------------------------------------------------
    def samples(self) -> dict:
        return self.config.get("samples") or {}

    def sample_entry(self, name: str) -> dict:
        if name not in self.samples():
            raise ConfigError(f"unknown sample {name!r}: expected one of {sorted(self.samples())}")
        return self.samples()[name]

    def sample_inputs(self, name: str) -> list[str]:
        ckpt = self.model_checkpoint(self.sample_entry(name)["model"])
        return [ckpt] if ckpt else []

    def sample_args(self, name: str) -> str:
        entry = self.sample_entry(name)
        args = [self.model_source_args(entry["model"])]
        args += _option_args(entry, ("start", "num_samples", "max_new_tokens", "temperature", "top_k", "seed",
                                     "device", "dtype"))
        if self.mirror_arg():
            args.append(self.mirror_arg())
        return " ".join(args)

    # ---- validation and targets -----------------------------------------------------------------------
    def check(self) -> None:
        """Every entry, before any job starts: names, settings and cross-references the JSON schema cannot express."""
        for section in ("datasets", "runs", "samples", "evals", "pretrained"):
            for name in self.config.get(section) or {}:
                check_name(name, f"{section}.{name}: {section.removesuffix('s')}")
        for name, spec in self.datasets().items():
            check_dataset(spec, name)
        for name in self.runs():
            run = self.run(name)
            if run.dataset not in self.datasets():
                raise ConfigError(f"runs.{name}.dataset={run.dataset!r}: no such dataset, expected one of "
                                  f"{sorted(self.datasets())}")
        for name, entry in self.samples().items():
            self.model_checkpoint(resolve_sample(entry, f"samples.{name}").model)
        for name, entry in self.evals().items():
            if not isinstance(entry, dict) or "model" not in entry:
                raise ConfigError(f"evals.{name}={entry!r}: expected a mapping with 'model' and 'datasets'")
            resolve_eval(entry, f"evals.{name}")
            self.model_checkpoint(entry["model"])
            for ds in entry.get("datasets", []):
                if ds not in self.datasets():
                    raise ConfigError(f"evals.{name}.datasets: {ds!r} is not a dataset, expected one of "
                                      f"{sorted(self.datasets())}")
        targets = self.config.get("targets") or {}
        for section in ("runs", "samples", "evals"):
            for name in targets.get(section) or []:
                if name not in (self.config.get(section) or {}):
                    raise ConfigError(f"targets.{section}: {name!r} is not defined under `{section}`")

    def target_files(self) -> list[str]:
        """What `rule all` builds: the runs, samples and evals named under `targets`."""
        targets = self.config.get("targets") or {}
        files = []
        for run in targets.get("runs") or []:
            files += [f"{RESULTS}/runs/{run}/model.pt", f"{RESULTS}/runs/{run}/metrics.json"]
        for sample in targets.get("samples") or []:
            files.append(f"{RESULTS}/samples/{sample}.txt")
        for name in targets.get("evals") or []:
            files += self.eval_files(name)
        if (self.config.get("summary") or {}).get("enabled", True):
            files += [f"{RESULTS}/summary.csv", f"{RESULTS}/summary.md"]
        return files

    # ---- evals ----------------------------------------------------------------------------------------
    def evals(self) -> dict:
        return self.config.get("evals") or {}

    def eval_files(self, name: str) -> list[str]:
        entry = self.evals()[name]
        return [f"{RESULTS}/eval/{entry['model']}/{ds}.json" for ds in entry.get("datasets", [])]

    def eval_entry(self, model: str, dataset: str) -> dict:
        """The `evals` settings for one (model, dataset) file; nanoGPT's defaults where no entry names it."""
        found = [e for e in self.evals().values() if e["model"] == model and dataset in e.get("datasets", [])]
        keys = ("batch_size", "eval_iters", "block_size", "splits", "seed", "device", "dtype")
        settings = [{k: e[k] for k in keys if k in e} for e in found]
        if any(s != settings[0] for s in settings[1:]):
            raise ConfigError(f"evals: several entries evaluate {model!r} on {dataset!r} with different settings "
                              f"{settings}: expected one entry per (model, dataset)")
        return found[0] if found else {"model": model, "datasets": [dataset]}

    def eval_inputs(self, model: str, dataset: str) -> list[str]:
        self.dataset(dataset)
        ckpt = self.model_checkpoint(model)
        return [*self.data_files(dataset).values(), *([ckpt] if ckpt else [])]

    def eval_args(self, model: str, dataset: str) -> str:
        """`nanogpt eval` arguments: the model source, the data folder and the entry's settings."""
        entry = self.eval_entry(model, dataset)
        args = [self.model_source_args(model), f"--data-dir {shlex.quote(f'{RESULTS}/data/{dataset}')}",
                f"--model-name {shlex.quote(model)} --dataset-name {shlex.quote(dataset)}"]
        args += _option_args(entry, ("batch_size", "eval_iters", "block_size", "seed", "device", "dtype"))
        if entry.get("splits"):
            splits = entry["splits"] if isinstance(entry["splits"], str) else ",".join(entry["splits"])
            args.append(f"--splits {shlex.quote(splits)}")
        return " ".join(args)

    def eval_resources(self, model: str, dataset: str) -> dict:
        res = self.eval_entry(model, dataset).get("resources") or {}
        return {"gpu": int(res.get("gpus", 0)), "mem_mb": int(res.get("mem_mb", 16000)),
                "runtime": int(res.get("runtime", 60)), "cpus_per_task": int(res.get("cpus_per_task", 2))}

    # ---- summary --------------------------------------------------------------------------------------
    def summary_inputs(self) -> dict[str, list[str]]:
        """What the summary waits for: the targeted runs (metrics + loss curve) and evals."""
        targets = self.config.get("targets") or {}
        runs = list(targets.get("runs") or [])
        return {
            "metrics": [f"{RESULTS}/runs/{r}/metrics.json" for r in runs],
            "curves": [f"{RESULTS}/plots/{r}_loss.png" for r in runs],
            "evals": [f for name in targets.get("evals") or [] for f in self.eval_files(name)],
        }
