"""Stochastic samplers with fitted steps and fitted per-step noise, in the manner of AdaSDE.

AdaSDE (Wang, Zhu, Li, Yuan & Zhang, "Adaptive stochastic coefficients for accelerating diffusion
sampling", NeurIPS 2025, arXiv:2510.23285) gives a few-step stochastic sampler one learnable
coefficient per step, gamma_i, the strength of EDM's noise injection, and fits it to the model.
``fit_stochastic`` fits, jointly, the N grid times (LD3's monotone parameterisation,
``fitting.LogSigmaGrid``) and one noise coefficient per noisy step of

* ``EDMHeun`` (Karras et al. 2022, Alg. 2 lines 4-6): sigma^ = sigma~_i (1 + gamma_i),
  x^ = x~_i + sqrt(sigma^^2 - sigma~_i^2) S_noise z, then the Heun step (Alg. 2 lines 7-11);
  gamma_i = g_max sigmoid(phi_i), g_max = sqrt(2) - 1 (EDM's cap), i = 0 .. N-1; stored as the
  per-step ``s_churn`` = (N gamma_0, ..., N gamma_{N-1}) (``EDMHeun``: gamma_i = min(S_churn,i / N, g_max));
* ``DPMSolverPP`` with eta > 0 (the SDE variant of DPM-Solver++, Lu et al. 2022, in the form of
  k-diffusion's ``sample_dpmpp_2m_sde`` and diffusers' "sde-dpmsolver++"; ``DPMSolverPP``'s docstring): step i from s = ts[i] to t = ts[i+1], h = lambda_t - lambda_s,
  x_t = (sigma_t/sigma_s) e^{-eta_i h} x_s + alpha_t [(1 - e^{-(1+eta_i) h}) D_0 + ...] + sigma_t sqrt(1 - e^{-2 eta_i h}) z;
  eta_i = eta_max sigmoid(phi_i), eta_max = 2, i = 0 .. N-2 (order 1 with eta = 1 is DDIM with
  eta = 1, DDPM's ancestral step, to round-off: ``DPMSolverPP(order=1, eta=1)`` is the ancestral case).

**Loss.** A stochastic sampler has no pathwise teacher (its output is not a function of x_T), so the
fit matches distributions: the squared maximum mean discrepancy (U-statistic, Gretton et al. 2012,
eq. 3) between the sampler's outputs x_i, i = 1..n, and teacher samples y_j drawn from *other* prior
draws,

    MMD^2 = mean_{i != i'} k(x_i, x_i') + mean_{j != j'} k(y_j, y_j') - 2 mean_{i, j} k(x_i, y_j),

with kernel "energy" k(x, y) = -|x - y| (then MMD^2 is the energy distance of Szekely & Rizzo
2013, eq. 2.1; no bandwidth to choose) or "gaussian", sum_b exp(-|x - y|^2 / (2 b^2)) over
b = m {1/8, 1/4, 1/2, 1, 2}, m the teacher samples' median pairwise distance; both cost O(n^2).
Or ("sliced", O(P n log n), so n can be large) the sliced Wasserstein distance (Rabin et al. 2011;
Bonneel et al. 2015, eq. 2) over P = 128 fixed random directions u_p (drawn from ``seed``),

    SW_2^2 = (1/P) sum_p (1/n) sum_i (sort(u_p . x)_i - sort(u_p . y)_i)^2      (n teacher samples too).  The sampler's noise
z is drawn once, from a fixed seed, and enters the output as sqrt(...) z, a differentiable
function of the coefficients (reparameterisation); prior draws x_T and noise are fixed per batch.
(AdaSDE itself distils against teacher trajectories; without a pathwise teacher this loss is
what the issue asks for.)  The teacher: ``fitting.default_teacher()`` (the PF-ODE by RK45 at 1e-7,
the model's own distribution) or any sampler (e.g. a 1000-step predictor-corrector run).

Adam on (theta, phi), started from the best standard grid (uniform, karras, log_snr) on the
training loss with the sampler's own coefficient; the best setting on a held-out validation batch
(its own prior draws, noise and teacher samples) is kept; and the result falls back to the best
standard setting (the sampler's own coefficient on a standard grid) when that is better on
validation, saying which (``StochasticFitResult.method``).  A pure function of its inputs and
``seed`` (CPU, float64).  The differentiable forward pass (``differentiable_sample_sde``) equals
``Sampler.run`` with the same noise to round-off (tests/test_fit_stochastic.py).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch

from .._checks import check_in, check_int, check_positive
from ..grids import FittedGrid, check_ts
from ..sdes import SDE, ScoreFn
from .dpm_solver import DPMSolverPP
from .edm import EDMHeun
from .fitting import F64, LogSigmaGrid, _Adam, _check_common, _cpu, _standard_candidates
from .fitting import default_teacher, drive

__all__ = [
    "noise_field", "is_stochastic", "NoiseCoefficients", "differentiable_sample_sde", "mmd2", "sliced_w2",
    "StochasticFitResult", "fit_stochastic", "KERNELS", "GAMMA_MAX", "ETA_MAX",
]

log = logging.getLogger(__name__)
KERNELS = ("energy", "gaussian", "sliced")
PROJECTIONS = 128
GAMMA_MAX = math.sqrt(2) - 1
ETA_MAX = 2.0


def is_stochastic(sampler) -> bool:
    """Whether ``sampler`` is one of the stochastic samplers ``fit_stochastic`` fits (EDM churn > 0, DPM++ eta > 0)."""
    return (isinstance(sampler, EDMHeun) and sampler.s_churn != 0) or (
        isinstance(sampler, DPMSolverPP) and sampler.eta != 0)


def noise_field(sampler) -> str:
    """The name of ``sampler``'s per-step noise field ("s_churn" or "eta"); an error naming ``sampler`` otherwise."""
    if not is_stochastic(sampler):
        raise ValueError(f"`sampler` must be a stochastic sampler with a per-step noise coefficient: EDMHeun with "
                         f"s_churn > 0 or DPMSolverPP with eta > 0 (deterministic ones: fitting.fit_grid), "
                         f"got {sampler!r}")
    return "s_churn" if isinstance(sampler, EDMHeun) else "eta"


