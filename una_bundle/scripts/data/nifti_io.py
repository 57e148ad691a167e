"""Reading and writing NIfTI volumes safely: clear errors for bad inputs, atomic writes, no silent overwrites."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from .atomic_io import write_atomic

__all__ = ["load_volume", "save_volume", "check_writable", "check_header", "check_affine"]

#: the most a gzip (deflate) stream can expand: 1032 bytes out per byte in
_GZIP_MAX_RATIO = 1032
#: voxel sizes (mm) below this, or a determinant below this fraction of their product, make an affine degenerate
_MIN_VOXEL_MM = 1e-6
_MIN_ORTHOGONALITY = 1e-6


def check_affine(affine, name: str, what: str = "image") -> np.ndarray:
    """The 4x4 ``affine`` as float64, after checking it maps voxels to millimetres: finite, every voxel size (column
    norm) positive, columns not (nearly) parallel (non-singular). ``ValueError`` naming ``name`` otherwise."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"{what}: {name} has a non-finite or malformed affine {affine.tolist()}; fix its header.")
    sizes = np.linalg.norm(affine[:3, :3], axis=0)
    det = float(np.linalg.det(affine[:3, :3]))
    if sizes.min() < _MIN_VOXEL_MM or abs(det) < _MIN_ORTHOGONALITY * float(np.prod(sizes)):
        raise ValueError(
            f"{what}: {name} has a degenerate affine (voxel sizes {np.round(sizes, 6).tolist()} mm, determinant "
            f"{det:.3g}): it does not map voxels to millimetres; fix the header's sform/qform (e.g. with nibabel or "
            f"fslorient)."
        )
    return affine


def check_header(image: nib.Nifti1Image, path: str | Path, what: str = "image") -> None:
    """Check a NIfTI header before any data is read (``ValueError`` naming the file): positive dimensions, real
    numbers (no complex or RGB voxels), a valid affine (:func:`check_affine`) and a file large enough for the data the
    header declares (for ``.gz``: within gzip's largest expansion), so a forged header cannot make us allocate
    gigabytes for a file of kilobytes."""
    path = Path(path)
    shape = tuple(int(n) for n in image.shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"{what}: {path}: the header declares dimensions {shape}; every dimension must be >= 1.")
    dtype = image.header.get_data_dtype()
    if dtype.kind == "c":
        raise ValueError(
            f"{what}: {path} holds complex values ({dtype}); UNA takes a real-valued image (save its magnitude, "
            f"e.g. numpy.abs, instead)."
        )
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise ValueError(f"{what}: {path} holds {dtype} voxels (e.g. RGB); expected one real number per voxel.")
    check_affine(image.affine, str(path), what)
    needed = int(np.prod(shape, dtype=object)) * dtype.itemsize + int(image.header.get_data_offset())
    size = path.stat().st_size
    gzipped = path.name.endswith(".gz")
    if needed > (size * _GZIP_MAX_RATIO if gzipped else size):
        held = f"a {size}-byte gzip file holds at most {size * _GZIP_MAX_RATIO} bytes" if gzipped else f"{size} bytes"
        raise ValueError(
            f"{what}: {path}: the header declares {'x'.join(map(str, shape))} voxels of {dtype} ({needed} bytes with "
            f"the header) but the file has {held}; it is truncated or its header is wrong."
        )


def load_volume(path: str | Path, what: str = "image") -> tuple[torch.Tensor, np.ndarray]:
    """Read a 3D NIfTI (or 4D with a single volume) as ``(float32 tensor [X, Y, Z], 4x4 affine)``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for anything unreadable,
    not 3D, or holding NaN/Inf, and for a header that does not fit (:func:`check_header`, checked before the data is
    read). ``what`` names the role of the file in the messages.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: file not found: {path}")
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises many types for files that are not NIfTI
        raise ValueError(f"{what}: {path} is not a readable NIfTI image ({type(err).__name__}: {err}).") from err
    if isinstance(img, nib.Nifti1Image):  # Nifti2Image too; other formats have no such header
        check_header(img, path, what)  # before reading any data
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # nibabel/gzip/zlib raise many types for corrupt files
        raise ValueError(f"{what}: {path} is not a readable NIfTI image ({type(err).__name__}: {err}).") from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{what}: {path} must be a 3D volume (or 4D with one volume), got shape {data.shape}.")
    if not np.isfinite(data).all():
        raise ValueError(f"{what}: {path} contains NaN or Inf values.")
    return torch.from_numpy(np.ascontiguousarray(data)), np.asarray(img.affine, dtype=np.float64)


def check_writable(paths: Iterable[str | Path], overwrite: bool = False) -> None:
    """Refuse (``FileExistsError``) to replace existing outputs unless ``overwrite``; create their folders."""
    paths = [Path(p) for p in paths]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        more = f" and {len(existing) - 5} more" if len(existing) > 5 else ""
        raise FileExistsError(
            f"output exists (pass --overwrite, or overwrite=True in Python, to replace it): "
            f"{', '.join(existing[:5])}{more}"
        )
    for folder in {p.parent for p in paths}:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(f"output folder is not writable: {folder}")


def save_volume(data, affine, path: str | Path, dtype=np.float32) -> Path:
    """Write ``data`` ``[X, Y, Z]`` (tensor or array) as NIfTI atomically (``atomic_io.write_atomic``: a temporary
    file, synced, renamed into place; mode from the umask)."""
    path = Path(path)
    array = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    image = nib.Nifti1Image(array.astype(dtype), np.asarray(affine, dtype=np.float64))
    return write_atomic(path, lambda tmp: nib.save(image, str(tmp)))
