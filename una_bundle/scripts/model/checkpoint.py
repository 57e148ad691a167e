"""The network's weights: checking and reading a checkpoint, loading it into the network, and its hash."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["check_roi_size", "check_checkpoint", "read_state_dict", "load_weights", "file_hash"]

_HASH_TYPES = ("md5", "sha1", "sha256", "sha512")


def check_roi_size(roi_size: Sequence[int], divisor: int) -> list[int]:
    """``roi_size`` as a list, after checking that every size is a positive multiple of ``divisor``."""
    roi = [int(r) for r in (roi_size if isinstance(roi_size, Sequence) else [roi_size] * 3)]
    if len(roi) != 3 or any(r <= 0 or r % int(divisor) for r in roi):
        raise ValueError(
            f"roi_size {roi} must be 3 positive multiples of {divisor} (2**(levels - 1)) so every window fits UNANet."
        )
    return roi


def check_checkpoint(path: str | Path) -> Path:
    """The checkpoint path, or a ``FileNotFoundError`` saying how to get one (never run on random weights)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"UNA checkpoint not found: {path}. Inference needs trained weights and never runs on random ones: "
            f"train a model (python -m monai.bundle run training --config_file configs/train.yaml, see the bundle's "
            f"docs/README.md) and place it at models/model.pt, fetch the released weights (python -m monai.bundle "
            f"download_large_files --bundle_path <bundle root>), or pass checkpoint=PATH (--ckpt_path PATH for "
            f"python -m monai.bundle run)."
        )
    return path


def read_state_dict(path: Path) -> dict:
    """The network weights in a checkpoint file: a state dict, or one under ``model``/``network``/``state_dict``."""
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"checkpoint {path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err})."
        ) from err
    for key in ("model", "network", "state_dict"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    if isinstance(ckpt, dict):  # a best-metric checkpoint of training also holds ignite's "checkpointer" state
        ckpt = {k: v for k, v in ckpt.items() if k != "checkpointer"}
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(f"checkpoint {path} holds no state dict (a dict of tensors, or one under 'model').")
    return ckpt


def _unanet_settings(state: dict) -> str:
    """``levels=…, features=…, out_channels=…`` of a UNANet state dict, for error messages."""
    levels = {k.split(".")[1] for k in state if k.startswith("encoders.")}
    first = state.get("encoders.0.convs.0.conv.conv.weight")
    head = state.get("head.conv.weight")
    if not levels or first is None:
        return "not a UNANet state dict"
    return f"levels={len(levels)}, features={first.shape[0]}" + (
        f", out_channels={head.shape[0]}" if head is not None else ""
    )


def load_weights(network: torch.nn.Module, path: Path) -> None:
    """Load checkpoint ``path`` into ``network`` (strict; a ``ValueError`` naming both settings when they differ)."""
    state = read_state_dict(check_checkpoint(path))
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"checkpoint {path} does not fit the configured network ({_unanet_settings(state)} in the checkpoint): "
            f"set levels / features (or network_def) to the checkpoint's. {str(err).splitlines()[0]}"
        ) from err
    network.eval()


def file_hash(path: str | Path, hash_type: str = "sha256") -> str:
    """Hex digest of a file (``hash_type`` one of md5, sha1, sha256, sha512, as ``monai.apps.utils.check_hash``)."""
    if hash_type.lower() not in _HASH_TYPES:
        raise ValueError(f"hash_type must be one of {_HASH_TYPES}, got {hash_type!r}.")
    h = hashlib.new(hash_type.lower())
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
