"""Carry a GPU run's result back in small files: the last checkpoint (resumable) and an average of the last epochs.

A lent GPU machine hands back only a few files of limited size (16 MiB each here), while a resume checkpoint of the
shipped recipe is three times the network (64 MB). :func:`pack` writes, from a run's ``models/`` folder, the last
checkpoint's network in float32 split into parts, its AdamW moments in bfloat16 (as ``training_state`` keeps them)
split by moment, and the mean of the networks of the newest ``average`` epoch checkpoints in float16 (a relative
rounding of at most 5e-4, below the bfloat16 the network's body runs in). :func:`unpack` joins them again into a
resume checkpoint and a state dict::

    python -m una_bundle.tools.gpu_transfer pack RUN OUT --average 8     # on the GPU machine
    python -m una_bundle.tools.gpu_transfer unpack OUT DEST              # here: DEST/checkpoint_final.pt, averaged.pt
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from ..scripts.workflows.checkpoints import latest_checkpoint
from .training_state import MOMENTS, mean_state_dict, save_state

__all__ = ["pack", "unpack", "main"]

_LIMIT_BYTES = 15 * 2**20  # under the 16 MiB per file, with room for pickle's overhead


def _epoch_checkpoints(run_dir: Path) -> list[Path]:
    """The run's ``models/checkpoint_epoch=N.pt``, oldest first."""
    found = []
    for path in (run_dir / "models").glob("checkpoint_epoch=*.pt"):
        match = re.fullmatch(r"checkpoint_epoch=(\d+)\.pt", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def _split(state: dict[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    """Consecutive groups of ``state``'s entries of at most ``limit`` bytes each (one tensor may exceed it alone)."""
    parts: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, value in state.items():
        nbytes = value.numel() * value.element_size()
        if parts[-1] and size + nbytes > limit:
            parts.append({})
            size = 0
        parts[-1][key] = value
        size += nbytes
    return parts


def pack(run_dir: str | Path, out_dir: str | Path, n_average: int = 8, limit: int = _LIMIT_BYTES) -> list[Path]:
    """Write the small files of the run in ``run_dir`` to ``out_dir``; returns their paths."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    epochs = _epoch_checkpoints(run_dir)
    last = latest_checkpoint(run_dir / "models")  # what a resumed run would start from: final, else newest epoch
    if last is None:
        raise FileNotFoundError(f"{run_dir / 'models'}: no checkpoint_epoch=N.pt or checkpoint_final.pt.")
    if n_average < 1 or not epochs:
        raise ValueError(f"cannot average the last {n_average} of {len(epochs)} epoch checkpoints.")
    earlier = sorted(out_dir.glob("final_*.pt")) + sorted(out_dir.glob("averaged_*.pt"))
    if earlier:
        raise FileExistsError(f"{out_dir} holds files of an earlier pack ({earlier[0].name}, ...); use a new folder.")
    state = torch.load(str(last), map_location="cpu", weights_only=False)
    written = []
    for i, part in enumerate(_split(state["model"], limit)):
        written.append(out_dir / f"final_weights_{i}.pt")
        save_state(part, written[-1])
    optimizer = state["optimizer"]
    for name in MOMENTS:
        moments = {i: s[name].to(torch.bfloat16) for i, s in optimizer["state"].items()}
        for j, part in enumerate(_split({str(k): v for k, v in moments.items()}, limit)):
            written.append(out_dir / f"final_{name}_{j}.pt")
            save_state(part, written[-1])
    written.append(out_dir / "final_rest.pt")
    steps = {str(i): s["step"] for i, s in optimizer["state"].items()}
    rest = {"param_groups": optimizer["param_groups"], "steps": steps}
    save_state({"optimizer": rest, "lr_scheduler": state["lr_scheduler"], "trainer": state["trainer"]}, written[-1])
    chosen = epochs[-n_average:]
    half = {k: v.half() if v.is_floating_point() else v for k, v in mean_state_dict(chosen).items()}
    written.append(out_dir / "averaged_float16.pt")
    save_state({"checkpoints": [p.name for p in chosen], "model": half}, written[-1])
    return written


def unpack(in_dir: str | Path, dest: str | Path) -> tuple[Path, Path]:
    """Join ``pack``'s files in ``in_dir`` into ``dest/checkpoint_final.pt`` (network, optimizer, scheduler, trainer)
    and ``dest/averaged.pt`` (a float32 state dict); refuses to overwrite either."""
    in_dir, dest = Path(in_dir), Path(dest)
    resume, averaged = dest / "checkpoint_final.pt", dest / "averaged.pt"
    for path in (resume, averaged):
        if path.exists():
            raise FileExistsError(f"{path} exists; unpack into a new folder.")

    def parts(prefix: str) -> dict:
        numbered = [(re.fullmatch(rf"{prefix}_(\d+)\.pt", p.name), p) for p in in_dir.glob(f"{prefix}_*.pt")]
        files = [p for _, p in sorted((int(m.group(1)), p) for m, p in numbered if m)]  # not final_exp_avg_sq_0
        if not files:
            raise FileNotFoundError(f"{in_dir}: no {prefix}_N.pt (files of gpu_transfer pack).")
        joined: dict = {}
        for path in files:
            joined.update(torch.load(str(path), map_location="cpu", weights_only=True))
        return joined

    model = parts("final_weights")
    moments = {name: parts(f"final_{name}") for name in MOMENTS}
    rest = torch.load(str(in_dir / "final_rest.pt"), map_location="cpu", weights_only=False)
    optimizer_state = {
        int(i): {"step": step, **{name: moments[name][i].float() for name in MOMENTS}}
        for i, step in rest["optimizer"]["steps"].items()
    }
    optimizer = {"state": optimizer_state, "param_groups": rest["optimizer"]["param_groups"]}
    checkpoint = {"model": model, "optimizer": optimizer, "lr_scheduler": rest["lr_scheduler"]}
    save_state({**checkpoint, "trainer": rest["trainer"]}, resume)
    half = torch.load(str(in_dir / "averaged_float16.pt"), map_location="cpu", weights_only=True)["model"]
    save_state({k: v.float() if v.is_floating_point() else v for k, v in half.items()}, averaged)
    return resume, averaged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="a run's last checkpoint and an average of its last epochs -> small files")
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    p.add_argument("--average", type=int, default=8, help="how many of the newest epoch checkpoints to average")
    u = sub.add_parser("unpack", help="pack's files -> checkpoint_final.pt (resumable) and averaged.pt")
    u.add_argument("in_dir")
    u.add_argument("dest")
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            for path in pack(args.run_dir, args.out_dir, args.average):
                print(path)
        else:
            print(*unpack(args.in_dir, args.dest), sep="\n")
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        print(f"gpu_transfer: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
