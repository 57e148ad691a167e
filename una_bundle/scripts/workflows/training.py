"""The Python behind the training workflow of ``configs/train.yaml`` (``SupervisedTrainer``, ``SupervisedEvaluator``).

MONAI's trainer calls ``loss_function(pred, label)`` with one label tensor, while :class:`~.losses.UNALoss` needs the
target, the loss weight, the input, the lesion masks and the brain mask. :class:`PrepareBatch` therefore hands the
engines a *dict* label (``{"target", "weight", "image", "lesion", "lesion_flip", "mask"}``) and :class:`UNABatchLoss`
unpacks it for ``UNALoss``; everything else (AMP, compile, gradient accumulation, the iteration events) stays MONAI's.

Pieces, in the order the config uses them:

* :func:`seed_workflow`: one torch seed per process at ``initialize`` (network init, data order, per-worker transform
  seeds; the transforms themselves still draw only from their ``self.R``).
* :class:`SeededTransformd`, :func:`indexed_entries`, :func:`copy_transforms`: the validation pipeline, a copy of the
  training augmentation reseeded per case, so every epoch validates on the same simulated anomalies.
* :class:`PrepareBatch`, :class:`UNABatchLoss`, :class:`LossTermsHandler`, :class:`GradientClipHandler`: one training
  iteration.
* :class:`BrainMetric`, :func:`brain_metric_inputs`: L1, PSNR and SSIM inside the brain mask (MONAI's metrics compare
  whole volumes; the background is 0 in both prediction and target and would flatter them).
* :class:`TrainerCheckpointSaver`, :class:`TrainerCheckpointLoader`, :func:`latest_checkpoint`,
  :class:`BestCheckpointSaver`: checkpoints that include the trainer's own state, and resuming from the newest one.
* :class:`ValidationQCHandler`, :class:`MLflowExtrasHandler`, :class:`EpochTimer`: a QC figure per validation, the
  parameters and loss terms in MLflow, and a progress / ETA line per epoch.
* :func:`init_distributed`: the process group of a ``torchrun`` (multi-GPU) run.
* :func:`training_workflow`, :func:`train` and :data:`PROFILE_CONFIGS`: running the bundle's ``training`` id from Python
  (for the CLI and the tests).
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.handlers import Checkpoint, DiskSaver
from monai.data import MetaTensor
from monai.handlers import CheckpointLoader, CheckpointSaver, MLFlowHandler
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.transforms import Compose, Transform
from monai.utils import CommonKeys, MetricReduction

from ..data.atomic_io import write_atomic
from ..data.bundle_config import BUNDLE_ROOT, make_scripts_importable
from ..scoring.metrics import brain_l1, brain_psnr, brain_ssim

__all__ = [
    "PROFILE_CONFIGS",
    "set_threads",
    "seed_workflow",
    "init_distributed",
    "indexed_entries",
    "copy_transforms",
    "SeededTransformd",
    "PrepareBatch",
    "UNABatchLoss",
    "LossTermsHandler",
    "GradientClipHandler",
    "loss_terms",
    "BrainMetric",
    "brain_metric_inputs",
    "anomaly_dice_inputs",
    "latest_checkpoint",
    "TrainerCheckpointSaver",
    "TrainerCheckpointLoader",
    "BestCheckpointSaver",
    "find_mlflow_handler",
    "executed_config",
    "MLflowExtrasHandler",
    "ValidationQCHandler",
    "EpochTimer",
    "is_rank0",
    "training_workflow",
    "train",
]

logger = logging.getLogger("una.training")


#: Config overlays on ``configs/train.yaml`` per profile: ``cpu`` is the exact recipe of the shipped weights.
PROFILE_CONFIGS: dict[str, tuple[str, ...]] = {"full": ("train.yaml",), "cpu": ("train.yaml", "train_cpu.yaml")}

#: Keys :class:`PrepareBatch` passes as the label dict by default.
LABEL_KEYS = ("target", "weight", "lesion", "lesion_flip", "mask")


def is_rank0() -> bool:
    """True unless ``torch.distributed`` is initialised and this process is not rank 0."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def set_threads(num_threads: int | None) -> None:
    """``torch.set_num_threads`` when ``num_threads`` is given (None: torch's default, one per core).

    On small CPUs one intra-op thread can be much faster than several (measured on a 2-core VM: a 64^3 UNANet
    iteration 0.95 s with 1 thread, 3.4 s with 2), and the data-loading workers need the other cores.
    """
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))


