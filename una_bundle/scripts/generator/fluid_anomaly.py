"""Fluid-driven anomaly randomization: random lesion profiles evolved by a random divergence-free flow.

One anomaly (UNA, ``shared/design/una-method.md`` section 1):

1. an initial probability map ``P0``: with probability ``random_shape_prob`` a random shape (3D Perlin noise,
   the voxels above a random percentile in ``percentile_range`` keep their noise values), otherwise a lesion
   map drawn from a pool (files given to the transform, or a map handed in with the data);
2. a random velocity ``V = curl(psi)`` of three Perlin potentials (and, optionally, a diffusivity ``D = phi^2``);
3. ``P(T)`` by the advection-diffusion solver, ``T = (nt - 1) * dt`` with ``nt`` drawn from ``nt_range``;
4. ``P(T)`` is zeroed outside the brain; the lesion mask is ``P(T) > threshold * max P(T)``. ``P`` keeps its
   natural scale (kept Perlin values, about 0.3-0.8, or the pool map's probabilities), which sets how strongly
   the anomaly is encoded into an image (:mod:`.anomaly_encoding`).
   A result whose mask covers a fraction <= ``min_fraction`` of the grid is discarded and drawn again.

Everything runs in torch on the input's device, with one ``torch.Generator`` seeded from the transform's
``self.R``: ``set_random_state`` makes the anomalies reproducible, and no global random state is touched.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from ..data.checks import check_probability, check_range
from ..data.rng import torch_generator
from .advection import BACKENDS, advect_diffuse
from .flow import REFERENCE_MAGNITUDE, random_flow
from .perlin import perlin_noise

__all__ = ["FluidAnomaly", "RandFluidAnomalyd", "load_lesion_map", "center_pad_or_crop"]


def load_lesion_map(path: str | Path) -> torch.Tensor:
    """Read a lesion mask or probability map from a NIfTI file as float32 ``[X, Y, Z]`` in ``[0, 1]``.

    Masks stored as labels (e.g. 0/255) are scaled by their maximum. Raises ``FileNotFoundError`` for a missing
    file and ``ValueError`` for anything that is not a 3D volume (a 4D file with a single volume is accepted).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"lesion pool: file not found: {path}")
    try:
        img = nib.load(str(path))
        shape = img.shape
    except Exception as err:  # nibabel raises several types for unreadable files
        raise ValueError(f"lesion pool: {path} is not a readable NIfTI image ({err}).") from err
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ValueError(f"lesion pool: {path} must be a 3D volume, got shape {img.shape}.")
    data = torch.as_tensor(np.asarray(img.dataobj, dtype=np.float32).reshape(shape))
    if not torch.isfinite(data).all() or data.min() < 0:
        raise ValueError(f"lesion pool: {path} must hold finite, non-negative values.")
    peak = float(data.max())
    return data / peak if peak > 1 else data


