"""The threshold sweep of benchmarks/calibrate_threshold.py gives, for every (threshold, seed), the Dice and
false-positive volumes of the masks inference makes (scoring.anomaly_scoring.anomaly_mask)."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import load_benchmark

from una_bundle.scripts.scoring.anomaly_scoring import anomaly_mask
from una_bundle.scripts.scoring.metrics import dice
from una_bundle.scripts.workflows.evaluation import anomaly_volumes

ct = load_benchmark("calibrate_threshold")


def _write(path: Path, array: np.ndarray, affine: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


def test_sweep_matches_the_masks_inference_makes(tmp_path):
    rng = np.random.default_rng(0)
    shape, affine = (30, 30, 30), np.diag([1.2, 1.2, 1.2, 1.0])
    brain = np.zeros(shape, np.uint8)
    brain[3:-3, 3:-3, 3:-3] = 1
    cases = []
    for k in range(3):
        amap = (0.85 * rng.random(shape) ** 6).astype(np.float32)  # haze with scattered voxels up to 0.85
        lesion = np.zeros(shape, np.uint8)
        if k < 2:
            lesion[8 + k : 16 + k, 10:18, 9:15] = 1
            amap[lesion > 0] = rng.uniform(0.6, 0.96, int(lesion.sum()))
            amap[12 + k, 14, 12] = 0.99  # a confident core
        amap[20:24, 20:23, 5:9] = 0.75  # a moderate blob without a confident core: hysteresis drops it
        name = f"case{k}"
        _write(tmp_path / f"{name}_anomaly.nii.gz", amap, affine)
        case = {
            "name": name,
            "kind": "t1_lesion" if k < 2 else "t1_healthy",
            "mask": _write(tmp_path / f"{name}_mask.nii.gz", brain, affine),
        }
        if k < 2:
            case["lesion"] = _write(tmp_path / f"{name}_lesion.nii.gz", lesion, affine)
        cases.append((case, amap, lesion))
    thresholds, seeds, min_mm3 = (0.5, 0.7), (0.9, 0.95), 27.0
    rows = ct.sweep([c for c, _, _ in cases], tmp_path, thresholds, min_mm3, seeds)
    min_voxels = int(np.ceil(min_mm3 / 1.2**3))
    assert {(r["threshold"], r["seed"]) for r in rows} == {(t, s) for t in thresholds for s in (None,) + seeds}
    for row in rows:
        dices, fp_healthy, fp_lesion = [], [], []
        for case, amap, lesion in cases:
            mask = anomaly_mask(
                torch.from_numpy(amap), row["threshold"], min_voxels, torch.from_numpy(brain), row["seed"]
            )
            has_lesion = "lesion" in case
            _, fp = anomaly_volumes(mask.numpy(), lesion if has_lesion else None, affine)
            if has_lesion:
                dices.append(float(dice(mask, torch.from_numpy(lesion))))
                fp_lesion.append(fp)
            else:
                fp_healthy.append(fp)
        assert row["dice"] == pytest.approx(np.mean(dices), abs=1e-6)
        assert row["fp_healthy_ml"] == pytest.approx(np.mean(fp_healthy), abs=1e-6)
        assert row["fp_lesion_cases_ml"] == pytest.approx(np.mean(fp_lesion), abs=1e-6)
    # the seeds matter here: with 0.95 the moderate blob (0.75) and most haze go, the lesion (peak > 0.95) stays
    plain = next(r for r in rows if r["threshold"] == 0.7 and r["seed"] is None)
    seeded = next(r for r in rows if r["threshold"] == 0.7 and r["seed"] == 0.95)
    assert seeded["fp_healthy_ml"] < plain["fp_healthy_ml"] and seeded["dice"] > 0.5


def test_choose_prefers_dice_within_the_false_positive_limit():
    rows = [
        {"threshold": 0.1, "seed": None, "dice": 0.6, "fp_healthy_ml": 20.0},
        {"threshold": 0.5, "seed": 0.9, "dice": 0.4, "fp_healthy_ml": 4.0},
        {"threshold": 0.9, "seed": None, "dice": 0.2, "fp_healthy_ml": 1.0},
    ]
    assert ct.choose(rows, 5.0)["threshold"] == 0.5
    assert ct.choose(rows, 0.5)["threshold"] == 0.9  # none within: the least false-positive


def test_overrides_are_parsed_as_json_or_strings():
    assert ct.parse_overrides(["head_gate=0.2", "anomaly_source=head", "roi_size=[64, 64, 64]"]) == {
        "head_gate": 0.2,
        "anomaly_source": "head",
        "roi_size": [64, 64, 64],
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        ct.parse_overrides(["head_gate"])