def seed_workflow(seed: int | None) -> int | None:
    """Seed torch's global generator once per process (``initialize``); returns the seed used (None: not seeded).

    The seed drives the network's initial weights, the data order and - through MONAI's ``DataLoader``, which seeds
    each worker's transforms from it - every augmentation. When ``torch.distributed`` is initialised the rank is
    added, so the processes of a multi-GPU run draw different augmentations (DDP broadcasts rank 0's weights).
    cuDNN settings are left alone (deterministic algorithms would slow 3D convolutions).
    """
    if seed is None:
        return None
    seed = int(seed) + (dist.get_rank() if dist.is_available() and dist.is_initialized() else 0)
    torch.manual_seed(seed)
    return seed


def init_distributed(backend: str, device: torch.device | str | None = None) -> int:
    """Join the ``torchrun`` process group (``initialize`` of ``multi_gpu_train.yaml``); returns this process's rank.

    Initialises ``torch.distributed`` (``backend``: ``nccl`` on GPUs, ``gloo`` on CPUs) unless already done, selects
    the CUDA ``device``, then syncs ignite's ``idist`` with the new group on *every* rank. Without that sync the first
    ``idist.get_rank()`` - made by ignite's ``Checkpoint``, which only rank 0 builds - would create a process group
    on rank 0 alone and the run would hang.
    """
    import ignite.distributed as idist

    if not dist.is_available():
        raise ValueError("multi-GPU training needs a torch build with torch.distributed.")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_device(device)
    idist.sync()
    return dist.get_rank()


def indexed_entries(entries: Sequence[Mapping], key: str = "case_index") -> list[dict]:
    """Copies of ``entries`` with their position under ``key`` (the per-case seed of :class:`SeededTransformd`)."""
    return [dict(entry, **{key: index}) for index, entry in enumerate(entries)]


def copy_transforms(transforms: Sequence, exclude: Sequence = ()) -> Compose:
    """A ``Compose`` of deep copies of ``transforms`` (their random states included), leaving out ``exclude``.

    The validation pipeline is the training pipeline without the training patch crop; copies keep reseeding it from
    disturbing the training transforms' random streams.
    """
    excluded = {id(t) for t in exclude}
    return Compose([copy.deepcopy(t) for t in transforms if id(t) not in excluded])


class SeededTransformd(Transform):
    """Apply a random ``transform`` with a seed fixed per case: ``seed + data[index_key]``.

    The result depends only on the case, never on how often or in which order cases are drawn, so a validation set
    with *simulated* anomalies is the same at every epoch (and ``CacheDataset`` may cache it whole: this wrapper is
    not ``Randomizable``). Thread-safe (a lock around reseed-and-apply, as ``CacheDataset`` fills its cache with
    threads).

    Args:
        transform: a randomizable transform (e.g. a ``Compose``), reseeded with ``set_random_state`` per call.
        seed: base seed.
        index_key: key of the case's integer index in the input dict (see :func:`indexed_entries`); it is removed
            from the output.
    """

    def __init__(self, transform: Any, seed: int = 0, index_key: str = "case_index") -> None:
        if not hasattr(transform, "set_random_state"):
            raise ValueError(f"SeededTransformd needs a transform with set_random_state, got {type(transform)}.")
        self.transform = transform
        self.seed = int(seed)
        self.index_key = index_key
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_lock")
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __call__(self, data: Mapping) -> Any:
        if self.index_key not in data:
            raise ValueError(
                f"SeededTransformd: the input has no '{self.index_key}' key (keys: {sorted(data)}); "
                "build the data list with scripts.workflows.training.indexed_entries."
            )
        d = dict(data)
        index = int(d.pop(self.index_key))
        with self._lock:
            self.transform.set_random_state(seed=(self.seed + index) % (2**32))
            return self.transform(d)


