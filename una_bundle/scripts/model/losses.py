"""UNA's training loss (``shared/design/una-method.md`` section 5).

* :class:`WeightedL1GradientLoss`: per-voxel weighted L1 between the prediction and the healthy target plus the
  weighted L1 between their spatial gradients (forward differences). The weights come from
  :class:`~una_bundle.scripts.model.loss_weight.LesionLossWeightd`: ``1 + lambda * P`` on a synthetic anomaly (inpaint
  it), ``0`` on a real lesion (its healthy truth is unknown).
* :class:`StructureContrastiveLoss`: the paper's optional term pulling the prediction inside a lesion towards the
  registered flipped (healthy) side.
* :class:`UNALoss`: their weighted sum, taking the keys of the training batch.

All inputs are ``[B, C, X, Y, Z]`` tensors (any number of spatial axes works); the losses return scalars.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceLoss

__all__ = ["WeightedL1GradientLoss", "StructureContrastiveLoss", "AnomalyHeadLoss", "UNALoss"]

_NORMALIZATIONS = ("weight", "mean")


def _check_same_shape(**tensors: torch.Tensor | None) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items() if t is not None}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"Expected tensors of one shape [B, 1, X, Y, Z], got {shapes}.")
    if any(len(s) < 3 for s in shapes.values()):
        raise ValueError(f"Expected [B, C, spatial...] tensors, got {shapes}.")


def _axis_slices(ndim: int, axis: int) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Index tuples selecting voxels ``i + 1`` and ``i`` along ``axis`` (for forward differences)."""
    upper = [slice(None)] * ndim
    lower = [slice(None)] * ndim
    upper[axis] = slice(1, None)
    lower[axis] = slice(None, -1)
    return tuple(upper), tuple(lower)


