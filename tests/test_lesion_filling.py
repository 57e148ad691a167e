"""The lesion-filled T1w (scripts.scoring.lesion_filling): blend, intensity matching, T1w-likeness and the healthy
choice."""

import math

import pytest
import torch

from una_bundle.scripts.scoring.lesion_filling import (
    NOISE_FLOOR,
    FillAnomalyd,
    fill_anomaly,
    healthy_kind,
    looks_like_t1,
    noise_level,
    suppress_excess_noise,
)


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
    assert torch.allclose(filled[outside], image[outside], atol=1e-6)
    assert torch.allclose(filled[lesion > 0], truth[lesion > 0], atol=1e-4)
    # the input's own intensity units (e.g. a scanner's 0-1000), not clipped to [0, 1]
    scaled = fill_anomaly(1000 * image, 1000 * synthesized, lesion, brain, rim_voxels=0)
    assert torch.allclose(scaled[outside], 1000 * image[outside], rtol=1e-6)
    assert torch.allclose(scaled[lesion > 0], 1000 * truth[lesion > 0], rtol=1e-3)
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
    assert torch.allclose(fill_anomaly(image, synthesized, half, brain, rim_voxels=0), image)
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
    assert not looks_like_t1(image, truth, lesion, no_brain)[0] and math.isnan(
        looks_like_t1(image, truth, lesion, no_brain)[1]
    )


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
    data = {
        "image": torch.stack([image, image.flip(0)]),
        "pred": truth[None],
        "anomaly": lesion[None],
        "brain": brain[None].float(),
        "modality": "t1",
    }
    out = FillAnomalyd(noise_floor=None)(data)
    assert out["healthy_kind"] == "filled" and out["healthy"].shape == (1, 24, 24, 24)
    assert torch.allclose(out["healthy"][0], fill_anomaly(image, truth, lesion, brain), atol=1e-6)
    assert out["t1_correlation"] > 0.8
    out = FillAnomalyd(healthy_output="synthesized")(data)
    assert out["healthy_kind"] == "synthesized" and torch.equal(out["healthy"], truth[None])
    with pytest.raises(ValueError, match="healthy_output"):
        FillAnomalyd(healthy_output="both")
    with pytest.raises(ValueError, match="noise_floor"):
        FillAnomalyd(noise_floor=1.0)
    with pytest.raises(ValueError, match="one grid"):
        FillAnomalyd()({**data, "image": image[None, :-1]})


def _smooth_brain(shape=(40, 40, 40)):
    """A noise-free 'brain': a ball of smooth intensity variations (white matter 1.0, darker toward the edge)."""
    grid = torch.stack(torch.meshgrid(*(torch.linspace(-1, 1, n) for n in shape), indexing="ij"))
    radius = grid.square().sum(0).sqrt()
    brain = radius < 0.9
    truth = (0.6 + 0.4 * torch.cos(1.5 * grid[0]) * torch.cos(grid[1])) * brain
    return truth, brain


def test_noise_level_measures_added_gaussian_noise():
    truth, brain = _smooth_brain()
    assert noise_level(truth, brain) < 0.01  # smooth anatomy is not noise
    g = torch.Generator().manual_seed(1)
    q99 = float(torch.quantile(truth[brain], 0.99))
    for sigma in (0.02, 0.05):
        noisy = truth + sigma * q99 * torch.randn(truth.shape, generator=g)
        assert noise_level(noisy, brain) == pytest.approx(sigma, rel=0.15)


def test_excess_noise_is_suppressed_and_a_clean_scan_is_kept():
    truth, brain = _smooth_brain()
    clean, level = suppress_excess_noise(truth, brain)
    assert level <= NOISE_FLOOR and clean is truth  # at or below the floor: the input itself
    g = torch.Generator().manual_seed(2)
    noisy = truth + 0.05 * torch.randn(truth.shape, generator=g)
    denoised, level = suppress_excess_noise(noisy, brain)
    assert level > NOISE_FLOOR
    assert float((denoised - truth)[brain].abs().mean()) < 0.75 * float((noisy - truth)[brain].abs().mean())
    assert torch.equal(denoised[~brain], noisy[~brain])  # only the brain is filtered
    # the transform filters the filled output of a noisy T1w and reports the level
    data = {
        "image": noisy[None],
        "pred": truth[None],
        "anomaly": torch.zeros_like(truth)[None],
        "brain": brain[None].float(),
        "modality": "t1",
    }
    out = FillAnomalyd()(data)
    assert out["noise_level"] == pytest.approx(level) and torch.allclose(out["healthy"][0], denoised, atol=1e-5)
