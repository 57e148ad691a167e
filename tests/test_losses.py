import math

import pytest
import torch

from una_bundle.scripts.model.losses import AnomalyHeadLoss, StructureContrastiveLoss, UNALoss, WeightedL1GradientLoss


def _vol(values, shape):
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, *shape)


def test_zero_when_prediction_equals_target():
    target = torch.rand(2, 1, 6, 5, 4)
    weight = torch.rand(2, 1, 6, 5, 4) * 2
    for normalize in ("weight", "mean"):
        parts = WeightedL1GradientLoss(normalize=normalize).components(target.clone(), target, weight)
        assert float(parts["loss"]) == float(parts["l1"]) == float(parts["gradient"]) == 0.0


def test_known_values_by_hand():
    # a 3 x 2 x 1 volume: e = pred - target = [[0, 1], [1, 3], [-2, 0]] (x rows, y columns), weights below
    pred = _vol([0, 1, 1, 3, -2, 0], (3, 2, 1))
    target = torch.zeros_like(pred)
    weight = _vol([1, 1, 3, 1, 1, 0], (3, 2, 1))
    parts = WeightedL1GradientLoss(gradient_weight=0.5).components(pred, target, weight)
    # L1: sum w|e| = 0 + 1 + 3 + 3 + 2 + 0 = 9 over sum w = 7
    assert parts["l1"].item() == pytest.approx(9 / 7)
    # x differences: column 0: 1-0, -2-1 (w min(1,3)=1, min(3,1)=1); column 1: 3-1, 0-3 (w 1, min(1,0)=0)
    grad_x = (1 * 1 + 1 * 3 + 1 * 2 + 0 * 3) / 3
    # y differences: 1-0 (w 1), 3-1 (w min(3,1)=1), 0-(-2) (w 0)
    grad_y = (1 * 1 + 1 * 2 + 0 * 2) / 2
    assert parts["gradient"].item() == pytest.approx(grad_x + grad_y)  # the z axis has size 1: no term
    assert parts["loss"].item() == pytest.approx(9 / 7 + 0.5 * (grad_x + grad_y))
    mean = WeightedL1GradientLoss(normalize="mean").components(pred, target, weight)
    assert mean["l1"].item() == pytest.approx(9 / 6)  # 6 voxels
    assert mean["gradient"].item() == pytest.approx((1 + 3 + 2) / 4 + (1 + 2) / 3)  # 4 x pairs, 3 y pairs


def test_zero_weight_voxel_does_not_contribute():
    torch.manual_seed(0)
    pred, target = torch.rand(1, 1, 6, 6, 6), torch.rand(1, 1, 6, 6, 6)
    weight = torch.ones_like(pred)
    weight[0, 0, 2, 3, 4] = 0
    loss = WeightedL1GradientLoss()
    perturbed = pred.clone()
    perturbed[0, 0, 2, 3, 4] += 5.0
    assert loss(perturbed, target, weight).item() == pytest.approx(loss(pred, target, weight).item(), abs=1e-6)
    # with weight 1 there the same perturbation matters
    ones = torch.ones_like(pred)
    assert loss(perturbed, target, ones).item() > loss(pred, target, ones).item() + 0.01


def test_weight_two_doubles_contribution():
    torch.manual_seed(0)
    target = torch.rand(1, 1, 5, 5, 5)
    pred = target.clone()
    pred[0, 0, 2, 2, 2] += 0.3  # the only error
    ones = torch.ones_like(pred)
    twos = ones.clone()
    twos[0, 0, 2, 2, 2] = 2
    # the voxel and its (lower) neighbours' differences all carry weight 2 (min with the neighbours' weight 1)
    twos_around = ones.clone()
    twos_around[0, 0, 1:4, 1:4, 1:4] = 2
    loss = WeightedL1GradientLoss(normalize="mean")
    single = loss.components(pred, target, ones)
    assert loss.components(pred, target, twos)["l1"].item() == pytest.approx(2 * single["l1"].item())
    assert loss(pred, target, twos_around).item() == pytest.approx(2 * single["loss"].item())
    # normalize="weight" divides by the weights: (2 * 0.3) / (125 + 1)
    assert WeightedL1GradientLoss().components(pred, target, twos)["l1"].item() == pytest.approx(0.6 / 126)


