"""Per-voxel loss weights (UNA section 5): inpaint synthetic anomalies, don't supervise real lesions.

* A synthetic anomaly was painted onto a healthy subject, so the healthy truth under it is known and the network
  must inpaint it: ``w = 1 + lambda * P`` (``P`` the anomaly probability, ``lambda = 1``).
* A real lesion's healthy truth is unknown: ``w = 1 - M`` (``M`` the real lesion mask), i.e. not supervised.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.transforms import MapTransform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

__all__ = ["LesionLossWeightd"]


class LesionLossWeightd(MapTransform):
    """Write ``output_key``: float32 ``[1, X, Y, Z]`` weights from the synthetic anomaly and the real lesion.

    Args:
        probability_key: key of the synthetic anomaly probability ``P`` (absent or zero: no anomaly).
        real_lesion_key: key of a real lesion mask ``M`` (absent for healthy subjects).
        reference_key: key whose grid and metadata the weight takes (the training target).
        output_key: where the weight is written.
        inpaint_weight: ``lambda`` in ``1 + lambda * P``.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        probability_key: str = "lesion_prob",
        real_lesion_key: str = "real_lesion",
        reference_key: str = "target",
        output_key: str = "weight",
        inpaint_weight: float = 1.0,
    ) -> None:
        super().__init__(keys=reference_key)
        if not inpaint_weight >= 0:
            raise ValueError(f"inpaint_weight must be >= 0, got {inpaint_weight}.")
        self.probability_key = probability_key
        self.real_lesion_key = real_lesion_key
        self.reference_key = reference_key
        self.output_key = output_key
        self.inpaint_weight = inpaint_weight

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        reference = convert_to_tensor(d[self.reference_key], track_meta=True)
        weight = torch.ones((1, *reference.shape[1:]), device=reference.device)
        if self.probability_key in d:
            prob = torch.as_tensor(d[self.probability_key], device=reference.device).float()
            weight = weight + self.inpaint_weight * prob[:1]
        if self.real_lesion_key in d:
            lesion = torch.as_tensor(d[self.real_lesion_key], device=reference.device).float()[:1]
            weight = weight * (1 - (lesion > 0).float())
        d[self.output_key] = convert_to_dst_type(weight, reference, dtype=torch.float32)[0]
        return d
