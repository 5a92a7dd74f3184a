"""Scalar maths for step coefficients: python floats go through ``math`` (ordinary sampling, bit for bit
as before), 0-d tensors through ``torch`` (the differentiable path of ``samplers.fitting``, where the
grid's noise levels are tensors that carry gradients).  ``math.expm1`` on a tensor would silently
return a float and drop its gradient, so the multistep solvers call these instead.
"""
from __future__ import annotations

import math

import torch

__all__ = ["exp", "expm1", "sqrt", "solve"]


def exp(v):
    """e^v."""
    return torch.exp(v) if torch.is_tensor(v) else math.exp(v)


def expm1(v):
    """e^v - 1."""
    return torch.expm1(v) if torch.is_tensor(v) else math.expm1(v)


def sqrt(v):
    """sqrt(v)."""
    return torch.sqrt(v) if torch.is_tensor(v) else math.sqrt(v)


def solve(rows: list[list], rhs: list) -> list:
    """The solution a of R a = g for a small square system given as nested lists of scalars.

    Floats: float64 ``torch.linalg.solve`` returning python floats (the solvers' arithmetic before
    the fit existed); any tensor entry: the same solve on stacked tensors, differentiable.
    """
    entries = [v for row in rows for v in row] + list(rhs)
    if not any(torch.is_tensor(v) for v in entries):
        R = torch.tensor(rows, dtype=torch.float64)
        return torch.linalg.solve(R, torch.tensor(rhs, dtype=torch.float64)).tolist()
    as_t = lambda v: v.to(torch.float64) if torch.is_tensor(v) else torch.tensor(v, dtype=torch.float64)  # noqa: E731
    R = torch.stack([torch.stack([as_t(v) for v in row]) for row in rows])
    return list(torch.linalg.solve(R, torch.stack([as_t(v) for v in rhs])).unbind())
