"""Tests for ``scoresde.data.toy``: exact Gaussian-mixture densities and perturbed scores against scipy,
autograd and closed forms; sampling and perturbation against the exact distributions with
tolerances derived from the sample size; the named targets against their stated parameters."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal, norm

from problems import (
    MAIN_SDES,
    exact_alpha,
    exact_sigma,
    gaussian_score,
    make_sde,
    mixture_log_prob,
    mixture_responsibilities,
    perturbed_mixture_params,
    t64,
    time_grid,
    to_np,
)
from scoresde.sdes import VESDE, VPSDE
from scoresde.data.toy import (
    TARGETS,
    GaussianMixture,
    MixtureScore,
    anisotropic_mixture,
    eight_gaussians,
    grid_gaussians,
    ncsn_two_modes,
)

MAIN = pytest.mark.parametrize("sde_name", MAIN_SDES)


def random_mixture(d: int = 3, k: int = 3, seed: int = 0):
    """Unequal weights, full (rotated, anisotropic) covariances A A^T + 0.1 I: numpy parameters."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.5, 2.0, k)
    w /= w.sum()
    means = rng.normal(0.0, 2.0, (k, d))
    a = rng.normal(0.0, 0.7, (k, d, d))
    covs = a @ a.transpose(0, 2, 1) + 0.1 * np.eye(d)
    return w, means, covs


def _params(mix: GaussianMixture):
    return to_np(mix.weights), to_np(mix.means), to_np(mix.covs)


MIXTURES = {
    **{name: factory for name, factory in TARGETS.items()},
    "ncsn_3d": lambda: ncsn_two_modes(dim=3),
    "random_3d": lambda: GaussianMixture(*(torch.tensor(p) for p in random_mixture())),
}
ALL_MIXTURES = pytest.mark.parametrize("mix_name", list(MIXTURES))


