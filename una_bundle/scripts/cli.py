"""Command line: ``una-bundle COMMAND --flag value`` (python-fire). ``una-bundle --help`` lists the commands.

User errors (missing or unreadable files, outputs that exist, bad parameters) end with a one-line message on
stderr and exit code 2 instead of a traceback.
"""

from __future__ import annotations

import sys

import fire

from .anomaly_gallery import generate_anomalies

USER_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, ValueError)


def demo(output_dir: str = "una_demo", seed: int = 0, overwrite: bool = False) -> dict:
    """The bundle's main job on its embedded data (for now: fluid anomalies drawn on the MNI152 template)."""
    return generate_anomalies(output_dir=output_dir, seed=seed, overwrite=overwrite)


COMMANDS = {"demo": demo, "anomalies": generate_anomalies}


def main(argv: list[str] | None = None) -> None:
    try:
        fire.Fire(COMMANDS, command=argv, name="una-bundle")
    except USER_ERRORS as err:
        print(f"una-bundle: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
