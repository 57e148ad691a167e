"""The lesion-filled T1w (scripts.scoring.lesion_filling): blend, intensity matching, T1w-likeness and the healthy
choice."""

import math

import pytest
import torch

from una_bundle.scripts.scoring.lesion_filling import FillAnomalyd, fill_anomaly, healthy_kind, looks_like_t1


def _case(shape=(24, 24, 24)):
    g = torch.Generator().manual_seed(0)
    brain = torch.zeros(shape, dtype=torch.bool)
    brain[2:-2, 2:-2, 2:-2] = True
    truth = (0.3 + 0.5 * torch.rand(shape, generator=g)) * brain  # the healthy T1w
    lesion = torch.zeros(shape)
    lesion[8:14, 8:14, 8:14] = 1.0
    image = truth * (1 - 0.7 * lesion)  # a dark lesion
    return image, truth, lesion, brain


def test_filled_is_the_input_outside_and_the_gain_matched_synthesis_inside():
    image, truth, lesion, brain = _case()
    synthesized = 0.5 * truth + 0.1  # a synthesis on another intensity scale: the fit brings it back
    filled = fill_anomaly(image, synthesized, lesion, brain, rim_voxels=0)
    outside = lesion == 0
    assert torch.allclose(filled[outside], image[outside].clamp(0, 1), atol=1e-6)
    assert torch.allclose(filled[lesion > 0], truth[lesion > 0], atol=1e-4)
    # the rim widens the blend weight by one voxel: the voxel next to the lesion takes the synthesis too
    rim = fill_anomaly(image, synthesized, lesion, brain, rim_voxels=1)
    assert rim[7, 10, 10] == pytest.approx(float(truth[7, 10, 10]), abs=1e-4)
    assert rim[5, 10, 10] == pytest.approx(float(image[5, 10, 10]), abs=1e-6)


def test_soft_probability_blends_linearly():
    image, _, _, brain = _case()
    half = torch.full_like(image, 0.5) * brain
    half[:, :, :12] = 0.0  # healthy voxels, where the synthesis equals the input: gain 1, offset 0
    inside = half > 0
    synthesized = torch.where(inside, torch.full_like(image, 0.2), image)
    filled = fill_anomaly(image, synthesized, half, brain, rim_voxels=0, floor=0.0)
    assert torch.allclose(filled[inside], (0.5 * image + 0.5 * 0.2)[inside], atol=1e-4)
    # with the default floor (0.5) a probability of 0.5 is haze: the input is kept; 0.75 blends half
    assert torch.allclose(fill_anomaly(image, synthesized, half, brain, rim_voxels=0), image.clamp(0, 1))
    filled = fill_anomaly(image, synthesized, 1.5 * half, brain, rim_voxels=0)
    assert torch.allclose(filled[inside], (0.5 * image + 0.5 * 0.2)[inside], atol=1e-4)
    with pytest.raises(ValueError, match="floor"):
        fill_anomaly(image, synthesized, half, brain, floor=1.0)


def test_t1_likeness_by_correlation():
    image, truth, lesion, brain = _case()
    assert looks_like_t1(image, truth, lesion, brain)[0]
    inverted, corr = looks_like_t1((1 - image) * brain, truth, lesion, brain)
    assert not inverted and corr < -0.9
    no_brain = torch.zeros_like(brain)
    assert not looks_like_t1(image, truth, lesion, no_brain)[0] and math.isnan(looks_like_t1(image, truth, lesion, no_brain)[1])


@pytest.mark.parametrize(
    "setting, modality, t1_like, expected",
    [
        ("auto", "t1", False, "filled"),
        ("auto", "T2", True, "synthesized"),
        ("auto", "flair", True, "synthesized"),
        ("auto", "ct", True, "synthesized"),
        ("auto", "mr", True, "filled"),
        ("auto", "mr", False, "synthesized"),
        ("filled", "t2", False, "filled"),
        ("synthesized", "t1", True, "synthesized"),
    ],
)
def test_healthy_kind(setting, modality, t1_like, expected):
    assert healthy_kind(setting, modality, t1_like) == expected


def test_dictionary_transform_and_bad_setting():
    image, truth, lesion, brain = _case()
    data = {"image": torch.stack([image, image.flip(0)]), "pred": truth[None], "anomaly": lesion[None], "brain": brain[None].float(), "modality": "t1"}
    out = FillAnomalyd()(data)
    assert out["healthy_kind"] == "filled" and out["healthy"].shape == (1, 24, 24, 24)
    assert torch.allclose(out["healthy"][0], fill_anomaly(image, truth, lesion, brain), atol=1e-6)
    assert out["t1_correlation"] > 0.8
    out = FillAnomalyd(healthy_output="synthesized")(data)
    assert out["healthy_kind"] == "synthesized" and torch.equal(out["healthy"], truth[None])
    with pytest.raises(ValueError, match="healthy_output"):
        FillAnomalyd(healthy_output="both")
