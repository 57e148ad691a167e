"""Evaluation (scripts/workflows): intensity normalisation, the evaluate command's outputs, modes and errors.

The metrics themselves are tested in test_metrics.py.
"""

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from test_inference import CONV, conv_checkpoint

from una_bundle.scripts.scoring.metrics import brain_l1
from una_bundle.scripts.workflows.evaluation import (
    anomaly_volumes,
    evaluate,
    gain_l1,
    load_cases,
    normalize_intensity,
    run_evaluation,
)
from una_bundle.scripts.workflows.evaluation_report import kind_summary
from una_bundle.tools.cli import main


def test_normalize_intensity_divides_by_the_in_brain_percentile(cube_brain):
    brain = cube_brain
    volume = torch.zeros(16, 16, 16)
    volume[brain] = torch.linspace(10, 200, int(brain.sum()))
    volume[0, 0, 0] = 5000.0  # outside the brain: ignored by the percentile, clipped
    out = normalize_intensity(volume, brain, percentile=100)
    assert float(out[brain].max()) == pytest.approx(1.0)
    assert float(out[brain].min()) == pytest.approx(10 / 200)
    assert float(out[0, 0, 0]) == 1.0
    ct = volume - 100  # negative values: shifted by the in-brain minimum
    assert float(normalize_intensity(ct, brain, percentile=100)[brain].min()) == pytest.approx(0.0)


def _save(array, path, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float32), np.eye(4) if affine is None else affine), str(path))
    return path.name


def _make_cases(folder, brain, n=2):
    """Cases on a 16^3 grid with a perfect model's predictions in ``folder/pred``: healthy == truth; the input is
    the truth with a dark lesion; case 0 has a lesion mask and an anomaly mask overlapping half of it."""
    rng = np.random.default_rng(0)
    brain = brain.numpy()
    pred = folder / "pred"
    pred.mkdir()
    cases = []
    for i in range(n):
        truth = np.where(brain, rng.uniform(0.4, 1.0, brain.shape), 0.0)
        lesion = np.zeros(brain.shape)
        lesion[5:9, 5:9, 5:9] = 1  # 64 voxels
        predicted = np.zeros(brain.shape)
        predicted[5:9, 5:9, 7:11] = 1  # 64 voxels, 32 shared: Dice 0.5
        entry = {"image": _save(truth * (1 - 0.8 * lesion), folder / f"s{i}.nii.gz")}
        entry["truth"] = _save(truth, folder / f"s{i}_t1.nii.gz")
        entry["mask"] = _save(brain, folder / f"s{i}_brain.nii.gz")
        _save(truth, pred / f"s{i}_healthy.nii.gz")
        _save(predicted, pred / f"s{i}_anomaly_mask.nii.gz")
        if i == 0:
            entry["lesion"] = _save(lesion, folder / f"s{i}_lesion.nii.gz")
        cases.append(entry)
    (folder / "cases.json").write_text(json.dumps(cases))
    return folder / "cases.json", cases


