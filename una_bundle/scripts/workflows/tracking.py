"""What a training run records besides its checkpoints: parameters, loss terms and the executed config in MLflow
(:class:`MLflowExtrasHandler`), a QC figure per validation (:class:`ValidationQCHandler`) and a progress / ETA line
per epoch (:class:`EpochTimer`)."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from monai.handlers import MLFlowHandler
from monai.utils import CommonKeys

from ..data.atomic_io import write_atomic
from .training import is_rank0, loss_terms

__all__ = [
    "find_mlflow_handler",
    "executed_config",
    "MLflowExtrasHandler",
    "qc_figure",
    "ValidationQCHandler",
    "EpochTimer",
]

logger = logging.getLogger("una.training")


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
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=90, facecolor="black", format="png"))
    finally:
        plt.close(fig)
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

    Within an epoch, when stderr is a terminal, a shorter line (epoch, iteration, loss, time left) every
    ``every_s`` seconds, so a long epoch is not silent (a log file gets the per-epoch lines only).

    Args:
        name: logger name.
        every_s: seconds between the lines within an epoch (None: none).
    """

    def __init__(self, name: str = "una.training", every_s: float | None = 60.0) -> None:
        self.logger = logging.getLogger(name)
        self.every_s = every_s
        self._start: float | None = None
        self._start_iteration = 0
        self._last_line = 0.0

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        if self.every_s is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)

    def epoch_started(self, engine) -> None:
        self._start = time.perf_counter()
        self._start_iteration = engine.state.iteration
        self._last_line = self._start

    def _seconds_left(self, engine) -> tuple[float, float, int]:
        """``(seconds per iteration this epoch, seconds left, total iterations)``."""
        state = engine.state
        seconds = (time.perf_counter() - self._start) / max(state.iteration - self._start_iteration, 1)
        total = (state.max_epochs or 0) * (state.epoch_length or 0)
        return seconds, max(total - state.iteration, 0) * seconds, total

    def iteration_completed(self, engine) -> None:
        now = time.perf_counter()
        state = engine.state
        if self._start is None or now - self._last_line < self.every_s or not is_rank0():
            return
        if state.epoch_length and state.iteration % state.epoch_length == 0:  # the epoch's own line follows
            return
        if not getattr(sys.stderr, "isatty", lambda: False)():
            return
        self._last_line = now
        seconds, left, total = self._seconds_left(engine)
        loss = loss_terms(state.output).get("loss", float("nan")) if state.output is not None else float("nan")
        hours, rest = divmod(int(left), 3600)
        self.logger.info(
            f"epoch {state.epoch}/{state.max_epochs}: iteration {state.iteration}/{total}, loss {loss:.4f}, "
            f"{seconds:.2f} s/iteration, about {hours} h {rest // 60:02d} min left (training only)"
        )

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
