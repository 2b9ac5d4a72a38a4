"""The pipeline's file layout, defined once: the rules' patterns, `Pipeline`'s paths and the CLI's defaults.

Each constant is a pattern with Snakemake wildcards (`{dataset}`, `{run}`, ...): the rules use it as it is and
Python fills it in with `str.format` (e.g. `MODEL.format(run="tiny")`), so the two can never disagree.
Paths are relative to the working directory snakemake runs in.
"""

from __future__ import annotations

from pathlib import Path

RESULTS = "results"
LOGS = "logs"

# datasets: download -> prepare
DATA_DIR = f"{RESULTS}/data/{{dataset}}"
SOURCE_TXT = f"{DATA_DIR}/source.txt"  # a `source:` dataset's checksummed text file
SOURCE_JSON = f"{DATA_DIR}/source.json"  # an `hf:`/`files:` corpus's manifest
TRAIN_BIN = f"{DATA_DIR}/train.bin"
VAL_BIN = f"{DATA_DIR}/val.bin"
META = f"{DATA_DIR}/meta.json"  # written last: its presence means the bins are complete

# runs
RUNS = f"{RESULTS}/runs"
RUN_DIR = f"{RUNS}/{{run}}"
MODEL = f"{RUN_DIR}/model.pt"
METRICS = f"{RUN_DIR}/metrics.json"
TRAIN_LOG = f"{RUN_DIR}/train.log"  # every line of the newest attempt (earlier ones: train.log.1, ...)
PIPELINE_MARKER = ".pipeline-run"  # in a run folder the train rule owns: `nanogpt train` alone leaves it alone
CLI_RUN_DIR = "out/{run}"  # `nanogpt train` without --out-dir (nanoGPT's out/), never a pipeline folder

# samples, evals, report
SAMPLE = f"{RESULTS}/samples/{{sample}}.txt"
EVAL = f"{RESULTS}/eval/{{model}}/{{dataset}}.json"
TASK_EVAL = f"{RESULTS}/evals/{{eval}}.json"  # a task's `evals:` entry (HellaSwag), by its name
HELLASWAG_ITEMS = f"{RESULTS}/hellaswag/{{file}}"  # the checksummed items file, by its source's file name
LOSS_CURVE = f"{RESULTS}/plots/{{run}}_loss.png"
SUMMARY_CSV = f"{RESULTS}/summary.csv"
SUMMARY_MD = f"{RESULTS}/summary.md"
GPT2_BASELINES = f"{RESULTS}/gpt2_baselines.md"
SUMMARY_HTML = f"{RESULTS}/summary.html"
REPORT = f"{RESULTS}/report"  # HTML pages for `snakemake --report`
RUN_PAGE = f"{REPORT}/runs/{{run}}.html"
SAMPLE_PAGE = f"{REPORT}/samples/{{sample}}.html"
SWEEP_DIR = f"{RESULTS}/sweeps/{{sweep}}"


def log(rule: str, wildcards: str = "") -> str:
    """A rule's log file: logs/{rule}/{wildcards}.log, or logs/{rule}.log for a rule without wildcards."""
    return f"{LOGS}/{rule}/{wildcards}.log" if wildcards else f"{LOGS}/{rule}.log"


def benchmark(rule: str, wildcards: str = "") -> str:
    """A rule's Snakemake `benchmark:` file (wall time, memory): beside the logs, apart from benchmarks/."""
    return f"{LOGS}/benchmarks/{rule}/{wildcards}.tsv" if wildcards else f"{LOGS}/benchmarks/{rule}.tsv"



def pipeline_run_folder(path: str | Path) -> Path | None:
    """The pipeline's run folder (or the runs folder itself) that `path` is or lies in, else None: a folder
    holding PIPELINE_MARKER, or one under RUNS of the working directory. Nothing but the train rule writes there."""
    path = Path(path).expanduser().resolve()
    runs = Path(RUNS).resolve()
    if path == runs or runs in path.parents:
        return path if path == runs else runs / path.relative_to(runs).parts[0]
    return next((p for p in [path, *path.parents] if (p / PIPELINE_MARKER).is_file()), None)
