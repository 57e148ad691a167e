"""Symmetry-channel dropout -- :class:`RandDropSymmetryd`: sometimes hide the left-right comparison from the network.

The network sees the image beside its registered mirror image (``FlipRegisterd``), so a one-sided lesion stands out as
a left-right difference. Trained on that cue alone, the anomaly head becomes an asymmetry detector: given the image
twice (no difference anywhere) the shipped 0.4.0 head flagged nothing on the calibration set, and it flagged the
healthy side opposite a large lesion, asymmetric but healthy lateral ventricles, and missed bilateral
(periventricular) lesions. With probability ``prob`` this transform replaces the mirrored copies by the originals, so
the sample shows no left-right difference at all and the anomaly must be found by its appearance; a lesion present in
both channels at the same place is what a symmetric, bilateral lesion looks like.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends

from ..data.checks import check_probability

__all__ = ["RandDropSymmetryd"]


class RandDropSymmetryd(RandomizableTransform, MapTransform):
    """With probability ``prob``, ``d[key + mirror_suffix] = d[key]`` (a copy) for every key.

    Args:
        keys: keys whose mirrored copies (``key + mirror_suffix``, e.g. ``image_flip``, ``lesion_flip``) are
            replaced; each mirrored copy must exist (``allow_missing_keys`` only skips a missing ``key``).
        mirror_suffix: the suffix ``FlipRegisterd`` gives the mirrored copies.
        prob: probability of dropping the symmetry cue for a sample (all keys together).
        allow_missing_keys: don't raise when a key is missing.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self, keys: KeysCollection, mirror_suffix: str = "_flip", prob: float = 0.5, allow_missing_keys: bool = False
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, check_probability("prob", prob))
        if not mirror_suffix:
            raise ValueError("mirror_suffix must be a non-empty string (the mirrored copies' key suffix).")
        self.mirror_suffix = mirror_suffix

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            mirror = f"{key}{self.mirror_suffix}"
            if mirror not in d:
                raise KeyError(f"RandDropSymmetryd: no mirrored copy '{mirror}' of '{key}' (run FlipRegisterd first).")
            d[mirror] = d[key].clone() if isinstance(d[key], torch.Tensor) else d[key].copy()
        return d
