"""Training images drawn from anatomy label maps, one transform family per module: ``contrast`` (label-to-image),
``deformation`` (affine + smooth field), ``bias_field``, ``resolution`` and ``noise``."""
