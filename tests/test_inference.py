"""UNA inference (scripts/workflows, configs/inference.yaml): geometry round trip, bad inputs, CLI == bundle run.

Small synthetic brains (an ellipsoid phantom with three tissue classes, 2.5-3 mm working grid) and tiny networks keep
the whole file well under a minute on 2 CPU cores.
"""

import io
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage as ndi

from una_bundle import BUNDLE_ROOT
from una_bundle.scripts.model.network import UNANet
from una_bundle.scripts.preprocessing.brain import NormalizeBrainIntensityd, detect_modality
from una_bundle.scripts.scoring.anomaly_scoring import AnomalyMaskd
from una_bundle.scripts.workflows import inference, inference_files
from una_bundle.scripts.workflows.inference import infer, run_inference
from una_bundle.scripts.workflows.inference_files import check_bundle_outputs
from una_bundle.tools.cli import main

FAST = {"spacing": [2.5, 2.5, 2.5], "roi_size": [32, 32, 32], "levels": 3, "features": 8}
CONV = {"_target_": "torch.nn.Conv3d", "in_channels": 2, "out_channels": 1, "kernel_size": 1}
OUTPUTS = ("_healthy.nii.gz", "_synthesized.nii.gz", "_anomaly.nii.gz", "_anomaly_mask.nii.gz", "_qc.png", ".json")


