"""Anomaly map, threshold and mask on small phantoms."""

import numpy as np
import pytest
import torch
from conftest import ellipsoid
from monai.data import MetaTensor
from monai.transforms import GaussianSmooth

from una_bundle.scripts.scoring.anomaly_scoring import AnomalyScored, anomaly_map, anomaly_mask, anomaly_threshold
from una_bundle.scripts.scoring.metrics import dice

SHAPE = (32, 36, 30)


def _phantom(seed: int = 0):
    """``(image [X, Y, Z] in [0, 1] with smooth texture, brain mask)``."""
    gen = torch.Generator().manual_seed(seed)
    brain = ellipsoid(SHAPE)
    texture = GaussianSmooth(2.0)(torch.randn(1, *SHAPE, generator=gen))[0].as_tensor()
    image = (0.6 + 0.6 * texture).clamp(0.2, 1.0) * brain
    return image, brain


def _sphere(center, radius) -> torch.Tensor:
    axes = [torch.arange(n, dtype=torch.float32) for n in SHAPE]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    return (x - center[0]) ** 2 + (y - center[1]) ** 2 + (z - center[2]) ** 2 <= radius**2


def test_zero_map_when_the_input_is_the_reconstruction():
    image, brain = _phantom()
    for tolerance in (0, 1, 2):
        assert float(anomaly_map(image, image, brain, shift_tolerance=tolerance).abs().max()) == 0.0


def test_a_lesion_gives_a_map_peaking_at_the_lesion():
    image, brain = _phantom()
    lesion = _sphere((12, 20, 15), 4)
    diseased = image * (1 - 0.6 * lesion)  # a dark T1 lesion
    amap = anomaly_map(diseased, image, brain)
    assert amap.shape == image.shape and amap.dtype == torch.float32
    peak = np.unravel_index(int(amap.argmax()), SHAPE)
    assert bool(lesion[peak])
    assert float(amap[lesion].mean()) > 0.2
    far = brain & ~_sphere((12, 20, 15), 8)
    assert float(amap[far].max()) < 1e-4  # only the Gaussian's tail, 4 voxels away
    assert float(amap.min()) >= 0 and float(amap.max()) <= 1


def test_map_units_are_those_of_the_images():
    image, brain = _phantom()
    lesion = _sphere((16, 18, 15), 5)
    diseased = image - 0.3 * lesion * brain  # a uniform 0.3 drop, no smoothing, no tolerance: exactly 0.3
    amap = anomaly_map(diseased, image, brain, smoothing_sigma=0, shift_tolerance=0)
    assert torch.allclose(amap[lesion & brain], torch.tensor(0.3), atol=1e-6)


def test_shift_tolerance_forgives_a_one_voxel_misalignment():
    image, brain = _phantom()
    shifted = torch.roll(image, 1, dims=0)
    inner = ellipsoid(SHAPE, (0.6, 0.6, 0.6))  # away from the border, where the roll wraps around
    plain = anomaly_map(shifted, image, inner, shift_tolerance=0)
    tolerant = anomaly_map(shifted, image, inner, shift_tolerance=1)
    assert float(plain.sum()) > 0
    assert float(tolerant.sum()) < 0.05 * float(plain.sum())
    # a true lesion survives the tolerance
    lesion = _sphere((16, 18, 15), 4)
    assert float(anomaly_map(image * (1 - 0.6 * lesion), image, brain)[lesion].mean()) > 0.2


def test_nothing_outside_the_brain():
    image, brain = _phantom()
    diseased = image + 0.8 * ~brain  # large differences outside the brain
    lesion = _sphere((3, 18, 15), 4) & brain  # a lesion touching the brain border: smoothing must not leak out
    diseased = diseased * (1 - 0.6 * lesion)
    amap = anomaly_map(diseased, image, brain)
    assert float(amap[~brain].abs().max()) == 0.0
    assert float(amap[lesion].max()) > 0.1
    default_brain = anomaly_map(image * (1 - 0.6 * lesion), image)  # default brain: image > 0
    assert float(default_brain[image == 0].abs().max()) == 0.0


def test_channel_first_input_keeps_its_layout_and_metadata():
    image, brain = _phantom()
    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64))
    meta = MetaTensor(image[None], affine=affine)
    amap = anomaly_map(meta, image[None] * 0.9, brain[None])
    assert isinstance(amap, MetaTensor) and amap.shape == (1, *SHAPE)
    assert torch.equal(amap.affine, affine)
    mask = anomaly_mask(amap, 0.01)
    assert mask.shape == (1, *SHAPE) and mask.dtype == torch.uint8


def test_default_rule_separates_a_lesion_from_reconstruction_noise():
    image, brain = _phantom(1)
    gen = torch.Generator().manual_seed(1)
    lesion = _sphere((14, 18, 14), 5) & brain
    diseased = image * (1 - 0.5 * lesion)
    noise = GaussianSmooth(0.7)(torch.randn(1, *SHAPE, generator=gen))[0]
    healthy = (GaussianSmooth(0.5)(image[None])[0] + 0.03 * noise / noise.std()).clamp(0, 1) * brain  # imperfect
    amap = anomaly_map(diseased, healthy, brain)
    threshold = anomaly_threshold(amap, brain)
    mask = anomaly_mask(amap, threshold, brain_mask=brain)
    assert dice(mask, lesion) > 0.7
    assert dice(anomaly_mask(amap, 0.0, 0, brain), lesion) < 0.3  # without a threshold: the noise is everywhere
    clean = anomaly_mask(anomaly_map(image, healthy, brain), threshold, brain_mask=brain)
    assert int(clean.sum()) < 0.001 * int(brain.sum())  # a healthy input: (almost) nothing detected


