"""UNA inference: a brain scan of any contrast, resolution and orientation -> healthy T1w, anomaly map and mask.

The pipeline is defined once, in ``configs/inference.yaml``; ``python -m monai.bundle run --config_file
configs/inference.yaml`` and :func:`infer` / :func:`run_inference` (the CLI and Python API) both build it from there:

1. **preprocessing** - ``LoadImaged``, :class:`CheckInputd` (readable 3D volume, finite, not empty, mask on the same
   grid), ``Orientationd`` RAS, ``Spacingd`` to ``spacing`` (1 mm), :class:`NormalizeBrainIntensityd` (MR: 0-99.5
   percentiles, inside the brain mask when one is given; CT: a 0-80 HU window; both scaled to [0, 1]),
   :class:`BrainMaskd` (the given mask, else the filled largest foreground region), ``CropForegroundd`` (the brain's
   box plus a margin), ``FlipRegisterd`` (the left-right flip registered onto this preprocessed image), the 2-channel
   concatenation and ``DivisiblePadd``;
2. **inference** - a sliding-window ``UNANet`` (``roi_size`` divisible by ``2**(levels - 1)``);
3. **postprocessing** - the reconstruction clipped to [0, 1], :class:`AnomalyScored` (the continuous anomaly map and
   its automatic threshold, computed on the working grid by ``scripts.scoring.anomaly_scoring``), ``Invertd`` (every spatial
   step undone: the input's own grid), clipping, and :class:`AnomalyMaskd`.

The API adds what a tool needs around it: inputs are a file, a folder (its ``*.nii`` / ``*.nii.gz``, except files
named like masks or label maps, :data:`NOT_A_SCAN`, which are skipped and listed) or a list; every input is
checked before anything runs (specific ``ValueError`` / ``FileNotFoundError`` naming the file); existing outputs
are refused unless ``overwrite``; for each input ``NAME`` it writes into ``output_dir`` ``NAME_healthy.nii.gz``
(float32, [0, 1]), ``NAME_anomaly.nii.gz`` (float32, [0, 1]), ``NAME_anomaly_mask.nii.gz``
(uint8 0/1), all with the input's shape and header geometry (sform/qform copied, so the affine is identical),
``NAME_qc.png`` (triplanar input / reconstruction / anomaly overlay on the working grid) and ``NAME.json`` (modality,
threshold, anomaly volume, timings per stage, checkpoint hash). Files are written under temporary names, synced and
renamed at the end (``atomic_io``; mode from the umask), so a failed case leaves nothing behind; a run claims
``output_dir`` for its duration (a second run into it fails at once) and removes the temporary files a killed run
left there. ``python -m monai.bundle run`` writes the three NIfTI files only
(``SaveImaged``: no report, no figure, not atomic) and refuses to start when one exists unless ``--overwrite true``.
The anomaly map and its threshold are computed on the working grid; the map is mapped back (trilinear) and the mask
is the mapped-back map above the threshold, inside the mapped-back brain mask, without components under
``min_lesion_mm3`` (27 mm^3), so the mask files never hold a voxel the map puts at or below the threshold.

Speed (CPU profile, levels 4, features 16, roi 128^3, 2 CPU cores, idle machine): the 1 mm MNI152 template
(197 x 233 x 189) takes about 17 s end to end, 13.5 s of it the network (8 windows), 1.3 s the flip registration.

Inputs should be **skull-stripped**: brain extraction is not part of UNA. For a scan with skull, pass ``mask`` (a
brain mask on the input's grid); the image is then normalised inside it and zeroed outside.

``modality="auto"`` only decides between CT and MR, with a plain rule: **CT when at least 0.1 % of the voxels are
<= -500** (air in Hounsfield units; MR magnitudes are never that negative), else MR. T1/T2/FLAIR are not told apart:
the network takes any MR contrast and the modality changes only the intensity normalisation (the CT window). A
skull-stripped CT whose background was set to 0 has no air and is taken for MR: pass ``modality="ct"``.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, decollate_batch, list_data_collate
from monai.transforms import Invertd, MapTransform, Transform
from monai.utils import convert_to_dst_type

from ..scoring.anomaly_scoring import (
    DEFAULT_MIN_COMPONENT_MM3,
    DEFAULT_THRESHOLD,
    THRESHOLD_METHODS,
    anomaly_map,
    anomaly_mask,
    anomaly_threshold,
)
from ..data.bundle_config import BUNDLE_ROOT, make_scripts_importable
from ..data.atomic_io import FolderInUseError, claim_folder, remove_stale_temps, write_together
from ..data.nifti_io import check_affine, check_header, check_writable, load_volume
from ...tools.release import file_hash

__all__ = [
    "infer",
    "run_inference",
    "load_pipeline",
    "detect_modality",
    "normalize_brain_intensity",
    "check_roi_size",
    "check_checkpoint",
    "check_bundle_outputs",
    "datalist_from_folder",
    "CheckInputd",
    "NormalizeBrainIntensityd",
    "BrainMaskd",
    "AnomalyScored",
    "AnomalyMaskd",
    "MODALITIES",
    "OUTPUT_SUFFIXES",
]

DEFAULT_CONFIG = BUNDLE_ROOT / "configs" / "inference.yaml"
#: accepted ``modality`` values; only ``"ct"`` changes the processing (``"auto"``: see the module docstring)
MODALITIES = ("auto", "ct", "mr", "t1", "t2", "flair", "pd")
#: output file of each kind for an input ``NAME``: ``NAME + suffix``
OUTPUT_SUFFIXES = {
    "healthy": "_healthy.nii.gz",
    "synthesized": "_synthesized.nii.gz",
    "anomaly": "_anomaly.nii.gz",
    "anomaly_mask": "_anomaly_mask.nii.gz",
    "qc": "_qc.png",
    "report": ".json",
}
CT_AIR_HU = -500.0
CT_AIR_FRACTION = 1e-3
GRID_ATOL = 1e-3  # mm (and direction cosines): tolerance when comparing a mask's grid with the image's
_NIFTI_EXTENSIONS = (".nii", ".nii.gz")
#: in a folder given as input, files whose name has one of these words (between ``_ - . +`` or at an end) are taken
#: for masks or label maps, not scans, and skipped (and listed); a file named explicitly is always processed
NOT_A_SCAN = re.compile(
    r"(?:^|[_\-.+])(mask|masks|brainmask|msk|seg|dseg|aseg|aparc|probseg|segmentation|label|labels|labelmap|lesion"
    r"|lesions|roi|wmh)(?=$|[_\-.+])",
    re.IGNORECASE,
)


# --- checks shared by the API (before anything runs) and the config's CheckInputd ----------------------------------
def _split_shape(shape: Sequence[int]) -> tuple[tuple[int, ...], int]:
    """``(spatial shape, number of volumes)`` of a NIfTI data shape ``(X, Y[, Z[, T, ...]])``."""
    shape = tuple(int(s) for s in shape)
    if len(shape) <= 3:
        return shape, 1
    return shape[:3], int(np.prod(shape[3:]))


def _check_geometry(spatial: Sequence[int], volumes: int, name: str, what: str) -> None:
    if volumes > 1:
        raise ValueError(
            f"{what}: {name} is 4D with {volumes} volumes; UNA takes a single 3D volume (extract one first, e.g. "
            f"nibabel's image.slicer[..., i] or fslroi)."
        )
    if len(spatial) != 3 or min(spatial) < 2:
        kind = ("a single voxel", "a 1D image", "a 2D image")[min(sum(int(s) >= 2 for s in spatial), 2)]
        raise ValueError(
            f"{what}: {name} is {kind} (shape {tuple(spatial)}); UNA needs a 3D volume with at least 2 voxels "
            f"along every axis."
        )


def _check_values(data: torch.Tensor, name: str, what: str) -> None:
    if torch.is_complex(data):
        raise ValueError(f"{what}: {name} holds complex values; UNA takes a real-valued image (save its magnitude).")
    if not bool(torch.isfinite(data).all()):
        raise ValueError(f"{what}: {name} contains NaN or Inf values.")
    if what == "mask":
        if not bool((data > 0).any()):
            raise ValueError(f"mask: {name} is empty; a brain mask must be non-zero inside the brain.")
        return
    if not bool(data.any()):
        raise ValueError(f"{what}: {name} is all zero; there is no image to process.")
    if float(data.max()) == float(data.min()):
        raise ValueError(f"{what}: {name} is constant ({float(data.max())}); there is no image to process.")


def _check_same_grid(shape, affine, mask_shape, mask_affine, image_name: str, mask_name: str) -> None:
    shape, mask_shape = tuple(int(s) for s in shape), tuple(int(s) for s in mask_shape)
    affine, mask_affine = np.asarray(affine, dtype=np.float64), np.asarray(mask_affine, dtype=np.float64)
    if shape != mask_shape or not np.allclose(affine, mask_affine, atol=GRID_ATOL, rtol=0):
        raise ValueError(
            f"mask: {mask_name} is on another grid than the image {image_name} (mask shape {mask_shape}, image shape "
            f"{shape}; affines {np.round(mask_affine, 4).tolist()} vs {np.round(affine, 4).tolist()}); the brain "
            f"mask must be on the input's grid."
        )


def _read_input(path: Path, what: str) -> tuple[nib.Nifti1Image, tuple[int, ...], np.ndarray]:
    """Check one input file completely (reads it); returns ``(nibabel image, spatial shape, affine)``."""
    if not path.is_file():
        raise FileNotFoundError(f"{what}: file not found: {path}")
    if not path.name.endswith(_NIFTI_EXTENSIONS):
        raise ValueError(f"{what}: {path} is not a NIfTI file (expected a .nii or .nii.gz file).")
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises many types for files that are not NIfTI
        raise ValueError(f"{what}: {path} is not a readable NIfTI image ({type(err).__name__}: {err}).") from err
    if not isinstance(img, nib.Nifti1Image):
        raise ValueError(f"{what}: {path} is not a NIfTI image (nibabel reads it as {type(img).__name__}).")
    spatial, volumes = _split_shape(img.shape)
    _check_geometry(spatial, volumes, str(path), what)
    check_header(img, path, what)  # dtype, affine, data size against the file: before any data is read
    data, affine = load_volume(path, what)  # reads the data: truncated/corrupt files, NaN/Inf
    _check_values(data, str(path), what)
    return img, tuple(data.shape), affine


# --- transforms used by configs/inference.yaml ------------------------------------------------------------------------
def _name(image: Any) -> str:
    meta = getattr(image, "meta", None) or {}
    return str(meta.get("filename_or_obj") or "<image>")


def _affine(image: Any) -> np.ndarray:
    return np.asarray(image.affine, dtype=np.float64) if isinstance(image, MetaTensor) else np.eye(4)


class CheckInputd(MapTransform):
    """Reject inputs UNA cannot process, with a ``ValueError`` naming the file and the problem.

    After ``LoadImaged(ensure_channel_first=True)``: ``d[key]`` is ``[C, X, Y, Z]`` with ``C`` the number of volumes.
    Checks: one volume, 3D (no axis of size 1), a valid affine (``nifti_io.check_affine``), real (not complex),
    finite, neither all zero nor constant; ``d[mask_key]`` (optional) finite, non-empty and on the same grid (shape
    and affine within 1e-3) as the image.

    Args:
        keys: image key(s) to check (the first one is the reference grid for the mask).
        mask_key: key of an optional brain mask, or ``None``.
        allow_missing_keys: don't raise when a key is missing.
    """

    def __init__(self, keys: KeysCollection, mask_key: str | None = "mask", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key

    @staticmethod
    def _check(image, what: str) -> None:
        name = _name(image)
        shape = tuple(image.shape)
        if len(shape) < 2:
            raise ValueError(f"{what}: {name} has shape {shape}; expected a channel-first 3D volume.")
        _check_geometry(shape[1:], shape[0], name, what)
        if isinstance(image, MetaTensor):
            check_affine(image.affine, name, what)
        _check_values(torch.as_tensor(image), name, what)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        reference = None
        for key in self.key_iterator(d):
            self._check(d[key], "image")
            reference = d[key] if reference is None else reference
        if self.mask_key is not None and d.get(self.mask_key) is not None and reference is not None:
            mask = d[self.mask_key]
            self._check(mask, "mask")
            _check_same_grid(
                reference.shape[1:], _affine(reference), mask.shape[1:], _affine(mask), _name(reference), _name(mask)
            )
        return d


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
    one) map to 0 and 1. CT: the Hounsfield ``ct_window`` maps to [0, 1]. With a mask the result is zero outside it.

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
            raise ValueError(f"{_name(image)}: the brain mask is empty on the working grid.")
        lo, hi = (float(v) for v in np.percentile(values.cpu().numpy(), [float(p) for p in percentiles]))
    if not hi > lo:
        raise ValueError(f"{_name(image)}: intensities in the brain are constant ({lo}); cannot normalise.")
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
                raise ValueError(f"{_name(image)}: no brain found (empty brain mask on the working grid).")
            d[self.output_key] = convert_to_dst_type(brain.float(), image, dtype=torch.float32)[0]
            break
        return d


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
    ) -> None:
        if threshold_method not in THRESHOLD_METHODS:
            raise ValueError(f"threshold_method must be one of {THRESHOLD_METHODS}, got {threshold_method!r}.")
        if source not in ANOMALY_SOURCES:
            raise ValueError(f"source must be one of {ANOMALY_SOURCES}, got {source!r}.")
        if not 0 < head_threshold < 1:
            raise ValueError(f"head_threshold must be in (0, 1), got {head_threshold}.")
        self.source, self.head_threshold = source, float(head_threshold)
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
            raise ValueError(f"AnomalyScored: source='head' needs a model with an anomaly head, got {channels} channel.")
        brain = torch.as_tensor(d[self.mask_key])[0].to(device) > 0.5
        if channels > 1 and self.source != "difference":
            amap = torch.sigmoid(pred.as_tensor()[1].float()) * brain
            d[self.threshold_key] = self.head_threshold
        else:
            healthy = pred.as_tensor()[0].float().clamp(0, 1)
            img = torch.as_tensor(image)[self.channel].to(device).float()
            amap = torch.as_tensor(anomaly_map(img, healthy, brain)).to(device, torch.float32).reshape(healthy.shape)
            d[self.threshold_key] = anomaly_threshold(amap, brain, self.threshold_method, self.threshold)
        d[self.pred_key] = pred[:1]
        d[self.output_key] = convert_to_dst_type(amap[None], pred, dtype=torch.float32)[0]
        return d


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
        allow_missing_keys: don't raise when a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str | None = "brain",
        threshold_key: str = "anomaly_threshold",
        output_key: str = "anomaly_mask",
        min_component_mm3: float = DEFAULT_MIN_COMPONENT_MM3,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not min_component_mm3 >= 0:
            raise ValueError(f"min_component_mm3 must be >= 0, got {min_component_mm3}.")
        self.mask_key, self.threshold_key, self.output_key = mask_key, threshold_key, output_key
        self.min_component_mm3 = float(min_component_mm3)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        threshold = float(torch.as_tensor(d[self.threshold_key]).reshape(-1)[0])
        for key in self.key_iterator(d):
            voxel_mm3 = abs(float(np.linalg.det(_affine(d[key])[:3, :3])))
            min_voxels = int(np.ceil(self.min_component_mm3 / voxel_mm3 - 1e-6)) if voxel_mm3 > 0 else 0
            brain = d.get(self.mask_key) if self.mask_key is not None else None
            d[self.output_key] = anomaly_mask(d[key], threshold, min_voxels, brain)
        return d


def check_roi_size(roi_size: Sequence[int], divisor: int) -> list[int]:
    """``roi_size`` as a list, after checking that every size is a positive multiple of ``divisor``."""
    roi = [int(r) for r in (roi_size if isinstance(roi_size, Sequence) else [roi_size] * 3)]
    if len(roi) != 3 or any(r <= 0 or r % int(divisor) for r in roi):
        raise ValueError(
            f"roi_size {roi} must be 3 positive multiples of {divisor} (2**(levels - 1)) so every window fits UNANet."
        )
    return roi


def check_checkpoint(path: str | Path) -> Path:
    """The checkpoint path, or a ``FileNotFoundError`` saying how to get one (never run on random weights)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"UNA checkpoint not found: {path}. Inference needs trained weights and never runs on random ones: "
            f"train a model (python -m monai.bundle run training --config_file configs/train.yaml, see the bundle's "
            f"docs/README.md) and place it at models/model.pt, fetch the released weights (python -m monai.bundle "
            f"download_large_files --bundle_path <bundle root>), or pass checkpoint=PATH (--ckpt_path PATH for "
            f"python -m monai.bundle run)."
        )
    return path


