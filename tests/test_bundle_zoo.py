"""Model-zoo readiness: metadata (schema), network in/out, TorchScript export, large_files.yml, MONAI Label, Deploy.

Every test works with whatever weights ``models/model.pt`` holds (random or trained): only shapes, finiteness and
equivalences are asserted, never quality.
"""

import importlib.metadata
import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from conftest import small_scan
from monai.bundle import ConfigParser

from una_bundle import BUNDLE_ROOT
from una_bundle.scripts.data.bundle_config import load_config, weights_path
from una_bundle.scripts.model.checkpoint import file_hash
from una_bundle.tools import release

META = BUNDLE_ROOT / "configs" / "metadata.json"
CONFIG = BUNDLE_ROOT / "configs" / "inference.yaml"
CKPT = weights_path()
TS = BUNDLE_ROOT / "models" / "model.ts"
# meta_schema_20240725.json: the schema the metadata's "schema" URL names, kept here so verify_metadata runs offline
SCHEMA = Path(__file__).parent / "data" / "meta_schema_20240725.json"
SCHEMA_SHA256 = "cd64aa8a5904426f6fc6855dabe46af8c742d5bad644b4e9cfb78ebad09ad678"
SMALL_ROI = {"roi_size": [48, 48, 48]}


@pytest.fixture
def bundle_on_path(monkeypatch):
    """The configs say ``$import scripts``: the bundle root on ``sys.path``, as ``PYTHONPATH=una_bundle`` does."""
    monkeypatch.syspath_prepend(str(BUNDLE_ROOT))


def _meta() -> dict:
    return json.loads(META.read_text())


def _eager_network() -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(str(CKPT), map_location="cpu", weights_only=True), strict=True)
    return net.eval()


def _input(n: int = 2, seed: int = 0) -> torch.Tensor:
    """A random input of the metadata's shape pattern ``16*n``: ``[1, 2, 16n, 16n, 16n]``."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 2, 16 * n, 16 * n, 16 * n, generator=g)


# --- metadata ---------------------------------------------------------------------------------------------------
def test_metadata_has_the_specification_keys():
    meta, schema = _meta(), json.loads(SCHEMA.read_text())
    missing = [k for k in schema["required"] if k not in meta]
    assert not missing, f"metadata.json lacks {missing}"
    assert meta["version"] in meta["changelog"], "the changelog must describe the current version"
    assert meta["schema"].endswith("/" + SCHEMA.name)
    for tensor in (meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]):
        for key in ("type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range"):
            assert key in tensor, key
        for key in ("is_patch_data", "channel_def"):
            assert key in tensor, key
        assert tensor["dtype"] == "float32" and tensor["value_range"] == [0, 1]
        assert len(tensor["channel_def"]) == tensor["num_channels"]
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 2
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 2  # healthy T1w, anomaly logit
    assert any("2501.13370" in ref for ref in meta["references"])


def test_metadata_required_packages_are_real_distributions():
    for name in _meta()["required_packages_version"]:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"required_packages_version names {name!r}, which is not an installed distribution")


def test_metadata_spatial_shape_fits_the_configured_network():
    """``16*n`` must be the network's divisor ``2**(levels - 1)`` from inference.yaml."""
    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    divisor = 2 ** (int(parser.get_parsed_content("levels")) - 1)
    for tensor in _meta()["network_data_format"]["inputs"].values():
        assert tensor["spatial_shape"] == [f"{divisor}*n"] * 3


def test_verify_metadata_against_the_schema():
    pytest.importorskip("jsonschema")
    from monai.bundle import verify_metadata

    # the file exists (and has this hash): nothing is downloaded
    verify_metadata(meta_file=str(META), filepath=str(SCHEMA), hash_val=SCHEMA_SHA256, hash_type="sha256")


def test_verify_metadata_rejects_a_broken_metadata(tmp_path):
    pytest.importorskip("jsonschema")
    from monai.bundle import verify_metadata

    meta = _meta()
    meta["network_data_format"]["inputs"]["image"].pop("num_channels")
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(meta))
    with pytest.raises(ValueError):
        verify_metadata(meta_file=str(broken), filepath=str(SCHEMA), hash_val=SCHEMA_SHA256, hash_type="sha256")


def test_verify_net_in_out(bundle_on_path):
    from monai.bundle import verify_net_in_out

    for n in (1, 2):
        verify_net_in_out(
            net_id="network_def", meta_file=str(META), config_file=str(CONFIG), device="cpu", n=n, bundle_root="."
        )