def test_otsu_splits_a_bimodal_map():
    amap = torch.zeros(SHAPE)
    amap[:16] = 0.02
    amap[16:20] = 0.5
    assert 0.02 <= anomaly_threshold(amap, method="otsu") < 0.5
    assert anomaly_threshold(amap) == pytest.approx(0.1)
    assert anomaly_threshold(amap, method="fixed", value=0.2) == pytest.approx(0.2)
    assert anomaly_threshold(torch.zeros(SHAPE), method="otsu") == 0.0
    with pytest.raises(ValueError, match="method"):
        anomaly_threshold(amap, method="median")


def test_tiny_components_are_removed_with_26_connectivity():
    amap = torch.zeros(SHAPE)
    amap[2:4, 2:4, 2:4] = 1.0  # 8 voxels
    amap[10:14, 10:14, 10:14] = 1.0  # 64 voxels
    diagonal = torch.zeros(SHAPE, dtype=torch.bool)
    for i in range(28):  # 28 voxels touching only by their corners: one component with 26-connectivity
        diagonal[2 + i, 6 + i, 1 + i] = True
    amap[diagonal] = 1.0
    mask = anomaly_mask(amap, 0.5, min_component_voxels=27)
    assert mask.dtype == torch.uint8
    assert int(mask[2:4, 2:4, 2:4].sum()) == 0
    assert int(mask[10:14, 10:14, 10:14].sum()) == 64
    assert bool(mask[diagonal].all())
    assert int(mask.sum()) == 64 + 28
    assert int(anomaly_mask(amap, 0.5, min_component_voxels=0).sum()) == 8 + 64 + 28
    inside = torch.zeros(SHAPE, dtype=torch.bool)
    inside[:12] = True
    assert int(anomaly_mask(amap, 0.5, 0, brain_mask=inside).sum()) == int((amap > 0.5)[:12].sum())


def test_errors_name_the_problem():
    image, brain = _phantom()
    with pytest.raises(ValueError, match="same shape"):
        anomaly_map(image, image[:-1])
    with pytest.raises(ValueError, match="shift_tolerance"):
        anomaly_map(image, image, brain, shift_tolerance=-1)
    with pytest.raises(ValueError, match="brain_mask"):
        anomaly_map(image, image, brain[:-1])
    with pytest.raises(ValueError, match="min_component_voxels"):
        anomaly_mask(image, 0.1, min_component_voxels=-3)


def test_hysteresis_keeps_whole_lesions_with_a_confident_core_and_drops_blobs_without():
    amap = torch.zeros(20, 20, 20)
    amap[2:8, 2:8, 2:8] = 0.6  # a lesion with a confident core ...
    amap[4:6, 4:6, 4:6] = 0.95
    amap[12:18, 12:18, 12:18] = 0.7  # ... and a blob of moderate values: a typical false positive
    plain = anomaly_mask(amap, 0.5, 0)
    assert int(plain.sum()) == 216 + 216
    hysteresis = anomaly_mask(amap, 0.5, 0, seed_threshold=0.9)
    assert int(hysteresis.sum()) == 216 and bool(hysteresis[2:8, 2:8, 2:8].all())  # the whole lesion, nothing else
    assert int(anomaly_mask(amap, 0.5, 0, seed_threshold=0.96).sum()) == 0
    with pytest.raises(ValueError, match="seed_threshold"):
        anomaly_mask(amap, 0.5, 0, seed_threshold=0.4)


def _head_case(modality: str):
    """A T1w phantom with a dark lesion, a reconstruction without it, and a head that flags the lesion and a healthy
    blob (an asymmetry the reconstruction reproduces): ``(data dict, lesion, healthy blob)``."""
    image, brain = _phantom(3)
    lesion, blob = _sphere((10, 18, 15), 4) & (brain > 0), _sphere((22, 18, 15), 4) & (brain > 0)
    healthy = image.clone()
    image = torch.where(lesion, torch.full_like(image, 0.1), image)
    logits = torch.where(lesion | blob, torch.full_like(image, 4.0), torch.full_like(image, -6.0))
    pred = MetaTensor(torch.stack([healthy, logits]))
    data = {
        "image": torch.stack([image, image.flip(0)]),
        "pred": pred,
        "brain": brain[None].float(),
        "modality": modality,
    }
    return data, lesion, blob


@pytest.mark.parametrize("modality, gated", [("t1", True), ("auto", True), ("t2", False)])
def test_head_gate_keeps_what_departs_from_the_reconstruction(modality, gated):
    data, lesion, blob = _head_case(modality)
    plain = AnomalyScored(head_threshold=0.8)(dict(data))
    out = AnomalyScored(head_threshold=0.8, head_gate=0.15, head_gate_threshold=0.4)(dict(data))
    assert out["anomaly_gated"] is gated and plain["anomaly_gated"] is False
    assert out["t1_like"] is gated and out["t1_correlation"] > 0.8  # one T1w decision, handed on to FillAnomalyd
    assert plain["anomaly_threshold"] == 0.8 and out["anomaly_threshold"] == (0.4 if gated else 0.8)
    amap, before = out["anomaly"][0], plain["anomaly"][0]
    assert float(amap[lesion].mean()) > 0.9 * float(before[lesion].mean())  # the lesion keeps its probability
    if gated:
        assert float(amap[blob].max()) < 0.05 < float(before[blob].min())  # the reproduced blob is gone
    else:
        assert torch.equal(amap, before)
    assert out["pred"].shape[0] == 1


def test_head_gate_arguments():
    with pytest.raises(ValueError, match="head_gate must be > 0"):
        AnomalyScored(head_gate=0.0)
    with pytest.raises(ValueError, match="head_gate_threshold"):
        AnomalyScored(head_gate=0.2, head_gate_threshold=1.0)
