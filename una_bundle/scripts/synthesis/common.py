"""Helpers the synthesis transforms share: range arguments, the image shape check, plain tensors, the voxel size
and a separable Gaussian blur."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.networks.layers import separable_filtering
from monai.networks.layers.convutils import gaussian_1d

from ..data.checks import check_range

__all__ = ["as_range", "check_image", "plain", "voxel_spacing", "gaussian_blur"]


def as_range(name: str, value: float | Sequence[float], low: float | None = None) -> tuple[float, float]:
    """A ``(min, max)`` pair from a pair or a single number (``(v, v)``), checked against ``low``."""
    pair = (value, value) if isinstance(value, (int, float)) else value
    return tuple(float(v) for v in check_range(name, pair, low, None))


def check_image(name: str, img: torch.Tensor) -> None:
    if img.ndim != 4:
        raise ValueError(f"{name}: expected a channel-first 3D image [C, X, Y, Z], got shape {tuple(img.shape)}.")


def plain(img: torch.Tensor) -> torch.Tensor:
    return img.as_tensor() if isinstance(img, MetaTensor) else img


def voxel_spacing(img: torch.Tensor) -> np.ndarray:
    """Voxel size in mm along the three spatial axes, from a MetaTensor's affine (1 mm for plain tensors)."""
    if isinstance(img, MetaTensor):
        return np.asarray(img.pixdim, dtype=np.float64)[:3]
    return np.ones(3)


def gaussian_blur(x: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """Blur ``x`` ``[C, X, Y, Z]`` with a separable Gaussian of std ``sigmas`` (voxels, one per axis; 0 = none).

    Every channel gets the same kernels; borders are replicated. Kernels are MONAI's ``erf`` (pixel-integrated)
    Gaussians truncated at 3 std.
    """
    if all(s <= 0 for s in sigmas):
        return x
    kernels = [
        gaussian_1d(torch.tensor(float(s)), truncated=3.0, approx="erf", normalize=True) if s > 0 else torch.ones(1)
        for s in sigmas
    ]
    return separable_filtering(x[None], kernels, mode="replicate")[0]
