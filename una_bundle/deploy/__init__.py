"""A MONAI Deploy application for UNA: ``app.py`` (TorchScript model + metadata, NIfTI in, NIfTI out)."""
