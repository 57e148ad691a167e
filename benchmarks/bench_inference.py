"""End-to-end inference time on one 1 mm brain: the MNI152 2009 T1 template shipped in nilearn (skull-stripped).

Runs ``run_inference`` (the shipped pipeline: checks, preprocessing, registration, sliding-window network,
postprocessing back to the input grid, writing the NIfTI files, the QC figure and the report) and prints a markdown
table of the stage timings it reports and the peak memory (resident set size of a fresh process per setting):

* ``shipped``: the bundle's ``configs/inference.yaml`` as is (1 mm, the network of ``configs/train_cpu.yaml`` with
  its anomaly head, 96^3 windows);
* ``v1``: the settings of the weights shipped before it, as the baseline: 2 mm working grid, levels 4, features 16,
  one output (difference map), one 96x112x96 window;
* ``cuda`` (when available): the full model (levels 6, features 64, max_features 512) at 1 mm, after a warm-up run.

Uses ``una_bundle/models/model.pt`` when it fits the network, else random weights (said in the output: timings do
not depend on the weights).

    python benchmarks/bench_inference.py [--settings shipped v1] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from una_bundle import BUNDLE_ROOT
from una_bundle.scripts.data.bundle_config import weights_path
from una_bundle.scripts.model.checkpoint import read_state_dict
from una_bundle.scripts.model.network import UNANet
from una_bundle.scripts.workflows.inference import run_inference

#: Network and grid per setting; ``None`` values: the inference config's own.
SETTINGS = {
    "shipped": {
        "device": "cpu",
        "spacing": None,
        "levels": None,
        "features": None,
        "max_features": None,
        "out_channels": None,
        "roi_size": None,
    },
    "v1": {
        "device": "cpu",
        "spacing": 2.0,
        "levels": 4,
        "features": 16,
        "max_features": 512,
        "out_channels": 1,
        "roi_size": [96, 112, 96],
    },
    "cuda": {
        "device": "cuda",
        "spacing": 1.0,
        "levels": 6,
        "features": 64,
        "max_features": 512,
        "out_channels": 2,
        "roi_size": [160, 160, 160],
    },
}


def _resolved(net: dict) -> dict:
    """``net`` with its ``None`` values read from ``configs/inference.yaml``."""
    import yaml

    config = yaml.safe_load((BUNDLE_ROOT / "configs" / "inference.yaml").read_text())
    out = dict(net)
    for key in ("levels", "features", "max_features", "out_channels", "roi_size"):
        out[key] = config[key] if out[key] is None else out[key]
    out["spacing"] = float(config["spacing"][0]) if out["spacing"] is None else out["spacing"]
    return out


def _checkpoint(folder: Path, net: dict) -> tuple[Path, str]:
    """The shipped checkpoint when it fits the network, else random weights saved in ``folder``."""
    network = UNANet(
        levels=net["levels"],
        features=net["features"],
        max_features=net["max_features"],
        out_channels=net["out_channels"],
    )
    shipped = weights_path()
    if shipped.is_file():
        try:
            network.load_state_dict(read_state_dict(shipped), strict=True)
            return shipped, "shipped models/model.pt"
        except (RuntimeError, ValueError):
            pass
    path = folder / f"random_{net['levels']}_{net['features']}_{net['out_channels']}.pt"
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
        overrides={"max_features": net["max_features"], "out_channels": net["out_channels"]},
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


def _measure(name: str, folder: Path) -> dict:
    """One setting in this process: its stage timings, peak RSS and notes (run in a fresh child process)."""
    from nilearn.datasets import load_mni152_template

    net = _resolved(SETTINGS[name])
    template = load_mni152_template(resolution=1)
    image = folder / "in" / "mni152.nii.gz"
    image.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(template.get_fdata(), dtype=np.float32), template.affine), str(image))
    ckpt, weights = _checkpoint(folder, net)
    if net["device"] == "cuda":
        _run(image, folder / "warmup", net["device"], net["spacing"], net, ckpt)  # CUDA context, cuDNN autotuning
    report = _run(image, folder / "out", net["device"], net["spacing"], net, ckpt)
    stages = _stages(report)
    stages["peak memory (GiB RSS)"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    label = (
        f"{name}: {net['device']}, L{net['levels']} F{net['features']} out {net['out_channels']}, {net['spacing']:g} mm"
    )
    note = f"{label}: {weights}; roi {net['roi_size']}; {report['model']['parameters']:,} parameters"
    return {"label": label, "stages": stages, "note": note, "shape": list(template.shape)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), help="default: shipped v1 (+ cuda)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--child", choices=sorted(SETTINGS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(_measure(args.child, Path(tmp))))
        return
    settings = args.settings or (["shipped", "v1"] + (["cuda"] if torch.cuda.is_available() else []))
    results = []
    for name in settings:
        command = [sys.executable, __file__, "--child", name] + (
            ["--threads", str(args.threads)] if args.threads else []
        )
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"setting {name!r} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    print(f"# Inference benchmark: MNI152 1 mm template {tuple(results[0]['shape'])}, end to end\n")
    print(
        f"machine: {platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (load "
        f"{os.getloadavg()[0]:.1f}), torch {torch.__version__} ({args.threads or torch.get_num_threads()} threads), "
        f"GPU: {name}\n"
    )
    labels = [r["label"] for r in results]
    print("| stage (s) | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for stage in results[0]["stages"]:
        print(f"| {stage} | " + " | ".join(f"{r['stages'][stage]:.2f}" for r in results) + " |")
    print()
    for r in results:
        print(f"- {r['note']}")


if __name__ == "__main__":
    sys.exit(main())
