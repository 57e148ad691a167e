"""Random geometry for training samples: an affine transform and a smooth non-linear field, one resampling.

UNA (SynthSeg / Brain-ID style) deforms every training sample with a random affine (rotation +-15 degrees, shear
+-0.2, scaling +-0.2) composed with a smooth displacement field drawn on a coarse control grid (3-6 % of the image
size per axis, standard deviation up to 4 voxels) and upsampled. MONAI's ``Rand3DElasticd`` builds its field by
Gaussian-smoothing dense noise, which is slow at 160^3 and is not this control-grid model, so this module adds
:class:`RandSmoothDeformd`. All keys share one sampling grid and one ``grid_sample`` per interpolation mode, so
images, targets, labels and lesion maps stay aligned voxel for voxel.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor, ensure_tuple_rep

from ..data.checks import check_probability, check_range
from ..data.rng import random_seed

__all__ = ["RandSmoothDeformd", "affine_matrix"]


def affine_matrix(angles: Sequence[float], shears: Sequence[float], scales: Sequence[float]) -> torch.Tensor:
    """A 3x3 matrix ``R @ Sh @ S``: rotations (radians) about the three axes, shears (xy, xz, yz) and scales."""
    rot = torch.eye(3, dtype=torch.float64)
    for axis, angle in enumerate(angles):
        c, s = math.cos(angle), math.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        r = torch.eye(3, dtype=torch.float64)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rot = rot @ r
    shear = torch.eye(3, dtype=torch.float64)
    shear[0, 1], shear[0, 2], shear[1, 2] = shears
    return rot @ shear @ torch.diag(torch.as_tensor(scales, dtype=torch.float64))


class RandSmoothDeformd(RandomizableTransform, MapTransform):
    """Deform all ``keys`` (each ``[C, X, Y, Z]`` on the same grid) with one random affine + smooth field.

    The output stays on the input grid (same shape and affine): the anatomy moves, the voxel grid does not,
    like a scanner seeing a differently shaped head.

    Args:
        keys: keys to deform; missing keys are skipped when ``allow_missing_keys``.
        mode: ``"bilinear"`` or ``"nearest"`` per key (labels and masks: nearest), one value or one per key.
        rotate_range: maximum rotation about each axis, in degrees (+-).
        shear_range: maximum shear (+-).
        scale_range: maximum relative scaling (+-), drawn per axis.
        control_fraction: the control grid has ``U(control_fraction)`` times the image size points per axis
            (at least 2).
        deform_std_max: the control-point displacements have a std drawn from ``U(0, deform_std_max)`` voxels.
        padding_mode: ``grid_sample`` padding for points mapped outside the grid (``"zeros"`` or ``"border"``).
        prob: probability of deforming at all.
        allow_missing_keys: don't raise when a key is missing.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        keys: KeysCollection,
        mode: str | Sequence[str] = "bilinear",
        rotate_range: float = 15.0,
        shear_range: float = 0.2,
        scale_range: float = 0.2,
        control_fraction: Sequence[float] = (0.03, 0.06),
        deform_std_max: float = 4.0,
        padding_mode: str = "zeros",
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, check_probability("prob", prob))
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        if any(m not in ("bilinear", "nearest") for m in self.mode):
            raise ValueError(f"mode must be 'bilinear' or 'nearest' per key, got {self.mode}.")
        for name, value in (("rotate_range", rotate_range), ("shear_range", shear_range)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        if not 0 <= scale_range < 1:
            raise ValueError(f"scale_range must be in [0, 1), got {scale_range}.")
        if not deform_std_max >= 0:
            raise ValueError(f"deform_std_max must be >= 0, got {deform_std_max}.")
        self.control_fraction = check_range("control_fraction", control_fraction, 0.0, 1.0)
        self.rotate_range, self.shear_range, self.scale_range = rotate_range, shear_range, scale_range
        self.deform_std_max = deform_std_max
        self.padding_mode = padding_mode
        self._matrix = torch.eye(3, dtype=torch.float64)
        self._control_fraction = 0.0
        self._deform_std = 0.0
        self._field_seed = 0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        angles = np.deg2rad(self.R.uniform(-self.rotate_range, self.rotate_range, 3))
        shears = self.R.uniform(-self.shear_range, self.shear_range, 3)
        scales = 1 + self.R.uniform(-self.scale_range, self.scale_range, 3)
        self._matrix = affine_matrix(angles.tolist(), shears.tolist(), scales.tolist())
        self._control_fraction = self.R.uniform(*self.control_fraction)
        self._deform_std = self.R.uniform(0, self.deform_std_max)
        self._field_seed = random_seed(self.R)

    def sampling_grid(self, spatial: Sequence[int], device: torch.device) -> torch.Tensor:
        """The ``grid_sample`` grid ``[1, X, Y, Z, 3]`` (normalised, ``align_corners=True``) of the last draw."""
        spatial = tuple(int(s) for s in spatial)
        coords = torch.meshgrid(*[torch.arange(n, device=device, dtype=torch.float32) for n in spatial], indexing="ij")
        center = torch.tensor([(n - 1) / 2 for n in spatial], device=device)
        points = torch.stack(coords, -1) - center  # [X, Y, Z, 3] voxel offsets from the centre
        source = points @ self._matrix.to(device=device, dtype=torch.float32).T + center
        if self._deform_std > 0:
            control = tuple(max(2, round(self._control_fraction * n)) for n in spatial)
            generator = torch.Generator(device=device).manual_seed(self._field_seed)
            field = torch.randn((1, 3, *control), generator=generator, device=device) * self._deform_std
            field = F.interpolate(field, size=spatial, mode="trilinear", align_corners=True)
            source = source + field[0].permute(1, 2, 3, 0)
        scale = torch.tensor([2 / max(n - 1, 1) for n in spatial], device=device)
        normalised = source * scale - 1
        return normalised.flip(-1)[None]  # grid_sample wants (z, y, x) order for [N, C, X, Y, Z] inputs

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        present = [(key, mode) for key, mode in self.key_iterator(d, self.mode)]
        if not self._do_transform or not present:
            return d
        first = convert_to_tensor(d[present[0][0]], track_meta=True)
        spatial = tuple(first.shape[1:])
        for key, _ in present:
            if tuple(d[key].shape[1:]) != spatial:
                raise ValueError(
                    f"RandSmoothDeformd: '{key}' has shape {tuple(d[key].shape)}, expected [C, *{spatial}]."
                )
        grid = self.sampling_grid(spatial, first.device)
        for mode in ("bilinear", "nearest"):
            keys = [key for key, m in present if m == mode]
            if not keys:
                continue
            tensors = [convert_to_tensor(d[key], track_meta=False).float() for key in keys]
            sizes = [t.shape[0] for t in tensors]
            stacked = torch.cat(tensors, 0)[None].to(first.device)
            warped = F.grid_sample(stacked, grid, mode=mode, padding_mode=self.padding_mode, align_corners=True)[0]
            for key, part in zip(keys, torch.split(warped, sizes, 0)):
                d[key] = convert_to_dst_type(part, d[key])[0]
        return d
