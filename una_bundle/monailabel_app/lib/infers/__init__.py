"""Inference tasks of the UNA MONAI Label app."""

from .una import UNAInferTask

__all__ = ["UNAInferTask"]
