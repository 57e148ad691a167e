"""The fluid anomaly generator: a random probability map (Perlin noise or a lesion pool) advected and diffused by a
random divergence-free flow (``perlin``, ``flow``, ``advection`` and its Triton kernel ``advection_triton``,
``fluid_anomaly``), then encoded into an image as a darker or brighter lesion (``anomaly_encoding``)."""
