"""See the generator: draw N fluid anomalies on a brain image, save them as NIfTI and as one PNG figure.

The figure's first row follows one lesion profile through time (``P(t)`` over the image, from the initial shape
to ``P(T)``, with the final mask's outline); the rows below show several anomalies encoded into the image
(axial and coronal slices through each lesion, outlined).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from monai.data import MetaTensor

from ..scripts.data.atomic_io import write_atomic
from ..scripts.data.bundle_config import BUNDLE_ROOT
from ..scripts.data.labels import TISSUE_LABELS
from ..scripts.data.mni152 import mni152_labels
from ..scripts.data.nifti_io import check_writable, load_volume, save_volume
from ..scripts.generator.anomaly_encoding import RandEncodeAnomaly
from ..scripts.generator.fluid_anomaly import FluidAnomaly

__all__ = ["generate_anomalies"]


def _slice(volume: torch.Tensor, axis: int, index: int) -> np.ndarray:
    return np.rot90(volume.select(axis, index).cpu().numpy())


def _figure(image, frames, samples, dt, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_cols = max(6, len(samples))
    fig, axes = plt.subplots(3, n_cols, figsize=(2.2 * n_cols, 7.2), facecolor="black")
    for ax in axes.flat:
        ax.axis("off")
    final_mask = samples[0][1]
    z = int(final_mask.nonzero()[:, 2].float().mean()) if final_mask.any() else image.shape[2] // 2
    picks = np.unique(np.linspace(0, len(frames) - 1, min(6, len(frames))).round().astype(int))
    vmax = float(image.max())
    p_max = max(float(f.max()) for f in frames)
    start = _slice(frames[0], 2, z) > 0
    for col, k in enumerate(picks):
        ax = axes[0, col]
        ax.imshow(_slice(image, 2, z), cmap="gray", vmax=vmax)
        p = _slice(frames[k], 2, z)
        ax.imshow(np.ma.masked_less(p, 0.02 * p_max), cmap="inferno", vmin=0, vmax=p_max, alpha=0.9)
        ax.contour(start, levels=[0.5], colors="lime", linewidths=0.7)
        ax.set_title(f"P(t={k * dt:.1f})", color="white", fontsize=9)
    axes[0, 0].text(2, 12, "green: initial outline", color="lime", fontsize=7)
    for col, (encoded, mask) in enumerate(samples):
        center = mask.nonzero().float().mean(0).long() if mask.any() else torch.tensor(image.shape) // 2
        for row, axis in ((1, 2), (2, 1)):
            ax = axes[row, col]
            ax.imshow(_slice(encoded, axis, int(center[axis])), cmap="gray", vmax=float(encoded.max()))
            ax.contour(_slice(mask, axis, int(center[axis])), levels=[0.5], colors="red", linewidths=0.6)
        axes[1, col].set_title(f"anomaly {col}", color="white", fontsize=9)
    fig.suptitle(
        "Fluid-driven anomaly randomization — top: one profile advected by a random divergence-free flow; "
        "below: encoded anomalies (axial, coronal)",
        color="white",
        fontsize=10,
    )
    fig.tight_layout()
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, facecolor="black", format="png"))
    finally:
        plt.close(fig)


def _train_config() -> dict:
    return yaml.safe_load((BUNDLE_ROOT / "configs" / "train.yaml").read_text())


def training_lesion_settings() -> dict:
    """The random-shape settings of the training recipe's ``RandFluidAnomalyd``, read from ``configs/train.yaml``."""
    config = _train_config()
    return {
        "percentile_range": config["lesion_percentiles"],
        "percentile_sampling": config["lesion_percentile_sampling"],
        "shape_periods": config["lesion_shape_periods"],
    }


