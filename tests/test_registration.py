"""Flip registration (symmetry input): known motions recovered, the matrix convention, the dictionary transform."""

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from monai.data import MetaTensor

from una_bundle.scripts.preprocessing import registration
from una_bundle.scripts.preprocessing.registration import (
    FlipRegisterd,
    apply_flip_registration,
    flip_matrix,
    register_flip,
)

VOXEL_MM = 4.0


@pytest.fixture(scope="module")
def symmetric_brain() -> np.ndarray:
    """The (exactly left-right symmetric) MNI152 2009 template at 4 mm, mirror plane on the grid's centre plane."""
    from nilearn.datasets import load_mni152_template  # shipped with nilearn: no download

    t1 = load_mni152_template(resolution=1).get_fdata().astype(np.float32)  # symmetric about x index 98
    smooth = ndi.gaussian_filter(t1, 1.5)
    # level voxel j -> 1 mm voxel 4 j + offset; x offset 2 puts j = 24 (of 49) on index 98
    return ndi.affine_transform(
        smooth, np.full(3, VOXEL_MM), offset=(2.0, 4.0, 4.0), output_shape=(49, 56, 45), order=1
    )


def _rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i] = r[j, j] = np.cos(a)
    r[i, j], r[j, i] = -np.sin(a), np.sin(a)
    return r


def _moved(volume: np.ndarray, shift, angles) -> tuple[np.ndarray, np.ndarray]:
    """``(I, A)`` with ``I(x) = T(A x)``: ``volume`` rotated about its centre and shifted (voxels)."""
    r = _rotation(0, angles[0]) @ _rotation(1, angles[1]) @ _rotation(2, angles[2])
    centre = (np.array(volume.shape) - 1) / 2
    a = np.eye(4)
    a[:3, :3] = r
    a[:3, 3] = centre - r @ centre + np.asarray(shift)
    return ndi.affine_transform(volume, a[:3, :3], offset=a[:3, 3], order=1).astype(np.float32), a


def _ncc(a, b, mask) -> float:
    a, b = np.asarray(a)[mask], np.asarray(b)[mask]
    return float(np.corrcoef(a, b)[0, 1])


def test_convention_flip_then_voxel_shift():
    """``R(x) = F(M x)`` with ``F = torch.flip(I, [lr_axis])``: identity gives the flip, a translation shifts it."""
    image = torch.rand(2, 9, 8, 7)
    assert torch.allclose(apply_flip_registration(image, torch.eye(4)), torch.flip(image, [1]), atol=1e-5)
    m = torch.eye(4, dtype=torch.float64)
    m[:3, 3] = torch.tensor([2.0, -1.0, 3.0])
    out = apply_flip_registration(image, m, lr_axis=1)
    flipped = torch.flip(image, [2])
    assert torch.allclose(out[:, :7, 1:, :4], flipped[:, 2:, :7, 3:], atol=1e-6)
    assert torch.all(out[:, 7:] == 0)  # sampled outside the grid
    for c in range(2):  # every channel gets the same transform
        assert torch.allclose(out[c], apply_flip_registration(image[c], m, lr_axis=1), atol=1e-6)
    assert torch.equal(flip_matrix((9, 8, 7), 1) @ flip_matrix((9, 8, 7), 1), torch.eye(4, dtype=torch.float64))


def test_recovers_known_flip_shift_rotation(symmetric_brain):
    image, a = _moved(symmetric_brain, shift=(2.3, -1.6, 0.7), angles=(3.0, 6.0, 5.0))
    mask = image > 0.1 * image.max()
    s = flip_matrix(image.shape, 0).numpy()
    expected = s @ np.linalg.inv(a) @ s @ a  # I(x) = T(A x), T = T o S  =>  F(M x) = I(x) for M = S A^-1 S A
    matrix = register_flip(torch.from_numpy(image), torch.from_numpy(mask), spacing=(VOXEL_MM,) * 3, levels_mm=(8, 4))
    assert matrix.dtype == torch.float64 and matrix.shape == (4, 4)
    points = np.c_[np.argwhere(mask), np.ones(mask.sum())]
    error = np.linalg.norm(points @ (matrix.numpy() - expected).T, axis=1)  # voxels
    assert error.max() < 0.25, error.max()
    before = np.linalg.norm(points @ (np.eye(4) - expected).T, axis=1)
    assert before.mean() > 3  # the task is not trivial: the plain flip is voxels away
    flipped = apply_flip_registration(torch.from_numpy(image), matrix)
    assert _ncc(flipped, image, mask) > 0.99
    assert _ncc(flipped, image, mask) > _ncc(torch.flip(torch.from_numpy(image), [0]), image, mask) + 0.05