def test_evaluate_writes_csv_markdown_and_boxplots(cube_brain, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    cases_file, cases = _make_cases(data, cube_brain)  # relative paths: resolved against the JSON file's folder
    out = tmp_path / "out"
    result = run_evaluation(str(cases_file), str(out), predictions=data / "pred")
    with open(out / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["case"] for r in rows] == ["s0", "s1"]  # names from the image files, as inference names outputs
    assert list(rows[0])[:8] == ["case", "l1", "psnr", "ssim", "dice", "baseline_l1", "baseline_psnr", "baseline_ssim"]
    assert list(rows[0])[8:] == ["l1_gain", "baseline_l1_gain", "l1_lesion", "baseline_l1_lesion", "anomaly_ml"] + [
        "fp_ml",
        "kind",
    ]
    assert float(rows[0]["l1"]) == 0.0 and float(rows[0]["psnr"]) == math.inf
    assert float(rows[0]["ssim"]) == pytest.approx(1.0, abs=1e-5)
    assert float(rows[0]["dice"]) == pytest.approx(0.5)
    assert rows[1]["dice"] == ""  # no lesion mask: no Dice
    # the baseline is the normalised input against the normalised truth, inside the given brain mask
    brain = cube_brain
    truth = torch.as_tensor(nib.load(str(data / "s0_t1.nii.gz")).get_fdata(), dtype=torch.float32)
    image = torch.as_tensor(nib.load(str(data / "s0.nii.gz")).get_fdata(), dtype=torch.float32)
    expected = float(brain_l1(normalize_intensity(image, brain), normalize_intensity(truth, brain), brain))
    assert float(rows[0]["baseline_l1"]) == pytest.approx(expected, rel=1e-5)
    assert expected > 0.01 and float(rows[0]["baseline_ssim"]) < 0.99
    markdown = (out / "metrics.md").read_text()
    assert "| s0 |" in markdown and "| s1 |" in markdown and "mean ± std" in markdown
    assert "SSIM (baseline)" in markdown
    assert (out / "metrics_boxplots.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["summary"]["dice"]["n"] == 1 and result["summary"]["l1"]["mean"] == 0.0
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_evaluation_with_inference_shows_progress_on_a_terminal(cube_brain, tmp_path, monkeypatch):
    """What una-bundle demo runs: the inference lines (cases done, time left) reach a terminal (issue 11, item 18)."""
    import io
    import sys

    from test_inference import _Terminal

    data = tmp_path / "data"
    data.mkdir()
    cases_file, _ = _make_cases(data, cube_brain, n=2)
    settings = {"checkpoint": conv_checkpoint(tmp_path / "copy.pt", (1.0, 0.0)), "spacing": [1.0, 1.0, 1.0]}
    settings.update(roi_size=[16, 16, 16], overrides={"network_def": CONV}, qc=False)
    for stream, out in ((_Terminal(), tmp_path / "tty"), (io.StringIO(), tmp_path / "pipe")):
        monkeypatch.setattr(sys, "stderr", stream)
        run_evaluation(str(cases_file), out, inference=settings)
        monkeypatch.undo()
        lines = stream.getvalue().splitlines()
        progress = [line for line in lines if line.startswith("[")]
        expected = ["[1/2] s0", "[2/2] s1"] if isinstance(stream, _Terminal) else []
        assert [line.split("_")[0].split(".")[0] for line in progress] == expected, lines


def test_evaluate_runs_inference_when_no_predictions_are_given(cube_brain, tmp_path):
    """A network that copies its input: the predictions land in ``output_dir/predictions`` and are what is scored."""
    data = tmp_path / "data"
    data.mkdir()
    cases_file, _ = _make_cases(data, cube_brain, n=1)
    ckpt = conv_checkpoint(tmp_path / "copy.pt", (1.0, 0.0))
    out = tmp_path / "out"
    settings = {"checkpoint": ckpt, "spacing": [1.0, 1.0, 1.0], "roi_size": [16, 16, 16], "quiet": True}
    settings["overrides"] = {"network_def": CONV}
    row = run_evaluation(str(cases_file), out, inference=settings)["cases"][0]
    healthy = out / "predictions" / "s0_healthy.nii.gz"
    assert healthy.is_file() and (out / "predictions" / "s0.json").is_file()
    assert not (data / "pred" / "s0.json").exists()
    brain = cube_brain
    truth = torch.as_tensor(nib.load(str(data / "s0_t1.nii.gz")).get_fdata(), dtype=torch.float32)
    pred = torch.as_tensor(nib.load(str(healthy)).get_fdata(), dtype=torch.float32)
    assert float(pred[5:9, 5:9, 5:9].mean()) < 0.3  # the copied input still has its dark lesion
    expected = float(brain_l1(normalize_intensity(pred, brain), normalize_intensity(truth, brain), brain))
    assert row["l1"] == pytest.approx(expected, rel=1e-5) and row["l1"] > 0.01
    assert 0 <= row["dice"] <= 1


def test_evaluate_refuses_to_overwrite(cube_brain, tmp_path):
    cases_file, _ = _make_cases(tmp_path, cube_brain, n=1)
    out = tmp_path / "out"
    run_evaluation(str(cases_file), str(out), predictions=tmp_path / "pred")
    (out / "metrics.csv").write_text("mine")
    with pytest.raises(FileExistsError, match="metrics"):
        run_evaluation(str(cases_file), str(out), predictions=tmp_path / "pred")
    assert (out / "metrics.csv").read_text() == "mine"
    run_evaluation(str(cases_file), str(out), predictions=tmp_path / "pred", overwrite=True)
    assert (out / "metrics.csv").read_text().startswith("case,l1,psnr,ssim,dice,")


def test_evaluate_accepts_a_list_of_dicts(cube_brain, tmp_path, monkeypatch):
    _, cases = _make_cases(tmp_path, cube_brain, n=1)
    monkeypatch.chdir(tmp_path)  # relative paths of a list: against the working directory
    result = run_evaluation(cases, "out", predictions="pred")
    assert len(result["cases"]) == 1 and (tmp_path / "out" / "metrics.md").is_file()


def test_cli_evaluate_prints_the_table_and_fails_cleanly(cube_brain, tmp_path, capsys):
    cases_file, _ = _make_cases(tmp_path, cube_brain, n=1)
    table = evaluate(str(cases_file), str(tmp_path / "out"), predictions=str(tmp_path / "pred"))
    assert table == (tmp_path / "out" / "metrics.md").read_text() and "| s0 |" in table
    main(
        [
            "evaluate",
            "--cases",
            str(cases_file),
            "--output_dir",
            str(tmp_path / "cli"),
            "--predictions",
            str(tmp_path / "pred"),
        ]
    )
    assert "| s0 |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--cases", str(tmp_path / "nope.json"), "--output_dir", str(tmp_path / "x")])
    assert info.value.code != 0 and "nope.json" in capsys.readouterr().err


