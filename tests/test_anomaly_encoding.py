import pytest
import torch

from una_bundle.scripts import FluidAnomaly, RandEncodeAnomaly, RandEncodeAnomalyd
from una_bundle.scripts.generator.anomaly_encoding import lesion_sign


@pytest.fixture
def lesion(brain_image):
    img, brain = brain_image
    prob, mask = FluidAnomaly().set_random_state(0)(img, brain)
    return img, brain, prob, mask


@pytest.mark.parametrize("modality, direction", [("T1", -1), ("CT", -1), ("T2", 1), ("FLAIR", 1)])
def test_direction_by_modality_and_untouched_outside(lesion, modality, direction):
    img, _, prob, mask = lesion
    out = RandEncodeAnomaly(modality=modality, swap_sign_prob=0.0).set_random_state(0)(img, prob)
    change = (out - img)[mask > 0]
    assert direction * float(change.mean()) > 0
    assert torch.equal(out[prob == 0], img[prob == 0])
    assert float(out.min()) >= 0
    assert torch.equal(out.affine, img.affine)
    flipped = RandEncodeAnomaly(modality=modality, swap_sign_prob=1.0).set_random_state(0)(img, prob)
    assert -direction * float((flipped - img)[mask > 0].mean()) > 0


def test_magnitude_follows_the_reference_formula(lesion):
    img, _, prob, _ = lesion
    # no texture: change = -a * mu * P with a in [1, 2] and mu the P-weighted lesion mean
    out = RandEncodeAnomaly("T2", a_range=(1.5, 1.5), sigma_range=(0, 0), swap_sign_prob=0)(img, prob)
    mu = float((img * prob).sum() / prob.sum())
    assert torch.allclose(out - img, 1.5 * mu * prob, atol=1e-3)


def test_synthetic_contrast_direction_from_grey_white_ordering():
    label = torch.zeros(1, 10, 10, 10, dtype=torch.int64)
    label[0, :5], label[0, 5:] = 3, 2  # 3 = grey matter, 2 = white matter
    t1_like = torch.where(label == 2, 110.0, 70.0)
    t2_like = torch.where(label == 2, 60.0, 90.0)
    assert lesion_sign("synthetic", t1_like, label, gm_labels=[3], wm_labels=[2]) == -1
    assert lesion_sign("synthetic", t2_like, label, gm_labels=[3], wm_labels=[2]) == 1
    prob = torch.zeros(1, 10, 10, 10)
    prob[0, 3:7, 3:7, 3:7] = 0.5
    encode = RandEncodeAnomaly("synthetic", gm_labels=[3], wm_labels=[2], swap_sign_prob=0.0)
    assert float((encode(t2_like, prob, label=label) - t2_like).sum()) > 0
    assert float((encode(t1_like, prob, label=label) - t1_like).sum()) < 0


def test_deterministic_and_dictionary_version(lesion):
    img, _, prob, _ = lesion
    t = RandEncodeAnomaly("T1")
    assert torch.equal(t.set_random_state(1)(img, prob), t.set_random_state(1)(img, prob))
    assert not torch.equal(t.set_random_state(1)(img, prob), t.set_random_state(2)(img, prob))
    d = RandEncodeAnomalyd(keys=["image", "copy"], modality_key="modality")
    out = d.set_random_state(0)({"image": img, "copy": img.clone(), "lesion_prob": prob, "modality": "FLAIR"})
    assert torch.equal(out["image"], out["copy"])  # one draw for all keys
    assert float((out["image"] - img).sum()) != 0
    skipped = RandEncodeAnomalyd(keys="image", prob=0.0)({"image": img, "lesion_prob": prob})
    assert torch.equal(skipped["image"], img)


def test_errors(lesion):
    img, _, prob, _ = lesion
    with pytest.raises(ValueError, match="unknown modality"):
        RandEncodeAnomaly("PET")
    with pytest.raises(ValueError, match="a_range"):
        RandEncodeAnomaly(a_range=(2, 1))
    with pytest.raises(ValueError, match="needs the image, its label map"):
        RandEncodeAnomaly("synthetic")(img, prob)
    with pytest.raises(ValueError, match="does not match"):
        RandEncodeAnomaly()(img, prob[:, 1:])
    with pytest.raises(ValueError, match="unknown modality"):
        RandEncodeAnomaly()(img, prob, modality="DWI")
