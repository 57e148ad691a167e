"""Shared fixtures: small synthetic brains (<= 48^3), so the suite stays fast on 2 CPU cores; benchmark loading."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (the benchmarks are scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_scan(path):
    """A 1 mm ellipsoid 'brain' (two intensities) of 40 x 48 x 40 voxels, written to ``path`` (NIfTI); returns it."""
    import nibabel as nib

    shape = (40, 48, 40)
    g = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = g[0] ** 2 / 0.64 + g[1] ** 2 / 0.72 + g[2] ** 2 / 0.64
    data = (np.where(r < 1, 60.0, 0.0) + np.where(r < 0.5, 40.0, 0.0)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0])), str(path))
    return path


def ellipsoid(shape=(40, 44, 36), radii=(0.8, 0.85, 0.8)) -> torch.Tensor:
    """A boolean ellipsoid filling most of the grid: a stand-in brain mask."""
    axes = [torch.linspace(-1, 1, n) for n in shape]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    return (x / radii[0]) ** 2 + (y / radii[1]) ** 2 + (z / radii[2]) ** 2 < 1


@pytest.fixture
def cube_brain() -> torch.Tensor:
    """A boolean 10^3 cube inside a 16^3 grid: a brain mask for metric tests with known values."""
    mask = torch.zeros(16, 16, 16, dtype=torch.bool)
    mask[3:13, 3:13, 3:13] = True
    return mask


@pytest.fixture
def brain_image():
    """``(image MetaTensor [1, X, Y, Z] with an oblique affine, brain mask [1, X, Y, Z])``."""
    mask = ellipsoid()
    rng = np.random.default_rng(0)
    values = torch.as_tensor(rng.uniform(80, 120, mask.shape), dtype=torch.float32) * mask
    affine = torch.tensor(
        [[0.0, -1.2, 0.1, 30.0], [1.1, 0.0, 0.0, -40.0], [0.0, 0.05, 1.3, 12.0], [0.0, 0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )
    return MetaTensor(values[None], affine=affine, meta={"filename_or_obj": "brain.nii.gz"}), mask[None].float()


@pytest.fixture(scope="session")
def demo_3mm(tmp_path_factory):
    """A small demo dataset (3 mm, 2 training + 1 validation subjects), built once per test session."""
    from una_bundle.scripts.data.demo_data import prepare_demo

    return prepare_demo(tmp_path_factory.mktemp("demo3mm") / "data", n_train=2, n_val=1, spacing=3.0, seed=0)
