"""Evaluation: reconstruction metrics inside the brain and Dice of the anomaly mask, over a list of cases.

A case is a scan with its answer: ``image`` (the scan given to inference), ``truth`` (the subject's healthy T1w on the
scan's grid) and optionally ``lesion`` (the true lesion mask), ``mask`` (brain mask: passed to inference for scans
with skull, and the region the metrics cover; default ``truth > 0``), ``modality`` (default ``auto``) and ``name``
(default: the image's file name without ``.nii``/``.nii.gz``, as inference names its outputs) and ``kind`` (a free
label of the kind of case, e.g. ``t1_lesion``; carried into the rows and summarised per kind).

:func:`run_evaluation` either runs inference itself (``scripts.workflows.inference.run_inference``, outputs into
``OUTPUT_DIR/predictions``) or reads the outputs of an earlier ``una-bundle infer`` from ``predictions``
(``NAME_healthy.nii.gz``, ``NAME_anomaly_mask.nii.gz``). It writes ``metrics.csv`` (one row per case, full
precision), ``metrics.md`` (the table with mean and std) and ``metrics_boxplots.png``.

Metrics (``scripts.scoring.metrics``, UNA section 6) on intensities in ``[0, 1]``, inside the brain: L1, PSNR, SSIM
(Gaussian window sigma 5) of the reconstruction against the truth, and Dice of the anomaly mask against the lesion
(blank without a lesion). Every image is brought to ``[0, 1]`` by :func:`normalize_intensity` (divided by its 99.9th
in-brain percentile, then clipped) - the same rule for the input, the reconstruction and the truth. The baseline is
the identity: the normalised input taken as the reconstruction (for an input of another contrast than T1w it shows
how far the input is from the target). No baseline Dice is reported: the identity's anomaly map is zero, its mask
empty.

Further columns, for the model and (``baseline_``) the identity unless said otherwise:

* ``l1_gain``: the L1 of the issue tracker's tables, after a least-squares gain of the (normalised) prediction onto the
  (normalised) truth inside the brain, ``g = <p, t> / <p, p>`` over the brain voxels, then ``mean |g p - t|`` over
  them (no clipping), so that a global intensity scale is not counted. ``l1`` stays the plain L1 without a gain.
* ``l1_lesion``: mean ``|p - t|`` over the true lesion voxels (``lesion > 0``), on the normalised images without a
  gain (as ``l1``); NaN without a lesion mask or with an empty one.
* ``anomaly_ml`` (model only): volume of the anomaly mask (``anomaly_mask > 0``, anywhere in the volume, so a halo
  outside the brain counts) in mL, from the voxel volume ``|det(affine[:3, :3])|`` mm^3 of the image.
* ``fp_ml`` (model only): the false-positive volume: anomaly-mask voxels outside the true lesion dilated by 2 voxels
  (a Euclidean ball of radius 2 voxels, 33 voxels), in mL; equal to ``anomaly_ml`` without a lesion mask.

``metrics.md`` holds the per-case table and, when any case has a ``kind``, a per-kind table: the mean over the cases
of each kind (NaN values left out; an infinite PSNR stays infinite) of the model and the identity side by side.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from ..data.nifti_io import check_writable, load_volume
from ..scoring.metrics import brain_l1, brain_psnr, brain_ssim, dice
from .evaluation_report import boxplots, csv_text, markdown, summarize, write_text

__all__ = [
    "normalize_intensity",
    "load_cases",
    "evaluate_case",
    "gain_l1",
    "anomaly_volumes",
    "run_evaluation",
    "evaluate",
    "CASE_KEYS",
]

#: Required and optional keys of a case.
CASE_KEYS = {"required": ("image", "truth"), "optional": ("lesion", "mask", "modality", "name", "kind")}
#: Radius (voxels) of the Euclidean ball by which the true lesion is dilated before counting false positives.
FP_MARGIN_VOXELS = 2
OUTPUT_FILES = ("metrics.csv", "metrics.md", "metrics_boxplots.png")
#: Inference outputs read per case ``NAME`` from the predictions folder.
PREDICTION_SUFFIXES = {"healthy": "_healthy.nii.gz", "anomaly_mask": "_anomaly_mask.nii.gz"}
_FILE_KEYS = ("image", "truth", "lesion", "mask")


def _flat(x, name: str) -> torch.Tensor:
    """``x`` ``[X, Y, Z]`` or ``[1, X, Y, Z]`` (tensor or array) as a float32 ``[X, Y, Z]`` tensor."""
    t = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x if torch.is_tensor(x) else np.asarray(x))
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3:
        raise ValueError(f"{name} must be [X, Y, Z] or [1, X, Y, Z], got shape {tuple(t.shape)}.")
    return t.float()


def normalize_intensity(volume, brain_mask=None, percentile: float = 99.9) -> torch.Tensor:
    """Map a volume to ``[0, 1]``: ``clip((v - lo) / (q - lo), 0, 1)``, ``q`` its ``percentile`` in the brain.

    ``lo`` is 0 for non-negative images (MRI: a pure rescaling) and the in-brain minimum otherwise (e.g. CT).

    Args:
        volume: ``[X, Y, Z]`` or ``[1, X, Y, Z]``.
        brain_mask: non-zero inside the brain (default: the whole volume).
        percentile: the upper reference, robust to a few bright voxels.

    Returns:
        float32 ``[X, Y, Z]``.
    """
    v = _flat(volume, "volume")
    brain = _flat(brain_mask, "brain_mask") > 0 if brain_mask is not None else torch.ones_like(v, dtype=torch.bool)
    if brain.shape != v.shape:
        raise ValueError(f"brain_mask {tuple(brain.shape)} must have the volume's shape {tuple(v.shape)}.")
    values = v[brain] if bool(brain.any()) else v.flatten()
    lo = min(0.0, float(values.min()))
    q = float(np.percentile(values.numpy(), percentile))
    if q <= lo:  # constant (e.g. empty) volume
        return torch.zeros_like(v)
    return ((v - lo) / (q - lo)).clamp(0, 1)


def _case_name(entry: dict) -> str:
    if entry.get("name"):
        return str(entry["name"])
    name = Path(str(entry["image"])).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_cases(cases: str | Path | Sequence[dict], predictions: str | Path | None = None) -> list[dict]:
    """Read and check the case list: a JSON file (paths relative to its folder, or absolute) or a list of dicts
    (paths relative to the working directory). Returns dicts with absolute ``Path`` values, a ``name`` and a
    ``modality``; with ``predictions`` (a folder of inference outputs) also ``healthy`` and ``anomaly_mask``.

    Raises ``FileNotFoundError`` for a missing case file, image or prediction and ``ValueError`` for a malformed
    list, both naming the case and key.
    """
    base = Path.cwd()
    if isinstance(cases, (str, Path)):
        path = Path(cases)
        if not path.is_file():
            raise FileNotFoundError(f"cases: file not found: {path}")
        try:
            entries = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"cases: {path} is not valid JSON ({err}).") from err
        base = path.resolve().parent
        where = str(path)
    else:
        entries, where = cases, "cases"
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{where}: expected a non-empty list of cases, got {type(entries).__name__}.")
    if predictions is not None and not Path(predictions).is_dir():
        raise FileNotFoundError(f"predictions: folder not found: {predictions}")
    checked = []
    allowed = set(CASE_KEYS["required"]) | set(CASE_KEYS["optional"])
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: case {i} must be a dict of files, got {type(entry).__name__}.")
        label = f"{where}: case {i}" + (f" ({entry['name']})" if entry.get("name") else "")
        missing = [k for k in CASE_KEYS["required"] if not entry.get(k)]
        if missing:
            raise ValueError(f"{label}: missing required key(s) {missing}; required: {list(CASE_KEYS['required'])}.")
        unknown = sorted(set(entry) - allowed)
        if unknown:
            raise ValueError(f"{label}: unknown key(s) {unknown}; allowed: {sorted(allowed)}.")
        case = {"name": _case_name(entry), "modality": str(entry.get("modality") or "auto")}
        case["kind"] = str(entry.get("kind") or "")
        for key in _FILE_KEYS:
            if entry.get(key):
                file = Path(str(entry[key]))
                file = file if file.is_absolute() else base / file
                if not file.is_file():
                    raise FileNotFoundError(f"{label}: '{key}' file not found: {file}")
                case[key] = file
        if predictions is not None:
            for key, suffix in PREDICTION_SUFFIXES.items():
                file = Path(predictions).resolve() / f"{case['name']}{suffix}"
                if not file.is_file():
                    raise FileNotFoundError(f"{label}: prediction not found: {file} (run una-bundle infer first).")
                case[key] = file
        checked.append(case)
    names = [c["name"] for c in checked]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{where}: several cases share the name(s) {duplicates}; give each a distinct 'name'.")
    return checked


def _load_case(case: dict) -> dict:
    """The case's volumes, checked to lie on the image's grid (shape, affine within 0.01 mm)."""
    image, affine = load_volume(case["image"], f"case {case['name']}: image")
    out = {"image": image, "affine": affine}
    for key in ("truth", "healthy", "anomaly_mask", "lesion", "mask"):
        if key not in case:
            continue
        volume, other = load_volume(case[key], f"case {case['name']}: {key}")
        if tuple(volume.shape) != tuple(image.shape):
            raise ValueError(
                f"case {case['name']}: {key} {case[key]} has shape {tuple(volume.shape)}, "
                f"image {case['image']} has {tuple(image.shape)}."
            )
        if not np.allclose(other, affine, atol=0.01):
            raise ValueError(f"case {case['name']}: {key} {case[key]} is not on the grid (affine) of the image.")
        out[key] = volume
    return out


def gain_l1(pred, truth, brain) -> float:
    """L1 over the brain after the least-squares gain ``g = <p, t> / <p, p>`` of ``pred`` onto ``truth`` there
    (``g = 1`` for an all-zero prediction); ``[X, Y, Z]`` tensors, ``brain`` boolean."""
    p, t = pred[brain].double(), truth[brain].double()
    energy = float((p * p).sum())
    gain = float((p * t).sum()) / energy if energy > 0 else 1.0
    return float((gain * p - t).abs().mean())


def _ball(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    x, y, z = np.meshgrid(r, r, r, indexing="ij")
    return x**2 + y**2 + z**2 <= radius**2


def anomaly_volumes(anomaly_mask, lesion, affine, margin: int = FP_MARGIN_VOXELS) -> tuple[float, float]:
    """``(anomaly_ml, fp_ml)``: the anomaly mask's volume and its volume outside ``lesion`` dilated by a Euclidean
    ball of ``margin`` voxels, in mL (``lesion=None``: no lesion, ``fp_ml == anomaly_ml``)."""
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0
    found = _flat(anomaly_mask, "anomaly_mask").numpy() > 0
    anomaly_ml = float(found.sum()) * voxel_ml
    if lesion is None:
        return anomaly_ml, anomaly_ml
    near = _flat(lesion, "lesion").numpy() > 0
    if margin > 0 and near.any():
        near = ndi.binary_dilation(near, structure=_ball(int(margin)))
    return anomaly_ml, float((found & ~near).sum()) * voxel_ml


def evaluate_case(case: dict) -> dict:
    """Metrics of one checked case with its predictions: model and identity-baseline L1 (plain, with a gain, in the
    lesion)/PSNR/SSIM, and the model's Dice, anomaly and false-positive volumes (module docstring)."""
    vol = _load_case(case)
    brain = vol["mask"] > 0 if "mask" in vol else vol["truth"] > 0
    if not bool(brain.any()):
        raise ValueError(f"case {case['name']}: the brain mask is empty ({case.get('mask', case['truth'])}).")
    truth = normalize_intensity(vol["truth"], brain)
    lesion = vol["lesion"] > 0 if "lesion" in vol else None
    row = {"case": case["name"], "kind": case.get("kind", "")}
    for prefix, key in (("", "healthy"), ("baseline_", "image")):
        pred = normalize_intensity(vol[key], brain)
        row[f"{prefix}l1"] = float(brain_l1(pred, truth, brain))
        row[f"{prefix}psnr"] = float(brain_psnr(pred, truth, brain))
        row[f"{prefix}ssim"] = float(brain_ssim(pred, truth, brain))
        row[f"{prefix}l1_gain"] = gain_l1(pred, truth, brain)
        has_lesion = lesion is not None and bool(lesion.any())
        row[f"{prefix}l1_lesion"] = float((pred[lesion] - truth[lesion]).abs().mean()) if has_lesion else math.nan
    row["dice"] = float(dice(vol["anomaly_mask"], vol["lesion"])) if "lesion" in vol else float("nan")
    row["anomaly_ml"], row["fp_ml"] = anomaly_volumes(vol["anomaly_mask"], lesion, vol["affine"])
    return row


