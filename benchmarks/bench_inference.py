"""End-to-end inference time on one 1 mm brain: the MNI152 2009 T1 template shipped in nilearn (skull-stripped).

Runs ``run_inference`` (the shipped pipeline: checks, preprocessing, registration, sliding-window network,
postprocessing back to the input grid, writing the NIfTI files, the QC figure and the report) and prints a markdown
table of the stage timings it reports, per setting: on CPU the CPU-sized network (levels 4, features 16) at working
spacings 1 mm and 2 mm; on CUDA (when available) the full model (levels 6, features 64, max_features 512) at 1 mm,
after one warm-up run. Uses ``una_bundle/models/model.pt`` when it fits the network, else random weights (said in
the output: timings do not depend on the weights).

    .venv/bin/python benchmarks/bench_inference.py [--spacing 1 2] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from una_bundle import BUNDLE_ROOT
from una_bundle.scripts.model.checkpoint import read_state_dict
from una_bundle.scripts.workflows.inference import run_inference
from una_bundle.scripts.model.network import UNANet


def _checkpoint(folder: Path, net: dict) -> tuple[Path, str]:
    """The shipped checkpoint when it fits the network, else random weights saved in ``folder``."""
    network = UNANet(levels=net["levels"], features=net["features"], max_features=net["max_features"])
    shipped = BUNDLE_ROOT / "models" / "model.pt"
    if shipped.is_file():
        try:
            network.load_state_dict(read_state_dict(shipped), strict=True)
            return shipped, "shipped models/model.pt"
        except (RuntimeError, ValueError):
            pass
    path = folder / f"random_{net['levels']}_{net['features']}.pt"
    torch.manual_seed(0)
    torch.save(network.state_dict(), str(path))
    return path, "random weights (models/model.pt absent or another network)"


def _run(image: Path, out: Path, device: str, spacing: float, net: dict, ckpt: Path) -> dict:
    start = time.perf_counter()
    report = run_inference(
        image,
        out,
        device=device,
        checkpoint=ckpt,
        spacing=[spacing] * 3,
        roi_size=net["roi_size"],
        levels=net["levels"],
        features=net["features"],
        overrides={"max_features": net["max_features"]},
        overwrite=True,
        quiet=True,
    )[0]
    report["wall_s"] = time.perf_counter() - start
    return report


def _stages(report: dict) -> dict[str, float]:
    t = report["timings_s"]
    return {
        "setup (config, network, weights)": t["setup_shared"],
        "input check (read + validate)": t["input_check"],
        "preprocessing": sum(t["preprocessing"].values()),
        "  of which flip registration": t["preprocessing"].get("FlipRegisterd", 0.0),
        "network (sliding window)": t["inference"],
        "postprocessing (map, invert, mask)": sum(t["postprocessing"].values()),
        "write NIfTI + QC + report": t["write_and_qc"],
        "total (report)": t["total"] + t["setup_shared"],
        "wall clock": report["wall_s"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spacing", type=float, nargs="+", default=[1.0, 2.0], help="CPU working spacings (mm)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from nilearn.datasets import load_mni152_template

    cpu = {"levels": 4, "features": 16, "roi_size": [96, 112, 96], "max_features": 512}
    full = {"levels": 6, "features": 64, "roi_size": [160, 160, 160], "max_features": 512}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "in").mkdir()
        template = load_mni152_template(resolution=1)
        image = folder / "in" / "mni152.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(template.get_fdata(), dtype=np.float32), template.affine), str(image))
        settings = [("cpu", s, cpu) for s in args.spacing]
        if torch.cuda.is_available():
            settings.append(("cuda", 1.0, full))
        columns, notes = {}, []
        for device, spacing, net in settings:
            ckpt, weights = _checkpoint(folder, net)
            if device == "cuda":
                _run(image, folder / "warmup", device, spacing, net, ckpt)  # CUDA context, cuDNN autotuning
            report = _run(image, folder / "out", device, spacing, net, ckpt)
            label = f"{device}, L{net['levels']} F{net['features']}, {spacing:g} mm"
            columns[label] = _stages(report)
            notes.append(f"{label}: {weights}; roi {net['roi_size']}; {report['model']['parameters']:,} parameters")
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    print(f"# Inference benchmark: MNI152 1 mm template {tuple(template.shape)}, end to end\n")
    print(
        f"machine: {platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), GPU: {name}\n"
    )
    labels = list(columns)
    print("| stage (s) | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for stage in next(iter(columns.values())):
        print(f"| {stage} | " + " | ".join(f"{columns[lab][stage]:.2f}" for lab in labels) + " |")
    print()
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    sys.exit(main())
