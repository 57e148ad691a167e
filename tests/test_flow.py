import pytest
import torch

from una_bundle.scripts import random_flow
from una_bundle.scripts.generator.flow import REFERENCE_GRID, curl, divergence


def test_curl_of_known_potential():
    x, y, z = torch.meshgrid(*[torch.arange(10.0, dtype=torch.float64)] * 3, indexing="ij")
    potential = torch.stack([torch.zeros_like(x), y * z, x * y])  # curl = (x - y, -y, 0)
    expected = torch.stack([x - y, -y, torch.zeros_like(x)])
    assert torch.allclose(curl(potential), expected, atol=1e-10)


def test_velocity_divergence_free_in_interior():
    velocity, diffusivity = random_flow((48, 40, 44), generator=torch.Generator().manual_seed(0))
    assert velocity.shape == (3, 48, 40, 44) and diffusivity is None
    div = divergence(velocity)[1:-1, 1:-1, 1:-1]
    scale = max(torch.diff(velocity, dim=d).abs().max() for d in range(1, 4))
    assert div.abs().max() < 1e-5 * scale


def test_diffusivity_non_negative_and_deterministic():
    v1, d1 = random_flow((24, 24, 24), generator=torch.Generator().manual_seed(1), diffusion=True)
    v2, d2 = random_flow((24, 24, 24), generator=torch.Generator().manual_seed(1), diffusion=True)
    v3, _ = random_flow((24, 24, 24), generator=torch.Generator().manual_seed(2), diffusion=True)
    assert d1.shape == (24, 24, 24) and bool((d1 >= 0).all()) and d1.max() > 0
    assert torch.equal(v1, v2) and torch.equal(d1, d2)
    assert not torch.allclose(v1, v3)


def test_magnitude_scales_linearly():
    slow, _ = random_flow((16, 16, 16), 500, generator=torch.Generator().manual_seed(5))
    fast, _ = random_flow((16, 16, 16), 1000, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(fast, 2 * slow, rtol=1e-5, atol=1e-6)


def test_reference_wavelength_independent_of_grid():
    """On the reference grid the potentials have 2 periods per axis; on any grid, velocities in voxels per unit
    time have the same statistics (so displacements match the reference's multiplier 500)."""

    def mean_speed(n):
        speeds = [
            random_flow((n,) * 3, generator=torch.Generator().manual_seed(s))[0].norm(dim=0).mean() for s in range(6)
        ]
        return float(sum(speeds) / len(speeds))

    small, large = mean_speed(50), mean_speed(100)
    assert 0.7 < small / large < 1.4
    # per-voxel curl of O(0.2)-amplitude noise with a 100-voxel wavelength, times 500: a few voxels per unit time
    assert 1.0 < large < 20.0
    assert REFERENCE_GRID == 200


@pytest.mark.parametrize("kwargs", [{"shape": (8, 8)}, {"shape": (8, 8, 8), "magnitude": -1}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        random_flow(**kwargs)
