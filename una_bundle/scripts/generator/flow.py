"""Random flow fields for the fluid anomaly PDE: a divergence-free velocity and a non-negative diffusivity.

The velocity is the curl of three independent Perlin potentials, ``V = curl(psi_a, psi_b, psi_c)``, so that
``div V = 0`` by construction (and, with the central differences used here, to round-off on the grid). The
diffusivity is the square of a further potential, ``D = phi^2 >= 0``.

Magnitude convention (the reference's): UNA draws its potentials with 2 periods on a 200-voxel grid and
multiplies their per-voxel curl by 500. Here potentials have the same spatial wavelength in voxels on any grid
(``REFERENCE_PERIODS`` per ``REFERENCE_GRID`` voxels) and ``magnitude`` multiplies their per-voxel curl, so
``magnitude=500`` gives velocities (voxels per unit time) with the reference's statistics whatever the grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .perlin import perlin_noise

__all__ = ["random_flow", "curl", "divergence", "REFERENCE_GRID", "REFERENCE_PERIODS", "REFERENCE_MAGNITUDE"]

REFERENCE_GRID = 200
REFERENCE_PERIODS = 2.0
REFERENCE_MAGNITUDE = 500.0


def _check_field(field: torch.Tensor, name: str) -> None:
    if field.ndim not in (4, 5) or field.shape[-4] != 3:
        raise ValueError(f"{name}: expected a vector field [3, X, Y, Z] or [B, 3, X, Y, Z], got {tuple(field.shape)}.")


def curl(potential: torch.Tensor) -> torch.Tensor:
    """Curl of a vector potential ``[..., 3, X, Y, Z]`` with central differences (one-sided at the borders).

    Channel ``c`` of the potential and of the result is the component along spatial axis ``c``.
    """
    _check_field(potential, "curl")

    def d(component: int, axis: int) -> torch.Tensor:
        return torch.gradient(potential.select(-4, component), dim=axis - 3)[0]

    return torch.stack([d(2, 1) - d(1, 2), d(0, 2) - d(2, 0), d(1, 0) - d(0, 1)], dim=-4)


def divergence(velocity: torch.Tensor) -> torch.Tensor:
    """Divergence of a vector field ``[..., 3, X, Y, Z]`` with the same central differences as :func:`curl`."""
    _check_field(velocity, "divergence")
    return sum(torch.gradient(velocity.select(-4, c), dim=c - 3)[0] for c in range(3))


def random_flow(
    shape: Sequence[int],
    magnitude: float = REFERENCE_MAGNITUDE,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    diffusion: bool = False,
    diffusion_magnitude: float = 1.0,
    periods: float | Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Draw a random divergence-free velocity and, optionally, a non-negative diffusivity.

    Args:
        shape: spatial shape ``(X, Y, Z)``.
        magnitude: multiplier of the per-voxel curl of the Perlin potentials (reference: 500).
        generator: the only source of randomness (see :func:`perlin_noise`).
        device: where to compute; defaults to the generator's device, else CPU.
        diffusion: also draw a diffusivity ``D = diffusion_magnitude * phi^2``.
        diffusion_magnitude: scale of ``D`` in voxels^2 per unit time (``phi`` is Perlin noise, ``|phi| < 0.87``).
        periods: periods of the potentials along each axis; ``None`` keeps the reference's wavelength,
            ``REFERENCE_PERIODS * size / REFERENCE_GRID``.

    Returns:
        ``(velocity [3, X, Y, Z], diffusivity [X, Y, Z] or None)``, velocity in voxels per unit time, channel
        ``c`` along spatial axis ``c``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"random_flow: shape must be 3D (X, Y, Z), got {shape}.")
    if not magnitude >= 0 or not diffusion_magnitude >= 0:
        raise ValueError(
            f"random_flow: magnitude and diffusion_magnitude must be >= 0, got {magnitude}, {diffusion_magnitude}."
        )
    if periods is None:
        periods = tuple(REFERENCE_PERIODS * s / REFERENCE_GRID for s in shape)
    potentials = perlin_noise((4 if diffusion else 3, *shape), periods, generator=generator, device=device)
    velocity = curl(potentials[:3]).mul_(magnitude)
    diffusivity = potentials[3].square().mul_(diffusion_magnitude) if diffusion else None
    return velocity, diffusivity
