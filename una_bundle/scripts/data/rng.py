"""Bridging MONAI's per-transform ``np.random.RandomState`` (``self.R``) to torch's local generators.

MONAI transforms draw every random number from ``self.R`` so that ``set_random_state(seed)`` makes them
reproducible. Work done in torch (possibly on a GPU) needs a ``torch.Generator``; it is seeded from ``self.R`` so
the same transform state gives the same tensors, and nothing touches the global RNGs.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["random_seed", "torch_generator"]


def random_seed(random_state: np.random.RandomState) -> int:
    """A seed for a torch generator, drawn from ``random_state``."""
    return int(random_state.randint(0, 2**62, dtype=np.int64))


def torch_generator(random_state: np.random.RandomState, device: torch.device | str | None = None) -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with a number drawn from ``random_state``."""
    return torch.Generator(device=torch.device(device) if device is not None else "cpu").manual_seed(
        random_seed(random_state)
    )
