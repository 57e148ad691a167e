"""Fused Triton kernel for one explicit sub-step of the advection-diffusion solver of :mod:`.advection`.

One launch per sub-step: each program updates a block of voxels of one batch element, reading ``P`` at the voxel
and its six neighbours, the velocity component of each axis at the voxel and its two neighbours along that axis
(face velocities ``u = (V[i] + V[i+1]) / 2``) and the diffusivity at the voxel and its three lower neighbours
(``D`` of a face is taken at its lower voxel), and writes the new value once: no temporaries, one pass over memory.
The arithmetic follows ``_run_torch`` term by term, so both backends agree to round-off.

The kernel is handed to ``triton.jit`` at the first launch, separately for compiled and interpreted mode, so that
``TRITON_INTERPRET=1`` (Triton's CPU interpreter, which ``triton.jit`` consults when it decorates) takes effect
whenever it is set, not only when it was set before this module was imported.
"""

import os

import torch

try:  # optional: the torch backend needs none of this
    import triton
    import triton.language as tl
except Exception:  # ImportError, or a broken install: Triton is then simply unavailable
    triton = tl = None

__all__ = ["triton_available", "advect_diffuse_substep_triton"]

BLOCK = 1024
NUM_WARPS = 4


def _interpret_mode() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    try:
        return bool(triton.knobs.runtime.interpret)
    except Exception:  # Triton < 3.4 has no knobs
        return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available(device=None) -> bool:
    """True when the Triton kernel can run on ``device``: Triton imports and the device is CUDA, or Triton's
    CPU interpreter is on (``TRITON_INTERPRET=1``). Never raises."""
    try:
        if triton is None:
            return False
        if _interpret_mode():
            return True
        return device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available()
    except Exception:
        return False


if tl is not None:

    def _substep_kernel(
        p_ptr,
        v_ptr,
        d_ptr,
        out_ptr,
        dt: tl.float64,
        n_voxels,
        size_x,
        size_y,
        size_z,
        v_batch_stride,
        d_batch_stride,
        HAS_D: tl.constexpr,
        BLOCK_SIZE: tl.constexpr,
    ):
        """``out = P + dt * sum_axes [right(i+1/2) (P[i+1] - P[i]) - left(i-1/2) (P[i] - P[i-1])]`` on a block."""
        pid = tl.program_id(0)
        batch = tl.program_id(1).to(tl.int64)
        offs = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = offs < n_voxels
        plane = size_y * size_z
        ix = offs // plane
        rem = offs - ix * plane
        iy = rem // size_z
        iz = rem - iy * size_z

        p_base = p_ptr + batch * n_voxels
        v_base = v_ptr + batch * v_batch_stride
        d_base = d_ptr + batch * d_batch_stride
        p = tl.load(p_base + offs, mask=mask, other=0.0)
        dt_c = tl.full([], dt, p.dtype)  # dt arrives as fp64 (a plain float in the interpreter)
        if HAS_D:
            d_here = tl.load(d_base + offs, mask=mask, other=0.0)
        out = p
        for axis in tl.static_range(3):
            if axis == 0:
                coord, size, stride = ix, size_x, plane
            elif axis == 1:
                coord, size, stride = iy, size_y, size_z
            else:
                coord, size, stride = iz, size_z, 1
            has_hi = mask & (coord < size - 1)  # face i+1/2 inside the grid
            has_lo = mask & (coord > 0)  # face i-1/2 inside the grid
            v_axis = v_base + axis * n_voxels
            v_here = tl.load(v_axis + offs, mask=mask, other=0.0)
            v_hi = tl.load(v_axis + offs + stride, mask=has_hi, other=0.0)
            v_lo = tl.load(v_axis + offs - stride, mask=has_lo, other=0.0)
            p_hi = tl.load(p_base + offs + stride, mask=has_hi, other=0.0)
            p_lo = tl.load(p_base + offs - stride, mask=has_lo, other=0.0)
            right = tl.maximum(-((v_here + v_hi) * 0.5), 0.0)  # inflow from the right on face i+1/2
            left = tl.maximum((v_lo + v_here) * 0.5, 0.0)  # inflow from the left on face i-1/2
            if HAS_D:
                right = right + d_here
                left = left + tl.load(d_base + offs - stride, mask=has_lo, other=0.0)
            dp_hi = tl.where(has_hi, p_hi - p, 0.0)  # no face beyond the border
            dp_lo = tl.where(has_lo, p - p_lo, 0.0)
            out = out + (right * dt_c) * dp_hi
            out = out - (left * dt_c) * dp_lo
        tl.store(out_ptr + batch * n_voxels + offs, out, mask=mask)


_KERNELS = {}  # interpret mode -> the jitted kernel


def _kernel():
    """The jitted kernel for Triton's current mode (compiled or interpreted)."""
    mode = _interpret_mode()
    if mode not in _KERNELS:
        _KERNELS[mode] = triton.jit(_substep_kernel)
    return _KERNELS[mode]


def advect_diffuse_substep_triton(
    p: torch.Tensor, velocity: torch.Tensor, diffusivity: torch.Tensor | None, dt: float
) -> torch.Tensor:
    """One explicit Euler sub-step of :func:`.advection.advect_diffuse`, fused into a single kernel launch.

    Args:
        p: contiguous map ``[B, X, Y, Z]``, float32 or float64.
        velocity: contiguous ``[Bv, 3, X, Y, Z]``, ``Bv`` 1 (shared by the batch) or ``B``, dtype and device of ``p``.
        diffusivity: None or contiguous ``[Bd, X, Y, Z]``, ``Bd`` 1 or ``B``, dtype and device of ``p``.
        dt: the sub-step, already small enough for stability.

    Returns:
        A new tensor like ``p``: the map after the sub-step.
    """
    if not triton_available(p.device):
        raise RuntimeError(
            f"advect_diffuse_substep_triton: Triton is not available for device {p.device} (it needs the `triton` "
            "package and a CUDA device, or TRITON_INTERPRET=1 for the CPU interpreter); use backend='torch'."
        )
    batch, size_x, size_y, size_z = p.shape
    n_voxels = size_x * size_y * size_z
    out = torch.empty_like(p)
    if out.numel() == 0:
        return out
    v_stride = 0 if velocity.shape[0] == 1 else 3 * n_voxels
    if diffusivity is None:
        d_arg, d_stride = p, 0  # never read (HAS_D is False)
    else:
        d_arg, d_stride = diffusivity, (0 if diffusivity.shape[0] == 1 else n_voxels)
    grid = (triton.cdiv(n_voxels, BLOCK), batch)
    _kernel()[grid](
        p,
        velocity,
        d_arg,
        out,
        float(dt),
        n_voxels,
        size_x,
        size_y,
        size_z,
        v_stride,
        d_stride,
        HAS_D=diffusivity is not None,
        BLOCK_SIZE=BLOCK,
        num_warps=NUM_WARPS,
        enable_fp_fusion=True,  # fused multiply-adds (also silences Triton 3.9's warning about the default)
    )
    return out