# --- weights, TorchScript, large_files.yml -------------------------------------------------------------------------
def test_inference_config_reads_the_weights_the_tools_write():
    """inference.yaml's ckpt_path is where release, training_state and the benchmarks look (weights_path)."""
    assert Path(load_config("inference.yaml").get_parsed_content("ckpt_path")).resolve() == CKPT.resolve()


def test_shipped_checkpoint_fits_the_config_and_gives_finite_outputs():
    assert CKPT.stat().st_size < 25 * 2**20, "models/model.pt is committed: the model zoo's limit is 25 MB a file"
    with torch.no_grad():
        out = _eager_network()(_input())
    assert out.shape == (1, 2, 32, 32, 32) and out.dtype == torch.float32  # healthy T1w, anomaly logit
    assert torch.isfinite(out).all()


def test_ckpt_export_matches_the_eager_network(tmp_path, bundle_on_path):
    exported = release.export_torchscript(BUNDLE_ROOT, filepath=tmp_path / "model.ts")
    extra = {"metadata.json": "", "inference.json": ""}
    ts = torch.jit.load(str(exported), map_location="cpu", _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"] == _meta()["version"]
    assert json.loads(extra["inference.json"])["network_def"]["_target_"] == "scripts.model.network.UNANet"
    x = _input(seed=1)
    with torch.no_grad():
        torch.testing.assert_close(ts(x), _eager_network()(x), rtol=1e-5, atol=1e-5)


def test_committed_torchscript_matches_the_committed_checkpoint():
    """models/model.ts must be the export of models/model.pt (stale after new weights: run the release script)."""
    assert TS.is_file(), "models/model.ts missing: python -m una_bundle.tools.release"
    ts = torch.jit.load(str(TS), map_location="cpu")
    x = _input(seed=2)
    with torch.no_grad():
        a, b = ts(x), _eager_network()(x)
    assert torch.allclose(
        a, b, rtol=1e-5, atol=1e-5
    ), "models/model.ts is not the export of models/model.pt: run python -m una_bundle.tools.release"


def test_large_files_yml_hashes_match_the_committed_files():
    entries = release.read_large_files(BUNDLE_ROOT)
    assert {e["path"] for e in entries} == {"models/model.pt", "models/model.ts"}
    assert all(e["hash_type"] == "sha256" for e in entries)
    problems = release.check_large_files(BUNDLE_ROOT)
    assert not problems, "large_files.yml is stale:\n" + "\n".join(problems)


def test_download_large_files_accepts_the_committed_files():
    """MONAI's own check (it downloads only a missing file; a present one must match its hash)."""
    from monai.bundle import download_large_files

    download_large_files(bundle_path=str(BUNDLE_ROOT))


def test_update_large_files_rewrites_only_the_hash(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(b"weights")
    (tmp_path / "large_files.yml").write_text(
        '# keep me\nlarge_files:\n  - path: "models/model.pt"\n    url: "u"\n    hash_val: "abc"\n'
        '    hash_type: "sha256"\n'
    )
    (problem,) = release.check_large_files(tmp_path)
    expected = file_hash(tmp_path / "models" / "model.pt")
    assert expected in problem
    assert release.update_large_files(tmp_path) == ["models/model.pt"]
    text = (tmp_path / "large_files.yml").read_text()
    assert text.startswith("# keep me") and yaml.safe_load(text)["large_files"][0]["hash_val"] == expected
    assert release.check_large_files(tmp_path) == []
    assert release.main(["--check", "--bundle_root", str(tmp_path)]) == 0


# --- MONAI Label --------------------------------------------------------------------------------------------------


def test_monai_label_bundle_ids_resolve(bundle_on_path):
    """What monailabel.tasks.infer.bundle.BundleInferTask reads, resolved without monailabel."""
    from monai.transforms import Compose, LoadImaged

    assert (BUNDLE_ROOT / "configs" / "inference.yaml").is_file()  # one of BundleConstants.configs()
    assert CKPT.is_file() or TS.is_file()  # model_pytorch() / model_torchscript()
    meta = _meta()
    key_image = next(iter(meta["network_data_format"]["inputs"]))
    key_pred = next(iter(meta["network_data_format"]["outputs"]))
    assert (key_image, key_pred) == ("image", "pred")  # BasicInferTask's input_key / output_label_key defaults
    labels = {v.lower(): int(k) for k, v in meta["network_data_format"]["outputs"]["pred"]["channel_def"].items()}
    assert labels == {"healthy t1w": 0, "anomaly logit": 1}
    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    parser.config.update({"bundle_root": str(BUNDLE_ROOT)})  # as BundleInferTask._load_bundle_config
    assert "device" in parser.config
    net = parser.get_parsed_content("network_def", instantiate=True)
    ckpt = torch.load(str(CKPT), map_location="cpu", weights_only=True)
    state = ckpt.get("model", ckpt)  # BasicInferTask(model_state_dict="model") falls back to the whole file
    assert set(state) == set(net.state_dict())
    pre = parser.get_parsed_content("preprocessing", instantiate=True)
    post = parser.get_parsed_content("postprocessing", instantiate=True)
    assert isinstance(pre, Compose) and isinstance(post, Compose)
    assert isinstance(pre.transforms[0], LoadImaged) and pre.transforms[0].allow_missing_keys
    assert callable(parser.get_parsed_content("inferer", instantiate=True))


def test_monai_label_bundle_infer_task(tmp_path, monkeypatch):
    """MONAI Label's own bundle task on this bundle (skipped without monailabel)."""
    try:
        from monailabel.tasks.infer.bundle import BundleInferTask
    except Exception as err:  # ImportError, or a broken optional dependency of monailabel
        pytest.skip(f"monailabel not usable here: {type(err).__name__}: {err}")
    for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        monkeypatch.delitem(sys.modules, name)  # BundleInferTask unloads 'scripts' itself; restore ours after
    # extend_load_image=False: monailabel's LoadImageTensord ignores allow_missing_keys (the optional 'mask')
    task = BundleInferTask(str(BUNDLE_ROOT), {}, extend_load_image=False, post_filter=None)
    assert task.is_valid()
    assert task.labels == {"healthy t1w": 0, "anomaly logit": 1}  # metadata.json pred.channel_def, lower-cased
    task.bundle_config["roi_size"] = SMALL_ROI["roi_size"]
    scan = small_scan(tmp_path / "brain.nii.gz")
    # a Path, not a str: for a str request MONAI Label adds data["image_path"] (a str), and MONAI 1.6's Spacingd
    # then calls .update() on every "image_*" key (see docs/monai_label.md)
    result, result_json = task({"image": scan, "device": "cpu"})
    if isinstance(result, (str, Path)):  # a file when MONAI Label knows the image's path
        data = np.asarray(nib.load(str(result)).dataobj, dtype=np.float32)
        Path(result).unlink(missing_ok=True)
    else:  # the array itself otherwise
        data = np.asarray(result, dtype=np.float32)
    assert data.shape == (40, 48, 40)  # the input's grid (Invertd in the bundle's postprocessing)
    assert np.isfinite(data).all() and data.min() >= 0 and data.max() <= 1
    assert result_json["label_names"] == {"healthy t1w": 0, "anomaly logit": 1}


# --- MONAI Deploy -------------------------------------------------------------------------------------------------
def test_deploy_app_runs_the_torchscript_model(tmp_path):
    from una_bundle.deploy import app

    (tmp_path / "in").mkdir()
    scan = small_scan(tmp_path / "in" / "brain.nii.gz")
    written = app.run(tmp_path / "in", tmp_path / "out", model_path=TS.parent, overrides=SMALL_ROI)
    assert set(written) == {"brain"} and set(written["brain"]) == {"healthy", "anomaly", "anomaly_mask"}
    reference = nib.load(str(scan))
    for kind, dtype in app.OUTPUTS.items():
        image = nib.load(str(written["brain"][kind]))
        data = np.asarray(image.dataobj)
        assert data.shape == reference.shape and image.get_data_dtype() == dtype
        np.testing.assert_allclose(image.affine, reference.affine)
        assert np.isfinite(data).all() and data.min() >= 0
        if kind != "healthy":  # the healthy output is in the scan's units when it is the lesion-filled scan
            assert data.max() <= 1


def test_deploy_app_errors(tmp_path):
    from una_bundle.deploy import app

    with pytest.raises(FileNotFoundError, match="input not found"):
        app.find_cases(tmp_path / "nothing.nii.gz")
    with pytest.raises(FileNotFoundError, match="no .nii"):
        app.find_cases(tmp_path)
    with pytest.raises(FileNotFoundError, match="TorchScript model not found"):
        app.load_torchscript(tmp_path / "model.ts")
    plain = tmp_path / "plain.ts"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(plain))
    with pytest.raises(ValueError, match="metadata.json"):
        app.load_torchscript(plain)
    shutil.copy(CKPT, tmp_path / "weights.ts")
    with pytest.raises(ValueError, match="not a TorchScript model"):
        app.load_torchscript(tmp_path / "weights.ts")
