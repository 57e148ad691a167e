"""Advection-diffusion of a probability map, ``dP/dt = -div(V P) + div(D grad P)``, on a voxel grid.

For a divergence-free ``V`` the advection term is ``-V . grad P``. Discretisation (UNA's scheme, with the
velocity taken on the faces between voxels, ``u = (V[i] + V[i+1]) / 2``): first-order upwind differences
(backward where ``u > 0``, forward where ``u <= 0``), the nested forward/backward difference for diffusion, and
Neumann borders (the border voxel is replicated). Along each axis, with ``dP = P[i+1] - P[i]`` on face ``i+1/2``,

    P[i]   += dt * (max(-u, 0) + D[i]) * dP        (inflow from the right, diffusion)
    P[i+1] -= dt * (max(+u, 0) + D[i]) * dP        (inflow from the left, diffusion)

Every update is a convex combination of a voxel and its six neighbours as long as each voxel's total inflow
rate times the sub-step stays <= ``max_cfl`` <= 1, so the result never leaves ``[min P0, max P0]`` (a discrete
maximum principle) for any velocity. The total mass changes by ``dt * sum(P * div_face(u))``, which is zero to
round-off where the face divergence vanishes: the central-difference curl of :func:`.flow.random_flow` makes it
vanish everywhere but on the two outermost voxel layers. Time integration is explicit Euler, sub-stepped
automatically to meet the bound whatever the velocity magnitude.

Because information moves at most one voxel per sub-step, the solver works on the bounding box of ``P0``'s
support grown by the number of sub-steps (exactly the same answer, much less work for small lesions).

Backends: ``"torch"`` (vectorised, CPU or GPU) and ``"triton"`` (one fused kernel launch per sub-step, see
:mod:`.advection_triton`); ``"auto"`` picks Triton for CUDA tensors when it is importable.
"""

from __future__ import annotations

import math

import torch

__all__ = ["advect_diffuse", "substep_count", "BACKENDS"]

BACKENDS = ("auto", "torch", "triton")


def _check_inputs(p0, velocity, diffusivity, dt, steps, backend, max_cfl) -> None:
    if not isinstance(p0, torch.Tensor) or p0.ndim not in (3, 4):
        shape = tuple(p0.shape) if isinstance(p0, torch.Tensor) else type(p0).__name__
        raise ValueError(f"advect_diffuse: p0 must be a tensor [X, Y, Z] or [B, X, Y, Z], got {shape}.")
    spatial = tuple(p0.shape[-3:])
    batch = p0.shape[0] if p0.ndim == 4 else None
    ok_v = velocity.ndim in (4, 5) and velocity.shape[-4] == 3 and tuple(velocity.shape[-3:]) == spatial
    if ok_v and velocity.ndim == 5:
        ok_v = batch is not None and velocity.shape[0] in (1, batch)
    if not ok_v:
        raise ValueError(
            f"advect_diffuse: velocity must be [3, *spatial] or [B, 3, *spatial] with spatial {spatial} "
            f"(and B matching p0), got {tuple(velocity.shape)}."
        )
    if diffusivity is not None:
        ok_d = diffusivity.ndim in (3, 4) and tuple(diffusivity.shape[-3:]) == spatial
        if ok_d and diffusivity.ndim == 4:
            ok_d = batch is not None and diffusivity.shape[0] in (1, batch)
        if not ok_d:
            raise ValueError(
                f"advect_diffuse: diffusivity must be [*spatial] or [B, *spatial] with spatial {spatial}, "
                f"got {tuple(diffusivity.shape)}."
            )
        if bool((diffusivity < 0).any()):
            raise ValueError("advect_diffuse: diffusivity must be non-negative everywhere.")
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"advect_diffuse: dt must be a finite number > 0, got {dt}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"advect_diffuse: steps must be an integer >= 0, got {steps!r}.")
    if backend not in BACKENDS:
        raise ValueError(f"advect_diffuse: backend must be one of {BACKENDS}, got {backend!r}.")
    if not 0 < max_cfl <= 1:
        raise ValueError(f"advect_diffuse: max_cfl must be in (0, 1], got {max_cfl}.")


