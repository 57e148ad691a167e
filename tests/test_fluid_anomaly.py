import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ellipsoid
from monai.data import MetaTensor

from una_bundle.scripts import FluidAnomaly, RandFluidAnomalyd


def test_outputs_shapes_ranges_mask_and_metadata(brain_image):
    img, brain = brain_image
    prob, mask = FluidAnomaly().set_random_state(0)(img, brain)
    for out in (prob, mask):
        assert isinstance(out, MetaTensor) and out.shape == (1, *img.shape[1:]) and out.dtype == torch.float32
        assert torch.equal(out.affine, img.affine)
    assert 0 <= float(prob.min()) and float(prob.max()) <= 1 and float(prob.max()) > 0
    assert torch.equal(mask, (prob > 0.2 * prob.max()).float())  # reference threshold, relative to the peak
    assert float(mask.sum()) > 0
    assert float((prob * (1 - brain)).abs().max()) == 0  # confined to the brain


def test_reproducible_with_set_random_state_and_seed_sensitive(brain_image):
    img, brain = brain_image
    t = FluidAnomaly()
    a = t.set_random_state(3)(img, brain)[0]
    b = t.set_random_state(3)(img, brain)[0]
    c = t.set_random_state(4)(img, brain)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    replay = t(img, brain, randomize=False)[0]  # replays the last draw exactly
    assert torch.equal(replay, c)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    t(img, brain)
    assert torch.equal(state, torch.get_rng_state())  # no global random state consumed


def test_frames_trace_the_evolution(brain_image):
    img, brain = brain_image
    t = FluidAnomaly(nt_range=(6, 6), diffusion=True).set_random_state(1)
    prob, _, frames = t(img, brain, return_frames=True)
    assert len(frames) == 6  # P0 and five steps
    assert torch.allclose(frames[-1] * brain, prob, atol=1e-6)
    assert not torch.allclose(frames[0], frames[-1])  # the flow moved it
    assert torch.equal(t.set_random_state(1)(img, brain)[0], prob)  # recording does not change the result


def test_prob_zero_gives_empty_maps(brain_image):
    img, brain = brain_image
    prob, mask = FluidAnomaly(prob=0.0)(img, brain)
    assert float(prob.abs().sum()) == 0 and float(mask.sum()) == 0 and prob.shape == (1, *img.shape[1:])


def _save(path, array, affine=np.eye(4)):
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float32), affine), str(path))
    return path


def test_pool_lesion_is_advected_from_its_initial_place(tmp_path, brain_image):
    img, brain = brain_image
    lesion = np.zeros(img.shape[1:], dtype=np.float32)
    lesion[10:16, 12:18, 10:15] = 255  # a label-valued mask: scaled to [0, 1] on load
    pool = [_save(tmp_path / "lesion.nii.gz", lesion)]
    prob, mask = FluidAnomaly(random_shape_prob=0.0, lesion_pool=pool, nt_range=(3, 3)).set_random_state(0)(img, brain)
    assert float(prob.max()) <= 1.0
    inside = float(mask[0][10:16, 12:18, 10:15].sum())
    assert inside / float(mask.sum()) > 0.5  # moved a few voxels, still mostly where it started
    far = torch.zeros_like(mask[0], dtype=torch.bool)
    far[25:, 30:, 25:] = True
    assert float(mask[0][far].sum()) == 0


def test_initial_map_from_the_data_dict(brain_image):
    img, brain = brain_image
    initial = torch.zeros(img.shape[1:])
    initial[20:26, 20:26, 15:20] = 1.0
    t = RandFluidAnomalyd(keys="image", initial_key="own_lesion", random_shape_prob=0.0, nt_range=(2, 2))
    out = t.set_random_state(0)({"image": img, "brain_mask": brain, "own_lesion": initial})
    assert float(out["lesion"][0][20:26, 20:26, 15:20].mean()) > 0.5
    assert float(out["lesion"].sum()) < 2 * float(initial.sum())


