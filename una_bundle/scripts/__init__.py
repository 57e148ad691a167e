"""The Python behind the bundle's configs.

The fluid anomaly generator's public API (``perlin_noise``, ``random_flow``, ``advect_diffuse``, ``FluidAnomaly``,
``RandFluidAnomalyd`` and the encoding pair) is stable; the transforms, network and losses of the training pipeline
are exported beside it. Configs reach every module as ``scripts.<module>.<name>``.
"""

from .advection import advect_diffuse
from .anomaly_encoding import RandEncodeAnomaly, RandEncodeAnomalyd
from .deformation import RandSmoothDeformd
from .flow import random_flow
from .fluid_anomaly import FluidAnomaly, RandFluidAnomalyd
from .loss_weight import LesionLossWeightd
from .losses import StructureContrastiveLoss, UNALoss, WeightedL1GradientLoss
from .network import UNANet
from .perlin import perlin_noise
from .registration import FlipRegisterd, apply_flip_registration, register_flip
from .synthesis import (
    RandLabelToImage,
    RandLabelToImaged,
    RandNoiseBySourced,
    RandResolution,
    RandResolutiond,
    RandSmoothBiasField,
    RandSmoothBiasFieldd,
)

__all__ = [
    "perlin_noise",
    "random_flow",
    "advect_diffuse",
    "FluidAnomaly",
    "RandFluidAnomalyd",
    "RandEncodeAnomaly",
    "RandEncodeAnomalyd",
    "RandLabelToImage",
    "RandLabelToImaged",
    "RandResolution",
    "RandResolutiond",
    "RandSmoothBiasField",
    "RandSmoothBiasFieldd",
    "RandNoiseBySourced",
    "RandSmoothDeformd",
    "LesionLossWeightd",
    "register_flip",
    "apply_flip_registration",
    "FlipRegisterd",
    "UNANet",
    "UNALoss",
    "WeightedL1GradientLoss",
    "StructureContrastiveLoss",
]