def predict_cases(checked: list[dict], folder: Path, overwrite: bool, skip_existing: bool = False, **inference) -> None:
    """Run inference on every case into ``folder``, one call per modality (the model loaded once per call); adds the
    prediction paths to the cases. ``skip_existing``: cases whose outputs are all in ``folder`` are not run again
    (a calibration sweep re-reads them); ``inference``: keyword arguments of ``run_inference``."""
    from .inference import run_inference

    folder = Path(folder)

    def done(case: dict) -> bool:
        return all((folder / f"{case['name']}{suffix}").is_file() for suffix in PREDICTION_SUFFIXES.values())

    todo = [c for c in checked if overwrite or not (skip_existing and done(c))]
    for modality in dict.fromkeys(c["modality"] for c in todo):
        group = [c for c in todo if c["modality"] == modality]
        masks = [c.get("mask") for c in group]
        run_inference(
            [c["image"] for c in group],
            folder,
            modality=modality,
            mask=masks if any(m is not None for m in masks) else None,
            overwrite=overwrite,
            **inference,
        )
    for case in checked:
        case.update({key: folder / f"{case['name']}{suffix}" for key, suffix in PREDICTION_SUFFIXES.items()})


def run_evaluation(
    cases: str | Sequence[dict],
    output_dir: str | Path,
    predictions: str | Path | None = None,
    overwrite: bool = False,
    inference: dict | None = None,
) -> dict:
    """Score UNA on cases with known answers; write ``metrics.csv``, ``metrics.md`` and ``metrics_boxplots.png``.

    Args:
        cases: a JSON file holding a list of cases, or the list itself (keys: module docstring).
        output_dir: folder for the outputs (created).
        predictions: a folder of ``una-bundle infer`` outputs for these cases; ``None``: run inference now, into
            ``output_dir/predictions``.
        overwrite: replace existing outputs (metrics, and predictions made here).
        inference: keyword arguments of ``run_inference`` when inference runs here (``checkpoint``, ``device``,
            ``spacing``, ...).

    Returns:
        ``{"cases": [row per case], "summary": {column: {"mean", "std", "n"}}, "files": [paths]}``; a row holds
        ``case``, ``kind``, ``l1``, ``psnr``, ``ssim``, ``dice`` (NaN without a lesion), ``baseline_l1/psnr/ssim``,
        ``l1_gain``, ``l1_lesion`` and their ``baseline_`` twins, ``anomaly_ml`` and ``fp_ml``.
    """
    out = Path(output_dir)
    paths = [out / name for name in OUTPUT_FILES]
    checked = load_cases(cases, predictions)  # all inputs checked before anything is written
    check_writable(paths, overwrite)
    if predictions is None:
        predict_cases(checked, out / "predictions", overwrite, **dict(inference or {}))
    rows = [evaluate_case(case) for case in checked]
    summary = summarize(rows)
    write_text(csv_text(rows), paths[0])
    write_text(markdown(rows, summary), paths[1])
    boxplots(rows, paths[2])
    return {"cases": rows, "summary": summary, "files": [str(p) for p in paths]}


