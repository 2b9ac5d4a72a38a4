"""Where training metrics go besides the log: TensorBoard (always) and Weights & Biases (`train.wandb_log`).

TensorBoard events are written into the run folder itself (results/runs/<run>/), so `tensorboard --logdir
results/runs` names each run by its run name. Each run also carries a Custom Scalars layout (train and val loss
on one chart), its settings for the HParams dashboard (written when training finishes, its metrics are the
last value of every scalar), and the text of the samples drawn from it (nanogpt.sample). Only rank 0 tracks.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from nanogpt.config import RunConfig
from nanogpt.errors import ConfigError
from nanogpt.report.pages import flat
from nanogpt.settings import TrainSettings

EVENTS_GLOB = "events.out.tfevents.*"
LOSS_TAGS = ["loss/train", "loss/train_eval", "loss/val"]
LAYOUT = {
    "nanogpt": {
        "loss: train (every log_interval) and train/val estimates (every eval_interval)": ["Multiline", LOSS_TAGS],
        "learning rate": ["Multiline", ["lr"]],
        "throughput: tokens/s": ["Multiline", ["tokens_per_sec"]],
    }
}


def check_wandb(t: TrainSettings, where: str = "train") -> None:
    """wandb_log needs the optional wandb package: say so in one line, before any training."""
    if t.wandb_log and not _importable("wandb"):
        raise ConfigError(f"{where}.wandb_log=true but the wandb package is not installed: expected "
                          "`pip install wandb` (or `pip install -e '.[wandb]'`), or wandb_log: false")


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a broken install, or one blocked on purpose, is as good as absent
        return False


def event_files(folder: str | os.PathLike) -> list[Path]:
    return sorted(Path(folder).glob(EVENTS_GLOB))


def is_run_folder(folder: str | os.PathLike) -> bool:
    """One of our training runs: TensorBoard events and a model.pt."""
    folder = Path(folder)
    return (folder / "model.pt").is_file() and bool(event_files(folder))


def flat_settings(d: dict, prefix: str = "") -> dict[str, bool | int | float | str]:
    """{'train': {'learning_rate': 1e-3}} -> {'train.learning_rate': 1e-3}; None (a default) is left out."""
    return {key: value if isinstance(value, bool | int | float | str) else str(value)
            for key, value in flat(d, prefix) if value is not None}


def write_hparams_experiment(configs: list[dict], differing: dict[str, str], folder: str | os.PathLike) -> int:
    """The HParams dashboard's experiment for `tensorboard --logdir results/runs`: its columns are the settings
    that differ between the runs (`differing`: column -> setting, marked so, which the dashboard shows first; every setting when
    none differ), its metrics the runs' losses. Without it the dashboard infers one from the runs and shows
    the first five settings in alphabetical order, which hid `train.learning_rate`. Returns the column count."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    from torch.utils.tensorboard import SummaryWriter

    flats = [flat_settings(c) for c in configs]
    shown = {k: c for c, k in differing.items() if any(k in f for f in flats)}
    names = list(shown) or sorted({k for f in flats for k in f})
    infos = []
    for name in names:
        values = [f[name] for f in flats if name in f]
        kind = ("DATA_TYPE_BOOL" if all(isinstance(v, bool) for v in values) else "DATA_TYPE_FLOAT64"
                if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values) else "DATA_TYPE_STRING")
        infos.append(api_pb2.HParamInfo(name=name, display_name=shown.get(name, name),
                                        type=api_pb2.DataType.Value(kind), differs=name in shown))
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=tag) for tag in LOSS_TAGS]
    for old in event_files(folder):
        old.unlink()
    data = plugin_data_pb2.HParamsPluginData(experiment=api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics))
    summary = summary_pb2.Summary()
    summary.value.add(tag=metadata.EXPERIMENT_TAG, metadata=metadata.create_summary_metadata(data),
                      tensor=metadata.NULL_TENSOR)
    with SummaryWriter(log_dir=str(folder)) as writer:
        writer.file_writer.add_summary(summary)
    return len(infos)


def add_text(folder: str | os.PathLike, tag: str, markdown: str, step: int) -> None:
    """One text event in `folder` (TensorBoard's Text tab renders it as Markdown)."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(folder)) as writer:
        writer.add_text(tag, markdown, step)


class Tracker:
    """TensorBoard writer (and a W&B run) for one training attempt that starts at `start_iter`."""

    def __init__(self, run: RunConfig, out_dir: Path, start_iter: int) -> None:
        self.run, self.name, self.tb = run, out_dir.name, None
        if importlib.util.find_spec("tensorboard") is not None:  # optional where only torch is installed (a GPU box)
            from torch.utils.tensorboard import SummaryWriter

            # TensorBoard drops the events at steps >= purge_step that earlier attempts of this trajectory wrote
            # (another trajectory's events were set aside with its record: nanogpt.trajectory). None is deleted.
            self.tb = SummaryWriter(log_dir=str(out_dir), purge_step=start_iter)
            self.tb.add_custom_scalars(LAYOUT)
        self.wandb = _start_wandb(run, self.name) if run.train.wandb_log else None

    def scalars(self, values: dict[str, float | None], step: int) -> None:
        values = {k: float(v) for k, v in values.items() if v is not None}
        for tag, value in values.items() if self.tb is not None else ():
            self.tb.add_scalar(tag, value, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def finish(self, metrics: dict[str, Any], step: int) -> None:
        """The run's settings for the HParams dashboard; the final numbers for W&B's run summary."""
        if self.tb is not None:
            from tensorboard.plugins.hparams import summary_v2

            self.tb.file_writer.add_summary(summary_v2.hparams_pb(flat_settings(self.run.to_dict()),
                                                                  trial_id=self.name), step)
        if self.wandb is not None:
            self.wandb.summary.update({k: v for k, v in metrics.items() if isinstance(v, int | float | str)})

    def close(self, exit_code: int = 0) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish(exit_code=exit_code)
            self.wandb = None


def _start_wandb(run: RunConfig, name: str):
    import wandb

    t = run.train
    try:
        return wandb.init(project=t.wandb_project, name=t.wandb_run_name or name, config=run.to_dict())
    except wandb.errors.Error as e:
        raise ConfigError(f"train.wandb_log=true but wandb could not start ({' '.join(str(e).split())}): expected "
                          "`wandb login`, or WANDB_MODE=offline") from None
