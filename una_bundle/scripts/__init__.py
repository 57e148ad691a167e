"""The Python behind the bundle's configs. The public API of the fluid anomaly generator is exported here."""

from .advection import advect_diffuse
from .flow import random_flow
from .perlin import perlin_noise

__all__ = ["perlin_noise", "random_flow", "advect_diffuse"]
