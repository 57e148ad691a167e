"""Every way to run UNA gives the same outputs for one scan: the Python API (``run_inference``), the CLI
(``una-bundle infer``), the bundle run (``python -m monai.bundle run --config_file configs/inference.yaml``) and the
MONAI Deploy app (its SDK-free path, on the TorchScript model). One case loop (``scripts.workflows.inference``)
serves the first two; the others build the same pipeline from ``configs/inference.yaml`` (the Deploy app from the
copy inside ``models/model.ts``, refreshed by ``python -m una_bundle.tools.release``)."""

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
from conftest import small_scan

from una_bundle import BUNDLE_ROOT
from una_bundle.deploy import app
from una_bundle.scripts.workflows.inference import run_inference
from una_bundle.tools.cli import main as cli

ROI = [48, 48, 48]


def _read(folder, kind):
    return np.asarray(nib.load(str(folder / f"brain_{kind}.nii.gz")).dataobj)


def test_api_cli_bundle_run_and_deploy_app_agree(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    scan = small_scan(inputs / "brain.nii.gz")
    api = tmp_path / "api"
    report = run_inference(scan, api, modality="t1", roi_size=ROI, qc=False, quiet=True)[0]
    assert report["healthy"] == "filled"  # a T1w: NAME_healthy is the lesion-filled scan (its own units)

    cli(
        ["infer", "--image", str(scan), "--output_dir", str(tmp_path / "cli"), "--roi_size", str(ROI)]
        + ["--modality", "t1", "--noqc"]
    )

    env = {**os.environ, "PYTHONPATH": str(BUNDLE_ROOT)}
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.yaml",
               "--bundle_root", str(BUNDLE_ROOT), "--dataset_dir", str(inputs),
               "--output_dir", str(tmp_path / "bundle"),
               "--roi_size", str(ROI), "--modality", "t1"]  # fmt: skip
    result = subprocess.run(command, cwd=BUNDLE_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    app.run(inputs, tmp_path / "deploy", overrides={"roi_size": ROI, "modality": "t1"})

    for kind in ("healthy", "synthesized", "anomaly", "anomaly_mask"):
        reference = _read(api, kind)
        for name in ("cli", "bundle", "deploy"):
            if name == "deploy" and kind == "synthesized":
                continue  # the app writes the healthy output, the map and the mask
            np.testing.assert_allclose(_read(tmp_path / name, kind), reference, atol=1e-4, err_msg=f"{name} {kind}")
