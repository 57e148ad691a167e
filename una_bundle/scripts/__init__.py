"""The Python behind the bundle's configs. The public API of the fluid anomaly generator is exported here."""

from .advection import advect_diffuse
from .anomaly_encoding import RandEncodeAnomaly, RandEncodeAnomalyd
from .flow import random_flow
from .fluid_anomaly import FluidAnomaly, RandFluidAnomalyd
from .perlin import perlin_noise

__all__ = [
    "perlin_noise",
    "random_flow",
    "advect_diffuse",
    "FluidAnomaly",
    "RandFluidAnomalyd",
    "RandEncodeAnomaly",
    "RandEncodeAnomalyd",
]
