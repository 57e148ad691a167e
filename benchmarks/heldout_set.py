"""The project's held-out evaluation set: MNI152 brains and lesions that training never sees, in four kinds of case.

Built offline from the ICBM 2009a T1 template and grey/white-matter probability maps shipped inside nilearn (the
project's one real brain; the label map of ``scripts.data.mni152.mni152_labels``). What is held out:

* **Deformations.** Brain ``i`` is the template pulled through ``scripts.data.demo_data.random_deformation`` drawn from
  ``np.random.default_rng([9001, 7, i])``. Training and validation subjects use ``default_rng([seed, split, index])``
  with ``seed`` 0 (the default of ``prepare_demo``) and ``split`` 0 or 1, so no held-out brain is a training one.
  1 mm, on the demo grid (``FOV_MM`` around ``FOV_CENTER_MM``: 184 x 224 x 200 voxels), skull-stripped (the T1 and
  every input are 0 outside the brain mask ``labels > 0``, which is given with each case).
* **Lesion generators** unlike the training one (a thresholded Perlin noise advected by a random flow):

  - ``ellipsoid``: one ellipsoid, random axis ratios (0.5-1.5) and orientation, centred in cerebral white matter or a
    deep grey nucleus, scaled to a target volume;
  - ``wedge`` (vascular territory): a cone from an apex in the deep white matter beside the lateral ventricle out
    through a random point of the lateral cortical surface of one hemisphere, its half-angle (with a smooth 15 %
    ripple) set by bisection to the target volume; it holds the white matter under the cortex and the cortex itself
    (cerebral tissue of that hemisphere, CSF and ventricles excluded);
  - ``periventricular`` (confluent): the cerebral white matter within a distance of the lateral ventricles that
    varies smoothly (thicker caps at the frontal and occipital tips, random bands elsewhere), on smooth random
    patches of the ventricular surface; the thickness scale is set by bisection to the target volume;
  - ``foci``: 5-30 balls of radius 2-6 mm centred in cerebral white matter at least 2 mm deep, clipped to it.

  Target volumes (mL) per generator: ellipsoid 0.6 / 6 / 40, wedge 25 / 80 / 200, periventricular 4 / 15 / 45,
  foci 6 / 15 / 28 balls; generator ``g`` in the ``j``-th lesion kind gets target ``(j + g) % 3`` (plus ``k // 4``),
  so each generator meets all three over the set. The reported volume is that of the final binary mask
  (``heldout.json``, ``volume_ml``); clipping to tissue makes it smaller than the target.
  Partial-volume edges: the binary mask is smoothed (Gaussian, sigma 0.6 mm) into a probability ``p`` (0 in CSF)
  and the lesion is encoded as ``(1 - p) * image + p * lesion_intensity``; the truth mask is the binary one.
* **Contrasts and artefacts.** Kinds (``kind`` key of each case, ``n_per_kind`` cases each, case ``k`` on brain
  ``k``; the lesion generator of case ``k`` of the ``j``-th lesion kind is ``GENERATORS[(k + j) % 4]``, so each
  kind sees every generator):

  - ``t1_lesion``: the template's T1 intensities, lesions darker, towards CSF (``csf + f (wm - csf)``, ``f`` in
    0.1-0.45, the brain's median ventricle and white-matter intensities, 4 % smooth texture);
  - ``t1_healthy``: the same brains with no lesion (the input *is* the truth: scores the false-positive volume);
  - ``t1_bias_noise``: ``t1_lesion``-like with a smooth multiplicative bias field (``1 + 0.15 b``, ``b`` a cubic
    upsampling of a 4 x 4 x 4 Gaussian grid scaled to ``max |b| = 1`` in the brain) and Rician noise of sigma 4 % of
    the white-matter median;
  - ``t2_lesion``: a T2-like image from the deformed tissue probabilities (CSF 1.0, grey matter 0.55, white matter
    0.35, times ``1 + 0.03`` smooth texture), lesions bright (``wm + f (csf - wm)``, ``f`` in 0.55-0.85); modality
    ``t2``.

  The truth of every case is the brain's healthy T1w (template intensities in [0, 1], 0 outside the brain).

Randomness: brain ``i`` from ``default_rng([9001, 7, i])``; the lesion of case ``k`` of kind ``j`` from
``default_rng([9001, 8, j, k])``; its intensities, bias field and noise from ``default_rng([9001, 9, j, k])``. The
same arguments give the same files (bit for bit on one machine).

Layout of ``OUT``: ``cases.json`` (the list ``scripts.workflows.evaluation.load_cases`` reads: ``image``, ``truth``,
``lesion`` (lesion kinds), ``mask``, ``modality``, ``name``, ``kind``; paths relative to ``OUT``), ``heldout.json``
(provenance and per case: generator, target and measured lesion volume, parameters), ``images/NAME.nii.gz``,
``lesions/NAME_lesion.nii.gz`` (uint8), ``brains/brain-II_{t1,mask,labels}.nii.gz``. The folder is built under a
temporary name beside ``OUT`` and renamed into place; an existing ``OUT`` is refused unless ``--overwrite`` (and then
only replaced if it is empty or an earlier held-out set).

    python benchmarks/heldout_set.py --out_dir outputs/heldout_set [--n_per_kind 4] [--overwrite]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from una_bundle.scripts.data import demo_data as dd
from una_bundle.scripts.data import labels as ids
from una_bundle.scripts.data import mni152
from una_bundle.scripts.data.nifti_io import save_volume

__all__ = [
    "KINDS",
    "GENERATORS",
    "TARGETS",
    "SEED",
    "Anatomy",
    "heldout_brain",
    "ellipsoid_lesion",
    "wedge_lesion",
    "periventricular_lesion",
    "foci_lesion",
    "make_lesion",
    "partial_volume",
    "t2_like",
    "bias_field",
    "rician",
    "build_heldout_set",
]

#: Kinds of case, in order (their index ``j`` seeds the lesions); ``t1_healthy`` has no lesion.
KINDS = ("t1_lesion", "t1_healthy", "t1_bias_noise", "t2_lesion")
LESION_KINDS = tuple(k for k in KINDS if k != "t1_healthy")
GENERATORS = ("ellipsoid", "wedge", "periventricular", "foci")
#: Per generator, the targets of its occurrences (volume in mL; number of balls for ``foci``), used in turn.
TARGETS = {
    "ellipsoid": (0.6, 6.0, 40.0),
    "wedge": (25.0, 80.0, 200.0),
    "periventricular": (4.0, 15.0, 45.0),
    "foci": (6, 15, 28),
}
#: First entry of every random stream of the set (training uses 0).
SEED = 9001
DEFORMATION_STREAM, LESION_STREAM, INTENSITY_STREAM = 7, 8, 9
PV_SIGMA_MM = 0.6
T2_LEVELS = {"csf": 1.0, "gm": 0.55, "wm": 0.35}
BIAS_AMPLITUDE = 0.15
NOISE_FRACTION = 0.04
FOCI_RADIUS_MM = (2.0, 6.0)

_CEREBRAL_WM = (ids.LEFT_CEREBRAL_WHITE_MATTER, ids.RIGHT_CEREBRAL_WHITE_MATTER)
_CORTEX = (ids.LEFT_CEREBRAL_CORTEX, ids.RIGHT_CEREBRAL_CORTEX)
_DEEP_GM = (
    ids.LEFT_THALAMUS,
    ids.RIGHT_THALAMUS,
    ids.LEFT_CAUDATE,
    ids.RIGHT_CAUDATE,
    ids.LEFT_PUTAMEN,
    ids.RIGHT_PUTAMEN,
)
_VENTRICLES = (ids.LEFT_LATERAL_VENTRICLE, ids.RIGHT_LATERAL_VENTRICLE)


class Anatomy:
    """A brain on a 3D grid with a diagonal RAS affine: ``labels`` (demo label ids), ``t1`` and the tissue
    probabilities ``gm``/``wm`` (float32, 0 outside the brain), with the masks and world axes the generators use."""

    def __init__(self, labels, affine, t1=None, gm=None, wm=None):
        self.labels = np.asarray(labels, dtype=np.uint8)
        self.affine = np.asarray(affine, dtype=np.float64)
        diagonal = np.diag(self.affine)[:3]
        if not np.allclose(self.affine[:3, :3], np.diag(diagonal)) or (diagonal <= 0).any():
            raise ValueError(f"Anatomy needs a diagonal affine with positive spacings, got {self.affine.tolist()}.")
        self.spacing = np.abs(np.diag(self.affine)[:3])
        self.voxel_ml = float(np.prod(self.spacing)) / 1000.0
        self.shape = self.labels.shape
        self.axes = [self.affine[i, i] * np.arange(n) + self.affine[i, 3] for i, n in enumerate(self.shape)]
        self.t1, self.gm, self.wm = t1, gm, wm
        self.brain = self.labels > 0
        self.tissue = self.brain & ~np.isin(self.labels, ids.CSF_LABELS)
        self.wm_mask = np.isin(self.labels, _CEREBRAL_WM)
        self.cortex = np.isin(self.labels, _CORTEX)
        self.deep_gm = np.isin(self.labels, _DEEP_GM)
        self.ventricles = np.isin(self.labels, _VENTRICLES)
        self.cerebral = self.wm_mask | self.cortex | self.deep_gm

    def world(self, index) -> np.ndarray:
        """World mm of voxel indices ``[..., 3]``."""
        index = np.asarray(index, dtype=np.float64)
        return index * np.diag(self.affine)[:3] + self.affine[:3, 3]

    def pick(self, rng: np.random.Generator, mask: np.ndarray, what: str) -> np.ndarray:
        """World mm of a uniformly random voxel of ``mask``."""
        flat = np.flatnonzero(mask)
        if flat.size == 0:
            raise ValueError(f"no voxel to place the {what} in.")
        return self.world(np.unravel_index(int(rng.choice(flat)), self.shape))

    def box(self, center, radius_mm: float) -> tuple[tuple[slice, ...], list[np.ndarray]]:
        """Index box of the cube of half-side ``radius_mm`` around ``center`` (mm), and its open world grids."""
        box = []
        for axis, c in zip(self.axes, center):
            lo, hi = np.searchsorted(axis, [c - radius_mm, c + radius_mm])
            box.append(slice(max(int(lo) - 1, 0), min(int(hi) + 1, len(axis))))
        grids = np.meshgrid(*(a[b] - c for a, b, c in zip(self.axes, box, center)), indexing="ij", sparse=True)
        return tuple(box), grids

    def smooth_noise(self, rng: np.random.Generator, sigma_mm: float, shape=None) -> np.ndarray:
        """Gaussian white noise smoothed by ``sigma_mm``, rescaled to zero mean and unit std (float32)."""
        noise = rng.standard_normal(self.shape if shape is None else shape).astype(np.float32)
        noise = ndi.gaussian_filter(noise, sigma_mm / self.spacing, mode="reflect")
        return ((noise - noise.mean()) / max(float(noise.std()), 1e-12)).astype(np.float32)


def _bisect(volume_of, lo: float, hi: float, target_ml: float, steps: int = 18) -> float:
    """The parameter in ``[lo, hi]`` whose (increasing) ``volume_of`` is closest to ``target_ml``."""
    if volume_of(hi) <= target_ml:
        return hi
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if volume_of(mid) < target_ml else (lo, mid)
    return hi if abs(volume_of(hi) - target_ml) < abs(volume_of(lo) - target_ml) else lo


def ellipsoid_lesion(anatomy: Anatomy, rng: np.random.Generator, target_ml: float) -> tuple[np.ndarray, dict]:
    """One randomly oriented ellipsoid of about ``target_ml`` mL (before clipping to tissue) in cerebral WM/deep GM."""
    ratios = rng.uniform(0.5, 1.5, 3)
    semi = ratios * (3 * target_ml * 1000 / (4 * math.pi * float(np.prod(ratios)))) ** (1 / 3)
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    rotation = q * np.sign(np.diag(r))
    if np.linalg.det(rotation) < 0:
        rotation[:, 0] *= -1
    center = anatomy.pick(rng, anatomy.wm_mask | anatomy.deep_gm, "ellipsoid centre")
    box, (x, y, z) = anatomy.box(center, float(semi.max()) + 2)
    local = [rotation[0, i] * x + rotation[1, i] * y + rotation[2, i] * z for i in range(3)]  # R^T (p - c)
    inside = sum((v / s) ** 2 for v, s in zip(local, semi)) <= 1
    mask = np.zeros(anatomy.shape, dtype=bool)
    mask[box] = inside & anatomy.tissue[box]
    return mask, {"center_mm": center.round(1).tolist(), "semi_axes_mm": semi.round(2).tolist()}


def wedge_lesion(anatomy: Anatomy, rng: np.random.Generator, target_ml: float) -> tuple[np.ndarray, dict]:
    """A vascular-territory wedge: a cone from deep white matter beside the lateral ventricle out to the lateral
    cortex of one hemisphere, through the subcortical white matter and the cortex (module docstring)."""
    side = float(rng.choice([-1.0, 1.0]))
    x_world = anatomy.axes[0][:, None, None]
    hemisphere = np.broadcast_to(side * x_world > 0, anatomy.shape)
    ventricle = anatomy.ventricles & hemisphere
    if not ventricle.any():
        raise ValueError("wedge: no lateral ventricle in the hemisphere.")
    apex_ref = anatomy.world(np.array(np.nonzero(ventricle)).mean(axis=1))
    depth = ndi.distance_transform_edt(anatomy.brain, sampling=anatomy.spacing)
    shallow = depth <= max(3.0, 1.01 * float(anatomy.spacing.max()))  # 3 mm (one voxel on coarse test grids)
    surface = anatomy.cortex & hemisphere & shallow & (np.abs(x_world) >= 25.0)
    cortex_point = anatomy.pick(rng, surface, "wedge's cortical end")
    axis = cortex_point - apex_ref
    length = float(np.linalg.norm(axis))
    axis /= length
    apex = apex_ref + 0.2 * length * axis  # deep white matter at the ventricle's side
    reach = 0.8 * length + 20.0  # past the cortex
    box, (x, y, z) = anatomy.box(apex, reach)
    along = axis[0] * x + axis[1] * y + axis[2] * z
    distance = np.sqrt(x**2 + y**2 + z**2)
    angle = np.degrees(np.arccos(np.clip(along / np.maximum(distance, 1e-6), -1, 1)))
    ripple = 1 + 0.15 * np.clip(anatomy.smooth_noise(rng, 6.0, angle.shape), -2, 2)
    allowed = (distance <= reach) & anatomy.cerebral[box] & hemisphere[box] & anatomy.tissue[box]
    scaled = angle / ripple

    def volume(half_angle: float) -> float:
        return float(np.count_nonzero(allowed & (scaled <= half_angle))) * anatomy.voxel_ml

    half_angle = _bisect(volume, 2.0, 85.0, target_ml)
    mask = np.zeros(anatomy.shape, dtype=bool)
    mask[box] = allowed & (scaled <= half_angle)
    params = {"hemisphere": "right" if side > 0 else "left", "apex_mm": apex.round(1).tolist()}
    params.update(cortex_point_mm=cortex_point.round(1).tolist(), half_angle_deg=round(half_angle, 2))
    return mask, params


def periventricular_lesion(anatomy: Anatomy, rng: np.random.Generator, target_ml: float) -> tuple[np.ndarray, dict]:
    """Confluent periventricular lesions: white matter within a smoothly varying distance of the lateral
    ventricles, thicker at the frontal and occipital caps, on smooth random patches (module docstring)."""
    if not anatomy.ventricles.any():
        raise ValueError("periventricular: the brain has no lateral ventricles.")
    lo = np.array(np.nonzero(anatomy.ventricles)).min(axis=1)
    hi = np.array(np.nonzero(anatomy.ventricles)).max(axis=1) + 1
    pad = np.ceil(30.0 / anatomy.spacing).astype(int)
    box = tuple(slice(max(int(a - p), 0), min(int(b + p), n)) for a, b, p, n in zip(lo, hi, pad, anatomy.shape))
    ventricles = anatomy.ventricles[box]
    distance = ndi.distance_transform_edt(~ventricles, sampling=anatomy.spacing)
    y = anatomy.axes[1][box[1]][None, :, None]
    y_vent = anatomy.axes[1][np.nonzero(ventricles.any(axis=(0, 2)))[0] + box[1].start]
    caps = np.exp(-(((y - y_vent.max()) / 12.0) ** 2)) + np.exp(-(((y - y_vent.min()) / 12.0) ** 2))
    shape = distance.shape
    profile = (1.0 + 0.4 * np.clip(anatomy.smooth_noise(rng, 6.0, shape), -2, 2)) * (0.6 + caps)
    coverage = rng.uniform(0.55, 0.9)
    patches = anatomy.smooth_noise(rng, 10.0, shape)
    patches = patches >= np.quantile(patches, 1 - coverage)
    allowed = anatomy.wm_mask[box] & patches & (distance > 0)

    def volume(thickness: float) -> float:
        return float(np.count_nonzero(allowed & (distance <= thickness * profile))) * anatomy.voxel_ml

    thickness = _bisect(volume, 0.5, 30.0, target_ml)
    band = allowed & (distance <= thickness * profile)
    mask = np.zeros(anatomy.shape, dtype=bool)
    mask[box] = band
    return mask, {"thickness_mm": round(thickness, 2), "coverage": round(float(coverage), 3)}


def foci_lesion(anatomy: Anatomy, rng: np.random.Generator, count: int) -> tuple[np.ndarray, dict]:
    """``count`` balls of radius ``FOCI_RADIUS_MM`` centred in cerebral white matter >= 2 mm deep, clipped to it."""
    deep = ndi.distance_transform_edt(anatomy.wm_mask, sampling=anatomy.spacing) >= 2.0
    radii = rng.uniform(*FOCI_RADIUS_MM, int(count))
    mask = np.zeros(anatomy.shape, dtype=bool)
    for radius in radii:
        center = anatomy.pick(rng, deep, "focus")
        box, (x, y, z) = anatomy.box(center, float(radius) + 1)
        mask[box] |= x**2 + y**2 + z**2 <= radius**2
    return mask & anatomy.wm_mask, {"count": int(count), "radii_mm": radii.round(2).tolist()}


_MAKERS = {
    "ellipsoid": ellipsoid_lesion,
    "wedge": wedge_lesion,
    "periventricular": periventricular_lesion,
    "foci": foci_lesion,
}


def make_lesion(generator: str, anatomy: Anatomy, rng: np.random.Generator, target) -> tuple[np.ndarray, dict]:
    """The binary lesion mask of ``generator`` (one of :data:`GENERATORS`) and its parameters."""
    if generator not in _MAKERS:
        raise ValueError(f"unknown lesion generator {generator!r}; one of {GENERATORS}.")
    mask, params = _MAKERS[generator](anatomy, rng, target)
    if not mask.any():
        raise ValueError(f"{generator}: the lesion is empty.")
    return mask, params


def partial_volume(anatomy: Anatomy, mask: np.ndarray) -> np.ndarray:
    """The lesion probability: the binary ``mask`` smoothed by ``PV_SIGMA_MM``, 0 outside the tissue (float32)."""
    prob = ndi.gaussian_filter(mask.astype(np.float32), PV_SIGMA_MM / anatomy.spacing)
    return np.clip(prob, 0, 1) * anatomy.tissue


def t2_like(anatomy: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """A T2-like image from the tissue probabilities: CSF bright, grey matter middle, white matter dark, with a 3 %
    smooth texture; 0 outside the brain."""
    gm, wm = np.clip(anatomy.gm, 0, 1), np.clip(anatomy.wm, 0, 1)
    csf = np.clip(1 - gm - wm, 0, 1)
    image = T2_LEVELS["csf"] * csf + T2_LEVELS["gm"] * gm + T2_LEVELS["wm"] * wm
    image *= 1 + 0.03 * np.clip(anatomy.smooth_noise(rng, 2.0), -3, 3)
    return (image * anatomy.brain).astype(np.float32)


def bias_field(anatomy: Anatomy, rng: np.random.Generator, amplitude: float = BIAS_AMPLITUDE) -> np.ndarray:
    """``1 + amplitude * b``: ``b`` a cubic upsampling of a 4^3 Gaussian grid, scaled to ``max |b| = 1`` in the
    brain."""
    coarse = rng.standard_normal((4, 4, 4))
    field = ndi.zoom(coarse, [n / 4 for n in anatomy.shape], order=3, mode="nearest", grid_mode=True)
    field = field[tuple(slice(0, n) for n in anatomy.shape)]
    field = field - field[anatomy.brain].mean()
    field /= max(float(np.abs(field[anatomy.brain]).max()), 1e-12)
    return (1 + amplitude * field).astype(np.float32)


def rician(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of ``image`` plus complex Gaussian noise of ``sigma`` per channel."""
    real = image + rng.normal(0.0, sigma, image.shape)
    imag = rng.normal(0.0, sigma, image.shape)
    return np.sqrt(real**2 + imag**2).astype(np.float32)


