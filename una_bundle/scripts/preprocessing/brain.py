"""The brain in a scan: its modality (CT or MR), its intensities normalised to [0, 1], and its mask.

``modality="auto"`` only decides between CT and MR, with a plain rule: **CT when at least 0.1 % of the voxels are
<= -500** (air in Hounsfield units; MR magnitudes are never that negative), else MR (:func:`detect_modality`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type

from ..data.modalities import INFERENCE_MODALITIES
from .input_checks import source_name

__all__ = ["detect_modality", "normalize_brain_intensity", "NormalizeBrainIntensityd", "BrainMaskd", "MODALITIES"]

#: accepted ``modality`` values; only ``"ct"`` changes the processing (``"auto"``: see the module docstring)
MODALITIES = INFERENCE_MODALITIES
CT_AIR_HU = -500.0
CT_AIR_FRACTION = 1e-3


def detect_modality(image) -> str:
    """``"ct"`` if at least 0.1 % of the voxels are <= -500 (air in HU), else ``"mr"`` (see the module docstring)."""
    values = torch.as_tensor(image).detach()
    return "ct" if float((values <= CT_AIR_HU).float().mean()) >= CT_AIR_FRACTION else "mr"


def _resolve_modality(modality: str, image) -> str:
    modality = str(modality).lower()
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}.")
    return detect_modality(image) if modality == "auto" else modality


def normalize_brain_intensity(
    image,
    mask=None,
    modality: str = "mr",
    percentiles: Sequence[float] = (0.0, 99.5),
    ct_window: Sequence[float] = (0.0, 80.0),
):
    """Scale ``image`` to [0, 1] (clipped); same shape, type and metadata.

    MR (any modality but ``"ct"``): the ``percentiles`` of the intensities inside ``mask`` (the whole image without
    one) map to 0 and 1; a lower percentile of 0 means ``min(0, minimum)``, as in training, where the scaled volumes
    include their zero background (a brain whose darkest voxel is above 0 is not stretched). CT: the Hounsfield
    ``ct_window`` maps to [0, 1]. With a mask the result is zero outside it.

    Args:
        image: ``[C, X, Y, Z]`` or ``[X, Y, Z]`` tensor / MetaTensor.
        mask: optional brain mask broadcastable to ``image``, non-zero inside.
        modality: ``"ct"`` or an MR name (``"mr"``, ``"t1"``, ...).
        percentiles: lower and upper percentile (0-100) for MR.
        ct_window: lower and upper Hounsfield value for CT.
    """
    x = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
    x = x.float()
    inside = None
    if mask is not None:
        m = mask.as_tensor() if isinstance(mask, MetaTensor) else torch.as_tensor(mask)
        inside = (m > 0).to(x.device).expand_as(x)
    if modality == "ct":
        lo, hi = (float(v) for v in ct_window)
    else:
        values = x[inside] if inside is not None else x.reshape(-1)
        if values.numel() == 0:
            raise ValueError(f"{source_name(image)}: the brain mask is empty on the working grid.")
        lo, hi = (float(v) for v in np.percentile(values.cpu().numpy(), [float(p) for p in percentiles]))
        if float(percentiles[0]) == 0.0:  # training scales whole volumes whose background is 0: zero stays zero
            lo = min(lo, 0.0)
    if not hi > lo:
        raise ValueError(f"{source_name(image)}: intensities in the brain are constant ({lo}); cannot normalise.")
    out = ((x - lo) / (hi - lo)).clamp_(0.0, 1.0)
    if inside is not None:
        out = out * inside
    return convert_to_dst_type(out, image, dtype=torch.float32)[0]


class NormalizeBrainIntensityd(MapTransform):
    """:func:`normalize_brain_intensity` of ``d[key]`` with the modality resolved from ``modality`` (``"auto"``:
    :func:`detect_modality`); the modality used is stored in ``d[modality_key]``.

    Args:
        keys: image key(s).
        mask_key: key of an optional brain mask (on the same grid), or ``None``.
        modality: one of :data:`MODALITIES`.
        modality_key: where to store the modality used.
        percentiles: MR percentiles mapped to 0 and 1.
        ct_window: CT Hounsfield window mapped to 0 and 1.
        allow_missing_keys: don't raise when a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str | None = "mask",
        modality: str = "auto",
        modality_key: str = "modality",
        percentiles: Sequence[float] = (0.0, 99.5),
        ct_window: Sequence[float] = (0.0, 80.0),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if str(modality).lower() not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}.")
        if len(percentiles) != 2 or not 0 <= percentiles[0] < percentiles[1] <= 100:
            raise ValueError(f"percentiles must be two increasing values in [0, 100], got {percentiles}.")
        if len(ct_window) != 2 or not ct_window[0] < ct_window[1]:
            raise ValueError(f"ct_window must be two increasing Hounsfield values, got {ct_window}.")
        self.mask_key = mask_key
        self.modality = str(modality).lower()
        self.modality_key = modality_key
        self.percentiles = tuple(percentiles)
        self.ct_window = tuple(ct_window)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mask = d.get(self.mask_key) if self.mask_key is not None else None
        for key in self.key_iterator(d):
            modality = _resolve_modality(self.modality, d[key])
            d[key] = normalize_brain_intensity(d[key], mask, modality, self.percentiles, self.ct_window)
            d[self.modality_key] = modality
        return d


def _largest_filled_component(foreground: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels, count = ndimage.label(foreground)
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        foreground = labels == int(np.argmax(sizes))
    return ndimage.binary_fill_holes(foreground)


class BrainMaskd(MapTransform):
    """``d[output_key]``: the brain mask ``[1, X, Y, Z]`` (float 0/1, the image's metadata) on the image's grid.

    The given mask ``d[mask_key]`` when present; else the normalised image's foreground (> ``threshold``), its
    largest connected component with holes filled - meaningful for skull-stripped inputs only.

    Args:
        keys: the (normalised) image key; its first channel is used.
        mask_key: key of an optional brain mask, or ``None``.
        output_key: where to store the mask.
        threshold: foreground threshold on the [0, 1] image.
        allow_missing_keys: don't raise when a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str | None = "mask",
        output_key: str = "brain",
        threshold: float = 0.02,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.output_key = output_key
        self.threshold = float(threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            given = d.get(self.mask_key) if self.mask_key is not None else None
            if given is not None:
                brain = torch.as_tensor(given)[:1] > 0.5
            else:
                fg = (torch.as_tensor(image)[0] > self.threshold).cpu().numpy()
                brain = torch.from_numpy(_largest_filled_component(fg))[None]
            if not bool(brain.any()):
                raise ValueError(f"{source_name(image)}: no brain found (empty brain mask on the working grid).")
            d[self.output_key] = convert_to_dst_type(brain.float(), image, dtype=torch.float32)[0]
            break
        return d
