import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import ellipsoid

from una_bundle.tools.anomaly_gallery import generate_anomalies


@pytest.fixture
def brain_file(tmp_path):
    mask = ellipsoid((36, 40, 32)).numpy()
    affine = np.diag([-1.5, 1.5, 1.5, 1.0])
    path = tmp_path / "brain.nii.gz"
    nib.save(nib.Nifti1Image((mask * 100).astype(np.int16), affine), str(path))
    return path, affine


def test_writes_volumes_figure_and_summary_without_overwriting(tmp_path, brain_file):
    image, affine = brain_file
    out = tmp_path / "gallery"
    summary = generate_anomalies(output_dir=str(out), image=str(image), n=2, seed=1)
    assert [r["index"] for r in summary["anomalies"]] == [0, 1]
    for i in range(2):
        mask = nib.load(str(out / f"anomaly_{i}_mask.nii.gz"))
        assert mask.shape == (36, 40, 32) and np.allclose(mask.affine, affine)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1} and np.asarray(mask.dataobj).sum() > 0
        encoded = np.asarray(nib.load(str(out / f"anomaly_{i}_image.nii.gz")).dataobj)
        assert not np.allclose(encoded, 100 * ellipsoid((36, 40, 32)).numpy())
    png = (out / "fluid_anomalies.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert json.loads((out / "anomalies.json").read_text())["seed"] == 1
    before = (out / "anomaly_0_prob.nii.gz").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_anomalies(output_dir=str(out), image=str(image), n=2, seed=2)
    assert (out / "anomaly_0_prob.nii.gz").read_bytes() == before  # nothing touched
    generate_anomalies(output_dir=str(out), image=str(image), n=2, seed=2, overwrite=True)
    assert (out / "anomaly_0_prob.nii.gz").read_bytes() != before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_bad_inputs(tmp_path, brain_file):
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        generate_anomalies(output_dir=str(tmp_path / "a"), image=str(tmp_path / "nope.nii.gz"), n=1)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b truncated gzip")
    with pytest.raises(ValueError, match="bad.nii.gz.*not a readable NIfTI"):
        generate_anomalies(output_dir=str(tmp_path / "b"), image=str(bad), n=1)
    with pytest.raises(ValueError, match="n must be"):
        generate_anomalies(output_dir=str(tmp_path / "c"), n=0)


def test_command_line(tmp_path, brain_file):
    image, _ = brain_file
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "una_bundle.tools.cli", "anomalies", "--image", str(image), "--n", "1"]
    done = subprocess.run(cmd + ["--output_dir", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (out / "anomaly_0_mask.nii.gz").is_file() and (out / "fluid_anomalies.png").is_file()
    again = subprocess.run(cmd + ["--output_dir", str(out)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "una-bundle: error: output exists" in again.stderr
    assert "Traceback" not in again.stderr


def test_gallery_uses_the_training_recipe_lesion_settings(tmp_path, brain_file):
    image, _ = brain_file
    recipe = generate_anomalies(output_dir=str(tmp_path / "a"), image=str(image), n=1, seed=0)
    assert recipe["parameters"]["percentile_sampling"] == "log"  # read from configs/train.yaml
    assert recipe["parameters"]["shape_periods"][0] < recipe["parameters"]["shape_periods"][1]
    assert recipe["anomalies"][0]["lesion_ml"] > 0
    reference = generate_anomalies(output_dir=str(tmp_path / "b"), image=str(image), n=1, seed=0, recipe=False)
    assert reference["parameters"] == {}


def test_template_gallery_grows_lesions_in_tissue_only(tmp_path):
    """On the default image (the MNI152 template) lesions follow training: in its tissue, never in ventricles/CSF."""
    from una_bundle.scripts.data.labels import CSF_LABELS
    from una_bundle.scripts.data.mni152 import mni152_labels

    _, labels, _ = mni152_labels()
    summary = generate_anomalies(output_dir=str(tmp_path / "t"), n=2, seed=3)
    assert "its tissue" in summary["image"]
    for i in range(2):
        mask = np.asarray(nib.load(str(tmp_path / "t" / f"anomaly_{i}_mask.nii.gz")).dataobj) > 0
        assert mask.shape == labels.shape and mask.sum() > 0
        assert not (mask & np.isin(labels, CSF_LABELS)).any()
