"""Benchmark: samples per second of the training-data pipeline (configs/train.yaml), against one training step.

    python benchmarks/bench_training_data.py --spacing 2 --roi 96 112 96 [--workers 0 2] [--samples 16]
    python benchmarks/bench_training_data.py --spacing 1 --roi 160 160 160 --device cuda   # on a GPU

Builds the demo dataset at ``--spacing`` in a temporary folder, caches the deterministic part (loading, crop,
flip registration) as the bundle's CacheDataset does, and times the random part through a DataLoader with each
number of workers. In the same process it times one training step (forward + backward + AdamW) of the network at the
same crop size: the pipeline keeps up when its samples/s exceed the steps/s. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, ToDeviced

from una_bundle.scripts.data.bundle_config import load_config
from una_bundle.scripts.data.demo_data import prepare_demo
from una_bundle.scripts.model.network import UNANet


def pipeline_rate(parser, cached, workers, samples, device):
    augmentation = list(parser.get_parsed_content("train#augmentation"))
    if device.type == "cuda":  # random transforms on the GPU: no workers, tensors already there
        augmentation = [ToDeviced(keys=["image", "target", "mask", "label"], device=device)] + augmentation
    dataset = Dataset(data=[cached[i % len(cached)] for i in range(samples + 1)], transform=Compose(augmentation))
    loader = DataLoader(dataset, batch_size=1, num_workers=workers, shuffle=False)
    iterator = iter(loader)
    next(iterator)  # worker start-up and first-call costs are not the steady state
    start = time.perf_counter()
    for _ in range(samples):
        next(iterator)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return samples / (time.perf_counter() - start)


def step_rate(roi, levels, features, device, steps=3):
    net = UNANet(levels=levels, features=features).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), 1e-4)
    x = torch.rand((1, 2, *roi), device=device)
    y = torch.rand((1, 1, *roi), device=device)

    def step():
        optimizer.zero_grad()
        torch.nn.functional.l1_loss(net(x), y).backward()
        optimizer.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spacing", type=float, default=2.0)
    parser.add_argument("--roi", type=int, nargs=3, default=[96, 112, 96])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--levels", type=int, default=4, help="network depth for the training-step comparison")
    parser.add_argument("--features", type=int, default=16, help="network width for the training-step comparison")
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, GPU: {gpu}\n")

    with tempfile.TemporaryDirectory() as tmp:
        datalist = prepare_demo(os.path.join(tmp, "demo"), n_train=4, n_val=0, spacing=args.spacing)
        config = load_config(
            "train.yaml",
            {"dataset_dir": str(datalist.parent), "output_dir": os.path.join(tmp, "out"), "roi_size": args.roi},
        )
        loading = Compose(config.get_parsed_content("train#loading"))
        start = time.perf_counter()
        cached = [loading(entry) for entry in config.get_parsed_content("train#dataset#data")]
        load_seconds = (time.perf_counter() - start) / len(cached)

        roi = "x".join(map(str, args.roi))
        print(f"deterministic part (load, crop, flip registration), once per subject: {load_seconds:.2f} s\n")
        print("| crop | spacing | device | workers | samples/s |")
        print("|---|---|---|---|---|")
        for workers in args.workers if device.type == "cpu" else [0]:
            rate = pipeline_rate(config, cached, workers, args.samples, device)
            print(f"| {roi} | {args.spacing:g} mm | {device.type} | {workers} | {rate:.2f} |")
    steps = step_rate(args.roi, args.levels, args.features, device)
    print(
        f"\ntraining step (UNANet levels={args.levels}, features={args.features}, batch 1, {roi}, {device.type}): "
        f"{steps:.3f} steps/s ({1 / steps:.2f} s/step)"
    )


if __name__ == "__main__":
    main()
