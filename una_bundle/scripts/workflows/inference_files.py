"""Inference's files: the inputs (a file, a folder or a list; masks), the outputs (names, the claimed output folder,
NIfTI headers copied from the input, the QC figure)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from ..data.atomic_io import FolderInUseError, claim_folder, remove_stale_temps
from ..data.nifti_io import check_header, check_writable
from ..preprocessing.input_checks import NIFTI_EXTENSIONS

__all__ = [
    "datalist_from_folder",
    "check_bundle_outputs",
    "collect_images",
    "collect_masks",
    "case_name",
    "output_paths",
    "check_output_dir",
    "nifti_like",
    "bundle_version",
    "qc_figure",
    "NOT_A_SCAN",
    "OUTPUT_SUFFIXES",
]

#: output file of each kind for an input ``NAME``: ``NAME + suffix``
OUTPUT_SUFFIXES = {
    "healthy": "_healthy.nii.gz",
    "synthesized": "_synthesized.nii.gz",
    "anomaly": "_anomaly.nii.gz",
    "anomaly_mask": "_anomaly_mask.nii.gz",
    "qc": "_qc.png",
    "report": ".json",
}

#: in a folder given as input, files whose name has one of these words (between ``_ - . +`` or at an end) are taken
#: for masks or label maps, not scans, and skipped (and listed); a file named explicitly is always processed
NOT_A_SCAN = re.compile(
    r"(?:^|[_\-.+])(mask|masks|brainmask|msk|seg|dseg|aseg|aparc|probseg|segmentation|label|labels|labelmap|lesion"
    r"|lesions|roi|wmh)(?=$|[_\-.+])",
    re.IGNORECASE,
)


def case_name(path: Path) -> str:
    """The file name without its NIfTI extension: the outputs' ``NAME``."""
    for ext in (".nii.gz", ".nii"):
        if path.name.endswith(ext):
            return path.name[: -len(ext)]
    return path.stem


def collect_images(image) -> list[Path]:
    """The scans of ``image`` (a file, a folder or a list of them); files named like masks are skipped in folders."""
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    if not items:
        raise ValueError("no input image given.")
    paths: list[Path] = []
    for item in items:
        path = Path(str(item)).expanduser()
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.name.endswith(NIFTI_EXTENSIONS) and p.name[0] != "."
            )
            skipped = [p for p in found if NOT_A_SCAN.search(case_name(p))]
            found = [p for p in found if p not in skipped]
            names = ", ".join(p.name for p in skipped[:10]) + (f" and {len(skipped) - 10} more" * (len(skipped) > 10))
            if not found:
                what = f" ({len(skipped)} skipped as masks or label maps: {names})" if skipped else ""
                raise FileNotFoundError(f"image: no .nii or .nii.gz scans in folder {path}{what}")
            if skipped:
                print(
                    f"image: skipped {len(skipped)} file(s) in {path} named like masks or label maps: {names} "
                    f"(give a file by its path to process it anyway)",
                    file=sys.stderr,
                )
            paths.extend(found)
        elif not path.exists():
            raise FileNotFoundError(f"image: file not found: {path}")
        else:
            paths.append(path)
    return paths


def datalist_from_folder(folder: str | Path) -> list[dict]:
    """``[{"image": path}, ...]`` for every ``*.nii`` / ``*.nii.gz`` in ``folder`` (sorted); the bundle run's inputs.

    Every file's NIfTI header is checked here (``nifti_io.check_header``: dimensions, real dtype, affine, data size
    against the file), before ``LoadImaged`` reads any data: a forged header cannot make the run allocate gigabytes.
    """
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"dataset_dir {folder} is not a folder; pass --dataset_dir FOLDER or --datalist LIST.")
    images = collect_images(folder)
    for path in images:
        try:
            image = nib.load(str(path))  # the header only
        except Exception as err:  # nibabel raises many types for files that are not NIfTI
            raise ValueError(f"image: {path} is not a readable NIfTI image ({type(err).__name__}: {err}).") from err
        if isinstance(image, nib.Nifti1Image):
            check_header(image, path, "image")
    return [{"image": str(p)} for p in images]


def check_bundle_outputs(datalist: Sequence[Mapping], output_dir: str | Path, overwrite: bool = False) -> None:
    """For ``python -m monai.bundle run``: refuse (``FileExistsError``) before anything runs when an output of the
    datalist's images (``NAME_healthy`` / ``NAME_synthesized`` / ``NAME_anomaly`` / ``NAME_anomaly_mask.nii.gz``)
    exists, unless ``overwrite``; the bundle run's ``SaveImaged`` would replace them silently."""
    names = [case_name(Path(str(item["image"]))) for item in datalist]
    kinds = ("healthy", "synthesized", "anomaly", "anomaly_mask")
    paths = [output_paths(Path(output_dir), name)[kind] for name in names for kind in kinds]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"output exists (pass --overwrite true to replace): {', '.join(existing[:5])}"
            + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        )


def collect_masks(mask, images: list[Path]) -> list[Path | None]:
    """One mask path (or ``None``) per image, from a file, a list or a folder of masks named as the images."""
    if mask is None:
        return [None] * len(images)
    if isinstance(mask, (list, tuple)):
        if len(mask) != len(images):
            raise ValueError(f"mask: {len(mask)} masks given for {len(images)} images; give one per image, in order.")
        return [Path(str(m)).expanduser() if m is not None else None for m in mask]
    mask = Path(str(mask)).expanduser()
    if mask.is_dir():  # one mask per image, with the image's file name
        return [mask / p.name for p in images]
    if len(images) != 1:
        raise ValueError(
            f"mask: one mask file {mask} for {len(images)} images; give a list or a folder of masks named as images."
        )
    return [mask]


