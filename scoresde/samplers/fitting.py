"""Noise grids fitted to the model: LD3-style learned steps and a GITS-style dynamic programme.

Both build a ``scoresde.grids.FittedGrid`` for one (score, SDE, deterministic sampler, num_steps),
from prior draws x_T and the outputs of a high-accuracy teacher from the *same* draws:

* ``fit_grid`` (LD3: Tong et al., "Learning to Discretize Denoising Diffusion ODEs", ICLR 2025,
  Sec. 3, eq. 6-7): the N grid times are a monotone function of parameters theta in R^N,

      log sigma~_i = log sigma~(T) - L sum_{j < i} softmax(theta)_j,   i = 0 .. N-1,
      L = log sigma~(T) - log sigma~(t_min),

  (``docs/conventions.md``, "Fitted grids"; sigma~ = sigma/alpha, the last softmax weight is the
  gap left between the last grid time and t_min, so the end is learned too, and t_0 = T is fixed
  because x_T is a prior draw).  theta minimises the mean squared distance ||x_0^N(theta) - x_0^teacher||^2
  between the N-step sampler's output and the teacher's on a training batch of draws, by Adam with
  gradients through the sampler (``differentiable_sample``); the grid with the lowest error on a
  held-out validation batch is kept.  Started from the best standard grid on the training batch.
  (LD3's relaxed "ball" loss for images is not used: in low dimension plain L2 worked.)
* ``dp_grid`` (in ``samplers.fit_dp``, importable from here; GITS: Chen et al., "On the Trajectory Regularity of ODE-based Diffusion Sampling",
  ICML 2024, Sec. 4, Alg. 1): teacher states on a fine candidate grid of M times (uniform in
  log sigma~); the cost of one step between candidates i -> j is the mean distance between the
  first-order (DDIM / Euler in sigma~) step from the teacher state at i and the teacher state at j,
  the cost of the final denoise from i is |D(x_i) - x_0^teacher|; dynamic programming picks the
  N - 1 steps (any end) of least total cost.  No gradients, one model evaluation per candidate.

Both return the better of their grid and the best standard grid (uniform, karras, log_snr) on the
validation batch, and say which (``FitResult.method``, ``FittedGrid.method``): a fitted grid is
never worse than a standard one on held-out draws.  A fit is a pure function of its inputs and
``seed`` (CPU, float64): refitting with the same seed writes the same file.

The differentiable path: ``Sampler.run`` keeps its ``torch.no_grad()`` loop untouched; the fit
drives the same ``step`` / ``finish`` methods with a ``DifferentiableContext``, a ``StepContext``
whose per-grid-time alpha, sigma, lambda and time tensors are 0-d tensors computed from the grid
with gradients (the multistep solvers' coefficient functions accept those, ``samplers._scalar``).
Its output equals ``sampler.run(..., ts=ts)`` to float round-off (tests/test_fitting.py).
Stochastic samplers (per-step noise fitted with the grid, AdaSDE-style): ``samplers.fit_stochastic``,
which drives the same loop (``drive``) with the sampler's noise generator.
Supported: the deterministic samplers ``DDIM`` (eta = 0), ``DPMSolverPP`` (eta = 0, orders 1-3),
``UniPC``, ``EDMHeun`` (s_churn = 0), ``ProbabilityFlowODE`` ("euler", "heun").
"""
from __future__ import annotations

import dataclasses
import logging
import math
import resource
from dataclasses import dataclass
from typing import Callable

import torch

from .._checks import check_int, check_positive, trusted_times
from ..grids import GRID_NAMES, FittedGrid, check_ts
from ..sdes import SDE, ScoreFn
from .base import FixedGridSampler, StepContext
from .dpm_solver import DPMSolverPP
from .edm import EDMHeun
from .ode import ProbabilityFlowODE
from .pc import DDIM
from .scorecalls import CountedScore
from .unipc import UniPC

__all__ = [
    "DifferentiableContext", "differentiable_sample", "drive", "time_of_sigma_ve", "check_fittable", "LogSigmaGrid",
    "FitResult", "fit_grid", "dp_grid", "default_teacher", "STANDARD_GRIDS",
]

