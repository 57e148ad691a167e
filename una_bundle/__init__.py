"""una_bundle: UNA (fluid-driven anomaly randomization, CVPR 2025) as a MONAI bundle.

The bundle root is this folder (``configs/``, ``scripts/``, ``models/``, ``docs/``); the Python the configs
reference lives in :mod:`una_bundle.scripts` (importable as ``scripts`` when the bundle root is on ``sys.path``);
the command line and other tooling a bundle run does not need, in :mod:`una_bundle.tools`.
"""

from pathlib import Path

__version__ = "0.5.2"  # the bundle version (configs/metadata.json)

#: The bundle root folder, as ``python -m monai.bundle`` expects it.
BUNDLE_ROOT = Path(__file__).resolve().parent
