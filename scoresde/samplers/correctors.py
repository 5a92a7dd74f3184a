"""Correctors: Langevin MCMC steps at a fixed time t that leave p_t (approximately) invariant.

Each corrector is a frozen dataclass with ``step(x, score_fn, sde, t, t_next, generator) -> (x, x_mean)``;
it evaluates the score itself (once per call).  ``t_next`` (the next grid time, 0 after the last)
only enters through a = alpha(t)^2 / alpha(t_next)^2, the one-step alpha of the continuous
schedule (score_sde uses an index into a discrete table, issue #73; a = 1 for VE).

* ``LangevinCorrector`` (Song et al. 2021, Alg. 4/5, signal-to-noise ratio r):
  eps = 2 a (r ||z|| / ||s||)^2,  x_mean = x + eps s,  x = x_mean + sqrt(2 eps) z.
  ``norm="per_sample"`` (default) uses each sample's own ||z|| and ||s||, so samples do not
  interact; ``"batch"`` averages both norms over the batch as score_sde does (couples samples,
  results depend on the batch); ``"sqrt_d"`` uses ||z|| = sqrt(d), the paper's suggestion for
  small batches, with per-sample ||s||.

  Per-sample norms need a high dimension d, where ||s|| concentrates around its mean.  In low d
  (the 2-D toys) ||s|| -> 0 at mode centres makes eps ~ 1/||s||^2 heavy-tailed and the chain
  explodes: measured on the 5x5 grid target with the exact score, 200-step PC, snr 0.1,
  sliced-W2 / floor = 19 with "per_sample" against 1.4 with "batch".  Use "batch" or
  ``AnnealedLangevinCorrector`` for d below a few tens.
* ``AnnealedLangevinCorrector`` (score_sde's ``AnnealedLangevinDynamics``, NCSN's step rule):
  eps = 2 a (r sigma(t))^2,  x_mean = x + eps s,  x = x_mean + sqrt(2 eps) z.

**Temperature** T > 0 (both correctors, default 1 = the updates above bit for bit): the noise is
scaled by sqrt(T), x = x_mean + sqrt(2 eps T) z, so the step is the Euler step eta = eps T of
dx = grad log pi_T dt + sqrt(2) dW with pi_T ~ p_t^(1/T), the Boltzmann distribution of U = -log p_t
at temperature T (``docs/conventions.md``, "Temperature, MALA, annealing"; ``samplers.langevin``).
The step-size rules are unchanged (they read the untempered score s).

**MALA** (``metropolis=True``, both correctors; Roberts & Tweedie 1996, ``samplers.langevin``): the
corrector's move x + eps s + sqrt(2 eps T) z is a proposal y, accepted with probability
min(1, pi_T(y) q(x | y) / (pi_T(x) q(y | x))), q(b | a) = N(b; a + eps_a s(a), 2 eps_a T I), so each
corrector step leaves p_t^(1/T) exactly invariant whatever ``snr``.  The step must not depend on the
noise z or on other samples: ``AnnealedLangevinCorrector`` (eps depends on t only) and
``LangevinCorrector(norm="sqrt_d")`` (eps depends on x through ||s(x)||; the reverse kernel uses eps at y);
``norm="per_sample"`` or ``"batch"`` with ``metropolis=True`` is refused.  The log-density comes from
``PredictorCorrector.run(..., log_prob_fn=...)`` or ``score_fn.log_prob`` (an exact toy target, an
energy model); a MALA corrector step costs 2 score and 2 log-density evaluations (both in ``nfe``), and
the run returns a ``MetropolisResult`` with the acceptance rate.  ``metropolis=False`` (default) is the
unadjusted step above, bit for bit.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import torch

from .._checks import append_dims, check_in, check_positive
from ..sdes import SDE
from .base import CountedScore, per_sample_norm, randn_like
from .langevin import _Metropolis, mala_step

__all__ = ["Corrector", "LangevinCorrector", "AnnealedLangevinCorrector"]


class Corrector(abc.ABC):
    """One MCMC step at time ``t`` (one score evaluation)."""

    @abc.abstractmethod
    def step(
        self, x: torch.Tensor, score_fn: CountedScore, sde: SDE, t: torch.Tensor, t_next: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (x, x_mean) at the same time ``t``."""


