"""Tests of the domain-randomisation transforms (una_bundle.scripts.synthesis)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from una_bundle.scripts.synthesis.bias_field import RandSmoothBiasField, RandSmoothBiasFieldd
from una_bundle.scripts.synthesis.contrast import RandLabelToImage, RandLabelToImaged
from una_bundle.scripts.synthesis.resolution import REGIMES, RandResolution, RandResolutiond, simulate_resolution

N = 32
AFFINE = torch.tensor(
    [[1.0, 0.0, 0.0, -10.0], [0.0, 1.0, 0.0, 5.0], [0.0, 0.0, 1.0, 2.0], [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64
)


def _labels(n: int = N) -> MetaTensor:
    """Background 0, WM (2) slab, GM (3) slab and a ventricle (4): each at least 8 voxels thick."""
    lab = torch.zeros(1, n, n, n, dtype=torch.int64)
    lab[0, 4:28, 4:28, 4:28] = 2
    lab[0, 4:28, 4:28, 16:28] = 3
    lab[0, 4:12, 4:28, 4:16] = 4
    return MetaTensor(lab, affine=AFFINE.clone())


def _interior(mask: torch.Tensor, margin: int = 2) -> torch.Tensor:
    """Voxels of ``mask`` [X, Y, Z] whose (2 margin + 1)^3 neighbourhood is inside ``mask``."""
    eroded = -torch.nn.functional.max_pool3d(-mask[None, None].float(), 2 * margin + 1, 1, margin)[0, 0]
    return eroded > 0.5


def _one_mode(probs_index: int) -> tuple:
    probs = [0.0] * 4
    probs[probs_index] = 1.0
    return tuple(probs)


def _hf_energy(x: torch.Tensor, axis: int) -> float:
    """Mean squared first difference along spatial ``axis`` of ``x`` [C, X, Y, Z]."""
    return float((torch.diff(x, dim=axis + 1) ** 2).mean())


# ----------------------------------------------------------------------------------------------- RandLabelToImage


def test_label_to_image_shape_dtype_range_metadata():
    out = RandLabelToImage().set_random_state(0)(_labels())
    assert isinstance(out, MetaTensor)
    assert out.shape == (1, N, N, N) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= 0
    assert torch.allclose(out.affine.double(), AFFINE)


def test_label_to_image_determinism_and_seeds():
    lab = _labels()
    a = RandLabelToImage().set_random_state(3)(lab)
    b = RandLabelToImage().set_random_state(3)(lab)
    c = RandLabelToImage().set_random_state(4)(lab)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    transform = RandLabelToImage().set_random_state(5)
    first, second = transform(lab), transform(lab)
    assert not torch.allclose(first, second)  # a new contrast every call
    assert torch.equal(transform(lab, randomize=False), second)  # replay


def test_label_to_image_per_label_statistics():
    lab = _labels()
    # means >= 3.3 std: the clamp at 0 does not bias the statistics
    transform = RandLabelToImage(mean_range=(50, 225), std_range=(5, 15), background_zero_prob=0.0, pv_sigma=0.5)
    for seed in range(3):
        out = transform.set_random_state(seed)(lab)[0]
        assert transform.label_values == (0, 2, 3, 4)
        assert ((transform.means >= 50) & (transform.means <= 225)).all()
        assert ((transform.stds >= 5) & (transform.stds <= 15)).all()
        for value, mean, std in zip(transform.label_values, transform.means, transform.stds):
            deep = out[_interior(lab[0] == value, margin=2)]  # beyond the reach of the partial-volume kernel
            assert deep.numel() > 100
            assert abs(float(deep.mean()) - mean) < 5 * std / deep.numel() ** 0.5  # 5 standard errors
            assert abs(float(deep.std()) - std) < 0.15 * std


def test_label_to_image_background_zero_when_forced():
    lab = _labels()
    forced = RandLabelToImage(background_zero_prob=1.0).set_random_state(0)
    out = forced(lab)
    assert forced.background_zero
    assert torch.all(out[lab == 0] == 0)
    assert out[lab > 0].min() > 0
    kept = RandLabelToImage(background_zero_prob=0.0, mean_range=(100, 200)).set_random_state(0)
    out = kept(lab)
    assert not kept.background_zero
    deep = out[0][_interior(lab[0] == 0)]
    assert abs(float(deep.mean()) - kept.means[0]) < 3.0


def test_label_to_image_partial_volume_mixes_borders_only():
    lab = torch.zeros(1, 24, 24, 24, dtype=torch.int64)
    lab[0, :12] = 1
    lab[0, 12:] = 2
    sharp = RandLabelToImage(std_range=(0, 0), pv_sigma=0.0).set_random_state(0)
    mixed = RandLabelToImage(std_range=(0, 0), pv_sigma=1.0).set_random_state(0)
    a, b = sharp(lab)[0], mixed(lab)[0]
    assert sharp.label_values == (1, 2)
    m1, m2 = sharp.means
    assert np.allclose(mixed.means, sharp.means)
    assert torch.allclose(a[11], torch.full_like(a[11], m1)) and torch.allclose(a[12], torch.full_like(a[12], m2))
    lo, hi = min(m1, m2), max(m1, m2)
    for plane in (11, 12):  # the voxels on both sides of the border are mixtures
        assert (b[plane] > lo + 0.05 * (hi - lo)).all() and (b[plane] < hi - 0.05 * (hi - lo)).all()
    assert torch.allclose(b[:6], torch.full_like(b[:6], m1), atol=1e-3)  # far from the border: pure tissue
    assert torch.allclose(b[18:], torch.full_like(b[18:], m2), atol=1e-3)


def test_label_to_image_ct_mode_tissue_order():
    lab = _labels()
    transform = RandLabelToImage(ct_prob=1.0, background_zero_prob=0.0)
    for seed in range(3):
        out = transform.set_random_state(seed)(lab)[0]
        assert transform.is_ct and transform.background_zero
        means = dict(zip(transform.label_values, transform.means))
        assert means[4] < means[2] < means[3]  # CSF < WM < GM
        assert out.max() <= 255 and torch.all(out[lab[0] == 0] == 0)
        region = {v: float(out[_interior(lab[0] == v)].mean()) for v in (2, 3, 4)}
        assert region[4] < region[2] < region[3]
        assert 60 < region[2] < 110 and 100 < region[3] < 145  # WM ~27 HU, GM ~38 HU in a 0-80 HU window


@pytest.mark.parametrize("order, ranking", [("t1", (4, 3, 2)), ("t2", (2, 3, 4)), ("flair", (4, 2, 3))])
def test_label_to_image_tissue_ordered_contrasts(order, ranking):
    lab = _labels()
    tissues = {"csf": (4,), "gm": (3,), "wm": (2,)}
    transform = RandLabelToImage(ordered_prob=1.0, tissue_labels=tissues, orders=(order,), background_zero_prob=1.0)
    for seed in range(5):
        out = transform.set_random_state(seed)(lab)[0]
        assert transform.order == order and not transform.is_ct
        means = dict(zip(transform.label_values, transform.means))
        darkest, middle, brightest = (means[v] for v in ranking)
        assert darkest < middle < brightest and brightest - darkest >= 0.4 * 200 - 2 * 10
        assert max(means[v] for v in (2, 3, 4)) <= 225 + 10 and min(means[v] for v in (2, 3, 4)) >= 25 - 10
        region = {v: float(out[_interior(lab[0] == v)].mean()) for v in ranking}
        assert region[ranking[0]] < region[ranking[2]]
    random_draws = RandLabelToImage(ordered_prob=0.0, tissue_labels=tissues).set_random_state(0)
    random_draws(lab)
    assert random_draws.order == ""


def test_label_to_image_ordered_needs_tissues():
    with pytest.raises(ValueError, match="tissue_labels"):
        RandLabelToImage(ordered_prob=0.5)
    with pytest.raises(ValueError, match="orders"):
        RandLabelToImage(ordered_prob=0.5, tissue_labels={"csf": (4,), "gm": (3,), "wm": (2,)}, orders=("t3",))


def test_label_to_image_ct_jitter_and_window():
    lab = _labels()
    transform = RandLabelToImage(ct_prob=1.0, ct_jitter_hu=3.0)
    wm = []
    for seed in range(5):
        transform.set_random_state(seed)(lab)
        wm.append(dict(zip(transform.label_values, transform.means))[2])
    scale = 255.0 / 80.0  # default window 0-80 HU
    assert all(abs(m - 27.0 * scale) <= 3.0 * scale + 1e-6 for m in wm)  # white matter: 27 +- 3 HU
    assert np.ptp(wm) > 0.5 * scale  # the jitter is drawn
    bone = torch.zeros(1, 16, 16, 16, dtype=torch.int64)
    bone[0, :8] = 1
    bone[0, 8:] = 2
    custom = RandLabelToImage(ct_prob=1.0, ct_hu={1: 1000.0, 2: 30.0}, pv_sigma=1.0).set_random_state(0)
    out = custom(bone)
    assert custom.means[0] == 255.0  # densities beyond the window saturate before partial-volume mixing
    assert out.max() <= 255.0 and float(out[0, 12:].mean()) < 120.0


def test_label_to_image_float_labels_and_prob():
    lab = _labels().float()
    out = RandLabelToImage().set_random_state(0)(lab)
    assert torch.equal(out, RandLabelToImage().set_random_state(0)(_labels()))
    assert torch.equal(RandLabelToImage(prob=0.0)(lab), lab)


def test_label_to_image_dict():
    lab = _labels()
    transform = RandLabelToImaged(keys="label", image_key="image", modality_key="modality").set_random_state(1)
    out = transform({"label": lab})
    expected = RandLabelToImage().set_random_state(1)(lab)
    assert torch.equal(out["image"], expected)  # the seed is forwarded to the array transform
    assert out["modality"] == "synthetic" and torch.equal(out["label"], lab)
    ct = RandLabelToImaged(keys="label", modality_key="modality", ct_prob=1.0).set_random_state(0)({"label": lab})
    assert ct["modality"] == "CT"
    real = torch.rand(1, N, N, N)
    kept = RandLabelToImaged(keys="label", modality_key="modality", prob=0.0)({"label": lab, "image": real})
    assert kept["image"] is real and "modality" not in kept


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mean_range": (200, 20)},
        {"std_range": (-1, 5)},
        {"pv_sigma": -0.5},
        {"background_zero_prob": 1.5},
        {"ct_prob": -0.1},
        {"prob": 2.0},
        {"ct_window": (80, 0)},
        {"ct_jitter_hu": -1.0},
    ],
)
def test_label_to_image_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        RandLabelToImage(**kwargs)


def test_label_to_image_bad_inputs():
    transform = RandLabelToImage()
    with pytest.raises(ValueError, match=r"\[1, X, Y, Z\]"):
        transform(torch.zeros(N, N, N))
    with pytest.raises(ValueError, match=r"\[1, X, Y, Z\]"):
        transform(torch.zeros(2, N, N, N))
    with pytest.raises(ValueError, match="non-integer"):
        transform(torch.full((1, 8, 8, 8), 1.5))
    with pytest.raises(ValueError, match="exactly one"):
        RandLabelToImaged(keys=["a", "b"])


# ------------------------------------------------------------------------------------------------- RandResolution


def _noise(channels: int = 1, seed: int = 0, n: int = N) -> MetaTensor:
    g = torch.Generator().manual_seed(seed)
    return MetaTensor(torch.rand(channels, n, n, n, generator=g) * 100, affine=AFFINE.clone())


@pytest.mark.parametrize("regime", range(4))
def test_resolution_shape_affine_and_identical_channels(regime):
    img = _noise(1)
    two = MetaTensor(torch.cat([img.as_tensor(), img.as_tensor()]), affine=AFFINE.clone())
    transform = RandResolution(regime_probs=_one_mode(regime)).set_random_state(regime)
    out = transform(two)
    assert transform.regime == REGIMES[regime]
    assert isinstance(out, MetaTensor) and out.shape == two.shape and out.dtype == torch.float32
    assert torch.allclose(out.affine.double(), AFFINE)
    assert torch.equal(out[0], out[1])  # both channels degraded identically
    if REGIMES[regime] == "isotropic_1mm":
        assert torch.equal(out, two)
    else:
        assert not torch.allclose(out, two)


def test_resolution_clinical_blurs_the_thick_axis_only():
    # a(x) + b(y) + c(z) of white 1D noises: the differences along an axis see only that axis' signal
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.rand(N, generator=g) * 100 for _ in range(3))
    img = MetaTensor((a[:, None, None] + b[None, :, None] + c[None, None, :])[None], affine=AFFINE.clone())
    transform = RandResolution(regime_probs=_one_mode(1))
    for seed in range(4):
        out = transform.set_random_state(seed)(img)
        axis = int(np.argmax(transform.target_spacing))
        spacing, thickness = transform.target_spacing[axis], transform.thickness[axis]
        assert 2.5 <= spacing <= 8.5 and min(spacing, 4.0) <= thickness <= min(spacing, 6.0)
        ratios = [_hf_energy(out, a) / _hf_energy(img, a) for a in range(3)]
        assert ratios[axis] < 0.1
        for other in set(range(3)) - {axis}:
            assert ratios[other] > 0.9


def test_resolution_low_field_and_isotropic_parameters():
    low = RandResolution(regime_probs=_one_mode(2))
    thick_axes = set()
    for seed in range(20):
        low.set_random_state(seed).randomize()
        spacing = np.sort(low.target_spacing)
        assert (spacing[:2] >= 1.3).all() and (spacing[:2] <= 1.7).all() and 5.0 <= spacing[2] <= 5.4
        assert np.array_equal(low.thickness, low.target_spacing)
        thick_axes.add(int(np.argmax(low.target_spacing)))
    assert thick_axes == {0, 1, 2}  # random axis permutation
    iso = RandResolution(regime_probs=_one_mode(3)).set_random_state(0)
    iso.randomize()
    assert ((iso.target_spacing >= 2) & (iso.target_spacing <= 5)).all()


def test_resolution_reads_input_spacing_from_affine():
    coarse = MetaTensor(_noise(1).as_tensor(), affine=torch.diag(torch.tensor([6.0, 6.0, 6.0, 1.0])))
    for regime in (1, 2, 3):  # every target spacing and thickness (<= 5.5 mm) is finer than the input's 6 mm
        transform = RandResolution(regime_probs=_one_mode(regime), clinical_spacing_range=(2.5, 5.5))
        out = transform.set_random_state(0)(coarse)
        assert torch.equal(out, coarse)
    fine = transform.set_random_state(0)(_noise(1))
    assert not torch.equal(fine, _noise(1))


def test_resolution_determinism_and_seeds():
    img = _noise(1)
    a = RandResolution().set_random_state(7)(img)
    b = RandResolution().set_random_state(7)(img)
    assert torch.equal(a, b)
    draws = set()
    for seed in range(6):
        t = RandResolution(regime_probs=_one_mode(3)).set_random_state(seed)
        t.randomize()
        draws.add(tuple(np.round(t.target_spacing, 6)))
    assert len(draws) == 6


def test_resolution_dict_same_degradation_for_all_keys():
    img = _noise(1)
    transform = RandResolutiond(keys=["a", "b"], regime_probs=_one_mode(3)).set_random_state(2)
    out = transform({"a": img, "b": img.clone(), "target": img})
    assert torch.equal(out["a"], out["b"]) and out["target"] is img
    expected = RandResolution(regime_probs=_one_mode(3)).set_random_state(2)(img)
    assert torch.equal(out["a"], expected)
    untouched = RandResolutiond(keys="a", prob=0.0)({"a": img})
    assert untouched["a"] is img


def test_simulate_resolution_blur_follows_thickness():
    x = torch.zeros(1, 8, 8, 41)
    x[..., 20] = 1.0  # an impulse along z
    for thickness in (3.0, 5.0):
        out = simulate_resolution(x, (1, 1, 1), thickness=(1, 1, thickness), blur_factor=0.5)
        profile = out[0, 4, 4]
        z = torch.arange(41.0) - 20
        variance = float((profile * z**2).sum() / profile.sum())
        expected = 0.25 * (thickness**2 - 1) + 1 / 12  # (factor * sqrt(t^2 - s^2))^2 + the erf kernel's pixel width
        assert abs(variance - expected) < 0.05 * expected
        assert torch.allclose(out.sum(), x.sum())  # blur keeps the mass


def test_simulate_resolution_samples_at_the_target_spacing():
    x = torch.rand(1, 8, 8, 32, generator=torch.Generator().manual_seed(0))
    out = simulate_resolution(x, (1, 1, 4), thickness=(1, 1, 1))  # no blur: sampling only
    assert not torch.allclose(out, x)
    # 8 samples along z, linearly interpolated back: the second differences vanish between the samples (noise: never)
    curvature = torch.diff(out, n=2, dim=3).abs()
    assert float((curvature < 1e-5).float().mean()) > 0.4
    along_x = x[:, :, :1, :1].expand(1, 8, 8, 32)  # varies along x only: x and y are not resampled
    assert torch.allclose(simulate_resolution(along_x, (1, 1, 4), thickness=(1, 1, 1)), along_x, atol=1e-6)


def test_simulate_resolution_identity_and_plain_tensors():
    x = torch.rand(2, 16, 16, 16)
    assert torch.allclose(simulate_resolution(x, (1, 1, 1)), x)
    out = simulate_resolution(x, (1, 1, 4), thickness=(1, 1, 4))
    assert out.shape == x.shape and type(out) is torch.Tensor
    assert torch.allclose(out[0], simulate_resolution(x[:1], (1, 1, 4))[0], atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"regime_probs": (-0.1, 0.5, 0.3, 0.3)},
        {"regime_probs": (1.2, 0.0, 0.0, 0.0)},
        {"regime_probs": (0.5, 0.5, 0.5, 0.5)},
        {"regime_probs": (0.5, 0.5)},
        {"clinical_spacing_range": (8.5, 2.5)},
        {"isotropic_spacing_range": (5, 2)},
        {"low_field_jitter": (0.4, 0.0)},
        {"low_field_spacing": (1.3, 5.0)},
        {"blur_factor_range": (0.6, 0.4)},
        {"prob": -0.5},
    ],
)
def test_resolution_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        RandResolution(**kwargs)


def test_resolution_bad_input():
    with pytest.raises(ValueError, match=r"\[C, X, Y, Z\]"):
        RandResolution()(torch.zeros(N, N, N))


# -------------------------------------------------------------------------------------------- RandSmoothBiasField


def test_bias_field_multiplicative_smooth_identical_channels():
    g = torch.Generator().manual_seed(0)
    img = MetaTensor(1 + torch.rand(2, N, N, N, generator=g), affine=AFFINE.clone())  # two different channels
    other = 5 + torch.rand(1, N, N, N, generator=g)
    transform = RandSmoothBiasField(std_range=(0.3, 0.3), scale_range=(0.1, 0.1))
    out = transform.set_random_state(0)(img)
    out_other = transform.set_random_state(0)(other)
    assert isinstance(out, MetaTensor) and out.shape == img.shape and out.dtype == torch.float32
    assert torch.allclose(out.affine.double(), AFFINE)
    ratio = (out / img).as_tensor()
    assert torch.allclose(ratio[0], ratio[1], rtol=1e-5)  # the same field on every channel
    assert torch.allclose(ratio[0], (out_other / other)[0], rtol=1e-5)  # independent of the image: multiplicative
    log_field = ratio[0].log()
    assert torch.allclose(log_field, transform.log_field((N, N, N))[0], atol=1e-5)
    assert float(log_field.std()) > 0.05  # not a constant
    for axis in range(3):  # smooth: neighbours differ far less than the field varies (white noise: 1.1 std)
        assert float(torch.diff(log_field, dim=axis).abs().mean()) < 0.25 * float(log_field.std())


def test_bias_field_zero_std_is_identity_and_prob():
    img = _noise(1)
    assert torch.allclose(RandSmoothBiasField(std_range=(0, 0)).set_random_state(0)(img), img)
    assert torch.equal(RandSmoothBiasField(prob=0.0)(img), img)


def test_bias_field_std():
    transform = RandSmoothBiasField(std_range=(0.5, 0.5), scale_range=(0.5, 0.5))
    stds = []
    for seed in range(5):
        transform.set_random_state(seed).randomize()
        assert transform.std == 0.5
        stds.append(float(transform.log_field((N, N, N)).std()))
    assert 0.22 < np.mean(stds) < 0.32  # trilinear interpolation of N(0, 0.5^2) nodes: 0.5 * (2 / 3) ** 1.5 = 0.27


def test_bias_field_determinism_and_dict():
    img = _noise(1)
    a = RandSmoothBiasField().set_random_state(9)(img)
    b = RandSmoothBiasField().set_random_state(9)(img)
    c = RandSmoothBiasField().set_random_state(10)(img)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    out = RandSmoothBiasFieldd(keys=["x", "y"]).set_random_state(9)({"x": img, "y": img.clone() * 2})
    assert torch.equal(out["x"], a)
    assert torch.allclose(out["y"], 2 * a)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"std_range": (0.6, 0.1)},
        {"std_range": (-0.1, 0.2)},
        {"scale_range": (0.0, 0.04)},
        {"scale_range": (0.04, 0.02)},
        {"scale_range": (0.5, 1.5)},
        {"min_nodes": 1},
        {"prob": 1.1},
    ],
)
def test_bias_field_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        RandSmoothBiasField(**kwargs)


def test_bias_field_bad_input():
    with pytest.raises(ValueError, match=r"\[C, X, Y, Z\]"):
        RandSmoothBiasField()(torch.ones(1, N, N))
