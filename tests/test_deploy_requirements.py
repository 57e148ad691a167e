"""The MONAI Deploy app's requirements file (setup.py's "deploy" extra) stays installable and keeps ``import monai``
working: monai-deploy-app-sdk 4.0.0 imports pydicom 3 (``pydicom.pixels``) and highdicom from ``monai.deploy``, which
``import monai`` loads, without declaring them; ``una_bundle`` itself is on no index, so it must not be listed.
The end-to-end run under the SDK is ``.ci/monai_deploy_check`` (the SDK is not in the test environment)."""

from packaging.requirements import Requirement

from una_bundle import BUNDLE_ROOT


def _requirements():
    text = (BUNDLE_ROOT / "deploy" / "requirements.txt").read_text(encoding="utf-8")
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return {req.name.lower(): req for req in map(Requirement, filter(None, lines))}


def test_deploy_requirements_pin_the_sdk_and_what_import_monai_needs():
    reqs = _requirements()
    assert "una_bundle" not in reqs and "una-bundle" not in reqs  # on no index: installed from its source
    assert str(reqs["monai-deploy-app-sdk"].specifier) == "==4.0.0"
    assert reqs["pydicom"].specifier.contains("3.0.2") and not reqs["pydicom"].specifier.contains("2.4.4")
    assert reqs["highdicom"].specifier.contains("0.28.2")
    assert "torch" not in reqs  # torch comes from the documented `pip install torch==...` first, never a CUDA build
