"""The network (``network.UNANet``), its losses (``losses``) and the per-voxel loss weight (``loss_weight``)."""
