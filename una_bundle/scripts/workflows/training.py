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
* :func:`brain_metric_inputs`, :func:`anomaly_dice_inputs`: the validation metrics' inputs (``scoring.metrics``'
  ``BrainMetric``: L1, PSNR and SSIM inside the brain mask; MONAI's metrics compare whole volumes, and the background
  is 0 in both prediction and target and would flatter them).
* Checkpoints that include the trainer's own state, and resuming from the newest one: ``workflows.checkpoints``.
* A QC figure per validation, the parameters and loss terms in MLflow, a progress / ETA line per epoch:
  ``workflows.tracking``.
* :func:`init_distributed`: the process group of a ``torchrun`` (multi-GPU) run.
* :func:`training_workflow`, :func:`train` and :data:`PROFILE_CONFIGS`: running the bundle's ``training`` id from Python
  (for the CLI and the tests).
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from monai.data import MetaTensor
from monai.transforms import Compose, Transform
from monai.utils import CommonKeys

from ..data.bundle_config import BUNDLE_ROOT, make_scripts_importable

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
    "brain_metric_inputs",
    "anomaly_dice_inputs",
    "is_rank0",
    "TrainingFinishedError",
    "TrainingInterrupted",
    "guard_preparation",
    "run_training",
    "training_workflow",
    "train",
]


#: Config overlays on ``configs/train.yaml`` per profile: ``cpu`` is the exact recipe of the shipped weights, ``gpu``
#: the same recipe with 8 patches per step and the loader on every core (to continue it on one GPU).
PROFILE_CONFIGS: dict[str, tuple[str, ...]] = {
    "full": ("train.yaml",),
    "cpu": ("train.yaml", "train_cpu.yaml"),
    "gpu": ("train.yaml", "train_cpu.yaml", "train_gpu.yaml"),
}

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
            raise ValueError(
                "UNABatchLoss expects the label dict of scripts.workflows.training.PrepareBatch (with 'target')."
            )
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


def anomaly_dice_inputs(
    output: Sequence[Mapping], threshold: float = 0.5
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
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


# --- the ``training`` id: a run that has nothing left to do, Ctrl-C ---------------------------------------------------


class TrainingFinishedError(FileExistsError):
    """The run in ``output_dir`` already reached ``max_epochs``: nothing to train (see :func:`run_training`)."""


def _interrupted_while_preparing(signum, frame) -> None:
    print(
        "training interrupted while preparing (configs, data caching) before its first iteration: nothing was saved; "
        "run the same command again to start",
        file=sys.stderr,
        flush=True,
    )
    os._exit(130)  # caching threads may be mid-work: leave at once, as a Ctrl-C would


def guard_preparation(exit_on_error: bool = True) -> None:
    """From ``initialize`` until :func:`run_training` starts the trainer: Ctrl-C (SIGINT) prints one line and exits
    with code 130 (the dataset's caching would otherwise end in a long traceback). Only with ``exit_on_error`` (the
    bundle run; the Python API keeps ``KeyboardInterrupt``) and in the main thread. Also in a background job (which
    inherits SIGINT ignored): a ``kill -INT`` then stops it as Ctrl-C would, and during training saves a checkpoint."""
    if exit_on_error and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupted_while_preparing)


class _NoEmptyExceptionLine(logging.Filter):
    """Drops ignite's "Engine run is terminating due to exception: " line when the exception has no text (Ctrl-C):
    :func:`run_training` prints the line that says what to do."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().rstrip().endswith("due to exception:")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says where the newest checkpoint is and how to resume."""


def _saved_progress(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(iteration, epoch_length)`` of the trainer state in checkpoint ``path`` (memory-mapped: the tensors are not
    read), or None when it holds none."""
    saved = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    state = saved.get("trainer") if isinstance(saved, Mapping) else None
    if not isinstance(state, Mapping) or not state.get("epoch_length"):
        return None
    return int(state["iteration"]), int(state["epoch_length"])


def run_training(trainer, resume_from: str | None = None, ckpt_dir: str | None = None, exit_on_error: bool = True):
    """The bundle's ``training`` id: ``trainer.run()``, with one line instead of a traceback when there is nothing to
    do or on Ctrl-C.

    * The checkpoint to resume from (``resume_from``) already reached the configured ``max_epochs``: nothing runs (no
      MLflow run is created); the line says where the model is and how to train longer.
    * Ctrl-C (``KeyboardInterrupt``): the trainer saves ``checkpoint_final.pt`` as it stops; the line names the newest
      checkpoint in ``ckpt_dir`` and says to run the same command again to resume from it (ignite's own, empty,
      "terminating due to exception" line is dropped). Before this, while the data is cached, :func:`guard_preparation`
      answers Ctrl-C.

    With ``exit_on_error`` (``python -m monai.bundle run``, config id ``exit_on_error``) the line goes to stderr and the
    process exits with code 2 (finished) or 130 (Ctrl-C); otherwise (the Python API, ``una-bundle train``)
    :class:`TrainingFinishedError` / :class:`TrainingInterrupted` carry it.
    """
    max_epochs = int(trainer.state.max_epochs or 0)
    progress = _saved_progress(resume_from) if resume_from is not None else None
    if progress is not None and progress[0] >= max_epochs * progress[1]:
        folder = Path(ckpt_dir) if ckpt_dir is not None else Path(resume_from).parent
        epoch = progress[0] // progress[1]
        message = (
            f"training in {folder.parent} has already finished (epoch {epoch} of max_epochs {max_epochs}; "
            f"model: {folder / 'model.pt'}, checkpoint: {resume_from}): to train longer raise --max_epochs, "
            f"to start afresh pass --resume false or a new --output_dir"
        )
        if exit_on_error:
            if is_rank0():
                print(f"error: {message}", file=sys.stderr, flush=True)
            raise SystemExit(2)
        raise TrainingFinishedError(message)
    if signal.getsignal(signal.SIGINT) is _interrupted_while_preparing:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # from here Ctrl-C saves a checkpoint (below)
    trainer.logger.addFilter(_NoEmptyExceptionLine())
    try:
        return trainer.run()
    except KeyboardInterrupt as err:
        from .checkpoints import latest_checkpoint

        latest = latest_checkpoint(ckpt_dir) if ckpt_dir is not None else None
        where = f"the latest checkpoint is {latest}" if latest else f"no checkpoint was saved in {ckpt_dir}"
        state = trainer.state
        message = (
            f"training interrupted at epoch {state.epoch}, iteration {state.iteration}: {where}; "
            f"run the same command again to resume{' from it' if latest else ''}"
        )
        if exit_on_error:
            if is_rank0():
                print(message, file=sys.stderr, flush=True)
            raise SystemExit(130) from None
        raise TrainingInterrupted(message) from err


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
    ``profile="cpu"`` adds ``configs/train_cpu.yaml`` (:data:`PROFILE_CONFIGS`, the shipped weights' recipe), ``"gpu"``
    also ``configs/train_gpu.yaml``;
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
    settings = {"exit_on_error": False, **overrides}  # errors and Ctrl-C raise (see run_training)
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
    try:
        workflow.run()
    except RuntimeError as err:  # the config's expression wraps the error: raise the run's own
        cause = err.__cause__  # of the config's copy of this module, scripts.workflows.training (by name)
        if isinstance(cause, FileExistsError) and type(cause).__name__ == TrainingFinishedError.__name__:
            raise TrainingFinishedError(str(cause)) from None
        raise
    workflow.finalize()
    return str(Path(output_dir).resolve())
