"""A run folder shows one training trajectory; each other trajectory's whole record waits in set_aside/.

A trajectory (one fingerprint: settings, data, initial weights) writes its record straight into the run folder:
checkpoints, best.pt, history.jsonl, TensorBoard events, metrics.json, model.pt, and whatever is added later.
So `tensorboard --logdir results/runs`, the report and Snakemake's outputs all see the shown trajectory under the
run's name. Everything in the run folder that is not the run's own (RUN_OWN: the lock, the pipeline marker, the
pipeline's attempt logs, set_aside/ itself) is the record: setting it aside moves all of it, bringing it back moves
all of it back, and no list of files has to grow when the trainer writes a new one::

    results/runs/<run>/
        .lock  .pipeline-run  train.log  train.log.1 ...    the run's own, whichever trajectory is shown
        trajectory.json                                     the shown record's fingerprint and final metrics
        model.pt  metrics.json  best.pt  history.jsonl  events.out.tfevents.*
        checkpoints/ckpt_<iter>.pt                          resume points (model.pt is a hard link to the last)
        checkpoints/held/                                   this trajectory's, beyond max_iters (for a longer run)
        checkpoints/unreadable/                             files that do not load
        set_aside/<fingerprint>/                            another trajectory's record, laid out as above
        set_aside/restarted/                                what `nanogpt restart` moved out (never resumed)

Retention: the SET_ASIDE_TRAJECTORIES records set aside most recently keep everything; older ones lose their
weights (.pt files), never their events, history or metrics.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from nanogpt import checkpoint as ckpt_io
from nanogpt import fileio
from nanogpt.paths import PIPELINE_MARKER, TRAIN_LOG
from nanogpt.runlock import LOCK_NAME

SET_ASIDE = "set_aside"
RESTARTED = "restarted"
UNATTRIBUTED = "unattributed"  # a record whose fingerprint nothing in it says (no checkpoint, no marker)
MARKER = "trajectory.json"
CHECKPOINTS = "checkpoints"
SET_ASIDE_TRAJECTORIES = 4
_TRAIN_LOG = Path(TRAIN_LOG).name
RUN_OWN = frozenset({LOCK_NAME, PIPELINE_MARKER, SET_ASIDE})


def is_run_own(name: str) -> bool:
    """The run folder's own entries (they stay whichever trajectory is shown); everything else is the record."""
    return name in RUN_OWN or name == _TRAIN_LOG or name.startswith(_TRAIN_LOG + ".")


def record(run_dir: str | os.PathLike) -> list[Path]:
    """The shown trajectory's record: every entry of the run folder that is not the run's own."""
    run_dir = Path(run_dir)
    return sorted(p for p in run_dir.iterdir() if not is_run_own(p.name)) if run_dir.is_dir() else []


def shown_fingerprint(run_dir: str | os.PathLike) -> str | None:
    """Whose record the run folder shows: its marker, else its newest readable checkpoint, best.pt or model.pt
    (a folder written before the marker existed)."""
    run_dir = Path(run_dir)
    marked = read_marker(run_dir).get("fingerprint")
    if isinstance(marked, str) and marked:
        return marked
    candidates = [p for _, p in reversed(ckpt_io.list_checkpoints(run_dir / CHECKPOINTS))]
    for path in candidates + [run_dir / "best.pt", run_dir / "model.pt"]:
        if path.is_file():
            try:
                found = ckpt_io.peek(path).get("fingerprint")
            except ckpt_io.CheckpointError:
                continue
            if found:
                return found
    return None


def read_marker(run_dir: Path) -> dict:
    try:
        data = fileio.load_json_capped(run_dir / MARKER, fileio.SMALL_JSON_MAX_BYTES, "trajectory marker")
    except Exception:  # missing or unreadable: the record is attributed from its checkpoints instead
        return {}
    return data if isinstance(data, dict) else {}


def write_marker(run_dir: Path, fingerprint: str, **fields) -> None:
    """Name the shown record's trajectory (keeping what the marker said of the same trajectory)."""
    old = read_marker(run_dir)
    data = (old if old.get("fingerprint") == fingerprint else {}) | {"fingerprint": fingerprint} | fields
    fileio.write_json(run_dir / MARKER, data)


def merge_move(src: Path, dest: Path) -> None:
    """Move a file or folder to dest; folders merge (a file of the same name in dest is replaced: it is of the
    same trajectory, written later)."""
    if src.is_dir() and not src.is_symlink() and dest.is_dir():
        for child in list(src.iterdir()):
            merge_move(child, dest / child.name)
        src.rmdir()
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)


def set_aside_record(run_dir: Path, fingerprint: str) -> Path | None:
    """Move the shown record into set_aside/<fingerprint>/ (merged with what is there already)."""
    entries = record(run_dir)
    if not entries:
        return None
    dest = run_dir / SET_ASIDE / fingerprint
    dest.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        merge_move(entry, dest / entry.name)
    os.utime(dest)  # "set aside most recently", for the retention rule
    return dest


def bring_back(run_dir: Path, fingerprint: str) -> bool:
    """Show the set-aside record of this trajectory again: all of it returns to the run folder."""
    folder = run_dir / SET_ASIDE / fingerprint
    if not folder.is_dir():
        return False
    for entry in list(folder.iterdir()):
        merge_move(entry, run_dir / entry.name)
    folder.rmdir()
    return True


