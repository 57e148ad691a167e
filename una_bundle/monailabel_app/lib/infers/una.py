"""UNA as a MONAI Label inference task: the anomaly mask as a label map, the healthy T1w path and volume in JSON.

The task calls the bundle's own Python inference API (:func:`una_bundle.scripts.workflows.inference.run_inference`,
the code behind ``una-bundle infer``) instead of MONAI Label's ``BundleInferTask`` transform chain, so the mask a
viewer gets is the one ``una-bundle infer`` writes, voxel for voxel, and two incompatibilities of monailabel 0.8.5 with
MONAI 1.6 are not in the way (``LoadImageTensord`` ignores ``allow_missing_keys``: ``KeyError: 'mask'``;
``Spacingd`` calls ``.update()`` on the string ``image_path``: ``AttributeError``); see docs/monai_label.md.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from una_bundle.scripts.workflows.inference import DEFAULT_CONFIG, run_inference
from una_bundle.scripts.workflows.inference_files import case_name

logger = logging.getLogger(__name__)

#: The label map's classes: MONAI Label's ``labels`` / ``label_names`` (0 is the background).
LABELS = {"anomaly": 1}


def choose_device(requested: str | None) -> str:
    """The torch device to run on: ``requested`` (a request's or the app's ``device``), else CUDA when present.

    A CUDA device asked for where there is none falls back to the CPU with a warning (MONAI Label clients such as the
    3D Slicer plugin send ``device=cuda`` by default), rather than failing the request.
    """
    if requested in (None, ""):
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = str(requested).strip().lower()
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("device %r requested but CUDA is not available: running on the CPU", device)
        return "cpu"
    return device


class UNAInferTask(InferTask):
    """One scan (a NIfTI file: a study of the datastore, or a path) -> the UNA anomaly mask as a label map.

    The result file is the anomaly mask (uint8: 0 background, 1 anomaly) on the input's own grid and header; the
    result JSON holds ``label_names``, ``anomaly_volume_ml``, ``anomaly_voxels``, the ``healthy_t1w`` path, the
    ``anomaly_map`` / ``anomaly_mask`` / ``report`` paths and the run's report fields (modality, threshold, warnings,
    timings). Every output of ``una-bundle infer`` is kept in ``output_root/<case name>/`` (replaced by a later request
    for the same case; a second request for a case still running fails, as ``una-bundle infer`` refuses a busy folder).
    """

    def __init__(self, output_root: str | Path, device: str | None = None, modality: str = "auto"):
        super().__init__(
            type=InferType.SEGMENTATION,
            labels=dict(LABELS),
            dimension=3,
            description="UNA: anomaly mask (label 1) of a skull-stripped brain scan of any contrast; the "
            "healthy-looking T1w is written beside it (path in the result JSON)",
            config={"device": device or "", "modality": modality},
        )
        self.output_root = Path(output_root)

    def is_valid(self) -> bool:
        """The bundle's inference config is there (the weights are checked when a request loads them)."""
        return DEFAULT_CONFIG.is_file()

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Run UNA on ``request["image"]`` (a NIfTI path: MONAI Label resolves a study id to its file first)."""
        start = time.perf_counter()
        image = Path(str(request["image"]))
        if image.is_dir():
            raise ValueError(f"{image} is a folder (a DICOM series?): the UNA app takes NIfTI (.nii, .nii.gz) studies")
        device = choose_device(request.get("device") or self._config.get("device"))
        modality = str(request.get("modality") or self._config.get("modality") or "auto")
        name = re.sub(r"[^A-Za-z0-9._-]", "_", case_name(image))
        output_dir = self.output_root / name
        report = run_inference(
            image, output_dir, modality=modality, device=device, overwrite=True, qc=False, quiet=True
        )[0]
        outputs = report["outputs"]
        # MONAI Label deletes the result file once it is sent (or moves it into the datastore): hand it a copy
        handle, label_file = tempfile.mkstemp(suffix=".nii.gz", prefix=f"una_{name}_")
        os.close(handle)
        shutil.copyfile(outputs["anomaly_mask"], label_file)
        result = {
            "label_names": dict(LABELS),
            "anomaly_volume_ml": report["anomaly_volume_ml"],
            "anomaly_voxels": report["anomaly_voxels"],
            "healthy_t1w": outputs["healthy"],
            "synthesized_t1w": outputs["synthesized"],
            "anomaly_map": outputs["anomaly"],
            "anomaly_mask": outputs["anomaly_mask"],
            "report": outputs["report"],
            "healthy_kind": report["healthy"],
            "modality": report["modality"],
            "threshold": report["threshold"],
            "input_shape": report["input_shape"],
            "device": report["device"],
            "warnings": report["warnings"],
            "timings_s": report["timings_s"],
            "latencies": {"total": round(time.perf_counter() - start, 3)},
        }
        logger.info("UNA %s: anomaly %.2f mL -> %s", image.name, result["anomaly_volume_ml"], output_dir)
        return label_file, result
