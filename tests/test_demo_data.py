"""The offline demo dataset: files and datalist, label ids, anatomical plausibility, deformations, determinism."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

from una_bundle.scripts.data.datalist import load_datalist
from una_bundle.scripts.data.demo_data import (
    _grid,
    _jacobian_determinant,
    _world_points,
    prepare_demo,
    random_deformation,
)
from una_bundle.scripts.data.labels import BRAINSTEM, CSF_LABELS, GM_LABELS, LABELS, LEFT_RIGHT_PAIRS, WM_LABELS
from una_bundle.scripts.data.mni152 import mni152_labels

CEREBELLUM = [LABELS[k] for k in LABELS if "Cerebellum" in k]
CEREBRUM = [LABELS[k] for k in LABELS if "Cerebral" in k]
SPACING = 3.0


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "data"
    path = prepare_demo(root, n_train=2, n_val=1, spacing=SPACING, seed=0)
    return path


def _read(path):
    image = nib.load(str(path))
    return np.asarray(image.dataobj), image


def _subject(datalist, section, index):
    entry = load_datalist(datalist, section)[index]
    return {key: _read(entry[key])[0] for key in ("t1", "label", "mask")}, _read(entry["t1"])[1].affine


def _centroid_mm(labels, affine, ids):
    index = np.argwhere(np.isin(labels, ids)).mean(0)
    return affine[:3, :3] @ index + affine[:3, 3]


def test_files_datalist_and_grid(demo):
    data = json.loads(demo.read_text())
    assert data["labels"] == {str(v): k for k, v in LABELS.items()}
    assert (len(data["training"]), len(data["validation"])) == (2, 1)
    shape, affine = _grid(SPACING)
    assert shape == (62, 75, 67)
    for section, n in (("training", 2), ("validation", 1)):
        entries = load_datalist(demo, section)  # checks files exist and share one grid
        assert len(entries) == n
        for entry in entries:
            assert not any(data_entry.startswith("/") for data_entry in data[section][0].values())  # relative
            for key, dtype in (("t1", np.float32), ("label", np.uint8), ("mask", np.uint8)):
                image = nib.load(entry[key])
                assert image.shape == shape and image.get_data_dtype() == dtype
                np.testing.assert_allclose(image.affine, affine)
    np.testing.assert_allclose(np.diag(affine)[:3], SPACING)


def test_labels_have_the_documented_ids(demo):
    subject, _ = _subject(demo, "training", 0)
    assert set(np.unique(subject["label"]).tolist()) == set(LABELS.values())
    _, labels, _ = mni152_labels()
    assert labels.dtype == np.uint8 and set(np.unique(labels).tolist()) == set(LABELS.values())
    assert set(GM_LABELS) | set(WM_LABELS) | set(CSF_LABELS) | {BRAINSTEM, 0} == set(LABELS.values())


def test_labels_are_anatomically_plausible():
    t1, labels, affine = mni152_labels()  # 1 mm template
    mean = {name: t1[np.isin(labels, ids)].mean() for name, ids in (("gm", GM_LABELS), ("wm", WM_LABELS))}
    mean["csf"] = t1[np.isin(labels, CSF_LABELS)].mean()
    assert mean["wm"] > mean["gm"] + 0.1 and mean["gm"] > mean["csf"] + 0.1
    cerebellum, cerebrum = _centroid_mm(labels, affine, CEREBELLUM), _centroid_mm(labels, affine, CEREBRUM)
    assert cerebellum[2] < cerebrum[2] - 30 and cerebellum[1] < cerebrum[1] - 30  # below and behind
    # Every cerebellar voxel lies below z = 5 mm and behind y = -25 mm; the cerebral cortex reaches z = 70.
    index = np.argwhere(np.isin(labels, CEREBELLUM))
    world = index @ affine[:3, :3].T + affine[:3, 3]
    assert world[:, 2].max() < 5 and world[:, 1].max() < -25
    stem = _centroid_mm(labels, affine, [BRAINSTEM])
    assert abs(stem[0]) < 2 and -45 < stem[1] < -15 and -50 < stem[2] < -15
    for left, right in LEFT_RIGHT_PAIRS:
        assert _centroid_mm(labels, affine, [left])[0] < -3 and _centroid_mm(labels, affine, [right])[0] > 3
    volumes_ml = {name: (labels == LABELS[name]).sum() / 1000 for name in LABELS}
    for name, (low, high) in {
        "Left-Thalamus": (5, 12),
        "Left-Caudate": (2.5, 7),
        "Left-Putamen": (3, 8),
        "Left-Lateral-Ventricle": (4, 20),
        "Brain-Stem": (15, 45),
    }.items():
        assert low < volumes_ml[name] < high, (name, volumes_ml[name])
    thalamus = _centroid_mm(labels, affine, [LABELS["Left-Thalamus"]])
    assert np.linalg.norm(thalamus - np.array([-11, -18, 7])) < 6
    assert t1[labels == 0].max() == 0  # background is outside the (skull-stripped) brain


def test_deformed_subjects_differ_but_stay_aligned(demo):
    template, _ = _subject(demo, "training", 0)
    others = [_subject(demo, "training", 1)[0], _subject(demo, "validation", 0)[0]]
    for subject in [template] + others:
        t1, labels, mask = subject["t1"], subject["label"], subject["mask"]
        np.testing.assert_array_equal(mask, labels > 0)
        gm, wm = t1[np.isin(labels, GM_LABELS)].mean(), t1[np.isin(labels, WM_LABELS)].mean()
        assert wm > gm + 0.1 and gm > t1[np.isin(labels, CSF_LABELS)].mean() + 0.05
        assert t1[mask == 0].mean() < 0.02 and t1[mask > 0].mean() > 0.5
        assert mask[[0, -1]].sum() + mask[:, [0, -1]].sum() + mask[:, :, [0, -1]].sum() == 0  # inside the FOV
    for subject in others:
        brain = (subject["mask"] > 0) | (template["mask"] > 0)
        assert np.abs(subject["t1"] - template["t1"])[brain].mean() > 0.1  # a one-voxel shift gives 0.07
        assert (subject["label"] == template["label"])[brain].mean() < 0.6
    brain = (others[0]["mask"] > 0) | (others[1]["mask"] > 0)
    assert (others[0]["label"] == others[1]["label"])[brain].mean() < 0.6  # validation is not a training subject


def test_random_deformation_is_smooth_large_and_invertible():
    shape, affine = _grid(4.0)
    identity = _world_points(shape, affine)
    for seed in range(3):
        points = random_deformation(np.random.default_rng(seed), shape, affine)
        jacobian = _jacobian_determinant(points, 4.0)
        assert jacobian.min() > 0.2 and jacobian.max() < 4  # no folding
        assert (points - identity).norm(dim=-1).mean() > 3  # large
    again = random_deformation(np.random.default_rng(0), shape, affine)
    np.testing.assert_array_equal(again.numpy(), random_deformation(np.random.default_rng(0), shape, affine).numpy())


def test_same_seed_same_arrays_different_seed_different(demo, tmp_path):
    same = prepare_demo(tmp_path / "same", n_train=2, n_val=1, spacing=SPACING, seed=0)
    other = prepare_demo(tmp_path / "other", n_train=2, n_val=1, spacing=SPACING, seed=1)
    for section, index in (("training", 0), ("training", 1), ("validation", 0)):
        reference, _ = _subject(demo, section, index)
        repeated, _ = _subject(same, section, index)
        changed, _ = _subject(other, section, index)
        for key in reference:
            np.testing.assert_array_equal(reference[key], repeated[key])
        if (section, index) == ("training", 0):  # the template itself
            np.testing.assert_array_equal(reference["t1"], changed["t1"])
        else:
            assert not np.array_equal(reference["t1"], changed["t1"])


def test_refuses_to_overwrite_and_writes_only_inside(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty; pass --overwrite"):
        prepare_demo(out, n_train=1, n_val=0, spacing=4.0)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    prepare_demo(out, n_train=1, n_val=0, spacing=4.0, overwrite=True)
    assert (out / "keep.txt").read_text() == "mine" and (out / "datalist.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary files left
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        prepare_demo(tmp_path / "file", spacing=4.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_train": -1}, "n_train must be a non-negative integer"),
        ({"n_train": 0, "n_val": 0}, "at least one subject"),
        ({"spacing": 0.5}, "spacing must be between 1 and 8"),
        ({"seed": 1.5}, "seed must be a non-negative integer"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        prepare_demo(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_written_files_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        prepare_demo(tmp_path / "out", n_train=1, n_val=0, spacing=4.0)
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert modes and set(modes.values()) == {0o644}, modes  # datalist.json was 0600 (mkstemp)
