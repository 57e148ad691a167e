"""Input checks of inference: a readable, real, finite, non-constant 3D volume, and a brain mask on its grid.

:func:`read_input` checks a file before anything runs (the API); :class:`CheckInputd` checks the loaded image in the
config's preprocessing (``python -m monai.bundle run``). Errors are ``ValueError`` / ``FileNotFoundError`` naming the
file and the problem.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ..data.nifti_io import check_affine, check_header, load_volume

__all__ = ["CheckInputd", "read_input", "check_same_grid", "source_name", "image_affine", "NIFTI_EXTENSIONS"]

GRID_ATOL = 1e-3  # mm (and direction cosines): tolerance when comparing a mask's grid with the image's
NIFTI_EXTENSIONS = (".nii", ".nii.gz")


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


def check_same_grid(shape, affine, mask_shape, mask_affine, image_name: str, mask_name: str) -> None:
    shape, mask_shape = tuple(int(s) for s in shape), tuple(int(s) for s in mask_shape)
    affine, mask_affine = np.asarray(affine, dtype=np.float64), np.asarray(mask_affine, dtype=np.float64)
    if shape != mask_shape or not np.allclose(affine, mask_affine, atol=GRID_ATOL, rtol=0):
        raise ValueError(
            f"mask: {mask_name} is on another grid than the image {image_name} (mask shape {mask_shape}, image shape "
            f"{shape}; affines {np.round(mask_affine, 4).tolist()} vs {np.round(affine, 4).tolist()}); the brain "
            f"mask must be on the input's grid."
        )


def read_input(path: Path, what: str) -> tuple[nib.Nifti1Image, tuple[int, ...], np.ndarray]:
    """Check one input file completely (reads it); returns ``(nibabel image, spatial shape, affine)``."""
    if not path.is_file():
        raise FileNotFoundError(f"{what}: file not found: {path}")
    if not path.name.endswith(NIFTI_EXTENSIONS):
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


def source_name(image: Any) -> str:
    """The file an image was loaded from (its ``filename_or_obj``), for error messages."""
    meta = getattr(image, "meta", None) or {}
    return str(meta.get("filename_or_obj") or "<image>")


def image_affine(image: Any) -> np.ndarray:
    """The affine of a MetaTensor (the identity for a plain tensor)."""
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
        name = source_name(image)
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
            check_same_grid(
                reference.shape[1:],
                image_affine(reference),
                mask.shape[1:],
                image_affine(mask),
                source_name(reference),
                source_name(mask),
            )
        return d
