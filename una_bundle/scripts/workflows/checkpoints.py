"""Training checkpoints: written atomically, with the trainer's own state, and resumed from the newest complete one.

:class:`TrainerCheckpointSaver` / :class:`TrainerCheckpointLoader` save and restore the trainer with the network,
:func:`latest_checkpoint` finds the newest readable checkpoint of a run (a damaged one is skipped), and
:class:`BestCheckpointSaver` keeps the best validation model (``models/model.pt``).
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver
from torch.optim.lr_scheduler import MultiStepLR

from ..data.atomic_io import write_atomic

__all__ = ["latest_checkpoint", "TrainerCheckpointSaver", "TrainerCheckpointLoader", "BestCheckpointSaver"]

logger = logging.getLogger("una.training")


def _checkpoint_damage(path: Path) -> str | None:
    """Why the ``torch.save`` file ``path`` is unusable, or None: it is a zip archive, so a truncated write has no
    readable central directory and a damaged one fails the archive's CRC check."""
    try:
        with zipfile.ZipFile(path) as archive:
            if not archive.namelist():
                return "an empty archive"
            bad = archive.testzip()
            return f"member {bad} fails its CRC check" if bad is not None else None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as err:
        return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _is_complete_checkpoint(path: Path) -> bool:
    """A ``torch.save`` file that is complete and undamaged (see :func:`_checkpoint_damage`)."""
    return _checkpoint_damage(path) is None


class AtomicDiskSaver(DiskSaver):
    """ignite's ``DiskSaver`` writing through ``atomic_io.write_atomic`` (a temporary file, fsync, rename; the mode
    from the umask), so a crash or SIGKILL during a save never leaves a partial checkpoint under its name.

    With a fixed ``filename`` every save goes to that name and ``remove`` leaves the file in place: the next save
    replaces it atomically (MONAI's own saver deletes it first, then writes it in place, non-atomically). Otherwise
    the file ignite asks to remove (the oldest beyond ``n_saved``, asked just before the new save) is removed only
    once the new one is saved, so a kill in between never leaves the folder without a checkpoint.
    """

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, atomic=False, require_empty=False)
        self.filename = filename
        self._to_remove: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        filename = self.filename or filename
        super().__call__(checkpoint, filename, metadata)
        for old in self._to_remove:
            if old != filename:
                (Path(self.dirname) / old).unlink(missing_ok=True)
        self._to_remove.clear()

    def _save_func(self, checkpoint: Mapping, path: Path, func) -> None:
        write_atomic(path, lambda tmp: func(checkpoint, str(tmp), **self.kwargs))

    def remove(self, filename: str) -> None:
        if self.filename is None:
            self._to_remove.append(filename)


def _use_atomic_saves(saver: CheckpointSaver) -> None:
    """Replace the disk savers of MONAI's ``CheckpointSaver`` (final, key metric, interval) by atomic ones."""
    for name in ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint"):
        checkpoint = getattr(saver, name, None)
        if checkpoint is not None:
            old = checkpoint.save_handler
            checkpoint.save_handler = AtomicDiskSaver(str(old.dirname), getattr(old, "filename", None))


def latest_checkpoint(ckpt_dir: str | os.PathLike, patterns: Sequence[str] = ("checkpoint_*.pt",)) -> str | None:
    """The newest complete training checkpoint in ``ckpt_dir`` (by modification time), or None.

    ``TrainerCheckpointSaver`` writes ``checkpoint_epoch=N.pt`` (every ``ckpt_interval`` epochs) and
    ``checkpoint_final.pt`` (at the end, or when the run fails); files cut short by a crash are skipped.
    """
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None
    files = {p for pattern in patterns for p in folder.glob(pattern) if p.is_file()}
    for path in sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True):
        damage = _checkpoint_damage(path)
        if damage is None:
            return str(path)
        logger.warning(f"skipping damaged checkpoint {path} ({damage}); resuming from an older one if there is one")
    return None


class TrainerCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` that also saves the engine it is attached to (under ``engine_key``).

    A bundle config cannot name ``@train#trainer`` inside the trainer's own handlers (a circular reference), so the
    engine's state (iteration, epoch) is added when the handler is attached. Saves are atomic
    (:class:`AtomicDiskSaver`), and the interval checkpoints a resumed run finds in ``save_dir`` count towards
    ``n_saved``. Arguments as ``CheckpointSaver``.
    """

    def __init__(self, save_dir: str, save_dict: dict, engine_key: str = "trainer", **kwargs) -> None:
        super().__init__(save_dir, save_dict, **kwargs)
        _use_atomic_saves(self)
        self._init_args = (save_dir, dict(save_dict), kwargs)
        self.engine_key = engine_key

    def attach(self, engine) -> None:
        save_dir, save_dict, kwargs = self._init_args
        super().__init__(save_dir, {**save_dict, self.engine_key: engine}, **kwargs)
        _use_atomic_saves(self)
        self._adopt_saved_checkpoints()
        super().attach(engine)

    def _adopt_saved_checkpoints(self) -> None:
        """Count the interval checkpoints already in ``save_dir`` (from the run this one resumes) towards
        ``n_saved``, so the oldest are removed as new ones come instead of piling up."""
        checkpoint = getattr(self, "_interval_checkpoint", None)
        if checkpoint is None:
            return
        prefix = f"{checkpoint.filename_prefix}_" if checkpoint.filename_prefix else ""
        pattern = f"{prefix}checkpoint_{checkpoint.score_name}=*.{checkpoint.ext}"
        known = {item.filename for item in checkpoint._saved}
        for path in Path(self.save_dir).glob(pattern):
            score = path.name[len(pattern.split("*")[0]) : -len(f".{checkpoint.ext}")]
            if score.isdigit() and path.name not in known:
                checkpoint._saved.append(Checkpoint.Item(int(score), path.name))
        checkpoint._saved.sort(key=lambda item: item.priority)


def _follow_configured_milestones(scheduler: MultiStepLR, milestones: Counter, gamma: float) -> None:
    """Put the configured ``milestones`` and ``gamma`` back into a ``MultiStepLR`` restored from a checkpoint (its
    state carries the schedule of the run that saved it) and set each group's lr to the configured schedule's value at
    the restored step, so a milestone added to the config before the resumed step applies from the resume on."""
    scheduler.milestones, scheduler.gamma = milestones, gamma
    steps = sum(count for milestone, count in milestones.items() if milestone <= scheduler.last_epoch)
    for group, base_lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base_lr * gamma**steps
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


class TrainerCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` that also restores the engine it is attached to (under ``engine_key``).

    Loads at ``Events.STARTED``: the network, optimizer, scheduler (as given in ``load_dict``) and the engine's
    iteration and epoch, so ``run()`` continues where the checkpoint left off; ``max_epochs`` stays the configured
    one. The config stays the source of truth for the learning-rate schedule: a ``MultiStepLR`` keeps its configured
    milestones and gamma (the checkpoint gives only its step), and the lr follows them from the restored step on.
    Arguments as ``CheckpointLoader``.
    """

    def __init__(self, load_path: str, load_dict: dict, engine_key: str = "trainer", **kwargs) -> None:
        super().__init__(load_path, dict(load_dict), **kwargs)
        self.engine_key = engine_key

    def attach(self, engine) -> None:
        self.load_dict[self.engine_key] = engine
        super().attach(engine)

    def __call__(self, engine) -> None:
        schedules = {
            name: (Counter(obj.milestones), obj.gamma)
            for name, obj in self.load_dict.items()
            if isinstance(obj, MultiStepLR)
        }
        super().__call__(engine)
        lrs = []
        for name, (milestones, gamma) in schedules.items():
            _follow_configured_milestones(self.load_dict[name], milestones, gamma)
            lrs += self.load_dict[name].get_last_lr()
        logger.info(
            f"resumed from {self.load_path} at epoch {engine.state.epoch}, iteration {engine.state.iteration}"
            + (f", lr {', '.join(f'{lr:.3g}' for lr in sorted(set(lrs)))}" if lrs else "")
        )


class BestCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` keeping the model with the best key metric in ``key_metric_filename``, resumable.

    ``save_key_metric`` and ``key_metric_save_state`` are on: the file also holds the saver's record of the best
    score (under ``"checkpointer"``; ``CheckpointLoader`` with ``{"model": net}`` still reads it). With ``resume``
    that record is restored from the file when the handler is attached, so a resumed run does not overwrite the best
    model with its first validation; a damaged file (e.g. from a crash with an older version) is reported and replaced
    at the next validation instead of failing the resume. Saves are atomic (:class:`AtomicDiskSaver`). Other arguments
    as ``CheckpointSaver``.

    Args:
        save_dir: the folder of the file.
        save_dict: objects to save, e.g. ``{"model": network}``.
        key_metric_filename: the file name (e.g. ``model.pt``).
        resume: restore the record from an existing file.
    """

    def __init__(
        self, save_dir: str, save_dict: dict, key_metric_filename: str = "model.pt", resume: bool = False, **kwargs
    ) -> None:
        kwargs.update(save_key_metric=True, key_metric_save_state=True, key_metric_n_saved=1)
        super().__init__(save_dir, save_dict, key_metric_filename=key_metric_filename, **kwargs)
        _use_atomic_saves(self)
        self.path = os.path.join(save_dir, key_metric_filename)
        self.resume = bool(resume)

    def attach(self, engine) -> None:
        super().attach(engine)
        if not self.resume or not os.path.isfile(self.path):
            return
        damage = _checkpoint_damage(Path(self.path))
        if damage is None:
            try:
                state = torch.load(self.path, map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001 - torch raises many types for unreadable files
                damage = f"{type(err).__name__}: {err}"
        if damage is not None:
            logger.warning(
                f"the best model {self.path} is damaged ({damage}); it is replaced at the next validation, and the "
                f"best score so far is forgotten"
            )
            return
        if isinstance(state, Mapping) and "checkpointer" in state:
            self.load_state_dict(state["checkpointer"])
            logger.info(f"restored the best-model record from {self.path}")