def _one_step_alpha(sde: SDE, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
    return (2 * (sde.log_alpha(t) - sde.log_alpha(t_next))).exp()


def _check_metropolis(corrector) -> None:
    check_positive("temperature", corrector.temperature)
    if not isinstance(corrector.metropolis, bool):
        raise TypeError(f"`metropolis` must be a bool, got {corrector.metropolis!r}")


def _mala_correct(score_fn: CountedScore, x, t, temperature: float, generator, step_of_score, fixed: bool):
    """One MALA corrector step with eps = ``step_of_score(s) [B]`` (``fixed``: the same at every state),
    proposal x + eps s + sqrt(2 eps T) z (module docstring); returns (x, x_mean of the proposal)."""
    problem = getattr(score_fn, "score_fn", None)
    if not isinstance(problem, _Metropolis):
        raise ValueError("a corrector with `metropolis=True` needs the log-density that PredictorCorrector.run passes "
                         "it (from `log_prob_fn` or `score_fn.log_prob`); run it inside PredictorCorrector")
    score, log_p = score_fn(x, t), problem.log_prob(x, t)
    # mala_step's convention is x + (step/2) s + sqrt(step T) z: step = 2 eps
    x, _, _, x_mean = mala_step(problem, score_fn, x, score, log_p, t, 2 * step_of_score(score), temperature,
                                generator, step_rule=None if fixed else lambda s: 2 * step_of_score(s))
    return x, x_mean


@dataclass(frozen=True)
class LangevinCorrector(Corrector):
    """Langevin corrector with the signal-to-noise step rule; ``snr`` > 0, ``norm`` in per_sample | batch | sqrt_d,
    ``temperature`` > 0; ``metropolis=True`` (with ``norm="sqrt_d"``) is MALA (module docstring)."""

    snr: float = 0.1
    norm: str = "per_sample"
    temperature: float = 1.0
    metropolis: bool = False

    def __post_init__(self):
        check_positive("snr", self.snr)
        check_in("norm", self.norm, ("per_sample", "batch", "sqrt_d"))
        _check_metropolis(self)
        if self.metropolis and self.norm != "sqrt_d":
            raise ValueError(f"`metropolis=True` needs `norm='sqrt_d'` (a step that depends on x only), got "
                             f"norm={self.norm!r}: 'per_sample' draws the step from the noise z, 'batch' from the batch")

    def step(self, x, score_fn, sde, t, t_next, generator):
        if self.metropolis:
            a = _one_step_alpha(sde, t, t_next).to(x.dtype)
            root_d = math.sqrt(math.prod(x.shape[1:]))
            tiny = torch.finfo(x.dtype).tiny
            rule = lambda s: 2 * a * (self.snr * root_d / per_sample_norm(s).clamp_min(tiny)) ** 2  # noqa: E731
            return _mala_correct(score_fn, x, t, self.temperature, generator, rule, fixed=False)
        score = score_fn(x, t)
        z = randn_like(x, generator)
        score_norm = per_sample_norm(score)
        if self.norm == "sqrt_d":
            noise_norm = torch.full_like(score_norm, math.sqrt(math.prod(x.shape[1:])))
        else:
            noise_norm = per_sample_norm(z)
        if self.norm == "batch":
            score_norm, noise_norm = score_norm.mean().expand_as(score_norm), noise_norm.mean().expand_as(noise_norm)
        a = _one_step_alpha(sde, t, t_next).to(x.dtype)
        eps = 2 * a * (self.snr * noise_norm / score_norm.clamp_min(torch.finfo(x.dtype).tiny)) ** 2
        eps = append_dims(eps, x.ndim)
        x_mean = x + eps * score
        return x_mean + (2 * self.temperature * eps).sqrt() * z, x_mean


@dataclass(frozen=True)
class AnnealedLangevinCorrector(Corrector):
    """NCSN-style corrector: step 2 a (snr sigma(t))^2; ``snr`` > 0, ``temperature`` > 0; ``metropolis=True`` is MALA."""

    snr: float = 0.1
    temperature: float = 1.0
    metropolis: bool = False

    def __post_init__(self):
        check_positive("snr", self.snr)
        _check_metropolis(self)

    def step(self, x, score_fn, sde, t, t_next, generator):
        if self.metropolis:
            eps = 2 * _one_step_alpha(sde, t, t_next).to(x.dtype) * (self.snr * sde.sigma(t).to(x.dtype)) ** 2
            return _mala_correct(score_fn, x, t, self.temperature, generator, lambda s: eps, fixed=True)
        score = score_fn(x, t)
        a = _one_step_alpha(sde, t, t_next).to(x.dtype)
        eps = append_dims(2 * a * (self.snr * sde.sigma(t).to(x.dtype)) ** 2, x.ndim)
        x_mean = x + eps * score
        return x_mean + (2 * self.temperature * eps).sqrt() * randn_like(x, generator), x_mean
