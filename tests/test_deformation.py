import math

import pytest
import torch
from monai.data import MetaTensor

from una_bundle.scripts.synthesis.deformation import RandSmoothDeformd, affine_matrix


def _cube(shape=(32, 36, 30), corner=(20, 8, 12), size=3):
    vol = torch.zeros(1, *shape)
    vol[0, corner[0] : corner[0] + size, corner[1] : corner[1] + size, corner[2] : corner[2] + size] = 1
    return vol


def _centroid(vol):
    idx = (vol[0] > 0.5).nonzero().float()
    return idx.mean(0)


def test_marker_lands_at_the_same_voxel_in_every_key():
    label = _cube()
    data = {
        "image": MetaTensor(label * 100, affine=torch.diag(torch.tensor([2.0, 2, 2, 1]))),
        "label": label.clone(),
        "lesion": label.clone(),
    }
    t = RandSmoothDeformd(["image", "label", "lesion"], mode=["bilinear", "nearest", "bilinear"]).set_random_state(3)
    out = t(data)
    moved = _centroid(out["label"])
    assert (moved - _centroid(label)).norm() > 1.0  # the geometry did change
    assert (_centroid(out["image"] / 100) - moved).norm() < 0.75
    assert (_centroid(out["lesion"]) - moved).norm() < 0.75
    assert set(out["label"].unique().tolist()) <= {0.0, 1.0}  # nearest keeps labels
    assert torch.equal(out["image"].affine, data["image"].affine)  # same grid, the anatomy moved


def test_identity_when_all_ranges_are_zero_and_prob_zero():
    x = torch.rand(2, 16, 18, 20)
    t = RandSmoothDeformd("x", rotate_range=0, shear_range=0, scale_range=0, deform_std_max=0)
    assert torch.allclose(t({"x": x})["x"], x, atol=1e-5)
    assert torch.equal(RandSmoothDeformd("x", prob=0.0)({"x": x})["x"], x)


def test_pure_rotation_rotates_about_the_centre():
    t = RandSmoothDeformd("x", rotate_range=0, shear_range=0, scale_range=0, deform_std_max=0)
    t._do_transform = True
    t._matrix = affine_matrix([0, 0, math.pi / 2], [0, 0, 0], [1, 1, 1])  # 90 degrees about axis 2
    vol = _cube((21, 21, 21), corner=(15, 9, 9), size=3)
    grid = t.sampling_grid(vol.shape[1:], vol.device)
    out = torch.nn.functional.grid_sample(vol[None], grid, mode="nearest", align_corners=True)[0]
    # output voxel x samples the input at R x (about the centre 10): the cube at (16, 10) moves to (10, 4)
    assert torch.allclose(_centroid(out), torch.tensor([10.0, 4.0, 10.0]), atol=1e-4)


def test_reproducible_and_seed_sensitive():
    x = torch.rand(1, 20, 20, 20)
    t = RandSmoothDeformd("x")
    a, b = t.set_random_state(1)({"x": x})["x"], t.set_random_state(1)({"x": x})["x"]
    c = t.set_random_state(2)({"x": x})["x"]
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_errors():
    with pytest.raises(ValueError, match="mode"):
        RandSmoothDeformd("x", mode="cubic")
    with pytest.raises(ValueError, match="scale_range"):
        RandSmoothDeformd("x", scale_range=1.5)
    with pytest.raises(ValueError, match="control_fraction"):
        RandSmoothDeformd("x", control_fraction=(0.1, 0.05))
    with pytest.raises(ValueError, match="'y' has shape"):
        RandSmoothDeformd(["x", "y"])({"x": torch.rand(1, 8, 8, 8), "y": torch.rand(1, 8, 8, 9)})
