"""Resolution -- ours, :class:`RandResolution(d) <RandResolution>`: UNA's four acquisition regimes (isotropic 1 mm,
clinical thick slices, low field, low-resolution isotropic), blur by slice thickness, down- and up-sampling.
MONAI's ``RandSimulateLowResolution`` zooms all axes by one factor without a slice profile."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from ..data.checks import check_probability
from .common import as_range, check_image, gaussian_blur, plain, voxel_spacing

__all__ = ["RandResolution", "RandResolutiond", "simulate_resolution", "REGIMES", "BLUR_FACTOR"]

#: UNA's four acquisition regimes, in the order of ``RandResolution``'s ``regime_probs``.
REGIMES = ("isotropic_1mm", "clinical", "low_field", "low_res_isotropic")

#: Blur std per mm of slice thickness, ``ln(5) / pi`` (reference). FWHM = thickness would be ``1 / 2.3548 = 0.4247``.
BLUR_FACTOR = math.log(5.0) / math.pi


def simulate_resolution(
    img: torch.Tensor,
    target_spacing: Sequence[float],
    thickness: Sequence[float] | None = None,
    input_spacing: Sequence[float] = (1.0, 1.0, 1.0),
    blur_factor: float = BLUR_FACTOR,
) -> torch.Tensor:
    """Degrade ``img`` ``[C, X, Y, Z]`` to an acquisition of ``target_spacing`` and slice ``thickness`` (mm, per axis).

    Returns a tensor of the input's shape, dtype and grid. Along each axis: a Gaussian blur of std
    ``blur_factor * sqrt(thickness^2 - input_spacing^2) / input_spacing`` voxels (the blur the input lacks to reach
    the slice profile; none when ``thickness <= input_spacing``), trilinear sampling at the low resolution (size
    ``round(n * input_spacing / target_spacing)``; axes with ``target_spacing <= input_spacing`` keep their size) and
    trilinear interpolation back to the input grid (``align_corners=False``: the field of view is kept). Every
    channel is degraded identically.

    Args:
        img: float tensor ``[C, X, Y, Z]``.
        target_spacing: acquired voxel spacing, mm, three values.
        thickness: slice thickness, mm, three values (default: ``target_spacing``).
        input_spacing: voxel size of ``img``, mm.
        blur_factor: Gaussian std per mm of thickness (:data:`BLUR_FACTOR`; 0.4247 is FWHM = thickness).
    """
    check_image("simulate_resolution", img)
    spacing_in = np.asarray(input_spacing, dtype=np.float64)
    spacing_out = np.asarray(target_spacing, dtype=np.float64)
    thick = spacing_out if thickness is None else np.asarray(thickness, dtype=np.float64)
    if not (spacing_in.shape == spacing_out.shape == thick.shape == (3,)):
        raise ValueError("simulate_resolution: target_spacing, thickness and input_spacing need three values each.")
    if (spacing_in <= 0).any() or (spacing_out <= 0).any() or (thick < 0).any() or blur_factor < 0:
        raise ValueError("simulate_resolution: spacings must be > 0, thickness and blur_factor >= 0.")
    shape = tuple(int(n) for n in img.shape[1:])
    sigmas = blur_factor * np.sqrt(np.clip(thick**2 - spacing_in**2, 0.0, None)) / spacing_in
    low = tuple(n if so <= si else max(1, int(round(n * si / so))) for n, si, so in zip(shape, spacing_in, spacing_out))
    x = gaussian_blur(img, sigmas.tolist())
    if low != shape:
        x = F.interpolate(x[None], size=low, mode="trilinear", align_corners=False)
        x = F.interpolate(x, size=shape, mode="trilinear", align_corners=False)[0]
    return x


class RandResolution(RandomizableTransform):
    """Simulate the acquisition resolution of a scan, in one of UNA's four regimes drawn at random.

    ``__call__(img)``: ``img`` ``[C, X, Y, Z]``, voxel size read from its affine (MetaTensor; 1 mm otherwise).
    Returns the degraded image with the input's shape, dtype (float32 for integer input), affine and metadata; every
    channel gets exactly the same degradation. Regimes (:data:`REGIMES`, spacing / thickness in mm):

    * ``isotropic_1mm``: no change;
    * ``clinical``: one random axis with spacing ``U(clinical_spacing_range)`` and slice thickness
      ``min(spacing, U(clinical_thickness_range))`` (2D clinical scans: 4-6 mm slices, with a gap when the spacing is
      larger; thinner slices at a large spacing are not acquired in practice), the other axes 1 mm;
    * ``low_field``: ``low_field_spacing + U(low_field_jitter)`` per axis, thickness = spacing, axes randomly permuted
      (``low_field_permute``: any acquisition plane);
    * ``low_res_isotropic``: each axis ``U(isotropic_spacing_range)``, thickness = spacing.

    Simulation: :func:`simulate_resolution` with a blur std of ``U(blur_factor_range)`` per mm of thickness (default
    ``(0.85, 1.15) * ln(5) / pi``, the reference's; its low end is FWHM = thickness). An axis whose target spacing is
    not coarser than the input's is left alone. After a call, ``regime``, ``target_spacing``, ``thickness`` and
    ``blur_factor`` describe the draw.

    Args:
        regime_probs: probabilities of the four regimes, in [0, 1], summing to 1 (UNA: 0.25 each).
        clinical_spacing_range: (min, max) spacing of the thick axis of the clinical regime, mm.
        clinical_thickness_range: (min, max) slice thickness of the clinical regime before capping at the spacing.
        low_field_spacing: base spacing of the low-field regime, mm (three values).
        low_field_jitter: (min, max) added to each low-field spacing, mm.
        low_field_permute: randomly permute the low-field axes.
        isotropic_spacing_range: (min, max) spacing per axis of the low-resolution isotropic-ish regime, mm.
        blur_factor_range: (min, max) Gaussian std per mm of slice thickness.
        prob: probability of degrading at all.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        regime_probs: Sequence[float] = (0.25, 0.25, 0.25, 0.25),
        clinical_spacing_range: Sequence[float] = (2.5, 8.5),
        clinical_thickness_range: Sequence[float] = (4.0, 6.0),
        low_field_spacing: Sequence[float] = (1.3, 1.3, 5.0),
        low_field_jitter: Sequence[float] = (0.0, 0.4),
        low_field_permute: bool = True,
        isotropic_spacing_range: Sequence[float] = (2.0, 5.0),
        blur_factor_range: Sequence[float] = (0.85 * BLUR_FACTOR, 1.15 * BLUR_FACTOR),
        prob: float = 1.0,
    ) -> None:
        RandomizableTransform.__init__(self, check_probability("prob", prob))
        probs = [float(p) for p in regime_probs]
        if len(probs) != len(REGIMES):
            raise ValueError(f"regime_probs needs {len(REGIMES)} values ({', '.join(REGIMES)}), got {probs}.")
        for name, p in zip(REGIMES, probs):
            check_probability(f"regime_probs[{name}]", p)
        if abs(sum(probs) - 1.0) > 1e-6:
            raise ValueError(f"regime_probs must sum to 1, got {probs} (sum {sum(probs)}).")
        self.regime_probs = np.asarray(probs) / sum(probs)
        self.clinical_spacing_range = as_range("clinical_spacing_range", clinical_spacing_range, 1e-6)
        self.clinical_thickness_range = as_range("clinical_thickness_range", clinical_thickness_range, 0.0)
        self.low_field_spacing = np.asarray(low_field_spacing, dtype=np.float64)
        if self.low_field_spacing.shape != (3,) or (self.low_field_spacing <= 0).any():
            raise ValueError(f"low_field_spacing must be three values > 0, got {tuple(low_field_spacing)}.")
        self.low_field_jitter = as_range("low_field_jitter", low_field_jitter, 0.0)
        self.low_field_permute = bool(low_field_permute)
        self.isotropic_spacing_range = as_range("isotropic_spacing_range", isotropic_spacing_range, 1e-6)
        self.blur_factor_range = as_range("blur_factor_range", blur_factor_range, 0.0)
        self.regime = REGIMES[0]
        self.target_spacing = np.ones(3)
        self.thickness = np.ones(3)
        self.blur_factor = BLUR_FACTOR

    def randomize(self, data=None) -> None:
        """Draw the regime and its spacing, slice thickness and blur factor."""
        super().randomize(None)
        if not self._do_transform:
            return
        regime = int(self.R.choice(len(REGIMES), p=self.regime_probs))
        spacing, thickness = np.ones(3), np.ones(3)
        if REGIMES[regime] == "clinical":
            axis = int(self.R.randint(3))
            spacing[axis] = self.R.uniform(*self.clinical_spacing_range)
            thickness[axis] = min(spacing[axis], self.R.uniform(*self.clinical_thickness_range))
        elif REGIMES[regime] == "low_field":
            spacing = self.low_field_spacing + self.R.uniform(*self.low_field_jitter, size=3)
            if self.low_field_permute:
                spacing = spacing[self.R.permutation(3)]
            thickness = spacing.copy()
        elif REGIMES[regime] == "low_res_isotropic":
            spacing = self.R.uniform(*self.isotropic_spacing_range, size=3)
            thickness = spacing.copy()
        self.regime = REGIMES[regime]
        self.target_spacing, self.thickness = spacing, thickness
        self.blur_factor = float(self.R.uniform(*self.blur_factor_range))

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        """
        Args:
            img: image ``[C, X, Y, Z]`` (tensor, MetaTensor or array).
            randomize: draw new parameters (``False`` replays the last draw).
        """
        img = convert_to_tensor(img, track_meta=get_track_meta())
        check_image("RandResolution", img)
        if randomize:
            self.randomize()
        if not self._do_transform or self.regime == "isotropic_1mm":
            return img
        data = plain(img)
        dtype = data.dtype if data.is_floating_point() else torch.float32
        out = simulate_resolution(
            data.to(dtype), self.target_spacing, self.thickness, voxel_spacing(img), blur_factor=self.blur_factor
        )
        return convert_to_dst_type(out, img, dtype=dtype)[0]


