import math

import pytest
import torch

from una_bundle.scripts import perlin_noise
from una_bundle.scripts.generator.perlin import PERLIN_BOUND


def _naive_perlin(points: torch.Tensor, gradients: torch.Tensor, periods, shape) -> torch.Tensor:
    """Textbook Perlin noise at voxel ``points`` [K, 3]: loop over the 8 cell corners (independent of the
    factorised implementation)."""
    out = torch.zeros(len(points), dtype=torch.float64)
    for k, voxel in enumerate(points.tolist()):
        pos = [voxel[a] * periods[a] / shape[a] for a in range(3)]
        cell = [math.floor(p) for p in pos]
        frac = [p - c for p, c in zip(pos, cell)]
        fade = [f * f * f * (f * (f * 6 - 15) + 10) for f in frac]
        for corner in range(8):
            c = [(corner >> a) & 1 for a in range(3)]
            g = gradients[:, cell[0] + c[0], cell[1] + c[1], cell[2] + c[2]].double()
            dot = sum(float(g[a]) * (frac[a] - c[a]) for a in range(3))
            weight = math.prod(fade[a] if c[a] else 1 - fade[a] for a in range(3))
            out[k] += weight * dot
    return out


def test_matches_textbook_perlin_on_any_shape():
    shape, periods = (17, 23, 11), (2.0, 3.5, 1.25)
    noise = perlin_noise(shape, periods, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    # the same gradients, drawn as the implementation draws them: unit vectors on the lattice nodes
    nodes = [math.floor(p) + 2 for p in periods]
    direction = torch.randn((1, 3, *nodes), generator=torch.Generator().manual_seed(7))
    gradients = (direction / direction.norm(dim=1, keepdim=True))[0]
    points = torch.stack([torch.randint(0, n, (40,), generator=torch.Generator().manual_seed(1)) for n in shape], 1)
    expected = _naive_perlin(points, gradients, periods, shape)
    got = noise[points[:, 0], points[:, 1], points[:, 2]]
    assert torch.allclose(got, expected, atol=1e-6)


def test_range_zero_on_lattice_and_smooth():
    noise = perlin_noise((64, 64, 64), 2, generator=torch.Generator().manual_seed(0))
    assert noise.shape == (64, 64, 64) and noise.dtype == torch.float32
    assert noise.abs().max() <= PERLIN_BOUND + 1e-6
    assert noise.std() > 0.05  # not degenerate
    lattice = noise[::32, ::32, ::32]  # 2 periods over 64 voxels: nodes every 32 voxels
    assert lattice.abs().max() < 1e-6
    # smooth: neighbouring voxels differ by a small fraction of the range (gradient noise, not white noise)
    for dim in range(3):
        assert torch.diff(noise, dim=dim).abs().max() < 0.12


def test_seed_determinism_sensitivity_and_batch():
    a = perlin_noise((3, 20, 21, 22), 2, generator=torch.Generator().manual_seed(3))
    b = perlin_noise((3, 20, 21, 22), 2, generator=torch.Generator().manual_seed(3))
    c = perlin_noise((3, 20, 21, 22), 2, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-3)
    assert not torch.allclose(a[0], a[1], atol=1e-3)  # batch elements are independent draws


def test_no_global_random_state_used():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    perlin_noise((8, 8, 8), 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("shape", [(8, 8), (2, 2, 8, 8, 8), (0, 4, 4)])
def test_bad_shape(shape):
    with pytest.raises(ValueError, match="shape"):
        perlin_noise(shape, 2)


@pytest.mark.parametrize("periods", [0, -1, (1, 2)])
def test_bad_periods(periods):
    with pytest.raises(ValueError, match="periods"):
        perlin_noise((8, 8, 8), periods)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_distribution():
    noise = perlin_noise((32, 32, 32), 2, generator=torch.Generator("cuda").manual_seed(0))
    assert noise.is_cuda and noise.abs().max() <= PERLIN_BOUND + 1e-6
