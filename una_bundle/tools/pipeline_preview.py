"""See the training-data pipeline: draw N samples from ``configs/train.yaml`` and save them as one PNG grid.

Each row is one sample: the network input (channel 0) and its registered flip (channel 1), both with the brain
mask outlined, the training target (the healthy T1w), the input with the lesion outlined, and the loss weight; the
row title names the contrast, the source (synthetic or real) and the resolution regime. Look for: targets
anatomically aligned with the inputs, lesions inside the brain, weights > 1 on synthetic lesions and 0 on real ones.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..scripts.data.bundle_config import load_config
from ..scripts.data.nifti_io import check_writable

__all__ = ["preview_pipeline", "draw_samples"]


def draw_samples(dataset_dir: str, n: int, seed: int = 0, overrides: dict | None = None) -> tuple[list[dict], float]:
    """``n`` samples of the training pipeline on the datalist in ``dataset_dir``, and the seconds per sample (the
    pipeline cuts ``patches_per_volume`` patches from each synthesised volume; they are counted one by one)."""
    datalist = Path(dataset_dir) / "datalist.json"
    if not datalist.is_file():
        raise FileNotFoundError(
            f"no datalist.json in {dataset_dir} (build one with: una-bundle prepare-demo --out_dir DIR)"
        )
    settings = {"dataset_dir": str(Path(dataset_dir).resolve())} | dict(overrides or {})
    parser = load_config("train.yaml", settings)
    entries = parser.get_parsed_content("train#dataset#data")
    transform = parser.get_parsed_content("train#preprocessing")
    transform.set_random_state(seed)
    samples, start = [], time.perf_counter()
    i = 0
    while len(samples) < int(n):
        out = transform(entries[i % len(entries)])
        samples.extend(out if isinstance(out, list) else [out])
        i += 1
    return samples[: int(n)], (time.perf_counter() - start) / max(int(n), 1)


def _axial(volume: torch.Tensor, z: int) -> np.ndarray:
    return np.rot90(torch.as_tensor(volume).detach().cpu().float().numpy()[:, :, z])


def preview_pipeline(
    dataset_dir: str = "una_demo_data",
    output: str = "pipeline_preview.png",
    n: int = 8,
    seed: int = 0,
    overwrite: bool = False,
    roi_size: tuple[int, int, int] | None = None,
    config_overrides: dict | None = None,
) -> str:
    """Write a PNG grid of ``n`` training samples (rows) drawn with ``seed``; returns its path.

    Args:
        dataset_dir: folder of ``datalist.json`` (e.g. made by ``una-bundle prepare-demo``).
        output: the PNG file to write.
        n: number of samples.
        seed: random seed of the pipeline.
        overwrite: replace an existing PNG.
        roi_size: crop size of the samples (default: the config's, 160^3 for 1 mm data).
        config_overrides: further config ids to override, e.g. ``{"synthetic_prob": 1.0}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(output)
    check_writable([out], overwrite)
    overrides = dict(config_overrides or {}) | ({"roi_size": list(roi_size)} if roi_size is not None else {})
    samples, seconds = draw_samples(dataset_dir, n, seed, overrides)
    titles = ("input (cyan: brain)", "flip channel", "target (healthy T1w)", "lesion", "loss weight")
    fig, axes = plt.subplots(len(samples), 5, figsize=(11, 2.4 * len(samples)), facecolor="black", squeeze=False)
    for row, s in enumerate(samples):
        lesion = s["lesion"][0]
        z = int(lesion.nonzero()[:, 2].float().mean()) if lesion.any() else lesion.shape[2] // 2
        panels = (s["image"][0], s["image"][1], s["target"][0], s["image"][0], s["weight"][0])
        for col, (panel, title) in enumerate(zip(panels, titles)):
            ax = axes[row, col]
            ax.axis("off")
            vmax = 2.0 if col == 4 else 1.0
            ax.imshow(_axial(panel, z), cmap="magma" if col == 4 else "gray", vmin=0, vmax=vmax)
            if col in (0, 1):  # the target's brain outline: input and flip must line up with it
                ax.contour(_axial(s["mask"][0], z), levels=[0.5], colors="cyan", linewidths=0.5)
            if col == 3 and lesion.any():
                ax.contour(_axial(lesion, z), levels=[0.5], colors="red", linewidths=0.7)
            if row == 0:
                ax.set_title(title, color="white", fontsize=9)
        label = f"{s['source']} {s['modality']} | {s['regime']}"
        axes[row, 0].text(0, -4, label, color="white", fontsize=7, va="bottom")
    fig.suptitle(f"UNA training samples ({seconds:.2f} s/sample on this machine)", color="white", fontsize=10)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100, facecolor="black")
    plt.close(fig)
    tmp.replace(out)
    return str(out)
