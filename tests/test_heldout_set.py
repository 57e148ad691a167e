"""The held-out evaluation set (benchmarks/heldout_set.py): lesion generators on a small synthetic brain, the case
plan, the artefacts, and one coarse end-to-end build that scripts.workflows.evaluation reads."""

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import load_benchmark
from scipy import ndimage as ndi

from una_bundle.scripts.data import labels as ids
from una_bundle.scripts.workflows.evaluation import load_cases

hs = load_benchmark("heldout_set")


@pytest.fixture(scope="module")
def anatomy():
    """A 1.5 mm synthetic brain (72 x 84 x 64 voxels): ellipsoid brain, 4.5 mm cortex, white matter inside, two
    lateral ventricles and a thalamus each side, a CSF rim; x = 0 mm at the midline."""
    shape, spacing = (72, 84, 64), 1.5
    affine = np.diag([spacing] * 3 + [1.0])
    affine[:3, 3] = [-(n - 1) * spacing / 2 for n in shape]
    axes = [affine[i, i] * np.arange(n) + affine[i, 3] for i, n in enumerate(shape)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    radius = np.sqrt((x / 50) ** 2 + (y / 60) ** 2 + (z / 45) ** 2)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[radius < 1.0] = ids.CSF
    right = x >= 0
    labels[(radius < 0.95) & ~right] = ids.LEFT_CEREBRAL_CORTEX
    labels[(radius < 0.95) & right] = ids.RIGHT_CEREBRAL_CORTEX
    inner = radius < 0.85
    labels[inner & ~right] = ids.LEFT_CEREBRAL_WHITE_MATTER
    labels[inner & right] = ids.RIGHT_CEREBRAL_WHITE_MATTER
    sides = ((-1, ids.LEFT_LATERAL_VENTRICLE, ids.LEFT_THALAMUS), (1, ids.RIGHT_LATERAL_VENTRICLE, ids.RIGHT_THALAMUS))
    for side, vent, thal in sides:
        labels[((x - side * 8) / 4) ** 2 + (y / 25) ** 2 + ((z - 8) / 6) ** 2 < 1] = vent
        labels[((x - side * 10) / 6) ** 2 + ((y + 8) / 7) ** 2 + ((z + 6) / 6) ** 2 < 1] = thal
    brain = labels > 0
    wm = np.isin(labels, (2, 41)).astype(np.float32)
    gm = np.isin(labels, (3, 42, 10, 49)).astype(np.float32)
    t1 = (0.35 * (1 - gm - wm) + 0.65 * gm + 0.85 * wm) * brain
    return hs.Anatomy(labels, affine, t1.astype(np.float32), gm, wm)


def _rng(i=0):
    return np.random.default_rng([123, i])


def test_ellipsoid_hits_its_volume_inside_tissue(anatomy):
    mask, params = hs.ellipsoid_lesion(anatomy, _rng(), 3.0)
    volume = mask.sum() * anatomy.voxel_ml
    semi = params["semi_axes_mm"]
    assert 4 / 3 * np.pi * np.prod(semi) / 1000 == pytest.approx(3.0, rel=1e-2)  # semi-axes rounded
    assert 0.5 * 3.0 < volume <= 3.0 * 1.15  # clipped to tissue at most
    assert not (mask & ~anatomy.tissue).any()
    assert ndi.label(mask)[1] >= 1
    again, _ = hs.ellipsoid_lesion(anatomy, _rng(), 3.0)
    assert (again == mask).all()  # seeded


def test_wedge_spans_white_matter_and_cortex_of_one_hemisphere(anatomy):
    for i, target in enumerate((10.0, 40.0)):
        mask, params = hs.wedge_lesion(anatomy, _rng(i), target)
        assert mask.sum() * anatomy.voxel_ml == pytest.approx(target, rel=0.05)
        x = anatomy.axes[0][np.nonzero(mask)[0]]
        assert (x > 0).all() if params["hemisphere"] == "right" else (x < 0).all()
        assert (mask & anatomy.cortex).sum() > 0.1 * mask.sum()  # the cortex itself
        assert (mask & anatomy.wm_mask).sum() > 0.3 * mask.sum()  # and the white matter under it
        depth = ndi.distance_transform_edt(anatomy.brain, sampling=anatomy.spacing)
        assert depth[mask].min() <= 6.0  # reaches the brain's surface (the cortex ends 1.5 voxels in)
        near = ndi.distance_transform_edt(~anatomy.ventricles, sampling=anatomy.spacing)
        assert near[mask].min() <= 15.0  # starts in deep white matter, beside the ventricle
        assert not (mask & ~anatomy.tissue).any()
        assert ndi.label(mask)[1] <= 3  # one wedge (a few clipped corners at most)


def test_periventricular_band_hugs_the_ventricles_in_white_matter(anatomy):
    mask, params = hs.periventricular_lesion(anatomy, _rng(), 8.0)
    assert mask.sum() * anatomy.voxel_ml == pytest.approx(8.0, rel=0.05)
    assert not (mask & ~anatomy.wm_mask).any()
    distance = ndi.distance_transform_edt(~anatomy.ventricles, sampling=anatomy.spacing)
    assert np.median(distance[mask]) < 6.0 and distance[mask].max() < 25.0
    around = (distance > 0) & (distance <= 4.5) & anatomy.wm_mask
    assert 0.2 < (mask & around).sum() / around.sum() < 1.0  # patches, not the whole shell


def test_foci_are_small_balls_in_white_matter(anatomy):
    mask, params = hs.foci_lesion(anatomy, _rng(), 12)
    assert params["count"] == 12 and all(2.0 <= r <= 6.0 for r in params["radii_mm"])
    assert not (mask & ~anatomy.wm_mask).any()
    labelled, n = ndi.label(mask)
    assert 1 <= n <= 12
    largest = np.bincount(labelled.ravel())[1:].max() * anatomy.voxel_ml
    assert mask.sum() * anatomy.voxel_ml <= 12 * 4 / 3 * np.pi * 6.0**3 / 1000
    assert largest < 12 * 1.0


def test_partial_volume_bias_and_rician(anatomy):
    mask, _ = hs.ellipsoid_lesion(anatomy, _rng(), 3.0)
    prob = hs.partial_volume(anatomy, mask)
    assert prob.min() >= 0 and prob.max() <= 1 and (prob[~anatomy.tissue] == 0).all()
    edge = mask & ~ndi.binary_erosion(mask)
    assert 0.5 < prob[edge].mean() < 0.97 and prob[ndi.binary_erosion(mask, iterations=2)].min() > 0.97
    fringe = ndi.binary_dilation(mask) & ~mask & anatomy.tissue
    assert 0.02 < prob[fringe].mean() < 0.5  # soft outside the mask too

    bias = hs.bias_field(anatomy, _rng(1))
    assert np.abs(bias[anatomy.brain] - 1).max() == pytest.approx(0.15, rel=1e-4)
    assert np.abs(np.diff(bias, axis=0)).max() < 0.02  # smooth

    zeros = np.zeros((40, 40, 40), dtype=np.float32)
    noisy = hs.rician(zeros, 0.1, _rng(2))
    assert noisy.mean() == pytest.approx(0.1 * np.sqrt(np.pi / 2), rel=0.02)  # Rayleigh where there is no signal
    bright = hs.rician(zeros + 5.0, 0.1, _rng(2))
    assert bright.mean() == pytest.approx(5.0, rel=0.01) and bright.std() == pytest.approx(0.1, rel=0.05)


def test_t2_like_orders_csf_grey_white(anatomy):
    t2 = hs.t2_like(anatomy, _rng())
    csf = anatomy.brain & ~anatomy.tissue & ~anatomy.ventricles
    means = [float(np.median(t2[m])) for m in (csf, anatomy.cortex, anatomy.wm_mask)]
    assert means[0] > means[1] > means[2] and means[0] == pytest.approx(1.0, rel=0.05)
    assert (t2[~anatomy.brain] == 0).all()


def test_plan_covers_every_generator_and_target():
    cases = hs.plan(4)
    assert len(cases) == 16 and [c["name"] for c in cases[:2]] == ["t1_lesion_00", "t1_lesion_01"]
    for kind in hs.LESION_KINDS:
        assert sorted(c["generator"] for c in cases if c["kind"] == kind) == sorted(hs.GENERATORS)
    for generator in hs.GENERATORS:
        targets = [c["target"] for c in cases if c["generator"] == generator]
        assert sorted(targets) == sorted(hs.TARGETS[generator])  # each target once over the three lesion kinds
    assert all(c["generator"] is None for c in cases if c["kind"] == "t1_healthy")
    lesions = [c["target"] for c in cases if c["generator"] in ("ellipsoid", "wedge")]
    assert min(lesions) < 1.0 and max(lesions) == 200.0


def test_coarse_build_is_read_by_evaluation_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "set"
    cases_file = hs.build_heldout_set(out, n_per_kind=1, spacing=4.0, verbose=False)
    entries = json.loads(cases_file.read_text())
    assert [e["kind"] for e in entries] == list(hs.KINDS)
    cases = load_cases(str(cases_file))
    assert [c["kind"] for c in cases] == list(hs.KINDS)
    assert [c["modality"] for c in cases] == ["t1", "t1", "t1", "t2"]
    manifest = json.loads((out / "heldout.json").read_text())
    assert manifest["seed"] == 9001 and manifest["streams"]["deformation"] == 7
    healthy = next(c for c in cases if c["kind"] == "t1_healthy")
    assert "lesion" not in healthy
    truth = nib.load(healthy["truth"])
    assert truth.shape == (46, 56, 50) and np.allclose(np.diag(truth.affine)[:3], 4.0)
    assert np.array_equal(np.asarray(nib.load(healthy["image"]).dataobj), np.asarray(truth.dataobj))
    mask = np.asarray(nib.load(healthy["mask"]).dataobj) > 0
    for case in cases:
        image = np.asarray(nib.load(case["image"]).dataobj)
        assert image.shape == truth.shape and (image[~mask] == 0).all() and image[mask].mean() > 0.2
        if "lesion" in case:
            lesion = np.asarray(nib.load(case["lesion"]).dataobj) > 0
            assert lesion.any() and not (lesion & ~mask).any()
            info = next(m for m in manifest["cases"] if m["name"] == case["name"])
            assert info["volume_ml"] == pytest.approx(lesion.sum() * 0.064, abs=1e-3)

    t2_file = out / "images" / "t2_lesion_00.nii.gz"
    before = np.asarray(nib.load(t2_file).dataobj).copy()
    with pytest.raises(FileExistsError, match="overwrite"):
        hs.build_heldout_set(out, n_per_kind=1, spacing=4.0, verbose=False)
    hs.build_heldout_set(out, n_per_kind=1, spacing=4.0, overwrite=True, verbose=False)
    assert np.array_equal(np.asarray(nib.load(t2_file).dataobj), before)  # seeded: the same set again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no temporary folders left
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="no heldout.json"):
        hs.build_heldout_set(other, n_per_kind=1, spacing=4.0, overwrite=True, verbose=False)
    assert (other / "mine.txt").read_text() == "keep"


