"""How much the anomaly head relies on the left-right cue: its Dice on training samples with and without it.

    python benchmarks/symmetry_reliance.py [--checkpoint W] [--dataset_dir DATA] [--volumes 4] [--seed 0]

Draws training samples from the CPU recipe (``configs/train.yaml`` + ``configs/train_cpu.yaml``, a lesion in every
brain, half the patches centred on it) twice with the same random state: once with the registered mirror image as
the second channel, once with the symmetry cue dropped (``symmetry_drop_prob`` 1: the second channel is the image
itself, as ``RandDropSymmetryd`` trains it), so the two versions of each patch differ only in that channel. The head's
mask (probability > 0.5) is scored against the generator's lesion on each patch. A head that reads the lesion's
appearance scores alike on both; an asymmetry detector collapses without the cue, which is how bilateral lesions
(periventricular ones) look to it. This is the on-distribution version of feeding inference the image twice
(``preprocessing#transforms#9#keys``), which gives two exactly equal channels, something training never shows (its
channels carry independent noise). Without ``--dataset_dir`` the samples come from ``prepare_demo`` deformations of
MNI152 (1 mm) built in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile

import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from una_bundle.scripts.data.bundle_config import load_config, weights_path
from una_bundle.scripts.data.demo_data import prepare_demo
from una_bundle.scripts.model.checkpoint import load_weights
from una_bundle.scripts.scoring.metrics import dice

RECIPE = ["train.yaml", "train_cpu.yaml"]


def samples(dataset_dir: str, output_dir: str, drop: float, volumes: int, seed: int) -> tuple[list[dict], ConfigParser]:
    """``volumes`` x ``patches_per_volume`` training patches with ``symmetry_drop_prob=drop``, from ``seed``, and the
    parsed recipe."""
    overrides = {"dataset_dir": dataset_dir, "output_dir": output_dir, "symmetry_drop_prob": drop, "anomaly_prob": 1.0}
    config = load_config(RECIPE, overrides)
    pipeline = Compose(config.get_parsed_content("train#preprocessing"))
    pipeline.set_random_state(seed=seed)
    entries = config.get_parsed_content("train#dataset#data")
    out = []
    for index in range(volumes):
        patches = pipeline(dict(entries[index % len(entries)]))
        out.extend(patches if isinstance(patches, list) else [patches])
    return out, config


def head_scores(network, patches: list[dict]) -> list[tuple[int, int, float]]:
    """``(lesion voxels, flagged voxels, Dice)`` of the head's mask (probability > 0.5) on each patch."""
    rows = []
    with torch.no_grad():
        for patch in patches:
            logits = network(torch.as_tensor(patch["image"])[None].float())[:, 1:2]
            found = (torch.sigmoid(logits) > 0.5).float()
            lesion = (torch.as_tensor(patch["lesion"])[None] > 0.5).float()
            rows.append((int(lesion.sum()), int(found.sum()), float(dice(found, lesion))))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(weights_path()))
    parser.add_argument("--dataset_dir", help="prepared training data (default: 2 demo deformations, built here)")
    parser.add_argument("--volumes", type=int, default=4, help="whole-brain samples (each gives patches_per_volume)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; weights {args.checkpoint}\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        data = args.dataset_dir or str(prepare_demo(os.path.join(tmp, "demo"), n_train=2, n_val=0, spacing=1.0).parent)
        with_cue, config = samples(data, os.path.join(tmp, "out"), 0.0, args.volumes, args.seed)
        without_cue, _ = samples(data, os.path.join(tmp, "out"), 1.0, args.volumes, args.seed)
    network = config.get_parsed_content("network_def")
    load_weights(network, args.checkpoint)
    scored = list(zip(head_scores(network, with_cue), head_scores(network, without_cue)))
    print("| patch | lesion voxels | flagged with cue | Dice with cue | flagged without cue | Dice without cue |")
    print("|---|---|---|---|---|---|")
    for index, ((lesion, found, d), (_, found_nc, d_nc)) in enumerate(scored):
        print(f"| {index} | {lesion} | {found} | {d:.3f} | {found_nc} | {d_nc:.3f} |")
    lesioned = [(a[2], b[2]) for a, b in scored if a[0] > 0]
    if lesioned:
        mean = [sum(v) / len(lesioned) for v in zip(*lesioned)]
        print(
            f"\nmean Dice over {len(lesioned)} patches with a lesion: with the cue {mean[0]:.3f}, without {mean[1]:.3f}"
        )


if __name__ == "__main__":
    main()
