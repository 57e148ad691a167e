"""RandDropSymmetryd: the mirrored copies become the originals with probability prob, reproducibly."""

import numpy as np
import pytest
import torch

from una_bundle.scripts.synthesis.symmetry import RandDropSymmetryd


def _sample():
    image = torch.arange(8.0).reshape(1, 2, 2, 2)
    lesion = (image > 5).float()
    return {"image": image, "image_flip": image.flip(1), "lesion": lesion, "lesion_flip": lesion.flip(1)}


def test_prob_one_copies_every_key_and_prob_zero_keeps_the_mirror():
    d = _sample()
    out = RandDropSymmetryd(["image", "lesion"], prob=1.0)(d)
    assert torch.equal(out["image_flip"], d["image"]) and torch.equal(out["lesion_flip"], d["lesion"])
    out["image_flip"][0, 0, 0, 0] = -1.0  # a copy, not the same tensor
    assert d["image"][0, 0, 0, 0] == 0.0
    kept = RandDropSymmetryd(["image", "lesion"], prob=0.0)(d)
    assert torch.equal(kept["image_flip"], d["image"].flip(1))


def test_rate_and_reproducibility():
    t = RandDropSymmetryd("image", prob=0.3).set_random_state(seed=4)
    drops = [torch.equal(t(_sample())["image_flip"], _sample()["image"]) for _ in range(400)]
    assert 0.22 < np.mean(drops) < 0.38
    again = RandDropSymmetryd("image", prob=0.3).set_random_state(seed=4)
    assert drops == [torch.equal(again(_sample())["image_flip"], _sample()["image"]) for _ in range(400)]


def test_missing_mirror_and_bad_arguments():
    with pytest.raises(KeyError, match="image_flip"):
        RandDropSymmetryd("image", prob=1.0)({"image": torch.zeros(1, 2, 2, 2)})
    with pytest.raises(ValueError, match="prob"):
        RandDropSymmetryd("image", prob=1.5)
    with pytest.raises(ValueError, match="mirror_suffix"):
        RandDropSymmetryd("image", mirror_suffix="")
