"""Exact test problems shared by the tests: closed forms written independently of the library.

Everything here is numpy / float64 and follows the table in ``docs/conventions.md`` directly; it
reads only the *parameters* of an SDE object (sigma_min, beta_max, betas, ...), never its
methods, so comparing the library against these functions is a comparison with an
independent exact result, not with the code restating itself.

* ``SDE_CASES``: the SDEs every test is parametrised over (VE, VP, sub-VP, DDPM's discrete VP),
  with default and non-default parameters.
* ``exact_alpha``, ``exact_sigma``, ``exact_drift_coef`` (= d log alpha / dt), ``exact_g2``.
* A Gaussian target N(mu, s^2 I) with its exact perturbed score, eps, VP denoiser and EDM
  (VE-ised) denoiser.
* A Gaussian-mixture density, score and posterior mean via scipy.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from scoresde.sdes import SDE, DiscreteVPSDE, SubVPSDE, VESDE, VPSDE

# -- the SDEs under test ------------------------------------------------------------------------

SDE_CASES = {
    "ve": lambda: VESDE(),
    "ve_custom": lambda: VESDE(sigma_min=0.05, sigma_max=5.0),
    "vp": lambda: VPSDE(),
    "vp_custom": lambda: VPSDE(beta_min=0.5, beta_max=8.0, t_min=1e-3),
    "subvp": lambda: SubVPSDE(),
    "ddpm": lambda: DiscreteVPSDE.linear(1000),
}
"""name -> factory; parametrise with ``pytest.mark.parametrize("sde_name", SDE_CASES)``."""

MAIN_SDES = ("ve", "vp", "subvp", "ddpm")


def make_sde(name: str) -> SDE:
    return SDE_CASES[name]()


def time_grid(sde: SDE, n: int = 41) -> np.ndarray:
    """``n`` times covering [t_min, T] (both ends included), plus for the discrete chain points
    strictly between knots (where its piecewise-constant rate is unambiguous)."""
    t = np.linspace(sde.t_min, 1.0, n)
    if isinstance(sde, DiscreteVPSDE):
        t = np.concatenate([t, (np.arange(1, 1000, 37) + 0.37) / sde.num_steps])
    return np.sort(t)


def interior_times(sde: SDE, n: int = 17) -> np.ndarray:
    """Times in the open interval (t_min, T), away from the knots of the discrete chain, where
    finite differences and autograd of alpha, sigma are well defined."""
    t = np.linspace(sde.t_min, 1.0, n + 2)[1:-1]
    if isinstance(sde, DiscreteVPSDE):
        # move each point to the middle of its knot interval
        n_knots = sde.num_steps
        t = (np.floor(t * n_knots) + 0.5) / n_knots
    return t


# -- closed forms (docs/conventions.md) ----------------------------------------------------------------


def _int_beta(sde, t):
    """int_0^t beta(u) du for beta(u) = beta_min + u (beta_max - beta_min)."""
    return sde.beta_min * t + 0.5 * t**2 * (sde.beta_max - sde.beta_min)


def _ddpm_log_alpha_bar_knots(sde: DiscreteVPSDE) -> np.ndarray:
    """log alpha_bar_k for k = 0..N (alpha_bar_0 = 1), by numpy's cumprod of (1 - beta)."""
    betas = sde.betas.numpy()
    return np.log(np.concatenate([[1.0], np.cumprod(1.0 - betas)]))


def exact_alpha(sde: SDE, t) -> np.ndarray:
    t = np.asarray(t, dtype=np.float64)
    if isinstance(sde, VESDE):
        return np.ones_like(t)
    if isinstance(sde, (VPSDE, SubVPSDE)):
        return np.exp(-0.5 * _int_beta(sde, t))
    if isinstance(sde, DiscreteVPSDE):
        return np.exp(0.5 * _ddpm_log_alpha2(sde, t))
    raise TypeError(type(sde))


def _ddpm_log_alpha2(sde: DiscreteVPSDE, t: np.ndarray) -> np.ndarray:
    # alpha(t_k)^2 = alpha_bar_k at the knots t_k = k/N, log alpha^2 linear in between
    knots = np.arange(sde.num_steps + 1) / sde.num_steps
    return np.interp(t, knots, _ddpm_log_alpha_bar_knots(sde))