def test_bad_case_lists_give_specific_errors(cube_brain, tmp_path):
    cases_file, cases = _make_cases(tmp_path, cube_brain, n=1)
    out, pred = tmp_path / "out", tmp_path / "pred"
    with pytest.raises(FileNotFoundError, match="cases: file not found"):
        run_evaluation(str(tmp_path / "nope.json"), str(out))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_cases(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="non-empty list"):
        load_cases([])
    with pytest.raises(ValueError, match=r"case 0.*missing required key.*truth"):
        load_cases([{k: v for k, v in cases[0].items() if k != "truth"}])
    with pytest.raises(ValueError, match="unknown key"):
        load_cases([{**cases[0], "healty": "x.nii.gz"}])
    (tmp_path / "twice.json").write_text(json.dumps([cases[0], cases[0]]))
    with pytest.raises(ValueError, match="share the name"):
        load_cases(str(tmp_path / "twice.json"), pred)
    missing = [{**cases[0], "truth": "gone_t1.nii.gz"}]
    (tmp_path / "missing.json").write_text(json.dumps(missing))
    with pytest.raises(FileNotFoundError, match=r"case 0.*'truth' file not found.*gone_t1"):
        run_evaluation(str(tmp_path / "missing.json"), str(out), predictions=pred)
    with pytest.raises(FileNotFoundError, match=r"predictions: folder not found"):
        run_evaluation(str(cases_file), str(out), predictions=tmp_path / "nowhere")
    (pred / "s0_anomaly_mask.nii.gz").rename(tmp_path / "moved.nii.gz")
    with pytest.raises(FileNotFoundError, match=r"prediction not found.*s0_anomaly_mask.nii.gz"):
        run_evaluation(str(cases_file), str(out), predictions=pred)
    (tmp_path / "moved.nii.gz").rename(pred / "s0_anomaly_mask.nii.gz")
    _save(np.zeros((16, 16, 15)), tmp_path / "small.nii.gz")
    (tmp_path / "shape.json").write_text(json.dumps([{**cases[0], "truth": "small.nii.gz"}]))
    with pytest.raises(ValueError, match=r"case s0: truth .*small.nii.gz has shape \(16, 16, 15\)"):
        run_evaluation(str(tmp_path / "shape.json"), str(out), predictions=pred)
    assert not out.exists() or not [p for p in out.iterdir() if p.is_file()]  # nothing written for a bad list


