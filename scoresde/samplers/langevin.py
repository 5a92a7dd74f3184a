"""Langevin dynamics at one noise level, and annealed over a sequence of levels (NCSN); temperature and MALA.

Paper convention (Song & Ermon 2019), step size eps, temperature T (default 1), z ~ N(0, I) fresh each step:

* ``Langevin``:  x <- x + (eps/2) s(x, t) + sqrt(eps T) z, ``num_steps`` times at one time t
  (default t_min, the least-noised score).  Unadjusted: biased by O(eps), and it mixes between
  separated modes only through the low-density region between them, so it cannot recover their
  relative weights in reasonable time (NCSN section 3.2; ``tests/test_samplers_api.py``).
  ncsnv2's code writes x + eta s + sqrt(2 eta) z, i.e. eta = eps/2.
* ``AnnealedLangevin`` (NCSN Alg. 1): levels t_1 = T > ... > t_L = t_min from ``sde.timesteps(num_levels)``,
  sigma_i = sigma(t_i); at level i, alpha_i = eps sigma_i^2 / sigma_L^2 and ``steps_per_level`` steps
  x <- x + (alpha_i/2) s(x, t_i) + sqrt(alpha_i T) z.  Optional final Tweedie denoise
  x <- (x + sigma_L^2 s(x, t_L)) / alpha(t_L) (x + sigma_L^2 s for VE; Song & Ermon 2020; Jolicoeur-Martineau et al. 2021).

**Temperature** (``docs/conventions.md``, "Temperature, MALA, annealing").  The chain at temperature T
targets pi_T ~ p^(1/T), the Boltzmann distribution exp(-U/T) of the energy U = -log p: it is the
Euler step of dx = grad log pi_T dt + sqrt(2) dW = (s/T) dt + sqrt(2) dW with step eta = eps T / 2.
Read physically (overdamped Langevin with friction gamma, Boltzmann constant k, time step tau):
dx = -(1/gamma) grad U dt + sqrt(2 k T / gamma) dW, whose Euler step is x + (tau/gamma) s + sqrt(2 k T tau / gamma) z,
i.e. eps = 2 tau / gamma (k = 1, U = -log p) and eta = k T tau / gamma.  T -> 0 is gradient ascent on
log p (descent on U); T = 1 is today's chain bit for bit.

**MALA** (``metropolis=True``; Roberts & Tweedie 1996): the Langevin move is a proposal
y = x + (eps/2) s(x) + sqrt(eps T) z, q(y | x) = N(y; x + (eps/2) s(x), eps T I), accepted with probability
min(1, pi_T(y) q(x | y) / (pi_T(x) q(y | x))), log pi_T = log p_t / T + const.  The chain is then exact
(pi_T-invariant) at any step size.  It needs log p_t up to a constant: ``run(..., log_prob_fn=...)``
(``log_prob_fn(x [B, *D], t [B]) -> [B]``), or a score function that has ``log_prob(x, t)`` (the exact
``GaussianMixture.score_fn(sde)``, an energy model's score).  Each step costs one score and one
log-density evaluation at the proposal (plus one of each at the start); ``nfe`` counts both, and the
result (``MetropolisResult``) reports the acceptance rate.  The uniform of the accept test is drawn as
Phi(z) of a normal z from the same generator (so per-sample ``seeds`` streams work).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import append_dims, check_positive
from .base import (
    MAX_STEPS, Sampler, SampleResult, check_steps, StepInfo, batch_time, progress_bar, randn_like, tweedie_denoise,
)
from .scorecalls import PerSampleGenerator

__all__ = ["Langevin", "AnnealedLangevin", "MetropolisResult", "mala_step", "resolve_log_prob"]


@dataclass(frozen=True)
class MetropolisResult(SampleResult):
    """``SampleResult`` of a Metropolis-adjusted run: ``nfe`` = score + log-density evaluations;
    ``acceptance_rate`` = accepted / proposed moves over the whole run and batch; ``log_prob_evals``
    = the log-density evaluations included in ``nfe``."""

    acceptance_rate: float
    log_prob_evals: int


def resolve_log_prob(score_fn, log_prob_fn):
    """The log-density ``log_prob_fn(x, t) -> [B]`` for MALA: the one given, else ``score_fn.log_prob``."""
    if log_prob_fn is None:
        log_prob_fn = getattr(score_fn, "log_prob", None)
        if log_prob_fn is None:
            raise ValueError(
                "`metropolis=True` needs a log-density: pass `log_prob_fn(x, t) -> [B]` to run(), or a score "
                f"function with a `log_prob(x, t)` method (e.g. GaussianMixture.score_fn(sde)); got {score_fn!r}"
            )
    if not callable(log_prob_fn):
        raise TypeError(f"`log_prob_fn` must be callable as log_prob(x, t) -> [B], got {type(log_prob_fn).__name__}")
    return log_prob_fn


class _Metropolis:
    """The score with its log-density for one Metropolis run: counts log-density calls and acceptances."""

    def __init__(self, score_fn, log_prob_fn):
        self.score_fn, self.log_prob_fn = score_fn, log_prob_fn
        self.log_prob_evals, self.proposed = 0, 0
        self.accepted = None  # a device tensor: no host sync per step
        self.event_shape = getattr(score_fn, "event_shape", None)

    def __call__(self, x, t):
        return self.score_fn(x, t)

    def log_prob(self, x, t):
        out = self.log_prob_fn(x, t)
        self.log_prob_evals += 1
        if not torch.is_tensor(out) or out.shape != x.shape[:1]:
            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ValueError(f"`log_prob_fn` must return a tensor of shape [B] = [{x.shape[0]}], got {got}")
        return out.to(x.dtype)

    def record(self, accept: torch.Tensor) -> None:
        n = accept.sum()
        self.accepted = n if self.accepted is None else self.accepted + n
        self.proposed += accept.numel()


def _log_uniform(x: torch.Tensor, generator) -> torch.Tensor:
    """log U, U ~ Uniform(0, 1) per sample ``[B]``, as log Phi(z) of a normal draw (per-sample streams too)."""
    if isinstance(generator, PerSampleGenerator):
        z = generator.randn((x.shape[0],), x.dtype, x.device)
    else:
        z = torch.randn(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
    return torch.special.log_ndtr(z)


def mala_step(problem: _Metropolis, counted, x, score, log_p, t, step_size, temperature: float, generator,
              step_rule=None):
    """One MALA step at time ``t`` from (x, s(x), log p(x)); returns (x, score, log_p, x_mean) after it.

    ``step_size`` eps: a float, or a per-sample ``[B]`` tensor (the correctors' steps).  ``step_rule``:
    None for a step that does not depend on the state, else ``step_rule(score) -> [B]``, the step at a
    state with that score (``LangevinCorrector(norm="sqrt_d")``); the reverse kernel q(x | y) then uses
    the step at y, and the ratio gains the Gaussians' normalisers (d/2) log(eps_x / eps_y).
    """
    step = append_dims(step_size, x.ndim) if torch.is_tensor(step_size) else step_size
    half, noise = step / 2, (step * temperature) ** 0.5
    x_mean = x + half * score
    y = x_mean + noise * randn_like(x, generator)
    score_y = counted(y, t)
    log_p_y = problem.log_prob(y, t)
    # log q(x|y) - log q(y|x), q(b|a) = N(b; a + (eps_a/2) s(a), eps_a T I)
    forth = (y - x_mean).flatten(1).pow(2).sum(1)
    if step_rule is None:
        back = (x - y - half * score_y).flatten(1).pow(2).sum(1)
        log_ratio = (log_p_y - log_p) / temperature + (forth - back) / (2 * step_size * temperature)
    else:
        step_y = step_rule(score_y)
        back = (x - y - append_dims(step_y / 2, x.ndim) * score_y).flatten(1).pow(2).sum(1)
        log_ratio = ((log_p_y - log_p) / temperature + forth / (2 * step_size * temperature)
                     - back / (2 * step_y * temperature) + (x[0].numel() / 2) * (step_size / step_y).log())
    accept = _log_uniform(x, generator) < log_ratio  # NaN -> rejected
    problem.record(accept)
    keep = append_dims(accept, x.ndim)
    return (torch.where(keep, y, x), torch.where(keep, score_y, score), torch.where(accept, log_p_y, log_p), x_mean)


class _MetropolisRun:
    """``run`` for samplers with a ``metropolis`` option: resolves the log-density, reports the acceptance rate."""

    def run(self, score_fn, sde, shape=None, *, log_prob_fn=None, **kwargs) -> SampleResult:
        """As ``Sampler.run``; with ``metropolis=True`` also ``log_prob_fn(x, t) -> [B]`` (default
        ``score_fn.log_prob``) and a ``MetropolisResult``."""
        if not self.metropolis:
            if log_prob_fn is not None:
                raise ValueError("`log_prob_fn` is used only with `metropolis=True`")
            return super().run(score_fn, sde, shape, **kwargs)
        if not callable(score_fn):
            raise TypeError(f"`score_fn` must be callable as score(x, t), got {type(score_fn).__name__}")
        problem = _Metropolis(score_fn, resolve_log_prob(score_fn, log_prob_fn))
        result = super().run(problem, sde, shape, **kwargs)
        rate = float(problem.accepted) / problem.proposed if problem.proposed else float("nan")
        return MetropolisResult(result.x, result.nfe + problem.log_prob_evals, rate, problem.log_prob_evals)


def _check_common(sampler) -> None:
    check_positive("temperature", sampler.temperature)
    if not isinstance(sampler.metropolis, bool):
        raise TypeError(f"`metropolis` must be a bool, got {sampler.metropolis!r}")


@dataclass(frozen=True)
class Langevin(_MetropolisRun, Sampler):
    """Langevin dynamics with the score at one time ``t`` (None: ``sde.t_min``), at ``temperature`` T > 0.

    Unadjusted by default; ``metropolis=True`` is MALA (module docstring; NFE = 2 num_steps + 2).
    Defaults (eps = 0.005, 1000 steps, T = 1) suit the 2-D targets of ``scoresde.data.toy`` (smallest
    component variance 0.02): stable, and within-mode mixing in a few hundred steps.
    """

    step_size: float = 0.005
    num_steps: int = 1000
    t: float | None = None
    temperature: float = 1.0
    metropolis: bool = False

    def __post_init__(self):
        check_positive("step_size", self.step_size)
        check_steps("num_steps", self.num_steps)
        if self.t is not None and not isinstance(self.t, (int, float)):
            raise TypeError(f"`t` must be a number or None, got {self.t!r}")
        _check_common(self)

    def _run(self, score_fn, sde, x, generator, callback, progress):
        t = sde.t_min if self.t is None else float(self.t)
        if not sde.t_min <= t <= sde.T:
            raise ValueError(f"`t` must lie in [t_min, T] = [{sde.t_min:g}, {sde.T:g}], got {t}")
        tb = batch_time(t, x)
        if self.metropolis:
            problem = score_fn.score_fn
            score, log_p = score_fn(x, tb), problem.log_prob(x, tb)
        half, noise = self.step_size / 2, (self.step_size * self.temperature) ** 0.5
        for i in progress_bar(range(self.num_steps), progress, "Langevin"):
            if self.metropolis:
                x, score, log_p, x_mean = mala_step(
                    problem, score_fn, x, score, log_p, tb, self.step_size, self.temperature, generator)
            else:
                x_mean = x + half * score_fn(x, tb)
                x = x_mean + noise * randn_like(x, generator)
            if callback is not None:
                callback(StepInfo(i, self.num_steps, t, t, x, x_mean))
        return x


@dataclass(frozen=True)
class AnnealedLangevin(_MetropolisRun, Sampler):
    """Annealed Langevin dynamics (NCSN Alg. 1); NFE = num_levels * steps_per_level (+1 to denoise).

    ``step_size`` is NCSN's eps, the step at the last level (alpha_L = eps).  When it is None
    (default) it is set relative to the SDE, eps = ``step_ratio`` * sigma_L^2, so that
    alpha_i / sigma_i^2 = step_ratio at every level whatever the SDE's scale (NCSN's eps = 2e-5
    with sigma_L = 0.01 is step_ratio = 0.2).  A fixed eps tuned for VE (sigma_L = 0.01) would
    explode on VP, whose sigma_L = 0.0014.  ``temperature`` T scales the noise by sqrt(T) (target
    p_{t_i}^(1/T) at each level); ``metropolis=True`` makes every step a MALA step on p_{t_i}
    (module docstring; NFE = 2 num_levels (steps_per_level + 1) (+1)).

    Defaults (30 levels x 250 steps, step_ratio = 0.2 as in NCSN, final denoise) were tuned with
    the exact score on the 2-D targets of ``scoresde.data.toy`` from the VE prior.  Annealed Langevin
    keeps a bias on separated modes that smaller steps do not remove: on the NCSN 0.2 / 0.8 mixture
    (n = 40 000, two seeds each) the light mode's weight came out +0.0055/+0.0064 with these
    defaults, +0.008/+0.010 with 30 x 100 at ratio 0.5, +0.007/+0.009 with 60 x 100 at 0.5 and
    +0.007/+0.005 with 30 x 500 at 0.1; with 10 levels (a factor 2.3 apart) it is 0.03-0.04.  The
    weights freeze at the noise level where cross-mode mixing stops, and are those of the chain's
    basins there, not exactly the component weights.  The reverse-SDE samplers have no such bias.
    MALA at the same steps removes it (``benchmarks/mala.py``, n = 40 000, one seed each, VESDE from
    U([-8, 8]^2)): light weight 0.2074 (+3.7 floor sd) unadjusted, 0.1985 (-0.8 sd) with ``metropolis=True``
    (acceptance 0.996, NFE 15 061 vs 7 501).
    """

    step_size: float | None = None
    step_ratio: float = 0.2
    num_levels: int = 30
    steps_per_level: int = 250
    denoise: bool = True
    temperature: float = 1.0
    metropolis: bool = False

    def __post_init__(self):
        if self.step_size is not None:
            check_positive("step_size", self.step_size)
        check_positive("step_ratio", self.step_ratio)
        check_steps("num_levels", self.num_levels)
        check_steps("steps_per_level", self.steps_per_level)
        if self.num_levels * self.steps_per_level > MAX_STEPS:
            raise ValueError(
                f"`num_levels` * `steps_per_level` = {self.num_levels * self.steps_per_level} must be <= {MAX_STEPS}"
            )
        if not isinstance(self.denoise, bool):
            raise TypeError(f"`denoise` must be a bool, got {self.denoise!r}")
        _check_common(self)

    def _run(self, score_fn, sde, x, generator, callback, progress):
        ts = sde.timesteps(self.num_levels)
        sigmas = sde.sigma(ts)
        eps = self.step_ratio * float(sigmas[-1]) ** 2 if self.step_size is None else self.step_size
        step_sizes = (eps * sigmas**2 / sigmas[-1] ** 2).tolist()
        ts = ts.tolist()
        total = self.num_levels * self.steps_per_level
        x_mean = x
        for level in progress_bar(range(self.num_levels), progress, "AnnealedLangevin"):
            tb = batch_time(ts[level], x)
            half, noise = step_sizes[level] / 2, (step_sizes[level] * self.temperature) ** 0.5
            if self.metropolis:
                problem = score_fn.score_fn
                score, log_p = score_fn(x, tb), problem.log_prob(x, tb)
            for j in range(self.steps_per_level):
                if self.metropolis:
                    x, score, log_p, x_mean = mala_step(
                        problem, score_fn, x, score, log_p, tb, step_sizes[level], self.temperature, generator)
                else:
                    x_mean = x + half * score_fn(x, tb)
                    x = x_mean + noise * randn_like(x, generator)
                if callback is not None:
                    i = level * self.steps_per_level + j
                    callback(StepInfo(i, total, ts[level], ts[level], x, x_mean))
        if self.denoise:
            tb = batch_time(ts[-1], x)
            x = tweedie_denoise(score_fn(x, tb), sde, x, tb)
        return x