def _probe_points(mix: GaussianMixture, n: int = 64, seed: int = 0) -> torch.Tensor:
    """Half samples from the mixture, half from a broad Gaussian (the tails and the gaps between modes)."""
    gen = torch.Generator().manual_seed(seed)
    x = mix.sample(n // 2, gen, dtype=torch.float64).reshape(n // 2, -1)
    spread = float(to_np(mix.covariance()).diagonal().max()) ** 0.5
    y = mix.mean() + 1.5 * spread * torch.randn(n - n // 2, mix.dim, generator=gen, dtype=torch.float64)
    return torch.cat([x, y])


# -- densities and scores ------------------------------------------------------------------------


@ALL_MIXTURES
def test_log_prob_matches_scipy(mix_name):
    mix = MIXTURES[mix_name]()
    x = _probe_points(mix)
    expected = mixture_log_prob(to_np(x), *_params(mix))
    np.testing.assert_allclose(to_np(mix.log_prob(x)), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        mix.responsibilities(x).numpy(), mixture_responsibilities(to_np(x), *_params(mix)), rtol=1e-9, atol=1e-13
    )
    # float32 in, float32 out, to float32 accuracy: compared at the float32-rounded points (rounding x
    # itself moves log p by |score| |dx| ~ 40 * 3e-7 near the narrowest components)
    x32 = x.float()
    lp32 = mix.log_prob(x32)
    assert lp32.dtype == torch.float32
    expected32 = mixture_log_prob(to_np(x32), *_params(mix))
    np.testing.assert_allclose(to_np(lp32), expected32, rtol=1e-5, atol=1e-5)


@ALL_MIXTURES
def test_score_is_the_gradient_of_log_prob(mix_name):
    mix = MIXTURES[mix_name]()
    x = _probe_points(mix, seed=1).requires_grad_(True)
    (grad,) = torch.autograd.grad(mix.log_prob(x).sum(), x)
    torch.testing.assert_close(mix.score(x.detach()), grad, rtol=1e-10, atol=1e-12)


@MAIN
@pytest.mark.parametrize("mix_name", ["anisotropic_mixture", "random_3d", "eight_gaussians"])
def test_perturbed_log_density_matches_scipy(sde_name, mix_name):
    """p_t = sum_k w_k N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I), with a different t per sample; alpha and
    sigma from the closed forms."""
    sde, mix = make_sde(sde_name), MIXTURES[mix_name]()
    t = time_grid(sde, 11)
    x = _probe_points(mix, n=2 * len(t), seed=2)[: len(t)]
    score = mix.score_fn(sde)
    assert isinstance(score, MixtureScore) and score.mixture is mix and score.sde is sde
    got = to_np(score.log_prob(x, t64(t)))
    for i, ti in enumerate(t):
        params = perturbed_mixture_params(*_params(mix), exact_alpha(sde, ti), exact_sigma(sde, ti))
        expected = mixture_log_prob(to_np(x[i : i + 1]), *params)[0]
        assert abs(got[i] - expected) <= 1e-11 * max(1.0, abs(expected))


@MAIN
@pytest.mark.parametrize("mix_name", ["anisotropic_mixture", "random_3d", "ncsn_two_modes"])
def test_perturbed_score_is_the_gradient_of_the_perturbed_log_density(sde_name, mix_name):
    sde, mix = make_sde(sde_name), MIXTURES[mix_name]()
    t = t64(np.linspace(sde.t_min, 1.0, 32))
    x = _probe_points(mix, n=32, seed=3).requires_grad_(True)
    score = mix.score_fn(sde)
    (grad,) = torch.autograd.grad(score.log_prob(x, t).sum(), x)
    got = score(x.detach(), t)
    assert got.shape == x.shape
    torch.testing.assert_close(got, grad, rtol=1e-10, atol=1e-10 * float(grad.abs().max()))


@MAIN
def test_single_gaussian_perturbed_score_closed_form(sde_name):
    """One component: the score is C^{-1}(alpha mu - x), C = alpha^2 Sigma + sigma^2 I; isotropic Sigma = s^2 I gives
    (alpha mu - x)/(alpha^2 s^2 + sigma^2)."""
    sde = make_sde(sde_name)
    t = time_grid(sde, 16)
    alpha, sigma = exact_alpha(sde, t), exact_sigma(sde, t)
    gen = torch.Generator().manual_seed(4)
    mu, s = np.array([1.0, -2.0, 0.5]), 0.7
    iso = GaussianMixture([1.0], mu[None], [s**2])
    x = torch.randn(len(t), 3, generator=gen, dtype=torch.float64) * 3
    np.testing.assert_allclose(
        to_np(iso.score_fn(sde)(x, t64(t))), gaussian_score(to_np(x), alpha, sigma, mu, s), rtol=1e-11, atol=1e-13
    )
    _, means, covs = random_mixture(d=3, k=1, seed=5)
    full = GaussianMixture([1.0], means, covs)
    expected = np.stack(
        [np.linalg.solve(a**2 * covs[0] + sg**2 * np.eye(3), a * means[0] - xi) for a, sg, xi in zip(alpha, sigma, to_np(x))]
    )
    np.testing.assert_allclose(to_np(full.score_fn(sde)(x, t64(t))), expected, rtol=1e-10, atol=1e-12)
    # the clean score (sigma = 0) of a single Gaussian: Sigma^{-1}(mu - x)
    np.testing.assert_allclose(
        to_np(full.score(x)), np.linalg.solve(covs[0], (means[0] - to_np(x)).T).T, rtol=1e-10, atol=1e-12
    )


# -- the perturbed mixture: parameters and the empirical distribution of alpha x0 + sigma z --------


def _projected_moments(w, means, covs, v):
    """1-D mixture v^T x: mean, variance and 4th central moment (per component N(m_k, s_k^2):
    E[(Y - m)^4] = d^4 + 6 d^2 s^2 + 3 s^4 with d = m_k - m)."""
    mk, vk = means @ v, np.einsum("i,kij,j->k", v, covs, v)
    m = w @ mk
    d = mk - m
    var = w @ (d**2 + vk)
    mu4 = w @ (d**4 + 6 * d**2 * vk + 3 * vk**2)
    return m, var, mu4, mk, vk


@MAIN
@pytest.mark.parametrize("t", [0.05, 0.5])
def test_marginal_matches_the_perturbed_samples(sde_name, t):
    """``marginal(sde, t)`` is sum_k w_k N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I) (checked against the closed
    forms), and that mixture is the law of x_t = alpha x_0 + sigma z (x_0 from the mixture, z ~ N(0, I)).

    Statistical checks with n = 16000 samples, along 4 directions v (projections of a mixture are
    1-D mixtures with exact moments and CDF):
      * sample mean: standard error sqrt(Var / n); allow 5 SE;
      * sample variance: standard error sqrt((mu_4 - Var^2) / n) (mu_4 the exact 4th central moment); 5 SE;
      * the whole CDF: by the Dvoretzky-Kiefer-Wolfowitz inequality P(sup |F_n - F| > e) <= 2 exp(-2 n e^2),
        so e = sqrt(ln(2 / delta) / (2 n)) with delta = 1e-6 (e = 0.021).
    """
    sde, mix = make_sde(sde_name), anisotropic_mixture()
    w, mu, cov = _params(mix)
    a, s = float(exact_alpha(sde, t)), float(exact_sigma(sde, t))
    marg = mix.marginal(sde, t)
    assert isinstance(marg, GaussianMixture) and marg.event_shape == mix.event_shape
    np.testing.assert_allclose(to_np(marg.weights), w, rtol=0, atol=0)
    np.testing.assert_allclose(to_np(marg.means), a * mu, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(to_np(marg.covs), a**2 * cov + s**2 * np.eye(2), rtol=1e-12, atol=1e-15)

    n = 16_000
    gen = torch.Generator().manual_seed(10)
    x0 = mix.sample(n, gen, dtype=torch.float64)
    z = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    xt = to_np(sde.perturb(x0, torch.full((n,), t, dtype=torch.float64), z))
    mw, mmu, mcov = _params(marg)
    dkw = math.sqrt(math.log(2 / 1e-6) / (2 * n))
    for v in (np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([1.0, 1.0]) / 2**0.5, np.array([1.0, -1.0]) / 2**0.5):
        m, var, mu4, mk, vk = _projected_moments(mw, mmu, mcov, v)
        y = xt @ v
        assert abs(y.mean() - m) <= 5 * math.sqrt(var / n)
        assert abs(y.var(ddof=1) - var) <= 5 * math.sqrt((mu4 - var**2) / n)
        ys = np.sort(y)
        cdf = (mw[None] * norm.cdf((ys[:, None] - mk[None]) / np.sqrt(vk)[None])).sum(1)
        emp_hi, emp_lo = np.arange(1, n + 1) / n, np.arange(n) / n
        assert max(np.max(emp_hi - cdf), np.max(cdf - emp_lo)) <= dkw


@ALL_MIXTURES
def test_mean_and_covariance_law_of_total_covariance(mix_name):
    mix = MIXTURES[mix_name]()
    w, mu, cov = _params(mix)
    m = w @ mu
    c = sum(wk * (ck + np.outer(mk - m, mk - m)) for wk, mk, ck in zip(w, mu, cov))
    np.testing.assert_allclose(to_np(mix.mean()), m, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(to_np(mix.covariance()), c, rtol=1e-12, atol=1e-13)


# -- sampling ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mix_name", list(TARGETS) + ["random_3d"])
def test_sampling_matches_weights_and_components(mix_name):
    """n = 16000 draws.  Label frequencies: Binomial(n, w_k) / n has std sqrt(w_k (1 - w_k) / n); allow 5 std.
    Within component k (n_k draws): sample mean SE sqrt(Sigma_ii / n_k); sample covariance SE
    sqrt((Sigma_ij^2 + Sigma_ii Sigma_jj) / n_k) (Wishart); allow 5 SE each."""
    mix = MIXTURES[mix_name]()
    w, mu, cov = _params(mix)
    n = 16_000
    x, labels = mix.sample_with_labels(n, torch.Generator().manual_seed(21), dtype=torch.float64)
    assert x.shape == (n, *mix.event_shape) and labels.shape == (n,) and labels.dtype == torch.int64
    freq = np.bincount(labels.numpy(), minlength=len(w)) / n
    assert np.all(np.abs(freq - w) <= 5 * np.sqrt(w * (1 - w) / n)), (freq, w)
    xn = to_np(x).reshape(n, -1)
    for k in range(len(w)):
        xk = xn[labels.numpy() == k]
        nk = len(xk)
        sd = np.sqrt(np.diag(cov[k]))
        assert np.all(np.abs(xk.mean(0) - mu[k]) <= 5 * sd / math.sqrt(nk))
        se_cov = np.sqrt((cov[k] ** 2 + np.outer(sd**2, sd**2)) / nk)
        assert np.all(np.abs(np.cov(xk.T).reshape(cov[k].shape) - cov[k]) <= 5 * se_cov)


def test_sampling_is_reproducible_and_typed():
    mix = anisotropic_mixture()
    a = mix.sample(100, torch.Generator().manual_seed(3))
    b = mix.sample(100, torch.Generator().manual_seed(3))
    c = mix.sample(100, torch.Generator().manual_seed(4))
    assert a.dtype == torch.float32 and a.shape == (100, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert mix.sample(5, dtype=torch.float64).dtype == torch.float64


def test_mode_weights_of_ncsn_samples():
    """The NCSN modes are 10 sqrt(2) apart with unit covariance, so assigning a sample to the wrong mode
    has probability Phi(-5 sqrt 2 + ln(4)/(10 sqrt 2)) < 1e-12: the assignment equals the label and
    the mode weights are Binomial frequencies (5 std tolerance as above)."""
    mix = ncsn_two_modes()
    n = 16_000
    x, labels = mix.sample_with_labels(n, torch.Generator().manual_seed(8), dtype=torch.float64)
    assert torch.equal(mix.assign(x), labels)
    w = np.array([0.2, 0.8])
    assert np.all(np.abs(mix.mode_weights(x).numpy() - w) <= 5 * np.sqrt(w * (1 - w) / n))


# -- the named targets -------------------------------------------------------------------------------


def test_targets_registry():
    assert set(TARGETS) == {"eight_gaussians", "grid_gaussians", "ncsn_two_modes", "anisotropic_mixture"}
    with pytest.raises(TypeError):
        TARGETS["mine"] = eight_gaussians  # read-only
    for factory in TARGETS.values():
        mix = factory()
        assert isinstance(mix, GaussianMixture) and mix.dim == 2 and mix.event_shape == (2,)
        assert mix.weights.dtype == torch.float64
        assert abs(float(mix.weights.sum()) - 1.0) <= 1e-15


def test_eight_gaussians_parameters():
    """FFJORD's 8gaussians: radius 2 sqrt 2, std 0.5 / sqrt 2 (variance 1/8), equal weights, modes every 45 degrees."""
    mix = eight_gaussians()
    w, mu, cov = _params(mix)
    np.testing.assert_array_equal(w, np.full(8, 1 / 8))
    np.testing.assert_allclose(np.linalg.norm(mu, axis=1), np.full(8, 2 * math.sqrt(2)), rtol=1e-15)
    angles = np.sort(np.mod(np.degrees(np.arctan2(mu[:, 1], mu[:, 0])), 360))
    np.testing.assert_allclose(angles, np.arange(8) * 45.0, atol=1e-12)
    np.testing.assert_allclose(cov, np.broadcast_to(0.125 * np.eye(2), (8, 2, 2)), rtol=1e-15, atol=0)
    custom = eight_gaussians(radius=3.0, std=0.3)
    np.testing.assert_allclose(np.linalg.norm(_params(custom)[1], axis=1), 3.0, rtol=1e-15)
    np.testing.assert_allclose(_params(custom)[2][:, 0, 0], 0.09, rtol=1e-15)  # variances, stored in float64


def test_grid_gaussians_parameters():
    mix = grid_gaussians()
    w, mu, cov = _params(mix)
    np.testing.assert_array_equal(w, np.full(25, 1 / 25))
    expected = {(float(a), float(b)) for a in (-4, -2, 0, 2, 4) for b in (-4, -2, 0, 2, 4)}
    assert {tuple(m) for m in mu.tolist()} == expected
    np.testing.assert_allclose(cov, np.broadcast_to(0.04 * np.eye(2), (25, 2, 2)), rtol=1e-15, atol=0)
    assert grid_gaussians(side=3, spacing=1.0).num_components == 9


def test_ncsn_two_modes_parameters():
    """Song & Ermon 2019, sec. 3.2: 1/5 N((-5, -5), I) + 4/5 N((5, 5), I)."""
    mix = ncsn_two_modes()
    w, mu, cov = _params(mix)
    np.testing.assert_array_equal(w, [0.2, 0.8])
    np.testing.assert_array_equal(mu, [[-5.0, -5.0], [5.0, 5.0]])
    np.testing.assert_array_equal(cov, [np.eye(2), np.eye(2)])
    mix3 = ncsn_two_modes(dim=3)
    np.testing.assert_array_equal(_params(mix3)[1], [[-5.0] * 3, [5.0] * 3])
    # the log density at a mode, independently: log(0.8) - log(2 pi) (the other mode contributes e^-100)
    np.testing.assert_allclose(float(mix.log_prob(t64([[5.0, 5.0]]))), math.log(0.8) - math.log(2 * math.pi), rtol=1e-14)


def test_anisotropic_mixture_parameters():
    """Weights 0.5 / 0.3 / 0.2; standard deviations (1.0, 0.15) with the major axis at 30 degrees, (0.7, 0.2)
    at -60 degrees, (0.4, 0.4); centres (-2, -1), (2, 0), (0, 2.5).  Recovered by eigendecomposition."""
    w, mu, cov = _params(anisotropic_mixture())
    np.testing.assert_array_equal(w, [0.5, 0.3, 0.2])
    np.testing.assert_array_equal(mu, [[-2.0, -1.0], [2.0, 0.0], [0.0, 2.5]])
    np.testing.assert_allclose(cov, cov.transpose(0, 2, 1), atol=1e-15)
    for c, (sd_major, sd_minor), degrees in zip(cov[:2], [(1.0, 0.15), (0.7, 0.2)], [30.0, -60.0]):
        lam, vec = np.linalg.eigh(c)
        np.testing.assert_allclose(np.sqrt(lam), [sd_minor, sd_major], rtol=1e-12)
        major = vec[:, 1]
        angle = np.degrees(np.arctan2(major[1], major[0]))
        assert min(abs(angle - degrees), abs(abs(angle - degrees) - 180)) < 1e-9
    np.testing.assert_allclose(cov[2], 0.16 * np.eye(2), atol=1e-15)


# -- image-shaped mixtures and per-sample times -------------------------------------------------------


def _isotropic_mixture_terms(x: np.ndarray, w, mu, var) -> np.ndarray:
    """log w_k + log N(x; mu_k, var_k I) ``[B, K]``, written out (scipy is needlessly slow in 192-D)."""
    d = x.shape[1]
    sq = ((x[:, None, :] - mu[None]) ** 2).sum(-1)
    return np.log(w)[None] - 0.5 * (sq / var[None] + d * np.log(2 * np.pi * var)[None])


@pytest.fixture(scope="module")
def image_mixture():
    """Two isotropic components on [3, 8, 8] (d = 192), built once (the constructor's d x d
    eigendecompositions are the slow part)."""
    shape, d = (3, 8, 8), 192
    rng = np.random.default_rng(6)
    mu = np.stack([rng.normal(0, 0.3, d) + 0.5, rng.normal(0, 0.3, d) - 0.5])
    var = np.array([0.3, 0.6])
    w = np.array([0.35, 0.65])
    return GaussianMixture(w, mu, var, event_shape=shape), w, mu, var


@MAIN
def test_event_shape_mixture_on_images(sde_name, image_mixture):
    """A two-component mixture on [B, 3, 8, 8] (d = 192): samples have the image shape, log_prob matches
    the closed form in 192-D, and the perturbed score with a per-sample t equals
    sum_k r_k (alpha mu_k - x) / (alpha^2 s_k^2 + sigma^2) with r_k the posterior responsibilities."""
    sde = make_sde(sde_name)
    mix, w, mu, var = image_mixture
    shape, d = (3, 8, 8), 192
    assert mix.dim == d and mix.event_shape == shape

    x = mix.sample(6, torch.Generator().manual_seed(1), dtype=torch.float64)
    assert x.shape == (6, *shape)
    expected = logsumexp(_isotropic_mixture_terms(to_np(x).reshape(6, d), w, mu, var), axis=1)
    np.testing.assert_allclose(to_np(mix.log_prob(x)), expected, rtol=1e-12)
    torch.testing.assert_close(mix.log_prob(x), mix.log_prob(x.reshape(6, d)), rtol=1e-14, atol=0)

    t = np.linspace(sde.t_min, 1.0, 6)
    alpha, sigma = exact_alpha(sde, t), exact_sigma(sde, t)
    xt = x * t64(alpha).reshape(-1, 1, 1, 1) + t64(sigma).reshape(-1, 1, 1, 1) * 0.5
    got = mix.score_fn(sde)(xt, t64(t))
    assert got.shape == xt.shape
    for i in range(len(t)):
        a, s = alpha[i], sigma[i]
        xi = to_np(xt[i]).reshape(1, d)
        v = a**2 * var + s**2
        terms = _isotropic_mixture_terms(xi, w, a * mu, v)[0]
        r = np.exp(terms - logsumexp(terms))
        expected = sum(r[k] * (a * mu[k] - xi[0]) / v[k] for k in range(2))
        np.testing.assert_allclose(to_np(got[i]).reshape(d), expected, rtol=1e-9, atol=1e-11)
        # the same row evaluated alone: no coupling across the batch
        torch.testing.assert_close(got[i : i + 1], mix.score_fn(sde)(xt[i : i + 1], t64(t[i : i + 1])), rtol=1e-14, atol=0)


def test_component_is_the_single_gaussian():
    mix = anisotropic_mixture()
    w, mu, cov = _params(mix)
    x = _probe_points(mix)
    for k in range(3):
        comp = mix.component(k)
        assert comp.num_components == 1
        np.testing.assert_allclose(to_np(comp.log_prob(x)), multivariate_normal(mu[k], cov[k]).logpdf(to_np(x)), rtol=1e-12)


# -- bad input -------------------------------------------------------------------------------------

_I2 = np.eye(2)


@pytest.mark.parametrize(
    "args, match",
    [
        (([0.5, 0.4], [[0, 0], [1, 1]], [1, 1]), r"`weights` must sum to 1"),
        (([1.2, -0.2], [[0, 0], [1, 1]], [1, 1]), r"`weights` must be finite and > 0"),
        (([0.0, 1.0], [[0, 0], [1, 1]], [1, 1]), r"`weights` must be finite and > 0"),
        (([float("nan"), 1.0], [[0, 0], [1, 1]], [1, 1]), r"`weights`"),
        (([[0.5, 0.5]], [[0, 0], [1, 1]], [1, 1]), r"`weights` must be a non-empty 1-D"),
        (([], np.zeros((0, 2)), []), r"`weights` must be a non-empty 1-D"),
        (([0.5, 0.5], [[0, 0], [1, 1], [2, 2]], [1, 1]), r"`means` must have shape \[K, d\]"),
        (([0.5, 0.5], [0, 1], [1, 1]), r"`means` must have shape \[K, d\]"),
        (([0.5, 0.5], [[0, 0], [1, float("inf")]], [1, 1]), r"`means` must be finite"),
        (([0.5, 0.5], [[0, 0], [1, 1]], np.ones((2, 3, 3))), r"`covs` must have shape"),
        (([0.5, 0.5], [[0, 0], [1, 1]], np.ones(3)), r"`covs` must have shape"),
        (([0.5, 0.5], [[0, 0], [1, 1]], np.array([_I2, [[1.0, 0.5], [0.2, 1.0]]])), r"`covs` must be symmetric"),
        (([0.5, 0.5], [[0, 0], [1, 1]], np.array([_I2, [[1.0, 2.0], [2.0, 1.0]]])), r"`covs` must be positive definite"),
        (([0.5, 0.5], [[0, 0], [1, 1]], [1.0, 0.0]), r"`covs` must be positive definite; component 1"),
        (([0.5, 0.5], [[0, 0], [1, 1]], [[1.0, -1.0], [1.0, 1.0]]), r"`covs` must be positive definite; component 0"),
        (([0.5, 0.5], [[0, 0], [1, 1]], np.array([_I2, [[float("nan"), 0], [0, 1]]])), r"`covs` must be finite"),
    ],
)
def test_bad_mixture_parameters_raise_naming_the_argument(args, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(*args)


def test_bad_event_shape_and_inputs():
    with pytest.raises(ValueError, match="`event_shape`"):
        GaussianMixture([1.0], [[0.0, 0.0]], [1.0], event_shape=(3,))
    mix = anisotropic_mixture()
    for bad in (torch.zeros(4, 3), torch.zeros(4), torch.zeros(4, 2, 2)):
        with pytest.raises(ValueError, match="`x` must have shape"):
            mix.log_prob(bad)
        with pytest.raises(ValueError, match="`x` must have shape"):
            mix.score(bad)
    with pytest.raises(ValueError, match="`k`"):
        mix.component(3)
    with pytest.raises(ValueError, match="`n`"):
        mix.sample(0)
    with pytest.raises(ValueError, match=r"`t` must lie in \[t_min, T\]"):
        mix.marginal(VESDE(), 1.5)
    with pytest.raises(ValueError, match=r"`t` must lie in \[t_min, T\]"):
        mix.marginal(VPSDE(), 0.0)  # below t_min = 1e-5


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: eight_gaussians(radius=-1.0), "radius"),
        (lambda: eight_gaussians(std=0.0), "std"),
        (lambda: grid_gaussians(side=0), "side"),
        (lambda: grid_gaussians(spacing=0.0), "spacing"),
        (lambda: grid_gaussians(std=-0.2), "std"),
        (lambda: ncsn_two_modes(dim=0), "dim"),
    ],
)
def test_bad_target_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
