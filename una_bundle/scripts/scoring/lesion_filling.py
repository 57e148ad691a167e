"""The lesion-filled T1w: the input where it is healthy, the network's healthy synthesis where it is anomalous.

For a T1w input the best healthy image of the subject is mostly the input itself: the synthesis is a
reconstruction (smoother, and on a brain the network never saw, not exact), while the input holds the subject's
real anatomy everywhere but in the anomaly. :func:`fill_anomaly` therefore blends the two by the anomaly
probability ``p`` of the network's anomaly head and its mask (the same mask the user gets: the anomaly that is
reported is the anomaly that is filled), on the input's own grid and in its own intensity units::

    filled = (1 - w) * image + w * detail(gain * synthesized + offset),
    w = 1 in the anomaly mask, p / threshold in a one-voxel rim around it (partial-volume edges), 0 elsewhere

with ``gain`` and ``offset`` fitted by least squares of the synthesis onto the input over the brain where
``p < 0.05`` (the synthesis is intensity-matched to the input before it is pasted in). What is pasted in keeps the
input's own detail where the anomaly left any (:func:`guided_detail`, windows of ``detail_radius``): the matched
synthesis is smooth (a 1 mm reconstruction), while many lesions darken or brighten tissue without erasing its
structure, and a false positive is healthy tissue. In each window the synthesis is regressed on the input, and the
input's deviation from its local mean, times that slope, is added to the synthesis; where the input is flat (a lesion
core with nothing left) the slope is 0 and the synthesis is pasted as it is. On the demo case this turns a loss in
SSIM against the identity into a win (0.9832 -> 0.9877 vs 0.9855; the template's false positives: 0.9962 -> 0.9982).
Outside the anomaly the output is the input, voxel for voxel: no resampling, no intensity normalisation, no clipping.
Lesion-filled T1w images are what registration and FreeSurfer-style pipelines need (SynthSR users ask for exactly
this control).

A noisy input gives a noisy filled image. :func:`suppress_excess_noise` estimates the input's noise (from the variance
of its flattest 3^3 windows in the brain, relative to the brain's 99th percentile) and removes only the part above
``noise_floor`` with a local Wiener filter (3^3 windows): a clean scan (estimate at or below the floor) is returned
unchanged, so only inputs noisier than a good 1 mm T1w are smoothed, and edges (high local variance) are kept.

For other contrasts the input is not a T1w, so only the full synthesis is a healthy T1w. :func:`looks_like_t1`
decides for ``modality="auto"``: the input is T1w-like when its correlation with the synthesised T1w over the
healthy-looking brain is at least ``T1_CORRELATION``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.transforms import Transform
from monai.transforms.utils import generate_spatial_bounding_box
from monai.utils import convert_to_dst_type

from ..data.modalities import NON_T1_MODALITIES, T1_MODALITIES
from ..synthesis.common import voxel_spacing

__all__ = [
    "fill_anomaly",
    "guided_detail",
    "noise_level",
    "suppress_excess_noise",
    "looks_like_t1",
    "is_t1w",
    "healthy_kind",
    "FillAnomalyd",
    "HEALTHY_OUTPUTS",
    "T1_CORRELATION",
]

#: ``healthy_output`` settings: ``auto`` (filled for T1w-like inputs), ``filled`` or ``synthesized`` always.
HEALTHY_OUTPUTS = ("auto", "filled", "synthesized")
#: Least correlation (inside the healthy-looking brain) of input and synthesis for the input to count as T1w-like.
T1_CORRELATION = 0.8
_HEALTHY_BELOW = 0.05  # anomaly probability under which a voxel counts as healthy for the fits
#: Relative noise (std / brain 99th percentile, as :func:`noise_level` measures it) a clean 1 mm T1w may show (the
#: noise-free MNI152 template reads 1 %; a single 1 mm MPRAGE, white-matter SNR 30-50, about 2-3.5 % with its fine
#: anatomy): only the noise above it is removed, so a clean scan is returned as it is. On the held-out T1w with 4 %
#: Rician noise (reads 4.2 %) this floor still brings L1 after a gain from 0.050 to 0.047; 0.025 gives 0.044.
NOISE_FLOOR = 0.035
#: Radius (mm) of the guided filter's windows in the filled region: a lesion's texture at the scale of gyri.
DETAIL_RADIUS_MM = 8.0
#: The guided filter's regulariser, in units of (brain 99th percentile)^2: windows whose input varies less than
#: about sqrt(eps) = 3 % of the brain's range take the synthesis (flat: nothing to keep).
DETAIL_EPS = 1e-3
_CHI2_26_P10 = 0.665072  # scipy.stats.chi2.ppf(0.1, 26) / 26: the 10th percentile of a 27-voxel variance / sigma^2


def _healthy_voxels(probability: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    return (brain > 0.5) & (probability < _HEALTHY_BELOW)


def looks_like_t1(image: torch.Tensor, synthesized: torch.Tensor, probability: torch.Tensor, brain: torch.Tensor):
    """Pearson correlation of ``image`` and ``synthesized`` over the healthy-looking brain, and whether it reaches
    :data:`T1_CORRELATION`. All inputs are ``[X, Y, Z]`` on one grid; returns ``(is_t1_like, correlation)``."""
    keep = _healthy_voxels(probability, brain)
    if int(keep.sum()) < 100:
        return False, float("nan")
    x, y = image[keep].double(), synthesized[keep].double()
    x, y = x - x.mean(), y - y.mean()
    corr = float((x * y).sum() / ((x.square().sum() * y.square().sum()).sqrt() + 1e-12))
    return corr >= T1_CORRELATION, corr


def fill_anomaly(
    image: torch.Tensor,
    synthesized: torch.Tensor,
    probability: torch.Tensor,
    brain: torch.Tensor,
    mask: torch.Tensor,
    threshold: float,
    rim_voxels: int = 1,
    detail_radius: int | Sequence[int] | None = None,
    detail_eps: float = DETAIL_EPS,
) -> torch.Tensor:
    """The input with its anomaly replaced by the intensity-matched synthesis (module docstring).

    Args:
        image: the input ``[X, Y, Z]`` in its own intensity units.
        synthesized: the network's healthy T1w ``[X, Y, Z]``.
        probability: the anomaly map ``[X, Y, Z]`` (the head's probability, or the difference map).
        brain: the brain mask ``[X, Y, Z]``; outside it the input is kept.
        mask: the anomaly mask ``[X, Y, Z]`` (``AnomalyMaskd``: the map above ``threshold``, cleaned).
        threshold: the mask's threshold on ``probability``.
        rim_voxels: width of the rim around the mask where the weight falls off as ``probability / threshold``
            (partial-volume edges; 0: the mask alone).
        detail_radius: the guided filter's window radius in voxels (one int, or one per axis) for
            :func:`guided_detail`: the pasted synthesis keeps the input's detail; ``None``: the plain synthesis.
        detail_eps: the guided filter's regulariser in units of (the brain's 99th percentile of ``image``)^2.
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}.")
    radius = None if detail_radius is None else _per_axis(detail_radius, "detail_radius")
    if not detail_eps > 0:
        raise ValueError(f"detail_eps must be > 0, got {detail_eps}.")
    mask = mask > 0.5
    keep = _healthy_voxels(probability, brain) & ~mask
    gain, offset = 1.0, 0.0
    if int(keep.sum()) >= 100:
        x, y = synthesized[keep].double(), image[keep].double()
        var = (x - x.mean()).square().mean()
        if float(var) > 1e-12:
            gain = float(((x - x.mean()) * (y - y.mean())).mean() / var)
        offset = float(y.mean() - gain * x.mean())  # a flat synthesis: the healthy brain's mean
    region = _window(F.max_pool3d, mask.float(), 2 * int(rim_voxels) + 1) > 0.5 if rim_voxels > 0 else mask
    weight = torch.where(mask, 1.0, (probability.float() / float(threshold)).clamp(0, 1))
    weight = weight * (region & (brain > 0.5))
    matched = gain * synthesized.float() + offset
    filled_region = weight > 0
    if radius is not None and bool(filled_region.any()):
        matched = _detail_where(filled_region, image.float(), matched, brain > 0.5, radius, detail_eps)
    filled = (1 - weight) * image.float() + weight * matched
    return filled.clamp_min(min(0.0, float(image.min())))  # no darker than the input's floor (0 for MR)