def test_dictionary_version_keys_determinism_and_prob(brain_image):
    img, brain = brain_image
    data = {"image": img, "brain_mask": brain}
    t = RandFluidAnomalyd(keys="image", probability_key="p", mask_key="m")
    a, b = t.set_random_state(5)(data), t.set_random_state(5)(data)
    assert torch.equal(a["p"], b["p"]) and torch.equal(a["m"], b["m"]) and float(a["m"].sum()) > 0
    assert torch.equal(a["p"].affine, img.affine)
    off = RandFluidAnomalyd(keys="image", prob=0.0)(data)
    assert float(off["lesion_prob"].sum()) == 0 and off["lesion"].shape == (1, *img.shape[1:])
    no_mask = RandFluidAnomalyd(keys="image", brain_mask_key=None).set_random_state(5)(data)
    assert float((no_mask["lesion_prob"][0] * (img[0] == 0)).abs().sum()) == 0  # brain = image > 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"percentile_range": (99, 90)}, "percentile_range"),
        ({"percentile_range": (90, 101)}, "percentile_range"),
        ({"nt_range": (10, 2)}, "nt_range"),
        ({"nt_range": (2.5, 4)}, "nt_range"),
        ({"dt": 0}, "dt"),
        ({"threshold": 1.0}, "threshold"),
        ({"prob": 1.5}, "prob"),
        ({"random_shape_prob": -0.1}, "random_shape_prob"),
        ({"backend": "numpy"}, "backend"),
        ({"shape_periods": (3, 2)}, "shape_periods"),
        ({"shape_periods": 0}, "shape_periods"),
        ({"percentile_sampling": "normal"}, "percentile_sampling"),
        ({"percentile_sampling": "log", "percentile_range": (90, 100)}, "below 100"),
    ],
)
def test_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FluidAnomaly(**kwargs)


def test_log_percentile_sampling_spreads_volumes_over_orders_of_magnitude(brain_image):
    # no flow (magnitude 0, one time point): the mask is the thresholded initial shape, its size set by the percentile
    img, brain = brain_image
    common = dict(magnitude=0.0, nt_range=(1, 1), threshold=0.0, percentile_range=(90.0, 99.9))
    fractions = {}
    for sampling in ("uniform", "log"):
        transform = FluidAnomaly(percentile_sampling=sampling, shape_periods=(1.5, 4.0), **common)
        sizes = []
        for seed in range(40):
            _, mask = transform.set_random_state(seed)(img, brain)
            sizes.append(float(mask.sum()))
        fractions[sampling] = np.array(sizes) / float(brain.sum())
    # uniform in q: the kept share is mostly a few % of the grid; log-uniform: spread evenly over orders of magnitude
    for q in (25, 50):
        assert np.percentile(fractions["log"], q) < 0.5 * np.percentile(fractions["uniform"], q)
    assert fractions["log"].max() > 0.03  # large lesions still drawn


def test_bad_pool_files_and_inputs(tmp_path, brain_image):
    img, brain = brain_image
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        FluidAnomaly(lesion_pool=[tmp_path / "missing.nii.gz"])
    flat = _save(tmp_path / "flat.nii.gz", np.zeros((8, 8)))
    with pytest.raises(ValueError, match="flat.nii.gz.*3D"):
        FluidAnomaly(lesion_pool=[flat])
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="garbage.nii.gz"):
        FluidAnomaly(lesion_pool=[garbage])
    with pytest.raises(ValueError, match="brain mask is empty"):
        FluidAnomaly()(img, torch.zeros_like(brain))
    with pytest.raises(ValueError, match=r"\[C, X, Y, Z\]"):
        FluidAnomaly()(img[0], brain)
    with pytest.raises(ValueError, match="does not match"):
        FluidAnomaly()(img, brain[:, :-1])


def test_unreachable_lesions_fail_clearly():
    tiny = torch.zeros(1, 24, 24, 24)
    tiny[0, 12, 12, 12] = 1  # a one-voxel brain: random shapes almost never land in it
    with pytest.raises(RuntimeError, match="no lesion"):
        FluidAnomaly(max_tries=2, percentile_range=(99.5, 99.6)).set_random_state(0)(MetaTensor(tiny * 100), tiny)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_and_keeps_device():
    brain = ellipsoid()[None].float().cuda()
    prob, mask = FluidAnomaly().set_random_state(0)(MetaTensor(brain * 100), brain)
    assert prob.is_cuda and mask.is_cuda and float(mask.sum()) > 0
