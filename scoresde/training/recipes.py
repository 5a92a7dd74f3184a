"""A training recipe as small objects: optimiser factories, learning-rate schedules, time samplers.

Each is a frozen dataclass of hyperparameters, so it prints, compares and has a typed config
schema (``conf/optim``, ``conf/scheduler``, ``conf/time``); what it needs at run time is passed
in the call (the EDM / lightning-hydra ``_partial_`` idea, without Hydra in the library):

* **Optimisers** ``Adam``, ``AdamW``: ``opt(params) -> torch.optim.Optimizer``.  ``train(...,
  optimizer=opt)`` uses one instead of ``TrainConfig``'s ``optimizer``/``lr``/``beta1``/``beta2``/
  ``weight_decay``; any ``params -> Optimizer`` callable works, e.g.
  ``functools.partial(torch.optim.SGD, lr=0.1)``.
* **Schedules** ``ConstantLR``, ``WarmupCosine``: ``schedule(step, num_steps) -> factor`` of the
  base learning rate at 0-based ``step``.  Warm-up is linear, factor (step + 1) / warmup_steps
  (as ``TrainConfig.warmup_steps``); cosine decays from 1 to ``min_factor`` over the remaining
  steps, factor = min_factor + (1 - min_factor) (1 + cos(pi p)) / 2, p = (step - warmup) / (num_steps - warmup)
  (Loshchilov & Hutter 2017, without restarts).  ``train(..., lr_schedule=s)`` replaces
  ``TrainConfig.warmup_steps``.
* **Time samplers** (for ``losses.DSMLoss(time_sampler=...)``): ``sample(sde, n, generator, dtype)
  -> t [n]`` in [t_min, T] and ``importance_weight(sde, t) -> [n] | None``, the factor that keeps
  the loss an unbiased estimate of the uniform-time objective (None: no reweighting).

    ``UniformTime``      t ~ U(t_min, T) (the default; the same draws as ``DSMLoss.sample_time``).
    ``LogNormalSigma``   ln sigma~ ~ N(p_mean, p_std^2), sigma~ = sigma/alpha clipped to the SDE's
                         range, t = t(sigma~) (EDM's training noise distribution, Karras et al. 2022
                         Table 1: p_mean = -1.2, p_std = 1.2, for data of std 0.5).  Not reweighted:
                         as in EDM, the sampling distribution is part of the objective.
    ``ImportanceTime``   t ~ q(t) proportional to g(t)^2 / sigma(t)^2 on [t_min, T] (Song, Durkan,
                         Murray & Ermon 2021, "Maximum likelihood training of score-based diffusion
                         models", Sec. 5: importance sampling for the likelihood weighting), with
                         importance weight 1 / (q(t) (T - t_min)); with ``DSMLoss(weighting=
                         "likelihood")`` the per-sample weight g^2/sigma^2 / (q (T - t_min)) is then
                         a constant, which removes the weighting's variance.  q is tabulated on
                         4096 log- and linearly spaced times (trapezoid rule) and sampled
                         exactly from that piecewise-constant density, whose own value is the
                         weight, so the estimate stays unbiased.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .._checks import check_int, check_nonnegative, check_positive, check_probability
from ..sdes import SDE

__all__ = ["Adam", "AdamW", "ConstantLR", "WarmupCosine", "UniformTime", "LogNormalSigma", "ImportanceTime"]


def check_betas(beta1: float, beta2: float) -> None:
    """Adam's ``beta1`` and ``beta2`` must lie in [0, 1) (also ``TrainConfig``'s check)."""
    for name, value in (("beta1", beta1), ("beta2", beta2)):
        if check_probability(name, value) == 1.0:
            raise ValueError(f"`{name}` must be in [0, 1), got {value!r}")


@dataclass(frozen=True)
class Adam:
    """``torch.optim.Adam(params, lr, (beta1, beta2), eps, weight_decay)`` as a factory ``Adam(...)(params)``."""

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self):
        check_positive("lr", self.lr)
        check_betas(self.beta1, self.beta2)
        check_positive("eps", self.eps)
        check_nonnegative("weight_decay", self.weight_decay)

    def __call__(self, params) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=self.lr, betas=(self.beta1, self.beta2), eps=self.eps,
                                weight_decay=self.weight_decay)


@dataclass(frozen=True)
class AdamW(Adam):
    """``torch.optim.AdamW`` (decoupled weight decay, Loshchilov & Hutter 2019); default weight decay 0.01."""

    weight_decay: float = 0.01

    def __call__(self, params) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=self.lr, betas=(self.beta1, self.beta2), eps=self.eps,
                                 weight_decay=self.weight_decay)


@dataclass(frozen=True)
class ConstantLR:
    """Factor min(1, (step + 1) / warmup_steps) (1 without warm-up): ``TrainConfig``'s own schedule."""

    warmup_steps: int = 100

    def __post_init__(self):
        check_int("warmup_steps", self.warmup_steps, minimum=0)

    def __call__(self, step: int, num_steps: int) -> float:
        return min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0