def test_mask_restricts_the_loss():
    torch.manual_seed(0)
    pred, target = torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8)
    mask = torch.zeros_like(pred)
    mask[..., 2:6, 2:6, 2:6] = 1
    loss = WeightedL1GradientLoss()
    changed = pred.clone()
    changed[mask == 0] = torch.rand(int((mask == 0).sum()))
    assert loss(changed, target, None, mask).item() == pytest.approx(loss(pred, target, None, mask).item(), abs=1e-6)
    inner = (slice(None), slice(None), slice(2, 6), slice(2, 6), slice(2, 6))
    assert loss(pred, target, None, mask).item() == pytest.approx(loss(pred[inner], target[inner]).item(), abs=1e-6)


def test_all_zero_weight_gives_finite_zero_with_gradient():
    pred = torch.rand(1, 1, 4, 4, 4, requires_grad=True)
    loss = WeightedL1GradientLoss()(pred, torch.rand(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4))
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(pred.grad).all() and float(pred.grad.abs().max()) == 0


def _lesion_case():
    torch.manual_seed(0)
    shape = (1, 1, 8, 8, 8)
    flip = 0.5 + 0.2 * torch.rand(shape)  # healthy tissue
    lesion = torch.zeros(shape)
    lesion[..., 2:5, 2:5, 2:5] = 1
    source = torch.where(lesion > 0, 0.15 * torch.ones(shape), flip)  # a dark (T1w-like) lesion
    return torch.cat([source, flip], dim=1), lesion


def test_structure_prefers_flip_inside_lesion():
    image, lesion = _lesion_case()
    term = StructureContrastiveLoss()
    like_flip = term(image[:, 1:], image, lesion)
    like_input = term(image[:, :1], image, lesion)
    assert like_flip.item() < like_input.item()
    # hand value: L = log(sum e^{YF} + sum e^{YI}) - log(sum e^{YF}) over the 27 lesion voxels
    q = lesion[0, 0] > 0
    y, f, i = image[0, 1][q], image[0, 1][q], image[0, 0][q]
    expected = math.log(torch.exp(y * f).sum() + torch.exp(y * i).sum()) - math.log(torch.exp(y * f).sum())
    assert like_flip.item() == pytest.approx(expected, rel=1e-5)
    # and a bright (T2w-like) lesion as well
    bright = image.clone()
    bright[:, :1][lesion > 0] = 0.95
    assert term(bright[:, 1:], bright, lesion).item() < term(bright[:, :1], bright, lesion).item()


def test_structure_is_stable_at_low_temperature():
    image, lesion = _lesion_case()
    pred = torch.rand(1, 1, 8, 8, 8) * 5
    alpha, beta, gamma = 0.02, 0.01, 0.01  # logits up to ~350: exp overflows float32
    value = StructureContrastiveLoss(alpha, beta, gamma)(pred, image, lesion)
    q = lesion > 0
    y, f, i = pred[q].double(), image[:, 1:][q].double(), image[:, :1][q].double()
    lse = torch.logsumexp
    expected = lse(torch.cat([y * f / beta, y * i / gamma]), 0) - lse(y * f / alpha, 0)
    assert torch.isfinite(value) and value.item() == pytest.approx(expected.item(), rel=1e-5)


def test_structure_excludes_voxels_lesioned_on_both_sides():
    image, lesion = _lesion_case()
    term = StructureContrastiveLoss()
    pred = torch.rand(1, 1, 8, 8, 8)
    value = term(pred, image, lesion)
    # a flipped mask covering only part of the lesion: those voxels drop out, as if the lesion were smaller
    lesion_flip = torch.zeros_like(lesion)
    lesion_flip[..., 2:5, 2:5, 2:3] = 1
    smaller = lesion.clone()
    smaller[..., 2:5, 2:5, 2:3] = 0
    assert term(pred, image, lesion, lesion_flip).item() == pytest.approx(term(pred, image, smaller).item(), rel=1e-6)
    assert term(pred, image, lesion, lesion_flip).item() != pytest.approx(value.item(), rel=1e-3)


def test_structure_is_zero_and_differentiable_without_qualifying_voxels():
    image, lesion = _lesion_case()
    pred = torch.rand(1, 1, 8, 8, 8, requires_grad=True)
    term = StructureContrastiveLoss()
    for value in (term(pred, image, torch.zeros_like(lesion)), term(pred, image, lesion, lesion_flip=lesion)):
        assert value.item() == 0 and value.requires_grad
        (grad,) = torch.autograd.grad(value, pred)
        assert torch.isfinite(grad).all() and float(grad.abs().max()) == 0


