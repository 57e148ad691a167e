"""Packaging for una_bundle: the UNA method as a MONAI bundle (configs, scripts, models, docs)."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent


def _requirements(path: Path) -> list[str]:
    """The requirement lines of a pip requirements file (comments and blank lines dropped)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


setup(
    name="una_bundle",
    version="0.5.2",  # the bundle version (configs/metadata.json)
    license="Apache-2.0",
    description="UNA (fluid-driven anomaly randomization) as a MONAI bundle: healthy T1w reconstruction and "
    "anomaly maps from brain scans of any contrast and resolution.",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["una_bundle", "una_bundle.*"]),
    package_data={
        "una_bundle": [
            "configs/*",
            "docs/*",
            "docs/figures/*",
            "models/*",
            "deploy/*.yaml",
            "deploy/requirements.txt",
            "large_files.yml",
            "LICENSE",
            # the MONAI Label app: a folder for `monailabel start_server --app`, not a module of una_bundle
            "monailabel_app/*.py",
            "monailabel_app/lib/*.py",
            "monailabel_app/lib/infers/*.py",
        ]
    },
    include_package_data=True,
    install_requires=[
        "torch>=2.3,<2.15",
        "monai>=1.4",
        "numpy>=1.24",
        "nibabel>=5.0",
        "pytorch-ignite>=0.4.11",
        "mlflow>=2.10",
        "fire>=0.5",
        "nilearn>=0.10",  # ships the MNI152 template and tissue maps the demo data are built from (no downloads)
        "matplotlib>=3.7",  # the PNG figures
        "scipy>=1.10",
        "pyyaml>=6.0",
    ],
    extras_require={
        # triton runs the GPU kernel's code under its CPU interpreter in the tests (TRITON_INTERPRET=1)
        # jsonschema: MONAI's verify_metadata checks configs/metadata.json against the model-zoo schema with it
        "test": [
            "pytest>=7",
            "jsonschema>=4",
            # code style, checked by tests/test_style.py (pinned: a new release may restyle code)
            "black==26.10.1",
            "isort==9.0.2",
            "flake8==7.5.0",
            "triton>=3.0; platform_system == 'Linux' and platform_machine == 'x86_64'",
        ],
        # the MONAI Label app (monailabel_app/, docs/monai_label.md); install torch and torchvision first:
        # pip install torch==2.14.1 torchvision==0.29.1 && pip install -e ".[monailabel]"
        # pydicom 3 breaks the server start of monailabel 0.8.5 (pydicom._storage_sopclass_uids); the other two need it
        "monailabel": [
            "monailabel==0.8.5",
            "pydicom<3",
            "dicomweb-client<0.60",
            "pynetdicom<3",
        ],
        # the MONAI Deploy app (deploy/app.py, docs/monai_deploy.md) under the App SDK 4.0.0, with the pydicom and
        # highdicom it needs for `import monai` to work: pip install torch==2.13.0 && pip install -e ".[deploy]"
        "deploy": _requirements(here / "una_bundle" / "deploy" / "requirements.txt"),
    },
    entry_points={"console_scripts": ["una-bundle=una_bundle.tools.cli:main"]},
)