def activate(run_dir: str | os.PathLike, accepted: list[str], log: Callable[[str], None] = print) -> None:
    """Show the record of the trajectory whose fingerprints are `accepted` (its own first): a record of another
    trajectory is set aside whole, this one's comes back whole from set_aside/ if it was there."""
    run_dir = Path(run_dir)
    migrate(run_dir, log)
    shown = shown_fingerprint(run_dir) if record(run_dir) else None
    waiting = next((fp for fp in accepted if (run_dir / SET_ASIDE / fp).is_dir()), None)
    if record(run_dir) and shown not in accepted and (shown is not None or waiting is not None):
        dest = set_aside_record(run_dir, shown or UNATTRIBUTED)
        log(f"setting aside the run folder's record (made with other settings, data or initial weights) -> {dest}/")
    if waiting is not None:
        if record(run_dir):  # the shown record is ours too: parts of it were apart (an older layout)
            _absorb(run_dir / SET_ASIDE / waiting, run_dir)
        else:
            bring_back(run_dir, waiting)
            log(f"these settings came back: their record returns from {run_dir / SET_ASIDE / waiting}/")
    write_marker(run_dir, accepted[0])
    retain(run_dir)


def _absorb(folder: Path, dest: Path) -> None:
    """A set-aside part of the shown trajectory's own record (an older layout kept its checkpoints and best.pt
    apart) rejoins it where the shown record has no file of that name; what is left stays set aside."""
    for entry in list(folder.iterdir()):
        target = dest / entry.name
        if not target.exists():
            merge_move(entry, target)
        elif entry.is_dir() and target.is_dir():
            _absorb(entry, target)
    if not any(folder.iterdir()):
        folder.rmdir()


def retain(run_dir: Path) -> None:
    """Records set aside longer ago than the SET_ASIDE_TRAJECTORIES newest lose their weights, nothing else."""
    root = run_dir / SET_ASIDE
    if not root.is_dir():
        return
    folders = sorted((d for d in root.iterdir() if d.is_dir() and d.name != RESTARTED),
                     key=lambda d: d.stat().st_mtime, reverse=True)
    for stale in folders[SET_ASIDE_TRAJECTORIES:]:
        for weights in stale.rglob("*.pt"):
            weights.unlink(missing_ok=True)


def checkpoints_of(run_dir: str | os.PathLike) -> Iterable[tuple[int, Path]]:
    """Every checkpoint a run folder holds, shown or set aside (not the restart archive), newest first."""
    run_dir = Path(run_dir)
    folders = [run_dir / CHECKPOINTS, run_dir / CHECKPOINTS / ckpt_io.HELD]
    folders += sorted(p / CHECKPOINTS for p in (run_dir / SET_ASIDE).glob("*") if p.name != RESTARTED)
    found = [item for folder in folders for item in ckpt_io.list_checkpoints(folder)]
    return sorted(found, reverse=True)


def archive_for_restart(run_dir: str | os.PathLike) -> Path:
    """Move the shown record and every set-aside one into set_aside/restarted/ (replacing the previous restart's),
    where resume never looks: the next training of this run starts from iteration 0."""
    run_dir = Path(run_dir)
    migrate(run_dir, lambda *_: None)
    others = [p for p in (run_dir / SET_ASIDE).glob("*") if p.name != RESTARTED]
    if not record(run_dir) and not others:
        raise ckpt_io.CheckpointError(f"{str(run_dir)!r} holds no checkpoint, model.pt or metrics.json: expected a "
                                      "run folder that has trained")
    archive = run_dir / SET_ASIDE / RESTARTED
    shutil.rmtree(archive, ignore_errors=True)
    archive.mkdir(parents=True)
    for entry in record(run_dir):
        os.replace(entry, archive / entry.name)
    for folder in others:
        merge_move(folder, archive / SET_ASIDE / folder.name)
    return archive


def migrate(run_dir: Path, log: Callable[[str], None] = print) -> None:
    """The layout before whole records moved: checkpoints/set_aside/<fingerprint>/ held only the checkpoints (and
    best.pt) of other trajectories, checkpoints/restarted/ the restart archive. Moved losslessly into this one."""
    old = run_dir / CHECKPOINTS / SET_ASIDE
    if old.is_dir():
        for folder in sorted(old.iterdir()):
            if not folder.is_dir():
                continue
            if folder.name == ckpt_io.UNREADABLE:
                merge_move(folder, run_dir / CHECKPOINTS / ckpt_io.UNREADABLE)
                continue
            dest = run_dir / SET_ASIDE / folder.name
            for path in list(folder.iterdir()):
                is_checkpoint = ckpt_io.is_checkpoint_name(path.name)
                merge_move(path, (dest / CHECKPOINTS if is_checkpoint else dest) / path.name)
            folder.rmdir()
            if dest.is_dir():
                os.utime(dest)
        if not any(old.iterdir()):
            old.rmdir()
        log(f"moved {old}/ to the trajectory layout: {run_dir / SET_ASIDE}/")
    old_restart = run_dir / CHECKPOINTS / RESTARTED
    if old_restart.is_dir():
        merge_move(old_restart, run_dir / SET_ASIDE / RESTARTED)
