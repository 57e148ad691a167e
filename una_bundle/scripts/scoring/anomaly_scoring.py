"""Anomaly map, automatic threshold and anomaly mask (UNA, section 6).

The map is where the normalised input departs from its healthy reconstruction, inside the brain, in the images'
intensity units (both in ``[0, 1]``): a shift-tolerant absolute difference (one voxel of misregistration forgiven),
smoothed with a Gaussian of 1 voxel, clipped to ``[0, 1]`` (:func:`anomaly_map`).

The threshold is set without the answer (:func:`anomaly_threshold`). Default: **fixed at 0.1**, calibrated for the
shipped model by ``benchmarks/calibrate_threshold.py`` (Dice against simulated T1w lesions on the MNI152 template for a
sweep of thresholds and Otsu, plus the false-positive volume on the healthy template; 0.1 gave the best mean Dice,
0.445, with 20 mL of false positives; docs/inference.md has the table). It is also the lower end of the lesion
contrast UNA is trained to remove (``a * P`` with ``a`` in ``[mu, 2 mu]``, ``mu`` the lesion-area mean, about 0.5-0.7
on a [0, 1] T1w, and ``P >= 0.2`` inside the mask), while a well-trained model's in-brain L1 is 0.015-0.026 (the
paper's Table 1), so a better model can keep it or go lower: re-run the calibration for every shipped model.
``"otsu"`` (per image, in the brain) is the alternative when a model's error level is unknown; it always splits the
brain in two, so on a healthy scan it flags the largest reconstruction errors.

The mask (:func:`anomaly_mask`) is the map above the threshold, inside the brain, without connected components
(26-connectivity) smaller than 27 mm^3 (a 3 x 3 x 3 mm cube): isolated reconstruction errors are not lesions.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import GaussianSmooth, MapTransform, Transform
from monai.utils import convert_to_dst_type
from scipy import ndimage as ndi

from ..preprocessing.input_checks import image_affine
from .lesion_filling import is_t1w, looks_like_t1

__all__ = [
    "anomaly_map",
    "anomaly_threshold",
    "anomaly_mask",
    "anomaly_components",
    "keep_components",
    "AnomalyScored",
    "AnomalyMaskd",
    "THRESHOLD_METHODS",
    "DEFAULT_THRESHOLD",
    "DEFAULT_MIN_COMPONENT_MM3",
]

#: Rules :func:`anomaly_threshold` knows.
THRESHOLD_METHODS = ("fixed", "otsu")

#: Defaults (see the module docstring): threshold in intensity units; smallest kept component, mm^3 (27 voxels at 1 mm).
DEFAULT_THRESHOLD = 0.1
DEFAULT_MIN_COMPONENT_MM3 = 27.0


def _volume(x, name: str) -> torch.Tensor:
    """``x`` ``[X, Y, Z]`` or ``[1, X, Y, Z]`` as a float32 ``[X, Y, Z]`` tensor (no metadata)."""
    t = torch.as_tensor(x.as_tensor() if hasattr(x, "as_tensor") else x)
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3:
        raise ValueError(f"{name} must be [X, Y, Z] or [1, X, Y, Z], got shape {tuple(t.shape)}.")
    return t.float()


def _brain(brain_mask, like: torch.Tensor, name: str = "brain_mask") -> torch.Tensor | None:
    """The brain mask as a boolean ``[X, Y, Z]`` on ``like``'s device, or ``None``."""
    if brain_mask is None:
        return None
    brain = _volume(brain_mask, name).to(like.device) > 0
    if tuple(brain.shape) != tuple(like.shape):
        raise ValueError(f"{name} has shape {tuple(brain.shape)}, expected {tuple(like.shape)}.")
    return brain


