"""User datalists: a JSON file in MONAI decathlon style listing the subjects UNA trains and validates on.

UNA learns from anatomy label maps (synthetic images are drawn from them) with each subject's healthy T1w as the
target; real images and real lesion masks are optional extras. A datalist names these files per subject::

    {
      "name": "my data", "description": "...", "labels": {"0": "background", "2": "Left-Cerebral-White-Matter"},
      "training": [
        {"label": "sub-01/aseg.nii.gz", "t1": "sub-01/t1.nii.gz", "mask": "sub-01/brain.nii.gz"},
        {"label": "sub-02/aseg.nii.gz", "t1": "sub-02/t1.nii.gz", "image": "sub-02/flair.nii.gz",
         "modality": "FLAIR", "lesion": "sub-02/wmh.nii.gz", "lesion_pool": ["pool/stroke1.nii.gz"]}
      ],
      "validation": [ ... ]
    }

Per-subject keys (paths relative to the JSON file's folder, or absolute):

* ``label`` (required): the anatomy label map (e.g. SynthSeg / FreeSurfer ids, as in ``demo_data.LABELS``).
* ``t1`` (required): the subject's healthy T1w, the training target (for a diseased subject: healthy outside
  ``lesion``, which is not supervised).
* ``mask`` (optional): the brain mask; when absent, ``label > 0`` is used.
* ``image`` and ``modality`` (optional, together): a real image of the subject and its modality, one of
  ``MODALITIES`` (T1, T2, FLAIR, CT; any case, returned upper-case).
* ``lesion`` (optional): a real lesion mask, which makes the subject a diseased one.
* ``lesion_pool`` (optional): a list of lesion masks usable as initial shapes of the fluid anomalies (any shape:
  they are centre-padded or cropped to the subject).
* ``subject`` (optional): a free-text identifier.

``label``, ``t1``, ``mask``, ``image`` and ``lesion`` must be 3D (or 4D with one volume) on the same grid (same
shape, affines equal within 0.01 mm); only the NIfTI headers are read, except for a ``label`` map stored as floats,
whose values are read to check they are integers. Training needs both ``training`` and ``validation`` with at least
one subject each (``una-bundle check-datalist`` checks both). Other top-level keys (``name``,
``labels``, ...) are free.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from .modalities import TRAINING_MODALITIES

__all__ = [
    "REQUIRED_KEYS",
    "OPTIONAL_KEYS",
    "ALLOWED_KEYS",
    "IMAGE_KEYS",
    "MODALITIES",
    "load_datalist",
    "training_entries",
    "lesion_pool_files",
]

#: Keys every subject needs.
REQUIRED_KEYS = ("label", "t1")
#: Keys a subject may have.
OPTIONAL_KEYS = ("mask", "image", "modality", "lesion", "lesion_pool", "subject")
ALLOWED_KEYS = REQUIRED_KEYS + OPTIONAL_KEYS
#: Keys holding one volume on the subject's grid (their shapes must match).
IMAGE_KEYS = ("label", "t1", "mask", "image", "lesion")
#: Modalities of real images.
MODALITIES = TRAINING_MODALITIES
_AFFINE_TOLERANCE_MM = 0.01


def _header(path: Path, where: str) -> tuple[tuple[int, ...], np.ndarray]:
    """Spatial shape and affine from the NIfTI header of ``path``, checking it is 3D (or 4D with one volume)."""
    try:
        image = nib.load(str(path))
    except Exception as err:  # nibabel raises many types for unreadable files
        raise ValueError(f"{where}: {path} is not a readable NIfTI image ({type(err).__name__}: {err}).") from err
    shape = tuple(int(n) for n in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ValueError(f"{where}: {path} must be a 3D volume (or 4D with one volume), got shape {shape}.")
    return shape, np.asarray(image.affine, dtype=np.float64)


def _resolve(value, root: Path, where: str) -> str:
    """An absolute path string for a datalist path (relative ones against the datalist's folder)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: expected a file path (non-empty string), got {value!r}.")
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else root / path)


def _check_integer_labels(path: Path, where: str) -> None:
    """A label map holds integer ids: one stored as integers (unscaled) passes on its header, one stored as floats
    (or scaled) is read and its values checked."""
    image = nib.load(str(path))
    scaling = (getattr(image.dataobj, "slope", 1.0), getattr(image.dataobj, "inter", 0.0))  # nibabel moves it here
    integer_scaling = all(np.isfinite(v) and float(v).is_integer() for v in scaling)
    if image.header.get_data_dtype().kind in "biu" and integer_scaling:
        return
    data = np.asarray(image.dataobj, dtype=np.float64)
    bad = data[~np.isfinite(data) | (data != np.round(data))]
    if bad.size:
        raise ValueError(
            f"{where}: {path} holds non-integer values (e.g. {bad.flat[0]}); 'label' must be an anatomy label map of "
            f"integer ids (e.g. SynthSeg / FreeSurfer), not an image or a probability map."
        )