def _encode(image: np.ndarray, prob: np.ndarray, level: float, anatomy: Anatomy, rng) -> np.ndarray:
    """``(1 - p) image + p level (1 + 0.04 texture)``."""
    texture = 1 + 0.04 * np.clip(anatomy.smooth_noise(rng, 2.0), -3, 3)
    return ((1 - prob) * image + prob * level * texture).astype(np.float32)


def _template_source() -> dict:
    """The template's T1, GM and WM maps (channels) and labels as tensors on their 1 mm grid."""
    t1, labels, affine = mni152.mni152_labels()
    template, gm, wm, raw_affine = mni152._load_mni152()
    (template, gm, wm), cropped = mni152._crop_to_brain([template, gm, wm], raw_affine)
    if not (np.allclose(cropped, affine) and template.shape == labels.shape):
        raise RuntimeError("the tissue maps do not lie on the label map's grid.")
    channels = np.stack([t1, np.clip(gm, 0, 1), np.clip(wm, 0, 1)]).astype(np.float32)
    return {"channels": torch.from_numpy(channels), "labels": torch.from_numpy(labels.astype(np.float32))}, affine


def heldout_brain(index: int, spacing: float = 1.0, source=None, seed: int = SEED) -> Anatomy:
    """Held-out brain ``index``: the template through ``random_deformation(default_rng([SEED, 7, index]))`` on the
    demo grid at ``spacing`` mm (1 for the set; coarser only for quick tests), T1 and tissue maps 0 outside."""
    source, source_affine = source if source is not None else _template_source()
    shape, affine = dd._grid(float(spacing))
    rng = np.random.default_rng([seed, DEFORMATION_STREAM, int(index)])
    points = dd.random_deformation(rng, shape, affine)
    grid = dd._normalized(points, tuple(source["labels"].shape), source_affine)
    channels = source["channels"]
    if spacing > 1:  # anti-aliasing, as demo_data does for its coarse subjects
        sigma = math.sqrt(spacing**2 - 1) / (2 * math.sqrt(2 * math.log(2)))
        channels = torch.from_numpy(np.stack([ndi.gaussian_filter(c, sigma) for c in channels.numpy()]))
    sampled = dd._sample(channels, grid, "bilinear").clamp_(0, 1).numpy()
    labels = dd._sample(source["labels"], grid, "nearest").round_().to(torch.uint8).numpy()
    brain = labels > 0
    t1, gm, wm = (np.ascontiguousarray(c * brain, dtype=np.float32) for c in sampled)
    return Anatomy(labels, affine, t1, gm, wm)


