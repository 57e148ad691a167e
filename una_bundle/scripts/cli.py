"""Command line: ``una-bundle COMMAND --flag value`` (python-fire). ``una-bundle --help`` lists the commands."""

from __future__ import annotations

import fire

from .anomaly_gallery import generate_anomalies


def demo(output_dir: str = "una_demo", seed: int = 0, overwrite: bool = False) -> dict:
    """The bundle's main job on its embedded data (for now: fluid anomalies drawn on the MNI152 template)."""
    return generate_anomalies(output_dir=output_dir, seed=seed, overwrite=overwrite)


COMMANDS = {"demo": demo, "anomalies": generate_anomalies}


def main() -> None:
    fire.Fire(COMMANDS, name="una-bundle")


if __name__ == "__main__":
    main()
