"""Temperature and MALA (``samplers.langevin``, ``samplers.correctors``) against exact references.

Reference for p^(1/T): the perturbed mixture's density (scipy, ``tests/problems.py``, not the
library) raised to 1/T and normalised numerically on a 0.01-spaced grid over [-9, 9]^2 (midpoint
quadrature; the tails beyond hold < 1e-12 of the mass, the grid error in a moment is ~h^2/12
relative, far below the tolerances).  The plane is split into two regions by the argmax responsibility
of the untempered mixture (the same rule for the reference and the samples); "mode weight" = mass
of a region, "per-mode covariance" = covariance within it.

Tolerances (the i.i.d. floor): every chain is run independently and only its last state is used,
so the n states are i.i.d. draws from the chain's law.  A region's weight w has sd sqrt(w(1-w)/n);
a within-region covariance entry S_ij over n_k = n w points has sd sqrt((E[d_i^2 d_j^2] - S_ij^2)/n_k),
with the fourth moment taken from the same grid quadrature.  We allow 4.5 sd: a false failure
rate of 7e-6 per comparison for a normal statistic, < 1e-3 over the 48 comparisons of this file.
The unadjusted chain keeps an O(eps) bias on top (stationary variance v/(1 - eps/(4v)) on a
Gaussian of variance v): 1.7 % of a variance >= 0.29 at eps = 0.02, at most 0.5 sd here.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from problems import mixture_log_prob, mixture_responsibilities
from scoresde.data.toy import GaussianMixture
from scoresde.samplers import (
    AnnealedLangevin, AnnealedLangevinCorrector, Langevin, LangevinCorrector, MetropolisResult,
)
from scoresde.samplers.base import CountedScore
from scoresde.sdes import VESDE, VPSDE

WEIGHTS = np.array([0.3, 0.7])
MEANS = np.array([[-1.0, 0.0], [1.0, 0.3]])
COVS = np.array([[[0.45, 0.15], [0.15, 0.3]], [[0.3, -0.1], [-0.1, 0.5]]])
Z_TOL = 4.5


def _problem():
    sde = VESDE()  # t = t_min = 0: p_0 = the mixture convolved with N(0, sigma_min^2 I)
    covs_t = COVS + sde.sigma_min**2 * np.eye(2)
    target = GaussianMixture(torch.tensor(WEIGHTS), torch.tensor(MEANS), torch.tensor(COVS))
    return sde, target.score_fn(sde), covs_t


@functools.lru_cache(maxsize=1)
def _grid(sigma_min: float):
    """The quadrature grid: midpoints, log p and region of each (computed once per session)."""
    covs_t = COVS + sigma_min**2 * np.eye(2)
    h = 0.01
    g = np.arange(-9, 9, h) + h / 2
    gx, gy = np.meshgrid(g, g, indexing="ij")
    pts = np.stack([gx.ravel(), gy.ravel()], 1)
    return pts, mixture_log_prob(pts, WEIGHTS, MEANS, covs_t), mixture_responsibilities(pts, WEIGHTS, MEANS, covs_t).argmax(1)


def _reference(temperature: float, covs_t: np.ndarray):
    """Per region: weight, covariance and fourth moments E[d_i^2 d_j^2] of p^(1/T), by quadrature."""
    pts, log_p, region = _grid(float(covs_t[0, 0, 0] - COVS[0, 0, 0]) ** 0.5)
    w = np.exp((log_p - log_p.max()) / temperature)
    w /= w.sum()
    out = []
    for k in range(2):
        m = region == k
        wk = w[m].sum()
        q = w[m] / wk
        d = pts[m] - q @ pts[m]
        outer = d[:, :, None] * d[:, None, :]
        out.append((wk, np.einsum("n,nij->ij", q, outer), np.einsum("n,nij->ij", q, outer**2)))
    return out


def _check_against_reference(x: torch.Tensor, temperature: float, covs_t: np.ndarray) -> None:
    x = x.double().numpy()
    n = len(x)
    region = mixture_responsibilities(x, WEIGHTS, MEANS, covs_t).argmax(1)
    for k, (wk, cov, m4) in enumerate(_reference(temperature, covs_t)):
        frac = (region == k).mean()
        z_w = (frac - wk) / math.sqrt(wk * (1 - wk) / n)
        assert abs(z_w) < Z_TOL, f"T={temperature} region {k}: weight {frac:.4f} vs exact {wk:.4f} (z = {z_w:.2f})"
        sd = np.sqrt((m4 - cov**2) / (n * wk))
        z_c = (np.cov(x[region == k].T) - cov) / sd
        assert np.abs(z_c).max() < Z_TOL, f"T={temperature} region {k}: covariance z-scores {z_c.round(2).tolist()}"


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_mala_targets_p_to_the_one_over_t(temperature):
    """MALA (step 0.5, 400 steps, acceptance ~0.76) from a broad start reaches p^(1/T): weights and covariances."""
    sde, score, covs_t = _problem()
    x0 = 2 * torch.randn(2000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    result = Langevin(step_size=0.5, num_steps=400, temperature=temperature, metropolis=True).run(
        score, sde, x_init=x0, generator=torch.Generator().manual_seed(2))
    assert isinstance(result, MetropolisResult) and 0.5 < result.acceptance_rate < 0.95
    _check_against_reference(result.x, temperature, covs_t)


@pytest.mark.parametrize("temperature", [pytest.param(0.5, marks=pytest.mark.slow), pytest.param(1.0, marks=pytest.mark.slow), 2.0])
def test_unadjusted_langevin_targets_p_to_the_one_over_t(temperature):
    """Unadjusted Langevin at a small step (eps = 0.02, 2000 steps) from a broad start: the same reference."""
    sde, score, covs_t = _problem()
    x0 = 2 * torch.randn(2000, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = Langevin(step_size=0.02, num_steps=2000, temperature=temperature).sample(
        score, sde, x_init=x0, generator=torch.Generator().manual_seed(4))
    _check_against_reference(x, temperature, covs_t)


# -- exact at any step size; NFE; the log-density ---------------------------------------------------

def _gaussian(v: float = 0.5):
    """N(0, v I) in 2-D as a one-component mixture, under VE at t = 0 (variance v + sigma_min^2)."""
    sde = VESDE()
    target = GaussianMixture(torch.ones(1, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64),
                             torch.full((1,), v, dtype=torch.float64))
    return sde, target.score_fn(sde), v + sde.sigma_min**2


def test_mala_is_exact_at_a_step_where_the_unadjusted_chain_is_biased():
    """eps = v: ULA's stationary variance is T v / (1 - eps/(4v)) = 4/3 T v; MALA's is T v exactly."""
    sde, score, v = _gaussian()
    n, temperature = 4000, 2.0
    x0 = torch.zeros(n, 2, dtype=torch.float64)
    kwargs = dict(step_size=v, num_steps=200, temperature=temperature)
    mala = Langevin(metropolis=True, **kwargs).sample(score, sde, x_init=x0, generator=torch.Generator().manual_seed(0))
    ula = Langevin(**kwargs).sample(score, sde, x_init=x0, generator=torch.Generator().manual_seed(0))
    sd = temperature * v * math.sqrt(2 / (2 * n))  # sample variance of 2n i.i.d. normal coordinates
    assert abs(float(mala.var(unbiased=True)) - temperature * v) < Z_TOL * sd
    ula_exact = temperature * v / (1 - 0.25)
    assert abs(float(ula.var(unbiased=True)) - ula_exact) < Z_TOL * sd * 4 / 3
    assert ula_exact - temperature * v > 10 * sd  # the two are far apart: the test can tell them apart


def test_mala_nfe_counts_log_density_and_log_prob_fn_equals_the_targets_own():
    sde, score, _ = _gaussian()
    sampler = Langevin(step_size=0.1, num_steps=7, metropolis=True)
    a = sampler.run(score, sde, (16, 2), generator=torch.Generator().manual_seed(0))
    assert a.nfe == 2 * 7 + 2 and a.log_prob_evals == 8
    b = sampler.run(lambda x, t: score(x, t), sde, (16, 2), generator=torch.Generator().manual_seed(0),
                    log_prob_fn=score.log_prob)
    assert torch.equal(a.x, b.x) and a.acceptance_rate == b.acceptance_rate
    annealed = AnnealedLangevin(num_levels=3, steps_per_level=4, metropolis=True).run(
        score, sde, (16, 2), generator=torch.Generator().manual_seed(0))
    assert annealed.nfe == 2 * 3 * (4 + 1) + 1 and 0 < annealed.acceptance_rate <= 1


def test_mala_with_per_sample_seeds_is_batch_independent():
    sde, score, _ = _gaussian()
    sampler = Langevin(step_size=0.3, num_steps=20, metropolis=True)
    full = sampler.sample(score, sde, (4, 2), seeds=range(4))
    part = sampler.sample(score, sde, (2, 2), seeds=range(2))
    torch.testing.assert_close(full[:2], part, rtol=0, atol=1e-12)


def test_mala_errors_name_the_argument():
    sde, score, _ = _gaussian()
    with pytest.raises(ValueError, match="log_prob_fn"):
        Langevin(metropolis=True).run(lambda x, t: -x, sde, (4, 2))
    with pytest.raises(ValueError, match="metropolis=True"):
        Langevin().run(score, sde, (4, 2), log_prob_fn=score.log_prob)
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        Langevin(metropolis=True, num_steps=2).run(score, sde, (4, 2), log_prob_fn=lambda x, t: x)
    with pytest.raises(TypeError, match="metropolis"):
        Langevin(metropolis=1)
    for make in (Langevin, AnnealedLangevin, LangevinCorrector, AnnealedLangevinCorrector):
        for bad in (0.0, -1.0, float("nan"), float("inf")):
            with pytest.raises(ValueError, match="temperature"):
                make(temperature=bad)


# -- the correctors and the annealed sampler: noise scaled by sqrt(T), stationary variance --------------

@pytest.mark.parametrize("make", [LangevinCorrector, AnnealedLangevinCorrector])
def test_corrector_noise_is_scaled_by_sqrt_temperature(make):
    """Same generator state: x_T - x_mean = sqrt(T) (x_1 - x_mean), and x_mean does not depend on T."""
    sde = VPSDE()
    _, score, _ = _gaussian()
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.full((32,), 0.3, dtype=torch.float64)
    one = make().step(x, CountedScore(score), sde, t, t - 0.01, torch.Generator().manual_seed(5))
    hot = make(temperature=3.0).step(x, CountedScore(score), sde, t, t - 0.01, torch.Generator().manual_seed(5))
    assert torch.equal(one[1], hot[1])
    torch.testing.assert_close(hot[0] - hot[1], math.sqrt(3.0) * (one[0] - one[1]), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_corrector_and_annealed_langevin_stationary_variance_is_exact(temperature):
    """On N(0, v I) the chains are linear and their stationary variance is closed-form:
    corrector x + eps s + sqrt(2 eps T) z: T v / (1 - eps/(2v)); AnnealedLangevin (one level, step a):
    T v_T / (1 - a/(4 v_T)) with v_T = v + sigma_max^2 the variance of p at t = T."""
    n = 10_000
    sde = VESDE(sigma_min=0.3, sigma_max=1.0)
    target = GaussianMixture(torch.ones(1, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64),
                             torch.full((1,), 0.5, dtype=torch.float64))
    score = target.score_fn(sde)
    x0 = torch.zeros(n, 2, dtype=torch.float64)
    snr = 0.3
    corrector, counted = AnnealedLangevinCorrector(snr=snr, temperature=temperature), CountedScore(score)
    t, g, x = torch.ones(n, dtype=torch.float64), torch.Generator().manual_seed(0), x0
    for _ in range(300):  # at t = T = 1 with t_next = t: the one-step a = 1, step 2 (snr sigma_max)^2
        x, _ = corrector.step(x, counted, sde, t, t, g)
    v = 0.5 + 1.0**2  # the variance of p_1: sigma(1) = sigma_max
    eps = 2 * (snr * 1.0) ** 2
    exact = temperature * v / (1 - eps / (2 * v))
    sd = exact * math.sqrt(2 / (2 * n))
    assert abs(float(x.var()) - exact) < Z_TOL * sd, (float(x.var()), exact)
    a = 0.4
    x = AnnealedLangevin(step_size=a, num_levels=1, steps_per_level=300, denoise=False, temperature=temperature).sample(
        score, sde, x_init=x0, generator=torch.Generator().manual_seed(1))
    exact = temperature * v / (1 - a / (4 * v))
    assert abs(float(x.var()) - exact) < Z_TOL * exact * math.sqrt(1 / n), (float(x.var()), exact)
