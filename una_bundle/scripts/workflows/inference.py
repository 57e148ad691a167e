"""UNA inference: a brain scan of any contrast, resolution and orientation -> healthy T1w, anomaly map and mask.

The pipeline is defined once, in ``configs/inference.yaml``; ``python -m monai.bundle run --config_file
configs/inference.yaml`` and :func:`infer` / :func:`run_inference` (the CLI and Python API) both build it from there:

1. **preprocessing** - ``LoadImaged``, :class:`CheckInputd` (readable 3D volume, finite, not empty, mask on the same
   grid), ``Orientationd`` RAS, ``Spacingd`` to ``spacing`` (1 mm), :class:`NormalizeBrainIntensityd` (MR: 0-99.5
   percentiles, inside the brain mask when one is given; CT: a 0-80 HU window; both scaled to [0, 1]),
   :class:`BrainMaskd` (the given mask, else the filled largest foreground region), ``CropForegroundd`` (the brain's
   box plus a margin), ``FlipRegisterd`` (the left-right flip registered onto this preprocessed image), the 2-channel
   concatenation and ``DivisiblePadd``;
2. **inference** - a sliding-window ``UNANet`` (``roi_size`` divisible by ``2**(levels - 1)``);
3. **postprocessing** - :class:`AnomalyScored` (the continuous anomaly map and its automatic threshold, computed on
   the working grid by ``scripts.scoring.anomaly_scoring``), the reconstruction clipped to [0, 1] and zeroed outside
   the brain mask, ``Invertd`` (every spatial step undone: the input's own grid), clipping, :class:`AnomalyMaskd`
   and :class:`FillAnomalyd`.

The API adds what a tool needs around it: inputs are a file, a folder (its ``*.nii`` / ``*.nii.gz``, except files
named like masks or label maps, :data:`NOT_A_SCAN`, which are skipped and listed) or a list; every input is
checked before anything runs (specific ``ValueError`` / ``FileNotFoundError`` naming the file); existing outputs
are refused unless ``overwrite``; for each input ``NAME`` it writes into ``output_dir`` ``NAME_healthy.nii.gz``
(float32, [0, 1]), ``NAME_anomaly.nii.gz`` (float32, [0, 1]), ``NAME_anomaly_mask.nii.gz``
(uint8 0/1), all with the input's shape and header geometry (sform/qform copied, so the affine is identical),
``NAME_qc.png`` (triplanar input / reconstruction / anomaly overlay on the working grid) and ``NAME.json`` (modality,
threshold, anomaly volume, timings per stage, checkpoint hash). Files are written under temporary names, synced and
renamed at the end (``atomic_io``; mode from the umask), so a failed case leaves nothing behind; a run claims
``output_dir`` for its duration (a second run into it fails at once) and removes the temporary files a killed run
left there. ``python -m monai.bundle run`` writes the three NIfTI files only
(``SaveImaged``: no report, no figure, not atomic) and refuses to start when one exists unless ``--overwrite true``.
The anomaly map and its threshold are computed on the working grid; the map is mapped back (trilinear) and the mask
is the mapped-back map above the threshold, inside the mapped-back brain mask, without components under
``min_lesion_mm3`` (27 mm^3), so the mask files never hold a voxel the map puts at or below the threshold.

Speed (CPU profile, levels 4, features 16, roi 128^3, 2 CPU cores, idle machine): the 1 mm MNI152 template
(197 x 233 x 189) takes about 17 s end to end, 13.5 s of it the network (8 windows), 1.3 s the flip registration.

Inputs should be **skull-stripped**: brain extraction is not part of UNA. For a scan with skull, pass ``mask`` (a
brain mask on the input's grid); the image is then normalised inside it and zeroed outside.

``modality="auto"`` only decides between CT and MR, with a plain rule: **CT when at least 0.1 % of the voxels are
<= -500** (air in Hounsfield units; MR magnitudes are never that negative), else MR. T1/T2/FLAIR are not told apart:
the network takes any MR contrast and the modality changes only the intensity normalisation (the CT window). A
skull-stripped CT whose background was set to 0 has no air and is taken for MR: pass ``modality="ct"``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import decollate_batch, list_data_collate
from monai.transforms import Invertd

from ..data.atomic_io import write_together
from ..data.bundle_config import BUNDLE_ROOT, make_scripts_importable
from ..model.checkpoint import file_hash, load_weights
from ..preprocessing.brain import MODALITIES
from ..preprocessing.input_checks import check_same_grid, read_input
from .inference_files import (
    OUTPUT_SUFFIXES,
    bundle_version,
    case_name,
    check_output_dir,
    collect_images,
    collect_masks,
    nifti_like,
    output_paths,
    qc_figure,
)

__all__ = ["infer", "run_inference", "load_pipeline"]

DEFAULT_CONFIG = BUNDLE_ROOT / "configs" / "inference.yaml"


def load_pipeline(
    config: str | Path | None = None, device: str = "cpu", overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Parse ``configs/inference.yaml`` (or ``config``) into the objects inference needs.

    Returns a dict with ``parser`` (the ``ConfigParser``), ``preprocessing``, ``network`` (on ``device``, not yet
    loaded), ``inferer``, ``postprocessing``, ``ckpt_path`` and ``bundle_root``.

    Args:
        config: the inference config file (default: the bundle's).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        overrides: config ids and values to replace (e.g. ``{"roi_size": [64, 64, 64], "levels": 3}``).
    """
    from monai.bundle import ConfigParser

    config = Path(config) if config is not None else DEFAULT_CONFIG
    if not config.is_file():
        raise FileNotFoundError(f"inference config not found: {config}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a torch device ({err}).") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here; use device='cpu'.")
    make_scripts_importable()
    parser = ConfigParser()
    parser.read_config(str(config))
    bundle_root = config.resolve().parent.parent
    parser.update({"bundle_root": str(bundle_root), "device": f"$torch.device({str(dev)!r})"})
    parser.update(dict(overrides or {}))
    parts = {
        name: parser.get_parsed_content(name) for name in ("preprocessing", "network", "inferer", "postprocessing")
    }
    parts.update(parser=parser, ckpt_path=Path(parser.get_parsed_content("ckpt_path")), bundle_root=bundle_root)
    return parts


