"""The bundle's main job on its embedded data: a brain with a simulated lesion, through the shipped model, scored.

The case is built offline from the MNI152 2009 T1 template and brain mask shipped inside nilearn: one fluid anomaly
(the generator the model was trained with, seeded) is encoded into the template as a T1w hypo-intensity. Inference
then runs on it with the bundle's model (``models/model.pt``) and :func:`~.evaluation.run_evaluation` scores the
reconstruction against the lesion-free template and the anomaly mask against the simulated lesion, beside the
identity baseline. Everything goes into one folder:

* ``case/mni152_lesion.nii.gz`` (the input), ``case/mni152_healthy.nii.gz`` (the truth), ``case/lesion.nii.gz``,
  ``case/brain_mask.nii.gz``;
* ``predictions/mni152_lesion_{healthy,synthesized,anomaly,anomaly_mask}.nii.gz``, ``..._qc.png`` and ``....json``
  (inference), and the same for ``mni152_healthy``, the template without a lesion (false positives);
* ``metrics.csv``, ``metrics.md`` (model beside the identity, per case and per kind), ``metrics_boxplots.png``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from monai.data import MetaTensor

from ..scripts.data.mni152 import mni152_brain
from ..scripts.data.nifti_io import check_writable, save_volume
from ..scripts.generator.anomaly_encoding import RandEncodeAnomaly
from ..scripts.generator.fluid_anomaly import FluidAnomaly
from ..scripts.workflows.evaluation import run_evaluation
from ..scripts.workflows.inference import show_progress

__all__ = ["run_demo"]

CASE_FILES = ("mni152_lesion.nii.gz", "mni152_healthy.nii.gz", "lesion.nii.gz", "brain_mask.nii.gz")


def run_demo(
    output_dir: str = "una_demo",
    seed: int = 0,
    device: str = "cpu",
    checkpoint: str | None = None,
    overwrite=False,
    healthy_case: bool = True,
    quiet: bool | None = None,
) -> str:
    """Build the demo case (MNI152 + one simulated lesion), run UNA on it and score it; returns the metrics table.

    With ``healthy_case`` the template without a lesion is scored too (``mni152_healthy``): its anomaly volume is
    the false-positive volume on a healthy brain.

    Args:
        output_dir: folder for the case, the predictions and the metrics (existing outputs need ``overwrite``).
        seed: seed of the simulated lesion (same seed, same case).
        device: torch device of the network (``cpu``, ``cuda``).
        checkpoint: weights to use instead of the bundle's ``models/model.pt``.
        overwrite: replace the outputs of an earlier run in ``output_dir``.
        healthy_case: also run and score the lesion-free template.
        quiet: no progress lines on stderr (``False``: always; ``None``: only when stderr is a terminal).
    """
    out = Path(output_dir)
    case_dir = out / "case"
    image_path, truth_path, lesion_path, mask_path = (case_dir / name for name in CASE_FILES)
    check_writable([image_path, truth_path, lesion_path, mask_path], overwrite)

    progress, start = show_progress(quiet), time.perf_counter()
    if progress:
        print(
            f"demo: simulating a lesion on the MNI152 template (seed {seed}) into {case_dir}",
            file=sys.stderr,
            flush=True,
        )
    volume, brain, affine = mni152_brain()
    template = MetaTensor(volume[None] * brain[None], affine=torch.as_tensor(affine))
    probability, lesion = FluidAnomaly().set_random_state(seed)(template, brain[None])
    # a T1w lesion: darker than its surroundings (the opposite direction is a training-time augmentation only)
    encode = RandEncodeAnomaly(modality="T1", swap_sign_prob=0.0).set_random_state(seed + 1)
    with_lesion = encode(template, probability) * brain[None]

    save_volume(with_lesion[0], affine, image_path)
    save_volume(template[0], affine, truth_path)
    save_volume(lesion[0], affine, lesion_path, dtype="uint8")
    save_volume(brain, affine, mask_path, dtype="uint8")
    case = {"image": str(image_path), "truth": str(truth_path), "lesion": str(lesion_path), "mask": str(mask_path)}
    cases = [dict(case, modality="t1", kind="t1_lesion")]
    if healthy_case:  # the template itself: every anomaly found there is a false positive
        cases.append(
            {
                "image": str(truth_path),
                "truth": str(truth_path),
                "mask": str(mask_path),
                "modality": "t1",
                "kind": "t1_healthy",
            }
        )
    if progress:
        print(
            f"demo: case ready ({time.perf_counter() - start:.1f} s); UNA on {len(cases)} case(s), then scoring",
            file=sys.stderr,
            flush=True,
        )
    inference = {"device": device, "quiet": quiet, **({"checkpoint": checkpoint} if checkpoint else {})}
    result = run_evaluation(cases, out, overwrite=overwrite, inference=inference)
    return Path(result["files"][1]).read_text()