def anomaly_map(
    image,
    healthy,
    brain_mask=None,
    smoothing_sigma: float = 1.0,
    shift_tolerance: int = 1,
) -> torch.Tensor:
    """The anomaly map: where the input departs from its healthy reconstruction, in intensity units.

    ``d(x) = distance from image(x) to [min, max] of healthy over the (2r+1)^3 neighbourhood of x``
    (``r = shift_tolerance``; ``r = 0`` gives ``|image - healthy|``), zeroed outside the brain, smoothed with a
    Gaussian of ``smoothing_sigma`` voxels, zeroed outside the brain again and clipped to ``[0, 1]``.

    Args:
        image: the (normalised, ``[0, 1]``) input ``[X, Y, Z]`` or ``[1, X, Y, Z]``; same contrast as ``healthy``.
        healthy: its healthy reconstruction, same shape, normalised the same way.
        brain_mask: non-zero inside the brain, same shape; default ``image > 0`` (a skull-stripped input).
        smoothing_sigma: Gaussian smoothing in voxels (0: none).
        shift_tolerance: ``r``, the misalignment in voxels forgiven (0: plain absolute difference).

    Returns:
        float32 map in ``[0, 1]``, shape and type (and metadata) of ``image``; 0 outside the brain.
    """
    img, rec = _volume(image, "image"), _volume(healthy, "healthy")
    if img.shape != rec.shape:
        raise ValueError(f"image {tuple(img.shape)} and healthy {tuple(rec.shape)} must have the same shape.")
    rec = rec.to(img.device)
    if int(shift_tolerance) != shift_tolerance or shift_tolerance < 0:
        raise ValueError(f"shift_tolerance must be an integer >= 0, got {shift_tolerance}.")
    if not smoothing_sigma >= 0:
        raise ValueError(f"smoothing_sigma must be >= 0, got {smoothing_sigma}.")
    brain = _brain(brain_mask, img)
    brain = img > 0 if brain is None else brain
    r = int(shift_tolerance)
    if r > 0:  # distance to the range of healthy values within r voxels: one max pool and one min pool
        pooled = rec[None, None]
        high = F.max_pool3d(pooled, 2 * r + 1, stride=1, padding=r)[0, 0]
        low = -F.max_pool3d(-pooled, 2 * r + 1, stride=1, padding=r)[0, 0]
        diff = torch.maximum(img - high, low - img).clamp_min(0)
    else:
        diff = (img - rec).abs()
    diff = diff * brain
    if smoothing_sigma > 0:
        smoothed = GaussianSmooth(sigma=float(smoothing_sigma))(diff[None])[0]
        diff = torch.as_tensor(smoothed.as_tensor() if hasattr(smoothed, "as_tensor") else smoothed) * brain
    diff = diff.clamp(0, 1)
    out = diff[None] if torch.as_tensor(image).ndim == 4 else diff
    return convert_to_dst_type(out, image, dtype=torch.float32)[0]


