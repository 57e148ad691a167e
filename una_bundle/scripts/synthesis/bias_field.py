"""Bias field -- ours, :class:`RandSmoothBiasField(d) <RandSmoothBiasField>`: ``exp`` of a random low-resolution
Gaussian log-field whose std is itself random. MONAI's ``RandBiasField`` is a fixed-degree Legendre polynomial
(NumPy), ``RandSmoothFieldAdjustIntensity`` a uniform field of fixed amplitude and size; neither draws the
log-field's std per sample."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from ..data.checks import check_probability, check_range
from ..data.rng import random_seed
from .common import as_range, check_image, plain

__all__ = ["RandSmoothBiasField", "RandSmoothBiasFieldd"]


class RandSmoothBiasField(RandomizableTransform):
    """Multiply an image by a smooth random bias field ``exp(L)``, the same field on every channel.

    ``L`` is a Gaussian log-field: a coarse grid of ``max(min_nodes, round(scale * n))`` nodes per axis (``n`` the
    axis size, ``scale ~ U(scale_range)``) with values ``N(0, std^2)``, ``std ~ U(std_range)``, upsampled to the image
    grid by trilinear interpolation (``align_corners=True``). Reference: 2-4 % of the size (3-6 nodes at 160^3),
    log-field std ``U(0.1, 0.6)`` (UNA).

    ``__call__(img)``: ``img`` ``[C, X, Y, Z]``. Returns ``img * exp(L)`` with the input's shape, dtype (float32 for
    integer input) and metadata. After a call, ``std`` and ``scale`` describe the draw; :meth:`log_field` gives ``L``.

    Args:
        std_range: (min, max) of the log-field's std.
        scale_range: (min, max) of the node count as a fraction of the image size, in (0, 1].
        min_nodes: fewest nodes per axis (>= 2).
        prob: probability of applying a field at all.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        std_range: Sequence[float] = (0.1, 0.6),
        scale_range: Sequence[float] = (0.02, 0.04),
        min_nodes: int = 2,
        prob: float = 1.0,
    ) -> None:
        RandomizableTransform.__init__(self, check_probability("prob", prob))
        self.std_range = as_range("std_range", std_range, 0.0)
        self.scale_range = check_range("scale_range", scale_range, 0.0, 1.0)
        if not self.scale_range[0] > 0:
            raise ValueError(f"scale_range must be > 0, got {tuple(scale_range)}.")
        if int(min_nodes) < 2:
            raise ValueError(f"min_nodes must be >= 2, got {min_nodes}.")
        self.min_nodes = int(min_nodes)
        self.std = self.scale = 0.0
        self._seed: int | None = None

    def randomize(self, data=None) -> None:
        """Draw the field's std, node scale and the seed of its node values."""
        super().randomize(None)
        if not self._do_transform:
            return
        self.std = float(self.R.uniform(*self.std_range))
        self.scale = float(self.R.uniform(*self.scale_range))
        self._seed = random_seed(self.R)

    def log_field(self, spatial_shape: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
        """The last drawn log-field ``L`` on a grid of ``spatial_shape``: float32 ``[1, X, Y, Z]`` on ``device``."""
        if self._seed is None:
            raise RuntimeError("RandSmoothBiasField: no field drawn yet; call randomize() first.")
        shape = tuple(int(n) for n in spatial_shape)
        nodes = tuple(max(self.min_nodes, int(round(self.scale * n))) for n in shape)
        generator = torch.Generator(device=device).manual_seed(self._seed)
        small = self.std * torch.randn((1, 1, *nodes), generator=generator, device=device)
        return F.interpolate(small, size=shape, mode="trilinear", align_corners=True)[0]

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        """
        Args:
            img: image ``[C, X, Y, Z]`` (tensor, MetaTensor or array).
            randomize: draw a new field (``False`` replays the last draw).
        """
        img = convert_to_tensor(img, track_meta=get_track_meta())
        check_image("RandSmoothBiasField", img)
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        data = plain(img)
        dtype = data.dtype if data.is_floating_point() else torch.float32
        field = torch.exp(self.log_field(data.shape[1:], data.device)).to(dtype)
        return convert_to_dst_type(data.to(dtype) * field, img, dtype=dtype)[0]


class RandSmoothBiasFieldd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandSmoothBiasField`: every key gets the same field (keys share a grid).

    Args:
        keys: image keys ``[C, X, Y, Z]``.
        allow_missing_keys: don't raise when a key is missing.
        kwargs: the parameters of :class:`RandSmoothBiasField` (``prob`` included).
    """

    backend = RandSmoothBiasField.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, check_probability("prob", kwargs.pop("prob", 1.0)))
        self.bias_field = RandSmoothBiasField(prob=1.0, **kwargs)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.bias_field.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        self.bias_field.randomize()
        for key in self.key_iterator(d):
            d[key] = self.bias_field(d[key], randomize=False)
        return d