def center_pad_or_crop(volume: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Centre ``volume`` ``[X, Y, Z]`` in a grid of ``shape``, zero-padding or cropping each axis."""
    out = volume.new_zeros(tuple(shape))
    src, dst = [], []
    for have, want in zip(volume.shape, shape):
        if have >= want:
            start = (have - want) // 2
            src.append(slice(start, start + want))
            dst.append(slice(0, want))
        else:
            start = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(start, start + have))
    out[tuple(dst)] = volume[tuple(src)]
    return out


class FluidAnomaly(RandomizableTransform):
    """Draw a random lesion profile and mask on the grid of an image, confined to its brain.

    Input ``img`` ``[C, X, Y, Z]`` only gives the grid, device and metadata. Output: ``(probability, mask)``,
    two ``[1, X, Y, Z]`` tensors of the input's type and metadata; ``probability`` is float32 in ``[0, 1]``,
    ``mask`` is float32 0/1. When the transform does not fire (``prob``) both are zero.

    Args:
        random_shape_prob: probability of a random Perlin shape rather than a pool map (1 when there is no pool).
        lesion_pool: NIfTI files of lesion masks or probability maps (3D) used as initial maps; maps whose
            shape differs from the image are centre-padded or cropped (they must be in the images' space).
        shape_periods: Perlin periods per axis of the random shape (about 2 gives a few irregular blobs, more gives
            more and smaller foci), a number or a ``(min, max)`` range drawn uniformly per anomaly.
        percentile_range: the random shape keeps the noise above a percentile drawn from this range (0-100).
        percentile_sampling: how the percentile ``q`` is drawn: ``"uniform"`` in ``percentile_range`` (the
            reference), or ``"log"``: the kept share ``100 - q`` log-uniform, so that lesion volumes spread evenly
            over orders of magnitude (e.g. ``(90, 99.99)`` on a 1 mm brain: about 0.5 to 200 mL).
        magnitude: velocity multiplier, the reference's meaning (500, see :func:`.flow.random_flow`).
        flow_periods: Perlin periods of the flow potentials per axis; ``None`` keeps the reference's wavelength
            (2 periods per 200 voxels, see :func:`.flow.random_flow`).
        nt_range: the number of time points ``nt`` is drawn from these integers (inclusive); the map is evolved
            for ``nt - 1`` steps of ``dt``.
        dt: time step.
        diffusion: also diffuse, with ``D = diffusion_magnitude * phi^2`` (the paper); the reference trains
            with advection only.
        diffusion_magnitude: scale of the diffusivity, voxels^2 per unit time.
        threshold: mask threshold relative to the maximum of ``P(T)`` (reference: 0.2).
        min_fraction: a result whose mask covers at most this fraction of the grid is discarded.
        max_tries: draws before giving up; then a ``RuntimeError`` names the likely cause.
        backend: solver backend, see :func:`.advection.advect_diffuse`.
        prob: probability of producing an anomaly at all.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        random_shape_prob: float = 0.5,
        lesion_pool: Sequence[str | Path] | None = None,
        shape_periods: float | Sequence[float] = 2.0,
        percentile_range: Sequence[float] = (90.0, 99.6),
        percentile_sampling: str = "uniform",
        magnitude: float = REFERENCE_MAGNITUDE,
        flow_periods: float | Sequence[float] | None = None,
        nt_range: Sequence[int] = (2, 10),
        dt: float = 0.1,
        diffusion: bool = False,
        diffusion_magnitude: float = 1.0,
        threshold: float = 0.2,
        min_fraction: float = 1e-6,
        max_tries: int = 10,
        backend: str = "auto",
        prob: float = 1.0,
    ) -> None:
        RandomizableTransform.__init__(self, check_probability("prob", prob))
        self.random_shape_prob = check_probability("random_shape_prob", random_shape_prob)
        self.percentile_range = check_range("percentile_range", percentile_range, 0.0, 100.0)
        nt_lo, nt_hi = check_range("nt_range", nt_range, 1, None)
        if int(nt_lo) != nt_lo or int(nt_hi) != nt_hi:
            raise ValueError(f"nt_range must hold integers, got {tuple(nt_range)}.")
        self.nt_range = (int(nt_lo), int(nt_hi))
        if not dt > 0:
            raise ValueError(f"dt must be > 0, got {dt}.")
        periods = (shape_periods, shape_periods) if isinstance(shape_periods, (int, float)) else tuple(shape_periods)
        if len(periods) != 2 or not 0 < periods[0] <= periods[1]:
            raise ValueError(f"shape_periods must be > 0 or a (min, max) range of such, got {shape_periods}.")
        if percentile_sampling not in ("uniform", "log"):
            raise ValueError(f"percentile_sampling must be 'uniform' or 'log', got {percentile_sampling!r}.")
        if percentile_sampling == "log" and not self.percentile_range[1] < 100:
            raise ValueError(f"percentile_sampling='log' needs percentiles below 100, got {tuple(percentile_range)}.")
        self.percentile_sampling = percentile_sampling
        if not magnitude >= 0 or not diffusion_magnitude >= 0:
            raise ValueError(f"magnitude and diffusion_magnitude must be >= 0, got {magnitude}, {diffusion_magnitude}.")
        if not 0 <= threshold < 1:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}.")
        if not 0 <= min_fraction < 1:
            raise ValueError(f"min_fraction must be in [0, 1), got {min_fraction}.")
        if int(max_tries) < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries}.")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
        self.lesion_pool = [Path(p) for p in (lesion_pool or [])]
        for path in self.lesion_pool:  # fail at construction, not in the middle of training
            _check_pool_header(path)
        self.shape_periods = (float(periods[0]), float(periods[1]))
        self.magnitude = magnitude
        self.flow_periods = flow_periods
        self.dt = dt
        self.diffusion = diffusion
        self.diffusion_magnitude = diffusion_magnitude
        self.threshold = threshold
        self.min_fraction = min_fraction
        self.max_tries = int(max_tries)
        self.solver_backend = backend
        self._generator: torch.Generator | None = None

    def randomize(self, data=None, device: torch.device | str = "cpu") -> None:
        """Decide whether to fire and seed the torch generator every further draw of this call comes from."""
        super().randomize(None)
        self._generator = torch_generator(self.R, device) if self._do_transform else None

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=self._generator, device=self._generator.device))

    def _randint(self, low: int, high: int) -> int:
        """An integer in ``[low, high]`` (inclusive)."""
        return int(torch.randint(low, high + 1, (), generator=self._generator, device=self._generator.device))

    def _random_shape(self, spatial: Sequence[int], device) -> torch.Tensor:
        noise = perlin_noise(spatial, self._uniform(*self.shape_periods), generator=self._generator, device=device)
        if self.percentile_sampling == "log":
            kept_low, kept_high = (math.log(100.0 - p) for p in reversed(self.percentile_range))
            q = 1.0 - math.exp(self._uniform(kept_low, kept_high)) / 100.0
        else:
            q = self._uniform(*self.percentile_range) / 100.0
        flat = noise.flatten()
        k = min(max(int(round(q * (flat.numel() - 1))) + 1, 1), flat.numel())
        cutoff = flat.kthvalue(k).values
        return torch.where(noise > cutoff, noise, torch.zeros_like(noise))

    def _initial_map(self, spatial: Sequence[int], device, initial: torch.Tensor | None) -> torch.Tensor:
        pool_size = len(self.lesion_pool) + (initial is not None)
        if pool_size == 0 or self._uniform(0.0, 1.0) < self.random_shape_prob:
            return self._random_shape(spatial, device)
        if initial is not None and self._randint(0, pool_size - 1) == pool_size - 1:
            chosen = initial.squeeze(0) if initial.ndim == 4 else initial
        else:
            chosen = load_lesion_map(self.lesion_pool[self._randint(0, len(self.lesion_pool) - 1)])
        return center_pad_or_crop(chosen.to(device=device, dtype=torch.float32), spatial)

    def _draw(self, brain: torch.Tensor, initial: torch.Tensor | None, record: bool = False) -> tuple | None:
        """One attempt: ``(P(T), mask, frames)`` or ``None`` when the result is (nearly) empty; ``frames`` holds
        ``P`` after each time step when ``record``, else is empty."""
        spatial, device = brain.shape, brain.device
        p0 = self._initial_map(spatial, device, initial) * brain
        if not bool(p0.any()):
            return None
        velocity, diffusivity = random_flow(
            spatial,
            self.magnitude,
            generator=self._generator,
            device=device,
            diffusion=self.diffusion,
            diffusion_magnitude=self.diffusion_magnitude,
            periods=self.flow_periods,
        )
        steps = self._randint(*self.nt_range) - 1
        frames = [p0]
        if record:  # one step at a time: the same sub-steps, so the same final map
            for _ in range(steps):
                frames.append(advect_diffuse(frames[-1], velocity, diffusivity, self.dt, 1, self.solver_backend))
            p = frames[-1] * brain
        else:
            p = advect_diffuse(p0, velocity, diffusivity, dt=self.dt, steps=steps, backend=self.solver_backend) * brain
        peak = p.max()
        if not peak > 0:
            return None
        mask = (p > self.threshold * peak).float()
        if float(mask.mean()) <= self.min_fraction:
            return None
        return p, mask, frames if record else []

    def __call__(
        self,
        img: torch.Tensor,
        brain_mask: torch.Tensor | None = None,
        initial: torch.Tensor | None = None,
        randomize: bool = True,
        return_frames: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """
        Args:
            img: reference image ``[C, X, Y, Z]`` (grid, device and metadata of the outputs).
            brain_mask: ``[1, X, Y, Z]`` or ``[X, Y, Z]``, non-zero inside the brain; default ``img[0] > 0``.
            initial: an extra candidate initial map ``[1, X, Y, Z]`` or ``[X, Y, Z]`` in ``[0, 1]`` (e.g. a real
                lesion of this subject), added to the pool for this call.
            randomize: draw new random numbers (``False`` replays the last draw).
            return_frames: also return the list of ``[1, X, Y, Z]`` maps after each time step, from ``P0``
                (not yet confined to the brain after advection), for figures.
        """
        img = convert_to_tensor(img, track_meta=True)
        if img.ndim != 4:
            raise ValueError(f"FluidAnomaly: expected a channel-first 3D image [C, X, Y, Z], got {tuple(img.shape)}.")
        spatial = tuple(img.shape[1:])
        brain = img[0] > 0 if brain_mask is None else torch.as_tensor(brain_mask, device=img.device)
        brain = brain.squeeze(0) if brain.ndim == 4 else brain
        if tuple(brain.shape) != spatial:
            raise ValueError(f"FluidAnomaly: brain mask shape {tuple(brain.shape)} does not match the image {spatial}.")
        brain = brain.as_tensor() if isinstance(brain, MetaTensor) else brain
        brain = (brain > 0).float()
        if not bool(brain.any()):
            raise ValueError("FluidAnomaly: the brain mask is empty; lesions are confined to the brain.")
        if initial is not None:
            initial = torch.as_tensor(initial).float()
            if not (initial.ndim == 3 or (initial.ndim == 4 and initial.shape[0] == 1)):
                raise ValueError(
                    f"FluidAnomaly: initial map must be [X, Y, Z] or [1, X, Y, Z], got {tuple(initial.shape)}."
                )
        if randomize:
            self.randomize(device=img.device)
        elif self._do_transform and self._generator is None:
            raise RuntimeError("FluidAnomaly: randomize=False before any draw.")
        zeros = torch.zeros((1, *spatial), device=img.device)
        if not self._do_transform:
            outputs = tuple(convert_to_dst_type(zeros, img, dtype=torch.float32)[0] for _ in range(2))
            return (*outputs, []) if return_frames else outputs
        state = self._generator.get_state()
        result = None
        for _ in range(self.max_tries):
            result = self._draw(brain, initial, record=return_frames)
            if result is not None:
                break
        self._generator.set_state(state)  # randomize=False replays exactly this draw
        if result is None:
            raise RuntimeError(
                f"FluidAnomaly: no lesion larger than {self.min_fraction:g} of the grid in {self.max_tries} draws; "
                "the brain mask may be too small, or lower min_fraction / threshold."
            )
        prob_map, mask = (convert_to_dst_type(t.unsqueeze(0), img, dtype=torch.float32)[0] for t in result[:2])
        if return_frames:
            return prob_map, mask, [f.unsqueeze(0) for f in result[2]]
        return prob_map, mask


def _check_pool_header(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"lesion pool: file not found: {path}")
    try:
        shape = nib.load(str(path)).shape
    except Exception as err:
        raise ValueError(f"lesion pool: {path} is not a readable NIfTI image ({err}).") from err
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        raise ValueError(f"lesion pool: {path} must be a 3D volume, got shape {shape}.")


class RandFluidAnomalyd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`FluidAnomaly`.

    Reads the grid from ``keys`` (the first present key), the brain from ``brain_mask_key`` (default: the
    image's non-zero voxels) and an optional subject-specific initial map from ``initial_key``; writes
    ``probability_key`` (float32 ``[1, X, Y, Z]`` in ``[0, 1]``) and ``mask_key`` (float32 0/1), both zero when
    the transform does not fire, with the image's metadata.

    Args:
        keys: the image key(s) that define the grid (the first one is used).
        brain_mask_key: key of the brain mask, or ``None`` for ``image > 0``.
        initial_key: key of an initial lesion map to add to the pool, or ``None``.
        probability_key: output key of the lesion probability ``P(T)``.
        mask_key: output key of the binary lesion mask.
        allow_missing_keys: don't raise when a key is missing.
        kwargs: the parameters of :class:`FluidAnomaly` (``prob`` included).
    """

    backend = FluidAnomaly.backend

    def __init__(
        self,
        keys: KeysCollection,
        brain_mask_key: str | None = "brain_mask",
        initial_key: str | None = None,
        probability_key: str = "lesion_prob",
        mask_key: str = "lesion",
        allow_missing_keys: bool = False,
        **kwargs,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        prob = kwargs.pop("prob", 1.0)
        RandomizableTransform.__init__(self, prob)
        self.anomaly = FluidAnomaly(prob=1.0, **kwargs)
        self.brain_mask_key = brain_mask_key
        self.initial_key = initial_key
        self.probability_key = probability_key
        self.mask_key = mask_key

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.anomaly.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        key = self.first_key(d)
        if key == ():
            return d
        img = convert_to_tensor(d[key], track_meta=True)
        if not self._do_transform:
            zeros = convert_to_dst_type(torch.zeros((1, *img.shape[1:])), img, dtype=torch.float32)[0]
            d[self.probability_key], d[self.mask_key] = zeros, zeros.clone()
            return d
        brain = d[self.brain_mask_key] if self.brain_mask_key is not None else None
        initial = d.get(self.initial_key) if self.initial_key is not None else None
        d[self.probability_key], d[self.mask_key] = self.anomaly(img, brain_mask=brain, initial=initial)
        return d