# --- the pipeline from the config -------------------------------------------------------------------------------------
def read_state_dict(path: Path) -> dict:
    """The network weights in a checkpoint file: a state dict, or one under ``model``/``network``/``state_dict``."""
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"checkpoint {path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err})."
        ) from err
    for key in ("model", "network", "state_dict"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    if isinstance(ckpt, dict):  # a best-metric checkpoint of training also holds ignite's "checkpointer" state
        ckpt = {k: v for k, v in ckpt.items() if k != "checkpointer"}
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(f"checkpoint {path} holds no state dict (a dict of tensors, or one under 'model').")
    return ckpt


def _unanet_settings(state: dict) -> str:
    """``levels=…, features=…, out_channels=…`` of a UNANet state dict, for error messages."""
    levels = {k.split(".")[1] for k in state if k.startswith("encoders.")}
    first = state.get("encoders.0.convs.0.conv.conv.weight")
    head = state.get("head.conv.weight")
    if not levels or first is None:
        return "not a UNANet state dict"
    return f"levels={len(levels)}, features={first.shape[0]}" + (f", out_channels={head.shape[0]}" if head is not None else "")


def load_pipeline(
    config: str | Path | None = None, device: str = "cpu", overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Parse ``configs/inference.yaml`` (or ``config``) into the objects inference needs.

    Returns a dict with ``parser`` (the ``ConfigParser``), ``preprocessing``, ``network`` (on ``device``, not yet
    loaded), ``inferer``, ``postprocessing``, ``ckpt_path`` and ``bundle_root``.

    Args:
        config: the inference config file (default: the bundle's).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        overrides: config ids and values to replace (e.g. ``{"roi_size": [64, 64, 64], "levels": 3}``).
    """
    from monai.bundle import ConfigParser

    config = Path(config) if config is not None else DEFAULT_CONFIG
    if not config.is_file():
        raise FileNotFoundError(f"inference config not found: {config}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a torch device ({err}).") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here; use device='cpu'.")
    make_scripts_importable()
    parser = ConfigParser()
    parser.read_config(str(config))
    bundle_root = config.resolve().parent.parent
    parser.update({"bundle_root": str(bundle_root), "device": f"$torch.device({str(dev)!r})"})
    parser.update(dict(overrides or {}))
    parts = {
        name: parser.get_parsed_content(name) for name in ("preprocessing", "network", "inferer", "postprocessing")
    }
    parts.update(parser=parser, ckpt_path=Path(parser.get_parsed_content("ckpt_path")), bundle_root=bundle_root)
    return parts


def _load_weights(network: torch.nn.Module, path: Path) -> None:
    state = read_state_dict(check_checkpoint(path))
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"checkpoint {path} does not fit the configured network ({_unanet_settings(state)} in the checkpoint): "
            f"set levels / features (or network_def) to the checkpoint's. {str(err).splitlines()[0]}"
        ) from err
    network.eval()


# --- inputs and outputs ----------------------------------------------------------------------------------------------
def _case_name(path: Path) -> str:
    for ext in (".nii.gz", ".nii"):
        if path.name.endswith(ext):
            return path.name[: -len(ext)]
    return path.stem


def _collect_images(image) -> list[Path]:
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    if not items:
        raise ValueError("no input image given.")
    paths: list[Path] = []
    for item in items:
        path = Path(str(item)).expanduser()
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.name.endswith(_NIFTI_EXTENSIONS) and p.name[0] != "."
            )
            skipped = [p for p in found if NOT_A_SCAN.search(_case_name(p))]
            found = [p for p in found if p not in skipped]
            names = ", ".join(p.name for p in skipped[:10]) + (f" and {len(skipped) - 10} more" * (len(skipped) > 10))
            if not found:
                what = f" ({len(skipped)} skipped as masks or label maps: {names})" if skipped else ""
                raise FileNotFoundError(f"image: no .nii or .nii.gz scans in folder {path}{what}")
            if skipped:
                print(
                    f"image: skipped {len(skipped)} file(s) in {path} named like masks or label maps: {names} "
                    f"(give a file by its path to process it anyway)",
                    file=sys.stderr,
                )
            paths.extend(found)
        elif not path.exists():
            raise FileNotFoundError(f"image: file not found: {path}")
        else:
            paths.append(path)
    return paths


def datalist_from_folder(folder: str | Path) -> list[dict]:
    """``[{"image": path}, ...]`` for every ``*.nii`` / ``*.nii.gz`` in ``folder`` (sorted); the bundle run's inputs.

    Every file's NIfTI header is checked here (``nifti_io.check_header``: dimensions, real dtype, affine, data size
    against the file), before ``LoadImaged`` reads any data: a forged header cannot make the run allocate gigabytes.
    """
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"dataset_dir {folder} is not a folder; pass --dataset_dir FOLDER or --datalist LIST.")
    images = _collect_images(folder)
    for path in images:
        try:
            image = nib.load(str(path))  # the header only
        except Exception as err:  # nibabel raises many types for files that are not NIfTI
            raise ValueError(f"image: {path} is not a readable NIfTI image ({type(err).__name__}: {err}).") from err
        if isinstance(image, nib.Nifti1Image):
            check_header(image, path, "image")
    return [{"image": str(p)} for p in images]


def check_bundle_outputs(datalist: Sequence[Mapping], output_dir: str | Path, overwrite: bool = False) -> None:
    """For ``python -m monai.bundle run``: refuse (``FileExistsError``) before anything runs when an output of the
    datalist's images (``NAME_healthy`` / ``NAME_synthesized`` / ``NAME_anomaly`` / ``NAME_anomaly_mask.nii.gz``)
    exists, unless ``overwrite``; the bundle run's ``SaveImaged`` would replace them silently."""
    names = [_case_name(Path(str(item["image"]))) for item in datalist]
    kinds = ("healthy", "synthesized", "anomaly", "anomaly_mask")
    paths = [_output_paths(Path(output_dir), name)[kind] for name in names for kind in kinds]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"output exists (pass --overwrite true to replace): {', '.join(existing[:5])}"
            + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        )


def _collect_masks(mask, images: list[Path]) -> list[Path | None]:
    if mask is None:
        return [None] * len(images)
    if isinstance(mask, (list, tuple)):
        if len(mask) != len(images):
            raise ValueError(f"mask: {len(mask)} masks given for {len(images)} images; give one per image, in order.")
        return [Path(str(m)).expanduser() if m is not None else None for m in mask]
    mask = Path(str(mask)).expanduser()
    if mask.is_dir():  # one mask per image, with the image's file name
        return [mask / p.name for p in images]
    if len(images) != 1:
        raise ValueError(
            f"mask: one mask file {mask} for {len(images)} images; give a list or a folder of masks named as images."
        )
    return [mask]


def _output_paths(output_dir: Path, name: str) -> dict[str, Path]:
    return {kind: output_dir / f"{name}{suffix}" for kind, suffix in OUTPUT_SUFFIXES.items()}


def _check_output_dir(output_dir: Path, images: list[Path], paths: list[Path], overwrite: bool):
    """Check ``output_dir``, create it and claim it for this run (``atomic_io.claim_folder``: a second run into it
    fails at once); removes the temporary files an interrupted run left there (and says so). Returns the claim."""
    for folder in (output_dir, *output_dir.parents):
        if folder.exists():  # the first existing folder on the way must be a folder
            if not folder.is_dir():
                where = "" if folder == output_dir else f": {folder} on its path"
                raise FileExistsError(f"output_dir {output_dir} exists and is not a folder{where}; choose another.")
            break
    resolved = output_dir.resolve()
    for image in images:
        if image.resolve().parent == resolved:
            raise ValueError(
                f"output_dir {output_dir} is the folder of the input {image}; choose a separate folder (outputs next "
                f"to the inputs would be taken for inputs by a later run on that folder)."
            )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        claim = claim_folder(output_dir, "output_dir")  # creates a file: fails on read-only file systems too
    except FolderInUseError:
        raise
    except OSError as err:
        raise PermissionError(f"output folder {output_dir} is not writable ({err.strerror or err}).") from err
    try:
        stale = remove_stale_temps(output_dir, [p.name for p in paths if p.parent == output_dir])
        if stale:
            names = ", ".join(p.name for p in stale[:5]) + (f" and {len(stale) - 5} more" if len(stale) > 5 else "")
            print(
                f"removed {len(stale)} temporary file(s) of an interrupted run from {output_dir}: {names}",
                file=sys.stderr,
            )
        try:
            check_writable(paths, overwrite=overwrite)
        except PermissionError as err:
            raise PermissionError(f"output folder {output_dir} is not writable ({err}).") from err
    except BaseException:
        claim.release()
        raise
    return claim


def _nifti_like(data: np.ndarray, reference: nib.Nifti1Image, dtype, description: str) -> nib.Nifti1Image:
    """``data`` with ``reference``'s header geometry copied as is (sform, qform, codes, zooms, units)."""
    header = reference.header.copy()
    header.set_data_dtype(dtype)
    header.set_data_shape(data.shape)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0.0, 0.0
    header["descrip"] = description[:79].encode()
    image = type(reference)(np.asarray(data, dtype=dtype), None, header=header)
    image.set_sform(reference.header.get_sform(), code=int(reference.header["sform_code"]))
    image.set_qform(reference.header.get_qform(), code=int(reference.header["qform_code"]))
    return image


def _bundle_version(bundle_root: Path) -> str:
    meta = bundle_root / "configs" / "metadata.json"
    try:
        return str(json.loads(meta.read_text())["version"])
    except Exception:
        from ... import __version__

        return str(__version__)


def _qc_figure(work: dict[str, np.ndarray], spacing: Sequence[float], title: str, path: Path) -> None:
    """Triplanar QC (working grid, RAS): input, reconstruction, anomaly map over the input with the mask outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image, healthy, amap, mask = (work[k] for k in ("image", "healthy", "anomaly", "anomaly_mask"))
    if mask.any():  # through the anomaly mask's centre, else through the map's maximum
        centre = np.round(np.argwhere(mask).mean(0)).astype(int)
    else:
        centre = np.array(np.unravel_index(int(np.argmax(amap)), amap.shape))
    views = (("sagittal", 0), ("coronal", 1), ("axial", 2))
    fig, axes = plt.subplots(3, 3, figsize=(9, 9.4), facecolor="black")
    vmax = max(float(amap.max()), 1e-6)
    for col, (label, axis) in enumerate(views):
        others = [a for a in range(3) if a != axis]
        aspect = float(spacing[others[1]]) / float(spacing[others[0]])

        def cut(volume):
            return np.rot90(np.take(volume, int(centre[axis]), axis=axis))

        for row, volume in enumerate((image, healthy, image)):
            ax = axes[row, col]
            ax.imshow(cut(volume), cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
            ax.axis("off")
        overlay = cut(amap)
        axes[2, col].imshow(
            np.ma.masked_less_equal(overlay, 0.05 * vmax), cmap="hot", vmin=0, vmax=vmax, alpha=0.7, aspect=aspect
        )
        if cut(mask).any():
            axes[2, col].contour(cut(mask), levels=[0.5], colors="cyan", linewidths=0.6)
        axes[0, col].set_title(label, color="white", fontsize=9)
    for row, text in enumerate(("input (normalised)", "healthy T1w", "anomaly map, mask outlined")):
        ax = axes[row, 0]
        ax.text(
            -0.04, 0.5, text, color="white", fontsize=8, rotation=90, va="center", ha="right", transform=ax.transAxes
        )
    fig.suptitle(title, color="white", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90, facecolor="black", format="png")
    plt.close(fig)


def _timed_transforms(transforms, data: dict, timings: dict[str, float], snapshot: dict | None = None) -> dict:
    """Apply ``transforms`` one by one (their own errors, not MONAI's ``RuntimeError`` wrapper), timing each."""
    for transform in transforms:
        if snapshot is not None and not snapshot and isinstance(transform, Invertd):
            snapshot.update(data)  # the working-grid results, before they are mapped back
        name, k = type(transform).__name__, 2
        while name in timings:
            name, k = f"{type(transform).__name__}#{k}", k + 1
        start = time.perf_counter()
        data = transform(data)
        timings[name] = round(time.perf_counter() - start, 3)
    return data


def _run_case(parts: dict, image: Path, mask: Path | None, device: torch.device) -> tuple[dict, dict, dict]:
    """Preprocess, infer and postprocess one case; returns ``(outputs on the input grid, working grid, timings)``."""
    timings: dict[str, Any] = {"preprocessing": {}, "postprocessing": {}}
    data: dict[str, Any] = {"image": str(image)}
    if mask is not None:
        data["mask"] = str(mask)
    data = _timed_transforms(parts["preprocessing"].transforms, data, timings["preprocessing"])

    start = time.perf_counter()
    batch = list_data_collate([data])
    with torch.no_grad():
        pred = parts["inferer"](batch["image"].to(device), parts["network"])
    item = decollate_batch(batch, detach=True)[0]  # as SupervisedEvaluator hands it to its postprocessing
    item["pred"] = decollate_batch({"pred": pred}, detach=True)[0]["pred"]
    timings["inference"] = round(time.perf_counter() - start, 3)

    snapshot: dict[str, Any] = {}
    item = _timed_transforms(parts["postprocessing"].transforms, item, timings["postprocessing"], snapshot)
    if not snapshot:
        raise ValueError(
            "the inference config's postprocessing has no Invertd: outputs would not be on the input grid."
        )
    threshold = float(item["anomaly_threshold"])

    def arr(t, dtype=np.float32):
        return torch.as_tensor(t).detach().cpu().numpy()[0].astype(dtype)

    work = {
        "image": arr(snapshot["image"]),
        "healthy": arr(snapshot["healthy"]),
        "anomaly": arr(snapshot["anomaly"]),
        "brain": arr(snapshot["brain"]) > 0.5,
    }
    work["anomaly_mask"] = (work["anomaly"] > threshold) & work["brain"]
    outputs = {
        "healthy": arr(item["healthy"]),
        "synthesized": arr(item["pred"]),
        "healthy_kind": str(item["healthy_kind"]),
        "t1_correlation": float(item["t1_correlation"]),
        "anomaly": arr(item["anomaly"]),
        "anomaly_mask": arr(item["anomaly_mask"], np.uint8),
        "threshold": threshold,
        "modality": str(item["modality"]),
    }
    return outputs, work, timings


def _write_case(files: dict[str, Any], final: dict[str, Path]) -> None:
    """Write every file under a temporary name in its folder, synced, then rename all; nothing is left on failure
    (``atomic_io.write_together``; the files get the umask's mode, 0644 usually)."""
    write_together({final[kind]: writer for kind, writer in files.items()})


@dataclass
class _Case:
    """One input, checked: its files, the reference header for the outputs and where they go."""

    image: Path
    mask: Path | None
    reference: nib.Nifti1Image
    shape: tuple[int, ...]
    affine: np.ndarray
    outputs: dict[str, Path]
    check_s: float


def _process_case(case: _Case, parts: dict, context: dict, kinds: list[str]) -> dict:
    """Run one case and write its files atomically; returns its report."""
    start = time.perf_counter()
    outputs, work, timings = _run_case(parts, case.image, case.mask, context["device"])
    for kind in ("healthy", "synthesized", "anomaly", "anomaly_mask"):
        if outputs[kind].shape != case.shape:  # Invertd must give back the input's grid exactly
            raise RuntimeError(f"{case.image}: {kind} has shape {outputs[kind].shape}, the input {case.shape}.")
    volume_ml = float(outputs["anomaly_mask"].sum()) * abs(float(np.linalg.det(case.affine[:3, :3]))) / 1000.0
    timings = {"setup_shared": context["setup_s"], "input_check": round(case.check_s, 3), **timings}
    rule = "auto: CT if >= 0.1% of voxels are <= -500 (air in HU), else MR (contrast not determined)"
    report = {
        "input": str(case.image.resolve()),
        "mask": str(case.mask.resolve()) if case.mask is not None else None,
        "modality_requested": context["modality"],
        "modality": outputs["modality"],
        "modality_rule": rule if context["modality"] == "auto" else "given",
        "healthy": outputs["healthy_kind"],
        "healthy_rule": "NAME_healthy is the lesion-filled input (input outside the anomaly, intensity-matched "
        "synthesis inside) for T1w inputs (--modality t1, or auto with input-synthesis correlation >= 0.8), else "
        "the synthesized T1w (NAME_synthesized, always written)",
        "t1_correlation": round(outputs["t1_correlation"], 4) if np.isfinite(outputs["t1_correlation"]) else None,
        "threshold": outputs["threshold"],
        "anomaly_volume_ml": round(volume_ml, 4),
        "anomaly_voxels": int(outputs["anomaly_mask"].sum()),
        "input_shape": list(case.shape),
        "input_voxel_mm": [round(float(v), 6) for v in np.linalg.norm(case.affine[:3, :3], axis=0)],
        "working_spacing_mm": context["spacing"],
        "device": str(context["device"]),
        "model": context["model"],
        "outputs": {k: str(case.outputs[k].resolve()) for k in kinds},
        "timings_s": timings,
    }
    nifti = {
        "healthy": (np.float32, f"UNA healthy T1w ({outputs['healthy_kind']})"),
        "synthesized": (np.float32, "UNA synthesized healthy T1w"),
        "anomaly": (np.float32, "UNA anomaly map"),
        "anomaly_mask": (np.uint8, "UNA anomaly mask"),
    }
    files: dict[str, Any] = {
        kind: (lambda tmp, k=kind: nib.save(_nifti_like(outputs[k], case.reference, *nifti[k]), str(tmp)))
        for kind in nifti
    }
    if "qc" in kinds:
        title = f"{case.image.name} - {outputs['modality']} - threshold {outputs['threshold']:.3f} - {volume_ml:.1f} mL"
        files["qc"] = lambda tmp: _qc_figure(work, context["spacing"], title, tmp)
    write_start = time.perf_counter()

    def write_report(tmp: Path) -> None:
        timings["write_and_qc"] = round(time.perf_counter() - write_start, 3)
        timings["total"] = round(time.perf_counter() - start + case.check_s, 3)
        tmp.write_text(json.dumps(report, indent=2) + "\n")

    files["report"] = write_report
    _write_case(files, case.outputs)
    return report


def run_inference(
    image,
    output_dir: str | Path,
    modality: str = "auto",
    mask=None,
    device: str = "cpu",
    overwrite: bool = False,
    config: str | Path | None = None,
    checkpoint: str | Path | None = None,
    spacing: Sequence[float] | None = None,
    roi_size: Sequence[int] | None = None,
    overlap: float | None = None,
    levels: int | None = None,
    features: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    qc: bool = True,
    quiet: bool = False,
) -> list[dict]:
    """Run UNA on one or more scans; returns one report dict per case (also written as ``NAME.json``).

    Args:
        image: a NIfTI file, a folder (all ``*.nii`` / ``*.nii.gz`` in it) or a list of files/folders.
        output_dir: where the outputs go (created; must not be an input's folder).
        modality: one of :data:`MODALITIES` (``"auto"``: see the module docstring); only CT changes the processing.
        mask: brain mask(s) on the input's grid for scans that are not skull-stripped: a file (one image), a list (one
            per image, ``None`` allowed) or a folder of masks named as the images.
        device: torch device of the network (``"cpu"``, ``"cuda"``).
        overwrite: replace existing outputs (otherwise ``FileExistsError``).
        config: inference config (default ``configs/inference.yaml`` of the bundle).
        checkpoint: weights (default the config's ``ckpt_path``, ``models/model.pt``); a missing file is an error.
        spacing: the working voxel size in mm, e.g. ``[1, 1, 1]`` (config id ``spacing``; default the config's).
        roi_size: the sliding window's size in voxels, multiples of ``2**(levels - 1)`` (config id ``roi_size``).
        overlap: the sliding windows' overlap in [0, 1) (config id ``overlap``).
        levels, features: UNANet's depth and first-level feature count; must match the checkpoint (config ids).
        overrides: further config ids and values (e.g. ``{"network_def": {...}}``).
        qc: write the ``NAME_qc.png`` figure.
        quiet: no progress line per case (stderr).
    """
    setup_start = time.perf_counter()
    if str(modality).lower() not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}.")
    modality = str(modality).lower()
    images = _collect_images(image)
    masks = _collect_masks(mask, images)
    names = [_case_name(p) for p in images]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"several inputs share the output name(s) {duplicates}; run them into separate folders.")
    output_dir = Path(str(output_dir)).expanduser()
    kinds = [k for k in OUTPUT_SUFFIXES if qc or k != "qc"]

    cases = []  # every input checked before anything runs or is written
    for path, mask_path, name in zip(images, masks, names):
        start = time.perf_counter()
        reference, shape, affine = _read_input(path, "image")
        if mask_path is not None:
            _, mask_shape, mask_affine = _read_input(mask_path, "mask")
            _check_same_grid(shape, affine, mask_shape, mask_affine, str(path), str(mask_path))
        finals = _output_paths(output_dir, name)
        cases.append(_Case(path, mask_path, reference, shape, affine, finals, time.perf_counter() - start))
    claim = _check_output_dir(output_dir, images, [c.outputs[k] for c in cases for k in kinds], overwrite)
    try:  # the claim on output_dir is held until every case is written
        settings = {"modality": modality, "spacing": spacing, "roi_size": roi_size, "overlap": overlap}
        settings.update(levels=levels, features=features)
        config_overrides = {
            k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in settings.items() if v is not None
        }
        config_overrides.update(dict(overrides or {}))
        parts = load_pipeline(config, device=device, overrides=config_overrides)
        ckpt = Path(checkpoint) if checkpoint is not None else parts["ckpt_path"]
        _load_weights(parts["network"], ckpt)
        network = parts["network"]
        context = {
            "modality": modality,
            "device": torch.device(device),
            "spacing": [float(v) for v in parts["parser"].get_parsed_content("spacing")],
            "model": {
                "checkpoint": str(ckpt.resolve()),
                "checkpoint_sha256": file_hash(ckpt),
                "bundle_version": _bundle_version(parts["bundle_root"]),
                "network": type(network).__name__,
                "levels": getattr(network, "levels", None),
                "features": (getattr(network, "channels", None) or [None])[0],
                "parameters": int(sum(p.numel() for p in network.parameters())),
            },
        }

        context["setup_s"] = round(time.perf_counter() - setup_start - sum(c.check_s for c in cases), 3)
        reports = []
        for i, case in enumerate(cases, 1):
            try:
                report = _process_case(case, parts, context, kinds)
            except Exception as err:
                if len(cases) > 1:
                    err.add_note(
                        f"case {i}/{len(cases)} ({case.image}) failed; the {i - 1} case(s) before it are kept."
                    )
                raise
            reports.append(report)
            if not quiet:
                volume, seconds = report["anomaly_volume_ml"], report["timings_s"]["total"]
                print(
                    f"[{i}/{len(cases)}] {case.image.name}: {report['modality']}, anomaly {volume:.1f} mL, "
                    f"{seconds:.1f} s -> {case.outputs['report']}",
                    file=sys.stderr,
                    flush=True,
                )
        return reports
    finally:
        claim.release()


