"""Forward SDEs dx = f(x, t) dt + g(t) dw with Gaussian marginals x_t = alpha(t) x_0 + sigma(t) z.

Conventions (``docs/conventions.md``; Song et al. 2021, "Score-based generative modeling through
SDEs", and its code ``yang-song/score_sde``, ``sde_lib.py``):

========  =====================  ===================================  ============================  ==================
SDE       drift f(x, t)          diffusion g(t)                       alpha(t)                      sigma(t)
========  =====================  ===================================  ============================  ==================
VE        0                      sigma(t) sqrt(2 ln(s_max / s_min))   1                             s_min (s_max/s_min)^t
VP        -beta(t) x / 2         sqrt(beta(t))                        exp(-1/2 int_0^t beta)        sqrt(1 - alpha^2)
sub-VP    -beta(t) x / 2         sqrt(beta(t) (1 - alpha^4))          as VP                         1 - alpha^2
========  =====================  ===================================  ============================  ==================

with beta(t) = beta_min + t (beta_max - beta_min).  Time runs over [t_min, T], T = 1; a time argument
``t`` is always a tensor of shape ``[B]``; data are batch-first ``[B, *D]`` of any rank.

Everything a sampler needs is derived here from alpha(t), sigma(t), f and g, so a new SDE is one
subclass and touches no sampler:

* ``transition(s, t)``: the exact Gaussian transition x_t = a x_s + b z of any linear SDE of this
  family, a = alpha(t)/alpha(s), b^2 = sigma(t)^2 - a^2 sigma(s)^2 (t > s);
* ``discretize(x, s, t)``: the forward step x_t = x_s + f + G z built from it (for VP this is
  score_sde's DDPM discretisation, for VE its SMLD one);
* ``reverse_drift``: f - g^2 s for the reverse SDE, f - g^2 s / 2 for the probability-flow ODE;
* ``timesteps(num_steps)``: the decreasing sampling grid from T to t_min.

**Time checks.**  Every public method that takes a time (``alpha``, ``sigma``, ``drift``,
``diffusion``, ``transition``, ...; also those a subclass defines) checks it once: finite and in
[0, T] (``marginal`` / ``perturb``: [t_min, T]; ``transition``: s <= t).  Python numbers are
accepted as 0-d float64 tensors.  The checks are skipped inside ``scoresde._checks.trusted_times()``
(used by the samplers' and the training loop, whose times are checked once) and for the calls
a checked method makes itself, so they never run in an inner loop.
"""
from __future__ import annotations

import abc
import functools
import inspect
import math
from dataclasses import dataclass
from typing import Callable

import torch

from ._checks import _TRUSTED, append_dims, check_int, check_positive, check_times

