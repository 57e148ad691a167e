"""Argument checks shared by the transforms: one clear ``ValueError`` wording everywhere."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["check_range", "check_probability", "check_bool"]


def check_range(name: str, value: Sequence[float], low: float | None = None, high: float | None = None) -> tuple:
    """``value`` as a ``(min, max)`` tuple with ``min <= max`` inside ``[low, high]``, else ``ValueError``."""
    value = tuple(value)
    if len(value) != 2 or value[0] > value[1]:
        raise ValueError(f"{name} must be a (min, max) pair with min <= max, got {value}.")
    if (low is not None and value[0] < low) or (high is not None and value[1] > high):
        raise ValueError(f"{name} must lie within [{low}, {high}], got {value}.")
    return value


def check_probability(name: str, value: float) -> float:
    """``value`` if it is a probability in ``[0, 1]``, else ``ValueError``."""
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}.")
    return float(value)


def check_bool(name: str, value) -> bool:
    """``value`` as a bool; also the strings a command line passes (``true``/``false``, ``1``/``0``, ``yes``/``no``)."""
    if isinstance(value, bool):
        return value
    words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if str(value).strip().lower() not in words:
        raise ValueError(f"{name} must be true or false, got {value!r}.")
    return words[str(value).strip().lower()]
