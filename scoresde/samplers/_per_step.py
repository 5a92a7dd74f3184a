"""Per-step coefficients: a sampler field that takes one number, or one number per step.

``EDMHeun.s_churn`` and ``DPMSolverPP.eta`` take a scalar (the same value at every step, as always)
or a sequence with one value per noisy step (the per-step noise fitted by
``samplers.fit_stochastic``, in the manner of AdaSDE).  A constant sequence gives the scalar's
samples bit for bit.  Entries may also be 0-d float tensors: the differentiable path of the fit
passes its parameters that way, so that gradients reach them.
"""
from __future__ import annotations

import math

import torch

from .._checks import check_nonnegative

__all__ = ["check_coefficient", "check_length", "at"]


def check_coefficient(name: str, value):
    """A number >= 0 (returned unchanged) or a non-empty sequence of them (returned as a tuple of floats,
    0-d tensors kept); an error naming ``name`` (and the entry) otherwise."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"`{name}` must be a number >= 0 or a non-empty sequence of them (one per step), got []")
        out = []
        for k, v in enumerate(value):
            if torch.is_tensor(v) and v.ndim == 0 and v.is_floating_point():
                if not math.isfinite(float(v.detach())) or float(v.detach()) < 0:
                    raise ValueError(f"`{name}[{k}]` must be a finite number >= 0, got {float(v.detach())!r}")
                out.append(v)
            else:
                out.append(check_nonnegative(f"{name}[{k}]", v))
        return tuple(out)
    check_nonnegative(name, value)
    return value


def check_length(name: str, value, length: int, what: str) -> None:
    """A per-step sequence must have ``length`` entries (``what``: which steps they belong to)."""
    if isinstance(value, tuple) and len(value) != length:
        raise ValueError(f"`{name}` has {len(value)} per-step values, but this grid has {length} {what}: give "
                         f"{length} values (or one number for every step)")


def at(value, i: int):
    """The coefficient of step ``i``."""
    return value[i] if isinstance(value, tuple) else value
