"""Shape helpers and input checks shared by the public entry points.

Checks run once, at the public boundary, never inside a sampling loop.  Every message
names the argument, the value received and what is allowed (torchsde's style).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

__all__ = [
    "append_dims",
    "check_positive",
    "check_nonnegative",
    "check_int",
    "check_in",
    "check_probability",
    "check_shape",
    "check_generator",
]


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so a per-sample ``[B]`` tensor broadcasts against ``[B, *D]``."""
    missing = ndim - v.ndim
    if missing < 0:
        raise ValueError(f"cannot broadcast a tensor of {v.ndim} dims to {ndim} dims")
    return v.reshape(*v.shape, *([1] * missing))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_positive(name: str, value: Any, *, allow_inf: bool = False) -> float:
    """``value`` must be a finite real number > 0."""
    if not _is_number(value) or math.isnan(value) or (math.isinf(value) and not allow_inf) or value <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}")
    return float(value)


def check_nonnegative(name: str, value: Any) -> float:
    """``value`` must be a finite real number >= 0."""
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")
    return float(value)


def check_probability(name: str, value: Any) -> float:
    """``value`` must lie in [0, 1]."""
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}")
    return float(value)


def check_int(name: str, value: Any, *, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` must be an int in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and <= {maximum}"
        raise ValueError(f"`{name}` must be >= {minimum}{upper}, got {value}")
    return value


def check_in(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """``value`` must be one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {list(allowed)}, got {value!r}")
    return value


def check_shape(name: str, shape: Any) -> tuple[int, ...]:
    """A batch-first sample shape ``(B, *D)`` with every entry a positive int and at least one data dim."""
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, (tuple, list)) or len(shape) < 2:
        raise ValueError(f"`{name}` must be a batch-first shape (B, *D) with at least 2 entries, got {shape!r}")
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(f"`{name}` entries must be positive integers, got {shape!r}")
    return tuple(shape)


def check_generator(generator: Any, device: torch.device | str | None = None) -> torch.Generator:
    """Return ``generator``, or a fresh one seeded from OS entropy when it is None.

    The library never draws from torch's global RNG: pass a seeded ``torch.Generator`` for
    reproducible results.  A generator must live on the device the samples are drawn on.
    """
    if generator is None:
        generator = torch.Generator(device=device if device is not None else "cpu")
        generator.seed()
        return generator
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator or None, got {type(generator).__name__}")
    if device is not None and torch.device(device).type != generator.device.type:
        raise ValueError(
            f"`generator` is on {generator.device} but samples are drawn on {torch.device(device)}; "
            "create it with torch.Generator(device=...)"
        )
    return generator