def _timed_transforms(transforms, data: dict, timings: dict[str, float], snapshot: dict | None = None) -> dict:
    """Apply ``transforms`` one by one (their own errors, not MONAI's ``RuntimeError`` wrapper), timing each."""
    for transform in transforms:
        if snapshot is not None and not snapshot and isinstance(transform, Invertd):
            snapshot.update(data)  # the working-grid results, before they are mapped back
        name, k = type(transform).__name__, 2
        while name in timings:
            name, k = f"{type(transform).__name__}#{k}", k + 1
        start = time.perf_counter()
        data = transform(data)
        timings[name] = round(time.perf_counter() - start, 3)
    return data


def _run_case(parts: dict, image: Path, mask: Path | None, device: torch.device) -> tuple[dict, dict, dict]:
    """Preprocess, infer and postprocess one case; returns ``(outputs on the input grid, working grid, timings)``."""
    timings: dict[str, Any] = {"preprocessing": {}, "postprocessing": {}}
    data: dict[str, Any] = {"image": str(image)}
    if mask is not None:
        data["mask"] = str(mask)
    data = _timed_transforms(parts["preprocessing"].transforms, data, timings["preprocessing"])

    start = time.perf_counter()
    batch = list_data_collate([data])
    with torch.no_grad():
        pred = parts["inferer"](batch["image"].to(device), parts["network"])
    item = decollate_batch(batch, detach=True)[0]  # as SupervisedEvaluator hands it to its postprocessing
    item["pred"] = decollate_batch({"pred": pred}, detach=True)[0]["pred"]
    timings["inference"] = round(time.perf_counter() - start, 3)

    snapshot: dict[str, Any] = {}
    item = _timed_transforms(parts["postprocessing"].transforms, item, timings["postprocessing"], snapshot)
    if not snapshot:
        raise ValueError(
            "the inference config's postprocessing has no Invertd: outputs would not be on the input grid."
        )
    threshold = float(item["anomaly_threshold"])

    def arr(t, dtype=np.float32):
        return torch.as_tensor(t).detach().cpu().numpy()[0].astype(dtype)

    work = {
        "image": arr(snapshot["image"]),
        "healthy": arr(snapshot["pred"]),  # the synthesis: the filled T1w exists on the input's grid only
        "anomaly": arr(snapshot["anomaly"]),
        "brain": arr(snapshot["brain"]) > 0.5,
    }
    work["anomaly_mask"] = (work["anomaly"] > threshold) & work["brain"]
    outputs = {
        "healthy": arr(item["healthy"]),
        "synthesized": arr(item["pred"]),
        "healthy_kind": str(item["healthy_kind"]),
        "t1_correlation": float(item["t1_correlation"]),
        "noise_level": float(item["noise_level"]),
        "anomaly": arr(item["anomaly"]),
        "anomaly_mask": arr(item["anomaly_mask"], np.uint8),
        "threshold": threshold,
        "seed_threshold": item.get("anomaly_seed_threshold"),
        "anomaly_gated": bool(item.get("anomaly_gated", False)),
        "modality": str(item["modality"]),
    }
    return outputs, work, timings


