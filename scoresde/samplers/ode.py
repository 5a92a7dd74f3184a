"""Probability-flow ODE sampler (Song et al. 2021, eq. 13): dx/dt = f(x, t) - g(t)^2 s(x, t) / 2.

Integrated from T down to the last grid time, then the final Tweedie denoise to clean data
(``base`` docstring).

* fixed-step, ``method`` "euler" | "heun" | "rk4", on any grid (``grid``, ``num_steps`` or
  ``run(..., ts=...)``), in **EDM's variables** (Karras et al. 2022, sec. 3): x~ = x/alpha against
  sigma~ = sigma/alpha, where the ODE reads dx~/dsigma~ = (x~ - D(x~; sigma~))/sigma~ = -sigma(t) s(x, t)
  with D = (x + sigma^2 s)/alpha, and its trajectories are nearly straight.  (Before grids existed
  these methods integrated in t; the change is deliberate: on a Karras grid Heun in t is ~4x worse.)
  "euler" is exactly DDIM (eta = 0) / k-diffusion's ``sample_euler`` on the same grid; NFE = N.
  "heun" is EDM's Alg. 1 except that the step into the last grid time is a plain Euler step (the
  velocity is evaluated at t_min only by the final denoise; one NFE fewer; still second order);
  NFE = 2N - 2 with the final denoise.  "rk4": classical Runge-Kutta in sigma~ on every step (the
  midpoint times come from ``SDE.t_from_sigma_ve``); NFE = 4(N - 1) + 1.
* adaptive, ``method`` one of scipy's "RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA": ``solve_ivp``
  in t on the flattened batch in float64 with ``rtol``, ``atol`` (score_sde: RK45, 1e-5, 1e-5; floor
  100 float64 eps).  One solver for the whole batch, as in score_sde: the step size is chosen for the
  worst sample, so results depend (slightly) on the batch (not batch-independent).  NFE = the
  solver's ``nfev`` + 1.  ``grid``/``num_steps``/``ts`` are not used.

Defaults: RK4 on the uniform-t grid with 10 grid times (NFE 37), chosen by measurement: on the
2-D targets of ``scoresde.data.toy`` under VP with the exact score and x_init from the exact p_T (n = 40 000,
sliced W2 / i.i.d. floor as in ``tests/test_samplers_targets.py``), RK4 uniform-10 gives 0.92 / 0.86 /
0.74 / 1.66 (eight Gaussians / 5x5 grid / anisotropic / NCSN 0.2-0.8), RK45 at rtol = atol = 1e-5
0.93 / 0.91 / 0.72 / 1.83 with NFE 87-105 (and 5-10x the wall time); Heun with 18 grid times (NFE 34)
1.72 / 1.81 / 1.47 / 0.90 on the uniform grid and 2.9 / 3.0 / 2.8 / 1.6 on the Karras grid (rho = 7,
sigma_max = sigma_ve(T) = 152 for VP: these low-dimensional targets need more steps at intermediate
noise than rho = 7 gives them).  Heun needs ~25-30 grid times (NFE ~50-60) for ~1.2x.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import integrators
from .._checks import check_in
from ..grids import Grid
from .base import FixedGridSampler, StepInfo, batch_time, tweedie_denoise

__all__ = ["ProbabilityFlowODE", "pf_ode_step"]


def pf_ode_step(ctx, x: torch.Tensor, i: int, method: str, start: tuple | None = None) -> torch.Tensor:
    """One fixed step of the PF-ODE to ts[i+1] in EDM's variables (module docstring): dx~/dsigma~ =
    -sigma(t) s(alpha x~, t), integrated by ``integrators.rk_step``; returns x at ts[i+1] (VP coordinates).

    ``start``: None to start from (x, ts[i]); or ``(x^, sigma~^, t^ [B], alpha^, sigma^)`` to start from
    x^ at the noise level sigma~^ = sigma(t^)/alpha(t^) (EDM's churned point, Alg. 2; ``EDMHeun``).
    Then the first velocity is taken at x^ itself, not at alpha^ (x^ / alpha^): equal in exact
    arithmetic, and how EDMHeun has always computed it (its outputs stay bit for bit); the plain
    start keeps the sampler's own arithmetic, alpha_i (x / alpha_i), for the same reason.
    """
    if start is None:
        s, x_start = ctx.sigma_ve(i), None
        knots = {s: (ctx.t(i, x), ctx.alpha(i), ctx.sigma(i))}
    else:
        x_start, s, t_start, alpha_start, sigma_start = start
        knots = {s: (t_start, alpha_start, sigma_start)}
        x = x_start
    s_next = ctx.sigma_ve(i + 1)
    knots[s_next] = (ctx.t(i + 1, x), ctx.alpha(i + 1), ctx.sigma(i + 1))

    def velocity(x_ve: torch.Tensor, sig: float) -> torch.Tensor:  # dx~/dsigma~ = -sigma(t) s(alpha x~, t)
        if sig in knots:
            tb, alpha, sigma = knots[sig]
        else:  # an intermediate stage (rk4): its time through the SDE
            t = ctx.sde.t_from_sigma_ve(torch.tensor([sig], dtype=torch.float64))
            alpha, sigma = float(ctx.sde.alpha(t)), float(ctx.sde.sigma(t))
            tb = batch_time(float(t), x_ve)
        point = x_start if x_start is not None and sig == s else alpha * x_ve  # only the first stage is at s
        return -sigma * ctx.score_at(point, tb)

    x_ve = integrators.rk_step(velocity, x / knots[s][1], s, s_next, method)
    return ctx.alpha(i + 1) * x_ve


@dataclass(frozen=True)
class ProbabilityFlowODE(FixedGridSampler):
    """Probability-flow ODE; ``method`` in rk4 | heun | euler (fixed steps in sigma/alpha) or a scipy method.

    ``num_steps``, ``grid`` are used by the fixed-step methods only; ``rtol``, ``atol`` by scipy only.
    """

    method: str = "rk4"
    rtol: float = 1e-5
    atol: float = 1e-5
    num_steps: int = 10
    denoise: bool = True
    grid: str | Grid = "uniform"

    def __post_init__(self):
        check_in("method", self.method, integrators.SCIPY_METHODS + integrators.FIXED_METHODS)
        integrators.check_tolerances(self.rtol, self.atol)
        self.check_grid_fields()

    @property
    def uses_grid(self) -> bool:
        return self.method in integrators.FIXED_METHODS

    def step(self, ctx, x, i):
        method = "euler" if self.method == "heun" and i == ctx.num_steps - 2 else self.method
        x = pf_ode_step(ctx, x, i, method)
        return x, x

    def _sample(self, score_fn, sde, x, generator, callback, progress, ts):
        if self.uses_grid:
            return super()._sample(score_fn, sde, x, generator, callback, progress, ts)

        def velocity(y, t):
            tb = batch_time(t, y[0])
            return (sde.reverse_drift(y[0], tb, score_fn(y[0], tb), probability_flow=True),)

        (x,) = integrators.solve_adaptive(
            velocity, (x,), sde.T, sde.t_min, method=self.method, rtol=self.rtol, atol=self.atol,
            what="probability-flow ODE",
        )
        if callback is not None:
            score_fn.check_finite()
            callback(StepInfo(0, 1, sde.T, sde.t_min, x, x))
        if self.denoise:
            tb = batch_time(sde.t_min, x)
            x = tweedie_denoise(score_fn(x, tb), sde, x, tb)
        return x
