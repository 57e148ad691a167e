"""Inference tasks of the UNA MONAI Label app."""

from .una import LABELS, UNAInferTask

__all__ = ["LABELS", "UNAInferTask"]
