"""MONAI Label app serving the UNA bundle: ``POST /infer/una?image=<study id>`` returns the anomaly mask.

Start it with ``monailabel start_server --app una_bundle/monailabel_app --studies DIR`` (docs/monai_label.md).
Options (``--conf NAME VALUE``): ``device`` (default: CUDA when present, else the CPU), ``modality`` (``auto``,
``t1``, ``ct``, ...: as ``una-bundle infer --modality``) and ``output_dir`` (where each case's full outputs go;
default ``<studies>/una_outputs``, a subfolder the local datastore does not list as studies).
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Dict

from lib.infers import LABELS, UNAInferTask
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

import una_bundle

logger = logging.getLogger(__name__)


class MyApp(MONAILabelApp):
    """One inference task, ``una``; no training task (train with ``una-bundle train``, docs/training.md)."""

    def __init__(self, app_dir, studies, conf):
        conf = conf or {}
        default_root = (
            os.path.join(studies, "una_outputs")
            if os.path.isdir(str(studies))
            else os.path.join(tempfile.gettempdir(), "una_monailabel_outputs")
        )
        self.output_root = conf.get("output_dir") or default_root
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="UNA: healthy T1w and anomaly mask",
            description="UNA (fluid-driven anomaly randomization) on skull-stripped brain scans of any contrast: "
            "the anomaly mask as a label map, the healthy-looking T1w beside it",
            version=una_bundle.__version__,
            labels=dict(LABELS),
        )

    def init_infers(self) -> Dict[str, InferTask]:
        """The ``una`` task (lib/infers/una.py)."""
        task = UNAInferTask(
            self.output_root, device=self.conf.get("device"), modality=self.conf.get("modality", "auto")
        )
        logger.info(f"+++ Adding Inferer:: una => {task}; outputs in {self.output_root}")
        return {"una": task}

    def init_trainers(self) -> Dict[str, TrainTask]:
        """None: the bundle trains outside MONAI Label (its generator needs no annotations)."""
        return {}