@dataclass(frozen=True)
class WarmupCosine(ConstantLR):
    """Linear warm-up, then cosine decay to ``min_factor`` at the last step (module docstring)."""

    min_factor: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        check_probability("min_factor", self.min_factor)

    def __call__(self, step: int, num_steps: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        p = (step - self.warmup_steps) / max(1, num_steps - 1 - self.warmup_steps)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


@dataclass(frozen=True)
class UniformTime:
    """t ~ U(t_min, T): ``t_min + (T - t_min) u``, u ~ U(0, 1); no reweighting."""

    def sample(self, sde: SDE, n: int, generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
        u = torch.rand(n, generator=generator, device=generator.device, dtype=dtype)
        return sde.t_min + (sde.T - sde.t_min) * u

    def importance_weight(self, sde: SDE, t: torch.Tensor) -> torch.Tensor | None:
        return None


@dataclass(frozen=True)
class LogNormalSigma:
    """EDM's ln sigma~ ~ N(p_mean, p_std^2), mapped to t by ``sde.t_from_sigma_ve`` (clipped to [t_min, T])."""

    p_mean: float = -1.2
    p_std: float = 1.2

    def __post_init__(self):
        if not isinstance(self.p_mean, (int, float)) or not math.isfinite(self.p_mean):
            raise ValueError(f"`p_mean` must be a finite number, got {self.p_mean!r}")
        check_positive("p_std", self.p_std)

    def sample(self, sde: SDE, n: int, generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
        z = torch.randn(n, generator=generator, device=generator.device, dtype=torch.float64)
        lo, hi = (float(sde.sigma_ve(torch.tensor([v], dtype=torch.float64))) for v in (sde.t_min, sde.T))
        sigma_ve = torch.exp(self.p_mean + self.p_std * z).clamp(lo, hi)
        return sde.t_from_sigma_ve(sigma_ve).clamp(sde.t_min, sde.T).to(dtype)

    def importance_weight(self, sde: SDE, t: torch.Tensor) -> torch.Tensor | None:
        return None


@dataclass(frozen=True)
class ImportanceTime:
    """t ~ q proportional to g(t)^2 / sigma(t)^2; weight 1 / (q(t) (T - t_min)) (module docstring)."""

    num_points: int = 4096
    _tables: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        check_int("num_points", self.num_points, minimum=16)

    def _table(self, sde: SDE, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = (repr(sde), str(device))
        if key not in self._tables:
            half = self.num_points // 2
            lo = max(sde.t_min, 1e-12)
            grid = torch.cat([torch.logspace(math.log10(lo), math.log10(sde.T), half, dtype=torch.float64),
                              torch.linspace(sde.t_min, sde.T, half, dtype=torch.float64)])
            grid = torch.unique(grid.clamp(sde.t_min, sde.T))  # sorted
            w = (sde.diffusion(grid) / sde.sigma(grid)) ** 2
            mass = 0.5 * (w[1:] + w[:-1]) * (grid[1:] - grid[:-1])  # trapezoid mass per interval
            cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(mass, 0)])
            total = cdf[-1]
            density = (mass / total) / (grid[1:] - grid[:-1])  # piecewise-constant q on each interval
            self._tables[key] = tuple(v.to(device) for v in (grid, cdf / total, density))
        return self._tables[key]

    def sample(self, sde: SDE, n: int, generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
        grid, cdf, density = self._table(sde, generator.device)
        u = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)
        i = torch.searchsorted(cdf, u, right=True).clamp(1, len(grid) - 1) - 1
        t = grid[i] + (u - cdf[i]) / density[i]
        return t.clamp(sde.t_min, sde.T).to(dtype)

    def importance_weight(self, sde: SDE, t: torch.Tensor) -> torch.Tensor:
        grid, _, density = self._table(sde, t.device)
        i = torch.searchsorted(grid, t.to(torch.float64), right=True).clamp(1, len(grid) - 1) - 1
        return (1.0 / (density[i] * (sde.T - sde.t_min))).to(t.dtype)