def oblique_lps_affine(voxel=(1.2, 1.0, 3.0), degrees=(20.0, 10.0, 0.0), origin=(40.0, -30.0, 12.0)) -> np.ndarray:
    """An LPS-oriented (first two axes reversed), oblique, anisotropic voxel-to-world (RAS mm) matrix."""
    a, b, c = np.radians(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    ry = np.array([[np.cos(c), 0, np.sin(c)], [0, 1, 0], [-np.sin(c), 0, np.cos(c)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ ry @ np.diag([-voxel[0], -voxel[1], voxel[2]])
    affine[:3, 3] = origin
    return affine


def phantom(shape=(44, 52, 18), lesion_voxel=(28, 17, 11), lesion_radius_mm=5.0, affine=None):
    """``(image, affine, lesion centre in world mm)``: CSF/GM/WM shells in an ellipsoid, a bright off-centre lesion."""
    affine = oblique_lps_affine() if affine is None else affine
    axes = [np.linspace(-1, 1, n) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    r = x**2 / 0.85**2 + y**2 / 0.85**2 + z**2 / 0.8**2
    image = np.select([r < 0.15, r < 0.55, r < 1.0], [30.0, 100.0, 60.0], 0.0)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    centre = np.append(np.asarray(lesion_voxel, float), 1.0) @ affine.T
    lesion = (np.linalg.norm(world - centre[:3], axis=1) < lesion_radius_mm).reshape(shape)
    image[lesion] = 180.0
    return image.astype(np.float32), affine, centre[:3]


def save(path, data, affine, dtype=np.float32):
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=dtype), affine), str(path))
    return path


def conv_checkpoint(path, weight=(0.0, 0.0), bias=0.0):
    """A 1x1x1 ``Conv3d(2, 1)`` checkpoint: ``(0, 0)`` outputs zeros, ``(1, 0)`` copies the normalised input; ``bias``
    is added everywhere, outside the brain too (a network's haze)."""
    state = {"weight": torch.tensor(weight, dtype=torch.float32).reshape(1, 2, 1, 1, 1), "bias": torch.tensor([bias])}
    torch.save(state, str(path))
    return path


@pytest.fixture(scope="module")
def unanet_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(UNANet(levels=3, features=8, out_channels=2).state_dict(), str(path))
    return path


@pytest.fixture
def case(tmp_path):
    """An oblique, LPS, 1.2 x 1.0 x 3 mm phantom with a lesion, in its own folder."""
    image, affine, lesion = phantom()
    folder = tmp_path / "in"
    folder.mkdir()
    return save(folder / "sub-01.nii.gz", image, affine), lesion


def world_of_argmax(path):
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    ijk = np.unravel_index(int(np.argmax(data)), data.shape)
    return nib.affines.apply_affine(img.affine, ijk)


def assert_same_grid(path, reference):
    out, ref = nib.load(str(path)), nib.load(str(reference))
    assert out.shape == ref.shape[:3]
    assert np.array_equal(out.affine, ref.affine), (out.affine, ref.affine)


# --- geometry ---------------------------------------------------------------------------------------------------------
def test_anomaly_map_finds_the_lesion_at_its_world_position(case, tmp_path):
    """A network that outputs zeros: the anomaly map is the normalised input, so its maximum is the lesion."""
    path, lesion = case
    ckpt = conv_checkpoint(tmp_path / "zeros.pt", (0.0, 0.0))
    out = tmp_path / "out"
    overrides = {"network_def": CONV, "percentiles": [0.0, 100.0]}
    report = run_inference(path, out, checkpoint=ckpt, overrides=overrides, quiet=True, **FAST)[0]
    for suffix in OUTPUTS:
        assert (out / f"sub-01{suffix}").is_file()
    for suffix in OUTPUTS[:4]:
        assert_same_grid(out / f"sub-01{suffix}", path)
    healthy = nib.load(str(out / "sub-01_healthy.nii.gz"))
    assert healthy.get_data_dtype() == np.float32 and float(np.asarray(healthy.dataobj).max()) == 0.0
    mask = nib.load(str(out / "sub-01_anomaly_mask.nii.gz"))
    assert mask.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    amap = np.asarray(nib.load(str(out / "sub-01_anomaly.nii.gz")).dataobj)
    assert amap.min() >= 0 and amap.max() <= 1 and amap.max() > 0
    # within 2 voxels (the largest voxel is 3 mm) of the lesion centre, in world mm
    assert np.linalg.norm(world_of_argmax(out / "sub-01_anomaly.nii.gz") - lesion) <= 6.0
    # the mask and the report agree: volume = voxels x voxel volume
    voxels = int(np.asarray(mask.dataobj).sum())
    assert report["anomaly_voxels"] == voxels
    assert report["anomaly_volume_ml"] == pytest.approx(voxels * 1.2 * 1.0 * 3.0 / 1000, abs=1e-3)


@pytest.mark.parametrize("spacing", [[1.2, 1.0, 3.0], [2.5, 2.5, 2.5]])
def test_healthy_image_returns_on_the_input_grid(case, tmp_path, spacing):
    """A network that copies its first channel: the synthesis is the normalised input, on the input's grid.

    At the input's own voxel size the working grid only differs by axis order/flips, a crop and a pad, so the round
    trip must be exact; at 2.5 mm the resampling blurs, but the lesion must come back at its world position.
    """
    path, lesion = case
    ckpt = conv_checkpoint(tmp_path / "copy.pt", (1.0, 0.0))
    out = tmp_path / "out"
    overrides = {"network_def": CONV, "percentiles": [0.0, 100.0]}
    report = run_inference(path, out, checkpoint=ckpt, overrides=overrides, quiet=True, **{**FAST, "spacing": spacing})
    result = out / "sub-01_synthesized.nii.gz"
    assert_same_grid(result, path)
    healthy = np.asarray(nib.load(str(result)).dataobj)
    expected = np.asarray(nib.load(str(path)).dataobj) / 180.0
    if spacing == [1.2, 1.0, 3.0]:
        np.testing.assert_allclose(healthy, expected, atol=1e-5)
    assert np.linalg.norm(world_of_argmax(result) - lesion) <= 6.0
    # the synthesis is the input: T1w-like, so NAME_healthy is the lesion-filled scan, in the scan's own units
    # (without an anomaly: the scan itself, voxel for voxel, at any working grid)
    assert report[0]["healthy"] == "filled" and report[0]["anomaly_voxels"] == 0
    scan = np.asarray(nib.load(str(path)).dataobj)
    np.testing.assert_allclose(np.asarray(nib.load(str(out / "sub-01_healthy.nii.gz")).dataobj), scan, atol=1e-4)


def test_integer_4d_ct_input_at_1x1x5_mm(tmp_path):
    """int16, 4D with one volume, 1 x 1 x 5 mm, air at -1000 HU: detected as CT, windowed 0-80 HU, same grid back."""
    image, _, _ = phantom(shape=(40, 44, 10))
    hu = np.where(image > 0, image / 5.0, -1000.0).astype(np.int16)  # tissues 6-36 HU, lesion 36 HU
    affine = np.diag([1.0, 1.0, 5.0, 1.0])
    affine[:3, 3] = (-20.0, -22.0, -25.0)
    path = save(tmp_path / "ct.nii.gz", hu[..., None], affine, np.int16)
    ckpt = conv_checkpoint(tmp_path / "copy.pt", (1.0, 0.0))
    fast = {**FAST, "spacing": [1.0, 1.0, 5.0], "roi_size": [32, 32, 16]}
    report = run_inference(path, tmp_path / "out", checkpoint=ckpt, overrides={"network_def": CONV}, quiet=True, **fast)
    assert report[0]["modality"] == "ct" and report[0]["modality_requested"] == "auto"
    result = nib.load(str(tmp_path / "out" / "ct_healthy.nii.gz"))
    assert result.shape == hu.shape and np.array_equal(result.affine, nib.load(str(path)).affine)
    np.testing.assert_allclose(np.asarray(result.dataobj), np.clip(hu / 80.0, 0, 1), atol=1e-5)


def test_mask_for_an_image_with_skull(tmp_path):
    """A brain mask normalises inside the brain and removes the rest (here a bright skull)."""
    image, affine, _ = phantom(shape=(40, 44, 16))
    brain = image > 0
    padded = np.pad(image, 3)
    skull = (np.pad(brain, 3, constant_values=False) == 0) & (np.pad(np.ones_like(brain), 3) == 0)
    padded[skull] = 250.0  # a bright frame around the brain, as a skull would be
    mask = np.pad(brain, 3).astype(np.uint8)
    path = save(tmp_path / "head.nii.gz", padded, affine)
    mask_path = save(tmp_path / "head_mask.nii.gz", mask, affine, np.uint8)
    ckpt = conv_checkpoint(tmp_path / "copy.pt", (1.0, 0.0))
    fast = {**FAST, "spacing": [1.2, 1.0, 3.0]}
    out = tmp_path / "out"
    overrides = {"network_def": CONV}
    report = run_inference(path, out, mask=mask_path, checkpoint=ckpt, overrides=overrides, quiet=True, **fast)[0]
    assert report["mask"] == str(mask_path.resolve())
    synthesized = np.asarray(nib.load(str(out / "head_synthesized.nii.gz")).dataobj)
    assert float(np.abs(synthesized[mask == 0]).max()) == 0.0  # the skull is gone
    inside = padded[mask > 0]
    high = np.percentile(inside, 99.5)  # percentile 0 of a positive brain: 0 (min(0, minimum)), as in training
    np.testing.assert_allclose(synthesized[mask > 0], np.clip(inside / high, 0, 1), atol=1e-5)
    # the lesion-filled scan keeps everything outside the anomaly, the skull included (a whole-head filled T1w)
    assert report["healthy"] == "filled"
    healthy = np.asarray(nib.load(str(out / "head_healthy.nii.gz")).dataobj)
    np.testing.assert_allclose(healthy[mask == 0], padded[mask == 0])


def test_synthesis_is_zero_outside_the_brain(tmp_path):
    """A network with a haze (+0.2 everywhere): the synthesised T1w, and the healthy output of a T2 input (the
    synthesis), keep it inside the brain mask only; outside it, in the crop box too, they are 0."""
    image, affine, _ = phantom(shape=(40, 44, 16))
    mask = np.pad(image > 0, 3).astype(np.uint8)
    path = save(tmp_path / "t2.nii.gz", np.pad(image, 3), affine)
    mask_path = save(tmp_path / "t2_mask.nii.gz", mask, affine, np.uint8)
    ckpt = conv_checkpoint(tmp_path / "haze.pt", (1.0, 0.0), bias=0.2)
    fast = {**FAST, "spacing": [1.2, 1.0, 3.0]}
    out = tmp_path / "out"
    report = run_inference(
        path, out, mask=mask_path, modality="t2", checkpoint=ckpt, overrides={"network_def": CONV}, quiet=True, **fast
    )[0]
    assert report["healthy"] == "synthesized"
    for name in ("t2_synthesized.nii.gz", "t2_healthy.nii.gz"):
        result = np.asarray(nib.load(str(out / name)).dataobj)
        assert float(np.abs(result[mask == 0]).max()) == 0.0, name
        assert float(result[mask > 0].min()) >= 0.2 - 1e-5, name  # the haze is kept in the brain: only masked


# --- modality and intensity -------------------------------------------------------------------------------------------
def test_auto_modality_and_normalisation():
    image, _, _ = phantom(shape=(24, 24, 12))
    ct = np.where(image > 0, 40.0, -1000.0).astype(np.float32)
    assert detect_modality(ct) == "ct" and detect_modality(image) == "mr"
    t = NormalizeBrainIntensityd("image", modality="auto")
    d = t({"image": MetaTensor(torch.as_tensor(ct)[None])})
    assert d["modality"] == "ct"
    assert torch.allclose(d["image"][0][torch.as_tensor(ct) == 40.0], torch.tensor(0.5))  # window 0-80 HU
    mask = torch.as_tensor(image > 0)[None].float()
    d = t({"image": MetaTensor(torch.as_tensor(image)[None] + 500.0), "mask": mask})
    assert d["modality"] == "mr" and float(d["image"].max()) == 1.0
    assert float(d["image"][mask == 0].abs().max()) == 0.0  # zero outside the given mask
    # percentile 0 means min(0, minimum), as training scales volumes with a zero background: intensities keep their
    # ratios (530 / about 600-680), the darkest brain voxel is not stretched to 0
    assert 0.75 < float(d["image"][mask > 0].min()) < 0.9


# --- bad inputs: a specific error, naming the file, and nothing written -----------------------------------------------
def _bad_inputs(folder):
    image, affine, _ = phantom(shape=(20, 22, 10))
    text = folder / "notes.nii.gz"
    text.write_text("not an image")
    good = save(folder / "good.nii.gz", image, affine)
    truncated = folder / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    nan = image.copy()
    nan[5, 5, 5] = np.nan
    return {
        "not_nifti": (text, None, ValueError, "not a readable NIfTI"),
        "wrong_extension": (_txt(folder), None, ValueError, "not a NIfTI file"),
        "truncated": (truncated, None, ValueError, "not a readable NIfTI"),
        "2d": (save(folder / "slice.nii.gz", image[:, :, 4], affine), None, ValueError, "2D image"),
        "single_slice": (save(folder / "slab.nii.gz", image[:, :, 4:5], affine), None, ValueError, "2D image"),
        "4d": (
            save(folder / "series.nii.gz", np.stack([image] * 3, -1), affine),
            None,
            ValueError,
            "4D with 3 volumes",
        ),
        "zeros": (save(folder / "zeros.nii.gz", np.zeros_like(image), affine), None, ValueError, "all zero"),
        "nan": (save(folder / "nan.nii.gz", nan, affine), None, ValueError, "NaN"),
        "missing": (folder / "absent.nii.gz", None, FileNotFoundError, "not found"),
        "mask_grid": (good, save(folder / "mask.nii.gz", image[:-2] > 0, affine, np.uint8), ValueError, "another grid"),
        "mask_affine": (
            good,
            save(folder / "mask2.nii.gz", image > 0, affine @ np.diag([2.0, 1, 1, 1]), np.uint8),
            ValueError,
            "another grid",
        ),
        "mask_empty": (
            good,
            save(folder / "mask3.nii.gz", np.zeros_like(image), affine, np.uint8),
            ValueError,
            "empty",
        ),
        "zero_affine": (save_sform(folder / "zero.nii.gz", image, np.zeros((4, 4))), None, ValueError, "degenerate"),
        "singular_affine": (  # two parallel columns: voxel sizes fine, determinant 0
            save_sform(folder / "singular.nii.gz", image, affine[:, [0, 0, 2, 3]]),
            None,
            ValueError,
            "degenerate affine",
        ),
        "complex": (save(folder / "c.nii.gz", image + 1j * image, affine, np.complex64), None, ValueError, "complex"),
        "header_lies_gz": (forged_header(folder / "forged.nii.gz", (1200,) * 3), None, ValueError, "header declares"),
        "header_lies_nii": (forged_header(folder / "forged.nii", (64,) * 3), None, ValueError, "truncated or its"),
        "single_voxel": (save(folder / "voxel.nii.gz", image[:1, :1, :1], affine), None, ValueError, "a single voxel"),
    }


def save_sform(path, data, sform):
    """A NIfTI whose only geometry is ``sform`` (qform code 0): nibabel refuses to build one from a singular affine."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(data.shape)
    header.set_sform(sform, code=2)
    header["qform_code"] = 0
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), None, header), str(path))
    return path


def forged_header(path, shape):
    """A few KB file whose header declares ``shape`` float32 voxels (1200^3: 6.9 GB)."""
    import gzip

    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape)
    header.set_sform(np.diag([1.0, 1.0, 1.0, 1.0]), code=2)
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0" * 4 + np.random.default_rng(0).random(1000).astype(np.float32).tobytes()
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def _txt(folder):
    path = folder / "scan.txt"
    path.write_text("1 2 3")
    return path


BAD = (
    "not_nifti wrong_extension truncated 2d single_slice 4d zeros nan missing mask_grid mask_affine mask_empty "
    "zero_affine singular_affine complex header_lies_gz header_lies_nii single_voxel"
).split()


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_is_refused_with_a_specific_error(kind, tmp_path, unanet_ckpt):
    folder = tmp_path / "in"
    folder.mkdir()
    image, mask, error, message = _bad_inputs(folder)[kind]
    out = tmp_path / "out"
    with pytest.raises(error, match=message) as info:
        run_inference(image, out, mask=mask, checkpoint=unanet_ckpt, quiet=True, **FAST)
    named = mask if kind.startswith("mask") else image
    assert str(named) in str(info.value)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("kind", BAD)
def test_cli_reports_a_bad_input_in_one_line_with_exit_code_2(kind, tmp_path, unanet_ckpt, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    image, mask, _, message = _bad_inputs(folder)[kind]
    out = tmp_path / "out"
    argv = ["infer", "--image", str(image), "--output_dir", str(out), "--checkpoint", str(unanet_ckpt), "--quiet"]
    argv += ["--mask", str(mask)] if mask is not None else []
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("una-bundle: error:") and message in err
    assert str(mask if kind.startswith("mask") else image) in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_bundle_run_output_check_refuses_existing_outputs(tmp_path):
    datalist = [{"image": "/data/a.nii.gz"}, {"image": "/data/b.nii"}]
    check_bundle_outputs(datalist, tmp_path / "absent")  # nothing there yet
    (tmp_path / "b_anomaly_mask.nii.gz").write_text("earlier")
    with pytest.raises(FileExistsError, match="b_anomaly_mask.nii.gz"):
        check_bundle_outputs(datalist, tmp_path)
    check_bundle_outputs(datalist, tmp_path, overwrite=True)


# --- anomaly mask and threshold ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("voxel_mm", [1.0, 2.0])
def test_anomaly_mask_drops_components_below_27_mm3_on_any_grid(voxel_mm):
    """Two blobs above the threshold: one of 32 mm^3 (kept) and one of 24 mm^3 (dropped), at 1 and 2 mm voxels."""
    amap = torch.zeros(1, 20, 20, 20)
    if voxel_mm == 1.0:
        amap[0, 2:6, 2:6, 2:4] = 0.5  # 32 voxels
        amap[0, 10:14, 10:13, 10:12] = 0.5  # 24 voxels
    else:
        amap[0, 2:4, 2:4, 2:3] = 0.5  # 4 voxels of 8 mm^3
        amap[0, 10:13, 10:11, 10:11] = 0.5  # 3 voxels
    d = {"anomaly": MetaTensor(amap, affine=torch.diag(torch.tensor([voxel_mm] * 3 + [1.0]))), "t": 0.1}
    brain = torch.ones(1, 20, 20, 20)
    mask = AnomalyMaskd("anomaly", mask_key="brain", threshold_key="t")({**d, "brain": brain})["anomaly_mask"]
    assert mask.dtype == torch.uint8 and int(mask.sum()) == (32 if voxel_mm == 1.0 else 4)
    assert int(mask[0, 2, 2, 2]) == 1 and int(mask[0, 10, 10, 10]) == 0
    keep_all = AnomalyMaskd("anomaly", mask_key=None, threshold_key="t", min_component_mm3=0)(d)["anomaly_mask"]
    assert int(keep_all.sum()) == int((amap > 0.1).sum())


def test_threshold_comes_from_the_config(case, tmp_path, unanet_ckpt):
    path, _ = case
    reports = {}
    difference = {"anomaly_source": "difference"}  # the difference map's threshold (the head has its own)
    for name, overrides in (
        ("fixed", {**difference, "threshold": 0.2}),
        ("otsu", {**difference, "threshold_method": "otsu"}),
    ):
        run_inference(path, tmp_path / name, checkpoint=unanet_ckpt, overrides=overrides, quiet=True, **FAST)
        reports[name] = json.loads((tmp_path / name / "sub-01.json").read_text())
    assert reports["fixed"]["threshold"] == pytest.approx(0.2)
    assert reports["otsu"]["threshold"] != pytest.approx(0.2) and reports["otsu"]["threshold"] > 0
    amap = np.asarray(nib.load(str(tmp_path / "fixed" / "sub-01_anomaly.nii.gz")).dataobj)
    mask = np.asarray(nib.load(str(tmp_path / "fixed" / "sub-01_anomaly_mask.nii.gz")).dataobj)
    assert not mask[amap <= 0.2].any()  # the mask never holds a voxel at or below the threshold


def head_checkpoint(path, gain=20.0, bias=-15.0):
    """A 1x1x1 ``Conv3d(2, 2)`` checkpoint: channel 0 (healthy) = 0.4 everywhere, channel 1 (anomaly logits) =
    ``gain`` x input + ``bias``, so the head's probability is high only on the brightest (lesion) voxels."""
    weight = torch.tensor([[0.0, 0.0], [gain, 0.0]], dtype=torch.float32).reshape(2, 2, 1, 1, 1)
    torch.save({"weight": weight, "bias": torch.tensor([0.4, bias])}, str(path))
    return path


def test_anomaly_head_gives_the_map_its_threshold_and_the_healthy_choice(case, tmp_path):
    path, lesion = case
    ckpt = head_checkpoint(tmp_path / "head.pt")
    head = {"network_def": {**CONV, "out_channels": 2}, "percentiles": [0.0, 100.0], "head_threshold": 0.7}
    head["head_gate"] = None  # the head's own map (the gate: the next test)
    reports = {}
    for modality in ("t1", "t2"):
        out = tmp_path / modality
        reports[modality] = run_inference(
            path, out, modality=modality, checkpoint=ckpt, overrides=head, quiet=True, **FAST
        )[0]
    out = tmp_path / "t1"
    amap = np.asarray(nib.load(str(out / "sub-01_anomaly.nii.gz")).dataobj)
    mask = np.asarray(nib.load(str(out / "sub-01_anomaly_mask.nii.gz")).dataobj)
    assert reports["t1"]["threshold"] == pytest.approx(0.7) and not reports["t1"]["anomaly_gated"]
    assert np.linalg.norm(world_of_argmax(out / "sub-01_anomaly.nii.gz") - lesion) <= 6.0
    assert mask.any() and not mask[amap <= 0.7].any()
    # the lesion (~0.5 mL) and nothing of the brain's tissue: the head's sigmoid is ~0 below the lesion intensity
    assert 0 < reports["t1"]["anomaly_volume_ml"] < 1.5
    # T1w input: the healthy output is the lesion-filled input, the synthesis is written beside it; T2: the synthesis
    assert reports["t1"]["healthy"] == "filled" and reports["t2"]["healthy"] == "synthesized"
    healthy = {m: np.asarray(nib.load(str(tmp_path / m / "sub-01_healthy.nii.gz")).dataobj) for m in ("t1", "t2")}
    synth = np.asarray(nib.load(str(out / "sub-01_synthesized.nii.gz")).dataobj)
    assert np.allclose(healthy["t2"], synth, atol=1e-6)
    assert not np.allclose(healthy["t1"], synth, atol=1e-3)
    # filled: the input itself where healthy (its own grid and units: exact, though the working grid is 2.5 mm) ...
    image = np.asarray(nib.load(str(path)).dataobj)
    region = (image == 100.0) & (ndi.maximum_filter(amap, 3) <= 0.5)  # no blend weight there (floor 0.5, rim 1)
    assert region.sum() > 100 and np.array_equal(healthy["t1"][region], image[region])
    # ... and in the bright lesion the (flat) synthesis, matched to the healthy brain's mean: much darker than 180
    assert healthy["t1"][mask > 0].mean() < image[mask > 0].mean() - 0.3 * image.max()


def test_difference_gate_applies_to_t1w_inputs_only(case, tmp_path):
    path, _ = case
    ckpt = head_checkpoint(tmp_path / "head.pt")
    head = {"network_def": {**CONV, "out_channels": 2}, "percentiles": [0.0, 100.0], "head_threshold": 0.7}
    head.update(head_gate=0.2, head_gate_threshold=0.6)
    reports = {
        m: run_inference(path, tmp_path / m, modality=m, checkpoint=ckpt, overrides=head, quiet=True, **FAST)[0]
        for m in ("t1", "t2")
    }
    assert reports["t1"]["anomaly_gated"] and reports["t1"]["threshold"] == pytest.approx(0.6)
    assert not reports["t2"]["anomaly_gated"] and reports["t2"]["threshold"] == pytest.approx(0.7)
    gated = np.asarray(nib.load(str(tmp_path / "t1" / "sub-01_anomaly.nii.gz")).dataobj)
    plain = np.asarray(nib.load(str(tmp_path / "t2" / "sub-01_anomaly.nii.gz")).dataobj)
    assert (gated <= plain + 1e-6).all() and gated.sum() < plain.sum()  # gating only lowers the head's map


def test_existing_output_is_refused_unless_overwrite(case, tmp_path, unanet_ckpt):
    path, _ = case
    out = tmp_path / "out"
    out.mkdir()
    old = out / "sub-01_healthy.nii.gz"
    old.write_text("earlier result")
    with pytest.raises(FileExistsError, match="sub-01_healthy.nii.gz"):
        run_inference(path, out, checkpoint=unanet_ckpt, quiet=True, **FAST)
    assert sorted(p.name for p in out.iterdir()) == [old.name] and old.read_text() == "earlier result"
    run_inference(path, out, checkpoint=unanet_ckpt, overwrite=True, quiet=True, **FAST)
    assert_same_grid(old, path)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"sub-01{s}" for s in OUTPUTS)


def test_unwritable_output_folder(case, tmp_path, unanet_ckpt, monkeypatch):
    path, _ = case
    out = tmp_path / "readonly"
    out.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: make the permission check say no
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(out) else real_access(p, mode))
    else:
        out.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            run_inference(path, out, checkpoint=unanet_ckpt, quiet=True, **FAST)
    finally:
        out.chmod(0o755)
    assert not any(out.iterdir())


