"""Where training metrics go besides the log: TensorBoard (always) and Weights & Biases (`train.wandb_log`).

TensorBoard events are written into the run folder itself (results/runs/<run>/), so `tensorboard --logdir
results/runs` names each run by its run name. Each run also carries a Custom Scalars layout (train and val loss
on one chart), its settings for the HParams dashboard (written when training finishes; TensorBoard lists the
settings that differ between the runs first, and the last value of every scalar as metrics), and the text of
the samples drawn from it (nanogpt.sample). Only rank 0 tracks.
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
OLD_EXPERIMENT_DIR = "_hparams"  # where an earlier summary wrote the HParams experiment
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


def remove_old_experiment(runs_dir: str | os.PathLike) -> bool:
    """Delete the HParams experiment folder an earlier summary wrote into the runs folder (`_hparams/`, events
    only), which TensorBoard listed as if it were a run. TensorBoard now builds the experiment from the runs'
    own settings, differing ones first. A folder holding anything else is left alone. True if one was removed."""
    folder = Path(runs_dir) / OLD_EXPERIMENT_DIR
    if not folder.is_dir() or any(not p.is_file() or not p.match(EVENTS_GLOB) for p in folder.iterdir()):
        return False
    for events in folder.iterdir():
        events.unlink()
    folder.rmdir()
    return True


def hparams_summary(run: RunConfig, name: str) -> Any:
    """A run's settings as the HParams dashboard reads them (one session, named after the run)."""
    from tensorboard.plugins.hparams import summary_v2

    return summary_v2.hparams_pb(flat_settings(run.to_dict()), trial_id=name)


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
            self.tb.file_writer.add_summary(hparams_summary(self.run, self.name), step)
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