class WeightedL1GradientLoss(nn.Module):
    """Weighted L1 of the prediction plus weighted L1 of its spatial gradients.

    With ``e = pred - target``, ``w = weight * mask`` and, along each spatial axis ``d``, the forward difference
    ``D_d e[i] = e[i + 1] - e[i]`` (equal to ``D_d pred - D_d target``) weighted by ``w_d[i] = min(w[i], w[i + 1])``::

        l1       = sum(w |e|) / N
        gradient = sum_d sum(w_d |D_d e|) / N_d          (the L1 norm of the gradient difference, summed over axes)
        loss     = l1 + gradient_weight * gradient

    A difference counts only as much as the *less* trusted of its two voxels (the ``min``): a zero weight (a real
    lesion, ``w = 1 - M``, or outside ``mask``) removes every difference that touches that voxel, so neither the
    voxel nor the lesion border is supervised against the lesioned target.

    Normalisation over the whole batch: ``normalize="weight"`` (default) uses ``N = sum(w)`` and ``N_d = sum(w_d)``,
    a weighted mean that keeps the loss scale independent of the lesion size and of how much is masked out;
    ``normalize="mean"`` uses the voxel (pair) counts inside ``mask`` (all voxels without a mask), so a weight of 2
    exactly doubles a voxel's contribution. The denominators are clamped at ``eps``: a batch with no supervised
    voxel gives 0, with gradients (zeros), never NaN.

    Args:
        gradient_weight: factor of the gradient term (1 in UNA).
        normalize: ``"weight"`` or ``"mean"`` (see above).
        eps: lower bound of the denominators.
    """

    def __init__(self, gradient_weight: float = 1.0, normalize: str = "weight", eps: float = 1e-8) -> None:
        super().__init__()
        if normalize not in _NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {_NORMALIZATIONS}, got {normalize!r}.")
        if not gradient_weight >= 0:
            raise ValueError(f"gradient_weight must be >= 0, got {gradient_weight}.")
        self.gradient_weight = float(gradient_weight)
        self.normalize = normalize
        self.eps = float(eps)

    def components(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The loss and its parts, for logging: ``{"loss", "l1", "gradient"}`` (scalars, attached to the graph).

        Args:
            pred: prediction ``[B, 1, X, Y, Z]``.
            target: healthy target, same shape.
            weight: non-negative per-voxel weights, same shape (None: ones).
            mask: optional region (e.g. the brain), same shape; voxels where ``mask <= 0`` get weight 0.
        """
        _check_same_shape(pred=pred, target=target, weight=weight, mask=mask)
        error = pred.float() - target.float()
        w = torch.ones_like(error) if weight is None else weight.to(error)
        inside = None if mask is None else (mask > 0).to(error)
        if inside is not None:
            w = w * inside
        l1 = (w * error.abs()).sum() / self._denominator(w, inside, error)
        gradient = error.new_zeros(())
        for axis in range(2, error.dim()):
            if error.shape[axis] < 2:
                continue
            upper, lower = _axis_slices(error.dim(), axis)
            w_d = torch.minimum(w[upper], w[lower])
            inside_d = None if inside is None else inside[upper] * inside[lower]
            diff = (error[upper] - error[lower]).abs()
            gradient = gradient + (w_d * diff).sum() / self._denominator(w_d, inside_d, diff)
        return {"loss": l1 + self.gradient_weight * gradient, "l1": l1, "gradient": gradient}

    def _denominator(self, w: torch.Tensor, inside: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        if self.normalize == "weight":
            count = w.sum()
        elif inside is None:
            count = like.new_tensor(float(like.numel()))
        else:
            count = inside.sum()
        return count.clamp_min(self.eps)

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scalar loss; arguments as in :meth:`components`."""
        return self.components(pred, target, weight, mask)["loss"]


class StructureContrastiveLoss(nn.Module):
    """UNA's structure contrastive term: inside a lesion, resemble the flipped healthy side, not the lesion.

    Over the qualifying voxels ``Q`` of a sample - lesion voxels whose mirror is not lesioned too
    (``lesion > 0.5`` and not ``lesion_flip > 0.5``; where both sides are lesioned the flip is no healthy
    reference)::

        L = -log( sum_Q exp(Yhat F / alpha) / sum_Q (exp(Yhat F / beta) + exp(Yhat I / gamma)) )

    with ``Yhat`` the prediction, ``F`` the registered flip channel and ``I`` the input image. It is computed with
    ``logsumexp`` (stable for any temperature) per sample and averaged over the samples that have qualifying voxels;
    with none in the batch it is 0 (still attached to ``pred``'s graph, so ``backward`` works).

    Effect: with ``alpha = beta``, ``L = log(1 + sum_Q e^{Yhat I / gamma} / sum_Q e^{Yhat F / beta}) > 0`` decreases
    as the prediction correlates more with the flip than with the input, i.e. its gradient raises ``Yhat`` where the
    healthy flip is brighter than the input (a T1w-dark lesion) and lowers it where the flip is darker (a bright
    lesion). For one voxel, ``Yhat = F`` scores lower than ``Yhat = I`` by exactly ``(F - I)^2`` in the exponent.
    The term is a contrast, not an equality, and saturates once ``Yhat (F - I)`` is large; the L1 term (or nothing,
    on a real lesion whose weight is 0) sets the scale.

    Temperatures default to 1 (the paper gives none): with intensities in [0, 1] the logits lie in [0, 1], all
    qualifying voxels weigh about equally, and to first order ``L ~ log 2 + mean_Q Yhat (I - F) / 2``. Smaller
    temperatures focus the term on the voxels with the largest products (the brightest tissue); with
    ``alpha != beta`` the numerator no longer appears in the denominator and ``L`` can be negative.

    Args:
        alpha: temperature of the numerator's prediction-flip similarity.
        beta: temperature of the denominator's prediction-flip similarity.
        gamma: temperature of the denominator's prediction-input similarity.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, gamma: float = 1.0) -> None:
        super().__init__()
        for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}.")
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)

    def forward(
        self,
        pred: torch.Tensor,
        image: torch.Tensor,
        lesion: torch.Tensor,
        lesion_flip: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scalar loss.

        Args:
            pred: prediction ``[B, 1, X, Y, Z]``.
            image: network input ``[B, 2, X, Y, Z]``: channel 0 the image ``I``, channel 1 its registered flip ``F``.
            lesion: lesion mask ``[B, 1, X, Y, Z]`` (a voxel is lesion where > 0.5).
            lesion_flip: the lesion mask mirrored by the same registration, same shape; None: only ``lesion`` is used.
        """
        _check_same_shape(pred=pred, lesion=lesion, lesion_flip=lesion_flip)
        if image.dim() != pred.dim() or image.shape[1] < 2 or image.shape[2:] != pred.shape[2:]:
            raise ValueError(
                f"image must be [B, 2, spatial...] matching pred {tuple(pred.shape)}, got {tuple(image.shape)}."
            )
        batch = pred.shape[0]
        y = pred.float().reshape(batch, -1)
        source = image[:, 0].float().reshape(batch, -1)
        flip = image[:, 1].float().reshape(batch, -1)
        qualifies = (lesion > 0.5).reshape(batch, -1)
        if lesion_flip is not None:
            qualifies = qualifies & ~(lesion_flip > 0.5).reshape(batch, -1)
        has_voxels = qualifies.any(dim=1)
        # samples without qualifying voxels use all voxels (finite values, no NaN gradients) and are dropped below
        use = qualifies | ~has_voxels[:, None]
        neg_inf = torch.finfo(y.dtype).min

        def lse(logits: torch.Tensor) -> torch.Tensor:
            return torch.logsumexp(logits.masked_fill(~use, neg_inf), dim=1)

        similarity_flip = y * flip
        numerator = lse(similarity_flip / self.alpha)
        denominator = torch.logaddexp(lse(similarity_flip / self.beta), lse(y * source / self.gamma))
        per_sample = torch.where(has_voxels, denominator - numerator, torch.zeros_like(numerator))
        return per_sample.sum() / has_voxels.sum().clamp_min(1)


class AnomalyHeadLoss(nn.Module):
    """Dice + binary cross-entropy of the anomaly head's logits against the generator's exact anomaly mask.

    The generator knows where it put the anomaly, so the network can learn the anomaly map directly instead of it
    being read off the difference between input and reconstruction (blurry, and meaningless across contrasts).
    Dice is computed over the whole batch (``batch=True``): a lesion-free sample alone has no Dice to speak of, and
    over the batch its false positives still count. Cross-entropy keeps every voxel supervised, lesion-free
    samples included, so the head learns to stay silent on healthy tissue.

    Args:
        dice_weight: factor of the Dice term.
        bce_weight: factor of the cross-entropy term.
    """

    def __init__(self, dice_weight: float = 1.0, bce_weight: float = 1.0) -> None:
        super().__init__()
        if not dice_weight >= 0 or not bce_weight >= 0:
            raise ValueError(f"dice_weight and bce_weight must be >= 0, got {dice_weight}, {bce_weight}.")
        self.dice_weight = float(dice_weight)
        self.bce_weight = float(bce_weight)
        self.dice = DiceLoss(sigmoid=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``logits`` and ``mask`` ``[B, 1, X, Y, Z]`` (mask 0/1); returns a scalar."""
        _check_same_shape(logits=logits, mask=mask)
        mask = (mask > 0.5).to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits.float(), mask.float())
        return self.dice_weight * self.dice(logits.float(), mask.float()) + self.bce_weight * bce


class UNALoss(nn.Module):
    """UNA's loss: ``WeightedL1GradientLoss + structure_weight * StructureContrastiveLoss + anomaly_weight *
    AnomalyHeadLoss``.

    With ``anomaly_weight > 0`` the prediction has two channels: ``pred[:, :1]`` the healthy T1w (the L1 and
    structure terms) and ``pred[:, 1:2]`` the logits of the anomaly head (:class:`AnomalyHeadLoss` against
    ``lesion``).

    ``forward`` and :meth:`components` take the training batch's keys as keyword arguments
    (``loss(pred=..., target=..., weight=..., image=..., lesion=..., lesion_flip=..., brain_mask=...)``).

    Args:
        gradient_weight: factor of the gradient term of the L1 loss (1).
        structure_weight: factor of the structure contrastive term (0: off, the default; 2 in the paper).
        normalize: normalisation of the L1 loss, ``"weight"`` or ``"mean"`` (see :class:`WeightedL1GradientLoss`).
        alpha: numerator temperature of the structure term.
        beta: denominator prediction-flip temperature of the structure term.
        gamma: denominator prediction-input temperature of the structure term.
        anomaly_weight: factor of the anomaly-head term (0: no head, one output channel).
    """

    def __init__(
        self,
        gradient_weight: float = 1.0,
        structure_weight: float = 0.0,
        normalize: str = "weight",
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 1.0,
        anomaly_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if not structure_weight >= 0:
            raise ValueError(f"structure_weight must be >= 0, got {structure_weight}.")
        if not anomaly_weight >= 0:
            raise ValueError(f"anomaly_weight must be >= 0, got {anomaly_weight}.")
        self.structure_weight = float(structure_weight)
        self.anomaly_weight = float(anomaly_weight)
        self.anomaly = AnomalyHeadLoss()
        self.l1 = WeightedL1GradientLoss(gradient_weight=gradient_weight, normalize=normalize)
        self.structure = StructureContrastiveLoss(alpha=alpha, beta=beta, gamma=gamma)

    def components(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
        image: torch.Tensor | None = None,
        lesion: torch.Tensor | None = None,
        lesion_flip: torch.Tensor | None = None,
        brain_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The loss and its parts: ``{"loss", "l1", "gradient", "structure", "anomaly"}`` (scalars, attached to the
        graph).

        Args:
            pred: prediction ``[B, 1, X, Y, Z]`` (``[B, 2, X, Y, Z]`` with the anomaly head).
            target: healthy target, same shape.
            weight: per-voxel loss weight, same shape (None: ones).
            image: network input ``[B, 2, X, Y, Z]`` (image, registered flip); needed when ``structure_weight > 0``.
            lesion: lesion mask ``[B, 1, X, Y, Z]``; needed when ``structure_weight > 0`` or ``anomaly_weight > 0``.
            lesion_flip: lesion mask mirrored by the flip's registration (optional).
            brain_mask: optional region restricting the L1 loss.
        """
        expected = 2 if self.anomaly_weight > 0 else 1
        if pred.dim() < 3 or pred.shape[1] != expected:
            raise ValueError(
                f"UNALoss with anomaly_weight={self.anomaly_weight} expects a prediction with {expected} channel(s), "
                f"got shape {tuple(pred.shape)}."
            )
        logits, pred = pred[:, 1:], pred[:, :1]
        parts = self.l1.components(pred, target, weight, brain_mask)
        if self.anomaly_weight > 0:
            if lesion is None:
                raise ValueError("UNALoss with anomaly_weight > 0 needs the batch key 'lesion'.")
            parts["anomaly"] = self.anomaly(logits, lesion)
            parts["loss"] = parts["loss"] + self.anomaly_weight * parts["anomaly"]
        else:
            parts["anomaly"] = pred.new_zeros((), dtype=torch.float32)
        if self.structure_weight > 0:
            if image is None or lesion is None:
                raise ValueError("UNALoss with structure_weight > 0 needs the batch keys 'image' and 'lesion'.")
            structure = self.structure(pred, image, lesion, lesion_flip)
            parts["loss"] = parts["loss"] + self.structure_weight * structure
        else:
            structure = pred.new_zeros((), dtype=torch.float32)
        parts["structure"] = structure
        return parts

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
        image: torch.Tensor | None = None,
        lesion: torch.Tensor | None = None,
        lesion_flip: torch.Tensor | None = None,
        brain_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scalar loss; arguments as in :meth:`components`."""
        return self.components(pred, target, weight, image, lesion, lesion_flip, brain_mask)["loss"]