def test_output_folder_must_not_be_the_input_folder(case, unanet_ckpt):
    path, _ = case
    with pytest.raises(ValueError, match="folder of the input"):
        run_inference(path, path.parent, checkpoint=unanet_ckpt, quiet=True, **FAST)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_missing_checkpoint_says_how_to_get_one(case, tmp_path):
    path, _ = case
    missing = tmp_path / "models" / "model.pt"
    with pytest.raises(FileNotFoundError, match="checkpoint not found") as info:
        run_inference(path, tmp_path / "out", checkpoint=missing, quiet=True, **FAST)
    assert str(missing) in str(info.value) and "train" in str(info.value)
    assert not any((tmp_path / "out").iterdir())


def test_checkpoint_of_another_network_is_refused(case, tmp_path, unanet_ckpt):
    path, _ = case
    with pytest.raises(ValueError, match="levels=3, features=8, out_channels=2 in the checkpoint"):
        run_inference(path, tmp_path / "out", checkpoint=unanet_ckpt, quiet=True, **{**FAST, "levels": 2})
    assert not any((tmp_path / "out").iterdir())


def test_failed_case_leaves_nothing_and_earlier_cases_stay_complete(tmp_path, unanet_ckpt, monkeypatch, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, lesion in (("a", (28, 17, 11)), ("b", (14, 30, 6))):
        image, affine, _ = phantom(lesion_voxel=lesion)
        save(folder / f"{name}.nii.gz", image, affine)
    real_figure = inference.qc_figure

    def failing_figure(work, spacing, title, path):
        if title.startswith("b.nii.gz"):
            path.write_bytes(b"half a png")
            raise OSError("disk full")
        real_figure(work, spacing, title, path)

    monkeypatch.setattr(inference, "qc_figure", failing_figure)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        run_inference(folder, out, checkpoint=unanet_ckpt, quiet=False, **FAST)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"a{s}" for s in OUTPUTS)  # no b files, no temporaries
    assert "[1/2] a.nii.gz" in capsys.readouterr().err


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_folder_progress_on_a_terminal_only(tmp_path, unanet_ckpt, monkeypatch):
    """Item 18: a line when the model is ready and per case (cases done, time, time left) on a terminal, none on a
    pipe or file (quiet=None, the default of una-bundle infer and of the demo)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name, lesion in (("a", (28, 17, 11)), ("b", (14, 30, 6))):
        image, affine, _ = phantom(lesion_voxel=lesion)
        save(folder / f"{name}.nii.gz", image, affine)
    for stream, out in ((_Terminal(), tmp_path / "tty"), (io.StringIO(), tmp_path / "pipe")):
        monkeypatch.setattr(sys, "stderr", stream)
        # a threshold the untrained network's head never reaches: no "implausible anomaly" warning among the lines
        run_inference(folder, out, checkpoint=unanet_ckpt, qc=False, overrides={"head_threshold": 0.999}, **FAST)
        monkeypatch.undo()
        lines = stream.getvalue().splitlines()
        if isinstance(stream, _Terminal):
            assert lines[0].startswith(f"2 case(s) into {out} (model ready in"), lines
            assert lines[1].startswith("[1/2] a.nii.gz: ") and " left -> " in lines[1], lines
            assert lines[2].startswith("[2/2] b.nii.gz: ") and "left" not in lines[2] and len(lines) == 3, lines
        else:
            assert lines == [], lines


# --- one definition: the CLI function and `python -m monai.bundle run` agree ------------------------------------------
def test_cli_and_bundle_run_give_the_same_healthy_image(case, tmp_path, unanet_ckpt):
    path, _ = case
    cli_out, bundle_out = tmp_path / "cli", tmp_path / "bundle"
    reports = infer(str(path), str(cli_out), checkpoint=str(unanet_ckpt), quiet=True, **FAST)
    assert reports == [str((cli_out / "sub-01.json").resolve())]
    report = json.loads((cli_out / "sub-01.json").read_text())
    assert report["modality"] == "mr" and report["modality_requested"] == "auto"
    assert isinstance(report["threshold"], float) and report["model"]["levels"] == 3
    assert len(report["model"]["checkpoint_sha256"]) == 64
    assert {"preprocessing", "inference", "postprocessing", "total"} <= set(report["timings_s"])
    assert "FlipRegisterd" in report["timings_s"]["preprocessing"]

    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE_ROOT / "configs/inference.yaml")]
    cmd += ["--bundle_root", str(BUNDLE_ROOT), "--dataset_dir", str(path.parent)]
    cmd += ["--output_dir", str(bundle_out), "--ckpt_path", str(unanet_ckpt)]
    for key, value in FAST.items():
        cmd += [f"--{key}", str(value)]
    env = dict(os.environ, PYTHONPATH=str(BUNDLE_ROOT))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for suffix in OUTPUTS[:4]:
        ours, theirs = nib.load(str(cli_out / f"sub-01{suffix}")), nib.load(str(bundle_out / f"sub-01{suffix}"))
        assert ours.shape == theirs.shape == nib.load(str(path)).shape
        assert np.allclose(ours.affine, theirs.affine, atol=1e-5)
        assert np.allclose(np.asarray(ours.dataobj), np.asarray(theirs.dataobj), atol=1e-5)
    assert float(np.asarray(nib.load(str(cli_out / "sub-01_healthy.nii.gz")).dataobj).std()) > 0  # not trivial

    # a second bundle run into the same folder refuses before running, naming the file, and changes nothing
    before = (bundle_out / "sub-01_healthy.nii.gz").stat().st_mtime_ns
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "output exists" in again.stderr and "sub-01_healthy.nii.gz" in again.stderr
    assert (bundle_out / "sub-01_healthy.nii.gz").stat().st_mtime_ns == before


def test_best_model_checkpoint_of_training_loads_directly(case, tmp_path, unanet_ckpt):
    """Training's models/model.pt (CheckpointSaver with the key metric) also holds ignite's "checkpointer" state."""
    path, _ = case
    state = torch.load(unanet_ckpt, weights_only=True)
    state = state.get("model", state)
    best = tmp_path / "model.pt"
    torch.save({**state, "checkpointer": {"saved": [(0.1, "model.pt")]}}, best)
    plain = run_inference(path, tmp_path / "plain", checkpoint=unanet_ckpt, quiet=True, qc=False, **FAST)
    mixed = run_inference(path, tmp_path / "best", checkpoint=best, quiet=True, qc=False, **FAST)
    read = [np.asarray(nib.load(reports[0]["outputs"]["healthy"]).dataobj) for reports in (plain, mixed)]
    assert np.array_equal(read[0], read[1])


# --- outputs: umask, exclusive claim, stale temporaries, unusable output folders -------------------------------------
def test_outputs_follow_the_umask(case, tmp_path, unanet_ckpt):
    path, _ = case
    previous = os.umask(0o027)
    try:
        run_inference(path, tmp_path / "out", checkpoint=unanet_ckpt, quiet=True, **FAST)
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()}
    assert modes == {f"sub-01{s}": 0o640 for s in OUTPUTS}


def test_a_second_run_into_a_claimed_output_dir_fails_at_once(case, tmp_path, unanet_ckpt, monkeypatch):
    """Another live process (a real one) holds output_dir: refused before the pipeline is even built."""
    path, _ = case
    out = tmp_path / "out"
    out.mkdir()
    code = (
        "import time; from una_bundle.scripts.data.atomic_io import claim_folder; "
        f"c = claim_folder({str(out)!r}); print('claimed', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    monkeypatch.setattr(inference, "load_pipeline", lambda *a, **k: pytest.fail("ran although output_dir is in use"))
    try:
        assert holder.stdout.readline().strip() == "claimed"
        with pytest.raises(FileExistsError, match=f"output_dir {out} is in use by another run \\(pid {holder.pid}"):
            run_inference(path, out, checkpoint=unanet_ckpt, quiet=True, overwrite=True, **FAST)
        argv = ["infer", "--image", str(path), "--output_dir", str(out), "--checkpoint", str(unanet_ckpt)]
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert [p.name for p in out.iterdir()] == [".una.lock"]  # the killed holder's file; nothing of ours
    monkeypatch.undo()
    run_inference(path, out, checkpoint=unanet_ckpt, quiet=True, **FAST)  # the holder's death released it
    assert sorted(p.name for p in out.iterdir()) == sorted(f"sub-01{s}" for s in OUTPUTS)


def test_temporaries_of_a_killed_run_are_removed_with_a_message(case, tmp_path, unanet_ckpt, capsys):
    """A run SIGKILLed while writing its outputs leaves hidden temporaries; the next run removes them and says so."""
    path, _ = case
    out = tmp_path / "out"
    code = f"""
