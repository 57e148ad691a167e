"""The lesion-filled T1w (scripts.scoring.lesion_filling): blend, intensity matching, T1w-likeness and the healthy
choice."""

import math

import pytest
import torch

from una_bundle.scripts.scoring.lesion_filling import (
    DETAIL_RADIUS_MM,
    NOISE_FLOOR,
    FillAnomalyd,
    fill_anomaly,
    guided_detail,
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
    found = lesion > 0
    filled = fill_anomaly(image, synthesized, lesion, brain, found, 0.5, rim_voxels=0)
    assert torch.allclose(filled[~found], image[~found], atol=1e-6)
    assert torch.allclose(filled[found], truth[found], atol=1e-4)
    # the input's own intensity units (e.g. a scanner's 0-1000), not clipped to [0, 1]
    scaled = fill_anomaly(1000 * image, 1000 * synthesized, lesion, brain, found, 0.5, rim_voxels=0)
    assert torch.allclose(scaled[~found], 1000 * image[~found], rtol=1e-6)
    assert torch.allclose(scaled[found], 1000 * truth[found], rtol=1e-3)


def test_blend_weight_is_the_mask_with_a_soft_rim():
    image, truth, lesion, brain = _case()
    synthesized = truth.clone()
    probability = 0.3 * lesion  # the head's probability: 0.3 in the lesion
    probability[7, 8:14, 8:14] = 0.1  # the face next to the lesion: under the threshold, in the rim
    probability[3, 8:14, 8:14] = 0.5  # haze far from the mask: never filled
    found = lesion > 0  # the mask at threshold 0.2 (what AnomalyMaskd gives)
    filled = fill_anomaly(image, synthesized, probability, brain, found, 0.2)
    assert torch.allclose(filled[found], truth[found], atol=1e-4)  # weight 1 in the mask (p 0.3 < 0.5 no matter)
    rim = (slice(7, 8), slice(8, 14), slice(8, 14))
    assert torch.allclose(filled[rim], (0.5 * image + 0.5 * truth)[rim], atol=1e-4)  # p / threshold = 0.5
    assert torch.equal(filled[3], image[3])
    assert torch.equal(filled[5], image[5])  # outside the rim: the input
    with pytest.raises(ValueError, match="threshold"):
        fill_anomaly(image, synthesized, probability, brain, found, 0.0)


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
        "anomaly_mask": lesion[None],
        "anomaly_threshold": 0.5,
        "brain": brain[None].float(),
        "modality": "t1",
    }
    out = FillAnomalyd(noise_floor=None)(data)
    assert out["healthy_kind"] == "filled" and out["healthy"].shape == (1, 24, 24, 24)
    radius = round(DETAIL_RADIUS_MM)  # a tensor without an affine: 1 mm voxels
    expected = fill_anomaly(image, truth, lesion, brain, lesion, 0.5, detail_radius=radius)
    assert torch.allclose(out["healthy"][0], expected, atol=1e-6)
    plain = FillAnomalyd(noise_floor=None, detail_radius_mm=None)(data)
    assert torch.allclose(plain["healthy"][0], fill_anomaly(image, truth, lesion, brain, lesion, 0.5), atol=1e-6)
    assert out["t1_correlation"] > 0.8
    out = FillAnomalyd(healthy_output="synthesized")(data)
    assert out["healthy_kind"] == "synthesized" and torch.equal(out["healthy"], truth[None])
    # AnomalyScored's decision, when present, is the one used (not a second test on this grid)
    decided = {**data, "modality": "auto", "t1_like": False, "t1_correlation": 0.5}
    out = FillAnomalyd(noise_floor=None)(decided)
    assert out["healthy_kind"] == "synthesized" and out["t1_correlation"] == 0.5
    decided.pop("t1_like")
    assert FillAnomalyd(noise_floor=None)(decided)["healthy_kind"] == "filled"  # its own test: correlation > 0.8
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
        "anomaly_mask": torch.zeros_like(truth)[None],
        "anomaly_threshold": 0.5,
        "brain": brain[None].float(),
        "modality": "t1",
    }
    out = FillAnomalyd()(data)
    assert out["noise_level"] == pytest.approx(level) and torch.allclose(out["healthy"][0], denoised, atol=1e-5)


def _textured_case(shape=(40, 40, 40)):
    """A brain with structure at a few voxels' scale, a cube lesion, and a smooth synthesis (the truth blurred, as a
    1 mm reconstruction is): what the plain fill pastes in has lost the finer structure."""
    g = torch.Generator().manual_seed(1)
    brain = torch.zeros(shape, dtype=torch.bool)
    brain[3:-3, 3:-3, 3:-3] = True
    noise = torch.nn.functional.avg_pool3d(torch.rand(1, 1, *shape, generator=g), 5, stride=1, padding=2)[0, 0]
    truth = (0.6 + 0.1 * (noise - noise.mean()) / noise.std()) * brain
    lesion = torch.zeros(shape)
    lesion[12:28, 12:28, 12:28] = 1.0
    smooth = torch.nn.functional.avg_pool3d(truth[None, None], 5, stride=1, padding=2)[0, 0] * brain
    return truth, lesion, brain, smooth