def _check_entry(entry: dict, where: str, check_files: bool) -> None:
    """Check one resolved entry's files: they exist, are 3D and share one grid; the label map holds integers."""
    if not check_files:
        return
    files = [(key, entry[key]) for key in IMAGE_KEYS if key in entry]
    files += [("lesion_pool", file) for file in entry.get("lesion_pool", [])]
    for key, file in files:
        if not Path(file).is_file():
            raise FileNotFoundError(f"{where}: key '{key}': file not found: {file}")
    grids = {key: _header(Path(entry[key]), f"{where}, key '{key}'") for key in IMAGE_KEYS if key in entry}
    for path in entry.get("lesion_pool", []):
        _header(Path(path), f"{where}, key 'lesion_pool'")
    _check_integer_labels(Path(entry["label"]), f"{where}, key 'label'")
    ref_shape, ref_affine = grids["label"]
    for key, (shape, affine) in grids.items():
        if shape != ref_shape:
            raise ValueError(
                f"{where}: '{key}' has spatial shape {shape} but 'label' has {ref_shape}; "
                f"all of {[k for k in IMAGE_KEYS if k in grids]} must be on one grid."
            )
        if not np.allclose(affine, ref_affine, atol=_AFFINE_TOLERANCE_MM):
            raise ValueError(
                f"{where}: '{key}' and 'label' have different affines ({affine.round(3).tolist()} vs "
                f"{ref_affine.round(3).tolist()}); all volumes of a subject must be on one grid."
            )


def load_datalist(
    path: str | Path, section: str = "training", check_files: bool = True, require_subjects: bool = False
) -> list[dict]:
    """Read and validate one section of a decathlon-style datalist; return its entries with absolute paths.

    Args:
        path: the datalist JSON file.
        section: the list to read, e.g. ``training`` or ``validation``.
        check_files: also check that the files exist and that their NIfTI headers fit (3D, one grid per subject),
            and that ``label`` maps hold integers.
        require_subjects: refuse an empty section (training needs subjects in both ``training`` and ``validation``).

    Returns a list of dicts with the keys of ``ALLOWED_KEYS`` the entry has, paths as absolute strings,
    ``modality`` upper-case, ``lesion_pool`` a list. Raises ``FileNotFoundError`` (datalist or a listed file
    missing) or ``ValueError`` naming the datalist, the entry (index and ``t1`` file) and the problem.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"datalist not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"datalist {path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"datalist {path} must hold a JSON object with a '{section}' list, got {type(data).__name__}.")
    if section not in data:
        lists = sorted(k for k, v in data.items() if isinstance(v, list))
        raise ValueError(f"datalist {path} has no section '{section}' (its lists: {lists}).")
    entries = data[section]
    if not isinstance(entries, list):
        kind = type(entries).__name__
        raise ValueError(f"datalist {path}: section '{section}' must be a list of subjects, got {kind}.")
    if require_subjects and not entries:
        why = "nothing to learn from" if section == "training" else "no validation would run: no model would be saved"
        raise ValueError(f"datalist {path}: section '{section}' is empty ({why}); list at least one subject in it.")
    root = path.parent
    out = []
    for index, entry in enumerate(entries):
        where = f"datalist {path}, {section}[{index}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object with keys {list(ALLOWED_KEYS)}, got {type(entry).__name__}.")
        if isinstance(entry.get("t1"), str):
            where += f" (t1 {entry['t1']})"
        unknown = sorted(set(entry) - set(ALLOWED_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; allowed keys: {list(ALLOWED_KEYS)}.")
        missing = [key for key in REQUIRED_KEYS if key not in entry]
        if missing:
            raise ValueError(f"{where}: missing required key(s) {missing} (required: {list(REQUIRED_KEYS)}).")
        if ("image" in entry) != ("modality" in entry):
            given, absent = ("image", "modality") if "image" in entry else ("modality", "image")
            raise ValueError(f"{where}: '{given}' needs '{absent}' (a real image comes with its modality).")
        resolved = {}
        for key, value in entry.items():
            if key in IMAGE_KEYS:
                resolved[key] = _resolve(value, root, f"{where}, key '{key}'")
            elif key == "lesion_pool":
                if not isinstance(value, list) or not value:
                    raise ValueError(f"{where}: 'lesion_pool' must be a non-empty list of files, got {value!r}.")
                resolved[key] = [_resolve(v, root, f"{where}, key 'lesion_pool'") for v in value]
            elif key == "modality":
                if not isinstance(value, str) or value.upper() not in MODALITIES:
                    raise ValueError(f"{where}: unknown modality {value!r}; expected one of {list(MODALITIES)}.")
                resolved[key] = value.upper()
            else:  # subject
                resolved[key] = str(value)
        _check_entry(resolved, where, check_files)
        out.append(resolved)
    return out


def training_entries(path: str | Path, section: str = "training", check_files: bool = True) -> list[dict]:
    """The entries of a datalist section mapped onto the training pipeline's keys (``configs/train.yaml``).

    ``t1`` becomes ``target``; ``image`` / ``modality`` are the subject's real scan, defaulting to the T1w itself
    (modality ``T1``); ``lesion`` (a real lesion) becomes ``real_lesion``; ``mask`` defaults to the label map
    (binarised in the pipeline); ``label`` is kept; ``lesion_pool`` and ``subject`` are left out (see
    :func:`lesion_pool_files`).
    """
    entries = []
    for entry in load_datalist(path, section, check_files, require_subjects=True):
        sample = {"target": entry["t1"], "label": entry["label"], "mask": entry.get("mask", entry["label"])}
        sample["image"] = entry.get("image", entry["t1"])
        sample["modality"] = entry.get("modality", "T1") if "image" in entry else "T1"
        if "lesion" in entry:
            sample["real_lesion"] = entry["lesion"]
        entries.append(sample)
    return entries


def lesion_pool_files(path: str | Path, sections: Sequence[str] = ("training",)) -> list[str]:
    """All ``lesion_pool`` files of the given sections, without duplicates, in datalist order."""
    files: list[str] = []
    for section in sections:
        for entry in load_datalist(path, section, check_files=False):
            files += [f for f in entry.get("lesion_pool", []) if f not in files]
    return files