log = logging.getLogger(__name__)
F64 = torch.float64
STANDARD_GRIDS = ("uniform", "karras", "log_snr")


def check_fittable(sampler) -> FixedGridSampler:
    """``sampler`` must be one of the deterministic fixed-grid samplers listed in the module docstring."""
    ok = {
        DDIM: lambda s: s.eta == 0,
        DPMSolverPP: lambda s: s.eta == 0,
        UniPC: lambda s: True,
        EDMHeun: lambda s: s.s_churn == 0,
        ProbabilityFlowODE: lambda s: s.method in ("euler", "heun"),
    }
    rule = ok.get(type(sampler))
    if rule is None or not rule(sampler):
        raise ValueError(
            f"`sampler` must be a deterministic fixed-grid sampler (DDIM(eta=0), DPMSolverPP(eta=0), UniPC, "
            f"EDMHeun(s_churn=0), ProbabilityFlowODE(method='euler' | 'heun')), got {sampler!r}"
        )
    return sampler


class DifferentiableContext(StepContext):
    """A ``StepContext`` whose grid quantities are tensors carrying gradients with respect to ``ts``.

    alpha(i), sigma(i), sigma_ve(i), lambda_(i) are 0-d float64 tensors; t(i, x) is ts[i] as a
    ``[B]`` tensor in x's dtype.  Values equal the ordinary context's floats to round-off.
    """

    def __init__(self, score_fn, sde: SDE, ts: torch.Tensor, generator=None):
        super().__init__(score_fn, sde, ts.detach(), generator)
        self.ts_grad = ts
        self._alpha = list(sde.log_alpha(ts).exp().unbind())
        self._sigma = list(sde.sigma(ts).unbind())

    def t(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.ts_grad[i].to(x.dtype) * torch.ones(x.shape[0], dtype=x.dtype, device=x.device)

    def lambda_(self, i: int) -> torch.Tensor:
        return torch.log(self._alpha[i]) - torch.log(self._sigma[i])

    def at_sigma_ve(self, sigma_ve: torch.Tensor, x: torch.Tensor):
        """(t [B] in x's dtype, alpha(t), sigma(t)) at the noise level ``sigma_ve`` (a 0-d tensor off the grid,
        EDM's churned sigma^), differentiable; the ordinary path computes the same in floats (``EDMHeun``)."""
        t = time_of_sigma_ve(self.sde, sigma_ve.reshape(1)).clamp(self.sde.t_min, self.sde.T)
        alpha, sigma = self.sde.alpha(t)[0], self.sde.sigma(t)[0]
        return t[0].to(x.dtype) * torch.ones(x.shape[0], dtype=x.dtype, device=x.device), alpha, sigma


def time_of_sigma_ve(sde: SDE, sig: torch.Tensor) -> torch.Tensor:
    """``sde.t_from_sigma_ve(sig)`` with a gradient also where the inverse is a bisection (implicit function
    theorem: dt/dsigma~ = 1 / sigma~'(t)); float64."""
    with trusted_times():
        t = sde.t_from_sigma_ve(sig)
        if not t.requires_grad and sig.requires_grad:  # a bisection inverse: implicit gradient
            tt = t.detach().requires_grad_(True)
            with torch.enable_grad():
                (dsig,) = torch.autograd.grad(sde.sigma_ve(tt).sum(), tt)
            t = t.detach() + (sig - sig.detach()) / dsig
    return t


def differentiable_sample(
    sampler, score_fn: ScoreFn, sde: SDE, x_init: torch.Tensor, ts: torch.Tensor
) -> torch.Tensor:
    """The sampler's output from ``x_init`` on the grid ``ts`` (a float64 tensor that may require grad),
    differentiable with respect to ``ts`` (and ``x_init``); equals ``sampler.run(score_fn, sde,
    x_init=x_init, ts=ts).x`` to round-off.  The grid is not range-checked here (the caller's own)."""
    check_fittable(sampler)
    return drive(sampler, score_fn, sde, x_init, ts)


def drive(sampler, score_fn: ScoreFn, sde: SDE, x_init: torch.Tensor, ts: torch.Tensor,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """The loop of ``differentiable_sample`` without the check of ``sampler`` (``fit_stochastic`` passes
    stochastic samplers and their noise ``generator``; noise is drawn as ``Sampler.run`` draws it)."""
    counted = CountedScore(score_fn)
    ctx = DifferentiableContext(counted, sde, ts, generator)
    x = x_init
    with torch.enable_grad(), trusted_times():
        for i in range(ctx.num_steps - 1):
            counted.step = i
            x, _ = sampler.step(ctx, x, i)
        counted.step = ctx.num_steps - 1
        out = sampler.finish(ctx, x)
    counted.check_finite()
    return x if out is None else out[0]


class LogSigmaGrid:
    """The monotone parameterisation of N grid times by theta in R^N (module docstring)."""

    def __init__(self, sde: SDE, num_steps: int):
        self.sde, self.num_steps = sde, check_int("num_steps", num_steps, minimum=2)
        ends = sde.sigma_ve(torch.tensor([sde.T, sde.t_min], dtype=F64))
        self.log_hi, self.log_lo = float(ends[0].log()), float(ends[1].log())
        self.span = self.log_hi - self.log_lo

    def times(self, theta: torch.Tensor) -> torch.Tensor:
        """theta [N] -> ts [N] (float64, t_0 = T, strictly decreasing, in [t_min, T])."""
        w = torch.softmax(theta.to(F64), 0)
        log_sig = self.log_hi - self.span * torch.cat([w.new_zeros(1), torch.cumsum(w[:-1], 0)])
        t = time_of_sigma_ve(self.sde, log_sig.exp())
        t = t.clamp(self.sde.t_min, self.sde.T)
        return torch.cat([t.new_full((1,), self.sde.T), t[1:]])

    def theta_of(self, ts: torch.Tensor) -> torch.Tensor:
        """theta for a grid starting at T (a standard grid): log of its log-sigma~ increments; the gap
        after the last time is kept at least 1e-3 L / N so that the end stays free to move."""
        sig = self.sde.sigma_ve(ts.to(F64))
        inc = -torch.diff(sig.log())
        gap = torch.tensor([float(sig[-1].log()) - self.log_lo], dtype=F64)
        w = torch.cat([inc, gap]).clamp_min(1e-3 * self.span / self.num_steps)
        return (w / w.sum()).log()


@dataclass(frozen=True)
class FitResult:
    """What a fit returns: the grid (fitted, or the standard grid it fell back to) and its record.

    ``method``: "ld3" / "dp", or the standard grid's name when that was better on validation;
    ``val_rmse``: root-mean-square distance (over samples, norm over data dims) to the teacher on the
    validation draws, per candidate (``"fitted"``, each standard grid, and for ``fit_grid`` the DP grid
    ``"dp"``); ``history``: (iteration, train rmse, val rmse) of the fit; ``cpu_s``: the fit's CPU time
    (user + system, this process); ``candidates``: the times of every candidate grid.
    """

    grid: FittedGrid
    method: str
    val_rmse: dict
    train_rmse: dict
    cpu_s: float
    history: list
    candidates: dict = dataclasses.field(default_factory=dict)

    @property
    def ts(self) -> torch.Tensor:
        return self.grid.ts_tensor()


def default_teacher() -> ProbabilityFlowODE:
    """The teacher: the PF-ODE by scipy's RK45 at rtol = atol = 1e-7 in float64 (adaptive, tight)."""
    return ProbabilityFlowODE(method="RK45", rtol=1e-7, atol=1e-7)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rmse(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(((x - y) ** 2).flatten(1).sum(1).mean().sqrt())


def _standard_candidates(sampler, sde, num_steps) -> dict:
    out = {}
    for name in STANDARD_GRIDS:
        try:
            out[name] = check_ts(GRID_NAMES[name](sde, num_steps), sde)
        except ValueError:  # a grid that does not exist for this SDE
            continue
    return out


class _Problem:
    """The shared set-up of both fits: prior draws, teacher outputs, evaluation of a grid."""

    def __init__(self, score_fn, sde, sampler, num_steps, event_shape, num_train, num_val, seed, teacher, device=None):
        self.score_fn, self.sde, self.num_steps = score_fn, sde, num_steps
        self.sampler = dataclasses.replace(check_fittable(sampler), num_steps=num_steps)
        g = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same draws on any device
        self.x_train = sde.prior_sample((num_train, *event_shape), g, dtype=F64).to(device)
        self.x_val = sde.prior_sample((num_val, *event_shape), g, dtype=F64).to(device)
        teacher = default_teacher() if teacher is None else teacher
        both = torch.cat([self.x_train, self.x_val])
        run = teacher.run(score_fn, sde, x_init=both, generator=torch.Generator(both.device).manual_seed(seed + 1))
        self.teacher_nfe = run.nfe
        self.y_train, self.y_val = run.x[:num_train].to(F64), run.x[num_train:].to(F64)

    def output(self, ts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.sampler.run(self.score_fn, self.sde, x_init=x, ts=ts).x

    def rmse(self, ts: torch.Tensor, which: str) -> float:
        x, y = (self.x_train, self.y_train) if which == "train" else (self.x_val, self.y_val)
        out = self.output(ts, x)
        return _rmse(out, y) if bool(torch.isfinite(out).all()) else math.inf

    def choose(self, fitted_ts: torch.Tensor, method: str, history: list, cpu0: float, info: dict,
               extra: dict | None = None) -> FitResult:
        """The better of the fitted grid and the best standard grid on the validation draws (``extra``:
        more grids to report, not to choose from)."""
        cands = {"fitted": fitted_ts, **_standard_candidates(self.sampler, self.sde, self.num_steps)}
        val = {k: self.rmse(ts, "val") for k, ts in {**cands, **(extra or {})}.items()}
        train = {k: self.rmse(ts, "train") for k, ts in {**cands, **(extra or {})}.items()}
        best = min(cands, key=lambda k: (val[k], k != "fitted"))
        chosen = method if best == "fitted" else best
        if best != "fitted":
            log.info("fitted grid (%s) is worse on validation (%.4g) than the standard grid %s (%.4g): falling back",
                     method, val["fitted"], best, val[best])
        cpu = _cpu() - cpu0
        record = {**info, "method": chosen, "fit": method, "val_rmse": val, "train_rmse": train, "cpu_s": cpu,
                  "teacher_nfe": self.teacher_nfe, "num_train": len(self.x_train), "num_val": len(self.x_val)}
        grid = FittedGrid(tuple(cands[best].tolist()), repr(self.sde), repr(self.sampler), chosen, record)
        grids_ = {k: tuple(v.tolist()) for k, v in {**cands, **(extra or {})}.items()}
        return FitResult(grid, chosen, val, train, cpu, history, grids_)


def _check_common(score_fn, sde, num_steps, event_shape, num_train, num_val, seed):
    if not isinstance(sde, SDE):
        raise TypeError(f"`sde` must be a scoresde.sdes.SDE, got {type(sde).__name__}")
    if not callable(score_fn):
        raise TypeError(f"`score_fn` must be callable as score(x, t), got {type(score_fn).__name__}")
    check_int("num_steps", num_steps, minimum=2, maximum=1000)
    check_int("num_train", num_train)
    check_int("num_val", num_val)
    check_int("seed", seed, minimum=0)
    if not isinstance(event_shape, (tuple, list)) or not event_shape or any(
            isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in event_shape):
        raise ValueError(f"`event_shape` must be a non-empty tuple of positive ints (the shape of one sample), "
                         f"got {event_shape!r}")
    return tuple(event_shape)


def fit_grid(
    score_fn: ScoreFn, sde: SDE, sampler, num_steps: int, event_shape: tuple[int, ...], *,
    num_train: int = 512, num_val: int = 512, seed: int = 0, iterations: int = 150, lr: float = 0.05,
    eval_every: int = 5, teacher=None, init: torch.Tensor | None = None, dp_candidates: int = 96,
    callback: Callable[[int, float, float], None] | None = None, device: torch.device | str | None = None,
) -> FitResult:
    """LD3-style learned grid for ``sampler`` with ``num_steps`` grid times (module docstring).

    Args:
        score_fn, sde: the problem (a trained model's ``score_fn`` or an exact mixture score).
        sampler: a deterministic fixed-grid sampler (``check_fittable``); its ``num_steps`` is replaced.
        num_steps: N, the grid times (NFE of most samplers, 2N - 1 for EDM Heun).
        event_shape: the shape of one sample (``(2,)`` for 2-D data).
        num_train, num_val: prior draws for the fit and for the held-out choice.
        seed: all randomness (the draws); the same seed gives the same grid, bit for bit.
        iterations, lr, eval_every: Adam steps on theta, its learning rate, validation interval.
        teacher: any sampler run on the same draws (default ``default_teacher()``).
        init: ts to start from (default: the best on the training draws of the standard grids and
            the DP grid of ``dp_grid`` (on ``dp_candidates`` candidate times), which is then also
            reported as candidate "dp").
        callback: called as ``callback(iteration, train_loss, val_rmse)`` at each validation.
        device: where the score is evaluated (the draws are made on the CPU, so the grid does not
            depend on it beyond round-off); default CPU.
    """
    cpu0 = _cpu()
    event_shape = _check_common(score_fn, sde, num_steps, event_shape, num_train, num_val, seed)
    check_int("iterations", iterations, minimum=0)
    check_int("eval_every", eval_every)
    check_int("dp_candidates", dp_candidates, minimum=2)
    check_positive("lr", lr)
    prob = _Problem(score_fn, sde, sampler, num_steps, event_shape, num_train, num_val, seed, teacher, device)
    param = LogSigmaGrid(sde, num_steps)
    extra = {}
    if init is None:
        cands = _standard_candidates(prob.sampler, sde, num_steps)
        cands["dp"] = extra["dp"] = _dp_times(prob, candidates=max(dp_candidates, 2 * num_steps), substeps=4)
        start = min(cands, key=lambda k: prob.rmse(cands[k], "train"))
        init, info = cands[start], {"init": start}
    else:
        init, info = check_ts(init, sde, "init"), {"init": "given"}
        if len(init) != num_steps:
            raise ValueError(f"`init` must have num_steps = {num_steps} times, got {len(init)}")
    theta = param.theta_of(init).clone().requires_grad_(True)
    adam = _Adam(theta, lr)
    best_ts, best_val, history = param.times(theta).detach(), math.inf, []
    for it in range(iterations + 1):
        ts = param.times(theta)
        if it % eval_every == 0 or it == iterations:
            val = prob.rmse(ts.detach(), "val")
            if val < best_val:
                best_ts, best_val = ts.detach().clone(), val
        if it == iterations:
            break
        out = differentiable_sample(prob.sampler, score_fn, sde, prob.x_train, ts)
        loss = ((out - prob.y_train) ** 2).flatten(1).sum(1).mean()
        if it % eval_every == 0:
            history.append((it, float(loss.detach().sqrt()), val))
            if callback is not None:
                callback(it, float(loss.detach().sqrt()), val)
        if not bool(torch.isfinite(loss)):
            log.warning("fit_grid: non-finite loss at iteration %d; keeping the best grid so far", it)
            break
        (grad,) = torch.autograd.grad(loss, theta)
        adam.step(grad)
    info.update(iterations=iterations, lr=lr, seed=seed)
    return prob.choose(best_ts, "ld3", history, cpu0, info, extra)


class _Adam:
    """Adam (Kingma & Ba 2015, Alg. 1; beta1 = 0.9, beta2 = 0.999, eps = 1e-8) on one tensor, in place.

    torch.optim.Adam gives the same steps; this avoids its import of torch._dynamo (~1.3 s of CPU,
    a visible share of a fit that takes a few seconds)."""

    def __init__(self, param: torch.Tensor, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.param, self.lr, self.betas, self.eps, self.k = param, lr, betas, eps, 0
        self.m, self.v = torch.zeros_like(param), torch.zeros_like(param)

    def step(self, grad: torch.Tensor) -> None:
        b1, b2 = self.betas
        self.k += 1
        self.m.mul_(b1).add_(grad, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        m_hat, v_hat = self.m / (1 - b1**self.k), self.v / (1 - b2**self.k)
        with torch.no_grad():
            self.param.sub_(self.lr * m_hat / (v_hat.sqrt() + self.eps))


from .fit_dp import _dp_path, _dp_times, dp_grid  # noqa: E402, F401  (the GITS-style DP, importable from here as before)