def test_rigid_without_mask_and_other_axis(symmetric_brain):
    """No mask (intensity centre of mass), rigid model, left-right along axis 1 of an anisotropic grid."""
    image, a = _moved(symmetric_brain, shift=(-1.8, 0.6, -0.9), angles=(2.0, -5.0, 7.0))
    s = flip_matrix(image.shape, 0).numpy()
    expected = s @ np.linalg.inv(a) @ s @ a
    perm = np.eye(4)[[1, 0, 2, 3]]  # swap axes 0 and 1 of the array and of the matrix
    swapped = torch.from_numpy(image.transpose(1, 0, 2).copy())
    matrix = register_flip(swapped, lr_axis=1, transform="rigid", spacing=(VOXEL_MM,) * 3).numpy()
    mask = image.transpose(1, 0, 2) > 0.1 * image.max()
    points = np.c_[np.argwhere(mask), np.ones(mask.sum())]
    error = np.linalg.norm(points @ (matrix - perm @ expected @ perm).T, axis=1)
    assert error.max() < 0.25, error.max()
    linear = matrix[:3, :3]
    assert np.allclose(linear @ linear.T, np.eye(3), atol=1e-6)  # rigid: orthonormal


def test_symmetric_centred_image_gives_identity(symmetric_brain):
    image = torch.from_numpy(symmetric_brain)
    assert torch.equal(image, torch.flip(image, [0]))  # the fixture is exactly symmetric
    matrix = register_flip(image[None], spacing=(VOXEL_MM,) * 3)
    mask = symmetric_brain > 0.1 * symmetric_brain.max()
    points = torch.from_numpy(np.c_[np.argwhere(mask), np.ones(mask.sum())])
    assert (points @ (matrix - torch.eye(4, dtype=torch.float64)).T).norm(dim=1).max() < 0.1
    out = apply_flip_registration(image, matrix)
    assert (out - image).abs().max() < 0.02 * image.max()


def _meta_image(volume: np.ndarray, name: str = "sub-01_T1w.nii.gz") -> MetaTensor:
    affine = torch.diag(torch.tensor([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0], dtype=torch.float64))
    affine[:3, 3] = torch.tensor([-98.0, -130.0, -70.0])
    return MetaTensor(torch.from_numpy(volume)[None], affine=affine, meta={"filename_or_obj": name})


def test_flipregisterd_outputs_cache_and_precomputed(symmetric_brain, tmp_path, monkeypatch):
    image, _ = _moved(symmetric_brain, shift=(1.7, 0.0, 0.0), angles=(0.0, 0.0, 4.0))
    labels = (image > 0.3 * image.max()).astype(np.int64)
    other = tmp_path / "notes.txt"
    other.write_text("keep me")
    transform = FlipRegisterd(["image", "label"], mode=["bilinear", "nearest"], cache_dir=tmp_path, max_iter=15)
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return register_flip(*args, **kwargs)

    monkeypatch.setattr(registration, "register_flip", counting)
    data = {"image": _meta_image(image), "label": _meta_image(labels)}
    out = transform(data)
    assert len(calls) == 1
    for key in ("image", "label"):
        flipped = out[f"{key}_flip"]
        assert isinstance(flipped, MetaTensor) and flipped.shape == data[key].shape
        assert torch.equal(flipped.affine, data[key].affine) and flipped.dtype == data[key].dtype
        assert flipped.meta["filename_or_obj"] == data[key].meta["filename_or_obj"]
    matrix = out["flip_matrix"]
    assert matrix.shape == (4, 4) and matrix.dtype == torch.float64
    assert torch.allclose(out["image_flip"], apply_flip_registration(data["image"], matrix))
    assert set(torch.unique(out["label_flip"]).tolist()) <= {0, 1}
    mask = image > 0.1 * image.max()
    assert _ncc(out["image_flip"][0], image, mask) > 0.99

    cached = list(tmp_path.glob("flipreg_*.npy"))
    assert len(cached) == 1 and other.read_text() == "keep me"
    assert np.array_equal(np.load(cached[0]), matrix.numpy())

    # second call: same content -> read from the cache, no registration
    again = transform({"image": _meta_image(image), "label": _meta_image(labels)})
    assert len(calls) == 1
    assert torch.equal(again["flip_matrix"], matrix) and torch.equal(again["image_flip"], out["image_flip"])
    # changed content -> a new registration and a second cache file, the first one untouched
    transform({"image": _meta_image(np.roll(image, 1, axis=1)), "label": _meta_image(labels)})
    assert len(calls) == 2 and len(list(tmp_path.glob("flipreg_*.npy"))) == 2
    assert np.array_equal(np.load(cached[0]), matrix.numpy())

    # a precomputed matrix in the data dict wins over registration and cache
    shift = torch.eye(4, dtype=torch.float64)
    shift[0, 3] = 3.0
    given = transform({"image": _meta_image(image), "label": _meta_image(labels), "flip_matrix": shift.numpy()})
    assert len(calls) == 2
    assert torch.equal(given["flip_matrix"], shift)
    assert torch.allclose(given["image_flip"], apply_flip_registration(_meta_image(image), shift))


