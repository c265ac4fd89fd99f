"""Argument checks: one definition per rule, used by the engine, the notebooks and the batch runner.

Each raises ``ValueError`` with a message that names the argument and what it got, and returns the
value (as ``int`` / ``float``) when it is good. Nothing here imports the rest of ``crs`` (only torch, for the devices).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import torch

__all__ = ["check_choice", "check_int", "check_number", "resolve_device"]


def check_int(name: str, value, minimum: int | None = None, what: str | None = None) -> int:
    """``value`` must be an integer (not a bool) of at least ``minimum``.

    Args:
        name: the argument's name, quoted in backticks in the message.
        what: the message's subject instead of the quoted name (e.g. "A step count").
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (minimum is not None and value < minimum):
        subject = what or f"`{name}`"
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{subject} must be an integer{bound}, got {value!r}.")
    return int(value)


def check_number(name: str, value, minimum: float | None = None, positive: bool = False) -> float:
    """``value`` must be a finite real number (not a bool), ``> 0`` with ``positive``, ``>= minimum`` when given."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (not positive or value > 0) and (minimum is None or value >= minimum)
    if not ok:
        kind = (
            "a positive finite number"
            if positive
            else f"a finite number >= {minimum}"
            if minimum is not None
            else "a finite number"
        )
        raise ValueError(f"`{name}` must be {kind}, got {value!r}.")
    return float(value)


def check_choice(name: str, value, choices: Iterable[str], what: str | None = None) -> str:
    """``value`` must be one of ``choices`` (message: "Unknown <what> 'x'; valid choices: a, b")."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"Unknown {what or f'`{name}`'} {value!r}; valid choices: {', '.join(choices)}.")
    return value


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cpu``, ``cuda`` and ``cuda:N`` pass
    (ValueError for a GPU that is not there, or an unknown name)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if isinstance(device, str) and (device == "cuda" or device.startswith("cuda:")):
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but no CUDA GPU is visible; use 'cpu' or 'auto'.")
        return device
    raise ValueError(f"Unknown device {device!r}; valid choices: auto, cpu, cuda, cuda:N.")