def face_coefficients(velocity: torch.Tensor, diffusivity: torch.Tensor | None) -> list:
    """Per axis, the non-negative face rates ``(left, right)`` (``N - 1`` faces along that axis): per unit time,
    ``P[i] += right * dP`` and ``P[i+1] -= left * dP`` with ``dP = P[i+1] - P[i]`` (see the module docstring)."""
    coeffs = []
    for axis in range(3):
        dim = axis - 3
        v = velocity.select(-4, axis)
        n = v.shape[dim]
        face = (v.narrow(dim, 0, n - 1) + v.narrow(dim, 1, n - 1)) * 0.5
        left, right = face.clamp(min=0), face.neg().clamp_(min=0)
        if diffusivity is not None:
            diff = diffusivity.narrow(dim, 0, n - 1)
            left, right = left + diff, right + diff
        coeffs.append((left, right))
    return coeffs


def substep_count(coeffs: list, dt: float, max_cfl: float = 1.0) -> int:
    """Sub-steps per time step ``dt`` that keep every voxel's total inflow rate times the sub-step within
    ``max_cfl`` (a monotone, bounded update)."""
    inflow = None
    for axis, (left, right) in enumerate(coeffs):
        pad_end, pad_start = [0, 0] * 3, [0, 0] * 3
        pad_end[2 * (2 - axis) + 1] = 1  # voxel i reads face i+1/2 (none after the last voxel)
        pad_start[2 * (2 - axis)] = 1  # voxel i+1 reads face i+1/2 (none before the first voxel)
        both = torch.nn.functional.pad(right, pad_end) + torch.nn.functional.pad(left, pad_start)
        inflow = both if inflow is None else inflow + both
    rate = float(inflow.max())
    if not math.isfinite(rate):
        raise ValueError("advect_diffuse: velocity and diffusivity must be finite.")
    return max(1, math.ceil(dt * rate / max_cfl - 1e-9))


def _support_box(p0: torch.Tensor, margin: int) -> tuple[slice, slice, slice] | None:
    """Bounding box (slices over the last three axes) of ``p0 != 0`` grown by ``margin``; None when empty."""
    nonzero = p0 != 0
    if p0.ndim == 4:
        nonzero = nonzero.any(dim=0)
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = nonzero.any(dim=other).nonzero()
        if idx.numel() == 0:
            return None
        lo, hi = int(idx[0]) - margin, int(idx[-1]) + 1 + margin
        box.append(slice(max(lo, 0), min(hi, nonzero.shape[axis])))
    return tuple(box)


def _crop_faces(coeffs: list, box: tuple[slice, slice, slice]) -> list:
    """Restrict face coefficients to the faces inside ``box`` (the faces between its voxels)."""
    cropped = []
    for axis, pair in enumerate(coeffs):
        faces = list(box)
        faces[axis] = slice(box[axis].start, box[axis].stop - 1)
        cropped.append(tuple(c[(..., *faces)] for c in pair))
    return cropped


def _run_torch(p: torch.Tensor, coeffs: list, dt_sub: float, substeps: int) -> torch.Tensor:
    """Explicit sub-steps with preallocated buffers: no allocation per sub-step (fresh large tensors cost
    page faults on every step on CPU)."""
    coeffs = [(left * dt_sub, right * dt_sub) for left, right in coeffs]
    p = p.clone()  # never write into the caller's tensor
    new = torch.empty_like(p)
    diffs = [p.narrow(axis - 3, 1, p.shape[axis - 3] - 1).clone() for axis in range(3)]
    for _ in range(substeps):
        new.copy_(p)
        for axis, ((left, right), diff) in enumerate(zip(coeffs, diffs)):
            dim = axis - 3
            n = p.shape[dim]
            torch.sub(p.narrow(dim, 1, n - 1), p.narrow(dim, 0, n - 1), out=diff)
            new.narrow(dim, 0, n - 1).addcmul_(right, diff)
            new.narrow(dim, 1, n - 1).addcmul_(left, diff, value=-1.0)
        p, new = new, p
    return p


