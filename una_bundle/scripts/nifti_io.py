"""Reading and writing NIfTI volumes safely: clear errors for bad inputs, atomic writes, no silent overwrites."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from .atomic_io import write_atomic

__all__ = ["load_volume", "save_volume", "check_writable"]


def load_volume(path: str | Path, what: str = "image") -> tuple[torch.Tensor, np.ndarray]:
    """Read a 3D NIfTI (or 4D with a single volume) as ``(float32 tensor [X, Y, Z], 4x4 affine)``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for anything unreadable,
    not 3D, or holding NaN/Inf. ``what`` names the role of the file in the messages.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: file not found: {path}")
    try:
        img = nib.load(str(path))
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
