"""Benchmark: one complete fluid anomaly (random shape + three potentials + curl + PDE with nt = 10) per grid size
and backend, and the PDE sub-step's effective bandwidth against this machine's copy bandwidth (same process).

    python benchmarks/bench_fluid_anomaly.py [--sizes 96 128 160] [--samples 5] [--threads 2]

Prints markdown tables and the machine it ran on. Effective bandwidth counts the bytes a fused sub-step must move
at least (read P, V and, with diffusion, D; write P) over the measured time; the bound is a device-to-device copy.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from monai.data import MetaTensor

from una_bundle.scripts import FluidAnomaly, random_flow
from una_bundle.scripts.generator.advection import _run_torch, face_coefficients, substep_count


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats):
    fn()  # warm-up (allocations, kernel compilation)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _brain(n, device):
    axes = [torch.linspace(-1, 1, n, device=device)] * 3
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    mask = ((x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 0.8) ** 2 < 1).float()[None]
    return MetaTensor(mask * 100), mask


def anomaly_seconds(n, device, backend, samples):
    img, brain = _brain(n, device)
    transform = FluidAnomaly(random_shape_prob=1.0, nt_range=(10, 10), backend=backend).set_random_state(0)
    return _timed(lambda: transform(img, brain), device, samples)


def copy_bandwidth(n, device, repeats=5):
    src = torch.rand((n, n, n), device=device)
    dst = torch.empty_like(src)
    best = min(_timed(lambda: dst.copy_(src), device, repeats))
    return 2 * src.numel() * 4 / best / 1e9


def substep_bandwidth(n, device, backend, diffusion, repeats=3, substeps=10):
    velocity, diffusivity = random_flow((n,) * 3, generator=torch.Generator(device).manual_seed(0), device=device)
    if diffusion:
        diffusivity = velocity[0].square()
    p = torch.rand((n,) * 3, device=device)
    if backend == "triton":
        from una_bundle.scripts.generator.advection_triton import advect_diffuse_substep_triton

        pb, vb = p[None].contiguous(), velocity[None].contiguous()
        db = None if diffusivity is None else diffusivity[None].contiguous()

        def step():
            q = pb
            for _ in range(substeps):
                q = advect_diffuse_substep_triton(q, vb, db, 0.01)

    else:
        coeffs = face_coefficients(velocity, diffusivity)
        step = lambda: _run_torch(p, coeffs, 0.01, substeps)  # noqa: E731
    best = min(_timed(step, device, repeats)) / substeps
    fields = 1 + 3 + (1 if diffusion else 0) + 1  # read P, V (3), D; write P
    return best, fields * p.numel() * 4 / best / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128, 160])
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    devices = [("cpu", "torch")]
    if torch.cuda.is_available():
        devices += [("cuda", "torch"), ("cuda", "triton")]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}, torch {torch.__version__}, GPU: {gpu}\n"
    )

    print("## One complete anomaly (random shape + 3 potentials + curl + PDE, nt = 10)\n")
    print("| grid | device | backend | median s/sample | max s/sample | substeps/step (last) |")
    print("|---|---|---|---|---|---|")
    for n in args.sizes:
        for device_name, backend in devices:
            device = torch.device(device_name)
            times = anomaly_seconds(n, device, backend, args.samples)
            velocity, _ = random_flow((n,) * 3, generator=torch.Generator(device).manual_seed(0), device=device)
            sub = substep_count(face_coefficients(velocity, None), 0.1)
            print(f"| {n}^3 | {device_name} | {backend} | {statistics.median(times):.3f} | {max(times):.3f} | {sub} |")

    print("\n## PDE sub-step on the full grid (no support cropping)\n")
    print("| grid | device | backend | diffusion | ms/sub-step | effective GB/s | copy GB/s (bound) | % of bound |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        for device_name, backend in devices:
            device = torch.device(device_name)
            bound = copy_bandwidth(n, device)
            for diffusion in (False, True):
                seconds, gbs = substep_bandwidth(n, device, backend, diffusion)
                print(
                    f"| {n}^3 | {device_name} | {backend} | {diffusion} | {seconds * 1e3:.2f} | {gbs:.1f} | "
                    f"{bound:.1f} | {100 * gbs / bound:.0f}% |"
                )


if __name__ == "__main__":
    main()