class PrepareBatch:
    """``prepare_batch`` of the engines: ``(image, {key: tensor})`` on ``device``, the dict being the "label".

    The trainer's loss (:class:`UNABatchLoss`) and the validation metrics read the target, loss weight, lesion and
    brain masks from that dict; ``image`` is added to it too (the structure term needs the input).

    Args:
        label_keys: batch keys put into the label dict (those missing from a batch are skipped).
        image_key: the network input key.
    """

    def __init__(self, label_keys: Sequence[str] = LABEL_KEYS, image_key: str = "image") -> None:
        self.label_keys = tuple(label_keys)
        self.image_key = image_key

    def __call__(
        self, batchdata: Mapping, device: str | torch.device | None = None, non_blocking: bool = False, **kwargs
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.image_key not in batchdata:
            raise ValueError(f"PrepareBatch: the batch has no '{self.image_key}' key (keys: {sorted(batchdata)}).")

        def move(x: torch.Tensor) -> torch.Tensor:  # plain tensors: MetaTensor bookkeeping slows every network op
            x = x.as_tensor() if isinstance(x, MetaTensor) else x
            return x.to(device=device, non_blocking=non_blocking, **kwargs)

        image = move(batchdata[self.image_key])
        label = {key: move(batchdata[key]) for key in self.label_keys if key in batchdata}
        label[self.image_key] = image
        return image, label


class UNABatchLoss(torch.nn.Module):
    """``loss_function(pred, label_dict)`` for MONAI's trainer: :class:`~.losses.UNALoss` on the dict's tensors.

    Passes ``target``, ``weight``, ``image``, ``lesion``, ``lesion_flip`` and - when ``brain_mask`` - ``mask`` as the
    loss's ``brain_mask``. The detached parts of the last call (``l1``, ``gradient``, ``structure``) are kept in
    :attr:`last_terms` for :class:`LossTermsHandler`.

    Args:
        loss: a ``UNALoss`` (anything with ``components(pred, target, weight, image, lesion, lesion_flip,
            brain_mask)`` returning a dict with ``"loss"``).
        brain_mask: restrict the L1 terms to the brain mask (default False: UNA supervises the whole crop, the
            background target being 0).
    """

    def __init__(self, loss: torch.nn.Module, brain_mask: bool = False) -> None:
        super().__init__()
        self.loss = loss
        self.brain_mask = bool(brain_mask)
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(self, pred: torch.Tensor, label: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(label, Mapping) or "target" not in label:
            raise ValueError("UNABatchLoss expects the label dict of scripts.workflows.training.PrepareBatch (with 'target').")
        terms = self.loss.components(
            pred=pred,
            target=label["target"],
            weight=label.get("weight"),
            image=label.get("image"),
            lesion=label.get("lesion"),
            lesion_flip=label.get("lesion_flip"),
            brain_mask=label.get("mask") if self.brain_mask else None,
        )
        self.last_terms = {f"loss_{k}": v.detach() for k, v in terms.items() if k != "loss"}
        return terms["loss"]


class LossTermsHandler:
    """Copy the loss function's ``last_terms`` (see :class:`UNABatchLoss`) into the trainer's output.

    Runs at ``IterationEvents.LOSS_COMPLETED``, before MONAI decollates the output, so ``loss_l1``, ``loss_gradient``,
    ``loss_structure`` and ``loss_anomaly`` reach the output like ``loss`` does (StatsHandler, MLflow).
    """

    def attach(self, engine) -> None:
        from monai.engines.utils import IterationEvents

        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine) -> None:
        terms = getattr(engine.loss_function, "last_terms", None)
        if terms and isinstance(engine.state.output, dict):
            engine.state.output.update(terms)


class GradientClipHandler:
    """Clip the gradient norm after the backward pass (``IterationEvents.BACKWARD_COMPLETED``).

    With AMP the gradients are unscaled first (``GradScaler.unscale_``), so ``max_norm`` applies to the true
    gradients. The norm before clipping is written to the output as ``grad_norm``. Needs ``accumulation_steps=1``.

    Args:
        max_norm: the largest allowed total L2 norm (``None`` or <= 0: only measure it).
    """

    def __init__(self, max_norm: float | None = 1.0) -> None:
        self.max_norm = None if max_norm is None or max_norm <= 0 else float(max_norm)

    def attach(self, engine) -> None:
        from monai.engines.utils import IterationEvents

        if getattr(engine, "accumulation_steps", 1) != 1:
            raise ValueError("GradientClipHandler supports accumulation_steps=1 only.")
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine) -> None:
        if getattr(engine, "amp", False) and getattr(engine, "scaler", None) is not None:
            engine.scaler.unscale_(engine.optimizer)
        params = [p for p in engine.network.parameters() if p.grad is not None]
        max_norm = self.max_norm if self.max_norm is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if isinstance(engine.state.output, dict):
            engine.state.output["grad_norm"] = norm.detach()