def exact_sigma(sde: SDE, t) -> np.ndarray:
    t = np.asarray(t, dtype=np.float64)
    if isinstance(sde, VESDE):
        return sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
    if isinstance(sde, SubVPSDE):
        return -np.expm1(-_int_beta(sde, t))  # 1 - alpha^2
    if isinstance(sde, VPSDE):
        return np.sqrt(-np.expm1(-_int_beta(sde, t)))  # sqrt(1 - alpha^2)
    if isinstance(sde, DiscreteVPSDE):
        return np.sqrt(-np.expm1(_ddpm_log_alpha2(sde, t)))
    raise TypeError(type(sde))


def ddpm_rate(sde: DiscreteVPSDE, t) -> np.ndarray:
    """beta(t) = -N log(1 - beta_k) on (t_{k-1}, t_k]; ``t`` must not sit on a knot."""
    k = np.ceil(np.asarray(t) * sde.num_steps).astype(int)  # 1-based knot index
    return -sde.num_steps * np.log1p(-sde.betas.numpy()[k - 1])


def exact_drift_coef(sde: SDE, t) -> np.ndarray:
    """f(x, t) = c(t) x; returns c(t) = d log alpha / dt."""
    t = np.asarray(t, dtype=np.float64)
    if isinstance(sde, VESDE):
        return np.zeros_like(t)
    if isinstance(sde, (VPSDE, SubVPSDE)):
        return -0.5 * (sde.beta_min + t * (sde.beta_max - sde.beta_min))
    if isinstance(sde, DiscreteVPSDE):
        return -0.5 * ddpm_rate(sde, t)
    raise TypeError(type(sde))


def exact_g2(sde: SDE, t) -> np.ndarray:
    """Squared diffusion coefficient g(t)^2."""
    t = np.asarray(t, dtype=np.float64)
    if isinstance(sde, VESDE):
        return exact_sigma(sde, t) ** 2 * 2 * math.log(sde.sigma_max / sde.sigma_min)
    if isinstance(sde, SubVPSDE):
        beta = sde.beta_min + t * (sde.beta_max - sde.beta_min)
        return beta * -np.expm1(-2 * _int_beta(sde, t))  # beta (1 - exp(-2 int beta))
    if isinstance(sde, VPSDE):
        return sde.beta_min + t * (sde.beta_max - sde.beta_min)
    if isinstance(sde, DiscreteVPSDE):
        return ddpm_rate(sde, t)
    raise TypeError(type(sde))


def exact_prior_std(sde: SDE) -> float:
    return sde.sigma_max if isinstance(sde, VESDE) else 1.0


# -- a Gaussian target N(mu, s^2 I) ----------------------------------------------------------------
# With x_0 ~ N(mu, s^2 I) and x_t = alpha x_0 + sigma z, x_t ~ N(alpha mu, (alpha^2 s^2 + sigma^2) I), so
#   score(x, t) = (alpha mu - x) / (alpha^2 s^2 + sigma^2)
#   eps(x, t)   = E[z | x_t] = -sigma score = sigma (x - alpha mu) / (alpha^2 s^2 + sigma^2)
#   x0_hat(x,t) = E[x_0 | x_t] = mu + alpha s^2 (x - alpha mu) / (alpha^2 s^2 + sigma^2)   (Gaussian conditioning)
# In VE-ised coordinates x~ = x / alpha = x_0 + sigma~ z with sigma~ = sigma / alpha, the pair
# (x_0, x~) is jointly Gaussian with Cov(x_0, x~) = s^2, Var(x~) = s^2 + sigma~^2, hence EDM's
#   D(x~, sigma~) = E[x_0 | x~] = mu + s^2 (x~ - mu) / (s^2 + sigma~^2) = (s^2 x~ + sigma~^2 mu) / (s^2 + sigma~^2)
#   eps~(x~, sigma~) = (x~ - D) / sigma~ = sigma~ (x~ - mu) / (s^2 + sigma~^2).
# These take (x~, sigma~) only: they know nothing about t or alpha.


def _col(v: np.ndarray, ndim: int) -> np.ndarray:
    return np.asarray(v).reshape(-1, *([1] * (ndim - 1)))


def gaussian_score(x: np.ndarray, alpha, sigma, mu, s) -> np.ndarray:
    a, sg = _col(alpha, x.ndim), _col(sigma, x.ndim)
    return (a * mu - x) / (a**2 * s**2 + sg**2)


