"""Variational bounds on the negative log-likelihood: DDPM's discrete ELBO and the continuous-time bound.

**Discrete** (Ho, Jain & Abbeel 2020, eq. 5; ``DiscreteVPSDE`` with betas beta_1..beta_N,
alpha_t = 1 - beta_t, alpha_bar_t = prod_{s<=t} alpha_s, knots t_k = k/N), per data point x_0 [*D], d dims:

    L = L_T + sum_{t=2}^N L_{t-1} + L_0                                             (nats)
    L_T     = KL(q(x_N | x_0) || N(0, I)) = 1/2 sum_i [(1 - a_N) + a_N x_0i^2 - 1 - log(1 - a_N)],  a = alpha_bar
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))
            = 1/2 [d (beta~_t / s_t^2 - 1 + log(s_t^2 / beta~_t)) + ||mu~_t - mu_t||^2 / s_t^2]
    L_0     = -log p(x_0 | x_1)

with the true posterior q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I) (Ho eq. 6-7),
mu~_t = sqrt(a_{t-1}) beta_t / (1 - a_t) x_0 + sqrt(alpha_t) (1 - a_{t-1}) / (1 - a_t) x_t,
beta~_t = (1 - a_{t-1}) beta_t / (1 - a_t), and the model's reverse kernel N(mu_t, s_t^2 I) with Ho's
eq. 11 mean mu_t = (x_t - beta_t / sqrt(1 - a_t) eps_hat) / sqrt(alpha_t) = (x_t + beta_t s) / sqrt(alpha_t)
(eps_hat = -sqrt(1 - a_t) s: any eps-, x0- or score model enters through ``scoresde.bridges`` as a score
``s(x_t, t_k)``) and the fixed variance s_t^2 = beta~_t (``variance="small"``) or beta_t ("large").
Each L_{t-1} is estimated with one draw x_t ~ q(x_t | x_0) per data point.  The decoder p(x_0 | x_1) has
mean mu_1 (= Tweedie's x0-estimate) and variance beta~_2 for "small" (as Ho et al.'s code, which clips the
log-variance at t = 1 to beta~_2 since beta~_1 = 0) and beta_1 for "large" (Ho et al.'s code uses beta~_2 there
too; beta_1 is the variance of x_0 | x_1 for data smooth at that scale, and with it the bound's gap
vanishes as N grows, while beta~_2 ~ beta_1 / 2 keeps a floor of d (1 - log 2) / 2 nats):

* ``decoder="gaussian"``: continuous data, L_0 = -log N(x_0; mu_1, beta~_2 I); bits/dim = L / (d ln 2)
  of a density (no dequantisation offset).
* ``decoder="discretized"``: Ho et al.'s eq. 13 for 8-bit images scaled to [-1, 1] (``num_levels`` = 256
  levels 2k/255 - 1): each pixel's probability is the mass of N(mu_1i, beta~_2) on its bin
  [x - 1/255, x + 1/255], the outer bins extended to -inf and +inf; then L is a discrete NLL and
  bits/dim = L / (d ln 2) needs no offset (Ho et al.'s 3.70 / 3.75 bits/dim on CIFAR-10).

NFE = N (one score evaluation per term).

**Continuous time** (Song, Durkan, Murray & Ermon 2021, "Maximum likelihood training of score-based
diffusion models", Thm. 1 with the denoising form of their Thm. 3; Huang et al. 2021), any SDE of the
library (f(x, t) = c(t) x linear, so div f = d c(t) with int c dt = log alpha), for x_t = alpha x_0 + sigma z:

    L(x_0) = -E[log pi(x_T) | x_0] + 1/2 int_{t_eps}^T g(t)^2 E||s(x_t, t) + z / sigma(t)||^2 - d g^2/sigma^2 dt
             - d (log alpha(T) - log alpha(t_eps)).

Averaged over data, E_{x_0 ~ p_0} L(x_0) >= E_{y ~ p_{t_eps}}[-log p^SDE_{t_eps}(y)] >= H(p_{t_eps}): Song et al.'s
Thm. 1 on [t_eps, T] (KL(p_{t_eps} || p^SDE) <= KL(p_T || pi) + 1/2 int g^2 E||s - grad log p_t||^2), Vincent's
identity conditioning on x_0, and de Bruijn's identity dH(p_t)/dt = E[div f] + g^2 E||grad log p_t||^2 / 2.  It is
the bound on the model density at t_eps that ``ProbabilityFlowLikelihood`` evaluates exactly (for the ODE
model).  The integrand and weights are those of the authors' code (yang-song/score_flow, ``bound_likelihood.py``,
``dsm=True``: g^2 (||s - grad log p_0t||^2 - ||grad log p_0t||^2) - 2 div f, importance weight Z sigma^2 / g^2,
prior term -log pi(x_T), all halved), which also adds a Jensen offset for the gap between t_eps and 0 that this
module does not (the bound here is on the density at t_eps).  The theorem numbers (Thm. 1: KL(p || p^SDE) <=
J_SM(g^2) + KL(p_T || pi); Thm. 3: the pointwise bound -log p^SDE(x) <= L^SM(x) = L^DSM(x)) follow arXiv
2101.09258; the paper's text could not be read from here (only its abstract and introduction), so they are
as recalled, while the formula was checked against the code above and, numerically, by the bound being >= the
exact NLL on the toy mixtures (``tests/test_elbo.py``).  The time integral is estimated with ``num_time_samples`` draws (t, z) per point, t from
``importance`` = "g2/sigma2" (default; density ~ g^2/sigma^2, which makes every term (Z/2)(||sigma s + z||^2 - d),
Z = int g^2/sigma^2 dt, of bounded variance; tabulated and inverted, weights from the tabulated density, so
unbiased) or "uniform" (t ~ U(t_eps, T); the variance grows like log(1/t_eps) for VP); its Monte Carlo
variance is reported.  NFE = num_time_samples.

**The likelihood-weighted DSM loss is this bound up to constants**: with
l(x_0) = g^2 ||s + z/sigma||^2 (``training.DSMLoss(sde, "likelihood")``, t ~ U(t_min, T)),

    L(x_0) = (T - t_min)/2 E[l(x_0)] + C(x_0),
    C(x_0) = -E[log pi(x_T) | x_0] - d/2 int_{t_min}^T g^2/sigma^2 dt - d (log alpha(T) - log alpha(t_min))

(``dsm_bound_constant``), C independent of the model: training with that loss minimises the bound.

Units: nats per data point; ``bits_per_dim`` = L / (d ln 2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ._checks import append_dims, check_generator, check_in, check_int, trusted_times
from .sdes import SDE, DiscreteVPSDE, ScoreFn

__all__ = ["DiscreteELBO", "DiscreteELBOResult", "ContinuousELBO", "ContinuousELBOResult", "ELBOReport", "dsm_bound_constant",
           "time_integral_g2_over_sigma2"]

VARIANCES = ("small", "large")
DECODERS = ("gaussian", "discretized")
IMPORTANCE = ("g2/sigma2", "uniform")


def _check_points(x0, score_fn, sde, cls=SDE) -> None:
    if not isinstance(sde, cls):
        raise TypeError(f"`sde` must be a scoresde.sdes.{cls.__name__}, got {type(sde).__name__}")
    if not callable(score_fn):
        raise TypeError(f"`score_fn` must be callable as score(x, t), got {type(score_fn).__name__}")
    if not torch.is_tensor(x0) or x0.ndim < 2 or x0.shape[0] < 1 or x0[0].numel() < 1:
        got = tuple(x0.shape) if torch.is_tensor(x0) else type(x0).__name__
        raise ValueError(f"`x0` must be a batch-first tensor [B, *D] with B >= 1, got {got}")
    if not x0.dtype.is_floating_point or not bool(torch.isfinite(x0).all()):
        raise ValueError(f"`x0` must be finite with a floating-point dtype, got {x0.dtype}")


def _sum(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).sum(1)


class _Totals:
    """``mean``, ``stderr`` and ``bits_per_dim`` of a per-point ``total`` [B] in ``dim`` dimensions."""

    @property
    def mean(self) -> float:
        """Mean bound over the points (nats)."""
        return float(self.total.mean())

    @property
    def stderr(self) -> float:
        """Standard error of ``mean``: std / sqrt(B) over the points (includes the Monte Carlo noise; nan for B = 1)."""
        n = self.total.numel()
        return float(self.total.std() / math.sqrt(n)) if n > 1 else float("nan")

    def bits_per_dim(self) -> torch.Tensor:
        """total / (d ln 2), ``[B]`` (discretised decoder: a discrete NLL; otherwise of a density, no offset)."""
        return self.total / (self.dim * math.log(2.0))


@dataclass(frozen=True, eq=False)
class DiscreteELBOResult(_Totals):
    """Per data point (float64 ``[B]``): ``prior`` L_T, ``decoder`` L_0, ``total`` L; ``terms`` ``[B, N-1]``
    with column j = L_{t-1} for t = j + 2; ``dim`` = d; ``nfe`` = N."""

    total: torch.Tensor
    prior: torch.Tensor
    terms: torch.Tensor
    decoder: torch.Tensor
    dim: int
    nfe: int


@dataclass(frozen=True)
class DiscreteELBO:
    """DDPM's variational bound for a ``DiscreteVPSDE`` (module docstring).

    Args:
        variance: "small" (s_t^2 = beta~_t, default) or "large" (beta_t), the fixed reverse variances.
        decoder: "gaussian" (continuous data) or "discretized" (8-bit data in [-1, 1], Ho et al. eq. 13).
        num_levels: number of levels of the discretised data (256 for 8 bits).
    """

    variance: str = "small"
    decoder: str = "gaussian"
    num_levels: int = 256

    def __post_init__(self):
        check_in("variance", self.variance, VARIANCES)
        check_in("decoder", self.decoder, DECODERS)
        check_int("num_levels", self.num_levels, minimum=2)

    def run(self, score_fn: ScoreFn, sde: DiscreteVPSDE, x0: torch.Tensor, *,
            generator: torch.Generator | None = None) -> DiscreteELBOResult:
        """The bound and its terms for every point of ``x0`` ``[B, *D]``; ``score_fn(x, t)`` in VP coordinates."""
        _check_points(x0, score_fn, sde, DiscreteVPSDE)
        if self.decoder == "discretized":
            self._check_levels(x0)
        generator = check_generator(generator, x0.device)
        n, d, dtype = sde.num_steps, x0[0].numel(), x0.dtype
        betas, abar = sde.betas.tolist(), sde.alpha_bar.tolist()
        x = x0.detach().to(torch.float64)
        prior = 0.5 * _sum((1 - abar[-1]) + abar[-1] * x**2 - 1 - math.log1p(-abar[-1]))
        terms = torch.zeros(x.shape[0], n - 1, dtype=torch.float64, device=x.device)
        post_var = [0.0] + [(1 - abar[k - 1]) * betas[k] / (1 - abar[k]) for k in range(1, n)]  # beta~ (0-based k)
        with torch.no_grad(), trusted_times():
            for k in range(n):  # 0-based: knot t_{k+1} = (k+1)/N, DDPM's t = k + 1
                z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)
                x_t = math.sqrt(abar[k]) * x + math.sqrt(1 - abar[k]) * z
                tb = torch.full((x.shape[0],), (k + 1) / n, device=x.device, dtype=dtype)
                score = score_fn(x_t.to(dtype), tb).to(torch.float64)
                mean = (x_t + betas[k] * score) / math.sqrt(1 - betas[k])
                if k == 0:
                    small = post_var[1] if n > 1 else betas[0]
                    decoder = self._decoder(x, mean, small if self.variance == "small" else betas[0])
                    continue
                var = post_var[k] if self.variance == "small" else betas[k]
                mean_post = (math.sqrt(abar[k - 1]) * betas[k] / (1 - abar[k]) * x
                             + math.sqrt(1 - betas[k]) * (1 - abar[k - 1]) / (1 - abar[k]) * x_t)
                const = 0.5 * d * (post_var[k] / var - 1 + math.log(var / post_var[k]))
                terms[:, k - 1] = const + 0.5 * _sum((mean_post - mean) ** 2) / var
        total = prior + terms.sum(1) + decoder
        return DiscreteELBOResult(total, prior, terms, decoder, d, n)

    def _decoder(self, x: torch.Tensor, mean: torch.Tensor, var: float) -> torch.Tensor:
        if self.decoder == "gaussian":
            return 0.5 * _sum((x - mean) ** 2 / var + math.log(2 * math.pi * var))
        half = 1.0 / (self.num_levels - 1)
        std = math.sqrt(var)
        hi = torch.where(x > 1 - half, torch.full_like(x, math.inf), (x + half - mean) / std)
        lo = torch.where(x < -1 + half, torch.full_like(x, -math.inf), (x - half - mean) / std)
        # log(Phi(hi) - Phi(lo)) without cancellation: on the side of the mean where both tails are small
        flip = lo > 0
        a, b = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
        log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
        log_mass = log_b + torch.log1p(-torch.exp(log_a - log_b).clamp(max=1.0))
        return -_sum(log_mass)

    def _check_levels(self, x0: torch.Tensor) -> None:
        x = x0.detach().to(torch.float64)
        if bool((x.abs() > 1 + 1e-6).any()):
            raise ValueError("`x0` must lie in [-1, 1] for decoder='discretized' (8-bit data scaled as 2k/255 - 1)")
        k = (x + 1) * (self.num_levels - 1) / 2
        if float((k - k.round()).abs().max()) > 1e-3:
            raise ValueError(f"`x0` must lie on the {self.num_levels} levels 2k/{self.num_levels - 1} - 1 for "
                             "decoder='discretized'")


# -- continuous time ---------------------------------------------------------------------------------------

def _g2_over_sigma2(sde: SDE, t: torch.Tensor) -> torch.Tensor:
    return sde.diffusion(t) ** 2 / sde.sigma(t) ** 2


def time_integral_g2_over_sigma2(sde: SDE, t_eps: float) -> float:
    """Z = int_{t_eps}^T g(t)^2 / sigma(t)^2 dt by adaptive quadrature (scipy ``quad``, in log t when t_eps > 0)."""
    from scipy.integrate import quad

    def f(t):
        return float(_g2_over_sigma2(sde, torch.tensor([t], dtype=torch.float64)))

    with trusted_times():
        if t_eps > 0:
            value, _ = quad(lambda u: f(math.exp(u)) * math.exp(u), math.log(t_eps), math.log(sde.T), limit=400,
                            epsabs=0, epsrel=1e-10)
        else:
            value, _ = quad(f, 0.0, sde.T, limit=400, epsabs=0, epsrel=1e-10)
    return value


def _prior_cross_entropy(sde: SDE, x: torch.Tensor) -> torch.Tensor:
    """-E[log pi(x_T) | x_0] for x_T ~ N(alpha(T) x_0, sigma(T)^2 I), pi = N(0, prior_std^2 I), ``[B]``."""
    tt = torch.tensor([sde.T], dtype=torch.float64)
    a, s = float(sde.alpha(tt)), float(sde.sigma(tt))
    d, s2 = x[0].numel(), sde.prior_std**2
    return 0.5 * (a**2 * _sum(x**2) + d * s**2) / s2 + 0.5 * d * math.log(2 * math.pi * s2)


def dsm_bound_constant(sde: SDE, x0: torch.Tensor, t_eps: float | None = None) -> torch.Tensor:
    """C(x_0) with L(x_0) = (T - t_eps)/2 E[DSMLoss(sde, "likelihood")] + C(x_0), float64 ``[B]`` (module docstring)."""
    t_eps = sde.t_min if t_eps is None else float(t_eps)
    x = x0.detach().to(torch.float64)
    d = x[0].numel()
    ends = torch.tensor([t_eps, sde.T], dtype=torch.float64)
    log_alpha = sde.log_alpha(ends)
    drift_integral = d * float(log_alpha[1] - log_alpha[0])
    return _prior_cross_entropy(sde, x) - 0.5 * d * time_integral_g2_over_sigma2(sde, t_eps) - drift_integral


@dataclass(frozen=True, eq=False)
class ContinuousELBOResult(_Totals):
    """Per data point (float64 ``[B]``): ``total`` L = ``prior`` + ``diffusion`` + ``drift``; ``diffusion`` is the
    estimated time integral, ``variance`` the Monte Carlo variance of that estimate; ``drift`` =
    -d (log alpha(T) - log alpha(t_eps)); ``nfe`` = num_time_samples."""

    total: torch.Tensor
    prior: torch.Tensor
    diffusion: torch.Tensor
    drift: torch.Tensor
    variance: torch.Tensor
    dim: int
    nfe: int
    t_eps: float


@dataclass(frozen=True)
class ContinuousELBO:
    """Song et al.'s continuous-time bound for any SDE (module docstring).

    Args:
        num_time_samples: draws (t, z) per data point (>= 2, for the variance).
        importance: "g2/sigma2" (default) or "uniform".
        t_eps: lower end of the time integral, in [t_min, T); None: ``sde.t_min``.
        table_size: points of the tabulated importance density.
    """

    num_time_samples: int = 100
    importance: str = "g2/sigma2"
    t_eps: float | None = None
    table_size: int = 4001

    def __post_init__(self):
        check_int("num_time_samples", self.num_time_samples, minimum=2)
        check_in("importance", self.importance, IMPORTANCE)
        check_int("table_size", self.table_size, minimum=16)
        if self.t_eps is not None and (isinstance(self.t_eps, bool) or not isinstance(self.t_eps, (int, float))
                                       or not math.isfinite(self.t_eps) or self.t_eps < 0):
            raise ValueError(f"`t_eps` must be None or a finite number >= 0, got {self.t_eps!r}")

    def _table(self, sde: SDE, t_eps: float) -> tuple[np.ndarray, np.ndarray]:
        """Knots and CDF of the piecewise-constant proposal density ~ g^2 / sigma^2 (trapezoid masses)."""
        lin = np.linspace(t_eps, sde.T, self.table_size // 2)
        geo = np.geomspace(max(t_eps, 1e-7 * sde.T), sde.T, self.table_size // 2)
        knots = np.unique(np.concatenate([lin, geo]))
        with trusted_times():
            dens = _g2_over_sigma2(sde, torch.from_numpy(knots)).numpy()
        mass = np.diff(knots) * (dens[1:] + dens[:-1]) / 2
        cdf = np.concatenate([[0.0], np.cumsum(mass)])
        return knots, cdf / cdf[-1]

    def run(self, score_fn: ScoreFn, sde: SDE, x0: torch.Tensor, *,
            generator: torch.Generator | None = None) -> ContinuousELBOResult:
        """The bound for every point of ``x0`` ``[B, *D]`` with ``score_fn(x, t)`` (VP coordinates)."""
        _check_points(x0, score_fn, sde)
        t_eps = sde.t_min if self.t_eps is None else float(self.t_eps)
        if not sde.t_min <= t_eps < sde.T:
            raise ValueError(f"`t_eps` must lie in [t_min, T) = [{sde.t_min:g}, {sde.T:g}), got {t_eps!r}")
        if t_eps == 0 and float(sde.sigma(torch.zeros(1, dtype=torch.float64))) == 0:
            raise ValueError("`t_eps` must be > 0 for an SDE with sigma(0) = 0 (the integral diverges like log t_eps)")
        generator = check_generator(generator, x0.device)
        b, d, dtype = x0.shape[0], x0[0].numel(), x0.dtype
        x = x0.detach().to(torch.float64)
        if self.importance == "g2/sigma2":
            knots, cdf = self._table(sde, t_eps)
            cell_density = np.diff(cdf) / np.diff(knots)
        values = torch.zeros(self.num_time_samples, b, dtype=torch.float64, device=x.device)
        with torch.no_grad(), trusted_times():
            for j in range(self.num_time_samples):
                u = torch.rand(b, generator=generator, device=x.device, dtype=torch.float64)
                if self.importance == "uniform":
                    t = t_eps + (sde.T - t_eps) * u
                    density = torch.full_like(t, 1 / (sde.T - t_eps))
                else:
                    un = u.cpu().numpy()
                    t_np = np.interp(un, cdf, knots)
                    cell = np.clip(np.searchsorted(cdf, un, side="right") - 1, 0, len(cell_density) - 1)
                    t = torch.from_numpy(t_np).to(x.device)
                    density = torch.from_numpy(cell_density[cell]).to(x.device)
                z = torch.randn(x0.shape, generator=generator, device=x.device, dtype=torch.float64)
                alpha, sigma = sde.alpha(t), sde.sigma(t)
                x_t = append_dims(alpha, x.ndim) * x + append_dims(sigma, x.ndim) * z
                score = score_fn(x_t.to(dtype), t.to(dtype)).to(torch.float64)
                residual = _sum((append_dims(sigma, x.ndim) * score + z) ** 2) - d
                values[j] = 0.5 * _g2_over_sigma2(sde, t) * residual / density
        diffusion = values.mean(0)
        variance = values.var(0) / self.num_time_samples
        ends = torch.tensor([t_eps, sde.T], dtype=torch.float64)
        log_alpha = sde.log_alpha(ends)
        drift = torch.full_like(diffusion, -d * float(log_alpha[1] - log_alpha[0]))
        prior = _prior_cross_entropy(sde, x)
        return ContinuousELBOResult(prior + diffusion + drift, prior, diffusion, drift, variance, d,
                                    self.num_time_samples, t_eps)


@dataclass(frozen=True)
class ELBOReport:
    """``likelihood=elbo``: both bounds (the discrete one for a ``DiscreteVPSDE`` only) with their terms, as
    plain numbers for ``metrics.json``; per-point totals are returned too (``"per_point"``), for exact gaps.

    Args as ``ContinuousELBO`` (num_time_samples, importance) and ``DiscreteELBO`` (variance, decoder).
    """

    num_time_samples: int = 100
    importance: str = "g2/sigma2"
    variance: str = "large"
    decoder: str = "gaussian"

    def __post_init__(self):
        ContinuousELBO(self.num_time_samples, self.importance)
        DiscreteELBO(self.variance, self.decoder)

    def run(self, score_fn: ScoreFn, sde: SDE, x0: torch.Tensor, *, generator: torch.Generator | None = None) -> dict:
        generator = check_generator(generator, x0.device)
        cont = ContinuousELBO(self.num_time_samples, self.importance).run(score_fn, sde, x0, generator=generator)
        out = {"continuous": {
            "mean": cont.mean, "stderr": cont.stderr, "bits_per_dim": float(cont.bits_per_dim().mean()),
            "prior": float(cont.prior.mean()), "diffusion": float(cont.diffusion.mean()),
            "drift": float(cont.drift.mean()), "mc_variance": float(cont.variance.mean()), "nfe": cont.nfe,
            "t_eps": cont.t_eps, "importance": self.importance}, "per_point": {"continuous": cont.total}}
        if isinstance(sde, DiscreteVPSDE):
            disc = DiscreteELBO(self.variance, self.decoder).run(score_fn, sde, x0, generator=generator)
            out["discrete"] = {
                "mean": disc.mean, "stderr": disc.stderr, "bits_per_dim": float(disc.bits_per_dim().mean()),
                "L_T": float(disc.prior.mean()), "L_0": float(disc.decoder.mean()),
                "sum_L_t-1": float(disc.terms.sum(1).mean()), "L_t-1": disc.terms.mean(0).tolist(),
                "nfe": disc.nfe, "variance": self.variance, "decoder": self.decoder}
            out["per_point"]["discrete"] = disc.total
        return out
