"""Noise by image source -- :class:`RandNoiseBySourced`: Gaussian noise whose scale depends on whether the image
was synthesised from labels or is a real scan (UNA's two noise ranges)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from ..data.checks import check_probability, check_range
from ..data.rng import random_seed
from .common import plain

__all__ = ["RandNoiseBySourced"]


class RandNoiseBySourced(RandomizableTransform, MapTransform):
    """Gaussian noise whose scale depends on where the image came from (UNA): std ``U(synthetic_std)`` for
    synthetic images, ``U(real_std)`` for real scans, on images already normalised to ``[0, 1]``.

    Defaults are UNA's: ``U(0.05, 1) / 255`` for synthetic images (drawn on the 0-255 scale) and ``U(0, 0.02)``
    for real ones. Every channel of every key gets noise of the same std (independent per voxel and channel).

    Args:
        keys: image keys ``[C, X, Y, Z]``.
        source_key: key holding ``"synthetic"`` or ``"real"`` (see :class:`RandLabelToImaged`).
        synthetic_std: std range for synthetic images.
        real_std: std range for real images.
        prob: probability of adding noise.
        allow_missing_keys: don't raise when a key is missing.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        keys: KeysCollection,
        source_key: str = "source",
        synthetic_std: Sequence[float] = (0.05 / 255, 1.0 / 255),
        real_std: Sequence[float] = (0.0, 0.02),
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, check_probability("prob", prob))
        self.source_key = source_key
        self.std_ranges = {
            "synthetic": check_range("synthetic_std", synthetic_std, 0.0),
            "real": check_range("real_std", real_std, 0.0),
        }
        self._fraction = 0.0
        self._seed = 0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._fraction = self.R.uniform()
        self._seed = random_seed(self.R)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        source = d.get(self.source_key)
        if source not in self.std_ranges:
            raise ValueError(f"RandNoiseBySourced: '{self.source_key}' must be 'synthetic' or 'real', got {source!r}.")
        low, high = self.std_ranges[source]
        std = low + (high - low) * self._fraction
        for index, key in enumerate(self.key_iterator(d)):
            img = convert_to_tensor(d[key], track_meta=get_track_meta())
            generator = torch.Generator(device=img.device).manual_seed(self._seed + index)
            noise = torch.randn(img.shape, generator=generator, device=img.device, dtype=torch.float32) * std
            d[key] = convert_to_dst_type(plain(img).float() + noise, img)[0]
        return d
