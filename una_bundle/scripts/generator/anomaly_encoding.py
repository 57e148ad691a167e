"""Putting an anomaly into an image: ``I <- max(0, I + P * (s * a + sigma * eps))`` (UNA, section 2).

``P`` is the lesion probability, ``mu`` the image's ``P``-weighted mean inside the lesion, ``a ~ U(a_range) * mu``
the contrast, ``sigma ~ U(sigma_range) * mu`` the texture, ``eps ~ N(0, 1)`` per voxel (the reference code's
magnitudes). The sign ``s`` says whether lesions look darker or brighter than tissue:

* real images by modality: T1w and CT -> darker (``s = -1``); T2w and FLAIR -> brighter (``s = +1``);
* synthetic contrasts by their grey/white ordering: grey matter brighter than white matter is T2-like ->
  brighter, otherwise darker (needs the label map and the grey/white label ids);
* as in the paper, the sign is swapped with probability ``swap_sign_prob`` (0.2).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from ..data.checks import check_probability, check_range
from ..data.modalities import LESION_SIGN
from ..data.rng import torch_generator

__all__ = ["RandEncodeAnomaly", "RandEncodeAnomalyd", "MODALITY_SIGN", "lesion_sign"]

MODALITY_SIGN = LESION_SIGN  # the lesion direction of real modalities (data.modalities)


def lesion_sign(
    modality: str,
    image: torch.Tensor | None = None,
    label: torch.Tensor | None = None,
    gm_labels: Sequence[int] = (),
    wm_labels: Sequence[int] = (),
) -> int:
    """The direction (-1 darker, +1 brighter) lesions take in an image of ``modality``.

    ``modality`` is one of ``MODALITY_SIGN``'s keys or ``"synthetic"``; for the latter the mean intensities of
    ``image`` over the grey- and white-matter labels of ``label`` decide (GM brighter than WM -> +1).
    """
    key = str(modality).upper()
    if key in MODALITY_SIGN:
        return MODALITY_SIGN[key]
    if key != "SYNTHETIC":
        raise ValueError(f"unknown modality {modality!r}; expected one of {sorted(MODALITY_SIGN)} or 'synthetic'.")
    if image is None or label is None or not gm_labels or not wm_labels:
        raise ValueError("modality 'synthetic' needs the image, its label map and the grey/white matter label ids.")
    label = torch.as_tensor(label, device=image.device).reshape(image.shape[-3:])
    values = torch.as_tensor(image).reshape(-1, *image.shape[-3:])[0]

    def mean_over(ids):
        region = torch.isin(label, torch.as_tensor(list(ids), device=label.device))
        if not bool(region.any()):
            raise ValueError(f"label map has none of the labels {list(ids)} needed to order grey and white matter.")
        return float(values[region].float().mean())

    return 1 if mean_over(gm_labels) > mean_over(wm_labels) else -1


class RandEncodeAnomaly(RandomizableTransform):
    """Encode a lesion probability map into an image with a random, modality-consistent appearance.

    ``__call__(img, probability, label=None, modality=None)``: ``img`` ``[C, X, Y, Z]`` (each channel encoded
    with its own ``mu``), ``probability`` ``[1, X, Y, Z]`` or ``[X, Y, Z]`` in ``[0, 1]``. Returns the encoded
    image, same type, dtype and metadata, never negative.

    Args:
        modality: default modality (``T1``, ``T2``, ``FLAIR``, ``CT`` or ``synthetic``), overridable per call.
        a_range: contrast ``a`` as a multiple of ``mu`` (reference: ``U(1, 2)``).
        sigma_range: texture std as a multiple of ``mu`` (reference: ``U(0, 1/4)``).
        swap_sign_prob: probability of the opposite direction (paper: 0.2).
        gm_labels, wm_labels: grey/white matter label ids, for ``synthetic`` images.
        prob: probability of encoding at all.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        modality: str = "T1",
        a_range: Sequence[float] = (1.0, 2.0),
        sigma_range: Sequence[float] = (0.0, 0.25),
        swap_sign_prob: float = 0.2,
        gm_labels: Sequence[int] = (),
        wm_labels: Sequence[int] = (),
        prob: float = 1.0,
    ) -> None:
        RandomizableTransform.__init__(self, check_probability("prob", prob))
        if str(modality).upper() not in (*MODALITY_SIGN, "SYNTHETIC"):
            raise ValueError(f"unknown modality {modality!r}; expected one of {sorted(MODALITY_SIGN)} or 'synthetic'.")
        self.modality = modality
        self.a_range = check_range("a_range", a_range, 0.0, None)
        self.sigma_range = check_range("sigma_range", sigma_range, 0.0, None)
        self.swap_sign_prob = check_probability("swap_sign_prob", swap_sign_prob)
        self.gm_labels = tuple(gm_labels)
        self.wm_labels = tuple(wm_labels)
        self._a = self._sigma = 0.0
        self._swap = False
        self._generator: torch.Generator | None = None

    def randomize(self, data=None, device: torch.device | str = "cpu") -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        self._a = self.R.uniform(*self.a_range)
        self._sigma = self.R.uniform(*self.sigma_range)
        self._swap = self.R.rand() < self.swap_sign_prob
        self._generator = torch_generator(self.R, device)

    def __call__(
        self,
        img: torch.Tensor,
        probability: torch.Tensor,
        label: torch.Tensor | None = None,
        modality: str | None = None,
        randomize: bool = True,
    ) -> torch.Tensor:
        img = convert_to_tensor(img, track_meta=True)
        if img.ndim != 4:
            raise ValueError(
                f"RandEncodeAnomaly: expected a channel-first 3D image [C, X, Y, Z], got {tuple(img.shape)}."
            )
        p = torch.as_tensor(probability, device=img.device).float()
        p = p.squeeze(0) if p.ndim == 4 and p.shape[0] == 1 else p
        if tuple(p.shape) != tuple(img.shape[1:]):
            raise ValueError(
                f"RandEncodeAnomaly: probability shape {tuple(p.shape)} does not match {tuple(img.shape)}."
            )
        if randomize:
            self.randomize(device=img.device)
        if not self._do_transform or not bool((p > 0).any()):
            return img
        sign = lesion_sign(modality or self.modality, img, label, self.gm_labels, self.wm_labels)
        sign = -sign if self._swap else sign
        generator = torch.Generator(device=img.device).manual_seed(self._generator.initial_seed())
        values = img.as_tensor().float() if hasattr(img, "as_tensor") else img.float()
        mu = (values * p).flatten(1).sum(1) / p.sum()  # per channel, P-weighted lesion mean
        eps = torch.randn(values.shape, generator=generator, device=img.device)
        change = p * (sign * self._a + self._sigma * eps) * mu.view(-1, 1, 1, 1)
        out = (values + change).clamp_min(0)
        return convert_to_dst_type(out, img)[0]


