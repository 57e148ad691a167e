import pytest
import torch

from una_bundle.scripts import advect_diffuse, perlin_noise, random_flow
from una_bundle.scripts.generator.advection import face_coefficients, substep_count


def blob(shape=(32, 32, 32), center=(16, 16, 16), radius=5.0, dtype=torch.float64):
    grid = torch.meshgrid(*[torch.arange(n, dtype=dtype) for n in shape], indexing="ij")
    r2 = sum((g - c) ** 2 for g, c in zip(grid, center))
    return torch.exp(-r2 / (2 * radius**2)) * (r2 < (2.5 * radius) ** 2)


def constant_velocity(shape, vector, dtype=torch.float64):
    return torch.stack([torch.full(shape, float(v), dtype=dtype) for v in vector])


def test_upwind_at_cfl_one_is_an_exact_shift_in_the_flow_direction():
    p0 = blob(radius=3.0)  # support within 7.5 voxels of the centre: stays inside the grid after the shift
    # |V| dt = 1 voxel per (sub-)step: first-order upwind transports exactly, without numerical diffusion
    moved = advect_diffuse(p0, constant_velocity(p0.shape, (10, 0, 0)), dt=0.1, steps=5)
    assert torch.allclose(moved, torch.roll(p0, 5, dims=0), atol=1e-12)
    back = advect_diffuse(p0, constant_velocity(p0.shape, (0, 0, -10)), dt=0.1, steps=3)
    assert torch.allclose(back, torch.roll(p0, -3, dims=2), atol=1e-12)


def test_diffusion_spreads_variance_by_2Dt_and_conserves_mass():
    p0 = blob(radius=3.0)
    d, steps, dt = 0.5, 8, 0.25
    p = advect_diffuse(p0, constant_velocity(p0.shape, (0, 0, 0)), torch.full(p0.shape, d, dtype=p0.dtype), dt, steps)
    x = torch.arange(32, dtype=p0.dtype).view(-1, 1, 1)

    def variance(q):
        mean = (q * x).sum() / q.sum()
        return ((x - mean) ** 2 * q).sum() / q.sum()

    assert torch.allclose(p.sum(), p0.sum(), rtol=1e-12)
    assert float(variance(p) - variance(p0)) == pytest.approx(2 * d * dt * steps, rel=1e-6)


def test_bounded_for_a_very_strong_random_flow():
    shape = (40, 36, 44)
    generator = torch.Generator().manual_seed(0)
    velocity, diffusivity = random_flow(shape, magnitude=5000, generator=generator, diffusion=True)
    p0 = blob(shape, (20, 18, 22), 5.0, torch.float32) * (0.5 + perlin_noise(shape, 3, generator).abs())
    # the automatic sub-stepping keeps the scheme monotone even at 10x the reference magnitude
    assert substep_count(face_coefficients(velocity, diffusivity), 0.1) > 5
    p = advect_diffuse(p0, velocity, diffusivity, dt=0.1, steps=9)
    assert float(p.min()) >= float(p0.min()) - 1e-6
    assert float(p.max()) <= float(p0.max()) + 1e-6
    assert (p - p0).abs().max() > 0.1  # and it did move


def test_mass_conserved_for_a_random_flow_away_from_the_border():
    shape = (48, 48, 48)
    generator = torch.Generator().manual_seed(3)
    velocity, diffusivity = random_flow(shape, generator=generator, diffusion=True)
    p0 = blob(shape, (24, 24, 24), 4.0, torch.float32) * (0.5 + perlin_noise(shape, 3, generator).abs())
    p = advect_diffuse(p0, velocity, diffusivity, dt=0.1, steps=9)
    assert float(p[:2].sum() + p[-2:].sum()) < 1e-6 * float(p.sum())  # stayed off the two outermost layers
    assert abs(float(p.sum() / p0.sum()) - 1) < 1e-5  # face divergence is zero to round-off in the interior
    assert (p - p0).abs().max() > 0.05


def test_linear_so_support_cropping_is_exact():
    """Far-apart inputs are solved on different crops (or the whole grid); linearity must hold regardless."""
    shape = (40, 40, 40)
    velocity, diffusivity = random_flow(shape, generator=torch.Generator().manual_seed(1), diffusion=True)
    a = blob(shape, (20, 20, 20), 4.0, torch.float32)
    b = torch.zeros(shape)
    b[1, 2, 38] = 0.7  # a speck in a corner: the bounding box of a + b spans the grid
    solve = lambda p: advect_diffuse(p, velocity, diffusivity, dt=0.1, steps=6)  # noqa: E731
    assert torch.allclose(solve(a) + solve(b), solve(a + b), atol=1e-6)


def test_batched_equals_single_and_constant_stays_constant():
    shape = (20, 22, 24)
    g = torch.Generator().manual_seed(2)
    v0, _ = random_flow(shape, generator=g)
    v1, _ = random_flow(shape, generator=g)
    p = torch.stack([blob(shape, (10, 11, 12), 3.0, torch.float32), blob(shape, (8, 12, 10), 4.0, torch.float32)])
    shared = advect_diffuse(p, v0, dt=0.1, steps=4)
    per_sample = advect_diffuse(p, torch.stack([v0, v1]), dt=0.1, steps=4)
    assert torch.allclose(shared[1], advect_diffuse(p[1], v0, dt=0.1, steps=4), atol=1e-6)
    assert torch.allclose(per_sample[1], advect_diffuse(p[1], v1, dt=0.1, steps=4), atol=1e-6)
    ones = advect_diffuse(torch.ones(shape), v0, dt=0.1, steps=4)  # Neumann borders: nothing leaks in or out
    assert torch.allclose(ones, torch.ones(shape), atol=1e-6)


def test_zero_steps_and_dtype():
    p0 = (blob() > 0.5).to(torch.int64)
    out = advect_diffuse(p0, constant_velocity(p0.shape, (1, 2, 3)), steps=0)
    assert out.dtype == torch.float32 and torch.equal(out, p0.float())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"p0": torch.zeros(8, 8)}, "p0 must be"),
        ({"velocity": torch.zeros(3, 8, 8, 9)}, "velocity must be"),
        ({"velocity": torch.zeros(2, 8, 8, 8)}, "velocity must be"),
        ({"diffusivity": -torch.ones(8, 8, 8)}, "non-negative"),
        ({"diffusivity": torch.ones(8, 8)}, "diffusivity must be"),
        ({"dt": 0.0}, "dt must be"),
        ({"dt": float("nan")}, "dt must be"),
        ({"steps": -1}, "steps must be"),
        ({"steps": 2.5}, "steps must be"),
        ({"backend": "cuda"}, "backend must be"),
        ({"velocity": torch.full((3, 8, 8, 8), float("inf"))}, "finite"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {"p0": torch.ones(8, 8, 8), "velocity": torch.zeros(3, 8, 8, 8)} | kwargs
    with pytest.raises(ValueError, match=message):
        advect_diffuse(**args)
