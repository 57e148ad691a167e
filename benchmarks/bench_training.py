"""Benchmark: seconds per training iteration and peak memory of UNA's training step, per profile.

    python benchmarks/bench_training.py                      # CPU profiles; + the full profile when CUDA is there
    python benchmarks/bench_training.py --profiles cpu cpu_v1 full --steps 5

One iteration is what ``SupervisedTrainer`` does per batch of ``configs/train.yaml``: UNANet forward, ``UNALoss``
(weighted L1 + gradient L1, and the anomaly head's Dice + BCE when the network has two outputs), backward,
gradient-norm clipping and an AdamW step, on random tensors of the crop size. Profiles:

* ``cpu``: the recipe of the shipped weights, read from ``configs/train_cpu.yaml`` (crop, batch =
  ``patches_per_volume``, network, threads, bfloat16 autocast - float32 where the CPU has no native bfloat16,
  ``scripts.model.network.runs_bfloat16_natively``: the table says which ran);
* ``cpu_float32``: the same in float32 (the ratio to ``cpu`` is what the autocast buys on this machine);
* ``cpu_v1``: the recipe of the weights shipped before it (the baseline "before"): 64^3 crops, batch 1, 4 levels,
  16 features, one output (no anomaly head), one thread;
* ``full``: the default ``configs/train.yaml``: 160^3 crops, 6 levels, 64 features capped at 512, two outputs, AMP
  (float16 autocast with a ``GradScaler``), CUDA only.

Each profile runs in a fresh child process, so its peak memory is its own: the peak resident set size
(``resource.getrusage``) on the CPU, with the RSS after start-up (torch loaded, no network) shown beside it, and
``torch.cuda.max_memory_allocated`` on a GPU. The data pipeline is timed by ``bench_training_data.py``. Prints a
markdown table and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch


def _cpu_recipe() -> dict:
    """The ``cpu`` profile from ``configs/train_cpu.yaml`` (the one source of the shipped weights' recipe)."""
    import yaml

    from una_bundle import BUNDLE_ROOT

    recipe = yaml.safe_load((BUNDLE_ROOT / "configs" / "train_cpu.yaml").read_text())
    return dict(
        crop=recipe["crop_size"][0],
        batch=recipe["patches_per_volume"],
        levels=recipe["network_def#levels"],
        features=recipe["network_def#features"],
        max_features=recipe["network_def#max_features"],
        out_channels=2,
        amp=False,
        autocast=recipe.get("network_def#autocast"),
        device="cpu",
        threads=recipe["num_threads"],
    )


PROFILES = {
    "cpu": _cpu_recipe(),
    "cpu_float32": {**_cpu_recipe(), "autocast": None},
    "cpu_v1": dict(
        crop=64, batch=1, levels=4, features=16, max_features=512, out_channels=1, amp=False, device="cpu", threads=1
    ),
    "full": dict(
        crop=160,
        batch=1,
        levels=6,
        features=64,
        max_features=512,
        out_channels=2,
        amp=True,
        device="cuda",
        threads=None,
    ),
}


def _autocast_label(autocast: str | None, native: bool) -> str:
    """What the network body ran in: the autocast dtype, or float32 (and why, where autocast was asked for)."""
    if autocast is None:
        return "float32"
    return autocast if native else f"float32 (no native {autocast})"


def rss_mib() -> float:
    """Current resident set size of this process (Linux ``/proc``), MiB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(profile: str, steps: int, warmup: int) -> dict:
    """Time ``steps`` iterations of ``profile`` after ``warmup`` ones; returns the row of the table."""
    from una_bundle.scripts.model.losses import UNALoss
    from una_bundle.scripts.model.network import UNANet, runs_bfloat16_natively

    p = PROFILES[profile]
    if p["threads"] is not None:
        torch.set_num_threads(p["threads"])
    device = torch.device(p["device"])
    baseline = rss_mib()
    torch.manual_seed(0)
    net = UNANet(
        in_channels=2,
        out_channels=p["out_channels"],
        levels=p["levels"],
        features=p["features"],
        max_features=p["max_features"],
        autocast=p.get("autocast"),
    )
    net = net.to(device)
    loss_fn = UNALoss(gradient_weight=1.0, anomaly_weight=1.0 if p["out_channels"] == 2 else 0.0)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cuda") if p["amp"] else None
    shape = (p["batch"], 1) + (p["crop"],) * 3
    image = torch.rand((p["batch"], 2) + shape[2:], device=device)
    target, weight = torch.rand(shape, device=device), 1 + torch.rand(shape, device=device)
    lesion = (torch.rand(shape, device=device) > 0.9).float()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=p["amp"]):
            loss = loss_fn(net(image), target, weight, lesion=lesion)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    row = {
        "profile": profile,
        "crop": f"{p['batch']} x {p['crop']}^3",
        "network": f"{p['levels']} levels, {p['features']} features (max {p['max_features']})",
        "parameters_M": net.num_parameters() / 1e6,
        "precision": "float16" if p["amp"] else _autocast_label(p.get("autocast"), runs_bfloat16_natively(device.type)),
        "threads": torch.get_num_threads(),
        "s_per_iteration": sorted(times)[len(times) // 2],
        "s_min": min(times),
        "samples_per_s": p["batch"] / sorted(times)[len(times) // 2],
    }
    if device.type == "cuda":
        row["peak_memory"] = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (CUDA allocated)"
    else:  # ru_maxrss is in KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        row["peak_memory"] = f"{peak / 2**10:.2f} GiB RSS ({baseline / 2**10:.2f} GiB at start)"
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", choices=sorted(PROFILES), help="default: cpu, and full on CUDA")
    parser.add_argument("--steps", type=int, default=5, help="timed iterations (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--child", choices=sorted(PROFILES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one profile, in its own process: print its row as JSON
        print(json.dumps(measure(args.child, args.steps, args.warmup)))
        return

    cuda = torch.cuda.is_available()
    profiles = args.profiles or (["cpu", "full"] if cuda else ["cpu"])
    gpu = torch.cuda.get_device_name(0) if cuda else "none"
    load = os.getloadavg()[0]
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} CPUs (load average {load:.1f}), torch {torch.__version__}, GPU: {gpu}\n")
    rows = []
    for profile in profiles:
        if PROFILES[profile]["device"] == "cuda" and not cuda:
            print(f"skipping profile '{profile}': it needs CUDA")
            continue
        command = [
            sys.executable,
            __file__,
            "--child",
            profile,
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"profile '{profile}' failed:\n{result.stderr[-3000:]}")
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    print(
        "| profile | batch x crop | network | parameters | precision | threads | s/iteration (median) | fastest | "
        "patches/s | peak memory |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['profile']} | {r['crop']} | {r['network']} | {r['parameters_M']:.2f} M | {r['precision']} | "
            f"{r['threads']} | {r['s_per_iteration']:.2f} | {r['s_min']:.2f} | {r['samples_per_s']:.2f} | "
            f"{r['peak_memory']} |"
        )


if __name__ == "__main__":
    main()