class RandEncodeAnomalyd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandEncodeAnomaly`: encodes ``probability_key`` into each of ``keys``.

    Args:
        keys: image keys to encode (all with the same random draw).
        probability_key: key of the lesion probability map.
        label_key: key of the label map (needed for ``synthetic`` images), or ``None``.
        modality_key: key holding each sample's modality string, or ``None`` to use ``modality``.
        allow_missing_keys: don't raise when a key is missing.
        kwargs: the parameters of :class:`RandEncodeAnomaly` (``prob`` included).
    """

    backend = RandEncodeAnomaly.backend

    def __init__(
        self,
        keys: KeysCollection,
        probability_key: str = "lesion_prob",
        label_key: str | None = None,
        modality_key: str | None = "modality",
        allow_missing_keys: bool = False,
        **kwargs,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, kwargs.pop("prob", 1.0))
        self.encode = RandEncodeAnomaly(prob=1.0, **kwargs)
        self.probability_key = probability_key
        self.label_key = label_key
        self.modality_key = modality_key

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.encode.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        first = self.first_key(d)
        if first == ():
            return d
        self.encode.randomize(device=torch.as_tensor(d[first]).device)
        label = d[self.label_key] if self.label_key is not None else None
        modality = d.get(self.modality_key) if self.modality_key is not None else None
        for key in self.key_iterator(d):
            d[key] = self.encode(d[key], d[self.probability_key], label=label, modality=modality, randomize=False)
        return d