def infer(
    image,
    output_dir: str,
    modality: str = "auto",
    mask=None,
    device: str = "cpu",
    overwrite: bool = False,
    config: str | None = None,
    checkpoint: str | None = None,
    spacing=None,
    roi_size=None,
    overlap: float | None = None,
    levels: int | None = None,
    features: int | None = None,
    qc: bool = True,
    quiet: bool = False,
) -> list[str]:
    """Reconstruct the healthy T1w and the anomaly map of each scan (file, folder or list); returns the JSON reports.

    Inputs should be skull-stripped (else pass ``--mask``); outputs go to ``output_dir`` as ``NAME_healthy.nii.gz``,
    ``NAME_anomaly.nii.gz``, ``NAME_anomaly_mask.nii.gz``, ``NAME_qc.png`` and ``NAME.json``, on the input's grid.
    See :func:`run_inference` for every argument.
    """
    reports = run_inference(
        image,
        output_dir,
        modality=modality,
        mask=mask,
        device=device,
        overwrite=overwrite,
        config=config,
        checkpoint=checkpoint,
        spacing=spacing,
        roi_size=roi_size,
        overlap=overlap,
        levels=levels,
        features=features,
        qc=qc,
        quiet=quiet,
    )
    return [r["outputs"]["report"] for r in reports]