def guided_detail(guide: torch.Tensor, source: torch.Tensor, brain: torch.Tensor, radius, eps: float) -> torch.Tensor:
    """``source`` with ``guide``'s detail added: ``source + a * (guide - mean(guide))``, ``a`` the slope of the local
    least-squares line ``source ~ a * guide + b`` (``eps`` damps it where the guide is flat), means and fits over the
    ``brain`` voxels of windows of ``radius`` voxels (one int, or one per axis), then ``a`` averaged likewise. A guided
    filter (He et al., 2013) that keeps ``source`` as the base and adds the detail it lacks at the scale of the
    windows. ``[X, Y, Z]`` tensors in the same units; ``source`` outside ``brain``."""
    sizes = [2 * r + 1 for r in _per_axis(radius, "radius")]
    inside = brain.float()
    count = _box_mean(inside, sizes).clamp_min(1e-6)

    def mean(x):
        return _box_mean(x * inside, sizes) / count

    mean_g, mean_s = mean(guide), mean(source)
    var_g = mean(guide * guide) - mean_g * mean_g
    slope = mean((mean(guide * source) - mean_g * mean_s) / (var_g.clamp_min(0) + eps))
    return torch.where(brain, source + slope * (guide - mean_g), source)


def _detail_where(
    where: torch.Tensor, image: torch.Tensor, matched: torch.Tensor, brain: torch.Tensor, radius, eps: float
) -> torch.Tensor:
    """``matched`` with :func:`guided_detail` (guide ``image``), computed in ``where``'s box grown by twice the radius
    (all a voxel of ``where`` depends on; outside the box ``matched`` as it is), in units of the brain's 99th
    percentile."""
    scale = _brain_q99(image, brain)  # where (the filled region) lies in the brain: never empty here
    if scale <= 0:
        return matched
    start, end = generate_spatial_bounding_box(where[None], margin=[2 * r for r in radius], allow_smaller=True)
    box = tuple(slice(a, b) for a, b in zip(start, end))
    out = matched.clone()
    out[box] = scale * guided_detail(image[box] / scale, matched[box] / scale, brain[box], radius, eps)
    return out


