"""The score wrapper every sampler calls through, and per-sample noise streams (``samplers.base`` docstring).

* ``CountedScore``: counts evaluations (NFE); checks every output's shape, dtype and device on the
  host (no sync), the first output's finiteness (one sync), and records later non-finite outputs on
  the device, raised by ``check_finite`` (at the end of a run and before each callback) with the
  step and the time t where they first appeared.
* ``PerSampleGenerator``: one ``torch.Generator`` per sample (``run(..., seeds=...)``), as EDM's
  ``StackedRandomGenerator``: row i of every draw depends on seeds[i] only.
"""
from __future__ import annotations

import bisect
from typing import Iterable

import torch

from ..sdes import ScoreFn

__all__ = ["CountedScore", "NonFiniteScoreError", "PerSampleGenerator", "randn_like", "check_seeds"]


class NonFiniteScoreError(FloatingPointError, ValueError):
    """The score returned non-finite values (a ``ValueError`` too, for the first-call check)."""


class CountedScore:
    """Wraps a score function: counts evaluations and checks every output (see the module docstring).

    ``step`` is set by the loop to the current step, so that a non-finite output found later can be
    reported with the step and the time t where it first appeared.
    """

    def __init__(self, score_fn: ScoreFn):
        self.score_fn = score_fn
        self.nfe = 0
        self.step = 0
        self._step_starts: list[tuple[int, int]] = []  # (first call index, step), one entry per step
        self._first_bad: torch.Tensor | None = None  # call index of the first non-finite output, -1: none
        self._first_bad_t: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.score_fn(x, t)
        call = self.nfe
        self.nfe += 1
        if not torch.is_tensor(out) or out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
            got = f"{tuple(out.shape)}, {out.dtype}, {out.device}" if torch.is_tensor(out) else type(out).__name__
            raise ValueError(
                f"`score_fn` must return a tensor of the input's shape, dtype and device "
                f"{tuple(x.shape)}, {x.dtype}, {x.device}, got {got} (evaluation {call + 1}, step {self.step})"
            )
        finite = torch.isfinite(out).all()
        if call == 0:
            if not bool(finite):
                raise NonFiniteScoreError(f"`score_fn` returned non-finite values at t = {float(t[0]):.6g}")
            self._first_bad = torch.full((), -1, dtype=torch.int64, device=out.device)
            self._first_bad_t = torch.zeros((), dtype=torch.float64, device=out.device)
            return out
        if not self._step_starts or self._step_starts[-1][1] != self.step:
            self._step_starts.append((call, self.step))
        new = (~finite) & (self._first_bad < 0)
        self._first_bad = torch.where(new, call, self._first_bad)
        self._first_bad_t = torch.where(new, t[0].to(torch.float64), self._first_bad_t)
        return out

    def check_finite(self) -> None:
        """Raise ``NonFiniteScoreError`` if any output so far was non-finite (one host sync)."""
        if self._first_bad is None:
            return
        call = int(self._first_bad)
        if call < 0:
            return
        k = bisect.bisect_right([c for c, _ in self._step_starts], call) - 1
        step = self._step_starts[k][1] if k >= 0 else 0
        raise NonFiniteScoreError(
            f"`score_fn` returned non-finite values first at step {step}, t = {float(self._first_bad_t):.6g} "
            f"(evaluation {call + 1} of {self.nfe}); check the score there (or the step sizes)"
        )


class PerSampleGenerator:
    """One ``torch.Generator`` per sample (``run(..., seeds=...)``): row i of every draw comes from seed i.

    Pass-through wherever a generator is expected by the samplers' noise helper (``randn_like``).
    """

    def __init__(self, seeds: Iterable[int], device: torch.device):
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.generators = [torch.Generator(device=self.device).manual_seed(s) for s in self.seeds]

    def randn(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        if shape[0] != len(self.generators):
            raise ValueError(f"`seeds` has {len(self.generators)} entries but the batch has {shape[0]} samples")
        return torch.stack([torch.randn(shape[1:], generator=g, device=device, dtype=dtype) for g in self.generators])


def randn_like(x: torch.Tensor, generator) -> torch.Tensor:
    """Standard normal noise of ``x``'s shape, dtype and device from ``generator`` (or per-sample streams)."""
    if isinstance(generator, PerSampleGenerator):
        return generator.randn(tuple(x.shape), x.dtype, x.device)
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def check_seeds(seeds, batch: int) -> list[int]:
    try:
        seeds = list(seeds)
    except TypeError as e:
        raise TypeError(f"`seeds` must be a sequence of integers (e.g. range(B)), got {seeds!r}") from e
    if len(seeds) != batch:
        raise ValueError(f"`seeds` must have one entry per sample (B = {batch}), got {len(seeds)}")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) and not (torch.is_tensor(s) and s.ndim == 0):
            raise TypeError(f"`seeds` entries must be integers, got {s!r}")
        if not 0 <= int(s) < 2**63:
            raise ValueError(f"`seeds` entries must lie in [0, 2^63), got {int(s)}")
    return [int(s) for s in seeds]