def evaluate(
    cases: str,
    output_dir: str,
    predictions: str | None = None,
    overwrite: bool = False,
    checkpoint: str | None = None,
    device: str = "cpu",
    config: str | None = None,
    spacing=None,
    roi_size=None,
    levels: int | None = None,
    features: int | None = None,
) -> str:
    """Score UNA on cases with known answers (a JSON list of ``{image, truth, lesion?, mask?, modality?, name?,
    kind?}``); returns the markdown table, also written with ``metrics.csv`` and ``metrics_boxplots.png`` into
    ``output_dir``.

    Without ``predictions`` it runs inference itself (``checkpoint``, ``device``, ``config``, ``spacing``,
    ``roi_size``, ``levels``, ``features`` as for ``una-bundle infer``) into ``output_dir/predictions``; with it, it
    reads ``NAME_healthy.nii.gz`` and ``NAME_anomaly_mask.nii.gz`` from that folder. See :func:`run_evaluation`.
    """
    settings = {"checkpoint": checkpoint, "device": device, "config": config, "spacing": spacing}
    settings.update(roi_size=roi_size, levels=levels, features=features)
    result = run_evaluation(
        cases, output_dir, predictions, overwrite, {k: v for k, v in settings.items() if v is not None}
    )
    return Path(result["files"][1]).read_text()