__all__ = ["SDE", "VESDE", "VPSDE", "SubVPSDE", "DiscreteVPSDE", "ReverseTimeSDE", "ScoreFn"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""The common currency: ``score(x: [B, *D], t: [B]) -> [B, *D]``, an estimate of grad_x log p_t(x)."""


# Public methods whose time arguments are checked (name -> the time arguments).
_TIME_ARGS = {
    "log_alpha": ("t",), "alpha": ("t",), "sigma": ("t",), "sigma_ve": ("t",), "drift": ("t",),
    "diffusion": ("t",), "beta": ("t",), "transition": ("s", "t"), "discretize": ("s", "t"),
    "reverse_drift": ("t",), "marginal": ("t",), "perturb": ("t",),
}  # fmt: skip
_FROM_T_MIN = ("marginal", "perturb")  # defined on [t_min, T] only


def _checked_times(fn: Callable, name: str) -> Callable:
    """Wrap an SDE method so that its time arguments are checked (unless trusted), then trusted inside."""
    if getattr(fn, "_time_checked", False) or getattr(fn, "__isabstractmethod__", False):
        return fn
    params = list(inspect.signature(fn).parameters)[1:]  # without self
    slots = [(arg, params.index(arg)) for arg in _TIME_ARGS[name]]

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        if _TRUSTED.get():
            return fn(self, *args, **kwargs)
        args = list(args)
        lo, interval = (self.t_min, "[t_min, T] = ") if name in _FROM_T_MIN else (0.0, "[0, T] = ")
        where = f"{type(self).__name__}.{name}: "
        for arg, pos in slots:
            if arg in kwargs:
                kwargs[arg] = check_times(arg, kwargs[arg], lo, self.T, where=where, interval=interval)
            elif pos < len(args):
                args[pos] = check_times(arg, args[pos], lo, self.T, where=where, interval=interval)
        if len(slots) == 2:  # transition / discretize: from s forward to t >= s
            s_, t_ = (kwargs[a] if a in kwargs else args[p] for a, p in slots)
            if torch.is_tensor(s_) and torch.is_tensor(t_) and s_.numel() and t_.numel():
                gap = float((t_.detach().to(torch.float64) - s_.detach().to(torch.float64)).min())
                if gap < -1e-7 * self.T:
                    raise ValueError(f"{where}`s` must be <= `t` (a forward step from s to t), got s > t by {-gap:g}")
        token = _TRUSTED.set(True)
        try:
            return fn(self, *args, **kwargs)
        finally:
            _TRUSTED.reset(token)

    wrapper._time_checked = True
    return wrapper


class SDE(abc.ABC):
    """Base class: a linear forward SDE with marginals x_t = alpha(t) x_0 + sigma(t) z.

    Subclasses implement ``log_alpha``, ``sigma``, ``drift``, ``diffusion`` and ``prior_std``;
    everything else (marginals, transitions, discretisation, reverse SDE, probability-flow ODE,
    sampling grid, prior) follows.
    """

    T: float = 1.0
    t_min: float = 0.0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in _TIME_ARGS:  # a subclass's own time methods are checked like the base class's
            if name in cls.__dict__ and callable(cls.__dict__[name]):
                setattr(cls, name, _checked_times(cls.__dict__[name], name))

    # -- what a subclass defines -------------------------------------------------------------
    @abc.abstractmethod
    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """log alpha(t), shape ``[B]`` (log space keeps sigma = sqrt(1 - alpha^2) accurate at small t)."""

    @abc.abstractmethod
    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Marginal standard deviation sigma(t), shape ``[B]``."""

    @abc.abstractmethod
    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward drift f(x, t), shape of ``x``."""

    @abc.abstractmethod
    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        """Forward diffusion coefficient g(t), shape ``[B]``."""

    @property
    @abc.abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the isotropic Gaussian prior N(0, prior_std^2 I) at t = T."""

    # -- marginals --------------------------------------------------------------------------
    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Marginal mean coefficient alpha(t), shape ``[B]``."""
        return self.log_alpha(t).exp()

    def sigma_ve(self, t: torch.Tensor) -> torch.Tensor:
        """Noise level in VE-ised (EDM / k-diffusion) coordinates x / alpha: sigma(t) / alpha(t)."""
        return self.sigma(t) / self.alpha(t)

    def t_from_sigma_ve(self, sigma_ve: torch.Tensor) -> torch.Tensor:
        """Inverse of ``sigma_ve``: the time t with sigma(t)/alpha(t) = sigma_ve.

        The default is 60 bisection steps in float64 on [0, T] (sigma_ve is increasing in t), good
        to ~1e-16 in t; subclasses with a closed form override it.
        """
        target = sigma_ve.to(torch.float64)
        lo = torch.zeros_like(target)
        hi = torch.full_like(target, self.T)
        for _ in range(60):
            mid = (lo + hi) / 2
            above = self.sigma_ve(mid) > target
            hi = torch.where(above, mid, hi)
            lo = torch.where(above, lo, mid)
        return ((lo + hi) / 2).to(sigma_ve.dtype)

    def check_time(self, t: torch.Tensor, name: str = "t") -> None:
        """Raise if any entry of ``t`` lies outside [t_min, T] (public entry points call this once)."""
        if not torch.is_tensor(t) or t.ndim != 1:
            raise ValueError(f"`{name}` must be a 1-D tensor of shape [B], got {t!r}")
        check_times(name, t, self.t_min, self.T, interval="[t_min, T] = ")

    def marginal(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean alpha(t) x0 (shape of ``x0``) and std sigma(t) (shape ``[B]``) of p_t(x | x0).

        ``t`` is range-checked once by the method's wrapper (not inside ``trusted_times()``); here
        only its shape, which costs no host synchronisation.
        """
        if not torch.is_tensor(t) or t.ndim != 1:
            raise ValueError(f"`t` must be a 1-D tensor of shape [B], got {t!r}")
        return append_dims(self.alpha(t).to(x0.dtype), x0.ndim) * x0, self.sigma(t).to(x0.dtype)

    def perturb(self, x0: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x_t = alpha(t) x0 + sigma(t) z, given the noise ``z`` (shape of ``x0``)."""
        mean, std = self.marginal(x0, t)
        return mean + append_dims(std, x0.ndim) * z

    # -- prior ------------------------------------------------------------------------------
    def prior_sample(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Draw ``shape`` = ``(B, *D)`` samples from the prior N(0, prior_std^2 I)."""
        if device is None and generator is not None:
            device = generator.device
        z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return self.prior_std * z

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; 0, prior_std^2 I) summed over data dims, shape ``[B]``."""
        d = x[0].numel()
        s2 = self.prior_std**2
        return -0.5 * x.flatten(1).pow(2).sum(1) / s2 - 0.5 * d * math.log(2 * math.pi * s2)

    # -- discretisation ---------------------------------------------------------------------
    def transition(self, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact forward transition from time s to time t > s: x_t = a x_s + b z, returns (a, b), each ``[B]``.

        a = alpha(t)/alpha(s), b^2 = sigma(t)^2 - a^2 sigma(s)^2.  Exact for every linear SDE whose
        marginals are x_t = alpha x_0 + sigma z (the variance of a Gaussian chain adds up).
        """
        a = (self.log_alpha(t) - self.log_alpha(s)).exp()
        b2 = self.sigma(t) ** 2 - (a * self.sigma(s)) ** 2
        return a, b2.clamp_min(0).sqrt()

    def discretize(self, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward step x_t = x_s + f + G z from s to t > s; returns (f ``[B, *D]``, G ``[B]``).

        Built from the exact transition: f = (a - 1) x, G = b.  For VP this is score_sde's
        f = (sqrt(1 - beta_i) - 1) x, G = sqrt(beta_i); for VE, f = 0, G = sqrt(sigma_i^2 - sigma_{i-1}^2).
        """
        a, b = self.transition(s, t)
        return (append_dims(a.to(x.dtype), x.ndim) - 1) * x, b.to(x.dtype)

    def timesteps(
        self, num_steps: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float64
    ) -> torch.Tensor:
        """Sampling grid: ``num_steps`` decreasing times from T to t_min (uniform in t), shape ``[num_steps]``.

        Samplers evaluate the score once at each grid time; the step out of the last one goes to
        clean data (see ``scoresde.samplers``).  ``num_steps = 1`` gives ``[T]``.
        """
        check_int("num_steps", num_steps)
        if num_steps == 1:
            return torch.tensor([self.T], device=device, dtype=dtype)
        return torch.linspace(self.T, self.t_min, num_steps, device=device, dtype=dtype)

    # -- reverse time -----------------------------------------------------------------------
    def reverse_drift(
        self, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor, *, probability_flow: bool = False
    ) -> torch.Tensor:
        """Drift of the reverse-time SDE, f - g^2 s, or of the probability-flow ODE, f - g^2 s / 2.

        Used with a negative time step: x_{t - dt} = x_t - reverse_drift * dt (+ g sqrt(dt) z).
        """
        g2 = append_dims(self.diffusion(t).to(x.dtype) ** 2, x.ndim)
        weight = 0.5 if probability_flow else 1.0
        return self.drift(x, t) - weight * g2 * score

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseTimeSDE":
        """The reverse-time SDE (Anderson 1982) or the probability-flow ODE for ``score_fn``."""
        return ReverseTimeSDE(self, score_fn, probability_flow)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._repr_fields().items())
        return f"{type(self).__name__}({fields})"

    def _repr_fields(self) -> dict:
        return {}


@dataclass(frozen=True)
class ReverseTimeSDE:
    """dx = [f - g^2 s] dt + g dw-bar backwards in time, or, with ``probability_flow``, the ODE
    dx/dt = f - g^2 s / 2 (Song et al. 2021, eqs. 6 and 13)."""

    sde: SDE
    score_fn: ScoreFn
    probability_flow: bool = False

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.sde.reverse_drift(x, t, self.score_fn(x, t), probability_flow=self.probability_flow)

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        g = self.sde.diffusion(t)
        return torch.zeros_like(g) if self.probability_flow else g


class VESDE(SDE):
    """Variance-exploding SDE (SMLD / NCSN in continuous time).

    sigma(t) = sigma_min (sigma_max / sigma_min)^t, g(t) = sigma(t) sqrt(2 ln(sigma_max / sigma_min)),
    alpha = 1, prior N(0, sigma_max^2 I).  t_min = 0 (sigma(0) = sigma_min > 0).

    The defaults (sigma_min = 0.01, sigma_max = 20) suit the 2-D toy targets in ``scoresde.data.toy``,
    whose largest inter-point distance is about 15 (Song & Ermon 2020, technique 1: sigma_max of
    the order of the largest distance between data points).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 20.0, t_min: float = 0.0):
        self.sigma_min = check_positive("sigma_min", sigma_min)
        self.sigma_max = check_positive("sigma_max", sigma_max)
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"`sigma_min` must be < `sigma_max`, got sigma_min={sigma_min} >= sigma_max={sigma_max}")
        if not (isinstance(t_min, (int, float)) and 0.0 <= t_min < self.T):
            raise ValueError(f"`t_min` must lie in [0, {self.T}), got {t_min!r}")
        self.t_min = float(t_min)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def log_alpha(self, t):
        return torch.zeros_like(t)

    def sigma(self, t):
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def drift(self, x, t):
        return torch.zeros_like(x)

    def diffusion(self, t):
        return self.sigma(t) * math.sqrt(2 * self._log_ratio)

    @property
    def prior_std(self):
        return self.sigma_max

    def t_from_sigma_ve(self, sigma_ve):
        return torch.log(sigma_ve / self.sigma_min) / self._log_ratio

    def _repr_fields(self):
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "t_min": self.t_min}


