"""Tooling around the bundle, not needed by a bundle run (``python -m monai.bundle run``): the ``una-bundle``
command line (``cli``, python-fire), the demo case (``demo_case``), the anomaly gallery (``anomaly_gallery``), the
training-sample preview (``pipeline_preview``) and the model release (``release``: TorchScript export, hashes)."""