import os, signal
from una_bundle.scripts.workflows import inference
def killed(work, spacing, title, path):
    path.write_bytes(b"half a png")
    os.kill(os.getpid(), signal.SIGKILL)
inference.qc_figure = killed
inference.run_inference({str(path)!r}, {str(out)!r}, checkpoint={str(unanet_ckpt)!r}, quiet=True, **{FAST!r})
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    left = sorted(p.name for p in out.iterdir())
    assert left and all(name.startswith(".") for name in left)  # nothing under a final name
    temps = [name for name in left if name != ".una.lock"]
    assert len(temps) >= 2 and all(name.startswith(".sub-01") for name in temps)
    run_inference(path, out, checkpoint=unanet_ckpt, quiet=True, **FAST)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"sub-01{s}" for s in OUTPUTS)
    err = capsys.readouterr().err
    assert f"removed {len(temps)} temporary file(s) of an interrupted run from {out}" in err


def test_output_dir_under_a_regular_file_is_one_line(case, tmp_path, unanet_ckpt, capsys):
    path, _ = case
    blocker = tmp_path / "results"
    blocker.write_text("a file, not a folder")
    for out in (blocker, blocker / "sub"):
        with pytest.raises(SystemExit) as info:
            main(["infer", "--image", str(path), "--output_dir", str(out), "--checkpoint", str(unanet_ckpt)])
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
        assert f"output_dir {out} exists and is not a folder" in err and "choose another" in err
    assert blocker.read_text() == "a file, not a folder"


