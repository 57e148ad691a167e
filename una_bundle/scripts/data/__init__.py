"""Data and files: anatomy label ids (``labels``), modality names (``modalities``), the MNI152 template and its
label map (``mni152``), the demo data (``demo_data``), datalists (``datalist``), NIfTI and atomic writes
(``nifti_io``, ``atomic_io``), and small shared helpers (argument ``checks``, ``rng``, the bundle's configs:
``bundle_config``)."""
