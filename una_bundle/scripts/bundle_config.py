"""Reading the bundle's own configs from Python, so commands, benchmarks and tests share one definition.

Configs reference this package as ``scripts.*`` (the model-zoo convention: the bundle root is on ``sys.path``).
:func:`load_config` puts the bundle root there, as ``python -m monai.bundle`` does with ``PYTHONPATH``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from monai.bundle import ConfigParser

from .. import BUNDLE_ROOT

__all__ = ["load_config"]


def load_config(
    config_files: str | Sequence[str] = "train.yaml",
    overrides: Mapping[str, object] | None = None,
    bundle_root: str | Path = BUNDLE_ROOT,
) -> ConfigParser:
    """Parse ``configs/<config_files>`` of the bundle with ``overrides`` (``{"id#sub": value}``) applied.

    ``bundle_root`` defaults to the installed bundle; ids such as ``dataset_dir`` or ``output_dir`` can be
    overridden to point elsewhere.
    """
    root = Path(bundle_root).resolve()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
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
