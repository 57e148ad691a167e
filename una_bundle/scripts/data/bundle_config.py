"""Reading the bundle's own configs from Python, so commands, benchmarks and tests share one definition.

Configs reference this package as ``scripts.*`` (the model-zoo convention: the bundle root is on ``sys.path``).
:func:`load_config` puts the bundle root there, as ``python -m monai.bundle`` does with ``PYTHONPATH``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from monai.bundle import ConfigParser

#: The bundle root (``configs/``, ``scripts/``, ``models/``), computed here: this package is also imported as
#: ``scripts`` (the bundle root on ``sys.path``), where ``una_bundle`` is out of reach.
BUNDLE_ROOT = Path(__file__).resolve().parents[2]

__all__ = ["BUNDLE_ROOT", "load_config", "make_scripts_importable", "weights_path"]


def weights_path(bundle_root: str | Path = BUNDLE_ROOT) -> Path:
    """The bundle's weights, ``<bundle_root>/models/model.pt`` (the model-zoo layout; ``ckpt_path`` of
    ``configs/inference.yaml``, which a test holds to this)."""
    return Path(bundle_root) / "models" / "model.pt"


def make_scripts_importable(bundle_root: str | Path = BUNDLE_ROOT) -> Path:
    """Put the bundle root on ``sys.path`` (the configs say ``scripts.*``), as ``monai.bundle`` does with
    ``PYTHONPATH``; ``ImportError`` if another package named ``scripts`` is already imported. Returns the root."""
    root = Path(bundle_root).resolve()
    loaded = sys.modules.get("scripts")
    if loaded is not None:
        where = Path(getattr(loaded, "__file__", "") or "").resolve()
        if root not in where.parents:
            raise ImportError(
                f"another module named 'scripts' is already imported ({where}); the bundle's configs need the "
                f"scripts package of {root}."
            )
    elif str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


def load_config(
    config_files: str | Sequence[str] = "train.yaml",
    overrides: Mapping[str, object] | None = None,
    bundle_root: str | Path = BUNDLE_ROOT,
) -> ConfigParser:
    """Parse ``configs/<config_files>`` of the bundle with ``overrides`` (``{"id#sub": value}``) applied.

    ``bundle_root`` defaults to the installed bundle; ids such as ``dataset_dir`` or ``output_dir`` can be
    overridden to point elsewhere.
    """
    root = make_scripts_importable(bundle_root)
    files = [config_files] if isinstance(config_files, str) else list(config_files)
    paths = [root / "configs" / name for name in files]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"bundle config not found: {path}")
    parser = ConfigParser()
    parser.read_config([str(p) for p in paths])
    parser["bundle_root"] = str(root)
    for key, value in (overrides or {}).items():
        parser[key] = value
    parser.parse()
    return parser
