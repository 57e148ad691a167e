"""A demo dataset built offline from the MNI152 2009a (symmetric) template and tissue maps shipped inside nilearn.

UNA trains on synthetic images drawn from anatomy label maps, with a healthy T1w as the target. This module makes
such subjects without downloading anything: the 1 mm ICBM 2009a symmetric T1 template (skull-stripped, intensities
in [0, 1]) and its grey/white-matter probability maps (``nilearn.datasets.load_mni152_template`` /
``load_mni152_gm_template`` / ``load_mni152_wm_template``, which read files inside the nilearn package), a label
map derived from them by fixed rules, and random smooth deformations of all three for the other subjects.

Label map (FreeSurfer/SynthSeg label ids, so the constants also fit SynthSeg label maps users bring). All rules
work on the 1 mm template in MNI coordinates (x: left -> right, y: posterior -> anterior, z: inferior -> superior):

* brain: ``T1 > 0`` with holes filled (the template is skull-stripped). Outside: 0 (background).
* tissue class per brain voxel: the largest of ``P_csf = clip(1 - P_gm - P_wm, 0, 1)``, ``P_gm``, ``P_wm``.
* lateral ventricles (4 / 43): CSF-class connected components (6-connectivity) of at least 20 voxels lying
  entirely in the brain eroded by 3 voxels, whose ring 2-4 mm around them is at least 20 % white-matter class
  (ventricles sit in white matter; sulcal CSF pockets are ringed by cortex, < 10 %). This keeps the lateral
  ventricles with their temporal and occipital horns. All other CSF-class voxels: CSF (24). The third and fourth
  ventricles are not resolved as separate CSF bodies in the template and stay CSF (24).
* cerebrum / brainstem / cerebellum: seeded region growing by levels (a watershed by immersion on the
  template's brightness): the seeds grow one voxel per step (6-connectivity, first come first served) through
  brain voxels brighter than 0.75 in the template smoothed with a 0.5 mm Gaussian until they stop, then brighter
  than 0.70, ..., 0.40 (``_LEVELS``), then through the rest of the brain. White matter is claimed first, the dark
  tentorial gap and fourth ventricle last, so the borders follow them. Seeds (``_SEEDS``, 5 mm balls on tissue):
  every brain voxel above z = 20 mm and balls at the thalami, the ventral diencephalon and the temporal and
  occipital white matter (cerebrum); balls along the brainstem's midline axis from the midbrain (z = -16 mm)
  to the medulla (brainstem); balls in both cerebellar hemispheres and the vermis, and every brain voxel below
  z = -55 mm outside the medulla (|x| < 12, y > -50) (cerebellum). Brainstem tissue (GM or WM class): 16.
  Cerebellum: grey-matter class -> cerebellar cortex (8 / 47), white-matter class -> cerebellar WM (7 / 46).
* cerebrum, white-matter class: cerebral white matter (2 / 41). The pallidum is white-matter class in this
  template (its T1 is white-matter-like) and is not separated.
* deep grey nuclei: seeds grow (as above, one level) through cerebral tissue with ``P_gm >= 0.35``: 3 mm balls
  at the MNI centroids of the thalamus (-11, -18, 7), caudate (-13, 10, 10) and putamen (-25, 0, 1) of each side
  (x mirrored), against cortex seeds = cerebral grey-matter class within two 6-connected steps of the brain's
  outside or of non-ventricular CSF, outside the central box x in [-24, 24], y in [-42, 24], z in [-8, 24] mm
  (which holds only nuclei, ventricles and the third ventricle). The nuclei are enclosed by white matter
  (internal / external capsule, ``P_gm`` < 0.35) or ventricles, so each seed fills its nucleus, including its
  partial-volume voxels of white-matter class: thalamus (10 / 49), caudate (11 / 50), putamen (12 / 51). The
  accumbens area joins the caudate or putamen; hippocampus and amygdala are cortex-connected and stay cortex.
* cerebrum, other grey-matter class voxels: cerebral cortex (3 / 42).
* left / right: x < 0 mm is left, x >= 0 mm right (RAS); the brainstem (16) and CSF (24) are not split.

Subjects: training subject 0 is the template itself; every other subject (and every validation subject) is the
template pulled through a random diffeomorphism (``random_deformation``): a random affine about the brain's
centre (rotations up to 10 degrees, per-axis scaling 0.92-1.06, shear up to 0.04, translation up to 4 mm)
followed by the exponential of a stationary velocity field (N(0, 3 mm) per component on a 40 mm control grid,
cubic-spline upsampled, integrated by scaling and squaring, so the map does not fold; displacements about 4 mm
on average, up to about 12 mm, before the affine). Randomness: ``np.random.default_rng([seed, split, index])``
per subject, nothing global. The T1 is resampled
linearly (after a Gaussian anti-aliasing blur when ``spacing`` > 1), the label map by nearest neighbour, and the
brain mask is ``labels > 0``. Every volume lies on one grid: a field of view of ``FOV_MM`` = (184, 224, 200) mm
centred at ``FOV_CENTER_MM`` = (0, -17, 5) mm MNI (the template brain's bounding box plus 20 mm on each side;
deformed brains kept at least 4 mm from the border in 60 random draws), so (184, 224, 200) voxels at 1 mm (on
the template's own voxel grid), (92, 112, 100) at 2 mm and (62, 75, 67) at 3 mm, with RAS affines
``diag(spacing)`` plus an offset. Outside the brain every volume is 0; the template has no data below z = -72 mm
(the medulla ends there as a flat cut).
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from .atomic_io import write_atomic
from .nifti_io import save_volume

__all__ = [
    "BACKGROUND",
    "LEFT_CEREBRAL_WHITE_MATTER",
    "LEFT_CEREBRAL_CORTEX",
    "LEFT_LATERAL_VENTRICLE",
    "LEFT_CEREBELLUM_WHITE_MATTER",
    "LEFT_CEREBELLUM_CORTEX",
    "LEFT_THALAMUS",
    "LEFT_CAUDATE",
    "LEFT_PUTAMEN",
    "BRAINSTEM",
    "CSF",
    "RIGHT_CEREBRAL_WHITE_MATTER",
    "RIGHT_CEREBRAL_CORTEX",
    "RIGHT_LATERAL_VENTRICLE",
    "RIGHT_CEREBELLUM_WHITE_MATTER",
    "RIGHT_CEREBELLUM_CORTEX",
    "RIGHT_THALAMUS",
    "RIGHT_CAUDATE",
    "RIGHT_PUTAMEN",
    "LABELS",
    "LABEL_NAMES",
    "GM_LABELS",
    "WM_LABELS",
    "CSF_LABELS",
    "LEFT_RIGHT_PAIRS",
    "FOV_MM",
    "FOV_CENTER_MM",
    "mni152_labels",
    "random_deformation",
    "prepare_demo",
]

# FreeSurfer / SynthSeg ids.
BACKGROUND = 0
LEFT_CEREBRAL_WHITE_MATTER = 2
LEFT_CEREBRAL_CORTEX = 3
LEFT_LATERAL_VENTRICLE = 4
LEFT_CEREBELLUM_WHITE_MATTER = 7
LEFT_CEREBELLUM_CORTEX = 8
LEFT_THALAMUS = 10
LEFT_CAUDATE = 11
LEFT_PUTAMEN = 12
BRAINSTEM = 16
CSF = 24
RIGHT_CEREBRAL_WHITE_MATTER = 41
RIGHT_CEREBRAL_CORTEX = 42
RIGHT_LATERAL_VENTRICLE = 43
RIGHT_CEREBELLUM_WHITE_MATTER = 46
RIGHT_CEREBELLUM_CORTEX = 47
RIGHT_THALAMUS = 49
RIGHT_CAUDATE = 50
RIGHT_PUTAMEN = 51

#: name -> id of every class in the demo label maps (FreeSurfer names and ids).
LABELS = {
    "background": BACKGROUND,
    "Left-Cerebral-White-Matter": LEFT_CEREBRAL_WHITE_MATTER,
    "Left-Cerebral-Cortex": LEFT_CEREBRAL_CORTEX,
    "Left-Lateral-Ventricle": LEFT_LATERAL_VENTRICLE,
    "Left-Cerebellum-White-Matter": LEFT_CEREBELLUM_WHITE_MATTER,
    "Left-Cerebellum-Cortex": LEFT_CEREBELLUM_CORTEX,
    "Left-Thalamus": LEFT_THALAMUS,
    "Left-Caudate": LEFT_CAUDATE,
    "Left-Putamen": LEFT_PUTAMEN,
    "Brain-Stem": BRAINSTEM,
    "CSF": CSF,
    "Right-Cerebral-White-Matter": RIGHT_CEREBRAL_WHITE_MATTER,
    "Right-Cerebral-Cortex": RIGHT_CEREBRAL_CORTEX,
    "Right-Lateral-Ventricle": RIGHT_LATERAL_VENTRICLE,
    "Right-Cerebellum-White-Matter": RIGHT_CEREBELLUM_WHITE_MATTER,
    "Right-Cerebellum-Cortex": RIGHT_CEREBELLUM_CORTEX,
    "Right-Thalamus": RIGHT_THALAMUS,
    "Right-Caudate": RIGHT_CAUDATE,
    "Right-Putamen": RIGHT_PUTAMEN,
}
#: id -> name.
LABEL_NAMES = {v: k for k, v in LABELS.items()}
#: Grey-matter classes (cortex, cerebellar cortex, deep grey nuclei): lesion contrast compares their mean with WM.
GM_LABELS = (
    LEFT_CEREBRAL_CORTEX,
    RIGHT_CEREBRAL_CORTEX,
    LEFT_CEREBELLUM_CORTEX,
    RIGHT_CEREBELLUM_CORTEX,
    LEFT_THALAMUS,
    RIGHT_THALAMUS,
    LEFT_CAUDATE,
    RIGHT_CAUDATE,
    LEFT_PUTAMEN,
    RIGHT_PUTAMEN,
)
#: White-matter classes (cerebral and cerebellar; the mixed brainstem is in neither list).
WM_LABELS = (
    LEFT_CEREBRAL_WHITE_MATTER,
    RIGHT_CEREBRAL_WHITE_MATTER,
    LEFT_CEREBELLUM_WHITE_MATTER,
    RIGHT_CEREBELLUM_WHITE_MATTER,
)
#: Fluid classes.
CSF_LABELS = (LEFT_LATERAL_VENTRICLE, RIGHT_LATERAL_VENTRICLE, CSF)
#: (left, right) id pairs, to swap when an image is flipped left-right.
LEFT_RIGHT_PAIRS = (
    (LEFT_CEREBRAL_WHITE_MATTER, RIGHT_CEREBRAL_WHITE_MATTER),
    (LEFT_CEREBRAL_CORTEX, RIGHT_CEREBRAL_CORTEX),
    (LEFT_LATERAL_VENTRICLE, RIGHT_LATERAL_VENTRICLE),
    (LEFT_CEREBELLUM_WHITE_MATTER, RIGHT_CEREBELLUM_WHITE_MATTER),
    (LEFT_CEREBELLUM_CORTEX, RIGHT_CEREBELLUM_CORTEX),
    (LEFT_THALAMUS, RIGHT_THALAMUS),
    (LEFT_CAUDATE, RIGHT_CAUDATE),
    (LEFT_PUTAMEN, RIGHT_PUTAMEN),
)

#: Output field of view (mm) and its centre (MNI mm): the template brain's bounding box plus about 20 mm.
FOV_MM = (184.0, 224.0, 200.0)
FOV_CENTER_MM = (0.0, -17.0, 5.0)

# Seeds of the cerebrum / brainstem / cerebellum partition: centres (x, y, z) in MNI mm of balls of _SEED_RADIUS_MM.
_SEEDS = {
    "cerebrum": [(0, -8, -8), (-13, -16, -4), (13, -16, -4), (-11, -18, 5), (11, -18, 5), (0, -20, 0)]
    + [(-40, -20, -10), (40, -20, -10), (-20, -80, 5), (20, -80, 5), (-30, -40, -5), (30, -40, -5)],
    "brainstem": [(0, -22, -16), (0, -24, -25), (0, -27, -35), (0, -33, -45), (0, -38, -55), (0, -42, -65)],
    "cerebellum": [(s * x, y, z) for s in (-1, 1) for x, y, z in ((25, -60, -35), (40, -65, -40), (15, -80, -40))]
    + [(s * x, y, z) for s in (-1, 1) for x, y, z in ((30, -75, -25), (10, -60, -20))]
    + [(0, -72, -25)],
}
_SEED_RADIUS_MM = 5.0
_CEREBRUM_ABOVE_Z = 20.0  # every brain voxel above is cerebrum
_CEREBELLUM_BELOW_Z = -55.0  # every brain voxel below is cerebellum, except the medulla (|x| < 12, y > -50)
_NUCLEI = {  # (x, y, z) of the left nucleus (MNI mm, mirrored for the right), left id, right id
    "thalamus": ((-11, -18, 7), LEFT_THALAMUS, RIGHT_THALAMUS),
    "caudate": ((-13, 10, 10), LEFT_CAUDATE, RIGHT_CAUDATE),
    "putamen": ((-25, 0, 1), LEFT_PUTAMEN, RIGHT_PUTAMEN),
}
_NUCLEUS_SEED_RADIUS_MM = 3.0
_NUCLEUS_MIN_GM = 0.35  # nuclei take cerebral voxels with at least this grey-matter probability
_DEEP_CORE_MM = ((-24, 24), (-42, 24), (-8, 24))  # x, y, z box holding only deep nuclei and ventricles
_LEVELS = (0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4)  # template T1 levels the region seeds grow through, in turn
_CROSS = ndi.generate_binary_structure(3, 1)


def _load_mni152() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 1 mm MNI152 2009a T1 template and GM/WM probability maps inside nilearn (no download) and their affine."""
    from nilearn.datasets import load_mni152_gm_template, load_mni152_template, load_mni152_wm_template

    t1 = load_mni152_template(resolution=1)
    arrays = [np.asarray(img.get_fdata(), dtype=np.float32) for img in (t1, load_mni152_gm_template(resolution=1))]
    arrays.append(np.asarray(load_mni152_wm_template(resolution=1).get_fdata(), dtype=np.float32))
    affine = np.asarray(t1.affine, dtype=np.float64)
    if not np.allclose(affine[:3, :3], np.eye(3)):
        raise ValueError(f"expected nilearn's 1 mm RAS MNI152 template, got affine {affine.tolist()}.")
    return arrays[0], arrays[1], arrays[2], affine