def _corr(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_detail_keeps_the_structure_of_healthy_tissue_flagged_by_mistake():
    truth, lesion, brain, smooth = _textured_case()
    found = lesion > 0  # a false positive: the input there is healthy tissue
    plain = fill_anomaly(truth, smooth, lesion, brain, found, 0.5, rim_voxels=0)
    detail = fill_anomaly(truth, smooth, lesion, brain, found, 0.5, rim_voxels=0, detail_radius=3)
    assert _corr(plain[found], truth[found]) < 0.8 < 0.88 < _corr(detail[found], truth[found])
    assert (detail - truth)[found].abs().mean() < (plain - truth)[found].abs().mean()
    assert torch.equal(detail[~found], truth[~found])  # outside the anomaly: the input, voxel for voxel
    # anisotropic radius (thick slices): one voxel along z still keeps structure
    thick = fill_anomaly(truth, smooth, lesion, brain, found, 0.5, rim_voxels=0, detail_radius=[3, 3, 1])
    assert _corr(thick[found], truth[found]) > _corr(plain[found], truth[found]) + 0.05


def test_detail_adds_nothing_where_the_input_is_flat():
    truth, lesion, brain, smooth = _textured_case()
    image = torch.where(lesion > 0, torch.tensor(0.1), truth)  # a lesion core with nothing of the tissue left
    found = lesion > 0
    plain = fill_anomaly(image, smooth, lesion, brain, found, 0.5, rim_voxels=0)
    detail = fill_anomaly(image, smooth, lesion, brain, found, 0.5, rim_voxels=0, detail_radius=3)
    core = torch.zeros_like(found)
    core[18:22, 18:22, 18:22] = True  # two radii from the lesion's border: every window it depends on is flat
    assert torch.allclose(detail[core], plain[core], atol=1e-6)  # no texture invented: the synthesis itself
    assert torch.equal(detail[~found], image[~found])


def test_guided_detail_adds_the_guides_local_deviation_times_the_slope():
    g = torch.Generator().manual_seed(2)
    guide = torch.rand(16, 16, 16, generator=g)
    brain = torch.zeros(16, 16, 16, dtype=torch.bool)
    brain[4:12, 4:12, 4:12] = True
    source = torch.full_like(guide, 0.7)
    # a source that does not follow the guide: slope 0, the source back
    assert torch.allclose(guided_detail(guide, source, brain, radius=2, eps=1e-3), source, atol=1e-5)
    # a source that follows the guide (slope 2) gets twice the guide's local deviation; outside the brain untouched
    source = torch.where(brain, 2 * guide + 0.3, torch.tensor(5.0))
    out = guided_detail(guide, source, brain, radius=2, eps=1e-8)
    assert torch.equal(out[~brain], source[~brain])
    added, deviation = out[brain] - source[brain], guide[brain] - guide[brain].mean()
    assert _corr(added, deviation) > 0.8
    assert 1.0 < float((added * deviation).sum() / (deviation * deviation).sum()) < 2.5


def test_detail_bad_settings():
    image, truth, lesion, brain = _case()
    with pytest.raises(ValueError, match="detail_radius"):
        fill_anomaly(image, truth, lesion, brain, lesion > 0, 0.5, detail_radius=[2, 2])
    with pytest.raises(ValueError, match="detail_radius"):
        fill_anomaly(image, truth, lesion, brain, lesion > 0, 0.5, detail_radius=-1)
    with pytest.raises(ValueError, match="detail_eps"):
        fill_anomaly(image, truth, lesion, brain, lesion > 0, 0.5, detail_radius=2, detail_eps=0)
    with pytest.raises(ValueError, match="detail_radius_mm"):
        FillAnomalyd(detail_radius_mm=-1.0)
    with pytest.raises(ValueError, match="detail_eps"):
        FillAnomalyd(detail_eps=0.0)


def test_inference_config_sets_the_detail_it_documents():
    import yaml

    from una_bundle import BUNDLE_ROOT
    from una_bundle.scripts.scoring.lesion_filling import DETAIL_EPS

    config = yaml.safe_load((BUNDLE_ROOT / "configs" / "inference.yaml").read_text())
    fill = next(t for t in config["postprocessing"]["transforms"] if t["_target_"].endswith("FillAnomalyd"))
    assert fill["detail_radius_mm"] == "@fill_detail_mm" and fill["detail_eps"] == "@fill_detail_eps"
    # the transform's defaults (Python API) are the config's values
    assert (config["fill_detail_mm"], config["fill_detail_eps"]) == (DETAIL_RADIUS_MM, DETAIL_EPS)
