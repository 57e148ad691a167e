"""A demo dataset built offline from the MNI152 2009a (symmetric) template and tissue maps shipped inside nilearn.

UNA trains on synthetic images drawn from anatomy label maps, with a healthy T1w as the target. This module makes
such subjects without downloading anything: the 1 mm ICBM 2009a symmetric T1 template (skull-stripped, intensities
in [0, 1]) and its grey/white-matter probability maps (``nilearn.datasets.load_mni152_template`` /
``load_mni152_gm_template`` / ``load_mni152_wm_template``, which read files inside the nilearn package), a label
map derived from them by fixed rules (:mod:`.mni152`), and random smooth deformations of all three for the
other subjects.

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

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from .atomic_io import write_atomic
from .labels import LABELS
from .mni152 import mni152_labels
from .nifti_io import save_volume

__all__ = [
    "FOV_MM",
    "FOV_CENTER_MM",
    "random_deformation",
    "prepare_demo",
]

#: Output field of view (mm) and its centre (MNI mm): the template brain's bounding box plus about 20 mm.
FOV_MM = (184.0, 224.0, 200.0)
FOV_CENTER_MM = (0.0, -17.0, 5.0)


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
