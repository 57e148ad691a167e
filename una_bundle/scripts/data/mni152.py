"""The MNI152 2009a (symmetric) template and tissue maps shipped inside nilearn (no download), and the anatomy label
map the demo data derive from them.

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
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from scipy import ndimage as ndi

from .labels import (
    BRAINSTEM,
    CSF,
    LEFT_CAUDATE,
    LEFT_CEREBELLUM_CORTEX,
    LEFT_CEREBELLUM_WHITE_MATTER,
    LEFT_CEREBRAL_CORTEX,
    LEFT_CEREBRAL_WHITE_MATTER,
    LEFT_LATERAL_VENTRICLE,
    LEFT_PUTAMEN,
    LEFT_THALAMUS,
    RIGHT_CAUDATE,
    RIGHT_CEREBELLUM_CORTEX,
    RIGHT_CEREBELLUM_WHITE_MATTER,
    RIGHT_CEREBRAL_CORTEX,
    RIGHT_CEREBRAL_WHITE_MATTER,
    RIGHT_LATERAL_VENTRICLE,
    RIGHT_PUTAMEN,
    RIGHT_THALAMUS,
)

__all__ = ["mni152_brain", "mni152_labels"]


def mni152_brain() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The 1 mm MNI152 2009 T1 template and brain mask shipped inside nilearn (no download)."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    template = load_mni152_template(resolution=1)
    mask = load_mni152_brain_mask(resolution=1)
    image = torch.as_tensor(np.asarray(template.get_fdata(), dtype=np.float32))
    return image, torch.as_tensor(np.asarray(mask.get_fdata()) > 0), np.asarray(template.affine)


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