class _LinearBetaSDE(SDE):
    """Shared parameters of VP and sub-VP: beta(t) = beta_min + t (beta_max - beta_min)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-5):
        self.beta_min = check_positive("beta_min", beta_min)
        self.beta_max = check_positive("beta_max", beta_max)
        if self.beta_min > self.beta_max:
            raise ValueError(f"`beta_min` must be <= `beta_max`, got beta_min={beta_min} > beta_max={beta_max}")
        if not (isinstance(t_min, (int, float)) and 0.0 < t_min < self.T):
            raise ValueError(f"`t_min` must lie in (0, {self.T}), got {t_min!r}")
        self.t_min = float(t_min)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """beta(t) = beta_min + t (beta_max - beta_min), shape ``[B]``."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t):
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def drift(self, x, t):
        return -0.5 * append_dims(self.beta(t).to(x.dtype), x.ndim) * x

    @property
    def prior_std(self):
        return 1.0

    def _t_from_log_alpha(self, log_alpha: torch.Tensor) -> torch.Tensor:
        # Solve (beta_max - beta_min)/4 t^2 + beta_min/2 t + log_alpha = 0 for t >= 0.
        # Written as 2c / (b + sqrt(b^2 + 4ac)), c = -log_alpha >= 0, which has no cancellation
        # (the textbook (-b + sqrt(...)) / 2a loses digits at small t, badly so in float32) and
        # also covers a = 0 (beta_min = beta_max).
        a = 0.25 * (self.beta_max - self.beta_min)
        b = 0.5 * self.beta_min
        c = -log_alpha
        return 2 * c / (b + torch.sqrt(b * b + 4 * a * c))

    def _repr_fields(self):
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, "t_min": self.t_min}


