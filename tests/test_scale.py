"""scoresde.data.scale: sigma_max from data (Song & Ermon 2020, technique 1) and the prior mismatch of p_T."""
from __future__ import annotations

import logging
import math

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from scoresde import toy
from scoresde.data.scale import max_pairwise_distance, prior_mismatch, sigma_max_from_data, warn_prior_mismatch
from scoresde.sdes import VESDE, VPSDE, SubVPSDE

SDES = [VPSDE(), SubVPSDE(), VESDE(), VESDE(sigma_max=3.0), VPSDE(beta_max=5.0), VPSDE().discrete(1000)]


def _brute_diameter(x: torch.Tensor) -> float:
    x = x.reshape(x.shape[0], -1).double()
    return float(torch.cdist(x, x).max())


def test_diameter_exact_small():
    x = torch.randn(300, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert max_pairwise_distance(x) == pytest.approx(_brute_diameter(x), rel=1e-12)
    # blocks smaller than n: the same pair
    assert max_pairwise_distance(x, max_points=300) == pytest.approx(_brute_diameter(x), rel=1e-12)


def test_diameter_image_shape_and_float32():
    x = torch.rand(64, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    assert sigma_max_from_data(x) == pytest.approx(_brute_diameter(x), rel=1e-6)


def test_diameter_subsample_is_a_lower_bound_and_sweeps_find_extremes():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5000, 2, generator=g, dtype=torch.float64)
    exact = max_pairwise_distance(x, max_points=5000)
    approx = max_pairwise_distance(x, max_points=200, generator=torch.Generator().manual_seed(3))
    assert approx <= exact + 1e-12
    assert approx >= 0.5 * exact  # guaranteed: the row farthest from any row is >= D/2 away (0.9-1.0 typical here)
    # two planted outliers that a 200-point subsample most likely misses (p = 1 - (1 - 200/n)^2 ~ 8 %)
    x[123] = torch.tensor([40.0, 0.0], dtype=torch.float64)
    x[4000] = torch.tensor([-40.0, 1.0], dtype=torch.float64)
    found = max_pairwise_distance(x, max_points=200, generator=torch.Generator().manual_seed(3))
    assert found == pytest.approx(math.hypot(80.0, 1.0), rel=1e-12)


@pytest.mark.parametrize("bad", [torch.zeros(5), torch.zeros(1, 2), torch.tensor([[0.0, 1.0], [math.nan, 0.0]])])
def test_diameter_checks_input(bad):
    with pytest.raises(ValueError, match="`x`"):
        sigma_max_from_data(bad)
    with pytest.raises(TypeError, match="`x`"):
        sigma_max_from_data(object())


def test_diameter_accepts_array_likes():
    points = [[0.0, 1.0], [1.0, 0.0], [3.0, 5.0]]
    assert sigma_max_from_data(points) == sigma_max_from_data(torch.tensor(points, dtype=torch.float64))


def _gaussian(mean, cov) -> toy.GaussianMixture:
    return toy.GaussianMixture(torch.ones(1, dtype=torch.float64), torch.as_tensor(mean, dtype=torch.float64)[None],
                               torch.as_tensor(cov, dtype=torch.float64)[None])


def _exact_kl(mean, cov, sde) -> float:
    """KL(p_T || prior) for Gaussian data N(mean, cov): p_T = N(a mean, a^2 cov + b^2 I), exactly (torch.distributions)."""
    t = torch.tensor([sde.T], dtype=torch.float64)
    a, b = float(sde.alpha(t)), float(sde.sigma(t))
    d = len(mean)
    eye = torch.eye(d, dtype=torch.float64)
    p_t = MultivariateNormal(a * torch.as_tensor(mean, dtype=torch.float64), a * a * torch.as_tensor(cov) + b * b * eye)
    prior = MultivariateNormal(torch.zeros(d, dtype=torch.float64), sde.prior_std**2 * eye)
    return float(kl_divergence(p_t, prior))


MEAN, COV = [3.0, -1.0, 0.5], [[2.0, 0.3, 0.0], [0.3, 1.0, -0.2], [0.0, -0.2, 0.5]]


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_prior_mismatch_exact_gaussian(sde):
    pm = prior_mismatch(_gaussian(MEAN, COV), sde)
    assert pm.kl == pytest.approx(_exact_kl(MEAN, COV, sde), rel=1e-9, abs=1e-15)
    assert pm.kl == pytest.approx(pm.kl_mean + pm.kl_cov, rel=1e-12)
    assert pm.kl_mean >= 0 and pm.kl_cov >= 0 and pm.dim == 3
    assert pm.tv_bound == pytest.approx(math.sqrt(pm.kl / 2))
    t = torch.tensor([1.0], dtype=torch.float64)
    assert pm.mean_offset == pytest.approx(float(sde.alpha(t)) * math.hypot(*MEAN) / sde.prior_std, rel=1e-12)


def test_prior_mismatch_monte_carlo_exact_and_lower_bound():
    """KL(p_T || prior) by Monte Carlo with exact log densities: equal for Gaussian data, >= for a mixture.

    Tolerance: 5 standard errors of the Monte Carlo mean of log p_T(x) - log prior(x) over n = 200 000 draws.
    """
    sde = VESDE(sigma_max=3.0)  # a VE whose sigma_max is far below the data's spread: a sizable KL
    n = 200_000
    g = torch.Generator().manual_seed(4)
    for mixture in (_gaussian(MEAN, COV), toy.ncsn_two_modes()):
        p_t = mixture.marginal(sde, sde.T)
        x = p_t.sample(n, g, dtype=torch.float64)
        ratio = p_t.log_prob(x) - sde.prior_log_prob(x)
        mc, se = float(ratio.mean()), float(ratio.std()) / math.sqrt(n)
        pm = prior_mismatch(mixture, sde)
        if mixture.num_components == 1:
            assert abs(pm.kl - mc) < 5 * se, (pm.kl, mc, se)
        else:
            assert pm.kl < mc - 5 * se, (pm.kl, mc, se)  # strictly below: the mixture is far from Gaussian


def test_prior_mismatch_from_samples_high_dim():
    """d > n: the covariance spectrum comes from the n x n Gram matrix; equals the d x d formula."""
    g = torch.Generator().manual_seed(5)
    x = 2.0 + torch.randn(20, 50, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3.0, 50, dtype=torch.float64)
    for sde in (VPSDE(beta_max=3.0), VESDE(sigma_max=4.0)):
        pm = prior_mismatch(x, sde)
        ref = _exact_kl(x.mean(0).tolist(), torch.cov(x.T), sde)
        assert pm.kl == pytest.approx(ref, rel=1e-9)
    # samples of a mixture approach the mixture's exact moments (n = 50 000: relative error ~1 %)
    m = toy.ncsn_two_modes()
    xs = m.sample(50_000, torch.Generator().manual_seed(6), dtype=torch.float64)
    assert prior_mismatch(xs, VPSDE()).kl == pytest.approx(prior_mismatch(m, VPSDE()).kl, rel=0.05)
    # image-shaped samples are flattened
    assert prior_mismatch(xs.reshape(-1, 1, 1, 2), VPSDE()).kl == pytest.approx(prior_mismatch(xs, VPSDE()).kl)


def test_prior_mismatch_checks_input():
    with pytest.raises(TypeError, match="`sde`"):
        prior_mismatch(toy.ncsn_two_modes(), "vp")
    with pytest.raises(ValueError, match="`data`"):
        prior_mismatch(torch.zeros(1, 2), VPSDE())


def test_warn_prior_mismatch(caplog):
    with caplog.at_level(logging.WARNING, logger="scoresde.data.scale"):
        pm = warn_prior_mismatch(toy.eight_gaussians(), VPSDE())  # centred, unit scale: no warning
        assert pm.tv_bound < 1e-3 and not caplog.records
        pm = warn_prior_mismatch(toy.ncsn_two_modes(), VPSDE())  # mean (3, 3) leaves alpha(1) * 3 in p_T
        assert pm.tv_bound > 0.01
    assert len(caplog.records) == 1 and "prior mismatch" in caplog.records[0].getMessage()
    with pytest.raises(ValueError, match="`threshold`"):
        warn_prior_mismatch(toy.ncsn_two_modes(), VPSDE(), threshold=0.0)