def _write_case(files: dict[str, Any], final: dict[str, Path]) -> None:
    """Write every file under a temporary name in its folder, synced, then rename all; nothing is left on failure
    (``atomic_io.write_together``; the files get the umask's mode, 0644 usually)."""
    write_together({final[kind]: writer for kind, writer in files.items()})


@dataclass
class _Case:
    """One input, checked: its files, the reference header for the outputs and where they go."""

    image: Path
    mask: Path | None
    reference: nib.Nifti1Image
    shape: tuple[int, ...]
    affine: np.ndarray
    outputs: dict[str, Path]
    check_s: float


#: Share of the brain an anomaly may cover before the report warns that the input does not look like a brain scan.
IMPLAUSIBLE_ANOMALY_SHARE = 0.25


def _process_case(case: _Case, parts: dict, context: dict, kinds: list[str]) -> dict:
    """Run one case and write its files atomically; returns its report."""
    start = time.perf_counter()
    outputs, work, timings = _run_case(parts, case.image, case.mask, context["device"])
    for kind in ("healthy", "synthesized", "anomaly", "anomaly_mask"):
        if outputs[kind].shape != case.shape:  # Invertd must give back the input's grid exactly
            raise RuntimeError(f"{case.image}: {kind} has shape {outputs[kind].shape}, the input {case.shape}.")
    volume_ml = float(outputs["anomaly_mask"].sum()) * abs(float(np.linalg.det(case.affine[:3, :3]))) / 1000.0
    timings = {"setup_shared": context["setup_s"], "input_check": round(case.check_s, 3), **timings}
    share = float((work["anomaly_mask"] & work["brain"]).sum()) / max(float(work["brain"].sum()), 1.0)
    warnings = []
    if share > IMPLAUSIBLE_ANOMALY_SHARE:
        warnings.append(
            f"the anomaly covers {100 * share:.0f} % of the brain: the input may not be a skull-stripped brain scan "
            f"(noise, another organ, a failed brain extraction) or is far from what the model was trained on; do not "
            f"trust its outputs"
        )
    rule = "auto: CT if >= 0.1% of voxels are <= -500 (air in HU), else MR (contrast not determined)"
    report = {
        "input": str(case.image.resolve()),
        "mask": str(case.mask.resolve()) if case.mask is not None else None,
        "modality_requested": context["modality"],
        "modality": outputs["modality"],
        "modality_rule": rule if context["modality"] == "auto" else "given",
        "healthy": outputs["healthy_kind"],
        "healthy_rule": "NAME_healthy is the lesion-filled input (the input in its own intensity units outside the "
        "anomaly mask, noise above the noise floor filtered, intensity-matched synthesis inside it) for T1w inputs "
        "(--modality t1, or auto with input-synthesis correlation >= 0.8), else the synthesized T1w in [0, 1] "
        "(NAME_synthesized, always written)",
        "noise_level": round(outputs["noise_level"], 4),
        "t1_correlation": round(outputs["t1_correlation"], 4) if np.isfinite(outputs["t1_correlation"]) else None,
        "threshold": outputs["threshold"],
        "seed_threshold": outputs["seed_threshold"],
        "anomaly_gated": outputs["anomaly_gated"],
        "anomaly_volume_ml": round(volume_ml, 4),
        "anomaly_voxels": int(outputs["anomaly_mask"].sum()),
        "input_shape": list(case.shape),
        "input_voxel_mm": [round(float(v), 6) for v in np.linalg.norm(case.affine[:3, :3], axis=0)],
        "working_spacing_mm": context["spacing"],
        "device": str(context["device"]),
        "model": context["model"],
        "outputs": {k: str(case.outputs[k].resolve()) for k in kinds},
        "warnings": warnings,
        "timings_s": timings,
    }
    nifti = {
        "healthy": (np.float32, f"UNA healthy T1w ({outputs['healthy_kind']})"),
        "synthesized": (np.float32, "UNA synthesized healthy T1w"),
        "anomaly": (np.float32, "UNA anomaly map"),
        "anomaly_mask": (np.uint8, "UNA anomaly mask"),
    }
    files: dict[str, Any] = {
        kind: (lambda tmp, k=kind: nib.save(nifti_like(outputs[k], case.reference, *nifti[k]), str(tmp)))
        for kind in nifti
    }
    if "qc" in kinds:
        title = f"{case.image.name} - {outputs['modality']} - threshold {outputs['threshold']:.3f} - {volume_ml:.1f} mL"
        files["qc"] = lambda tmp: qc_figure(work, context["spacing"], title, tmp)
    write_start = time.perf_counter()

    def write_report(tmp: Path) -> None:
        timings["write_and_qc"] = round(time.perf_counter() - write_start, 3)
        timings["total"] = round(time.perf_counter() - start + case.check_s, 3)
        tmp.write_text(json.dumps(report, indent=2) + "\n")

    files["report"] = write_report
    _write_case(files, case.outputs)
    return report


