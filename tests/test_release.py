"""Release tooling (una_bundle.tools.release): re-exports of unchanged weights keep model.ts byte for byte, and the
zoo archive holds the bundle without pip-only code and runs, unzipped elsewhere, with the same outputs."""

import os
import shutil
import subprocess
import sys
import zipfile

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import small_scan

from una_bundle import BUNDLE_ROOT
from una_bundle.tools import release


@pytest.fixture
def bundle_copy(tmp_path, monkeypatch):
    """A copy of the bundle; its ``scripts`` package, imported by the export, is forgotten afterwards."""
    root = tmp_path / "una_bundle"
    for item in ("configs", "models", "scripts"):
        shutil.copytree(BUNDLE_ROOT / item, root / item, ignore=shutil.ignore_patterns("__pycache__"))
    for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield root
    for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        del sys.modules[name]


def test_reexport_of_unchanged_weights_keeps_model_ts(bundle_copy):
    ts = bundle_copy / "models" / "model.ts"
    release.refresh_torchscript(bundle_copy)  # in step with the configs (a config edit changes the model file)
    before = ts.read_bytes()
    assert release.refresh_torchscript(bundle_copy) is False
    assert ts.read_bytes() == before
    # other weights: a new file, and a model the old one is not
    state = torch.load(bundle_copy / "models" / "model.pt", map_location="cpu", weights_only=True)
    state = state.get("model", state)
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = state[first] + 0.01
    torch.save(state, bundle_copy / "models" / "model.pt")
    old = bundle_copy / "old.ts"
    shutil.copy(ts, old)
    assert release.refresh_torchscript(bundle_copy) is True
    assert ts.read_bytes() != before and not release.same_torchscript(old, ts)
    assert sorted(p.name for p in (bundle_copy / "models").iterdir()) == ["model.pt", "model.ts"]  # no temp left


def test_archive_contents_and_a_run_from_the_unzipped_bundle(tmp_path):
    archive = release.build_archive(BUNDLE_ROOT, tmp_path / "una.zip")
    names = zipfile.ZipFile(archive).namelist()
    assert all(n.startswith("una_bundle/") for n in names)
    top = {n.split("/")[1] for n in names}
    assert top == set(release.ARCHIVE_CONTENTS)
    assert "una_bundle/models/model.pt" in names and "una_bundle/configs/inference.yaml" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert release.build_archive(BUNDLE_ROOT, tmp_path / "again.zip").read_bytes() == archive.read_bytes()

    unzipped = tmp_path / "zoo"
    zipfile.ZipFile(archive).extractall(unzipped)
    root = unzipped / "una_bundle"
    (tmp_path / "in").mkdir()
    small_scan(tmp_path / "in" / "brain.nii.gz")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(root)
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.yaml",
        "--bundle_root", str(root), "--dataset_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "zoo_out"),
        "--roi_size", "[48, 48, 48]",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    from una_bundle.scripts.workflows.inference import run_inference

    run_inference(tmp_path / "in" / "brain.nii.gz", tmp_path / "api_out", roi_size=[48, 48, 48], qc=False)
    for kind in ("healthy", "synthesized", "anomaly", "anomaly_mask"):
        zoo = np.asarray(nib.load(str(tmp_path / "zoo_out" / f"brain_{kind}.nii.gz")).dataobj)
        api = np.asarray(nib.load(str(tmp_path / "api_out" / f"brain_{kind}.nii.gz")).dataobj)
        np.testing.assert_allclose(zoo, api, atol=1e-5, err_msg=kind)