class VPSDE(_LinearBetaSDE):
    """Variance-preserving SDE (DDPM in continuous time).

    f = -beta(t) x / 2, g = sqrt(beta(t)), alpha(t) = exp(-t^2 (beta_max - beta_min)/4 - t beta_min / 2),
    sigma = sqrt(1 - alpha^2), prior N(0, I).  Defaults beta_min = 0.1, beta_max = 20, t_min = 1e-5
    (score_sde).  ``discrete(num_steps)`` gives the DDPM chain with the matching linear beta table.

    The prior mismatch alpha(1) = 0.0066 is negligible for data of unit scale but not for the
    NCSN mixture at +-5 (a mean offset of 0.05 prior standard deviations); see ``scoresde.data.toy``.
    """

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    def diffusion(self, t):
        return torch.sqrt(self.beta(t))

    def t_from_sigma_ve(self, sigma_ve):
        # sigma_ve^2 = 1/alpha^2 - 1  =>  log alpha = -log(1 + sigma_ve^2) / 2
        return self._t_from_log_alpha(-0.5 * torch.log1p(sigma_ve**2))

    def discrete(self, num_steps: int = 1000) -> "DiscreteVPSDE":
        """DDPM's chain for this SDE: beta_i = beta_min/N + i/(N-1) (beta_max - beta_min)/N, i = 0..N-1.

        With the defaults and N = 1000 this is Ho et al.'s linear schedule 1e-4 ... 0.02.
        """
        return DiscreteVPSDE.linear(num_steps, self.beta_min, self.beta_max)


