"""Brain-masked image metrics (UNA, section 6), one definition for evaluation and training.

Built on MONAI's functional metrics, per case:

* :func:`brain_l1`: mean ``|pred - truth|`` over the brain voxels (``compute_mean_error_metrics``, as ``MAEMetric``).
* :func:`brain_psnr`: ``20 log10(data_range) - 10 log10(MSE)``, MSE over the brain voxels (as ``PSNRMetric``;
  ``inf`` when identical).
* :func:`brain_ssim`: MONAI's SSIM map (:func:`ssim_map`: ``compute_ssim_and_cs``, Gaussian window) averaged over
  the brain voxels. Both images are set to 0 outside the brain (a skull-stripped comparison) and zero-padded by
  half a window, so the map has the image's shape and every brain voxel, border included, has a value. The paper's
  window is a Gaussian of sigma 5 voxels (default here), truncated to ``kernel_size`` = 11 voxels per axis as in MONAI.
* :func:`dice`: ``compute_dice`` of two binary masks; two empty masks score 1.
* :class:`BrainMetric`: any of the first three as a MONAI cumulative metric (validation during training).

Shapes: ``pred``, ``truth`` (and ``mask``) are one case ``[*spatial]`` or ``[C, *spatial]`` (result: a 0-d tensor),
or a batch ``[B, C, *spatial]`` (result: ``[B]``), with ``spatial_dims`` spatial axes. ``mask`` is non-zero inside
the brain, with one channel or ``pred``'s channels; ``None`` means everywhere. A case with an empty mask gives NaN
(skipped by MONAI's mean reductions).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from monai.metrics import CumulativeIterationMetric, compute_dice
from monai.metrics.regression import compute_mean_error_metrics, compute_ssim_and_cs
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

__all__ = ["brain_l1", "brain_psnr", "ssim_map", "brain_ssim", "dice", "BrainMetric"]


def _batch(x, name: str, spatial_dims: int) -> tuple[torch.Tensor, bool]:
    """``x`` as a float ``[B, C, *spatial]`` tensor (no metadata), and whether it was batched."""
    t = torch.as_tensor(x.as_tensor() if hasattr(x, "as_tensor") else x)
    extra = t.ndim - spatial_dims
    if extra not in (0, 1, 2):
        raise ValueError(
            f"{name} must be [*spatial], [C, *spatial] or [B, C, *spatial] with {spatial_dims} spatial axes, got "
            f"shape {tuple(t.shape)}."
        )
    return t.reshape((1,) * (2 - extra) + tuple(t.shape)).float(), extra == 2


def _cases(pred, truth, mask, spatial_dims: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """Checked ``(pred, truth, boolean brain expanded to pred's shape, batched)``."""
    p, batched = _batch(pred, "pred", spatial_dims)
    t, _ = _batch(truth, "truth", spatial_dims)
    if p.shape != t.shape:
        raise ValueError(f"pred {tuple(p.shape)} and truth {tuple(t.shape)} must have the same shape.")
    t = t.to(p.device)
    if mask is None:
        return p, t, torch.ones_like(p, dtype=torch.bool), batched
    m, _ = _batch(mask, "mask", spatial_dims)
    if m.shape[0] != p.shape[0] or m.shape[2:] != p.shape[2:] or m.shape[1] not in (1, p.shape[1]):
        raise ValueError(f"mask {tuple(m.shape)} must have the images' shape {tuple(p.shape)} (or one channel).")
    return p, t, (m > 0).to(p.device).expand_as(p), batched


def _per_case(values: list[torch.Tensor], batched: bool) -> torch.Tensor:
    out = torch.stack(values)
    return out if batched else out[0]


def brain_l1(pred, truth, mask=None, spatial_dims: int = 3) -> torch.Tensor:
    """Mean absolute error over the brain voxels, per case (shapes: module docstring)."""
    p, t, brain, batched = _cases(pred, truth, mask, spatial_dims)
    nan = p.new_tensor(float("nan"))
    values = [
        compute_mean_error_metrics(pi[bi][None], ti[bi][None], func=torch.abs)[0, 0] if bi.any() else nan
        for pi, ti, bi in zip(p, t, brain)
    ]
    return _per_case(values, batched)


def brain_psnr(pred, truth, mask=None, data_range: float = 1.0, spatial_dims: int = 3) -> torch.Tensor:
    """PSNR in dB over the brain voxels, per case; ``inf`` for identical images (shapes: module docstring)."""
    p, t, brain, batched = _cases(pred, truth, mask, spatial_dims)
    values = []
    for pi, ti, bi in zip(p, t, brain):
        if not bi.any():
            values.append(p.new_tensor(float("nan")))
            continue
        mse = compute_mean_error_metrics(pi[bi][None], ti[bi][None], func=torch.square)[0, 0]
        values.append(20 * math.log10(data_range) - 10 * torch.log10(mse))
    return _per_case(values, batched)


def ssim_map(
    pred,
    truth,
    mask=None,
    kernel_sigma: float = 5.0,
    kernel_size: int = 11,
    data_range: float = 1.0,
    spatial_dims: int = 3,
) -> torch.Tensor:
    """The SSIM map ``[B, C, *spatial]`` of ``pred`` and ``truth``, both zeroed outside the brain and zero-padded by
    ``kernel_size // 2`` (MONAI's ``compute_ssim_and_cs`` on the padded images: same shape as the input).

    Args:
        pred, truth, mask: see the module docstring.
        kernel_sigma: Gaussian window sigma in voxels (the paper: 5).
        kernel_size: window size per axis (odd; MONAI ``SSIMMetric``'s default 11).
        data_range: intensity range (1 for ``[0, 1]`` images).
        spatial_dims: number of spatial axes.
    """
    if int(kernel_size) != kernel_size or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd positive integer, got {kernel_size}.")
    p, t, brain, _ = _cases(pred, truth, mask, spatial_dims)
    r = int(kernel_size) // 2
    padded = [F.pad(x * brain, [r] * (2 * spatial_dims)) for x in (p, t)]
    ssim, _ = compute_ssim_and_cs(
        *padded,
        spatial_dims=spatial_dims,
        kernel_size=[int(kernel_size)] * spatial_dims,
        kernel_sigma=[float(kernel_sigma)] * spatial_dims,
        data_range=data_range,
    )
    return ssim


def brain_ssim(
    pred,
    truth,
    mask=None,
    kernel_sigma: float = 5.0,
    kernel_size: int = 11,
    data_range: float = 1.0,
    spatial_dims: int = 3,
) -> torch.Tensor:
    """Mean of :func:`ssim_map` over the brain voxels, per case (arguments as :func:`ssim_map`)."""
    _, _, brain, batched = _cases(pred, truth, mask, spatial_dims)
    ssim = ssim_map(pred, truth, mask, kernel_sigma, kernel_size, data_range, spatial_dims)
    nan = ssim.new_tensor(float("nan"))
    return _per_case([si[bi].mean() if bi.any() else nan for si, bi in zip(ssim, brain)], batched)


def dice(pred_mask, truth_mask, spatial_dims: int = 3) -> torch.Tensor:
    """Dice of two binary masks (non-zero = foreground) over all channels, per case; 1 when both are empty."""
    p, batched = _batch(pred_mask, "pred_mask", spatial_dims)
    t, _ = _batch(truth_mask, "truth_mask", spatial_dims)
    if p.shape != t.shape:
        raise ValueError(f"pred_mask {tuple(p.shape)} and truth_mask {tuple(t.shape)} must have the same shape.")
    flat = [(x > 0).float().reshape(x.shape[0], 1, -1) for x in (p, t.to(p.device))]
    return _per_case(list(compute_dice(*flat, include_background=True, ignore_empty=False)[:, 0]), batched)


class BrainMetric(CumulativeIterationMetric):
    """L1, PSNR or SSIM between a prediction and its target *inside the brain*, per case then averaged.

    ``y`` carries the target and, as its **last channel**, the brain mask (see :func:`brain_metric_inputs`):
    ``y_pred`` ``[B, C, X, Y, Z]``, ``y`` ``[B, C + 1, X, Y, Z]``. The values are those of this module
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