def _crop_to_brain(arrays: list[np.ndarray], affine: np.ndarray, pad: int = 4) -> tuple[list[np.ndarray], np.ndarray]:
    """Crop to the brain's bounding box, then pad with ``pad`` zero voxels on every side (shifting the affine)."""
    nonzero = np.nonzero(arrays[0] > 0)
    lo = [int(ix.min()) for ix in nonzero]
    hi = [int(ix.max()) + 1 for ix in nonzero]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    out = [np.pad(a[box], pad) for a in arrays]
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, :3] @ (np.asarray(lo, dtype=np.float64) - pad) + affine[:3, 3]
    return out, shifted


def _geodesic_partition(seeds: np.ndarray, passable: np.ndarray, max_steps: int = 1000) -> np.ndarray:
    """Grow every seed label one voxel per step (6-connectivity) through ``passable`` voxels, first come first served.

    Where two fronts meet in the same step the larger label id wins (a one-voxel bias). Returns the labels.
    """
    labels = seeds.copy()
    free = passable & (labels == 0)
    if not free.any():
        return labels
    box = tuple(slice(max(int(ix.min()) - 1, 0), int(ix.max()) + 2) for ix in np.nonzero(free))
    sub, free = labels[box], free[box]  # a view: growth writes into ``labels``
    grown = np.empty_like(sub)
    for _ in range(max_steps):
        grown[...] = sub
        for axis in range(3):
            ahead = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
            behind = tuple(slice(None, -1) if a == axis else slice(None) for a in range(3))
            np.maximum(grown[ahead], sub[behind], out=grown[ahead])
            np.maximum(grown[behind], sub[ahead], out=grown[behind])
        new = free & (grown > 0)
        if not new.any():
            break
        sub[new] = grown[new]
        free &= ~new
    return labels