def _median(image: np.ndarray, mask: np.ndarray) -> float:
    return float(np.median(image[mask])) if mask.any() else float("nan")


def _case_images(
    kind: str, j: int, k: int, anatomy: Anatomy, lesion: np.ndarray | None, seed: int = SEED
) -> tuple[np.ndarray, dict]:
    """The input image of case ``k`` of kind ``j`` and its intensity parameters."""
    rng = np.random.default_rng([seed, INTENSITY_STREAM, j, k])
    t1 = anatomy.t1
    csf_t1, wm_t1 = _median(t1, anatomy.ventricles), _median(t1, anatomy.wm_mask)
    prob = partial_volume(anatomy, lesion) if lesion is not None else None
    params = {}
    if kind == "t1_healthy":
        return t1.copy(), params
    if kind in ("t1_lesion", "t1_bias_noise"):
        f = float(rng.uniform(0.1, 0.45))
        level = csf_t1 + f * (wm_t1 - csf_t1)
        image = _encode(t1, prob, level, anatomy, rng)
        params.update(lesion_intensity=round(level, 4), lesion_fraction_csf_to_wm=round(f, 3))
        if kind == "t1_bias_noise":
            image = image * bias_field(anatomy, rng)
            sigma = NOISE_FRACTION * _median(image, anatomy.wm_mask)
            image = rician(image, sigma, rng)
            params.update(bias_amplitude=BIAS_AMPLITUDE, noise_sigma=round(sigma, 5))
        return (image * anatomy.brain).astype(np.float32), params
    if kind == "t2_lesion":
        t2 = t2_like(anatomy, rng)
        f = float(rng.uniform(0.55, 0.85))
        level = T2_LEVELS["wm"] + f * (T2_LEVELS["csf"] - T2_LEVELS["wm"])
        image = _encode(t2, prob, level, anatomy, rng)
        params.update(lesion_intensity=round(level, 4), lesion_fraction_wm_to_csf=round(f, 3))
        return (image * anatomy.brain).astype(np.float32), params
    raise ValueError(f"unknown kind {kind!r}; one of {KINDS}.")