def generate_anomalies(
    output_dir: str = "una_anomalies",
    image: str | None = None,
    brain_mask: str | None = None,
    modality: str = "T1",
    n: int = 6,
    seed: int = 0,
    device: str = "cpu",
    overwrite: bool = False,
    recipe: bool = True,
    **fluid_kwargs,
) -> dict:
    """Draw ``n`` anomalies on a brain image and write, into ``output_dir``, for each ``i``:
    ``anomaly_{i}_prob.nii.gz`` (``P(T)``), ``anomaly_{i}_mask.nii.gz`` and ``anomaly_{i}_image.nii.gz`` (the
    image with the anomaly encoded), plus ``fluid_anomalies.png`` and ``anomalies.json`` (parameters, timings).

    Args:
        output_dir: folder for the outputs (created; existing outputs are kept unless ``overwrite``).
        image: a skull-stripped brain NIfTI; default: the MNI152 2009 T1 template shipped in nilearn.
        brain_mask: where lesions may grow; default: for the template, its tissue (``TISSUE_LABELS`` of its label
            map, as training confines lesions; the whole brain with ``recipe=False``), else ``image > 0``.
        modality: the image's modality, for the lesion intensity direction (T1, T2, FLAIR, CT).
        n: number of anomalies (>= 1).
        seed: random seed (same seed, same anomalies).
        device: torch device, e.g. ``cuda``.
        overwrite: replace existing outputs.
        recipe: start from the training recipe's lesion settings (``configs/train.yaml``: ``lesion_percentiles``,
            ``lesion_percentile_sampling``, ``lesion_shape_periods``: one blob to many foci, ~0.5-200 mL; the
            contrast ``lesion_contrast_range``), else from :class:`FluidAnomaly`'s and :class:`RandEncodeAnomaly`'s
            defaults (the reference's).
        fluid_kwargs: parameters of :class:`FluidAnomaly` (e.g. ``diffusion=True``, ``nt_range=[10, 10]``); they win
            over the recipe.
    """
    if recipe:
        fluid_kwargs = {**training_lesion_settings(), **fluid_kwargs}
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    out = Path(output_dir)
    names = [f"anomaly_{i}_{kind}.nii.gz" for i in range(int(n)) for kind in ("prob", "mask", "image")]
    check_writable([out / name for name in names] + [out / "fluid_anomalies.png", out / "anomalies.json"], overwrite)
    if image is None:
        t1, labels, affine = mni152_labels()
        volume = torch.as_tensor(t1)
        brain = torch.as_tensor(np.isin(labels, TISSUE_LABELS) if recipe else labels > 0)
        source = "MNI152 2009 T1 template (nilearn), lesions in " + ("its tissue" if recipe else "its brain")
    else:
        volume, affine = load_volume(image, "image")
        brain = load_volume(brain_mask, "brain mask")[0] > 0 if brain_mask else volume > 0
        if tuple(brain.shape) != tuple(volume.shape):
            raise ValueError(f"brain mask {brain_mask} has shape {tuple(brain.shape)}, image {tuple(volume.shape)}.")
        source = str(image)
    img = MetaTensor(volume[None].to(device), affine=torch.as_tensor(affine))
    brain = brain[None].to(device)
    anomaly = FluidAnomaly(**fluid_kwargs).set_random_state(seed)
    contrast = {"a_range": _train_config()["lesion_contrast_range"]} if recipe else {}
    encode = RandEncodeAnomaly(modality=modality, **contrast).set_random_state(seed + 1)

    samples, frames, records = [], [], []
    for i in range(int(n)):
        start = time.perf_counter()
        if i == 0:
            prob_map, mask, frames = anomaly(img, brain, return_frames=True)
        else:
            prob_map, mask = anomaly(img, brain)
        seconds = time.perf_counter() - start
        encoded = encode(img, prob_map)
        for kind, data, dtype in (
            ("prob", prob_map, np.float32),
            ("mask", mask, np.uint8),
            ("image", encoded, np.float32),
        ):
            save_volume(data[0], affine, out / f"anomaly_{i}_{kind}.nii.gz", dtype)
        samples.append((encoded[0].cpu(), mask[0].cpu()))
        voxel_ml = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0
        records.append(
            {
                "index": i,
                "seconds": round(seconds, 4),
                "lesion_voxels": int(mask.sum()),
                "lesion_ml": round(float(mask.sum()) * voxel_ml, 2),
            }
        )
    _figure(volume, [f[0].cpu() for f in frames], samples, anomaly.dt, out / "fluid_anomalies.png")
    summary = {"image": source, "modality": modality, "seed": seed, "parameters": fluid_kwargs, "anomalies": records}
    (out / "anomalies.json").write_text(json.dumps(summary, indent=2))
    return summary