def test_read_only_output_dir_is_one_line(case, tmp_path, unanet_ckpt, capsys, monkeypatch):
    """A read-only file system (EROFS; root ignores permissions, so it is simulated): one line, exit code 2."""
    import errno

    path, _ = case
    mount = tmp_path / "ro"
    mount.mkdir()
    real_mkdir, real_open = os.mkdir, os.open

    def read_only(real):
        def call(target, *args, **kwargs):
            if str(target).startswith(str(mount)):
                raise OSError(errno.EROFS, "Read-only file system", str(target))
            return real(target, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "mkdir", read_only(real_mkdir))
    monkeypatch.setattr(os, "open", read_only(real_open))
    for out in (mount, mount / "new"):
        with pytest.raises(SystemExit) as info:
            main(["infer", "--image", str(path), "--output_dir", str(out), "--checkpoint", str(unanet_ckpt)])
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
        assert f"output folder {out} is not writable (Read-only file system)" in err


def test_check_inputd_rejects_a_degenerate_affine_and_complex_values_naming_the_file():
    """The bundle run's check (after LoadImaged): same rules as the API's."""
    from una_bundle.scripts.preprocessing.input_checks import CheckInputd

    image, affine, _ = phantom(shape=(12, 14, 10))

    def meta():
        return {"filename_or_obj": "/data/scan.nii.gz"}

    CheckInputd(keys="image")({"image": MetaTensor(torch.from_numpy(image)[None], affine=affine, meta=meta())})
    singular = affine[:, [0, 0, 2, 3]]
    for bad_affine in (np.zeros((4, 4)), singular):
        bad = MetaTensor(torch.from_numpy(image)[None], affine=torch.as_tensor(bad_affine), meta=meta())
        with pytest.raises(ValueError, match="image: /data/scan.nii.gz has a degenerate affine"):
            CheckInputd(keys="image")({"image": bad})
    complex_image = MetaTensor(torch.from_numpy(image + 1j * image)[None], affine=affine, meta=meta())
    with pytest.raises(ValueError, match="image: /data/scan.nii.gz holds complex values"):
        CheckInputd(keys="image")({"image": complex_image})