def plan(n_per_kind: int, kinds=KINDS) -> list[dict]:
    """The cases: ``{"name", "kind", "j", "k", "brain", "generator", "target"}`` (generator/target None if healthy)."""
    out = []
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; one of {KINDS}.")
        j = KINDS.index(kind)
        for k in range(n_per_kind):
            case = {"name": f"{kind}_{k:02d}", "kind": kind, "j": j, "k": k, "brain": k}
            generator = target = None
            if kind in LESION_KINDS:
                lesion_j = LESION_KINDS.index(kind)
                g = (k + lesion_j) % len(GENERATORS)
                generator = GENERATORS[g]
                targets = TARGETS[generator]  # each generator meets every target over the three lesion kinds
                target = targets[(lesion_j + g + k // len(GENERATORS)) % len(targets)]
            case.update(generator=generator, target=target)
            out.append(case)
    return out


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out_dir {out} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"out_dir {out} is not empty; pass --overwrite to replace the held-out set in it.")
        if not (out / "heldout.json").is_file():
            raise FileExistsError(f"out_dir {out} is not empty and holds no heldout.json: not replaced.")


def build_heldout_set(
    out_dir: str | Path,
    n_per_kind: int = 4,
    kinds=KINDS,
    spacing: float = 1.0,
    overwrite: bool = False,
    verbose: bool = True,
    seed: int = SEED,
) -> Path:
    """Build the held-out set into ``out_dir`` (module docstring); returns the path of ``cases.json``.

    Args:
        out_dir: the set's folder; an existing non-empty one needs ``overwrite`` (and must be an earlier set).
        n_per_kind: cases per kind (case ``k`` on brain ``k``); 4 gives the 16-case set.
        kinds: a subset of :data:`KINDS`.
        spacing: voxel size in mm (1 for the set; coarser only for quick tests).
        overwrite: replace an earlier held-out set in ``out_dir``.
        verbose: one progress line per case on stderr.
        seed: first seed of every random stream; another value gives another, disjoint set of the same design
            (e.g. a calibration set: ``benchmarks/calibrate_threshold.py``).
    """
    if isinstance(n_per_kind, bool) or int(n_per_kind) != n_per_kind or n_per_kind < 1:
        raise ValueError(f"n_per_kind must be a positive integer, got {n_per_kind!r}.")
    kinds = tuple(kinds)
    cases = plan(int(n_per_kind), kinds)
    out = Path(out_dir)
    _prepare_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    start = time.perf_counter()
    try:
        for folder in ("images", "lesions", "brains"):
            (tmp / folder).mkdir(parents=True, exist_ok=True)
        source = _template_source()
        entries, manifest_cases = [], []
        for b in sorted({c["brain"] for c in cases}):
            anatomy = heldout_brain(b, spacing, source, seed)
            stem = f"brains/brain-{b:02d}"
            save_volume(anatomy.t1, anatomy.affine, tmp / f"{stem}_t1.nii.gz")
            save_volume(anatomy.brain, anatomy.affine, tmp / f"{stem}_mask.nii.gz", dtype=np.uint8)
            save_volume(anatomy.labels, anatomy.affine, tmp / f"{stem}_labels.nii.gz", dtype=np.uint8)
            for case in (c for c in cases if c["brain"] == b):
                case_start = time.perf_counter()
                lesion, params = None, {}
                if case["generator"] is not None:
                    rng = np.random.default_rng([seed, LESION_STREAM, case["j"], case["k"]])
                    lesion, params = make_lesion(case["generator"], anatomy, rng, case["target"])
                image, intensity = _case_images(case["kind"], case["j"], case["k"], anatomy, lesion, seed)
                name = case["name"]
                save_volume(image, anatomy.affine, tmp / "images" / f"{name}.nii.gz")
                entry = {"name": name, "kind": case["kind"], "image": f"images/{name}.nii.gz"}
                entry.update(truth=f"{stem}_t1.nii.gz", mask=f"{stem}_mask.nii.gz")
                entry["modality"] = "t2" if case["kind"].startswith("t2") else "t1"
                volume_ml = 0.0
                if lesion is not None:
                    save_volume(lesion, anatomy.affine, tmp / "lesions" / f"{name}_lesion.nii.gz", dtype=np.uint8)
                    entry["lesion"] = f"lesions/{name}_lesion.nii.gz"
                    volume_ml = float(lesion.sum()) * anatomy.voxel_ml
                entries.append(entry)
                manifest_cases.append(
                    {
                        "name": name,
                        "kind": case["kind"],
                        "brain": b,
                        "generator": case["generator"],
                        "target": case["target"],
                        "volume_ml": round(volume_ml, 3),
                        "lesion": params,
                        "intensity": intensity,
                    }
                )
                if verbose:
                    print(
                        f"heldout_set: {name} ({case['generator'] or 'no lesion'}, {volume_ml:.2f} mL) "
                        f"{time.perf_counter() - case_start:.1f} s",
                        file=sys.stderr,
                    )
        order = {c["name"]: i for i, c in enumerate(cases)}
        entries.sort(key=lambda e: order[e["name"]])
        manifest_cases.sort(key=lambda e: order[e["name"]])
        manifest = {
            "name": "UNA held-out evaluation set",
            "description": __doc__.split("\n\n")[0],
            "source": "ICBM 2009a nonlinear symmetric T1 template and GM/WM maps shipped in nilearn",
            "seed": seed,
            "streams": {"deformation": DEFORMATION_STREAM, "lesion": LESION_STREAM, "intensity": INTENSITY_STREAM},
            "spacing": [float(spacing)] * 3,
            "n_per_kind": int(n_per_kind),
            "kinds": list(kinds),
            "seconds": round(time.perf_counter() - start, 1),
            "cases": manifest_cases,
        }
        dd._write_json(entries, tmp / "cases.json")
        dd._write_json(manifest, tmp / "heldout.json")
        moved = False
        if out.exists():
            _prepare_out(out, overwrite)  # still ours to replace
            out.rename(old)
            moved = True
        try:
            tmp.rename(out)
        except BaseException:
            if moved:
                old.rename(out)
            raise
    finally:
        for folder in (tmp, old):
            if folder.exists():
                shutil.rmtree(folder)
    return out / "cases.json"


def case_table(out_dir: str | Path) -> str:
    """Markdown table of a built set's cases: name, kind, lesion generator, lesion volume (mL)."""
    manifest = json.loads((Path(out_dir) / "heldout.json").read_text())
    lines = ["| case | kind | brain | lesion generator | lesion volume (mL) |", "|---|---|---|---|---|"]
    for c in manifest["cases"]:
        generator = c["generator"] or "none"
        lines.append(f"| {c['name']} | {c['kind']} | {c['brain']} | {generator} | {c['volume_ml']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out_dir", default="outputs/heldout_set")
    parser.add_argument("--n_per_kind", type=int, default=4)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--spacing", type=float, default=1.0, help="mm; 1 for the set (coarser: quick tests only)")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--seed", type=int, default=SEED, help=f"{SEED}: the held-out set; another: a disjoint one")
    args = parser.parse_args(argv)
    if args.seed in (0,):
        print("heldout_set: error: seed 0 is the training data's seed (prepare_demo).", file=sys.stderr)
        return 2
    try:
        path = build_heldout_set(
            args.out_dir, args.n_per_kind, args.kinds, args.spacing, args.overwrite, seed=args.seed
        )
    except (FileExistsError, ValueError) as err:
        print(f"heldout_set: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}\n")
    print(case_table(path.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