def output_paths(output_dir: Path, name: str) -> dict[str, Path]:
    """The output file of each kind (:data:`OUTPUT_SUFFIXES`) for input ``name``."""
    return {kind: output_dir / f"{name}{suffix}" for kind, suffix in OUTPUT_SUFFIXES.items()}


def check_output_dir(output_dir: Path, images: list[Path], paths: list[Path], overwrite: bool):
    """Check ``output_dir``, create it and claim it for this run (``atomic_io.claim_folder``: a second run into it
    fails at once); removes the temporary files an interrupted run left there (and says so). Returns the claim."""
    for folder in (output_dir, *output_dir.parents):
        if folder.exists():  # the first existing folder on the way must be a folder
            if not folder.is_dir():
                where = "" if folder == output_dir else f": {folder} on its path"
                raise FileExistsError(f"output_dir {output_dir} exists and is not a folder{where}; choose another.")
            break
    resolved = output_dir.resolve()
    for image in images:
        if image.resolve().parent == resolved:
            raise ValueError(
                f"output_dir {output_dir} is the folder of the input {image}; choose a separate folder (outputs next "
                f"to the inputs would be taken for inputs by a later run on that folder)."
            )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        claim = claim_folder(output_dir, "output_dir")  # creates a file: fails on read-only file systems too
    except FolderInUseError:
        raise
    except OSError as err:
        raise PermissionError(f"output folder {output_dir} is not writable ({err.strerror or err}).") from err
    try:
        stale = remove_stale_temps(output_dir, [p.name for p in paths if p.parent == output_dir])
        if stale:
            names = ", ".join(p.name for p in stale[:5]) + (f" and {len(stale) - 5} more" if len(stale) > 5 else "")
            print(
                f"removed {len(stale)} temporary file(s) of an interrupted run from {output_dir}: {names}",
                file=sys.stderr,
            )
        try:
            check_writable(paths, overwrite=overwrite)
        except PermissionError as err:
            raise PermissionError(f"output folder {output_dir} is not writable ({err}).") from err
    except BaseException:
        claim.release()
        raise
    return claim


def nifti_like(data: np.ndarray, reference: nib.Nifti1Image, dtype, description: str) -> nib.Nifti1Image:
    """``data`` with ``reference``'s header geometry copied as is (sform, qform, codes, zooms, units)."""
    header = reference.header.copy()
    header.set_data_dtype(dtype)
    header.set_data_shape(data.shape)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0.0, 0.0
    header["descrip"] = description[:79].encode()
    image = type(reference)(np.asarray(data, dtype=dtype), None, header=header)
    image.set_sform(reference.header.get_sform(), code=int(reference.header["sform_code"]))
    image.set_qform(reference.header.get_qform(), code=int(reference.header["qform_code"]))
    return image


def bundle_version(bundle_root: Path) -> str:
    """The ``version`` of the bundle's ``configs/metadata.json``, else the package's."""
    meta = bundle_root / "configs" / "metadata.json"
    try:
        return str(json.loads(meta.read_text())["version"])
    except Exception:
        from ... import __version__

        return str(__version__)


def qc_figure(work: dict[str, np.ndarray], spacing: Sequence[float], title: str, path: Path) -> None:
    """Triplanar QC (working grid, RAS): input, reconstruction, anomaly map over the input with the mask outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image, healthy, amap, mask = (work[k] for k in ("image", "healthy", "anomaly", "anomaly_mask"))
    if mask.any():  # through the anomaly mask's centre, else through the map's maximum
        centre = np.round(np.argwhere(mask).mean(0)).astype(int)
    else:
        centre = np.array(np.unravel_index(int(np.argmax(amap)), amap.shape))
    views = (("sagittal", 0), ("coronal", 1), ("axial", 2))
    fig, axes = plt.subplots(3, 3, figsize=(9, 9.4), facecolor="black")
    vmax = max(float(amap.max()), 1e-6)
    for col, (label, axis) in enumerate(views):
        others = [a for a in range(3) if a != axis]
        aspect = float(spacing[others[1]]) / float(spacing[others[0]])

        def cut(volume):
            return np.rot90(np.take(volume, int(centre[axis]), axis=axis))

        for row, volume in enumerate((image, healthy, image)):
            ax = axes[row, col]
            ax.imshow(cut(volume), cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
            ax.axis("off")
        overlay = cut(amap)
        axes[2, col].imshow(
            np.ma.masked_less_equal(overlay, 0.05 * vmax), cmap="hot", vmin=0, vmax=vmax, alpha=0.7, aspect=aspect
        )
        if cut(mask).any():
            axes[2, col].contour(cut(mask), levels=[0.5], colors="cyan", linewidths=0.6)
        axes[0, col].set_title(label, color="white", fontsize=9)
    for row, text in enumerate(("input (normalised)", "synthesized T1w", "anomaly map, mask outlined")):
        ax = axes[row, 0]
        ax.text(
            -0.04, 0.5, text, color="white", fontsize=8, rotation=90, va="center", ha="right", transform=ax.transAxes
        )
    fig.suptitle(title, color="white", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90, facecolor="black", format="png")
    plt.close(fig)
