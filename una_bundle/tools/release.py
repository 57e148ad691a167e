"""The shipped model files: TorchScript export and the hashes in ``large_files.yml``.

Model-zoo bundles list their weights in ``<bundle root>/large_files.yml`` (``large_files:`` entries with ``path``,
``url``, ``hash_val``, ``hash_type``); ``python -m monai.bundle download_large_files --bundle_path <bundle root>``
fetches every entry whose file is missing and checks the hash of every file present. This bundle commits its small
CPU weights (``models/model.pt``) and their TorchScript export (``models/model.ts``) directly, so the file only has
to state their hashes. After replacing ``models/model.pt`` (e.g. with newly trained weights), run::

    python -m una_bundle.tools.release            # re-export models/model.ts, rewrite the hashes
    python -m una_bundle.tools.release --check    # only compare: exit code 1 and the hashes to write if stale
    python -m una_bundle.tools.release --archive  # also build the zoo archive dist/una_bundle_v<version>.zip

(From the repository root it also runs without installing the package.)
The TorchScript export is ``python -m monai.bundle ckpt_export network_def`` with the bundle's inference config and
metadata (both are stored inside ``model.ts`` as extra files), by scripting (``torch.jit.script``), not tracing.
A re-export of unchanged weights keeps the committed ``model.ts`` byte for byte (a fresh export differs in bytes only:
TorchScript writes a random serialization id), so its hash changes only when the model does.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
import yaml

from ..scripts.data.atomic_io import commit, write_atomic
from ..scripts.data.bundle_config import BUNDLE_ROOT, make_scripts_importable, weights_path
from ..scripts.model.checkpoint import file_hash

__all__ = [
    "read_large_files",
    "check_large_files",
    "update_large_files",
    "export_torchscript",
    "same_torchscript",
    "refresh_torchscript",
    "build_archive",
    "ARCHIVE_CONTENTS",
    "main",
]

#: What the model-zoo archive of the bundle holds (paths under the bundle root): the zoo layout, nothing pip-only
#: (``tools/``: the fire CLI, this module, figures; ``deploy/``: the MONAI Deploy app; the package ``__init__``).
ARCHIVE_CONTENTS = ("configs", "models", "scripts", "docs", "LICENSE", "large_files.yml")


def read_large_files(bundle_root: str | Path = BUNDLE_ROOT) -> list[dict]:
    """The entries of ``<bundle_root>/large_files.yml``, each checked to have ``path``, ``url``, ``hash_val`` and
    ``hash_type``."""
    yml = Path(bundle_root) / "large_files.yml"
    if not yml.is_file():
        raise FileNotFoundError(f"{yml} not found: a bundle lists its model files there.")
    entries = (yaml.safe_load(yml.read_text()) or {}).get("large_files")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{yml}: expected a non-empty list under 'large_files:'.")
    for entry in entries:
        missing = [k for k in ("path", "url", "hash_val", "hash_type") if k not in (entry or {})]
        if missing:
            raise ValueError(f"{yml}: entry {entry} lacks {missing} (needs path, url, hash_val, hash_type).")
    return entries


def check_large_files(bundle_root: str | Path = BUNDLE_ROOT) -> list[str]:
    """One line per file of ``large_files.yml`` that is missing or whose hash differs (empty: all match)."""
    problems = []
    for entry in read_large_files(bundle_root):
        path = Path(bundle_root) / entry["path"]
        if not path.is_file():
            problems.append(f"{entry['path']}: missing ({path})")
            continue
        actual = file_hash(path, entry["hash_type"])
        if actual != str(entry["hash_val"]):
            problems.append(
                f"{entry['path']}: large_files.yml says {entry['hash_type']} {entry['hash_val']}, the file has "
                f'{actual}; write hash_val: "{actual}" (python -m una_bundle.tools.release does it)'
            )
    return problems


def update_large_files(bundle_root: str | Path = BUNDLE_ROOT) -> list[str]:
    """Rewrite each ``hash_val`` of ``large_files.yml`` to its file's current hash (the rest of the text, comments
    included, is kept). Returns the paths whose hash changed."""
    yml = Path(bundle_root) / "large_files.yml"
    text = yml.read_text()
    changed = []
    for entry in read_large_files(bundle_root):
        path = Path(bundle_root) / entry["path"]
        if not path.is_file():
            raise FileNotFoundError(f"{path} (listed in {yml}) not found.")
        actual = file_hash(path, entry["hash_type"])
        if actual == str(entry["hash_val"]):
            continue
        pattern = re.compile(r"(hash_val:\s*[\"']?)" + re.escape(str(entry["hash_val"])) + r"([\"']?)")
        text, n = pattern.subn(lambda m: m.group(1) + actual + m.group(2), text, count=1)
        if n != 1:
            raise ValueError(f"{yml}: could not find hash_val {entry['hash_val']} of {entry['path']} to replace.")
        changed.append(entry["path"])
    if changed:
        yml.write_text(text)
    return changed


def export_torchscript(
    bundle_root: str | Path = BUNDLE_ROOT, filepath: str | Path | None = None, ckpt_file: str | Path | None = None
) -> Path:
    """``monai.bundle.ckpt_export`` of ``network_def`` with the bundle's inference config and metadata.

    Args:
        bundle_root: the bundle folder (``configs/``, ``models/``).
        filepath: where to write (default ``<bundle_root>/models/model.ts``).
        ckpt_file: the weights (default ``<bundle_root>/models/model.pt``; a state dict or ``{"model": ...}``).
    """
    from monai.bundle import ckpt_export

    root = Path(bundle_root).resolve()
    filepath = Path(filepath) if filepath is not None else root / "models" / "model.ts"
    ckpt_file = Path(ckpt_file) if ckpt_file is not None else weights_path(root)
    if not ckpt_file.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt_file} not found: nothing to export.")
    make_scripts_importable(root)  # the config's `$import scripts`
    ckpt_export(
        net_id="network_def",
        filepath=str(filepath),
        ckpt_file=str(ckpt_file),
        meta_file=str(root / "configs" / "metadata.json"),
        config_file=str(root / "configs" / "inference.yaml"),
        bundle_root=str(root),
    )
    return filepath


def same_torchscript(a: str | Path, b: str | Path) -> bool:
    """Whether two TorchScript files hold the same model: equal weights (bit for bit), extra files (metadata and
    config) and code. Two exports of one checkpoint differ as bytes (TorchScript writes a random serialization id
    and the archive's folder name), never in these."""
    from ..deploy.app import load_torchscript  # the one reader of a model.ts and the files ckpt_export stores in it

    (ma, *files_a), (mb, *files_b) = load_torchscript(a), load_torchscript(b)
    sa, sb = ma.state_dict(), mb.state_dict()
    if files_a != files_b or sa.keys() != sb.keys() or ma.code != mb.code:
        return False
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def refresh_torchscript(bundle_root: str | Path = BUNDLE_ROOT) -> bool:
    """Re-export ``models/model.ts`` from ``models/model.pt``; the committed file is kept, byte for byte, when the
    new export holds the same model (:func:`same_torchscript`). Returns whether the file changed."""
    target = Path(bundle_root) / "models" / "model.ts"
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        fresh = export_torchscript(bundle_root, Path(tmp) / target.name)
        if target.is_file() and same_torchscript(target, fresh):
            return False
        commit(fresh, target)  # synced, then renamed over the old file
    return True


def build_archive(bundle_root: str | Path = BUNDLE_ROOT, out_path: str | Path | None = None) -> Path:
    """The model-zoo archive: ``<name>_v<version>.zip`` (the bundle folder's name, ``configs/metadata.json``'s version)
    with :data:`ARCHIVE_CONTENTS` under one top folder ``<name>/``, as the zoo ships bundles (``monai.bundle.download``
    unzips it; ``PYTHONPATH=<name> python -m monai.bundle run ...`` runs it). Caches (``__pycache__``) are left out;
    entries are sorted with a fixed time stamp, so unchanged files give an identical archive."""
    root = Path(bundle_root).resolve()
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    name = root.name
    missing = [item for item in ARCHIVE_CONTENTS if not (root / item).exists()]
    if missing:
        raise FileNotFoundError(f"{root}: the archive needs {missing} (a bundle root holds {list(ARCHIVE_CONTENTS)}).")
    out = Path(out_path) if out_path is not None else root.parent / "dist" / f"{name}_v{meta['version']}.zip"
    out.parent.mkdir(parents=True, exist_ok=True)
    files = []
    for item in ARCHIVE_CONTENTS:
        path = root / item
        found = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        files += [p for p in found if "__pycache__" not in p.parts and p.suffix != ".pyc"]

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(files):
                info = zipfile.ZipInfo(f"{name}/{path.relative_to(root).as_posix()}", date_time=(2020, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, path.read_bytes())

    return write_atomic(out, write)


def main(argv: list[str] | None = None) -> int:
    """Command line: re-export ``models/model.ts`` and rewrite the hashes, or ``--check`` them only."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle_root", default=str(BUNDLE_ROOT), help="the bundle folder")
    parser.add_argument("--check", action="store_true", help="only compare the hashes (exit code 1 if stale)")
    parser.add_argument("--no_export", action="store_true", help="do not re-export models/model.ts")
    parser.add_argument(
        "--archive",
        nargs="?",
        const="",
        metavar="ZIP",
        help="also build the zoo archive (default: " "dist/<name>_v<version>.zip beside the bundle root)",
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = check_large_files(args.bundle_root)
        print("\n".join(problems) if problems else "large_files.yml matches the model files.")
        return 1 if problems else 0
    if not args.no_export:
        changed = refresh_torchscript(args.bundle_root)
        print("exported models/model.ts" if changed else "models/model.ts kept: a fresh export holds the same model")
    changed = update_large_files(args.bundle_root)
    print(f"updated the hashes of {changed} in large_files.yml" if changed else "large_files.yml was up to date.")
    if args.archive is not None:
        print(f"archive: {build_archive(args.bundle_root, args.archive or None)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
