"""Command line: ``una-bundle COMMAND --flag value`` (python-fire). ``una-bundle --help`` lists the commands.

User errors (missing or unreadable files, outputs that exist, bad parameters) end with a one-line message on
stderr and exit code 2 instead of a traceback.
"""

from __future__ import annotations

import sys

import fire

from .anomaly_gallery import generate_anomalies
from .datalist import load_datalist
from .demo_data import prepare_demo
from .pipeline_preview import preview_pipeline

USER_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, ValueError)


def demo(output_dir: str = "una_demo", seed: int = 0, overwrite: bool = False) -> dict:
    """The bundle's main job on its embedded data (for now: fluid anomalies drawn on the MNI152 template)."""
    return generate_anomalies(output_dir=output_dir, seed=seed, overwrite=overwrite)


def prepare_demo_data(
    out_dir: str = "una_demo_data",
    n_train: int = 4,
    n_val: int = 2,
    spacing: float = 1.0,
    seed: int = 0,
    overwrite: bool = False,
) -> str:
    """Build the demo dataset from the MNI152 template shipped in nilearn; prints the datalist path."""
    return str(prepare_demo(out_dir, n_train=n_train, n_val=n_val, spacing=spacing, seed=seed, overwrite=overwrite))


def check_datalist(path: str, section: str = "training", check_files: bool = True) -> str:
    """Validate a datalist section (files, shapes, modalities); prints how many subjects it holds."""
    return f"{path}: section '{section}' is valid, {len(load_datalist(path, section, check_files))} subjects"


COMMANDS = {
    "demo": demo,
    "anomalies": generate_anomalies,
    "prepare-demo": prepare_demo_data,
    "check-datalist": check_datalist,
    "preview": preview_pipeline,
}


def main(argv: list[str] | None = None) -> None:
    try:
        fire.Fire(COMMANDS, command=argv, name="una-bundle")
    except USER_ERRORS as err:
        print(f"una-bundle: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
