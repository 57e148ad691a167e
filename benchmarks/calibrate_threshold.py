"""Calibrate the anomaly threshold: Dice against simulated lesions for a sweep of fixed thresholds and for Otsu.

Cases: the MNI152 2009 T1 template shipped in nilearn (skull-stripped, the healthy truth), resampled to ``--spacing``
mm, with ``--n`` fluid anomalies drawn by ``FluidAnomaly`` and encoded as T1 lesions by ``RandEncodeAnomaly`` (the
training generator, seeded), plus the template itself as a healthy case (false positives). Inference runs with the
given checkpoint (``run_inference``: the shipped pipeline), and the written continuous maps ``NAME_anomaly.nii.gz``
are thresholded here exactly as inference does (``anomaly_scoring.anomaly_mask``, components below 27 mm^3 dropped,
inside the brain). Prints a markdown table (mean Dice over the lesion cases, false-positive volume on the healthy
case) and the best fixed threshold; see docs/inference.md for how the default was chosen.

    .venv/bin/python benchmarks/calibrate_threshold.py --checkpoint una_bundle/models/model.pt --spacing 2
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor

from una_bundle.scripts.generator.anomaly_encoding import RandEncodeAnomaly
from una_bundle.tools.anomaly_gallery import mni152_brain
from una_bundle.scripts.scoring.anomaly_scoring import DEFAULT_MIN_COMPONENT_MM3, anomaly_mask, anomaly_threshold
from una_bundle.scripts.generator.fluid_anomaly import FluidAnomaly
from una_bundle.scripts.workflows.inference import run_inference
from una_bundle.scripts.scoring.metrics import dice
from una_bundle.scripts.data.nifti_io import load_volume, save_volume

THRESHOLDS = (0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3)


def make_cases(folder: Path, n: int, spacing: int, seed: int) -> tuple[list[Path], list[torch.Tensor], torch.Tensor]:
    """Write the healthy template and ``n`` lesioned copies; returns ``(images, lesion masks, brain mask)``."""
    image, brain, affine = mni152_brain()
    if spacing > 1:  # average-pool to a coarser grid (same field of view), as a 2 mm scan would be
        image = F.avg_pool3d(image[None, None], spacing, ceil_mode=True)[0, 0]
        brain = F.avg_pool3d(brain[None, None].float(), spacing, ceil_mode=True)[0, 0] > 0.5
        pool = np.diag([spacing, spacing, spacing, 1.0])
        pool[:3, 3] = (spacing - 1) / 2  # a coarse voxel's centre is the centre of the fine voxels it averages
        affine = affine @ pool
    image = image * brain
    img = MetaTensor(image[None], affine=torch.as_tensor(affine))
    anomaly = FluidAnomaly().set_random_state(seed)
    encode = RandEncodeAnomaly(modality="T1").set_random_state(seed + 1)
    paths = [save_volume(image, affine, folder / "healthy.nii.gz")]
    lesions = [torch.zeros_like(brain)]
    for i in range(n):
        prob, mask = anomaly(img, brain[None])
        encoded = encode(img, prob)[0] * brain
        paths.append(save_volume(encoded, affine, folder / f"lesion{i}.nii.gz"))
        lesions.append(mask[0].as_tensor() > 0)
    return paths, lesions, brain


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="una_bundle/models/model.pt")
    parser.add_argument("--spacing", type=int, default=2, help="grid of the cases and of inference, mm (1 or 2)")
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--n", type=int, default=6, help="number of lesion cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "in").mkdir()
        paths, lesions, brain = make_cases(folder / "in", args.n, args.spacing, args.seed)
        run_inference(
            paths,
            folder / "out",
            checkpoint=args.checkpoint,
            spacing=[float(args.spacing)] * 3,
            levels=args.levels,
            features=args.features,
            device=args.device,
            quiet=True,
        )
        maps = [load_volume(folder / "out" / f"{p.name[:-7]}_anomaly.nii.gz")[0] for p in paths]
    min_voxels = int(round(DEFAULT_MIN_COMPONENT_MM3 / args.spacing**3))
    voxel_ml = args.spacing**3 / 1000.0
    rows = []
    for threshold in THRESHOLDS:
        masks = [anomaly_mask(m, threshold, min_voxels, brain) for m in maps]
        rows.append((f"fixed {threshold:g}", masks))
    otsu = [anomaly_mask(m, anomaly_threshold(m, brain, "otsu"), min_voxels, brain) for m in maps]
    rows.append(("otsu (per image)", otsu))
    print(
        f"# Anomaly threshold calibration ({platform.node()}, {platform.processor() or platform.machine()}, torch "
        f"{torch.__version__})\n"
    )
    print(
        f"checkpoint {args.checkpoint}, levels {args.levels}, features {args.features}, {args.spacing} mm, "
        f"{args.n} simulated T1 lesions (seed {args.seed}) on the MNI152 template, + the healthy template\n"
    )
    print("| threshold | Dice mean | Dice min | Dice max | false positives on the healthy brain (mL) |")
    print("|---|---|---|---|---|")
    best = None
    for label, masks in rows:
        scores = np.array([float(dice(m, les)) for m, les in zip(masks[1:], lesions[1:])])
        fp = float(masks[0].sum()) * voxel_ml
        print(f"| {label} | {scores.mean():.3f} | {scores.min():.3f} | {scores.max():.3f} | {fp:.1f} |")
        if label.startswith("fixed") and (best is None or scores.mean() > best[1]):
            best = (label, scores.mean())
    lesion_ml = [float(les.sum()) * voxel_ml for les in lesions[1:]]
    print(f"\nlesion volumes (mL): {', '.join(f'{v:.1f}' for v in lesion_ml)}")
    print(f"best fixed threshold: {best[0]} (mean Dice {best[1]:.3f}); total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
