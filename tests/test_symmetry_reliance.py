"""benchmarks/symmetry_reliance.py scores the anomaly head (channel 1 of the network's output) against each patch's
lesion: Dice and voxel counts of the mask ``sigmoid(logits) > 0.5``."""

import torch
from conftest import load_benchmark

sr = load_benchmark("symmetry_reliance")


class _Head(torch.nn.Module):
    """A two-channel 'network' whose anomaly logits are +10 where ``flag`` is set and -10 elsewhere."""

    def __init__(self, flag: torch.Tensor):
        super().__init__()
        self.flag = flag

    def forward(self, x):
        logits = torch.where(self.flag, 10.0, -10.0)[None, None].expand(x.shape[0], 1, *x.shape[2:])
        return torch.cat([torch.zeros_like(logits), logits], dim=1)


def test_head_scores_reads_the_head_channel_against_the_lesion():
    lesion = torch.zeros(8, 8, 8, dtype=torch.bool)
    lesion[2:4, 2:4, 2:4] = True  # 8 voxels
    half = lesion.clone()
    half[3] = False  # 4 of them
    patch = {"image": torch.rand(2, 8, 8, 8), "lesion": lesion[None].float()}
    assert sr.head_scores(_Head(lesion), [patch]) == [(8, 8, 1.0)]
    ((count, flagged, score),) = sr.head_scores(_Head(half), [patch])
    assert (count, flagged) == (8, 4) and abs(score - 2 * 4 / 12) < 1e-6
    assert sr.head_scores(_Head(torch.zeros_like(lesion)), [patch]) == [(8, 0, 0.0)]
