"""The Python behind the bundle's configs, one subpackage per concept, in pipeline order:

- ``generator``: the fluid anomaly generator (Perlin noise, random flow, advection-diffusion, encoding);
- ``synthesis``: the training images drawn from label maps (contrast, geometry, bias field, resolution, noise);
- ``model``: the network, its losses and the loss weight;
- ``preprocessing``: what a scan goes through before the network (input checks, normalisation, flip registration);
- ``scoring``: anomaly maps and masks, lesion filling, brain-masked metrics;
- ``workflows``: training, inference and evaluation;
- ``data``: datalists, NIfTI and atomic file I/O, demo data, small shared helpers.

The fluid anomaly generator's public API (``perlin_noise``, ``random_flow``, ``advect_diffuse``, ``FluidAnomaly``,
``RandFluidAnomalyd`` and the encoding pair) is stable; the transforms, network and losses of the training pipeline
are exported beside it. Configs reach every module as ``scripts.<subpackage>.<module>.<name>``.

Names and modules are imported on first use (PEP 562 ``__getattr__``), so ``import una_bundle.scripts`` (and
``una-bundle --help``) does not load torch and MONAI; ``from una_bundle.scripts import UNANet`` works as before.
"""

import importlib

#: the module of each exported name
_EXPORTS = {
    "advect_diffuse": "generator.advection",
    "RandEncodeAnomaly": "generator.anomaly_encoding",
    "RandEncodeAnomalyd": "generator.anomaly_encoding",
    "RandSmoothDeformd": "synthesis.deformation",
    "random_flow": "generator.flow",
    "FluidAnomaly": "generator.fluid_anomaly",
    "RandFluidAnomalyd": "generator.fluid_anomaly",
    "LesionLossWeightd": "model.loss_weight",
    "StructureContrastiveLoss": "model.losses",
    "UNALoss": "model.losses",
    "WeightedL1GradientLoss": "model.losses",
    "UNANet": "model.network",
    "perlin_noise": "generator.perlin",
    "FlipRegisterd": "preprocessing.registration",
    "apply_flip_registration": "preprocessing.registration",
    "register_flip": "preprocessing.registration",
    "RandLabelToImage": "synthesis.contrast",
    "RandLabelToImaged": "synthesis.contrast",
    "RandNoiseBySourced": "synthesis.noise",
    "RandResolution": "synthesis.resolution",
    "RandResolutiond": "synthesis.resolution",
    "RandSmoothBiasField": "synthesis.bias_field",
    "RandSmoothBiasFieldd": "synthesis.bias_field",
}


def __getattr__(name: str):
    """An exported name (from its module) or a subpackage (``scripts.workflows``), imported on first access."""
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