class RandResolutiond(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandResolution`: every key gets the same regime and parameters.

    Apply it to the network input only, not to the 1 mm target.

    Args:
        keys: image keys ``[C, X, Y, Z]`` to degrade.
        regime_key: key to record the drawn regime and target spacing in (e.g. ``"clinical 1.0x1.0x6.3mm"``), or
            ``None``; ``"none"`` when the transform does not fire.
        allow_missing_keys: don't raise when a key is missing.
        kwargs: the parameters of :class:`RandResolution` (``prob`` included).
    """

    backend = RandResolution.backend

    def __init__(
        self, keys: KeysCollection, regime_key: str | None = None, allow_missing_keys: bool = False, **kwargs
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, check_probability("prob", kwargs.pop("prob", 1.0)))
        self.resolution = RandResolution(prob=1.0, **kwargs)
        self.regime_key = regime_key

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.resolution.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            if self.regime_key is not None:
                d[self.regime_key] = "none"
            return d
        self.resolution.randomize()
        for key in self.key_iterator(d):
            d[key] = self.resolution(d[key], randomize=False)
        if self.regime_key is not None:
            spacing = "x".join(f"{s:.1f}" for s in self.resolution.target_spacing)
            d[self.regime_key] = f"{self.resolution.regime} {spacing}mm"
        return d