def _otsu(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of 1D ``values`` (maximal between-class variance over a ``bins``-bin histogram)."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return hi
    hist = torch.histc(values.double(), bins=bins, min=lo, max=hi)
    centers = lo + (torch.arange(bins, dtype=torch.float64) + 0.5) * (hi - lo) / bins
    w0 = hist.cumsum(0)
    m0 = (hist * centers).cumsum(0)
    total, mean_total = w0[-1], m0[-1]
    w1 = total - w0
    between = (mean_total * w0 - total * m0) ** 2 / (w0 * w1).clamp_min(1e-12)
    between[w1 <= 0] = -1
    k = int(between.argmax())
    return lo + (k + 1) * (hi - lo) / bins  # upper edge of the last bin of the lower class


def anomaly_threshold(anomaly, brain_mask=None, method: str = "fixed", value: float = DEFAULT_THRESHOLD) -> float:
    """Choose the threshold of an anomaly map without the answer (no lesion mask).

    * ``"fixed"`` (default): ``value``, in the map's intensity units (images normalised to ``[0, 1]``);
      the default 0.1 is calibrated on simulated anomalies for the shipped model (module docstring).
    * ``"otsu"``: Otsu's threshold (maximal between-class variance, 256 bins) of the in-brain map.

    Args:
        anomaly: map from :func:`anomaly_map`, ``[X, Y, Z]`` or ``[1, X, Y, Z]``.
        brain_mask: non-zero inside the brain, for ``"otsu"``; default ``anomaly > 0``.
        method: one of :data:`THRESHOLD_METHODS`.
        value: the threshold of ``"fixed"``.
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"method must be one of {THRESHOLD_METHODS}, got {method!r}.")
    if method == "fixed":
        if not 0 <= value < 1:
            raise ValueError(f"value must be in [0, 1), got {value}.")
        return float(value)
    amap = _volume(anomaly, "anomaly")
    brain = _brain(brain_mask, amap)
    values = amap[brain] if brain is not None else amap[amap > 0]
    if values.numel() == 0:  # nothing departs from the reconstruction
        return 0.0
    return _otsu(values)


def anomaly_components(amap: np.ndarray, threshold: float, brain: np.ndarray | None = None):
    """The connected components (26-connectivity) of ``amap > threshold`` (inside ``brain``) that
    :func:`anomaly_mask` keeps or drops: ``(labels, sizes, peaks)``, with ``sizes[i]`` the voxel count and ``peaks[i]``
    the maximum of ``amap`` of component ``i`` (index 0: the background, size 0). A threshold sweep labels once and
    applies :func:`keep_components` per rule."""
    mask = amap > float(threshold)
    if brain is not None:
        mask &= brain
    labels, n = ndi.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    peaks = np.asarray(ndi.maximum(amap, labels, index=np.arange(n + 1))) if n else np.zeros(1)
    return labels, sizes, peaks


def keep_components(sizes: np.ndarray, peaks: np.ndarray, min_component_voxels: int, seed_threshold: float | None):
    """Which components :func:`anomaly_mask` keeps: at least ``min_component_voxels`` voxels (and one), and a peak
    above ``seed_threshold`` when given. Boolean per component (the background never)."""
    keep = sizes >= max(int(min_component_voxels), 1)
    if seed_threshold is not None:
        keep &= peaks > float(seed_threshold)
    keep[0] = False
    return keep


def anomaly_mask(
    anomaly,
    threshold: float,
    min_component_voxels: int = int(DEFAULT_MIN_COMPONENT_MM3),
    brain_mask=None,
    seed_threshold: float | None = None,
) -> torch.Tensor:
    """Threshold an anomaly map and drop connected components (26-connectivity) smaller than a size, or (hysteresis)
    without a voxel above ``seed_threshold``.

    Hysteresis keeps a lesion's whole extent at the lower ``threshold`` while a blob of moderate values with no
    confident core (the typical false positive of a probability map on healthy tissue) is dropped.

    Args:
        anomaly: map ``[X, Y, Z]`` or ``[1, X, Y, Z]``.
        threshold: voxels with ``anomaly > threshold`` are anomalous.
        min_component_voxels: components with fewer voxels are removed (0 or 1: keep all).
        brain_mask: optional; voxels outside it are never anomalous.
        seed_threshold: optional; components whose maximum is at most this are removed (``None``: no hysteresis).

    Returns:
        uint8 0/1 mask, shape and type (and metadata) of ``anomaly``.
    """
    if int(min_component_voxels) != min_component_voxels or min_component_voxels < 0:
        raise ValueError(f"min_component_voxels must be an integer >= 0, got {min_component_voxels}.")
    if seed_threshold is not None and not seed_threshold >= threshold:
        raise ValueError(f"seed_threshold must be >= threshold ({threshold}), got {seed_threshold}.")
    amap = _volume(anomaly, "anomaly")
    mask = amap > float(threshold)
    brain = _brain(brain_mask, amap)
    if brain is not None:
        mask &= brain
    if (min_component_voxels > 1 or seed_threshold is not None) and bool(mask.any()):
        values = amap.cpu().numpy()
        labels, sizes, peaks = anomaly_components(values, threshold, None if brain is None else brain.cpu().numpy())
        keep = keep_components(sizes, peaks, min_component_voxels, seed_threshold)
        mask = torch.from_numpy(keep[labels]).to(amap.device)
    out = mask.to(torch.uint8)
    out = out[None] if torch.as_tensor(anomaly).ndim == 4 else out
    return convert_to_dst_type(out, anomaly, dtype=torch.uint8)[0]


class AnomalyScored(Transform):
    """Anomaly map and its threshold on the working grid, from the network's anomaly head or the difference map.

    With a two-channel prediction (healthy T1w, anomaly logits) and ``source`` ``"auto"`` or ``"head"``, the map is
    the head's probability ``sigmoid(logits)`` inside the brain and the threshold ``head_threshold``; ``d[pred_key]``
    keeps only the healthy channel. Otherwise (``source="difference"`` or a one-channel model) the map is
    ``scripts.scoring.anomaly_scoring.anomaly_map(image, healthy, brain)`` and the threshold
    ``anomaly_threshold(map, brain, threshold_method, threshold)``. ``d[output_key]`` is ``[1, X, Y, Z]`` with the
    prediction's metadata (so ``Invertd`` maps it back), ``d[threshold_key]`` a float; ``image`` is channel
    ``channel`` of ``d[image_key]`` (the normalised input, not its flip).

    Args:
        image_key: the network input ``[C, X, Y, Z]``.
        pred_key: the prediction ``[1 or 2, X, Y, Z]`` (healthy T1w in [0, 1], then the head's logits).
        mask_key: the brain mask ``[1, X, Y, Z]``.
        output_key: where to store the map.
        threshold_key: where to store the threshold.
        threshold_method: ``"fixed"`` or ``"otsu"`` (see ``anomaly_scoring.anomaly_threshold``).
        threshold: the value of ``"fixed"``.
        channel: the image's channel in ``d[image_key]``.
        source: ``"auto"`` (the head when the prediction has one), ``"head"`` or ``"difference"``.
        head_threshold: threshold on the head's probability.
        head_seed_threshold: hysteresis for the head's map (``None``: none): a component of ``map > head_threshold``
            is kept only if it reaches this value somewhere (:func:`anomaly_mask`); stored in ``seed_threshold_key``.
        seed_threshold_key: where to store it (``None`` for the difference map).
        head_gate: difference gate of the head's map (``None``: off): for a T1w input (``modality`` ``t1``, or
            ``auto`` and :func:`~scripts.scoring.lesion_filling.looks_like_t1`) the probability is multiplied by
            ``min(1, anomaly_map(image, healthy) / head_gate)``, so an anomaly must also depart from the healthy
            reconstruction: the head alone reads left-right differences, and flags healthy asymmetric tissue (the
            lateral ventricles, the side opposite a large lesion) that the reconstruction reproduces. Other contrasts
            are never gated (their difference from a T1w says nothing). ``d[gate_key]`` records whether it applied.
        head_gate_threshold: the threshold of a gated map (``head_threshold`` stays that of an ungated one): gating
            lowers the map where the reconstruction agrees, so a gated map is calibrated on its own.
        modality_key: key of the input's modality (a missing key reads ``auto``).
        gate_key: where to store whether the gate applied.
        t1_key: where to store whether the input is T1w: its declared modality, else (``auto``, ``mr``)
            :func:`~scripts.scoring.lesion_filling.looks_like_t1` on the working grid, with the ungated map marking
            what is not healthy. Made once here, so the gate and ``FillAnomalyd`` (the healthy output, the report)
            cannot disagree.
        corr_key: where to store the input-synthesis correlation of that test (computed for every modality: the
            report shows it).
    """

    def __init__(
        self,
        image_key: str = "image",
        pred_key: str = "pred",
        mask_key: str = "brain",
        output_key: str = "anomaly",
        threshold_key: str = "anomaly_threshold",
        threshold_method: str = "fixed",
        threshold: float = DEFAULT_THRESHOLD,
        channel: int = 0,
        source: str = "auto",
        head_threshold: float = 0.5,
        head_seed_threshold: float | None = None,
        seed_threshold_key: str = "anomaly_seed_threshold",
        head_gate: float | None = None,
        head_gate_threshold: float = 0.5,
        modality_key: str = "modality",
        gate_key: str = "anomaly_gated",
        t1_key: str = "t1_like",
        corr_key: str = "t1_correlation",
    ) -> None:
        if head_gate is not None and not head_gate > 0:
            raise ValueError(f"head_gate must be > 0 (or None: no gate), got {head_gate}.")
        if not 0 < head_gate_threshold < 1:
            raise ValueError(f"head_gate_threshold must be in (0, 1), got {head_gate_threshold}.")
        self.head_gate = None if head_gate is None else float(head_gate)
        self.head_gate_threshold = float(head_gate_threshold)
        self.modality_key, self.gate_key, self.t1_key, self.corr_key = modality_key, gate_key, t1_key, corr_key
        if threshold_method not in THRESHOLD_METHODS:
            raise ValueError(f"threshold_method must be one of {THRESHOLD_METHODS}, got {threshold_method!r}.")
        if source not in ANOMALY_SOURCES:
            raise ValueError(f"source must be one of {ANOMALY_SOURCES}, got {source!r}.")
        if not 0 < head_threshold < 1:
            raise ValueError(f"head_threshold must be in (0, 1), got {head_threshold}.")
        if head_seed_threshold is not None and not max(head_threshold, head_gate_threshold) <= head_seed_threshold < 1:
            raise ValueError(
                "head_seed_threshold must be in [max(head_threshold, head_gate_threshold), 1), "
                f"got {head_seed_threshold}."
            )
        self.source, self.head_threshold = source, float(head_threshold)
        self.head_seed_threshold = None if head_seed_threshold is None else float(head_seed_threshold)
        self.seed_threshold_key = seed_threshold_key
        self.image_key, self.pred_key, self.mask_key = image_key, pred_key, mask_key
        self.output_key, self.threshold_key, self.channel = output_key, threshold_key, int(channel)
        self.threshold_method, self.threshold = threshold_method, float(threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        pred, image = d[self.pred_key], d[self.image_key]
        if not isinstance(pred, MetaTensor):  # Invertd needs a MetaTensor
            pred = MetaTensor(torch.as_tensor(pred), meta=dict(getattr(image, "meta", {})))
            d[self.pred_key] = pred
        device = pred.device
        channels = pred.shape[0]
        if self.source == "head" and channels < 2:
            raise ValueError(
                f"AnomalyScored: source='head' needs a model with an anomaly head, got {channels} channel."
            )
        brain = torch.as_tensor(d[self.mask_key])[0].to(device) > 0.5
        healthy = pred.as_tensor()[0].float().clamp(0, 1)
        img = torch.as_tensor(image)[self.channel].to(device).float()
        use_head = channels > 1 and self.source != "difference"
        if use_head:
            amap = torch.sigmoid(pred.as_tensor()[1].float()) * brain
        else:
            amap = self._difference(healthy, img, brain)
        t1_like, d[self.corr_key] = looks_like_t1(img, healthy, amap, brain)
        d[self.t1_key] = is_t1w(d.get(self.modality_key, "auto"), t1_like)
        d[self.gate_key] = use_head and self.head_gate is not None and d[self.t1_key]
        if d[self.gate_key]:
            amap = amap * (self._difference(healthy, img, brain) / self.head_gate).clamp(max=1.0)
        if use_head:
            d[self.threshold_key] = self.head_gate_threshold if d[self.gate_key] else self.head_threshold
            d[self.seed_threshold_key] = self.head_seed_threshold
        else:
            d[self.threshold_key] = anomaly_threshold(amap, brain, self.threshold_method, self.threshold)
            d[self.seed_threshold_key] = None
        d[self.pred_key] = pred[:1]
        d[self.output_key] = convert_to_dst_type(amap[None], pred, dtype=torch.float32)[0]
        return d

    @staticmethod
    def _difference(healthy: torch.Tensor, img: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        """:func:`anomaly_map` of the normalised input and the clipped reconstruction, on ``brain``'s device."""
        return torch.as_tensor(anomaly_map(img, healthy, brain)).to(brain.device, torch.float32).reshape(healthy.shape)


#: Where the anomaly map comes from (:class:`AnomalyScored`).
ANOMALY_SOURCES = ("auto", "head", "difference")


class AnomalyMaskd(MapTransform):
    """``d[output_key] = anomaly_mask(map, threshold, brain)``: ``map > threshold`` inside the brain, connected
    components smaller than ``min_component_mm3`` removed; uint8 ``[1, X, Y, Z]`` with the map's metadata.

    The size is in mm^3 and converted with the map's voxel volume (its affine), so the rule is the same on any grid.

    Args:
        keys: the anomaly map key.
        mask_key: the brain mask key (same grid), or ``None``.
        threshold_key: key of the threshold (a float).
        output_key: where to store the mask.
        min_component_mm3: smallest kept component (0: keep all).
        seed_threshold_key: key of the hysteresis seed threshold (a float, or None: none), see :func:`anomaly_mask`;
            a missing key means none.
        allow_missing_keys: don't raise when a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str | None = "brain",
        threshold_key: str = "anomaly_threshold",
        output_key: str = "anomaly_mask",
        min_component_mm3: float = DEFAULT_MIN_COMPONENT_MM3,
        seed_threshold_key: str = "anomaly_seed_threshold",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.seed_threshold_key = seed_threshold_key
        if not min_component_mm3 >= 0:
            raise ValueError(f"min_component_mm3 must be >= 0, got {min_component_mm3}.")
        self.mask_key, self.threshold_key, self.output_key = mask_key, threshold_key, output_key
        self.min_component_mm3 = float(min_component_mm3)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        threshold = float(torch.as_tensor(d[self.threshold_key]).reshape(-1)[0])
        seed = d.get(self.seed_threshold_key)
        seed = None if seed is None else float(torch.as_tensor(seed).reshape(-1)[0])
        for key in self.key_iterator(d):
            voxel_mm3 = abs(float(np.linalg.det(image_affine(d[key])[:3, :3])))
            min_voxels = int(np.ceil(self.min_component_mm3 / voxel_mm3 - 1e-6)) if voxel_mm3 > 0 else 0
            brain = d.get(self.mask_key) if self.mask_key is not None else None
            d[self.output_key] = anomaly_mask(d[key], threshold, min_voxels, brain, seed)
        return d
