"""A small, committable training state, to continue the shipped model's training in a later session.

A resume checkpoint of ``configs/train.yaml`` (``models/checkpoint_epoch=N.pt``: network, AdamW, scheduler, trainer)
is three times the network's size. When the shipped weights (``models/model.pt``) are that checkpoint's network, the
rest is all a later run needs: :func:`pack` keeps the optimizer (its moment tensors in bfloat16: half the bytes; the
optimizer casts them back to float32 on loading), the scheduler and the trainer's counters, and records the hash of
the weights it belongs to; :func:`unpack` joins them with ``models/model.pt`` into a resume checkpoint in a run's
``models/`` folder, so the documented training command, re-run on that folder, resumes there::

    python -m una_bundle.tools.training_state pack RUN/models/checkpoint_epoch=N.pt training_state/cpu_recipe.pt
    python -m una_bundle.tools.training_state unpack training_state/cpu_recipe.pt RUN    # then the training command

:func:`average` writes the mean of several checkpoints' networks (weight averaging over the last epochs of a run: a
steadier anomaly head than any one checkpoint at a constant learning rate)::

    python -m una_bundle.tools.training_state average RUN/models/checkpoint_epoch={36..43}.pt --out averaged.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..scripts.data.atomic_io import write_atomic
from ..scripts.data.bundle_config import weights_path
from ..scripts.model.checkpoint import file_hash, read_state_dict

__all__ = ["pack", "unpack", "average", "main"]

MOMENTS = ("exp_avg", "exp_avg_sq")  # AdamW's moment tensors, kept in bfloat16


def save_state(obj, path: Path) -> None:
    """``torch.save`` to ``path`` atomically (parent folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: torch.save(obj, str(tmp)))


def pack(checkpoint: str | Path, out: str | Path, weights: str | Path = weights_path()) -> Path:
    """Write the training state of ``checkpoint`` without its network to ``out``; ``weights`` must hold exactly that
    network (the shipped ``models/model.pt``), else ``ValueError``."""
    state = torch.load(str(checkpoint), map_location="cpu", weights_only=False)
    missing = {"model", "optimizer", "lr_scheduler", "trainer"} - set(state)
    if missing:
        raise ValueError(f"{checkpoint}: not a training resume checkpoint (missing {sorted(missing)}).")
    shipped = read_state_dict(Path(weights))
    if shipped.keys() != state["model"].keys() or any(not torch.equal(shipped[k], state["model"][k]) for k in shipped):
        raise ValueError(f"{weights} is not the network of {checkpoint}: ship that network first, then pack.")
    optimizer = {"param_groups": state["optimizer"]["param_groups"], "state": {}}
    for index, values in state["optimizer"]["state"].items():
        optimizer["state"][index] = {k: (v.to(torch.bfloat16) if k in MOMENTS else v) for k, v in values.items()}
    packed = {
        "optimizer": optimizer,
        "lr_scheduler": state["lr_scheduler"],
        "trainer": state["trainer"],
        "weights_sha256": file_hash(Path(weights)),
    }
    save_state(packed, Path(out))
    return Path(out)


def unpack(state: str | Path, run_dir: str | Path, weights: str | Path = weights_path()) -> Path:
    """Write ``run_dir/models/checkpoint_epoch=N.pt`` (N from the trainer state) from ``state`` and ``weights``;
    returns its path. Refuses weights other than those the state was packed with, and an existing file."""
    packed = torch.load(str(state), map_location="cpu", weights_only=False)
    if file_hash(Path(weights)) != packed.get("weights_sha256"):
        raise ValueError(f"{weights} is not the network {state} was packed with (sha256 differs).")
    trainer = packed["trainer"]
    epoch = int(trainer["iteration"]) // int(trainer["epoch_length"])
    out = Path(run_dir) / "models" / f"checkpoint_epoch={epoch}.pt"
    if out.exists():
        raise FileExistsError(f"{out} exists; unpack into a new run folder.")
    checkpoint = {
        "model": read_state_dict(Path(weights)),
        "optimizer": packed["optimizer"],
        "lr_scheduler": packed["lr_scheduler"],
        "trainer": trainer,
    }
    save_state(checkpoint, out)
    return out


def mean_state_dict(checkpoints: list[str | Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the networks in ``checkpoints`` (resume checkpoints or state dicts), in their dtypes;
    integer buffers are taken from the last. Refuses networks of different layouts."""
    if not checkpoints:
        raise ValueError("average needs at least one checkpoint.")
    total: dict[str, torch.Tensor] = {}
    for path in checkpoints:
        state = read_state_dict(Path(path))
        if total and (state.keys() != total.keys() or any(state[k].shape != total[k].shape for k in state)):
            raise ValueError(f"{path}: not the same network as {checkpoints[0]} (parameter names or shapes differ).")
        for key, value in state.items():
            if value.is_floating_point():
                total[key] = total[key] + value.double() if key in total else value.double()
            else:
                total[key] = value
    return {k: (v / len(checkpoints)).float() if v.is_floating_point() else v for k, v in total.items()}


def average(checkpoints: list[str | Path], out: str | Path) -> Path:
    """Write :func:`mean_state_dict` of ``checkpoints`` to ``out`` as a state dict; refuses an existing ``out``."""
    if Path(out).exists():
        raise FileExistsError(f"{out} exists; choose a new file.")
    save_state(mean_state_dict(checkpoints), Path(out))
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="resume checkpoint -> small training state")
    p.add_argument("checkpoint")
    p.add_argument("out")
    u = sub.add_parser("unpack", help="training state + models/model.pt -> resume checkpoint in RUN/models")
    u.add_argument("state")
    u.add_argument("run_dir")
    for q in (p, u):
        q.add_argument("--weights", default=str(weights_path()))
    a = sub.add_parser("average", help="mean of several checkpoints' networks -> one state dict")
    a.add_argument("checkpoints", nargs="+")
    a.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            print(pack(args.checkpoint, args.out, args.weights))
        elif args.command == "average":
            print(average(args.checkpoints, args.out))
        else:
            print(unpack(args.state, args.run_dir, args.weights))
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        print(f"training_state: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