class NoiseCoefficients:
    """The per-step coefficients as c_max sigmoid(phi) (module docstring), in the sampler's own field's units."""

    def __init__(self, sampler, num_steps: int):
        self.name = noise_field(sampler)
        edm = self.name == "s_churn"
        self.count = num_steps if edm else num_steps - 1
        self.c_max = GAMMA_MAX if edm else ETA_MAX  # of gamma_i, or of eta_i
        self.unit = float(num_steps) if edm else 1.0  # s_churn,i = N gamma_i

    def values(self, phi: torch.Tensor) -> torch.Tensor:
        """phi [count] -> the field's per-step values [count] (float64)."""
        return self.unit * (self.c_max * torch.sigmoid(phi.to(F64)))

    def phi_of(self, value) -> torch.Tensor:
        """phi of a scalar or per-step field value (gamma or eta kept inside 2 %-98 % of c_max so it can move)."""
        v = torch.as_tensor(value if isinstance(value, tuple) else [value] * self.count, dtype=F64)
        r = (v / self.unit / self.c_max).clamp(0.02, 0.98)
        return torch.log(r) - torch.log1p(-r)


def differentiable_sample_sde(
    sampler, score_fn: ScoreFn, sde: SDE, x_init: torch.Tensor, ts: torch.Tensor, coefficients: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """The stochastic ``sampler``'s output from ``x_init`` on the grid ``ts`` with per-step ``coefficients``
    (``[count]`` float64 tensor, the values of its noise field) and noise from ``generator``,
    differentiable with respect to ``ts`` and ``coefficients``; equals ``dataclasses.replace(sampler,
    <field>=tuple(coefficients)).run(score_fn, sde, x_init=x_init, ts=ts, generator=<same seed>).x``
    to round-off."""
    name = noise_field(sampler)
    stepped = dataclasses.replace(sampler, num_steps=len(ts), **{name: tuple(coefficients.unbind())})
    return drive(stepped, score_fn, sde, x_init, ts, generator)


def _kernel_mean(a: torch.Tensor, b: torch.Tensor, kernel: str, bandwidths: torch.Tensor | None, same: bool):
    """mean k(a_i, b_j) over all pairs (over i != j when ``same``), a, b ``[n, d]``."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    n = len(a)
    if same:  # the diagonal is left out; move it away from 0 first so that sqrt's gradient stays finite
        d2 = d2 + torch.eye(n, dtype=d2.dtype, device=d2.device)
    d2 = d2.clamp_min(0.0)
    if kernel == "energy":
        k = -d2.clamp_min(1e-300).sqrt()
    else:
        k = torch.exp(-d2[..., None] / (2.0 * bandwidths**2)).sum(-1)
    if same:
        return (k.sum() - k.diagonal().sum()) / (n * (n - 1))
    return k.mean()


def sliced_w2(x: torch.Tensor, y: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """SW_2^2 between ``x`` and ``y`` (both ``[n, *D]``, the same n) over unit ``directions`` ``[P, d]`` (module docstring)."""
    px = torch.sort(x.flatten(1).to(F64) @ directions.T, dim=0).values
    py = torch.sort(y.flatten(1).to(F64) @ directions.T, dim=0).values
    return ((px - py) ** 2).mean()


def mmd2(x: torch.Tensor, y: torch.Tensor, kernel: str = "energy", bandwidths: torch.Tensor | None = None,
         kyy: torch.Tensor | None = None) -> torch.Tensor:
    """The unbiased MMD^2 between samples ``x`` ``[n, *D]`` and ``y`` ``[m, *D]`` (module docstring); ``kyy``:
    the y-y term when already known.  ``kernel`` "gaussian" needs ``bandwidths``."""
    x, y = x.flatten(1).to(F64), y.flatten(1).to(F64)
    if kyy is None:
        kyy = _kernel_mean(y, y, kernel, bandwidths, True)
    return _kernel_mean(x, x, kernel, bandwidths, True) + kyy - 2.0 * _kernel_mean(x, y, kernel, bandwidths, False)


@dataclass(frozen=True)
class StochasticFitResult:
    """What ``fit_stochastic`` returns: the grid with its per-step noise (fitted, or the standard setting it
    fell back to) and its record.

    ``method``: "adasde", or the standard grid's name when that (with the sampler's own coefficient) was
    better on validation; ``val_loss`` / ``train_loss``: MMD^2 to the teacher samples per candidate
    ("fitted" and each standard grid); ``history``: (iteration, train loss, val loss); ``cpu_s``: CPU
    time (user + system) of the whole fit, teacher included; ``candidates``: name -> (ts, coefficients).
    """

    grid: FittedGrid
    method: str
    val_loss: dict
    train_loss: dict
    cpu_s: float
    history: list
    candidates: dict = dataclasses.field(default_factory=dict)

    @property
    def ts(self) -> torch.Tensor:
        return self.grid.ts_tensor()


class _Problem:
    """Draws, noise streams, teacher samples and the loss of a setting, for the training and validation batches."""

    def __init__(self, score_fn, sde, sampler, num_steps, event_shape, num_train, num_val, seed, teacher, kernel,
                 device):
        self.score_fn, self.sde, self.kernel, self.seed = score_fn, sde, kernel, seed
        self.noise = NoiseCoefficients(sampler, num_steps)
        own = getattr(sampler, self.noise.name)
        if isinstance(own, tuple) and len(own) != self.noise.count:
            raise ValueError(f"`sampler.{self.noise.name}` has {len(own)} per-step values; num_steps = {num_steps} "
                             f"needs {self.noise.count} (or one number)")
        self.own = own if isinstance(own, tuple) else (own,) * self.noise.count
        self.sampler = dataclasses.replace(sampler, num_steps=num_steps, **{self.noise.name: self.own})
        self.device = torch.device("cpu") if device is None else torch.device(device)
        g = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same draws on any device
        self.x = {"train": sde.prior_sample((num_train, *event_shape), g, dtype=F64).to(self.device),
                  "val": sde.prior_sample((num_val, *event_shape), g, dtype=F64).to(self.device)}
        other = sde.prior_sample((num_train + num_val, *event_shape), g, dtype=F64).to(self.device)
        teacher = default_teacher() if teacher is None else teacher
        run = teacher.run(score_fn, sde, x_init=other, generator=self._generator(1))
        self.teacher_nfe = run.nfe
        y = run.x.to(F64)
        self.y = {"train": y[:num_train], "val": y[num_train:]}
        self.bandwidths = self.directions = None
        if kernel == "sliced":
            u = torch.randn(PROJECTIONS, y[0].numel(), generator=torch.Generator().manual_seed(seed), dtype=F64)
            self.directions = (u / u.norm(dim=1, keepdim=True)).to(self.device)
            self.kyy = {}
            return
        if kernel == "gaussian":
            d = torch.pdist(self.y["train"].flatten(1))
            self.bandwidths = d.median() * torch.tensor([0.125, 0.25, 0.5, 1.0, 2.0], dtype=F64, device=self.device)
        self.kyy = {k: _kernel_mean(v.flatten(1), v.flatten(1), kernel, self.bandwidths, True) for k, v in self.y.items()}

    def _generator(self, stream: int) -> torch.Generator:
        return torch.Generator(self.device).manual_seed(4 * self.seed + stream)

    def generator(self, which: str) -> torch.Generator:
        """The fixed noise of the sampler on the batch ``which`` (a fresh generator at the same seed each call)."""
        return self._generator(2 if which == "train" else 3)

    def loss_of(self, out: torch.Tensor, which: str) -> torch.Tensor:
        if self.kernel == "sliced":
            return sliced_w2(out, self.y[which], self.directions)
        return mmd2(out, self.y[which], self.kernel, self.bandwidths, self.kyy[which])

    def loss(self, ts: torch.Tensor, coef: tuple, which: str) -> float:
        """The loss of a setting (no gradients): the ordinary ``Sampler.run`` with the batch's noise."""
        s = dataclasses.replace(self.sampler, **{self.noise.name: tuple(float(c) for c in coef)})
        with torch.no_grad():
            out = s.run(self.score_fn, self.sde, x_init=self.x[which], ts=ts, generator=self.generator(which)).x
        return float(self.loss_of(out, which)) if bool(torch.isfinite(out).all()) else math.inf