def test_flipregisterd_auto_axis_and_filename_hash(tmp_path, monkeypatch):
    volume = torch.rand(1, 6, 7, 5)
    affine = torch.tensor([[0.0, -1.0, 0.0, 3.0], [1.0, 0.0, 0.0, -2.0], [0.0, 0.0, 1.0, 0.0], [0, 0, 0, 1.0]])
    image = MetaTensor(volume, affine=affine, meta={"filename_or_obj": "a.nii.gz"})
    out = FlipRegisterd("image", lr_axis="auto")({"image": image, "flip_matrix": torch.eye(4)})
    assert torch.allclose(out["image_flip"], torch.flip(volume, [2]), atol=1e-5)  # world x runs along array axis 1

    monkeypatch.setattr(registration, "register_flip", lambda *a, **k: torch.eye(4, dtype=torch.float64))
    by_name = FlipRegisterd("image", cache_dir=tmp_path, hash_by="filename")
    by_name({"image": image})
    by_name({"image": MetaTensor(torch.rand(1, 6, 7, 5), affine=affine, meta={"filename_or_obj": "a.nii.gz"})})
    assert len(list(tmp_path.glob("flipreg_*.npy"))) == 1  # same file name, shape and affine: one entry
    with pytest.raises(ValueError, match="filename_or_obj"):
        by_name({"image": torch.rand(1, 6, 7, 5)})


def test_clear_errors(tmp_path):
    volume = torch.rand(8, 8, 8)
    with pytest.raises(ValueError, match="3D volume"):
        register_flip(torch.rand(8, 8))
    with pytest.raises(ValueError, match="mask is empty"):
        register_flip(volume, torch.zeros(8, 8, 8))
    with pytest.raises(ValueError, match="does not match"):
        register_flip(volume, torch.ones(8, 8, 9))
    with pytest.raises(ValueError, match="lr_axis"):
        register_flip(volume, lr_axis=3)
    with pytest.raises(ValueError, match="constant"):
        register_flip(torch.ones(8, 8, 8))
    with pytest.raises(ValueError, match="4x4"):
        apply_flip_registration(volume, torch.eye(3))
    transform = FlipRegisterd("image", cache_dir=tmp_path)
    bad = transform._cache_path(volume[None], None, 0)
    np.save(bad, np.zeros(3))
    with pytest.raises(ValueError, match="not a finite 4x4"):
        transform({"image": volume[None]})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_matches_cpu(symmetric_brain):
    image, _ = _moved(symmetric_brain, shift=(1.4, -0.8, 0.5), angles=(2.0, 5.0, 4.0))
    cpu = register_flip(torch.from_numpy(image), spacing=(VOXEL_MM,) * 3)
    gpu = register_flip(torch.from_numpy(image).cuda(), spacing=(VOXEL_MM,) * 3)
    assert gpu.device.type == "cpu" and gpu.dtype == torch.float64
    mask = image > 0.1 * image.max()
    points = torch.from_numpy(np.c_[np.argwhere(mask), np.ones(mask.sum())])
    assert (points @ (gpu - cpu).T).norm(dim=1).max() < 0.05
    out = apply_flip_registration(torch.from_numpy(image).cuda(), gpu)
    assert out.is_cuda and torch.allclose(out.cpu(), apply_flip_registration(torch.from_numpy(image), gpu), atol=1e-4)
