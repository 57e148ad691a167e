"""The Python behind the bundle's configs.

The fluid anomaly generator's public API (``perlin_noise``, ``random_flow``, ``advect_diffuse``, ``FluidAnomaly``,
``RandFluidAnomalyd`` and the encoding pair) is stable; the transforms, network and losses of the training pipeline
are exported beside it. Configs reach every module as ``scripts.<module>.<name>``.

Names and modules are imported on first use (PEP 562 ``__getattr__``), so ``import una_bundle.scripts`` (and
``una-bundle --help``) does not load torch and MONAI; ``from una_bundle.scripts import UNANet`` works as before.
"""

import importlib

#: the module of each exported name
_EXPORTS = {
    "advect_diffuse": "advection",
    "RandEncodeAnomaly": "anomaly_encoding",
    "RandEncodeAnomalyd": "anomaly_encoding",
    "RandSmoothDeformd": "deformation",
    "random_flow": "flow",
    "FluidAnomaly": "fluid_anomaly",
    "RandFluidAnomalyd": "fluid_anomaly",
    "LesionLossWeightd": "loss_weight",
    "StructureContrastiveLoss": "losses",
    "UNALoss": "losses",
    "WeightedL1GradientLoss": "losses",
    "UNANet": "network",
    "perlin_noise": "perlin",
    "FlipRegisterd": "registration",
    "apply_flip_registration": "registration",
    "register_flip": "registration",
    "RandLabelToImage": "synthesis",
    "RandLabelToImaged": "synthesis",
    "RandNoiseBySourced": "synthesis",
    "RandResolution": "synthesis",
    "RandResolutiond": "synthesis",
    "RandSmoothBiasField": "synthesis",
    "RandSmoothBiasFieldd": "synthesis",
}


def __getattr__(name: str):
    """An exported name (from its module) or a submodule (``scripts.training``), imported on first access."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":  # the submodule exists but one of its imports is missing
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

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
