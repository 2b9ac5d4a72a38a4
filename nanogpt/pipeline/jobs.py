"""How each job runs, given the pipeline's resolved entries: its scheduler resources, the launcher (torchrun,
srun across nodes) and its command-line arguments. The other half of what the Snakefile needs; `Pipeline`
(nanogpt/pipeline/entries.py) holds the entries themselves: lookup, checks, targets and inputs.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable

from nanogpt import paths
from nanogpt.pipeline.entries import Pipeline


class Untracked:
    """A rule parameter Snakemake passes to the shell command but does not compare between runs, so changing it
    never reruns a finished job: Snakemake records and compares only parameters of builtin types (its
    persistence layer skips others as unrepresentable). tests/test_expensive_runs.py checks that it still does.
    """

    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:
        return self.text

    def __format__(self, spec: str) -> str:
        return format(self.text, spec)

    def __repr__(self) -> str:
        return f"Untracked({self.text!r})"


# An evaluation's scheduler resources (its partition and sbatch extras are the profile's).
EVAL_KEYS = {k: k for k in ("gpu", "mem_mb", "runtime", "cpus_per_task")}


class Jobs:
    """Resources, launcher and arguments of the train, sample and evaluate jobs (`J = Jobs(P)` in the Snakefile)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.p = pipeline

    def run_resources(self, name: str) -> dict:
        """Per-run scheduler resources for the train rule (SLURM reads them; locally only threads and gpu matter).

        One SLURM task per node runs torchrun, which starts the per-GPU workers itself. Keys whose value is
        None are dropped by Snakemake: the SLURM jobstep plugin treats a present `mpi` key (even "") as "run
        the command without an srun wrapper", so `mpi` exists only for multi-node runs.
        """
        res = dict(self.p.runs()[name].get("resources") or {})
        launch = self.p.run(name).launch
        gpus = self._gpus_per_node(name)
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

    def _gpus_per_node(self, name: str) -> int:
        """The run's `resources.gpus`: GPUs per node (0: none asked for)."""
        return int((self.p.runs()[name].get("resources") or {}).get("gpus", 0))

    def eval_resources(self, model: str, dataset: str) -> dict:
        return self._eval_resources(self.p.eval_entry(model, dataset))

    def task_eval_resources(self, name: str) -> dict:
        return self._eval_resources(self.p.task_eval(name))

    @staticmethod
    def _eval_resources(entry: dict) -> dict:
        res = entry.get("resources") or {}
        return {"gpu": int(res.get("gpus", 0)), "mem_mb": int(res.get("mem_mb", 16000)),
                "runtime": int(res.get("runtime", 60)), "cpus_per_task": int(res.get("cpus_per_task", 2))}

    def rule_resources(self, rule: str) -> dict[str, Callable | int]:
        """A GPU-capable rule's whole `resources:` (`resources: **J.rule_resources("train")`): one function of the
        wildcards per key, read from `run_resources` (train) or `eval_resources` (evaluate); a function
        returning None drops its key for that job.

        gpu: one node's --gpus=G (also Snakemake's local `gpu` count); gres: --gres=gpu:G per node for several
        nodes; tasks: one per node (torchrun starts the workers); tasks_per_gpu=0, else the SLURM plugin starts one
        task per GPU; mpi: "srun" for several nodes only; slurm_partition/slurm_extra: the run's own (None drops
        the key, so the profile's default does not apply to train; the profile's set-resources still override).
        """
        if rule == "train":
            def lookup(w) -> dict:
                return self.run_resources(w.run)

            keys = {"cpus_per_task": "cpus_per_task", "mem_mb": "mem_mb", "runtime": "runtime", "gpu": "gpus",
                    "gres": "gres", "nodes": "nodes", "tasks": "tasks", "mpi": "mpi",
                    "slurm_partition": "slurm_partition", "slurm_extra": "slurm_extra"}
            fixed = {"tasks_per_gpu": 0}
        elif rule == "evaluate":
            def lookup(w) -> dict:
                return self.eval_resources(w.model, w.dataset)

            keys, fixed = EVAL_KEYS, {}
        elif rule == "hellaswag":
            def lookup(w) -> dict:
                return self.task_eval_resources(w.eval)

            keys, fixed = EVAL_KEYS, {}
        else:
            raise ValueError(f"no resources for rule {rule!r}: expected train, evaluate or hellaswag")

        def per_job(key: str) -> Callable:
            return lambda wildcards: lookup(wildcards).get(key)

        return {name: per_job(key) for name, key in keys.items()} | fixed

    def threads(self, rule: str) -> Callable:
        """A GPU-capable rule's `threads:`, its cpus_per_task (`threads: J.threads("train")`)."""
        return self.rule_resources(rule)["cpus_per_task"]

    def torchrun_launcher(self, name: str) -> str:
        """torchrun for one node; across nodes, one `srun` task per node runs torchrun with a c10d rendezvous.

        The multi-node form is `srun ... bash -c 'exec torchrun ... "$@"' torchrun` so the rule appends the
        module and its arguments unchanged; $SLURM_JOB_NODELIST is expanded inside the step (the jobstep plugin
        strips it from the job's own environment). The step repeats the job's per-node CPUs and GPUs because
        srun does not inherit --cpus-per-task from sbatch. The allocation's first node hosts the rendezvous (its
        name must resolve everywhere); is_host comes from $SLURM_NODEID, not from torch's hostname guess, which
        misses with FQDNs and matches every node where several share one host.
        """
        launch, device = self.p.run(name).launch, shlex.quote(self.p.run(name).train.device)
        if launch.nnodes == 1:
            return f"python -m nanogpt.launch --run-device={device} --standalone --nproc_per_node={launch.nproc_per_node}"
        res = self.run_resources(name)
        n = launch.nnodes
        step = f"srun --nodes={n} --ntasks={n} --ntasks-per-node=1 --cpus-per-task={res['cpus_per_task']}"
        if res["gres"]:
            step += f" --gres={res['gres']}"
        torchrun = (
            f"exec python -m nanogpt.launch --run-device={device} --nnodes={n} --nproc_per_node={launch.nproc_per_node} "
            '--rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_conf=is_host=$((SLURM_NODEID == 0)) '
            '--rdzv_endpoint="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1):29500" "$@"'
        )
        return f"{step} --kill-on-bad-exit=1 bash -c {shlex.quote(torchrun)} torchrun"

    def untracked_launcher(self, name: str) -> Untracked:
        """torchrun_launcher as an untracked parameter: the process count does not change the weights."""
        return Untracked(self.torchrun_launcher(name))

    def mirror_arg(self) -> str:
        """`--mirror DIR` where config.yaml names one: a tracked parameter of the data rules, an untracked part of
        the others' arguments (every file taken from a mirror is checked against its sha256)."""
        mirror = self.p.config.get("mirror")
        return shlex.join(["--mirror", str(mirror)]) if mirror else ""

    @staticmethod
    def vocab_meta_arg(metas: list[str]) -> Untracked:
        """`--vocab-meta META...` for a dataset with `vocab_from`, else nothing: untracked, as those files are the
        prepare step's tracked inputs (and a dataset without them keeps the parameters it was prepared with)."""
        return Untracked(shlex.join(["--vocab-meta", *metas]) if metas else "")

    def _step_args(self, spec: str, *args: str) -> Untracked:
        """One job's arguments, as every entry's step takes them: its resolved settings as `--spec` JSON, then
        its own (name, folders), then the mirror; untracked (each rule tracks the settings that decide its output
        apart)."""
        return Untracked(" ".join(filter(None, [shlex.join(["--spec", spec, *args]), self.mirror_arg()])))

    def dataset_args(self, name: str) -> Untracked:
        """`nanogpt download/prepare`'s arguments for the data rules (their tracked parameters are the entry as
        written and the mirror)."""
        return self._step_args(self.p.dataset_spec(name), "--name", name)

    def train_args(self, name: str) -> Untracked:
        """`nanogpt train`'s arguments for the train rule (its tracked parameter is run_trajectory)."""
        return self._step_args(self.p.run_spec(name), "--name", name,
                               "--data-dir", paths.DATA_DIR.format(dataset=self.p.run(name).dataset),
                               "--out-dir", paths.RUN_DIR.format(run=name),
                               "--gpus", str(self._gpus_per_node(name)), "--pipeline")

    def sample_args(self, name: str) -> Untracked:
        """`nanogpt sample`'s arguments for the sample rule (its tracked parameter is sample_identity)."""
        return self._step_args(self.p.sample_spec(name), "--name", name)

    def sample_page_args(self, name: str) -> Untracked:
        """The sample's report page shows its resolved settings (its tracked parameter is sample_identity)."""
        return Untracked(shlex.join(["--spec", self.p.sample_spec(name)]))

    def eval_args(self, model: str, dataset: str) -> Untracked:
        """`nanogpt eval`'s arguments for the evaluate rule (its tracked parameter is eval_identity)."""
        return self._step_args(self.p.eval_spec(model, dataset), "--data-dir", paths.DATA_DIR.format(dataset=dataset))

    def hellaswag_args(self, name: str) -> Untracked:
        """`nanogpt hellaswag score`'s arguments (the rule's tracked parameter is hellaswag_identity)."""
        return self._step_args(self.p.hellaswag_spec(name), "--name", name, "--items", self.p.items_file(name))

    def items_source_spec(self, file: str) -> str:
        """The download_hellaswag rule's source (tracked: a new checksum downloads again)."""
        return json.dumps(self.p.source_of_items_file(file), sort_keys=True)