def _run_triton(p: torch.Tensor, velocity, diffusivity, dt_sub: float, substeps: int) -> torch.Tensor:
    from .advection_triton import advect_diffuse_substep_triton

    batched = p.ndim == 4
    p = (p if batched else p.unsqueeze(0)).contiguous()
    velocity = (velocity if velocity.ndim == 5 else velocity.unsqueeze(0)).contiguous()
    if diffusivity is not None:
        diffusivity = (diffusivity if diffusivity.ndim == 4 else diffusivity.unsqueeze(0)).contiguous()
    for _ in range(substeps):
        p = advect_diffuse_substep_triton(p, velocity, diffusivity, dt_sub)
    return p if batched else p[0]


def _resolve_backend(backend: str, p0: torch.Tensor) -> str:
    if backend != "auto":
        return backend
    if p0.is_cuda:
        from .advection_triton import triton_available

        if triton_available(p0.device):
            return "triton"
    return "torch"


def advect_diffuse(
    p0: torch.Tensor,
    velocity: torch.Tensor,
    diffusivity: torch.Tensor | None = None,
    dt: float = 0.1,
    steps: int = 9,
    backend: str = "auto",
    max_cfl: float = 1.0,
) -> torch.Tensor:
    """Evolve ``p0`` to time ``steps * dt`` under advection by ``velocity`` and diffusion by ``diffusivity``.

    Args:
        p0: initial map ``[X, Y, Z]`` or batched ``[B, X, Y, Z]`` (floating; integers are converted to float32).
        velocity: ``[3, X, Y, Z]`` (shared by the batch) or ``[B, 3, X, Y, Z]``, in voxels per unit time;
            channel ``c`` is the component along spatial axis ``c``. Assumed (nearly) divergence-free, as
            :func:`random_flow` makes it; any field is accepted.
        diffusivity: optional non-negative ``[X, Y, Z]`` or ``[B, X, Y, Z]``, voxels^2 per unit time.
        dt: time step (> 0); each step is split into as many explicit sub-steps as stability needs.
        steps: number of time steps (UNA: ``nt - 1`` with ``nt`` in [2, 10]); 0 returns a copy of ``p0``.
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` (CUDA, or CPU under ``TRITON_INTERPRET=1``).
        max_cfl: the Courant number the sub-stepping keeps to, in (0, 1].

    Returns:
        The map at time ``steps * dt``, same shape, device and floating dtype as ``p0``.
    """
    _check_inputs(p0, velocity, diffusivity, dt, steps, backend, max_cfl)
    backend = _resolve_backend(backend, p0)
    dtype = p0.dtype if p0.is_floating_point() else torch.float32
    p0 = p0.to(dtype)
    velocity = velocity.to(device=p0.device, dtype=dtype)
    if diffusivity is not None:
        diffusivity = diffusivity.to(device=p0.device, dtype=dtype)
    if steps == 0:
        return p0.clone()
    coeffs = face_coefficients(velocity, diffusivity)
    per_step = substep_count(coeffs, dt, max_cfl)
    substeps = per_step * steps
    box = _support_box(p0, margin=substeps + 1)
    if box is None:  # nothing to move
        return p0.clone()
    p_box = p0[(..., *box)]
    if backend == "triton":
        diff_box = None if diffusivity is None else diffusivity[(..., *box)]
        result = _run_triton(p_box, velocity[(..., *box)], diff_box, dt / per_step, substeps)
    else:
        result = _run_torch(p_box, _crop_faces(coeffs, box), dt / per_step, substeps)
    out = torch.zeros_like(p0)
    out[(..., *box)] = result
    return out
