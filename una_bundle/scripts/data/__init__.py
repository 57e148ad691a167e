"""Data and files: datalists (``datalist``), NIfTI and atomic writes (``nifti_io``, ``atomic_io``), the demo data
(``demo_data``), and small shared helpers (argument ``checks``, ``rng``, the bundle's configs: ``bundle_config``)."""