def fit_stochastic(
    score_fn: ScoreFn, sde: SDE, sampler, num_steps: int, event_shape: tuple[int, ...], *,
    num_train: int = 2048, num_val: int = 2048, seed: int = 0, iterations: int = 100, lr: float = 0.05,
    eval_every: int = 5, kernel: str = "sliced", teacher=None, fit_steps: bool = True, init=None,
    callback: Callable[[int, float, float], None] | None = None, device: torch.device | str | None = None,
) -> StochasticFitResult:
    """Fit the grid and the per-step noise of a stochastic ``sampler`` to the teacher's distribution (module docstring).

    Args:
        score_fn, sde: the problem (a trained model's ``score_fn`` or an exact mixture score).
        sampler: ``EDMHeun`` with s_churn > 0 or ``DPMSolverPP`` with eta > 0 (``noise_field``); its
            ``num_steps`` is replaced, its own coefficient is the starting point and the fallback.
        num_steps: N, the grid times.
        event_shape: the shape of one sample (``(2,)`` for 2-D data).
        num_train, num_val: prior draws (and as many teacher samples, from other draws) per batch.
        seed: all randomness (draws, noise); the same seed gives the same result, bit for bit.
        iterations, lr, eval_every: Adam steps on (theta, phi), its learning rate, validation interval.
        kernel: "sliced" (sliced Wasserstein, O(n log n)), "energy" (energy distance) or "gaussian"
            (multi-bandwidth Gaussian MMD), both O(n^2).
        teacher: any sampler, run on other prior draws (default ``fitting.default_teacher()``).
        fit_steps: False keeps the starting grid and fits only the noise.
        init: ts to start from (default: the best standard grid on the training batch, with the
            sampler's own coefficient).
        callback: ``callback(iteration, train_loss, val_loss)`` at each validation.
        device: where the score is evaluated (draws on the CPU; the noise comes from a generator there).
    """
    cpu0 = _cpu()
    event_shape = _check_common(score_fn, sde, num_steps, event_shape, num_train, num_val, seed)
    noise_field(sampler)
    check_int("num_train", num_train, minimum=2)
    check_int("num_val", num_val, minimum=2)
    check_int("iterations", iterations, minimum=0)
    check_int("eval_every", eval_every)
    check_positive("lr", lr)
    check_in("kernel", kernel, KERNELS)
    if not isinstance(fit_steps, bool):
        raise TypeError(f"`fit_steps` must be a bool, got {fit_steps!r}")
    prob = _Problem(score_fn, sde, sampler, num_steps, event_shape, num_train, num_val, seed, teacher, kernel, device)
    grid_param, noise = LogSigmaGrid(sde, num_steps), prob.noise
    standard = _standard_candidates(prob.sampler, sde, num_steps)
    if init is None:
        start = min(standard, key=lambda k: prob.loss(standard[k], prob.own, "train"))
        ts0 = standard[start]
    else:
        start, ts0 = "given", check_ts(init, sde, "init")
        if len(ts0) != num_steps:
            raise ValueError(f"`init` must have num_steps = {num_steps} times, got {len(ts0)}")
    params = torch.cat([grid_param.theta_of(ts0), noise.phi_of(prob.own)]).requires_grad_(True)
    adam = _Adam(params, lr)

    def setting(p):
        ts = grid_param.times(p[:num_steps]) if fit_steps else ts0
        return ts, noise.values(p[num_steps:])

    best, best_val, history = None, math.inf, []
    for it in range(iterations + 1):
        ts, coef = setting(params)
        if it % eval_every == 0 or it == iterations:
            val = prob.loss(ts.detach(), coef.detach().tolist(), "val")
            if val < best_val:
                best, best_val = (ts.detach().clone(), coef.detach().clone()), val
        if it == iterations:
            break
        out = differentiable_sample_sde(prob.sampler, score_fn, sde, prob.x["train"], ts, coef,
                                        prob.generator("train"))
        loss = prob.loss_of(out, "train")
        if it % eval_every == 0:
            history.append((it, float(loss.detach()), val))
            if callback is not None:
                callback(it, float(loss.detach()), val)
        if not bool(torch.isfinite(loss)):
            log.warning("fit_stochastic: non-finite loss at iteration %d; keeping the best setting so far", it)
            break
        (grad,) = torch.autograd.grad(loss, params)
        adam.step(grad)
    info = {"init": start, "iterations": iterations, "lr": lr, "seed": seed, "kernel": kernel,
            "fit_steps": fit_steps}
    return _choose(prob, best, standard, history, cpu0, info)