def loss_terms(output: Any) -> dict[str, float]:
    """Output transform: ``{"loss", "loss_l1", "loss_gradient", "loss_structure", "loss_anomaly", "grad_norm"}`` as
    floats."""
    item = output[0] if isinstance(output, (list, tuple)) else output
    keys = ("loss", "loss_l1", "loss_gradient", "loss_structure", "loss_anomaly", "grad_norm")
    return {k: float(item[k]) for k in keys if k in item}


class BrainMetric(CumulativeIterationMetric):
    """L1, PSNR or SSIM between a prediction and its target *inside the brain*, per case then averaged.

    ``y`` carries the target and, as its **last channel**, the brain mask (see :func:`brain_metric_inputs`):
    ``y_pred`` ``[B, C, X, Y, Z]``, ``y`` ``[B, C + 1, X, Y, Z]``. The values are those of :mod:`.metrics`
    (``brain_l1``, ``brain_psnr``, ``brain_ssim``: the same definitions as ``una-bundle evaluate``); a case with an
    empty mask gives NaN, which the mean reduction skips.

    Args:
        metric: ``"l1"``, ``"psnr"`` or ``"ssim"``.
        data_range: intensity range (1 for the [0, 1] targets).
        reduction: MONAI ``MetricReduction`` over the cases.
        get_not_nans: also return the number of non-NaN cases from :meth:`aggregate`.
    """

    _METRICS = {"l1": brain_l1, "psnr": brain_psnr, "ssim": brain_ssim}

    def __init__(
        self,
        metric: str = "l1",
        data_range: float = 1.0,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        if metric not in self._METRICS:
            raise ValueError(f"metric must be one of {tuple(self._METRICS)}, got {metric!r}.")
        self.metric = metric
        self.data_range = float(data_range)
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if y_pred.dim() < 3 or y.shape[0] != y_pred.shape[0] or y.shape[1] != y_pred.shape[1] + 1:
            raise ValueError(
                f"BrainMetric expects y_pred [B, C, ...] and y [B, C + 1, ...] (target + brain mask), got "
                f"{tuple(y_pred.shape)} and {tuple(y.shape)}."
            )
        if y.shape[2:] != y_pred.shape[2:]:
            raise ValueError(f"BrainMetric: spatial shapes differ, {tuple(y_pred.shape)} vs {tuple(y.shape)}.")
        args = (torch.as_tensor(y_pred), torch.as_tensor(y[:, :-1]), torch.as_tensor(y[:, -1:]) > 0.5)
        kwargs = {"spatial_dims": y_pred.dim() - 2}
        if self.metric != "l1":
            kwargs["data_range"] = self.data_range
        return self._METRICS[self.metric](*args, **kwargs).reshape(-1, 1)

    def aggregate(self, reduction: MetricReduction | str | None = None) -> Any:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"BrainMetric: the buffer must be a tensor, got {type(data)}.")
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f


def brain_metric_inputs(output: Sequence[Mapping]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Output transform for :class:`BrainMetric`: the predicted healthy T1w (channel 0) clipped to [0, 1] (as at
    inference) and the target stacked with the brain mask, from the evaluator's decollated output (label dict of
    :class:`PrepareBatch`)."""
    preds, ys = [], []
    for item in output:
        label = item[CommonKeys.LABEL]
        preds.append(item[CommonKeys.PRED][:1].clamp(0, 1))
        ys.append(torch.cat([label["target"], label["mask"].to(label["target"])], dim=0))
    return preds, ys


def anomaly_dice_inputs(output: Sequence[Mapping], threshold: float = 0.5) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Output transform for MONAI's ``DiceMetric`` on the anomaly head: ``sigmoid(channel 1) > threshold`` against
    the simulated lesion mask (cases without a lesion give NaN, skipped by the mean)."""
    preds, ys = [], []
    for item in output:
        pred = item[CommonKeys.PRED]
        if pred.shape[0] < 2:
            raise ValueError(f"anomaly_dice_inputs: the prediction has no anomaly channel, shape {tuple(pred.shape)}.")
        preds.append((torch.sigmoid(pred[1:2].float()) > threshold).float())
        ys.append((item[CommonKeys.LABEL]["lesion"] > 0.5).float())
    return preds, ys


