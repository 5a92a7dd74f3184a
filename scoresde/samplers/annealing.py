"""Simulated annealing: Langevin dynamics while the temperature decreases (Kirkpatrick et al. 1983; Geman & Geman 1984).

At step k = 0..N-1 the chain takes one tempered Langevin step (``samplers.langevin``, MATH.md's
"Temperature" rule) at temperature T_k, with the score at one diffusion time ``t`` (default t_min):

    x <- x + (eps/2) s(x, t) + sqrt(eps T_k) z,       targeting p^(1/T_k) = exp(-U / T_k),  U = -log p,

so as T_k -> 0 the noise vanishes and the chain becomes gradient ascent on log p (descent on U), ending
at a local maximum of p.  Which one depends on the cooling: slowly enough (the logarithmic schedule
T_k = c / log(k + k0) with c above the deepest barrier is the classical guarantee, Hajek 1988) the chain
ends at the global maximum; fast, it stays in the basin where it froze.  ``benchmarks/annealing.py``
measures how fast is fast on two toy mixtures.

Schedules (``annealing_temperatures``), from ``temperature_start`` T_0 to ``temperature_end`` T_{N-1}:
"geometric" T_k = T_0 (T_{N-1}/T_0)^(k/(N-1)); "linear" T_k = T_0 + (T_{N-1} - T_0) k/(N-1);
"logarithmic" T_k = c / log(k + k0), with k0 > 1 and c = T_0 log k0 chosen so that both ends match.

The issue's names t_start / t_end / steps are ``temperature_start`` / ``temperature_end`` / ``num_steps``
here: in this library t is the diffusion time.  The energy is optional and only for the callback
(``AnnealingStepInfo.energy``, from ``run(..., log_prob_fn=...)`` or ``score_fn.log_prob``, when
``record_energy=True``); the sampler itself needs the score only.  NFE = num_steps score evaluations
(+ num_steps log-density evaluations with ``record_energy``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import check_in, check_positive
from .base import Sampler, StepInfo, batch_time, check_steps, progress_bar, randn_like
from .langevin import resolve_log_prob

__all__ = ["SimulatedAnnealing", "AnnealingStepInfo", "annealing_temperatures", "SCHEDULES"]

SCHEDULES = ("geometric", "linear", "logarithmic")


def _log_k0(ratio: float, num_steps: int) -> float:
    """log k0 with log(N - 1 + k0) / log(k0) = ratio (= T_0 / T_{N-1} > 1), by bisection on log k0 > 0."""
    lo, hi = 1e-300, 1e6
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        # f decreasing in log k0: log(N - 1 + k0) / log k0 - ratio
        k0 = math.exp(min(mid, 700.0))
        if math.log(num_steps - 1 + k0) / mid > ratio:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def annealing_temperatures(schedule: str, temperature_start: float, temperature_end: float, num_steps: int) -> list[float]:
    """The N temperatures T_0 .. T_{N-1} of a schedule (module docstring); T_0 >= T_{N-1} > 0."""
    check_in("schedule", schedule, SCHEDULES)
    t0, t1 = check_positive("temperature_start", temperature_start), check_positive("temperature_end", temperature_end)
    if t1 > t0:
        raise ValueError(f"`temperature_end` must be <= `temperature_start`, got {t1} > {t0}")
    n = check_steps("num_steps", num_steps)
    if n == 1 or t0 == t1:
        return [t0] * n
    if schedule == "geometric":
        return [t0 * (t1 / t0) ** (k / (n - 1)) for k in range(n)]
    if schedule == "linear":
        return [t0 + (t1 - t0) * k / (n - 1) for k in range(n)]
    log_k0 = _log_k0(t0 / t1, n)
    k0 = math.exp(log_k0)
    c = t0 * log_k0
    return [t0] + [c / math.log(k + k0) for k in range(1, n)]


@dataclass(frozen=True)
class AnnealingStepInfo(StepInfo):
    """``StepInfo`` plus the step's ``temperature`` and, with ``record_energy``, ``energy`` U = -log p ``[B]``."""

    temperature: float = 1.0
    energy: torch.Tensor | None = None


@dataclass(frozen=True)
class SimulatedAnnealing(Sampler):
    """Tempered Langevin steps along a cooling ``schedule`` (module docstring); returns the final points.

    Args:
        schedule: "geometric" (default) | "linear" | "logarithmic".
        temperature_start, temperature_end: T_0 >= T_{N-1} > 0.
        num_steps: N (the cooling speed: fewer steps, faster cooling).
        step_size: eps of the Langevin step.
        t: diffusion time of the score (None: ``sde.t_min``).
        record_energy: pass U = -log p(x) of every step to the callback (needs a log-density).
    """

    schedule: str = "geometric"
    temperature_start: float = 1.0
    temperature_end: float = 1e-4
    num_steps: int = 2000
    step_size: float = 0.01
    t: float | None = None
    record_energy: bool = False

    def __post_init__(self):
        annealing_temperatures(self.schedule, self.temperature_start, self.temperature_end, self.num_steps)
        check_positive("step_size", self.step_size)
        if self.t is not None and (isinstance(self.t, bool) or not isinstance(self.t, (int, float))):
            raise TypeError(f"`t` must be a number or None, got {self.t!r}")
        if not isinstance(self.record_energy, bool):
            raise TypeError(f"`record_energy` must be a bool, got {self.record_energy!r}")

    def temperatures(self) -> list[float]:
        return annealing_temperatures(self.schedule, self.temperature_start, self.temperature_end, self.num_steps)

    def run(self, score_fn, sde, shape=None, *, log_prob_fn=None, **kwargs):
        """As ``Sampler.run``; ``log_prob_fn(x, t) -> [B]`` (default ``score_fn.log_prob``) with ``record_energy``."""
        if not self.record_energy:
            if log_prob_fn is not None:
                raise ValueError("`log_prob_fn` is used only with `record_energy=True`")
            return super().run(score_fn, sde, shape, **kwargs)
        log_prob = resolve_log_prob(score_fn, log_prob_fn)
        calls = [0]

        def energy(x, t):
            calls[0] += 1
            return -log_prob(x, t)

        result = super().run(_WithEnergy(score_fn, energy), sde, shape, **kwargs)
        return type(result)(result.x, result.nfe + calls[0])

    def _run(self, score_fn, sde, x, generator, callback, progress):
        t = sde.t_min if self.t is None else float(self.t)
        if not sde.t_min <= t <= sde.T:
            raise ValueError(f"`t` must lie in [t_min, T] = [{sde.t_min:g}, {sde.T:g}], got {t}")
        tb = batch_time(t, x)
        energy = getattr(score_fn.score_fn, "energy", None) if self.record_energy else None
        half = self.step_size / 2
        for k, temperature in enumerate(progress_bar(self.temperatures(), progress, "SimulatedAnnealing")):
            x_mean = x + half * score_fn(x, tb)
            x = x_mean + (self.step_size * temperature) ** 0.5 * randn_like(x, generator)
            if callback is not None:
                u = energy(x, tb) if energy is not None else None
                callback(AnnealingStepInfo(k, self.num_steps, t, t, x, x_mean, temperature, u))
        return x


class _WithEnergy:
    """The score with an ``energy(x, t)`` attribute for the callback (one per run)."""

    def __init__(self, score_fn, energy):
        self.score_fn, self.energy = score_fn, energy
        self.event_shape = getattr(score_fn, "event_shape", None)

    def __call__(self, x, t):
        return self.score_fn(x, t)
