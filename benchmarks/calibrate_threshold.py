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
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))  # evaluate_heldout beside this file

from evaluate_heldout import parse_overrides  # noqa: E402

from una_bundle.scripts.data.nifti_io import load_volume  # noqa: E402
from una_bundle.scripts.scoring.anomaly_scoring import anomaly_components, keep_components  # noqa: E402
from una_bundle.scripts.workflows.evaluation import FP_MARGIN_VOXELS, _ball, load_cases, predict_cases  # noqa: E402

DEFAULT_THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 0.9)
DEFAULT_SEEDS = (0.9, 0.95, 0.97, 0.98, 0.99, 0.995)


def sweep(cases: list[dict], folder: Path, thresholds, min_lesion_mm3: float, seeds=()) -> list[dict]:
    """One row per (threshold, seed): mean Dice (all lesion cases and per kind), mean false positives (healthy,
    lesion cases); seed ``None`` is the plain threshold, seeds at or below the threshold are skipped. The masks are
    meant to be those of ``anomaly_mask(map, threshold, min_voxels, brain, seed)`` (the same labelling, size and peak
    rules: ``anomaly_components`` / ``keep_components``, labelled once per threshold for all its seeds)."""
    settings = [(t, None) for t in thresholds] + [(t, s) for t in thresholds for s in seeds if s > t]
    found: dict[tuple, dict[str, list[float]]] = {k: {} for k in settings}
    fps: dict[tuple, tuple[list[float], list[float]]] = {k: ([], []) for k in settings}
    for case in cases:
        amap, affine = load_volume(folder / f"{case['name']}_anomaly.nii.gz", f"case {case['name']}: anomaly map")
        amap = np.asarray(amap, dtype=np.float32)
        brain = np.asarray(load_volume(case["mask"], f"case {case['name']}: mask")[0]) > 0
        lesion = None
        if case.get("lesion"):
            lesion = np.asarray(load_volume(case["lesion"], f"case {case['name']}: lesion")[0]) > 0
        voxel_ml = abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0
        min_voxels = int(np.ceil(min_lesion_mm3 / (voxel_ml * 1000.0) - 1e-6))
        near = ndi.binary_dilation(lesion, structure=_ball(FP_MARGIN_VOXELS)) if lesion is not None else None
        for threshold in thresholds:
            labels, sizes, peaks = anomaly_components(amap, threshold, brain)
            inside = np.bincount(labels[lesion], minlength=len(sizes)) if lesion is not None else None
            outside = np.bincount(labels[~near], minlength=len(sizes)) if near is not None else sizes
            for seed in [None] + [s for s in seeds if s > threshold]:
                keep = keep_components(sizes, peaks, min_voxels, seed)
                fp = float(outside[keep].sum()) * voxel_ml
                if lesion is None:
                    fps[(threshold, seed)][0].append(fp)
                else:
                    fps[(threshold, seed)][1].append(fp)
                    total = float(sizes[keep].sum()) + float(lesion.sum())
                    dice = 2.0 * float(inside[keep].sum()) / total if total > 0 else 1.0
                    found[(threshold, seed)].setdefault(case.get("kind", "all"), []).append(dice)
    rows = []
    for threshold, seed in settings:
        dices = found[(threshold, seed)]
        fp_healthy, fp_lesion = fps[(threshold, seed)]
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
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="inference config id, e.g. head_gate=0.2 (give it its own --output_dir: existing maps are reused)",
    )
    args = parser.parse_args(argv)
    set_dir = Path(args.set_dir)
    manifest = json.loads((set_dir / "heldout.json").read_text()) if (set_dir / "heldout.json").is_file() else {}
    if manifest.get("seed") == 9001:
        print(
            "calibrate_threshold: error: this is the held-out set (seed 9001); build a calibration set with "
            "another --seed.",
            file=sys.stderr,
        )
        return 2
    cases = load_cases(set_dir / "cases.json")
    folder = Path(args.output_dir) / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    weights = {"checkpoint": args.checkpoint} if args.checkpoint else {}
    try:
        overrides = parse_overrides(args.override)
    except ValueError as err:
        print(f"calibrate_threshold: error: {err}", file=sys.stderr)
        return 2
    if overrides:
        weights["overrides"] = overrides
    predict_cases(cases, folder, args.overwrite, skip_existing=True, qc=False, **weights)
    rows = sweep(cases, folder, args.thresholds, args.min_lesion_mm3, args.seeds)
    best = choose(rows, args.max_fp_ml)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"calibration set: {set_dir} (seed {manifest.get('seed', '?')}, {len(cases)} cases)\n")
    print(table(rows))
    print(
        f"chosen threshold: {best['threshold']:.2f}, seed {best['seed']} (mean Dice {best['dice']:.3f}, "
        f"{best['fp_healthy_ml']:.1f} mL false positives on healthy brains; limit {args.max_fp_ml} mL)"
    )
    (Path(args.output_dir) / "calibration.json").write_text(json.dumps({"rows": rows, "chosen": best}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
