"""3D Perlin (gradient) noise in torch, on any device, batched and seeded by a ``torch.Generator``.

Classic Perlin noise interpolates, with the quintic fade ``6t^5 - 15t^4 + 10t^3``, the dot products between
random unit gradients on a coarse lattice and the offsets to the lattice corners. Because both the fade weights
and the offsets factor per axis, the whole field is a sum of three Tucker products

    noise = G_x x1 B_0 x2 A_1 x3 A_2  +  G_y x1 A_0 x2 B_1 x3 A_2  +  G_z x1 A_0 x2 A_1 x3 B_2

of the lattice gradient components ``G_*`` (``L0 x L1 x L2``, a handful of nodes) with per-axis matrices
``A_d[i, k]`` (fade weight of lattice node ``k`` at voxel ``i``) and ``B_d[i, k]`` (the same times the offset).
Evaluating it as three small matrix products makes it exact and memory-light: no per-voxel gathers, no
intermediate larger than the output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["perlin_noise", "PERLIN_BOUND"]

#: The largest magnitude 3D Perlin noise with unit gradients can reach (``sqrt(3) / 2``).
PERLIN_BOUND = math.sqrt(3.0) / 2.0


def _fade(t: torch.Tensor) -> torch.Tensor:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def _axis_factors(size: int, periods: float, device, dtype) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-axis matrices ``A`` (fade weights) and ``B`` (weights times offsets), both ``[size, nodes]``."""
    nodes = int(math.floor(periods)) + 2  # lattice nodes covering [0, periods] plus the right neighbour
    pos = torch.arange(size, device=device, dtype=torch.float64) * (periods / size)
    cell = pos.floor().long()
    frac = pos - cell
    weight_right = _fade(frac)
    a = torch.zeros(size, nodes, device=device, dtype=torch.float64)
    b = torch.zeros_like(a)
    rows = torch.arange(size, device=device)
    a[rows, cell] = 1.0 - weight_right
    a[rows, cell + 1] = weight_right
    b[rows, cell] = (1.0 - weight_right) * frac
    b[rows, cell + 1] = weight_right * (frac - 1.0)
    return a.to(dtype), b.to(dtype), nodes


def perlin_noise(
    shape: Sequence[int],
    periods: float | Sequence[float] = 2,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Sample 3D Perlin noise.

    Args:
        shape: output shape ``(X, Y, Z)`` or, batched, ``(B, X, Y, Z)``; any sizes (not only multiples of
            ``periods``). Each batch element gets its own lattice gradients.
        periods: number of noise periods (lattice cells) along each spatial axis, one value or three; may
            be fractional. Two periods per axis give the large, blobby structures UNA uses.
        generator: the only source of randomness; its device must match ``device``. ``None`` uses torch's
            default generator (not reproducible across calls unless the caller seeds it).
        device: where to compute; defaults to the generator's device, else CPU.
        dtype: floating dtype of the result.

    Returns:
        A tensor of ``shape`` with values in ``[-PERLIN_BOUND, PERLIN_BOUND]``, exactly zero on lattice nodes.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (3, 4) or min(shape) < 1:
        raise ValueError(f"perlin_noise: shape must be (X, Y, Z) or (B, X, Y, Z) with positive sizes, got {shape}.")
    batched = len(shape) == 4
    batch, spatial = (shape[0], shape[1:]) if batched else (1, shape)
    periods_t = (periods,) * 3 if isinstance(periods, (int, float)) else tuple(periods)
    if len(periods_t) != 3 or any(not (p > 0) for p in periods_t):
        raise ValueError(f"perlin_noise: periods must be one positive number or three, got {periods}.")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)

    factors = [_axis_factors(n, p, device, dtype) for n, p in zip(spatial, periods_t)]
    nodes = [f[2] for f in factors]
    direction = torch.randn((batch, 3, *nodes), generator=generator, device=device, dtype=torch.float32)
    gradients = (direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)).to(dtype)

    (a0, b0, _), (a1, b1, _), (a2, b2, _) = factors
    # expand each gradient component along the three axes with the right factor (B on its own axis)
    out = None
    for component, (m0, m1, m2) in enumerate(((b0, a1, a2), (a0, b1, a2), (a0, a1, b2))):
        core = gradients[:, component]  # [B, L0, L1, L2]
        t = torch.einsum("bpqr,zr->bpqz", core, m2)
        t = torch.einsum("bpqz,yq->bpyz", t, m1)
        t = torch.einsum("bpyz,xp->bxyz", t, m0)
        out = t if out is None else out.add_(t)
    return out if batched else out[0]
