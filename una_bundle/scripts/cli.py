"""Command line: ``una-bundle COMMAND --flag value`` (python-fire). ``una-bundle --help`` lists the commands.

User errors (missing or unreadable files, outputs that exist, bad parameters) end with a one-line message on
stderr and exit code 2 instead of a traceback.
"""

from __future__ import annotations

import json
import sys

import fire

from . import training
from .anomaly_gallery import generate_anomalies
from .datalist import load_datalist
from .demo_case import run_demo
from .demo_data import prepare_demo
from .evaluation import evaluate
from .inference import infer
from .pipeline_preview import preview_pipeline

USER_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, ValueError)


def demo(output_dir: str = "una_demo", seed: int = 0, device: str = "cpu", overwrite: bool = False) -> str:
    """The bundle's main job on its embedded data: the MNI152 template with a simulated lesion, reconstructed by the
    shipped model, anomaly map and QC figure written, scored against the truth (prints the metrics table)."""
    return run_demo(output_dir=output_dir, seed=seed, device=device, overwrite=overwrite)


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


def train(
    dataset_dir: str,
    output_dir: str = "una_training",
    profile: str = "full",
    tracking: str | None = None,
    max_epochs: int | None = None,
    epoch_length: int | None = None,
    resume: bool = True,
    overrides: dict | str | None = None,
) -> str:
    """Train UNA (configs/train.yaml); prints the output folder (models/model.pt: best validation model).

    Args:
        dataset_dir: folder with datalist.json (e.g. from ``una-bundle prepare-demo``).
        output_dir: checkpoints, QC images and the MLflow store; re-running in it resumes training.
        profile: ``full`` (1 mm, 160^3 crops, GPU) or ``cpu`` (2 mm demo data, small network).
        tracking: ``mlflow`` to record the run in ``<output_dir>/mlruns.db``.
        max_epochs: number of epochs (overrides the profile's).
        epoch_length: iterations per epoch (overrides the profile's).
        resume: continue from the newest checkpoint in ``<output_dir>/models`` (``--noresume``: start afresh).
        overrides: other config ids, a dict or JSON string, e.g. ``'{"network_def#levels": 3}'``.
    """
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError as err:
            raise ValueError(f"--overrides must be a dict or a JSON object, got {overrides!r} ({err}).") from err
    if not isinstance(overrides, (dict, type(None))):
        raise ValueError(f"--overrides must be a dict or a JSON object, got {overrides!r}.")
    if not isinstance(resume, bool):
        raise ValueError(f"--resume takes True or False (or use --noresume), got {resume!r}.")
    settings = dict(overrides or {})
    settings.update({k: v for k, v in (("max_epochs", max_epochs), ("epoch_length", epoch_length)) if v is not None})
    return training.train(
        dataset_dir, output_dir=output_dir, profile=profile, tracking=tracking, resume=resume, **settings
    )


COMMANDS = {
    "demo": demo,
    "anomalies": generate_anomalies,
    "prepare-demo": prepare_demo_data,
    "check-datalist": check_datalist,
    "preview": preview_pipeline,
    "infer": infer,
    "evaluate": evaluate,
    "train": train,
}


def main(argv: list[str] | None = None) -> None:
    try:
        fire.Fire(COMMANDS, command=argv, name="una-bundle")
    except USER_ERRORS as err:
        print(f"una-bundle: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