class SubVPSDE(_LinearBetaSDE):
    """Sub-VP SDE (Song et al. 2021, eq. 34): f = -beta x / 2, g = sqrt(beta (1 - exp(-2 int_0^t beta))).

    alpha as VP, sigma = 1 - alpha^2 (so sigma_subVP <= sigma_VP), prior N(0, I).
    """

    def sigma(self, t):
        return -torch.expm1(2 * self.log_alpha(t))

    def diffusion(self, t):
        # exp(-2 int_0^t beta) = alpha^4
        return torch.sqrt(self.beta(t) * -torch.expm1(4 * self.log_alpha(t)))

    def t_from_sigma_ve(self, sigma_ve):
        # (1 - u^2)/u = sigma_ve with u = alpha  =>  u = (sqrt(sigma_ve^2 + 4) - sigma_ve)/2,
        # i.e. log alpha = -asinh(sigma_ve / 2); the asinh form is accurate at both ends (the
        # quotient form cancels at large sigma_ve, and log(u) with u ~ 1 loses digits at small t).
        return self._t_from_log_alpha(-torch.asinh(sigma_ve / 2))


class DiscreteVPSDE(SDE):
    """DDPM's discrete chain as a VP SDE: knots t_k = k/N (k = 0..N), alpha_bar_k = prod_{j<=k} (1 - beta_j).

    Between knots log alpha_bar is linear in t, which is the VP SDE with the piecewise-constant
    rate beta(t) = -N log(1 - beta_k) on (t_{k-1}, t_k].  Hence alpha(t_k)^2 equals DDPM's
    alpha_bar_k exactly, the exact transition between consecutive knots is DDPM's
    x_k = sqrt(1 - beta_k) x_{k-1} + sqrt(beta_k) z, and ``timesteps(N)`` is the DDPM grid
    t_N, ..., t_1 (score_sde / diffusers index k-1 for knot t_k).  t_min = t_1 = 1/N: the last
    sampler step, t_1 -> clean data, is DDPM's final noise-free step x_1 -> x_0.
    """

    def __init__(self, betas: torch.Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(f"`betas` must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(
                f"`betas` must lie in (0, 1), got values in [{float(betas.min()):g}, {float(betas.max()):g}]"
            )
        self.betas = betas
        self.num_steps = betas.numel()
        # log alpha_bar at knots k = 0..N (alpha_bar_0 = 1)
        self._log_alpha_bar = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.log1p(-betas), 0)])
        self._rates = -self.num_steps * torch.log1p(-betas)  # beta(t) on (t_{k-1}, t_k]
        self.t_min = 1.0 / self.num_steps
        self._cache: dict = {}

    @classmethod
    def linear(cls, num_steps: int = 1000, beta_min: float = 0.1, beta_max: float = 20.0) -> "DiscreteVPSDE":
        """DDPM's linear schedule: beta_i = beta_min/N + i/(N-1) (beta_max - beta_min)/N."""
        num_steps = check_int("num_steps", num_steps, minimum=2)
        check_positive("beta_min", beta_min)
        check_positive("beta_max", beta_max)
        if beta_min > beta_max:
            raise ValueError(f"`beta_min` must be <= `beta_max`, got beta_min={beta_min} > beta_max={beta_max}")
        if beta_max / num_steps >= 1:
            raise ValueError(
                f"`num_steps` must be > `beta_max` (the last step's beta_max / num_steps must be < 1), got "
                f"num_steps={num_steps}, beta_max={beta_max}: use num_steps > {math.floor(beta_max)} or a smaller beta_max"
            )
        i = torch.arange(num_steps, dtype=torch.float64)
        return cls(beta_min / num_steps + i / (num_steps - 1) * (beta_max - beta_min) / num_steps)

    @property
    def alpha_bar(self) -> torch.Tensor:
        """DDPM's alpha_bar_k for k = 1..N, float64 ``[N]``."""
        return self._log_alpha_bar[1:].exp()

    def _tables(self, t: torch.Tensor):
        key = (t.device, t.dtype)
        if key not in self._cache:
            self._cache[key] = (self._log_alpha_bar.to(t.device, t.dtype), self._rates.to(t.device, t.dtype))
        return self._cache[key]

    def log_alpha(self, t):
        log_ab, _ = self._tables(t)
        u = (t * self.num_steps).clamp(0, self.num_steps)
        k = u.floor().long().clamp(max=self.num_steps - 1)
        frac = u - k
        return 0.5 * (log_ab[k] * (1 - frac) + log_ab[k + 1] * frac)

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """Piecewise-constant rate beta(t) = -N log(1 - beta_k) on (t_{k-1}, t_k]."""
        _, rates = self._tables(t)
        # 1e-4 (in units of knots) absorbs float32 round-off at the knots themselves
        k = (t * self.num_steps - 1e-4).ceil().long().clamp(1, self.num_steps) - 1
        return rates[k]

    def drift(self, x, t):
        return -0.5 * append_dims(self.beta(t).to(x.dtype), x.ndim) * x

    def diffusion(self, t):
        return torch.sqrt(self.beta(t))

    @property
    def prior_std(self):
        return 1.0

    def timestep_index(self, t: torch.Tensor) -> torch.Tensor:
        """Index k-1 (0-based, as in score_sde and diffusers) of the knot t_k nearest to t, by rounding."""
        return (t * self.num_steps).round().long().clamp(1, self.num_steps) - 1

    def timesteps(self, num_steps, *, device=None, dtype=torch.float64):
        """``num_steps`` knots from t_N down to t_1, evenly respaced (rounded) when num_steps < N."""
        check_int("num_steps", num_steps, maximum=self.num_steps)
        k = torch.linspace(self.num_steps, 1, num_steps, dtype=torch.float64).round()
        return (k / self.num_steps).to(device=device, dtype=dtype)

    def _repr_fields(self):
        return {"num_steps": self.num_steps, "beta_first": float(self.betas[0]), "beta_last": float(self.betas[-1])}


for _name in _TIME_ARGS:  # the base class's own time methods (alpha, transition, marginal, ...)
    if _name in SDE.__dict__:
        setattr(SDE, _name, _checked_times(SDE.__dict__[_name], _name))
del _name
