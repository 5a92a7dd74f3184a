"""The GITS-style dynamic-programming grid (Chen et al., "On the Trajectory Regularity of ODE-based
Diffusion Sampling", ICML 2024, Sec. 4, Alg. 1); see ``samplers.fitting``'s module docstring.

Teacher states on a fine candidate grid of M times (uniform in log sigma~); the cost of one step
between candidates i -> j is the mean distance between the first-order (DDIM / Euler in sigma~) step
from the teacher state at i and the teacher state at j, the cost of the final denoise from i is
|D(x_i) - x_0^teacher|; dynamic programming picks the N - 1 steps (any end) of least total cost.
``dp_grid`` is also importable from ``scoresde.samplers.fitting``, where ``fit_grid`` uses it as a start.
"""
from __future__ import annotations

import math

import torch

from .._checks import check_int, trusted_times
from ..sdes import SDE, ScoreFn
from .fitting import F64, FitResult, LogSigmaGrid, _check_common, _cpu, _Problem
from .ode import ProbabilityFlowODE

__all__ = ["dp_grid"]


def dp_grid(
    score_fn: ScoreFn, sde: SDE, sampler, num_steps: int, event_shape: tuple[int, ...], *,
    num_train: int = 512, num_val: int = 512, seed: int = 0, candidates: int = 96, substeps: int = 4,
    teacher=None, device: torch.device | str | None = None,
) -> FitResult:
    """GITS-style dynamic-programming grid (module docstring); the same draws and fallback as ``fit_grid``.

    ``candidates``: M times uniform in log sigma~ from T to t_min; the teacher states there come from
    RK4 in EDM's variables with ``substeps`` steps per candidate interval (4 (M - 1) substeps).
    """
    cpu0 = _cpu()
    event_shape = _check_common(score_fn, sde, num_steps, event_shape, num_train, num_val, seed)
    check_int("candidates", candidates, minimum=num_steps)
    check_int("substeps", substeps)
    prob = _Problem(score_fn, sde, sampler, num_steps, event_shape, num_train, num_val, seed, teacher, device)
    ts = _dp_times(prob, candidates, substeps)
    info = {"candidates": candidates, "substeps": substeps, "seed": seed}
    return prob.choose(ts, "dp", [], cpu0, info)


def _dp_times(prob: _Problem, candidates: int, substeps: int) -> torch.Tensor:
    """The DP grid of ``dp_grid`` on the problem's training draws."""
    score_fn, sde, num_steps = prob.score_fn, prob.sde, prob.num_steps
    fine = LogSigmaGrid(sde, candidates)
    cand_ts = fine.times(torch.zeros(candidates, dtype=F64))  # uniform in log sigma~, the last at lo + span/M
    cand_ts[-1] = sde.t_min
    fine_ts = _refine(sde, cand_ts, substeps)
    states = {}

    def keep(info):
        if info.step % substeps == substeps - 1:
            states[len(states) + 1] = info.x

    rk4 = ProbabilityFlowODE(method="rk4", num_steps=len(fine_ts), denoise=False)
    x = prob.x_train
    rk4.run(score_fn, sde, x_init=x, ts=fine_ts, callback=keep)
    xs = [x] + [states[k] for k in sorted(states)]  # teacher states at the M candidates
    y = prob.y_train
    with torch.no_grad(), trusted_times():
        alpha = sde.alpha(cand_ts).tolist()
        sig = sde.sigma(cand_ts).tolist()
        D, d = [], []
        for i, xi in enumerate(xs):
            s = score_fn(xi, torch.full((len(xi),), float(cand_ts[i]), dtype=xi.dtype, device=xi.device))
            D.append((xi + sig[i] ** 2 * s) / alpha[i])
            d.append(-sig[i] * s)  # dx~/dsigma~
        sve = [s_ / a for s_, a in zip(sig, alpha)]
        M = len(xs)
        cost = torch.full((M, M), math.inf, dtype=F64)
        for i in range(M - 1):
            xt = xs[i] / alpha[i]
            for j in range(i + 1, M):
                pred = alpha[j] * (xt + (sve[j] - sve[i]) * d[i])
                cost[i, j] = (pred - xs[j]).flatten(1).norm(dim=1).mean()
        final = torch.tensor([float((D[i] - y).flatten(1).norm(dim=1).mean()) for i in range(M)], dtype=F64)
    return cand_ts[_dp_path(cost, final, num_steps)]


def _dp_path(cost: torch.Tensor, final: torch.Tensor, num_steps: int) -> list[int]:
    """Indices 0 = i_0 < ... < i_{N-1} minimising sum_k cost[i_k, i_{k+1}] + final[i_{N-1}] (Bellman recursion
    over the number of steps taken; ``cost`` is +inf where a step is not allowed)."""
    value = torch.full((len(final),), math.inf, dtype=F64)
    value[0] = 0.0
    back = []
    for _ in range(num_steps - 1):
        value, arg = (value[:, None] + cost).min(0)
        back.append(arg)
    path = [int(torch.argmin(value + final))]
    for arg in reversed(back):
        path.append(int(arg[path[-1]]))
    return path[::-1]


def _refine(sde: SDE, ts: torch.Tensor, substeps: int) -> torch.Tensor:
    """``substeps`` steps uniform in log sigma~ inside each interval of ``ts`` (the ends kept exactly)."""
    sig = sde.sigma_ve(ts).log()
    parts = [ts[:1]]
    for i in range(len(ts) - 1):
        inner = torch.linspace(float(sig[i]), float(sig[i + 1]), substeps + 1, dtype=F64)[1:-1].exp()
        parts += [sde.t_from_sigma_ve(inner).to(F64), ts[i + 1:i + 2]]
    return torch.cat(parts)