def _per_axis(value: int | Sequence[int], name: str) -> list[int]:
    """One non-negative int per spatial axis (an int applies to all three)."""
    values = [value] * 3 if isinstance(value, (int, float)) else list(value)
    if len(values) != 3 or any(int(v) != v or v < 0 for v in values):
        raise ValueError(f"{name} must be a non-negative int or three of them, got {value!r}.")
    return [int(v) for v in values]


def _window(pool, x: torch.Tensor, size: int | Sequence[int], **kwargs) -> torch.Tensor:
    """``pool`` (max or average) over ``size``^3 windows (odd; or one size per axis) of ``[X, Y, Z]`` ``x``, same size
    out, as three 1D passes: the same result as the 3D window (the counts of a border window multiply), several times
    faster on a CPU."""
    sizes = _per_axis(size, "size")
    out = x[None, None]
    for axis in range(3):
        if sizes[axis] == 1:
            continue
        kernel = [1, 1, 1]
        kernel[axis] = sizes[axis]
        padding = [0, 0, 0]
        padding[axis] = sizes[axis] // 2
        out = pool(out, kernel, stride=1, padding=padding, **kwargs)
    return out[0, 0]


def _box_mean(x: torch.Tensor, size: int | Sequence[int] = 3) -> torch.Tensor:
    return _window(F.avg_pool3d, x, size, count_include_pad=False)


