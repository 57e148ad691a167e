"""Calibrate the anomaly threshold on cases with known answers, with the false-positive volume on healthy brains.

The cases are a *calibration* set: ``benchmarks/heldout_set.py --seed 9002`` builds one of the held-out set's design
(held-out deformations of MNI152, lesion generators unlike the training one, T1w / T1w with bias and noise / T2-like
cases and lesion-free brains) from other seeds than the held-out set (9001), so the threshold chosen here is not
fitted to the cases it is reported on. Inference runs once (the shipped pipeline, ``run_inference``) and writes the
continuous maps ``NAME_anomaly.nii.gz``; each threshold of the sweep is then applied here exactly as inference
applies it (``anomaly_scoring.anomaly_mask``: inside the brain, components below ``min_lesion_mm3`` dropped).

Each threshold is tried alone and with hysteresis seeds (``--seeds``: a component of ``map > threshold`` is kept only if
it exceeds the seed somewhere; ``head_seed_threshold`` in ``configs/inference.yaml``). Prints, per setting, the mean
anomaly Dice over the lesion cases (all, and per kind) and the mean false-positive
volume (mL) on the lesion-free brains and outside the lesions (``evaluation.anomaly_volumes``); the chosen threshold
is the one with the best mean Dice among those whose mean false-positive volume on healthy brains is at most
``--max_fp_ml`` (5 mL: issue "A shipped model that does the job"), or the least false-positive one if none is.

    python benchmarks/heldout_set.py --out_dir outputs/calibration_set --seed 9002 --n_per_kind 2
    python benchmarks/calibrate_threshold.py --set_dir outputs/calibration_set --output_dir outputs/calibration
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from una_bundle.scripts.data.nifti_io import load_volume
from una_bundle.scripts.scoring.anomaly_scoring import anomaly_mask
from una_bundle.scripts.scoring.metrics import dice
from una_bundle.scripts.workflows.evaluation import anomaly_volumes, load_cases
from una_bundle.scripts.workflows.inference import run_inference

DEFAULT_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_SEEDS = (0.8, 0.85, 0.9, 0.93, 0.95, 0.97)


def predict(cases: list[dict], folder: Path, checkpoint: str | None, overwrite: bool) -> None:
    """Inference on every case into ``folder`` (one call per modality, the model loaded once per call)."""
    for modality in dict.fromkeys(c["modality"] for c in cases):
        group = [c for c in cases if c["modality"] == modality]
        todo = [c for c in group if overwrite or not (folder / f"{c['name']}_anomaly.nii.gz").is_file()]
        if todo:
            run_inference(
                [c["image"] for c in todo],
                folder,
                modality=modality,
                mask=[c.get("mask") for c in todo],
                overwrite=overwrite,
                qc=False,
                **({"checkpoint": checkpoint} if checkpoint else {}),
            )


def sweep(cases: list[dict], folder: Path, thresholds, min_lesion_mm3: float, seeds=()) -> list[dict]:
    """One row per (threshold, seed): mean Dice (all lesion cases and per kind), mean false positives (healthy,
    lesion cases); seed ``None`` is the plain threshold, seeds at or below the threshold are skipped."""
    loaded = []
    for case in cases:
        amap, affine = load_volume(folder / f"{case['name']}_anomaly.nii.gz", f"case {case['name']}: anomaly map")
        brain, _ = load_volume(case["mask"], f"case {case['name']}: mask")
        lesion = load_volume(case["lesion"], f"case {case['name']}: lesion")[0] > 0 if case.get("lesion") else None
        voxel_mm3 = abs(float(np.linalg.det(np.asarray(affine)[:3, :3])))
        loaded.append((case, amap, brain > 0, lesion, affine, int(np.ceil(min_lesion_mm3 / voxel_mm3 - 1e-6))))
    rows = []
    settings = [(t, None) for t in thresholds] + [(t, s) for t in thresholds for s in seeds if s > t]
    for threshold, seed in settings:
        dices: dict[str, list[float]] = {}
        fp_healthy, fp_lesion = [], []
        for case, amap, brain, lesion, affine, min_voxels in loaded:
            mask = anomaly_mask(amap, threshold, min_voxels, brain, seed)
            _, fp = anomaly_volumes(mask, lesion, affine)
            if lesion is None:
                fp_healthy.append(fp)
            else:
                fp_lesion.append(fp)
                dices.setdefault(case.get("kind", "all"), []).append(float(dice(mask, lesion)))
        row = {"threshold": float(threshold), "seed": seed}
        row["dice"] = float(np.mean([d for v in dices.values() for d in v])) if dices else float("nan")
        row.update({f"dice_{kind}": float(np.mean(v)) for kind, v in dices.items()})
        row["fp_healthy_ml"] = float(np.mean(fp_healthy)) if fp_healthy else float("nan")
        row["fp_lesion_cases_ml"] = float(np.mean(fp_lesion)) if fp_lesion else float("nan")
        rows.append(row)
    return rows


def choose(rows: list[dict], max_fp_ml: float) -> dict:
    """The best-Dice row whose healthy false positives are within ``max_fp_ml``, else the least false-positive one."""
    allowed = [r for r in rows if not r["fp_healthy_ml"] > max_fp_ml]
    if allowed:
        return max(allowed, key=lambda r: (round(float(np.nan_to_num(r["dice"], nan=-1.0)), 3), -r["fp_healthy_ml"]))
    return min(rows, key=lambda r: (r["fp_healthy_ml"], r["threshold"]))


def table(rows: list[dict]) -> str:
    kinds = sorted({k for r in rows for k in r if k.startswith("dice_")})
    head = ["threshold", "seed", "Dice (lesion cases)"] + [k[5:] for k in kinds]
    head += ["FP mL healthy", "FP mL lesion cases"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        seed = "-" if r["seed"] is None else f"{r['seed']:.2f}"
        values = [f"{r['threshold']:.2f}", seed, f"{r['dice']:.3f}"] + [f"{r.get(k, float('nan')):.3f}" for k in kinds]
        values += [f"{r['fp_healthy_ml']:.1f}", f"{r['fp_lesion_cases_ml']:.1f}"]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set_dir", required=True, help="a set built by heldout_set.py (with another --seed)")
    parser.add_argument("--output_dir", default="outputs/calibration")
    parser.add_argument("--checkpoint", help="weights (default: the bundle's models/model.pt)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(DEFAULT_THRESHOLDS))
    parser.add_argument("--seeds", type=float, nargs="*", default=list(DEFAULT_SEEDS), help="hysteresis seeds")
    parser.add_argument("--max_fp_ml", type=float, default=5.0, help="mean false positives allowed on healthy brains")
    parser.add_argument("--min_lesion_mm3", type=float, default=27.0, help="as inference.yaml's min_lesion_mm3")
    parser.add_argument("--overwrite", action="store_true", help="re-run inference even where maps exist")
    args = parser.parse_args(argv)
    set_dir = Path(args.set_dir)
    manifest = json.loads((set_dir / "heldout.json").read_text()) if (set_dir / "heldout.json").is_file() else {}
    if manifest.get("seed") == 9001:
        print("calibrate_threshold: error: this is the held-out set (seed 9001); build a calibration set with "
              "another --seed.", file=sys.stderr)
        return 2
    cases = load_cases(set_dir / "cases.json")
    folder = Path(args.output_dir) / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    predict(cases, folder, args.checkpoint, args.overwrite)
    rows = sweep(cases, folder, args.thresholds, args.min_lesion_mm3, args.seeds)
    best = choose(rows, args.max_fp_ml)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"calibration set: {set_dir} (seed {manifest.get('seed', '?')}, {len(cases)} cases)\n")
    print(table(rows))
    print(f"chosen threshold: {best['threshold']:.2f}, seed {best['seed']} (mean Dice {best['dice']:.3f}, "
          f"{best['fp_healthy_ml']:.1f} mL false positives on healthy brains; limit {args.max_fp_ml} mL)")
    (Path(args.output_dir) / "calibration.json").write_text(json.dumps({"rows": rows, "chosen": best}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