def gaussian_eps(x: np.ndarray, alpha, sigma, mu, s) -> np.ndarray:
    a, sg = _col(alpha, x.ndim), _col(sigma, x.ndim)
    return sg * (x - a * mu) / (a**2 * s**2 + sg**2)


def gaussian_x0_hat(x: np.ndarray, alpha, sigma, mu, s) -> np.ndarray:
    a, sg = _col(alpha, x.ndim), _col(sigma, x.ndim)
    return mu + a * s**2 * (x - a * mu) / (a**2 * s**2 + sg**2)


def gaussian_edm_denoiser(x_ve: np.ndarray, sigma_ve, mu, s) -> np.ndarray:
    sv = _col(sigma_ve, x_ve.ndim)
    return (s**2 * x_ve + sv**2 * mu) / (s**2 + sv**2)


def gaussian_edm_eps(x_ve: np.ndarray, sigma_ve, mu, s) -> np.ndarray:
    sv = _col(sigma_ve, x_ve.ndim)
    return sv * (x_ve - mu) / (s**2 + sv**2)


# -- Gaussian mixtures via scipy -----------------------------------------------------------------


def mixture_log_prob(x: np.ndarray, weights, means, covs) -> np.ndarray:
    """log sum_k w_k N(x; mu_k, Sigma_k) for x ``[B, d]`` (scipy's logpdf, then logsumexp)."""
    comps = np.stack(
        [np.log(w) + np.atleast_1d(multivariate_normal(m, c).logpdf(x)) for w, m, c in zip(weights, means, covs)],
        axis=1,
    )
    return logsumexp(comps, axis=1)


def mixture_responsibilities(x: np.ndarray, weights, means, covs) -> np.ndarray:
    comps = np.stack(
        [np.log(w) + np.atleast_1d(multivariate_normal(m, c).logpdf(x)) for w, m, c in zip(weights, means, covs)],
        axis=1,
    )
    return np.exp(comps - logsumexp(comps, axis=1, keepdims=True))


def perturbed_mixture_params(weights, means, covs, alpha: float, sigma: float):
    """p_t = sum_k w_k N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I)."""
    d = means.shape[1]
    return weights, alpha * means, alpha**2 * covs + sigma**2 * np.eye(d)


def mixture_posterior_mean(x: np.ndarray, weights, means, covs, alpha: float, sigma: float) -> np.ndarray:
    """E[x_0 | x_t = x] for x_0 ~ mixture: sum_k r_k(x) (mu_k + alpha Sigma_k C_k^{-1} (x - alpha mu_k)),
    C_k = alpha^2 Sigma_k + sigma^2 I (Gaussian conditioning within each component)."""
    w, m_t, c_t = perturbed_mixture_params(weights, means, covs, alpha, sigma)
    r = mixture_responsibilities(x, w, m_t, c_t)
    out = np.zeros_like(x)
    for k in range(len(w)):
        cond = means[k] + alpha * (covs[k] @ np.linalg.solve(c_t[k], (x - m_t[k]).T)).T
        out += r[:, k : k + 1] * cond
    return out


def to_np(v: torch.Tensor) -> np.ndarray:
    return v.detach().cpu().double().numpy()


def t64(v) -> torch.Tensor:
    return torch.as_tensor(np.asarray(v), dtype=torch.float64)


# -- standardised moment errors ----------------------------------------------------------------------


def whitened_moment_errors(mean_hat: torch.Tensor, cov_hat: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor,
                           m: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Errors of a sample mean and covariance of ``m`` draws from N(mean, cov), each in its own standard errors.

    With L L^T = cov: sqrt(m) L^-1 (mean_hat - mean) ~ N(0, I), and W = L^-1 cov_hat L^-T - I (Wishart) has
    standard errors sqrt(2/m) on the diagonal and sqrt(1/m) off it, so every axis counts the same (a
    Frobenius norm of cov_hat - cov is dominated by the major axis).  Returns (mean z [d], W / se [d, d]).
    """
    d = mean.shape[0]
    chol = torch.linalg.cholesky(cov)
    z = math.sqrt(m) * torch.linalg.solve_triangular(chol, (mean_hat - mean)[:, None], upper=False)[:, 0]
    white = torch.linalg.solve_triangular(chol, torch.linalg.solve_triangular(chol, cov_hat, upper=False).T, upper=False)
    eye = torch.eye(d, dtype=cov.dtype)
    se = (math.sqrt(1 / m) * (1 - eye) + math.sqrt(2 / m) * eye)
    return z, (white - eye) / se
