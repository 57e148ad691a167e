"""The network (``network.UNANet``), its losses (``losses``), the per-voxel loss weight (``loss_weight``) and its
weights on disk (``checkpoint``: checking, reading and loading a checkpoint)."""