def test_evaluate_heldout_prints_the_per_kind_table(tmp_path, capsys):
    """A perfect model on a coarse set (predictions: the truth and the true lesion): zero L1, Dice 1, no false
    positives, the identity's numbers beside them, and the machine."""
    module = load_benchmark("evaluate_heldout")
    set_dir = tmp_path / "set"
    hs.build_heldout_set(set_dir, n_per_kind=1, spacing=4.0, verbose=False)
    pred = tmp_path / "pred"
    pred.mkdir()
    for case in load_cases(str(set_dir / "cases.json")):
        truth = nib.load(case["truth"])
        nib.save(truth, pred / f"{case['name']}_healthy.nii.gz")
        found = nib.load(case["lesion"]) if "lesion" in case else nib.Nifti1Image(np.zeros(truth.shape), truth.affine)
        nib.save(found, pred / f"{case['name']}_anomaly_mask.nii.gz")
    argv = ["--set_dir", str(set_dir), "--output_dir", str(tmp_path / "eval"), "--predictions", str(pred)]
    assert module.main(argv + ["--kinds", "t1_lesion", "t1_healthy", "t2_lesion"]) == 0
    text = capsys.readouterr().out
    assert "machine:" in text and "cores" in text
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in text.splitlines() if line.startswith("| t")}
    lesion = rows["t1_lesion"]  # kind, n, L1, L1 gain, L1 lesion, SSIM, Dice, false-positive mL
    assert lesion[1] == "1" and lesion[2].startswith("0.000 / ")  # (the identity's: a 0.6 mL lesion, ~0.000 too)
    assert lesion[4].startswith("0.000 / ") and float(lesion[4].split(" / ")[1]) > 0.05  # the lesion is dark
    assert lesion[6] == "1.000" and lesion[7].strip(" |") == "0.0"
    assert rows["t1_healthy"][2] == "0.000 / 0.000" and rows["t1_healthy"][6] == ""
    assert float(rows["t2_lesion"][2].split(" / ")[1]) > 0.1  # a T2 input is far from the T1 truth
    assert "t1_bias_noise" not in rows
    assert "| t1_lesion_00 | t1_lesion | ellipsoid |" in text
    assert (tmp_path / "eval" / "heldout_report.md").read_text().strip() == text.strip()
    assert module.main(argv) == 2  # the metrics exist: refused without --overwrite
    assert "exists" in capsys.readouterr().err