# --- command line and input folders ----------------------------------------------------------------------------------
def test_cli_refusal_of_existing_outputs_names_the_overwrite_flag(case, tmp_path, unanet_ckpt, capsys):
    path, _ = case
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub-01_healthy.nii.gz").write_text("an earlier result")
    with pytest.raises(SystemExit) as info:
        main(["infer", "--image", str(path), "--output_dir", str(out), "--checkpoint", str(unanet_ckpt)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "output exists (pass --overwrite, or overwrite=True in Python, to replace it)" in err
    assert str(out / "sub-01_healthy.nii.gz") in err


def test_masks_and_label_maps_in_an_input_folder_are_skipped_and_listed(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    image, affine, _ = phantom()
    save(folder / "sub-01_T1w.nii.gz", image, affine)
    skipped = ["sub-01_desc-brain_mask.nii.gz", "aparc+aseg.nii.gz", "sub-01_label-WM_probseg.nii", "lesion.nii.gz"]
    for name in skipped:
        save(folder / name, image > image.mean(), affine, np.uint8)
    assert inference_files.collect_images(folder) == [folder / "sub-01_T1w.nii.gz"]
    err = capsys.readouterr().err
    assert f"image: skipped 4 file(s) in {folder} named like masks or label maps: " in err
    assert all(name in err for name in skipped) and err.count("\n") == 1
    assert inference_files.datalist_from_folder(folder) == [{"image": str(folder / "sub-01_T1w.nii.gz")}]  # bundle run
    explicit = [folder / skipped[0], folder]
    assert inference_files.collect_images(explicit) == explicit[:1] + [folder / "sub-01_T1w.nii.gz"]  # named: processed
    (folder / "sub-01_T1w.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"no .nii or .nii.gz scans in folder .* \(4 skipped as masks"):
        inference_files.collect_images(folder)


@pytest.mark.parametrize(
    "name, skipped",
    [("sub-01_T1w", False), ("flair", False), ("segment_3", False), ("unmasked_t2", False), ("brainmask", True)]
    + [("T1_seg", True), ("sub-02_dseg", True), ("wmh", True), ("ROI.lesion", True), ("sub-01_mask_1", True)],
)
def test_which_names_look_like_masks_or_label_maps(name, skipped):
    assert bool(inference_files.NOT_A_SCAN.search(name)) is skipped


def test_bundle_run_folder_inputs_have_their_headers_checked_before_any_data_is_read(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    image, affine, _ = phantom(shape=(12, 14, 10))
    save(folder / "a.nii.gz", image, affine)
    assert inference_files.datalist_from_folder(folder) == [{"image": str(folder / "a.nii.gz")}]
    forged = forged_header(folder / "b.nii.gz", (1200,) * 3)

    def no_data(*args, **kwargs):
        pytest.fail("data read before the header was checked")

    for name in ("__array__", "get_unscaled", "__getitem__"):
        monkeypatch.setattr(nib.arrayproxy.ArrayProxy, name, no_data)
    with pytest.raises(ValueError, match=f"image: {forged}: the header declares 1200x1200x1200 voxels of float32"):
        inference_files.datalist_from_folder(folder)


def test_an_input_that_does_not_look_like_a_brain_is_flagged(case, tmp_path, capsys):
    """Pure noise: the head (here: fires on any bright voxel) flags most of the 'brain'; the report and the console
    say the input does not look like a brain scan. The phantom with its small lesion gets no warning."""
    path, _ = case
    noise = np.random.default_rng(0).uniform(50, 200, nib.load(str(path)).shape).astype(np.float32)
    noisy = save(tmp_path / "in" / "noise.nii.gz", noise, nib.load(str(path)).affine)
    ckpt = head_checkpoint(tmp_path / "head.pt", bias=-12.5)  # fires above 5/8 of the range: the lesion, not tissue
    head = {"network_def": {**CONV, "out_channels": 2}, "percentiles": [0.0, 100.0]}
    reports = run_inference([path, noisy], tmp_path / "out", checkpoint=ckpt, overrides=head, **FAST)
    by_name = {r["input"].rsplit("/", 1)[-1]: r for r in reports}
    assert by_name["sub-01.nii.gz"]["warnings"] == []
    warning = by_name["noise.nii.gz"]["warnings"]
    assert len(warning) == 1 and "% of the brain" in warning[0] and "skull-stripped brain scan" in warning[0]
    err = capsys.readouterr().err
    assert "una-bundle: warning:" in err and "noise.nii.gz" in err
