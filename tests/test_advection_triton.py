"""The fused Triton sub-step against the torch backend.

Without a GPU the kernel runs in Triton's CPU interpreter. ``triton.jit`` consults ``TRITON_INTERPRET`` when it
decorates a function; :mod:`una_bundle.scripts.generator.advection_triton` decorates its kernel at the first launch in
each mode, so setting the variable with ``monkeypatch`` around a test is enough, and it is undone after that test
(nothing is reloaded, nothing leaks into other tests).
"""

import os
import subprocess
import sys

import pytest
import torch

from una_bundle.scripts import advect_diffuse, perlin_noise, random_flow
from una_bundle.scripts.generator import advection

pytest.importorskip("triton")

from una_bundle.scripts.generator.advection_triton import advect_diffuse_substep_triton, triton_available  # noqa: E402

SHAPE = (9, 11, 13)  # distinct sizes: an axis or stride mix-up cannot cancel out
TOL = {torch.float64: 1e-12, torch.float32: 2e-6}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def interpret(monkeypatch):
    """Triton's CPU interpreter for the duration of one test."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def compiled(monkeypatch):
    """Triton's compiled (GPU) mode, whatever the caller's environment says."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def _reference(p, velocity, diffusivity, dt):
    """One sub-step of the torch backend."""
    return advection._run_torch(p, advection.face_coefficients(velocity, diffusivity), dt, 1)


def _fields(batch, v_batch, d_batch, dtype, shape=SHAPE, device="cpu", seed=0):
    """Random map, velocity of both signs (order 1 voxel per unit time) and diffusivity (or None)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(batch, *shape, generator=g, dtype=dtype)
    velocity = torch.randn(v_batch, 3, *shape, generator=g, dtype=dtype)
    diffusivity = None if d_batch is None else torch.rand(d_batch, *shape, generator=g, dtype=dtype)
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return move(p), move(velocity), move(diffusivity)


def _check_substep(batch, v_batch, d_batch, dtype, shape=SHAPE, device="cpu", moves=True):
    p, velocity, diffusivity = _fields(batch, v_batch, d_batch, dtype, shape, device)
    dt = 0.1  # every term moves a voxel by about 0.1: any missing or wrong term is far above round-off
    expected = _reference(p, velocity, diffusivity, dt)
    result = advect_diffuse_substep_triton(p, velocity, diffusivity, dt)
    assert result.shape == p.shape and result.dtype == dtype and result.device == p.device
    assert result.data_ptr() != p.data_ptr()
    assert not moves or (expected - p).abs().max() > 0.03  # the step does something
    torch.testing.assert_close(result, expected, rtol=0, atol=TOL[dtype])


CASES = {
    "velocity": (1, 1, None),
    "velocity+diffusivity": (1, 1, 1),
    "batch, shared velocity": (2, 1, None),
    "batch, per-sample velocity": (2, 2, None),
    "batch, shared velocity, per-sample diffusivity": (2, 1, 2),
    "batch, per-sample velocity, shared diffusivity": (2, 2, 1),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(CASES))
def test_substep_matches_torch_interpreted(interpret, case, dtype):
    _check_substep(*CASES[case], dtype)


def test_substep_borders_and_tiny_grids(interpret):
    """Grids of one or two voxels along an axis: only the faces inside the grid count (Neumann borders)."""
    for shape in ((1, 5, 6), (2, 1, 3), (3, 2, 1), (1, 1, 1)):
        _check_substep(2, 2, 2, torch.float64, shape=shape, moves=shape != (1, 1, 1))


def _flow_case(batched, diffusion, dtype):
    g = torch.Generator().manual_seed(3)
    shape = (12, 13, 14)
    velocity, diffusivity = random_flow(shape, 20.0, generator=g, diffusion=diffusion, periods=2)
    p0 = (perlin_noise((2, *shape) if batched else shape, 2, generator=g) > 0.1).to(dtype)
    return p0, velocity.to(dtype), None if diffusivity is None else diffusivity.to(dtype)


@pytest.mark.parametrize(
    "batched, diffusion, dtype",
    [(False, False, torch.float64), (False, True, torch.float32), (True, True, torch.float64)],
)
def test_advect_diffuse_triton_matches_torch_interpreted(interpret, batched, diffusion, dtype):
    """The public entry point with sub-stepping and the support box: same answer with both backends."""
    p0, velocity, diffusivity = _flow_case(batched, diffusion, dtype)
    assert advection.substep_count(advection.face_coefficients(velocity, diffusivity), 0.1) > 1
    expected = advect_diffuse(p0, velocity, diffusivity, dt=0.1, steps=3, backend="torch")
    result = advect_diffuse(p0, velocity, diffusivity, dt=0.1, steps=3, backend="triton")
    assert (expected - p0).abs().max() > 0.1
    torch.testing.assert_close(result, expected, rtol=0, atol=10 * TOL[dtype])


def test_triton_available(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not triton_available("cpu")
    assert not triton_available(torch.device("cpu"))
    assert not triton_available("not a device")  # never raises
    assert triton_available("cuda") == torch.cuda.is_available()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_available("cpu")


def test_unavailable_raises(compiled):
    p, velocity, _ = _fields(1, 1, None, torch.float32, shape=(2, 2, 2))
    with pytest.raises(RuntimeError, match="Triton is not available"):
        advect_diffuse_substep_triton(p, velocity, None, 0.1)


def test_auto_picks_torch_on_cpu(interpret, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the triton backend was used for CPU tensors")

    monkeypatch.setattr(advection, "_run_triton", fail)
    p0, velocity, _ = _flow_case(False, False, torch.float32)
    advect_diffuse(p0, velocity, steps=1, backend="auto")


def test_module_imports_without_triton():
    """With ``triton`` not importable, the package and this module import, and Triton reports unavailable."""
    script = (
        "import sys; sys.modules['triton'] = None\n"
        "import una_bundle.scripts\n"
        "from una_bundle.scripts.generator.advection_triton import triton_available\n"
        "assert not triton_available('cuda') and not triton_available('cpu')\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}  # even the interpreter needs triton
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr


@cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(CASES))
def test_substep_matches_torch_cuda(compiled, case, dtype):
    _check_substep(*CASES[case], dtype, shape=(64, 64, 64), device="cuda")


@cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_advect_diffuse_cuda_auto_is_triton(compiled, monkeypatch, dtype):
    g = torch.Generator().manual_seed(4)
    velocity, diffusivity = random_flow((64, 64, 64), 20.0, generator=g, diffusion=True, periods=2)
    p0 = (perlin_noise((2, 64, 64, 64), 2, generator=g) > 0.1).to(dtype).cuda()
    velocity, diffusivity = velocity.to("cuda", dtype), diffusivity.to("cuda", dtype)
    expected = advect_diffuse(p0, velocity, diffusivity, dt=0.1, steps=3, backend="torch")
    result = advect_diffuse(p0, velocity, diffusivity, dt=0.1, steps=3, backend="triton")
    torch.testing.assert_close(result, expected, rtol=0, atol=10 * TOL[dtype])

    def fail(*args, **kwargs):
        raise AssertionError("backend='auto' used the torch backend for CUDA tensors")

    monkeypatch.setattr(advection, "_run_torch", fail)
    auto = advect_diffuse(p0, velocity, diffusivity, dt=0.1, steps=3, backend="auto")
    torch.testing.assert_close(auto, result, rtol=0, atol=0)
