"""EDM's Heun sampler (Karras et al. 2022, "Elucidating the design space...", Alg. 1 and Alg. 2).

In EDM's variables x~ = x/alpha, sigma~ = sigma/alpha (k-diffusion's sigma), with the denoiser
D(x~; sigma~) = (x + sigma^2 s(x, t))/alpha and d = (x~ - D)/sigma~, on the grid sigma~_0 > ... > sigma~_{N-1}
and sigma~_N = 0 (the final step), for i = 0 .. N-1:

    gamma_i = min(S_churn / N, sqrt(2) - 1) if S_tmin <= sigma~_i <= S_tmax else 0
    sigma^ = sigma~_i (1 + gamma_i)                                   (capped at sigma~(T), see below)
    x^ = x~_i + sqrt(sigma^^2 - sigma~_i^2) S_noise z                (Alg. 2 churn; skipped if gamma = 0)
    d = (x^ - D(x^; sigma^)) / sigma^
    x~_{i+1} = x^ + (sigma~_{i+1} - sigma^) d                           (Euler)
    if sigma~_{i+1} > 0:  x~_{i+1} = x^ + (sigma~_{i+1} - sigma^) (d + d')/2,  d' at (x~_{i+1}, sigma~_{i+1})

With S_churn = 0 this is Alg. 1 (deterministic), i.e. k-diffusion's ``sample_heun`` on the sigmas
(sigma~_0 .. sigma~_{N-1}, 0).  The Heun step is the probability-flow ODE's (``ode.pf_ode_step``,
method "heun"), started from the churned point (x^, sigma~^).  The step to sigma~ = 0 is Euler,
x_0 = D(x^; sigma^): Tweedie's formula (``bridges.tweedie``) at the churned point (``denoise=False``
stops at the last grid time instead).  NFE = 2N - 1.
The state is kept in VP coordinates x = alpha x~ between steps, and times come from the SDE
(sigma^ through ``SDE.t_from_sigma_ve``), so any SDE works.  Differences from EDM: sigma^ is capped
at sigma~(T), because the score is defined on [t_min, T] only (EDM lets churn push above sigma_max);
gamma uses N = the number of grid times (EDM's and k-diffusion's N).  Defaults: S_churn = 0,
S_tmin = 0, S_tmax = inf, S_noise = 1 (EDM's ImageNet settings are 80, 0.05, 50, 1.003).

Per-step churn: ``s_churn`` may be a sequence of N values S_churn,i, one per grid time (the churn
before the step out of ts[i], the last one before the final denoise): gamma_i = min(S_churn,i / N,
sqrt(2) - 1), the per-step stochastic coefficient gamma_i of AdaSDE (Wang et al. 2025, "Adaptive
stochastic coefficients for accelerating diffusion sampling", arXiv:2510.23285), fitted by
``samplers.fit_stochastic``.  A constant sequence gives the scalar's samples bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import check_nonnegative, check_positive
from ..bridges import tweedie
from ..grids import Grid
from . import _per_step, _scalar
from .base import FixedGridSampler, StepContext, batch_time
from .ode import pf_ode_step

__all__ = ["EDMHeun"]


@dataclass(frozen=True)
class EDMHeun(FixedGridSampler):
    """EDM Heun sampler, deterministic (Alg. 1, ``s_churn = 0``) or stochastic (Alg. 2); module docstring."""

    num_steps: int = 18
    s_churn: float | tuple[float, ...] = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0
    denoise: bool = True
    grid: str | Grid = "karras"

    def __post_init__(self):
        self.check_grid_fields()
        object.__setattr__(self, "s_churn", _per_step.check_coefficient("s_churn", self.s_churn))
        _per_step.check_length("s_churn", self.s_churn, self.num_steps, "times (num_steps)")
        check_nonnegative("s_tmin", self.s_tmin)
        check_positive("s_tmax", self.s_tmax, allow_inf=True)
        check_positive("s_noise", self.s_noise)

    def _churn(self, ctx: StepContext, x: torch.Tensor, i: int):
        """Alg. 2 lines 4-6 in VP coordinates: (x^, sigma~^, t^ [B], alpha(t^), sigma(t^)); no-op when gamma = 0."""
        sig = ctx.sigma_ve(i)
        s_churn = _per_step.at(self.s_churn, i)
        gamma = min(s_churn / ctx.num_steps, math.sqrt(2) - 1) if self.s_tmin <= sig <= self.s_tmax else 0.0
        if "sigma_ve_T" not in ctx.state:
            ctx.state["sigma_ve_T"] = float(ctx.sde.sigma_ve(torch.tensor([ctx.sde.T], dtype=torch.float64)))
        sig_hat = min(sig * (1 + gamma), ctx.state["sigma_ve_T"])
        if gamma == 0 or sig_hat <= sig:
            return x, sig, ctx.t(i, x), ctx.alpha(i), ctx.sigma(i)
        x_ve = x / ctx.alpha(i) + _scalar.sqrt(sig_hat**2 - sig**2) * self.s_noise * ctx.noise(x)
        if torch.is_tensor(sig_hat):  # the differentiable path of samplers.fit_stochastic: (t^ [B], alpha^, sigma^)
            t_hat, alpha, sigma = ctx.at_sigma_ve(sig_hat, x)
            return alpha * x_ve, sig_hat, t_hat, alpha, sigma
        t_hat = ctx.sde.t_from_sigma_ve(torch.tensor([sig_hat], dtype=torch.float64)).clamp(ctx.sde.t_min, ctx.sde.T)
        alpha, sigma = float(ctx.sde.alpha(t_hat)), float(ctx.sde.sigma(t_hat))
        return alpha * x_ve, sig_hat, batch_time(float(t_hat), x), alpha, sigma

    def _sample(self, score_fn, sde, x, generator, callback, progress, ts):
        _per_step.check_length("s_churn", self.s_churn, self.num_steps if ts is None else len(ts), "times")
        return super()._sample(score_fn, sde, x, generator, callback, progress, ts)

    def step(self, ctx, x, i):
        # Alg. 2 lines 4-6 (churn), then lines 7-11: Heun's step of the PF-ODE from (x^, sigma~^) to sigma~_{i+1}
        # (d = -sigma(t^) s(x^, t^), Euler, trapezoidal correction with d' at the Euler point)
        x = pf_ode_step(ctx, x, i, "heun", start=self._churn(ctx, x, i))
        return x, x

    def final_step(self, ctx, x):
        # Alg. 2's last step, sigma~_N = 0: churn, then Euler to sigma~ = 0, which is D(x^; sigma~^).  The base
        # class's ``final_step`` is the same Tweedie step at the grid time, i.e. without churn.
        x_hat, _, t_hat, alpha_hat, sigma_hat = self._churn(ctx, x, ctx.num_steps - 1)
        x0 = tweedie(x_hat, ctx.score_at(x_hat, t_hat), alpha_hat, sigma_hat)
        return x0, x0
