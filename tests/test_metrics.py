"""Brain-masked metrics (scripts/scoring/metrics.py) on hand-made examples with known values."""

import math

import pytest
import torch
from monai.metrics.regression import compute_ssim_and_cs

from una_bundle.scripts.scoring.metrics import brain_l1, brain_psnr, brain_ssim, dice, ssim_map


def test_l1_and_psnr_known_values_restricted_to_brain(cube_brain):
    brain = cube_brain
    truth = torch.rand(16, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.5
    pred = truth + 0.1 * brain + 0.7 * ~brain  # large errors outside the brain must be ignored
    assert float(brain_l1(pred, truth, brain)) == pytest.approx(0.1, abs=1e-6)
    assert float(brain_psnr(pred, truth, brain)) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01, range 1
    assert float(brain_psnr(pred, truth, brain, data_range=2.0)) == pytest.approx(20.0 + 20 * math.log10(2), abs=1e-4)
    assert float(brain_l1(pred, truth)) > 0.5  # no mask: the whole volume
    assert float(brain_l1(pred[None], truth[None], brain[None].float())) == pytest.approx(0.1, abs=1e-6)
    assert math.isinf(float(brain_psnr(truth, truth, brain)))


def test_batches_give_one_value_per_case_and_nan_for_an_empty_mask(cube_brain):
    brain = cube_brain
    truth = torch.zeros(3, 1, 16, 16, 16)
    pred = truth + torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1, 1, 1)
    masks = torch.stack([brain, brain, torch.zeros_like(brain)])[:, None]
    l1 = brain_l1(pred, truth, masks)
    assert l1.shape == (3,)
    assert torch.allclose(l1[:2], torch.tensor([0.1, 0.2])) and math.isnan(float(l1[2]))
    assert brain_psnr(pred, truth, masks).shape == brain_ssim(pred, truth, masks).shape == (3,)
    assert brain_l1(pred[0, 0], truth[0, 0], brain).ndim == 0  # one case: a 0-d tensor
    two_channels = torch.cat([pred, pred + 0.2], 1)  # a one-channel mask covers every channel
    assert float(brain_l1(two_channels, torch.zeros_like(two_channels), masks)[0]) == pytest.approx(0.2, abs=1e-6)


def test_ssim_is_one_for_identical_images_and_ignores_the_outside(cube_brain):
    brain = cube_brain
    gen = torch.Generator().manual_seed(0)
    truth = torch.rand(16, 16, 16, generator=gen)
    assert float(brain_ssim(truth, truth, brain)) == pytest.approx(1.0, abs=1e-5)
    outside_changed = truth + 0.5 * torch.rand(16, 16, 16, generator=gen) * ~brain
    assert float(brain_ssim(outside_changed, truth, brain)) == pytest.approx(1.0, abs=1e-5)
    noisy = (truth + 0.1 * torch.randn(16, 16, 16, generator=gen)).clamp(0, 1)
    noisier = (truth + 0.3 * torch.randn(16, 16, 16, generator=gen)).clamp(0, 1)
    assert float(brain_ssim(noisier, truth, brain)) < float(brain_ssim(noisy, truth, brain)) < 0.99


def test_ssim_of_two_constants_is_the_luminance_term():
    """No variance: the contrast-structure term is 1, so away from the zero padding SSIM is the luminance term."""
    a, b = torch.full((16, 16, 16), 0.5), torch.full((16, 16, 16), 0.25)
    c1 = 0.01**2
    expected = (2 * 0.5 * 0.25 + c1) / (0.5**2 + 0.25**2 + c1)
    smap = ssim_map(a, b)
    assert smap.shape == (1, 1, 16, 16, 16)
    interior = smap[0, 0, 5:11, 5:11, 5:11]  # windows clear of the zero padding
    # MONAI computes in float32: var = E[x^2] - E[x]^2 cancels to ~1e-7, which moves SSIM by ~1e-4 against c2 = 9e-4
    assert torch.allclose(interior, torch.full_like(interior, expected), atol=2e-4, rtol=0)
    assert float(smap[0, 0, 0, 0, 0]) < expected - 0.01  # a corner window sees the padding
    assert float(brain_ssim(a, b)) == pytest.approx(float(smap.mean()))


def test_ssim_map_is_monai_map_inside_the_image():
    """Without a mask the padded map equals MONAI's valid-convolution map where the latter is defined."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(20, 18, 16, generator=gen), torch.rand(20, 18, 16, generator=gen)
    ours = ssim_map(a, b, kernel_sigma=1.5, kernel_size=7)
    ref, _ = compute_ssim_and_cs(a[None, None], b[None, None], 3, [7] * 3, [1.5] * 3)
    assert ours.shape == (1, 1, 20, 18, 16) and ref.shape == (1, 1, 14, 12, 10)
    assert torch.allclose(ours[..., 3:-3, 3:-3, 3:-3], ref, atol=1e-5)


def test_dice_known_values():
    pred, truth = torch.zeros(8, 8, 8), torch.zeros(8, 8, 8)
    pred[:4] = 1  # 256 voxels
    truth[2:6] = 1  # 256 voxels, 128 shared
    assert float(dice(pred, truth)) == pytest.approx(0.5)
    assert float(dice(pred[None], pred[None])) == pytest.approx(1.0)
    assert float(dice(torch.zeros(4, 4, 4), torch.zeros(4, 4, 4))) == 1.0
    assert float(dice(torch.zeros(4, 4, 4), torch.ones(4, 4, 4))) == 0.0
    batch = dice(torch.stack([pred, pred])[:, None], torch.stack([truth, pred])[:, None])
    assert torch.allclose(batch, torch.tensor([0.5, 1.0]))


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="same shape"):
        brain_l1(torch.zeros(4, 4, 4), torch.zeros(4, 4, 5))
    with pytest.raises(ValueError, match="same shape"):
        dice(torch.zeros(4, 4, 4), torch.zeros(4, 4, 5))
    with pytest.raises(ValueError, match="mask"):
        brain_psnr(torch.zeros(4, 4, 4), torch.zeros(4, 4, 4), torch.ones(4, 4, 3))
    with pytest.raises(ValueError, match="spatial axes"):
        brain_ssim(torch.zeros(2, 2, 1, 4, 4, 4), torch.zeros(2, 2, 1, 4, 4, 4))
    with pytest.raises(ValueError, match="kernel_size"):
        brain_ssim(torch.zeros(4, 4, 4), torch.zeros(4, 4, 4), kernel_size=4)