def test_structure_averages_over_samples_with_lesions():
    image, lesion = _lesion_case()
    pred = torch.rand(1, 1, 8, 8, 8)
    term = StructureContrastiveLoss()
    single = term(pred, image, lesion)
    batch = term(pred.repeat(2, 1, 1, 1, 1), image.repeat(2, 1, 1, 1, 1), torch.cat([lesion, 0 * lesion]))
    assert batch.item() == pytest.approx(single.item(), rel=1e-6)  # the lesion-free sample is not averaged in
    grad = torch.autograd.grad(term(pred.requires_grad_(), image, lesion), pred)[0]
    assert float(grad[lesion == 0].abs().max()) == 0 and float(grad[lesion > 0].abs().max()) > 0


def test_una_loss_combines_terms():
    image, lesion = _lesion_case()
    target = image[:, 1:].clone()
    pred = torch.rand(1, 1, 8, 8, 8)
    weight = 1 + lesion
    brain = torch.ones_like(lesion)
    batch = dict(pred=pred, target=target, weight=weight, image=image, lesion=lesion, brain_mask=brain)
    l1_only = WeightedL1GradientLoss()(pred, target, weight, brain)
    assert UNALoss()(**batch).item() == pytest.approx(l1_only.item())
    assert UNALoss(structure_weight=0)(pred, target, weight).item() == pytest.approx(l1_only.item())
    structure = StructureContrastiveLoss()(pred, image, lesion)
    parts = UNALoss(structure_weight=2.0).components(**batch)
    assert parts["structure"].item() == pytest.approx(structure.item())
    assert parts["loss"].item() == pytest.approx(l1_only.item() + 2 * structure.item())
    assert set(parts) == {"loss", "l1", "gradient", "structure", "anomaly"}
    assert parts["anomaly"].item() == 0.0
    with pytest.raises(ValueError, match="'image' and 'lesion'"):
        UNALoss(structure_weight=2.0)(pred, target, weight)


def test_anomaly_head_term_by_hand():
    # BCE on logits 0 (p = 0.5) is log 2 everywhere; batch Dice with smoothing 1: 1 - (2 * 0.5 * n_fg + 1) / (0.5 * N
    # + n_fg + 1)
    logits = torch.zeros(2, 1, 4, 4, 4)
    mask = torch.zeros(2, 1, 4, 4, 4)
    mask[0, 0, :2] = 1  # 32 lesion voxels in the batch of 128
    value = AnomalyHeadLoss()(logits, mask)
    assert value.item() == pytest.approx(math.log(2) + 1 - (32 + 1) / (64 + 32 + 1), rel=1e-5)
    # a confident correct head is near 0, a confident wrong one is large
    good = AnomalyHeadLoss()(20 * (2 * mask - 1), mask).item()
    bad = AnomalyHeadLoss()(-20 * (2 * mask - 1), mask).item()
    assert good < 1e-3 and bad > 10


def test_una_loss_with_anomaly_head_splits_channels():
    image, lesion = _lesion_case()
    target = image[:, 1:].clone()
    healthy = torch.rand(1, 1, 8, 8, 8)
    logits = torch.randn(1, 1, 8, 8, 8)
    pred = torch.cat([healthy, logits], dim=1).requires_grad_()
    parts = UNALoss(anomaly_weight=0.5).components(pred, target, lesion=lesion)
    assert parts["l1"].item() == pytest.approx(WeightedL1GradientLoss().components(healthy, target)["l1"].item())
    assert parts["anomaly"].item() == pytest.approx(AnomalyHeadLoss()(logits, lesion).item())
    total = WeightedL1GradientLoss()(healthy, target) + 0.5 * AnomalyHeadLoss()(logits, lesion)
    assert parts["loss"].item() == pytest.approx(total.item())
    parts["loss"].backward()
    assert pred.grad[:, 1].abs().sum() > 0 and pred.grad[:, 0].abs().sum() > 0
    with pytest.raises(ValueError, match="2 channel"):
        UNALoss(anomaly_weight=1.0)(healthy, target, lesion=lesion)
    with pytest.raises(ValueError, match="'lesion'"):
        UNALoss(anomaly_weight=1.0)(pred, target)
    with pytest.raises(ValueError, match="1 channel"):
        UNALoss()(pred, target)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="one shape"):
        WeightedL1GradientLoss()(torch.rand(1, 1, 4, 4, 4), torch.rand(1, 1, 4, 4, 5))
    with pytest.raises(ValueError, match=r"\[B, 2"):
        StructureContrastiveLoss()(torch.rand(1, 1, 4, 4, 4), torch.rand(1, 1, 4, 4, 4), torch.ones(1, 1, 4, 4, 4))