# ---- the held-out metrics: L1 after a gain, L1 in the lesion, anomaly and false-positive volumes, per kind ----

VOXEL_AFFINE = np.diag([2.0, 1.0, 1.5, 1.0])  # 3 mm^3 voxels


def _anomaly_block():
    """The lesion cube [5:9]^3 (64 voxels) and an anomaly mask (122 voxels) of which 25 are false positives."""
    lesion = np.zeros((16, 16, 16))
    lesion[5:9, 5:9, 5:9] = 1
    found = np.zeros((16, 16, 16))
    found[5:9, 5:9, 5:12] = 1  # the lesion + z = 9, 10 (within 2 voxels) + z = 11 (3 away: 16 false positives)
    found[0:2, 0:2, 0:2] = 1  # 8 voxels outside the brain: a halo counts too
    found[10, 10, 6] = 1  # Euclidean distance sqrt(8) > 2 (a cube dilation would have kept it): false positive
    found[10, 6, 6] = 1  # distance 2: inside the margin
    return lesion, found


def test_anomaly_and_false_positive_volumes_by_hand():
    lesion, found = _anomaly_block()
    anomaly_ml, fp_ml = anomaly_volumes(found, lesion, VOXEL_AFFINE)
    assert anomaly_ml == pytest.approx(122 * 3 / 1000)
    assert fp_ml == pytest.approx(25 * 3 / 1000)
    assert anomaly_volumes(found, None, VOXEL_AFFINE) == pytest.approx((0.366, 0.366))  # no lesion: all of it
    assert anomaly_volumes(found, np.zeros_like(lesion), VOXEL_AFFINE) == pytest.approx((0.366, 0.366))
    assert anomaly_volumes(lesion, lesion, VOXEL_AFFINE) == pytest.approx((0.192, 0.0))


def test_gain_l1_by_hand(cube_brain):
    truth = cube_brain.float()  # 1 in the 1000 brain voxels
    pred = truth.clone()
    pred[5:9, 5:9, 5:9] = 0.6  # 64 voxels
    gain = (936 + 64 * 0.6) / (936 + 64 * 0.36)  # <p, t> / <p, p>
    expected = (936 * abs(gain - 1) + 64 * abs(0.6 * gain - 1)) / 1000
    assert gain_l1(pred, truth, cube_brain) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.03998, abs=1e-5)  # the L2 gain is not the L1-optimal one: above the plain L1
    assert float(brain_l1(pred, truth, cube_brain)) == pytest.approx(64 * 0.4 / 1000)
    assert gain_l1(2.5 * truth, truth, cube_brain) == pytest.approx(0.0, abs=1e-7)  # a global scale is not counted
    assert gain_l1(torch.zeros_like(truth), truth, cube_brain) == pytest.approx(1.0)