# --- checkpoints and resuming -----------------------------------------------------------------------------------------


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


class TrainerCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` that also restores the engine it is attached to (under ``engine_key``).

    Loads at ``Events.STARTED``: the network, optimizer, scheduler (as given in ``load_dict``) and the engine's
    iteration and epoch, so ``run()`` continues where the checkpoint left off; ``max_epochs`` stays the configured
    one. Arguments as ``CheckpointLoader``.
    """

    def __init__(self, load_path: str, load_dict: dict, engine_key: str = "trainer", **kwargs) -> None:
        super().__init__(load_path, dict(load_dict), **kwargs)
        self.engine_key = engine_key

    def attach(self, engine) -> None:
        self.load_dict[self.engine_key] = engine
        super().attach(engine)

    def __call__(self, engine) -> None:
        super().__call__(engine)
        logger.info(f"resumed from {self.load_path} at epoch {engine.state.epoch}, iteration {engine.state.iteration}")


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


# --- logging: MLflow extras, QC figure, progress ----------------------------------------------------------------------


def find_mlflow_handler(engine) -> MLFlowHandler | None:
    """The ``MLFlowHandler`` attached to ``engine`` (e.g. by ``monai.bundle run --tracking mlflow``), or None."""
    for entries in getattr(engine, "_event_handlers", {}).values():
        for handler, _, _ in entries:
            if hasattr(handler, "_parent"):
                handler = handler._parent()
            owner = getattr(handler, "__self__", None)
            if isinstance(owner, MLFlowHandler):
                return owner
    return None


def _flat_params(params: Mapping, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat_params(value, f"{name}."))
        else:
            out[name] = str(list(value) if isinstance(value, (tuple, torch.Size)) else value)[:500]
    return out


def executed_config(output_dir: str | os.PathLike) -> str | None:
    """The newest ``config_*.json`` in ``output_dir``: the config with its overrides that ``monai.bundle run
    --tracking`` writes there before the run starts (None when there is none)."""
    files = sorted(Path(output_dir).glob("config_*.json"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    return str(files[-1]) if files else None


class MLflowExtrasHandler:
    """Log what MONAI's ``MLFlowHandler`` does not: run parameters, the executed config and the loss terms.

    Attach to the trainer next to the ``MLFlowHandler`` that ``--tracking mlflow`` adds, and it uses that handler's
    client and run (nothing happens without one, or on ranks other than 0): at the first iteration it records
    ``params`` (flattened, values as strings; parameters the run already has are skipped, as on a resume) and the
    ``config_file`` artifact (under ``config/``), and at every ``interval``-th iteration the metrics
    ``train_loss_l1``, ``train_loss_gradient``, ``train_loss_structure`` and ``train_grad_norm``.

    Args:
        params: parameters to record, e.g. ``{"roi_size": [160, 160, 160], "levels": 6}``.
        interval: log the loss terms every this many iterations.
        config_file: the config as run (see :func:`executed_config`); None: none. MONAI's handler is meant to log it
            but misses it when ``output_dir`` is given as a plain path (it builds the file name as an expression).
    """

    def __init__(self, params: Mapping | None = None, interval: int = 1, config_file: str | None = None) -> None:
        self.params = _flat_params(params or {})
        self.interval = max(int(interval), 1)
        self.config_file = config_file
        self._params_logged = False

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        if not is_rank0():
            return
        mlflow_handler = find_mlflow_handler(engine)
        if mlflow_handler is None or mlflow_handler.cur_run is None:
            return
        import mlflow

        run_id = mlflow_handler.cur_run.info.run_id
        if not self._params_logged:
            logged = mlflow_handler.client.get_run(run_id).data.params
            new = [mlflow.entities.Param(k, v) for k, v in self.params.items() if k not in logged]
            if new:
                mlflow_handler.client.log_batch(run_id=run_id, params=new)
            if self.config_file is not None and os.path.isfile(self.config_file):
                mlflow_handler.client.log_artifact(run_id, self.config_file, artifact_path="config")
            self._params_logged = True
        if engine.state.iteration % self.interval:
            return
        terms = loss_terms(engine.state.output)
        stamp = int(time.time() * 1000)
        step = engine.state.iteration
        metrics = [mlflow.entities.Metric(f"train_{k}", v, stamp, step) for k, v in terms.items() if k != "loss"]
        if metrics:
            mlflow_handler.client.log_batch(run_id=run_id, metrics=metrics)


def _axial(volume: torch.Tensor, z: int) -> np.ndarray:
    return np.rot90(volume.detach().float().cpu().numpy()[:, :, z])


def qc_figure(item: Mapping, path: str | os.PathLike, title: str = "") -> str:
    """Write a PNG of one validation case: input, flip channel, prediction, target and ``|prediction - target|``
    (axial slice through the lesion's centre, or the middle), lesion outlined in red, brain in cyan."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image, output = item[CommonKeys.IMAGE], item[CommonKeys.PRED]
    pred = output[:1].clamp(0, 1)
    label = item[CommonKeys.LABEL]
    target, lesion, mask = label["target"], label.get("lesion"), label.get("mask")
    has_lesion = lesion is not None and bool((lesion > 0.5).any())
    z = int((lesion[0] > 0.5).nonzero()[:, 2].float().mean()) if has_lesion else target.shape[-1] // 2
    panels = [
        ("input", image[0], "gray", 1.0),
        ("flip channel", image[1], "gray", 1.0),
        ("prediction", pred[0], "gray", 1.0),
        ("target", target[0], "gray", 1.0),
        ("|prediction - target|", (pred[0] - target[0]).abs(), "magma", 0.5),
    ]
    if output.shape[0] > 1:
        panels.append(("anomaly head", torch.sigmoid(output[1].float()), "magma", 1.0))
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.3), facecolor="black")
    for ax, (name, volume, cmap, vmax) in zip(axes, panels):
        ax.imshow(_axial(volume, z), cmap=cmap, vmin=0, vmax=vmax)
        if mask is not None:
            ax.contour(_axial(mask[0], z), levels=[0.5], colors="cyan", linewidths=0.4)
        if has_lesion:
            ax.contour(_axial(lesion[0], z), levels=[0.5], colors="red", linewidths=0.6)
        ax.set_title(name, color="white", fontsize=9)
        ax.axis("off")
    fig.suptitle(title, color="white", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90, facecolor="black")
    plt.close(fig)
    tmp.replace(path)
    return str(path)


class ValidationQCHandler:
    """After each validation's first case, write a QC PNG to ``output_dir`` and log it to MLflow (when tracked).

    The figure (:func:`qc_figure`) is ``validation_epoch_NNNN.png``, logged under the run's ``qc/`` artifacts by the
    evaluator's ``MLFlowHandler``'s client. Only rank 0 writes.

    Args:
        output_dir: folder of the PNG files.
    """

    def __init__(self, output_dir: str) -> None:
        self.output_dir = output_dir

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        if engine.state.iteration != 1 or not is_rank0():
            return
        output = engine.state.output
        item = output[0] if isinstance(output, (list, tuple)) else output
        epoch = int(engine.state.epoch)
        path = os.path.join(self.output_dir, f"validation_epoch_{epoch:04d}.png")
        try:
            qc_figure(item, path, title=f"validation case 0, epoch {epoch}")
        except (KeyError, IndexError, ValueError) as err:  # a QC figure must never stop training
            logger.warning(f"QC figure skipped: {type(err).__name__}: {err}")
            return
        mlflow_handler = find_mlflow_handler(engine)
        if mlflow_handler is not None and mlflow_handler.cur_run is not None:
            mlflow_handler.client.log_artifact(mlflow_handler.cur_run.info.run_id, path, artifact_path="qc")


class EpochTimer:
    """Log a progress line per epoch: iterations done, seconds per iteration, learning rate and the time left.

    Args:
        name: logger name.
    """

    def __init__(self, name: str = "una.training") -> None:
        self.logger = logging.getLogger(name)
        self._start: float | None = None
        self._start_iteration = 0

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def epoch_started(self, engine) -> None:
        self._start = time.perf_counter()
        self._start_iteration = engine.state.iteration

    def epoch_completed(self, engine) -> None:
        if self._start is None or not is_rank0():
            return
        state = engine.state
        done = state.iteration - self._start_iteration
        seconds = (time.perf_counter() - self._start) / max(done, 1)
        total = (state.max_epochs or 0) * (state.epoch_length or 0)
        left = max(total - state.iteration, 0) * seconds
        lr = engine.optimizer.param_groups[0]["lr"] if hasattr(engine, "optimizer") else float("nan")
        hours, rest = divmod(int(left), 3600)
        self.logger.info(
            f"epoch {state.epoch}/{state.max_epochs} done: iteration {state.iteration}/{total} "
            f"({100 * state.iteration / max(total, 1):.1f} %), {seconds:.2f} s/iteration, lr {lr:.2e}, "
            f"about {hours} h {rest // 60:02d} min left (training only)"
        )


# --- running the bundle from Python -----------------------------------------------------------------------------------


def training_workflow(
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike = "una_training",
    profile: str = "full",
    tracking: str | None = None,
    bundle_root: str | os.PathLike = BUNDLE_ROOT,
    **overrides: Any,
):
    """The bundle's training workflow (``configs/train.yaml``), initialised and ready to ``run()``.

    What ``python -m monai.bundle run training --config_file configs/train.yaml --dataset_dir ... --output_dir ...``
    builds, with the bundle root on ``sys.path``: a ``ConfigWorkflow`` whose ``run()`` trains and whose
    ``parser.get_parsed_content("train#trainer")`` is the trainer (to inspect it or attach handlers first).
    ``profile="cpu"`` adds ``configs/train_cpu.yaml`` (:data:`PROFILE_CONFIGS`, the shipped weights' recipe);
    ``tracking="mlflow"`` records the run in
    ``<output_dir>/mlruns.db``; ``overrides`` replace config ids (``#`` ids through a dict:
    ``**{"network_def#levels": 4}``) and win over the profile.
    """
    from monai.bundle import ConfigWorkflow, create_workflow

    if profile not in PROFILE_CONFIGS:
        raise ValueError(f"profile must be one of {tuple(PROFILE_CONFIGS)}, got {profile!r}.")
    datalist = Path(dataset_dir) / "datalist.json"
    if not datalist.is_file():
        raise FileNotFoundError(f"no datalist.json in dataset_dir {dataset_dir} (make one: una-bundle prepare-demo).")
    from ..data.datalist import load_datalist

    for section in ("training", "validation"):  # one line naming the key or file now, not a traceback from the config
        load_datalist(datalist, section, require_subjects=True)
    root = make_scripts_importable(bundle_root)
    settings = dict(overrides)
    settings.update(
        bundle_root=str(root), dataset_dir=str(Path(dataset_dir).resolve()), output_dir=str(Path(output_dir).resolve())
    )
    return create_workflow(
        workflow_name=ConfigWorkflow,
        config_file=[str(root / "configs" / name) for name in PROFILE_CONFIGS[profile]],
        logging_file=str(root / "configs" / "logging.conf"),
        run_id="training",
        tracking=tracking,
        **settings,
    )


def train(
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike = "una_training",
    profile: str = "full",
    tracking: str | None = None,
    bundle_root: str | os.PathLike = BUNDLE_ROOT,
    **overrides: Any,
) -> str:
    """Train: build :func:`training_workflow` with these arguments, run and finalise it; returns the output folder
    (``models/model.pt`` is the best validation model, ``models/checkpoint_*.pt`` the resume checkpoints)."""
    workflow = training_workflow(dataset_dir, output_dir, profile, tracking, bundle_root, **overrides)
    workflow.run()
    workflow.finalize()
    return str(Path(output_dir).resolve())