def show_progress(quiet: bool | None) -> bool:
    """Whether to print progress lines on stderr: not ``quiet``; ``None``: only when stderr is a terminal."""
    if quiet is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return not quiet


def duration(seconds: float) -> str:
    """``"42 s"``, ``"3 min 05 s"`` or ``"2 h 07 min"``."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def run_inference(
    image,
    output_dir: str | Path,
    modality: str = "auto",
    mask=None,
    device: str = "cpu",
    overwrite: bool = False,
    config: str | Path | None = None,
    checkpoint: str | Path | None = None,
    spacing: Sequence[float] | None = None,
    roi_size: Sequence[int] | None = None,
    overlap: float | None = None,
    levels: int | None = None,
    features: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    qc: bool = True,
    quiet: bool | None = None,
) -> list[dict]:
    """Run UNA on one or more scans; returns one report dict per case (also written as ``NAME.json``).

    Args:
        image: a NIfTI file, a folder (all ``*.nii`` / ``*.nii.gz`` in it) or a list of files/folders.
        output_dir: where the outputs go (created; must not be an input's folder).
        modality: one of :data:`MODALITIES` (``"auto"``: see the module docstring); only CT changes the processing.
        mask: brain mask(s) on the input's grid for scans that are not skull-stripped: a file (one image), a list (one
            per image, ``None`` allowed) or a folder of masks named as the images.
        device: torch device of the network (``"cpu"``, ``"cuda"``).
        overwrite: replace existing outputs (otherwise ``FileExistsError``).
        config: inference config (default ``configs/inference.yaml`` of the bundle).
        checkpoint: weights (default the config's ``ckpt_path``, ``models/model.pt``); a missing file is an error.
        spacing: the working voxel size in mm, e.g. ``[1, 1, 1]`` (config id ``spacing``; default the config's).
        roi_size: the sliding window's size in voxels, multiples of ``2**(levels - 1)`` (config id ``roi_size``).
        overlap: the sliding windows' overlap in [0, 1) (config id ``overlap``).
        levels, features: UNANet's depth and first-level feature count; must match the checkpoint (config ids).
        overrides: further config ids and values (e.g. ``{"network_def": {...}}``).
        qc: write the ``NAME_qc.png`` figure.
        quiet: no progress lines on stderr (cases done, time per case, time left); ``False`` (``--noquiet``):
            always; ``None``: only when stderr is a terminal.
    """
    setup_start = time.perf_counter()
    if str(modality).lower() not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}.")
    modality = str(modality).lower()
    images = collect_images(image)
    masks = collect_masks(mask, images)
    names = [case_name(p) for p in images]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"several inputs share the output name(s) {duplicates}; run them into separate folders.")
    output_dir = Path(str(output_dir)).expanduser()
    kinds = [k for k in OUTPUT_SUFFIXES if qc or k != "qc"]

    cases = []  # every input checked before anything runs or is written
    for path, mask_path, name in zip(images, masks, names):
        start = time.perf_counter()
        reference, shape, affine = read_input(path, "image")
        if mask_path is not None:
            _, mask_shape, mask_affine = read_input(mask_path, "mask")
            check_same_grid(shape, affine, mask_shape, mask_affine, str(path), str(mask_path))
        finals = output_paths(output_dir, name)
        cases.append(_Case(path, mask_path, reference, shape, affine, finals, time.perf_counter() - start))
    claim = check_output_dir(output_dir, images, [c.outputs[k] for c in cases for k in kinds], overwrite)
    try:  # the claim on output_dir is held until every case is written
        settings = {"modality": modality, "spacing": spacing, "roi_size": roi_size, "overlap": overlap}
        settings.update(levels=levels, features=features)
        config_overrides = {
            k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in settings.items() if v is not None
        }
        config_overrides.update(dict(overrides or {}))
        parts = load_pipeline(config, device=device, overrides=config_overrides)
        ckpt = Path(checkpoint) if checkpoint is not None else parts["ckpt_path"]
        load_weights(parts["network"], ckpt)
        network = parts["network"]
        context = {
            "modality": modality,
            "device": torch.device(device),
            "spacing": [float(v) for v in parts["parser"].get_parsed_content("spacing")],
            "model": {
                "checkpoint": str(ckpt.resolve()),
                "checkpoint_sha256": file_hash(ckpt),
                "bundle_version": bundle_version(parts["bundle_root"]),
                "network": type(network).__name__,
                "levels": getattr(network, "levels", None),
                "features": (getattr(network, "channels", None) or [None])[0],
                "parameters": int(sum(p.numel() for p in network.parameters())),
            },
        }

        context["setup_s"] = round(time.perf_counter() - setup_start - sum(c.check_s for c in cases), 3)
        progress = show_progress(quiet)
        if progress:
            print(
                f"{len(cases)} case(s) into {output_dir} (model ready in {context['setup_s']:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
        reports = []
        cases_start = time.perf_counter()
        for i, case in enumerate(cases, 1):
            try:
                report = _process_case(case, parts, context, kinds)
            except Exception as err:
                if len(cases) > 1:
                    err.add_note(
                        f"case {i}/{len(cases)} ({case.image}) failed; the {i - 1} case(s) before it are kept."
                    )
                raise
            reports.append(report)
            for warning in report["warnings"]:
                print(f"una-bundle: warning: {case.image}: {warning}", file=sys.stderr, flush=True)
            if progress:
                volume, seconds = report["anomaly_volume_ml"], report["timings_s"]["total"]
                left = (time.perf_counter() - cases_start) / i * (len(cases) - i)
                print(
                    f"[{i}/{len(cases)}] {case.image.name}: {report['modality']}, anomaly {volume:.1f} mL, "
                    f"{seconds:.1f} s{f', about {duration(left)} left' if i < len(cases) else ''} "
                    f"-> {case.outputs['report']}",
                    file=sys.stderr,
                    flush=True,
                )
        return reports
    finally:
        claim.release()


def infer(
    image,
    output_dir: str,
    modality: str = "auto",
    mask=None,
    device: str = "cpu",
    overwrite: bool = False,
    config: str | None = None,
    checkpoint: str | None = None,
    spacing=None,
    roi_size=None,
    overlap: float | None = None,
    levels: int | None = None,
    features: int | None = None,
    qc: bool = True,
    quiet: bool | None = None,
) -> list[str]:
    """Reconstruct the healthy T1w and the anomaly map of each scan (file, folder or list); returns the JSON reports.

    Inputs should be skull-stripped (else pass ``--mask``); outputs go to ``output_dir`` as ``NAME_healthy.nii.gz``,
    ``NAME_anomaly.nii.gz``, ``NAME_anomaly_mask.nii.gz``, ``NAME_qc.png`` and ``NAME.json``, on the input's grid.
    See :func:`run_inference` for every argument.
    """
    reports = run_inference(
        image,
        output_dir,
        modality=modality,
        mask=mask,
        device=device,
        overwrite=overwrite,
        config=config,
        checkpoint=checkpoint,
        spacing=spacing,
        roi_size=roi_size,
        overlap=overlap,
        levels=levels,
        features=features,
        qc=qc,
        quiet=quiet,
    )
    return [r["outputs"]["report"] for r in reports]