def _balls(axes: list[np.ndarray], centers, radius: float) -> np.ndarray:
    """Union of balls of ``radius`` mm around ``centers`` (mm) on the grid with voxel-centre coordinates ``axes``."""
    out = np.zeros([len(a) for a in axes], dtype=bool)
    for center in centers:
        box = tuple(slice(*np.searchsorted(a, [c - radius, c + radius], side="left")) for a, c in zip(axes, center))
        if any(b.start >= b.stop for b in box):
            continue
        x, y, z = np.meshgrid(*(a[b] - c for a, b, c in zip(axes, box, center)), indexing="ij", sparse=True)
        out[box] |= x**2 + y**2 + z**2 <= radius**2
    return out


def _ventricles(csf_class: np.ndarray, white: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Lateral ventricles: enclosed CSF components (>= 20 voxels, > 3 mm deep) ringed by >= 20 % white matter."""
    components, n = ndi.label(csf_class, structure=_CROSS)
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    shallow = np.bincount(components[~ndi.binary_erosion(brain, _CROSS, iterations=3)], minlength=n + 1)
    keep = []
    for k, box in enumerate(ndi.find_objects(components), start=1):
        if box is None or sizes[k] < 20 or shallow[k] > 0:
            continue
        box = tuple(slice(max(s.start - 5, 0), s.stop + 5) for s in box)
        distance = ndi.distance_transform_edt(components[box] != k)
        ring = (distance > 1.5) & (distance <= 4.0)
        if ring.any() and white[box][ring].mean() >= 0.2:
            keep.append(k)
    return np.isin(components, keep)


def mni152_labels() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The template T1 (float32, [0, 1]), its label map (uint8, ids of ``LABELS``) and their 1 mm RAS affine.

    Cropped to the brain plus 4 voxels. The rules are in the module docstring; they run once per process on the
    1 mm template (about 2 s) and are cached; the arrays returned are copies.
    """
    t1, labels, affine = _mni152_labels()
    return t1.copy(), labels.copy(), affine.copy()


@functools.lru_cache(maxsize=1)
def _mni152_labels() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``mni152_labels`` without the copies (cached)."""
    t1, gm, wm, affine = _load_mni152()
    (t1, gm, wm), affine = _crop_to_brain([t1, gm, wm], affine)
    shape = t1.shape
    axes = [affine[i, i] * np.arange(shape[i]) + affine[i, 3] for i in range(3)]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)

    brain = ndi.binary_fill_holes(t1 > 0)
    gm, wm = np.clip(gm, 0, 1), np.clip(wm, 0, 1)
    tissue_class = np.argmax(np.stack([np.clip(1 - gm - wm, 0, 1), gm, wm]), axis=0)  # 0 CSF, 1 GM, 2 WM
    csf_class = brain & (tissue_class == 0)
    grey = brain & (tissue_class == 1)
    white = brain & (tissue_class == 2)
    tissue = grey | white
    ventricles = _ventricles(csf_class, white, brain)

    # Cerebrum (1), brainstem (2), cerebellum (3): grow through bright voxels, then through the rest of the brain.
    seeds = np.zeros(shape, dtype=np.int8)
    seeds[brain & (z > _CEREBRUM_ABOVE_Z)] = 1
    seeds[_balls(axes, _SEEDS["cerebrum"], _SEED_RADIUS_MM) & tissue] = 1
    seeds[_balls(axes, _SEEDS["brainstem"], _SEED_RADIUS_MM) & tissue] = 2
    medulla = (np.abs(x) < 12) & (y > -50)
    seeds[brain & (z < _CEREBELLUM_BELOW_Z) & ~medulla & (seeds == 0)] = 3
    seeds[_balls(axes, _SEEDS["cerebellum"], _SEED_RADIUS_MM) & tissue] = 3
    smooth = ndi.gaussian_filter(t1, 0.5)
    region = seeds
    for level in _LEVELS:  # bright white matter first, the dark tentorial gap and fourth ventricle last
        region = _geodesic_partition(region, brain & (smooth > level))
    region = _geodesic_partition(region, brain)

    # Deep grey nuclei versus cortex: grow through cerebral voxels with P_gm >= _NUCLEUS_MIN_GM.
    cerebral_grey = grey & (region == 1)
    greyish = tissue & (region == 1) & (gm >= _NUCLEUS_MIN_GM)
    core = np.zeros(shape, dtype=bool)
    core[tuple(slice(*np.searchsorted(a, [lo, hi])) for a, (lo, hi) in zip(axes, _DEEP_CORE_MM))] = True
    near_surface = ndi.binary_dilation(~brain | (csf_class & ~ventricles), _CROSS, iterations=2)
    nuclei_seeds = np.zeros(shape, dtype=np.int8)
    nucleus_ids = []
    for center, left_id, right_id in _NUCLEI.values():
        for side, label_id in ((-1, left_id), (1, right_id)):
            nucleus_ids.append(label_id)
            ball = _balls(axes, [(side * abs(center[0]), center[1], center[2])], _NUCLEUS_SEED_RADIUS_MM)
            nuclei_seeds[ball & greyish] = len(nucleus_ids)
    nuclei_seeds[cerebral_grey & near_surface & ~core & (nuclei_seeds == 0)] = len(nucleus_ids) + 1  # cortex
    deep = _geodesic_partition(nuclei_seeds, greyish)

    right = x >= 0
    labels = np.zeros(shape, dtype=np.uint8)

    def put(mask, left_id, right_id=None):
        labels[mask & ~right] = left_id
        labels[mask & right] = left_id if right_id is None else right_id

    put(csf_class, CSF)
    put(ventricles, LEFT_LATERAL_VENTRICLE, RIGHT_LATERAL_VENTRICLE)
    put(white & (region == 1), LEFT_CEREBRAL_WHITE_MATTER, RIGHT_CEREBRAL_WHITE_MATTER)
    put(cerebral_grey, LEFT_CEREBRAL_CORTEX, RIGHT_CEREBRAL_CORTEX)
    for code, label_id in enumerate(nucleus_ids, start=1):
        labels[greyish & (deep == code)] = label_id
    put(tissue & (region == 2), BRAINSTEM)
    put(grey & (region == 3), LEFT_CEREBELLUM_CORTEX, RIGHT_CEREBELLUM_CORTEX)
    put(white & (region == 3), LEFT_CEREBELLUM_WHITE_MATTER, RIGHT_CEREBELLUM_WHITE_MATTER)
    return t1, labels, affine


def _grid(spacing: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and RAS affine of the output grid: ``FOV_MM`` around ``FOV_CENTER_MM`` at ``spacing`` mm."""
    shape = tuple(int(math.ceil(f / spacing - 1e-6)) for f in FOV_MM)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [round(c - (n - 1) * spacing / 2) for c, n in zip(FOV_CENTER_MM, shape)]  # 1 mm: template grid
    return shape, affine


def _world_points(shape, affine: np.ndarray) -> torch.Tensor:
    """World coordinates (mm) of every voxel centre, ``[X, Y, Z, 3]`` float32 (the affine must be diagonal)."""
    axes = [torch.arange(n, dtype=torch.float64) * affine[i, i] + affine[i, 3] for i, n in enumerate(shape)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).float()


def _apply(matrix: np.ndarray, offset: np.ndarray, points: torch.Tensor) -> torch.Tensor:
    """``matrix @ p + offset`` for every point of ``points`` ``[..., 3]`` (one matrix product)."""
    flat = torch.addmm(
        torch.as_tensor(offset, dtype=torch.float32),
        points.reshape(-1, 3),
        torch.as_tensor(np.ascontiguousarray(matrix.T), dtype=torch.float32),
    )
    return flat.reshape(points.shape)


def _normalized(points: torch.Tensor, shape, affine: np.ndarray) -> torch.Tensor:
    """``grid_sample`` coordinates (align_corners=True, axes reversed) of world ``points`` ``[..., 3]`` in a grid."""
    inverse = np.linalg.inv(affine)
    size = np.array([max(n - 1, 1) for n in shape], dtype=np.float64)
    matrix = (2 * inverse[:3, :3] / size[:, None])[::-1]
    offset = (2 * inverse[:3, 3] / size - 1)[::-1]
    return _apply(matrix, offset.copy(), points)


def _sample(volume: torch.Tensor, grid: torch.Tensor, mode: str) -> torch.Tensor:
    """Sample ``volume`` ``[X, Y, Z]`` (or ``[C, X, Y, Z]``) at normalised ``grid`` ``[..., 3]``; zeros outside."""
    channels = volume if volume.ndim == 4 else volume[None]
    out = F.grid_sample(channels[None], grid[None], mode=mode, padding_mode="zeros", align_corners=True)[0]
    return out if volume.ndim == 4 else out[0]


def _random_affine(rng: np.random.Generator, max_rotation_deg, scale_range, max_shear, max_translation_mm):
    """A random 4x4 affine about ``FOV_CENTER_MM``: rotations, per-axis scaling, shear, translation."""
    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rotation = rotation @ r
    shear = np.eye(3)
    shear[np.triu_indices(3, 1)] = rng.uniform(-max_shear, max_shear, 3)
    linear = rotation @ shear @ np.diag(rng.uniform(*scale_range, 3))
    center = np.asarray(FOV_CENTER_MM)
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = center - linear @ center + rng.uniform(-max_translation_mm, max_translation_mm, 3)
    return out


def random_deformation(
    rng: np.random.Generator,
    shape,
    affine: np.ndarray,
    max_rotation_deg: float = 10.0,
    scale_range: tuple[float, float] = (0.92, 1.06),
    max_shear: float = 0.04,
    max_translation_mm: float = 4.0,
    velocity_std_mm: float = 3.0,
    control_spacing_mm: float = 40.0,
    working_spacing_mm: float = 4.0,
    squaring_steps: int = 6,
) -> torch.Tensor:
    """A random smooth diffeomorphism sampled at the voxels of a grid: ``[X, Y, Z, 3]`` template points (mm).

    Voxel ``p`` (world mm via ``affine``) of the new subject shows the template at ``phi(B p)``: ``B`` a random
    affine about ``FOV_CENTER_MM``, ``phi = exp(v)`` with ``v`` a stationary velocity field, ``N(0,
    velocity_std_mm)`` per component on a control grid of ``control_spacing_mm`` over ``FOV_MM``, cubic-spline
    upsampled to ``working_spacing_mm`` and integrated by ``squaring_steps`` scalings and squarings (so it does not
    fold). All random numbers come from ``rng`` and are drawn in mm over the fixed field of view, so one seed gives
    the same anatomy at every output spacing.
    """
    linear = _random_affine(rng, max_rotation_deg, scale_range, max_shear, max_translation_mm)
    control_shape = tuple(int(math.ceil(f / control_spacing_mm)) + 1 for f in FOV_MM)
    velocity = rng.normal(0.0, velocity_std_mm, (3, *control_shape))
    work_shape = tuple(int(math.ceil(f / working_spacing_mm)) + 1 for f in FOV_MM)
    zoom = [w / c for w, c in zip(work_shape, control_shape)]
    velocity = np.stack([ndi.zoom(v, zoom, order=3, mode="nearest", grid_mode=False) for v in velocity])
    velocity = torch.as_tensor(velocity[(slice(None),) + tuple(slice(0, n) for n in work_shape)], dtype=torch.float32)
    work_affine = np.diag([f / (n - 1) for f, n in zip(FOV_MM, work_shape)] + [1.0])
    work_affine[:3, 3] = [c - f / 2 for c, f in zip(FOV_CENTER_MM, FOV_MM)]
    points = _world_points(work_shape, work_affine)

    def at(field: torch.Tensor, where: torch.Tensor) -> torch.Tensor:  # field [3, ...] sampled at world points
        grid = _normalized(where, work_shape, work_affine)[None]
        return F.grid_sample(field[None], grid, mode="bilinear", padding_mode="border", align_corners=True)[0]

    displacement = velocity / 2**squaring_steps  # [3, X, Y, Z] mm
    for _ in range(squaring_steps):  # u <- u + u o (id + u)
        displacement = displacement + at(displacement, points + displacement.permute(1, 2, 3, 0))
    moved = _apply(linear[:3, :3], linear[:3, 3], _world_points(shape, affine))
    return moved + at(displacement, moved).permute(1, 2, 3, 0)


def _jacobian_determinant(points: torch.Tensor, spacing: float) -> torch.Tensor:
    """Determinant of the Jacobian of a sampled map ``[X, Y, Z, 3]`` (central differences, interior voxels)."""
    grads = torch.gradient(points.double(), spacing=spacing, dim=(0, 1, 2))
    jac = torch.stack(grads, dim=-1)[1:-1, 1:-1, 1:-1]  # [..., component, derivative axis]
    return torch.linalg.det(jac)


def _subject(source: dict, rng: np.random.Generator | None, shape, affine: np.ndarray) -> dict[str, np.ndarray]:
    """T1 (float32), labels (uint8) and mask (uint8) of one subject on the output grid (``rng=None``: template)."""
    points = _world_points(shape, affine) if rng is None else random_deformation(rng, shape, affine)
    grid = _normalized(points, source["shape"], source["affine"])
    t1 = _sample(source["t1"], grid, "bilinear").clamp_(0, 1)
    labels = _sample(source["labels"], grid, "nearest").round_().to(torch.uint8)
    return {"t1": t1.numpy(), "labels": labels.numpy(), "mask": (labels > 0).to(torch.uint8).numpy()}


def _template_source(spacing: float) -> dict:
    """The template's T1 (blurred against aliasing when ``spacing`` > 1) and labels as tensors, with their grid."""
    t1, labels, affine = mni152_labels()
    if spacing > 1:
        t1 = ndi.gaussian_filter(t1, math.sqrt(spacing**2 - 1) / (2 * math.sqrt(2 * math.log(2))))
    return {
        "t1": torch.from_numpy(np.ascontiguousarray(t1, dtype=np.float32)),
        "labels": torch.from_numpy(labels.astype(np.float32)),
        "shape": labels.shape,
        "affine": affine,
    }


def _write_json(data: dict, path: Path) -> None:
    """Write JSON atomically (``atomic_io.write_atomic``: temporary file, fsync, rename; mode from the umask)."""
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"))


def prepare_demo(
    out_dir: str | Path,
    n_train: int = 4,
    n_val: int = 2,
    spacing: float = 1.0,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a demo dataset (label maps, healthy T1w, brain masks) and its ``datalist.json``; return the JSON path.

    Training subject 0 is the MNI152 template; the other training subjects and all validation subjects are random
    diffeomorphic deformations of it (held out: a validation subject never equals a training one). Layout:
    ``out_dir/{training,validation}/sub-NNN/{t1,labels,mask}.nii.gz``, paths in the datalist relative to it.

    Args:
        out_dir: output folder; must be empty or absent unless ``overwrite`` (then files are replaced, none deleted).
        n_train, n_val: numbers of training and validation subjects (>= 0, at least one in all).
        spacing: voxel size in mm (1 to 8); e.g. 2 for fast CPU runs. The field of view stays ``FOV_MM``.
        seed: non-negative seed; subject ``i`` of a split depends only on ``(seed, split, i)``.
        overwrite: allow writing into a non-empty ``out_dir``.
    """
    out = Path(out_dir)
    for name, value in (("n_train", n_train), ("n_val", n_val), ("seed", seed)):
        if isinstance(value, bool) or int(value) != value or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")
    n_train, n_val, seed = int(n_train), int(n_val), int(seed)
    if n_train + n_val < 1:
        raise ValueError(f"at least one subject is needed, got n_train={n_train}, n_val={n_val}.")
    if not 1.0 <= float(spacing) <= 8.0:
        raise ValueError(f"spacing must be between 1 and 8 mm (the template is 1 mm), got {spacing!r}.")
    spacing = float(spacing)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out_dir {out} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"out_dir {out} is not empty; pass --overwrite (overwrite=True in Python) to write into it (files are "
            f"replaced)."
        )

    start = time.perf_counter()
    source = _template_source(spacing)
    shape, affine = _grid(spacing)
    sections = {"training": [], "validation": []}
    plan = [("training", 0, i) for i in range(n_train)] + [("validation", 1, i) for i in range(n_val)]
    for section, split, index in plan:
        rng = None if (split, index) == (0, 0) else np.random.default_rng([seed, split, index])
        volumes = _subject(source, rng, shape, affine)
        folder = out / section / f"sub-{index:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        entry = {"subject": f"{section}-{index:03d}"}
        for key, name, dtype in (("t1", "t1", np.float32), ("label", "labels", np.uint8), ("mask", "mask", np.uint8)):
            save_volume(volumes[name], affine, folder / f"{name}.nii.gz", dtype)
            entry[key] = f"{section}/sub-{index:03d}/{name}.nii.gz"
        sections[section].append(entry)

    datalist = {
        "name": "UNA demo: MNI152 2009a symmetric template and random deformations",
        "description": "Anatomy label maps (FreeSurfer ids), healthy T1w targets and brain masks built offline from "
        "the ICBM 2009a nonlinear symmetric template and tissue maps shipped in nilearn; training subject 0 is the "
        "template, the others random diffeomorphic deformations. See una_bundle/docs/demo_data.md.",
        "reference": "Fonov et al., NeuroImage 2011 and 2009 (ICBM 2009a nonlinear symmetric template)",
        "licence": "MNI ICBM 2009 template: Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, "
        "Montreal Neurological Institute, McGill University; use, copy, modify and distribute with this notice "
        "(see una_bundle/docs/demo_data.md).",
        "tensorImageSize": "3D",
        "spacing": [spacing] * 3,
        "shape": list(shape),
        "seed": seed,
        "labels": {str(v): k for k, v in sorted(LABELS.items(), key=lambda item: item[1])},
        "numTraining": n_train,
        "numValidation": n_val,
        "seconds": round(time.perf_counter() - start, 2),
        "training": sections["training"],
        "validation": sections["validation"],
    }
    path = out / "datalist.json"
    _write_json(datalist, path)
    return path