def test_new_columns_and_the_per_kind_summary_by_hand(cube_brain, tmp_path):
    """Three cases on a 16^3 grid of 3 mm^3 voxels, truth 1 in the brain: two ``t1_lesion`` cases (the model fills
    the lesion with 0.6 and 0.8, the input has 0.2 there) and a ``t1_healthy`` one without a lesion."""
    brain = cube_brain.numpy()
    lesion, found = _anomaly_block()
    pred = tmp_path / "pred"
    pred.mkdir()
    truth = brain.astype(float)
    cases = []
    for name, kind, filled in (("a", "t1_lesion", 0.6), ("b", "t1_lesion", 0.8), ("c", "t1_healthy", None)):
        with_lesion = filled is not None
        image = np.where(lesion > 0, 0.2, truth) if with_lesion else truth
        healthy = np.where(lesion > 0, filled, truth) if with_lesion else truth
        entry = {"image": _save(image, tmp_path / f"{name}.nii.gz", VOXEL_AFFINE), "kind": kind}
        entry["truth"] = _save(truth, tmp_path / f"{name}_t1.nii.gz", VOXEL_AFFINE)
        entry["mask"] = _save(brain, tmp_path / f"{name}_brain.nii.gz", VOXEL_AFFINE)
        if with_lesion:
            entry["lesion"] = _save(lesion, tmp_path / f"{name}_lesion.nii.gz", VOXEL_AFFINE)
        _save(healthy, pred / f"{name}_healthy.nii.gz", VOXEL_AFFINE)
        _save(found, pred / f"{name}_anomaly_mask.nii.gz", VOXEL_AFFINE)
        cases.append(entry)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    result = run_evaluation(str(tmp_path / "cases.json"), tmp_path / "out", predictions=pred)
    a, b, c = result["cases"]
    assert [r["kind"] for r in (a, b, c)] == ["t1_lesion", "t1_lesion", "t1_healthy"]
    assert a["l1_lesion"] == pytest.approx(0.4) and b["l1_lesion"] == pytest.approx(0.2)
    assert a["baseline_l1_lesion"] == pytest.approx(0.8) and b["baseline_l1_lesion"] == pytest.approx(0.8)
    assert a["l1"] == pytest.approx(64 * 0.4 / 1000) and a["baseline_l1"] == pytest.approx(64 * 0.8 / 1000)
    gain = (936 + 64 * 0.2) / (936 + 64 * 0.04)  # the identity's gain
    assert a["baseline_l1_gain"] == pytest.approx((936 * (gain - 1) + 64 * (1 - 0.2 * gain)) / 1000, rel=1e-5)
    assert a["dice"] == pytest.approx(2 * 64 / (122 + 64))
    assert a["anomaly_ml"] == pytest.approx(0.366) and a["fp_ml"] == pytest.approx(0.075)
    assert math.isnan(c["l1_lesion"]) and math.isnan(c["baseline_l1_lesion"]) and math.isnan(c["dice"])
    assert c["fp_ml"] == pytest.approx(0.366) and c["l1"] == 0.0 and c["l1_gain"] == pytest.approx(0.0, abs=1e-7)

    summary = kind_summary(result["cases"])
    assert list(summary) == ["t1_lesion", "t1_healthy"]
    assert summary["t1_lesion"]["n"] == 2 and summary["t1_lesion"]["l1_lesion"] == pytest.approx(0.3)
    assert summary["t1_lesion"]["baseline_l1_lesion"] == pytest.approx(0.8)
    assert summary["t1_healthy"]["fp_ml"] == pytest.approx(0.366) and math.isnan(summary["t1_healthy"]["l1_lesion"])
    markdown = (tmp_path / "out" / "metrics.md").read_text()
    assert "## Per kind" in markdown
    kind_rows = {line.split(" | ")[0][2:]: line for line in markdown.splitlines() if line.startswith("| t1_")}
    assert "0.3000 / 0.8000" in kind_rows["t1_lesion"] and "| 2 |" in kind_rows["t1_lesion"]
    assert kind_rows["t1_healthy"].endswith("| 0.37 | 0.37 |")  # anomaly and false-positive mL
    with open(tmp_path / "out" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["kind"] for r in rows] == ["t1_lesion", "t1_lesion", "t1_healthy"]
    assert float(rows[0]["fp_ml"]) == pytest.approx(0.075) and rows[2]["l1_lesion"] == ""
