"""The MONAI Label app's inference task (una_bundle/monailabel_app) on a small scan; skipped without monailabel.

The end-to-end check with a real server is .ci/monai_label_check (docs/monai_label.md).
"""

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import small_scan

APP = Path(__file__).resolve().parents[1] / "una_bundle" / "monailabel_app"


def load_task_module():
    """lib/infers/una.py loaded by path (MONAI Label imports it as ``lib.infers``, a name too generic for tests)."""
    spec = importlib.util.spec_from_file_location("una_monailabel_infer", APP / "lib" / "infers" / "una.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_infer_task_returns_the_cli_anomaly_mask(tmp_path):
    """The task's label map is the anomaly mask of run_inference (uint8 0/1, input grid); the JSON names the rest."""
    pytest.importorskip("monailabel")
    from una_bundle.scripts.workflows.inference import run_inference

    module = load_task_module()
    scan = small_scan(tmp_path / "scan.nii.gz")
    task = module.UNAInferTask(tmp_path / "outputs", device="cpu")
    assert task.is_valid() and task.info()["type"] == "segmentation" and task.info()["labels"] == {"anomaly": 1}

    label_file, result = task({"image": str(scan), "device": "cpu"})
    reference = run_inference(scan, tmp_path / "cli", qc=False, quiet=True)[0]
    label = nib.load(label_file)
    expected = nib.load(reference["outputs"]["anomaly_mask"])
    assert label.get_data_dtype() == np.uint8 and label.shape == (40, 48, 40)
    assert np.array_equal(np.asarray(label.dataobj), np.asarray(expected.dataobj))
    assert np.allclose(label.affine, expected.affine)
    assert result["label_names"] == {"anomaly": 1}
    assert result["anomaly_volume_ml"] == reference["anomaly_volume_ml"]
    assert nib.load(result["healthy_t1w"]).shape == (40, 48, 40)
    assert json.loads(Path(result["report"]).read_text())["anomaly_voxels"] == result["anomaly_voxels"]
    Path(label_file).unlink()


def test_choose_device_falls_back_to_cpu(monkeypatch):
    """A CUDA device asked for on a machine without one runs on the CPU (clients send ``cuda`` by default)."""
    pytest.importorskip("monailabel")
    module = load_task_module()
    monkeypatch.setattr(module.torch.cuda, "is_available", lambda: False)
    assert module.choose_device("cuda") == "cpu"
    assert module.choose_device(None) == "cpu"
    assert module.choose_device("cpu") == "cpu"