def _choose(prob: _Problem, best, standard: dict, history: list, cpu0: float, info: dict) -> StochasticFitResult:
    """The better, on validation, of the fitted setting and the sampler's own coefficient on each standard grid."""
    cands = {"fitted": (best[0], tuple(best[1].tolist())), **{k: (ts, prob.own) for k, ts in standard.items()}}
    val = {k: prob.loss(ts, c, "val") for k, (ts, c) in cands.items()}
    train = {k: prob.loss(ts, c, "train") for k, (ts, c) in cands.items()}
    pick = min(cands, key=lambda k: (val[k], k != "fitted"))
    method = "adasde" if pick == "fitted" else pick
    if pick != "fitted":
        log.info("fitted noise is worse on validation (%.4g) than the standard setting %s (%.4g): falling back",
                 val["fitted"], pick, val[pick])
    cpu = _cpu() - cpu0
    ts, coef = cands[pick]
    record = {**info, "method": method, "fit": "adasde", "val_loss": val, "train_loss": train, "cpu_s": cpu,
              "teacher_nfe": prob.teacher_nfe, "num_train": len(prob.x["train"]), "num_val": len(prob.x["val"])}
    grid = FittedGrid(tuple(check_ts(ts, prob.sde).tolist()), repr(prob.sde), repr(prob.sampler), method, record,
                      prob.noise.name, tuple(float(c) for c in coef))
    cands_out = {k: (tuple(t.tolist()), tuple(float(v) for v in c)) for k, (t, c) in cands.items()}
    return StochasticFitResult(grid, method, val, train, cpu, history, cands_out)