def _sample(values: torch.Tensor, limit: int = 1_000_000) -> torch.Tensor:
    return values[:: max(1, values.numel() // limit)]  # torch.quantile takes at most 16 M values


def _brain_q99(image: torch.Tensor, brain: torch.Tensor) -> float:
    """The 99th percentile of ``image`` in the (non-empty, boolean) ``brain``: the scale of the brain's intensities."""
    return float(torch.quantile(_sample(image[brain]), 0.99))


def _noise_statistics(image: torch.Tensor, brain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """``(mean, variance, q99, level)``: the mean and (biased) variance in 3^3 windows, the brain's 99th percentile and
    :func:`noise_level`'s estimate; computed once for both the estimate and the filter."""
    x = image.float()
    mean = _box_mean(x)
    var = _box_mean(x * x) - mean * mean
    reference = _brain_q99(x, brain)
    inner = -_window(F.max_pool3d, -brain.float(), 5) > 0.5
    if int(inner.sum()) < 100 or reference <= 0:
        return mean, var, reference, 0.0
    unbiased = var.clamp_min(0) * 27 / 26
    level = math.sqrt(float(torch.quantile(_sample(unbiased[inner]), 0.1)) / _CHI2_26_P10) / reference
    return mean, var, reference, level


def noise_level(image: torch.Tensor, brain: torch.Tensor) -> float:
    """Noise std of ``image`` relative to its brain's 99th percentile, from the flattest tenth of the brain: the 10th
    percentile of the variance in 3^3 windows (inside the brain eroded by 2 voxels), divided by that percentile of a
    chi-square variance estimate with 26 degrees of freedom (0.665). Edges and anatomy raise the variance of most
    windows, not of the flattest ones: the noise-free MNI152 template reads 1 %, with 4 % Rician noise 4.1 %."""
    return _noise_statistics(image, brain > 0.5)[3]


def suppress_excess_noise(
    image: torch.Tensor, brain: torch.Tensor, floor: float = NOISE_FLOOR
) -> tuple[torch.Tensor, float]:
    """``(denoised, noise_level)``: the local Wiener filter ``m + max(v - n^2, 0) / v * (x - m)`` (``m``, ``v``: mean
    and variance in 3^3 windows) with ``n^2 = (level^2 - floor^2) * q99^2``, inside the brain; the input unchanged
    when its :func:`noise_level` is at most ``floor``."""
    brain = brain > 0.5
    mean, var, reference, level = _noise_statistics(image, brain)
    if level <= floor:
        return image, level
    x = image.float()
    n2 = (level**2 - floor**2) * reference**2
    var = var.clamp_min(1e-12)
    denoised = mean + (var - n2).clamp_min(0) / var * (x - mean)
    return torch.where(brain, denoised, x), level


def is_t1w(modality: str, t1_like: bool) -> bool:
    """Whether the input is T1w: its declared ``modality`` decides (``t1`` ... yes, ``t2``, ``ct`` ... no); one that
    does not say (``auto``, ``mr``) defers to ``t1_like``, the :func:`looks_like_t1` test."""
    modality = str(modality).lower()
    if modality in T1_MODALITIES:
        return True
    if modality in NON_T1_MODALITIES:
        return False
    return bool(t1_like)


def healthy_kind(setting: str, modality: str, t1_like: bool) -> str:
    """``"filled"`` or ``"synthesized"``: which image is the healthy T1w, by ``healthy_output`` and modality."""
    if setting not in HEALTHY_OUTPUTS:
        raise ValueError(f"healthy_output must be one of {HEALTHY_OUTPUTS}, got {setting!r}.")
    if setting != "auto":
        return setting
    return "filled" if is_t1w(modality, t1_like) else "synthesized"


class FillAnomalyd(Transform):
    """Add the lesion-filled T1w and choose the healthy output, on the input's own grid: ``d[output_key]`` is the
    filled input for T1w-like inputs (see :func:`healthy_kind`; in the input's intensity units, with excess noise
    suppressed) and the synthesis otherwise; ``d[kind_key]`` says which, ``d[corr_key]`` the input-synthesis
    correlation and ``d[noise_key]`` the input's :func:`noise_level`. All volumes ``[C, X, Y, Z]`` on one grid (the
    input's, after ``Invertd``); the output has the synthesis's metadata.

    Args:
        image_key: the input scan as read (channel 0 is used), untouched by the preprocessing.
        pred_key: the synthesised healthy T1w ``[1, X, Y, Z]``.
        anomaly_key: the anomaly probability ``[1, X, Y, Z]``.
        anomaly_mask_key: the anomaly mask ``[1, X, Y, Z]`` (``AnomalyMaskd`` runs first).
        threshold_key: the mask's threshold on the anomaly map.
        mask_key: the brain mask ``[1, X, Y, Z]``.
        modality_key: the resolved modality (``t1``, ``t2``, ``mr``, ``ct``, ...).
        output_key: where to store the healthy T1w.
        kind_key: where to store ``"filled"`` or ``"synthesized"``.
        corr_key: where to store the correlation (read from there, with ``t1_key``, when ``AnomalyScored`` made it).
        t1_key: whether the input is T1w, as ``AnomalyScored`` decided it on the working grid; when ``d`` has it, the
            decision and its correlation are taken from ``d`` (one decision for the gate and the healthy output),
            otherwise :func:`looks_like_t1` runs here on the input's grid.
        noise_key: where to store the input's noise level.
        healthy_output: ``auto``, ``filled`` or ``synthesized``.
        noise_floor: relative noise kept in the filled image (:func:`suppress_excess_noise`); ``None``: no filtering.
        detail_radius_mm: radius (mm, turned into voxels per axis by the input's voxel size) of the guided filter that
            keeps the input's detail in what is filled (:func:`fill_anomaly`); ``None``: the plain synthesis.
        detail_eps: the guided filter's regulariser (:data:`DETAIL_EPS`).
    """

    def __init__(
        self,
        image_key: str = "image",
        pred_key: str = "pred",
        anomaly_key: str = "anomaly",
        anomaly_mask_key: str = "anomaly_mask",
        threshold_key: str = "anomaly_threshold",
        mask_key: str = "brain",
        modality_key: str = "modality",
        output_key: str = "healthy",
        kind_key: str = "healthy_kind",
        corr_key: str = "t1_correlation",
        noise_key: str = "noise_level",
        healthy_output: str = "auto",
        noise_floor: float | None = NOISE_FLOOR,
        t1_key: str = "t1_like",
        detail_radius_mm: float | None = DETAIL_RADIUS_MM,
        detail_eps: float = DETAIL_EPS,
    ) -> None:
        if healthy_output not in HEALTHY_OUTPUTS:
            raise ValueError(f"healthy_output must be one of {HEALTHY_OUTPUTS}, got {healthy_output!r}.")
        if noise_floor is not None and not 0 <= noise_floor < 1:
            raise ValueError(f"noise_floor must be None or in [0, 1), got {noise_floor}.")
        if detail_radius_mm is not None and not detail_radius_mm >= 0:
            raise ValueError(f"detail_radius_mm must be None or >= 0, got {detail_radius_mm}.")
        if not detail_eps > 0:
            raise ValueError(f"detail_eps must be > 0, got {detail_eps}.")
        self.detail_radius_mm, self.detail_eps = detail_radius_mm, detail_eps
        self.image_key, self.pred_key, self.anomaly_key, self.mask_key = image_key, pred_key, anomaly_key, mask_key
        self.modality_key, self.output_key, self.kind_key, self.corr_key = modality_key, output_key, kind_key, corr_key
        self.noise_key, self.healthy_output, self.noise_floor = noise_key, healthy_output, noise_floor
        self.anomaly_mask_key, self.threshold_key, self.t1_key = anomaly_mask_key, threshold_key, t1_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        pred = d[self.pred_key]
        synth = torch.as_tensor(pred)[0].float()
        image = torch.as_tensor(d[self.image_key])[0].to(synth.device).float()
        prob = torch.as_tensor(d[self.anomaly_key])[0].to(synth.device).float()
        brain = torch.as_tensor(d[self.mask_key])[0].to(synth.device) > 0.5
        if image.shape != synth.shape:
            raise ValueError(
                f"FillAnomalyd: {self.image_key} {tuple(image.shape)} and {self.pred_key} "
                f"{tuple(synth.shape)} are not on one grid (fill after Invertd)."
            )
        if self.t1_key in d:
            t1_like, corr = bool(d[self.t1_key]), float(d[self.corr_key])
        else:
            t1_like, corr = looks_like_t1(image, synth, prob, brain)
        kind = healthy_kind(self.healthy_output, d.get(self.modality_key, "auto"), t1_like)
        if kind == "filled" and self.noise_floor is not None:
            image, level = suppress_excess_noise(image, brain, self.noise_floor)  # the level and the filter, one pass
        else:
            level = noise_level(image, brain)
        if kind == "filled":
            found = torch.as_tensor(d[self.anomaly_mask_key])[0].to(synth.device)
            radius = self._radius_voxels(d[self.image_key])
            healthy = fill_anomaly(
                image,
                synth,
                prob,
                brain,
                found,
                float(d[self.threshold_key]),
                detail_radius=radius,
                detail_eps=self.detail_eps,
            )
        else:
            healthy = synth
        d[self.output_key] = convert_to_dst_type(healthy[None], pred, dtype=torch.float32)[0]
        d[self.kind_key], d[self.corr_key], d[self.noise_key] = kind, corr, level
        return d

    def _radius_voxels(self, image) -> list[int] | None:
        """``detail_radius_mm`` in voxels of ``image``'s grid per axis (a MetaTensor's voxel size; 1 mm for a plain
        tensor)."""
        if self.detail_radius_mm is None:
            return None
        return [int(round(self.detail_radius_mm / max(float(v), 1e-6))) for v in voxel_spacing(image)]
