"""The training-data pipeline of configs/train.yaml, end to end."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ellipsoid

from una_bundle.scripts.data.bundle_config import load_config
from una_bundle.tools.pipeline_preview import draw_samples, preview_pipeline

KEYS = ("image", "target", "mask", "lesion", "lesion_prob", "lesion_flip", "weight")


def _settings(dataset_dir, tmp_path, **more):
    return {"dataset_dir": str(dataset_dir), "output_dir": str(tmp_path / "out"), "roi_size": [64, 80, 64]} | more


def test_output_contract(demo_3mm, tmp_path):
    samples, _ = draw_samples(demo_3mm.parent, 4, seed=0, overrides=_settings(demo_3mm.parent, tmp_path))
    for s in samples:
        assert s["image"].shape == (2, 64, 80, 64)
        for key in KEYS[1:]:
            assert s[key].shape == (1, 64, 80, 64), key
        for key in KEYS:
            assert s[key].dtype == torch.float32, key
            assert torch.isfinite(s[key]).all(), key
        assert 0 <= float(s["image"].min()) and float(s["image"].max()) <= 1
        assert 0 <= float(s["target"].min()) and float(s["target"].max()) <= 1 + 1e-6
        assert float((s["lesion"] * (1 - s["mask"])).sum()) == 0  # lesions sit inside the brain
        assert torch.allclose(s["weight"], 1 + s["lesion_prob"])  # healthy demo subjects: w = 1 + P
        assert s["source"] in ("synthetic", "real") and isinstance(s["regime"], str)
        assert s["modality"] in ("synthetic", "CT", "T1")
    assert any(float(s["lesion"].sum()) > 0 for s in samples)


def test_lesions_grow_in_tissue_not_in_ventricles_or_csf(demo_3mm, tmp_path):
    """The fluid anomaly is confined to lesion_tissue_labels: no lesion voxel inside the lateral ventricles or CSF."""
    from una_bundle.scripts.data.labels import CSF_LABELS, TISSUE_LABELS

    config = load_config("train.yaml", _settings(demo_3mm.parent, tmp_path, anomaly_prob=1.0))
    assert set(config.get_parsed_content("lesion_tissue_labels")) == set(TISSUE_LABELS)
    assert not set(TISSUE_LABELS) & set(CSF_LABELS)
    steps = config.get_parsed_content("train#preprocessing").transforms
    last = next(i for i, t in enumerate(steps) if type(t).__name__ == "RandFluidAnomalyd")
    entry = config.get_parsed_content("train#dataset").data[0]
    found = 0
    for seed in range(3):
        data = dict(entry)
        for step in steps[: last + 1]:
            if hasattr(step, "set_random_state"):
                step.set_random_state(seed)
            data = step(data)
        lesion = data["lesion"][0] > 0
        csf = torch.isin(data["label"][0].long(), torch.tensor(CSF_LABELS))
        assert bool(csf.any()) and not bool((lesion & csf).any())
        found += int(lesion.sum())
    assert found > 0  # lesions were drawn


def test_reproducible_and_seed_sensitive(demo_3mm, tmp_path):
    settings = _settings(demo_3mm.parent, tmp_path)
    a, _ = draw_samples(demo_3mm.parent, 2, seed=3, overrides=settings)
    b, _ = draw_samples(demo_3mm.parent, 2, seed=3, overrides=settings)
    c, _ = draw_samples(demo_3mm.parent, 2, seed=4, overrides=settings)
    for x, y in zip(a, b):
        assert all(torch.equal(x[k], y[k]) for k in KEYS)
    assert not torch.equal(a[0]["image"], c[0]["image"])


@pytest.fixture
def marker_dataset(tmp_path):
    """One phantom subject: an ellipsoid brain with a large marker cube in the target, the real scan, the label
    map and a real lesion mask, off the left-right midline."""
    shape = (48, 48, 48)
    brain = ellipsoid(shape, (0.8, 0.8, 0.8)).numpy()
    cube = np.zeros(shape, bool)
    cube[33:42, 12:21, 20:29] = True  # 729 voxels: the top 0.5 % of intensities, as normalisation keeps them
    t1 = np.where(brain, 0.5, 0.0)
    t1[cube] = 1.0
    label = np.where(brain, 2, 0)
    label[cube] = 3
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    files = {
        "t1": t1.astype(np.float32),
        "label": label.astype(np.int16),
        "mask": brain.astype(np.uint8),
        "lesion": cube.astype(np.uint8),
    }
    entry = {}
    for name, array in files.items():
        nib.save(nib.Nifti1Image(array, affine), str(tmp_path / f"{name}.nii.gz"))
        entry[name] = f"{name}.nii.gz"
    entry |= {"image": "t1.nii.gz", "modality": "T1"}
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [entry]}))
    return tmp_path


def _centroid(mask):
    return mask.nonzero().float().mean(0)


def _best_shift(image, marker, radius=3):
    """The shift of ``marker`` that best matches ``image`` after removing its smooth part (bias field, contrast):
    zero when the marker sits where it should in the image."""
    smooth = torch.nn.functional.avg_pool3d(image[None, None], 7, stride=1, padding=3, count_include_pad=False)[0, 0]
    detail = image - smooth
    shifts = [
        (a, b, c)
        for a in range(-radius, radius + 1)
        for b in range(-radius, radius + 1)
        for c in range(-radius, radius + 1)
    ]
    scores = [float((detail * torch.roll(marker, s, dims=(0, 1, 2))).sum()) for s in shifts]
    return torch.tensor(shifts[int(np.argmax(scores))], dtype=torch.float32)


@pytest.mark.parametrize("seed", [0, 2, 3])  # seeds whose geometry moves the marker > 2 voxels
def test_marker_lands_at_the_same_voxel_in_image_target_and_lesion(marker_dataset, tmp_path, seed):
    settings = _settings(marker_dataset, tmp_path, roi_size=[48, 48, 48], synthetic_prob=0.0, anomaly_prob=0.0)
    (s,), _ = draw_samples(marker_dataset, 1, seed=seed, overrides=settings)
    in_target = _centroid(s["target"][0] > 0.75)
    in_lesion = _centroid(s["weight"][0] == 0)  # the real lesion is carried along and not supervised
    marker = (s["target"][0] > 0.75).float()
    assert (in_target - torch.tensor([37.0, 16.0, 24.0])).norm() > 2  # the geometry did move it, noticeably
    assert (in_target - in_lesion).norm() < 1.0
    assert _best_shift(s["image"][0], marker).abs().max() <= 1  # the input's marker is where the target's is
    # the flip channel shows the marker mirrored across the midline, not in place
    assert float((s["image"][1] * marker).sum() / marker.sum()) < float((s["image"][0] * marker).sum() / marker.sum())


def test_preview_png(demo_3mm, tmp_path):
    out = tmp_path / "preview.png"
    settings = _settings(demo_3mm.parent, tmp_path)
    roi = settings.pop("roi_size")
    preview_pipeline(str(demo_3mm.parent), str(out), n=2, seed=0, roi_size=roi, config_overrides=settings)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    with pytest.raises(FileExistsError):
        preview_pipeline(str(demo_3mm.parent), str(out), n=1)


def test_config_and_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config("nope.yaml")
    with pytest.raises(FileNotFoundError, match="prepare-demo"):
        draw_samples(str(tmp_path), 1)
