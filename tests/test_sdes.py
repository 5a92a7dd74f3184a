"""Tests for ``scoresde.sdes``: every formula against an independent exact result.

The closed forms live in ``tests/problems.py`` (numpy, float64, straight from the table in
``docs/conventions.md``); the library is never compared with itself except in the consistency
checks, which test identities that hold for any correct implementation.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from problems import (
    MAIN_SDES,
    SDE_CASES,
    exact_alpha,
    exact_drift_coef,
    exact_g2,
    exact_prior_std,
    exact_sigma,
    interior_times,
    make_sde,
    t64,
    time_grid,
    to_np,
)
from scoresde.sdes import SDE, DiscreteVPSDE, ReverseTimeSDE, SubVPSDE, VESDE, VPSDE

ALL_SDES = pytest.mark.parametrize("sde_name", list(SDE_CASES))
MAIN = pytest.mark.parametrize("sde_name", MAIN_SDES)
RTOL = 1e-12  # float64 closed forms: a few ulps, amplified at most ~100x by exp/log/sqrt


# -- marginals ---------------------------------------------------------------------------------


@ALL_SDES
def test_marginal_coefficients_match_closed_forms(sde_name):
    sde = make_sde(sde_name)
    t = time_grid(sde)
    alpha, sigma = exact_alpha(sde, t), exact_sigma(sde, t)
    np.testing.assert_allclose(to_np(sde.alpha(t64(t))), alpha, rtol=RTOL, atol=0)
    np.testing.assert_allclose(to_np(sde.log_alpha(t64(t))), np.log(alpha), rtol=RTOL, atol=1e-15)
    np.testing.assert_allclose(to_np(sde.sigma(t64(t))), sigma, rtol=RTOL, atol=0)
    np.testing.assert_allclose(to_np(sde.sigma_ve(t64(t))), sigma / alpha, rtol=RTOL, atol=0)
    assert sde.T == 1.0


def test_known_endpoint_values():
    # VE: sigma(0) = sigma_min, sigma(1) = sigma_max by construction of the geometric schedule.
    ve = VESDE(sigma_min=0.01, sigma_max=20.0)
    np.testing.assert_allclose(to_np(ve.sigma(t64([0.0, 1.0]))), [0.01, 20.0], rtol=RTOL)
    # VP defaults: int_0^1 beta = 0.1 + 19.9/2 = 10.05, so alpha(1) = exp(-5.025) (score_sde's 0.0066).
    vp = VPSDE()
    np.testing.assert_allclose(float(vp.alpha(t64([1.0]))), math.exp(-5.025), rtol=RTOL)
    assert abs(float(vp.alpha(t64([1.0]))) - 0.0066) < 1e-4
    # sub-VP: sigma = 1 - alpha^2 <= sqrt(1 - alpha^2) = sigma_VP (Song et al. 2021, sec. 3.4).
    t = t64(np.linspace(1e-5, 1, 50))
    assert bool((SubVPSDE().sigma(t) <= vp.sigma(t)).all())


@ALL_SDES
def test_closed_forms_satisfy_moment_odes(sde_name):
    """Check the MATH.md table itself: for dx = c(t) x dt + g(t) dw the moments obey
    d log alpha / dt = c and d sigma^2 / dt = 2 c sigma^2 + g^2 (Ito: d E[x^2] = 2 c E[x^2] + g^2).

    Central differences with h = 1e-6: truncation O(h^2) ~ 1e-12 relative; round-off
    ~ eps |sigma^2| / h ~ 1e-10 relative.  Hence rtol 1e-7.
    """
    sde = make_sde(sde_name)
    t = interior_times(sde)
    h = 1e-6
    dlog_alpha = (np.log(exact_alpha(sde, t + h)) - np.log(exact_alpha(sde, t - h))) / (2 * h)
    dvar = (exact_sigma(sde, t + h) ** 2 - exact_sigma(sde, t - h) ** 2) / (2 * h)
    c, g2, var = exact_drift_coef(sde, t), exact_g2(sde, t), exact_sigma(sde, t) ** 2
    np.testing.assert_allclose(dlog_alpha, c, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(dvar, 2 * c * var + g2, rtol=1e-7, atol=0)


@ALL_SDES
def test_drift_and_diffusion_match_closed_forms(sde_name):
    sde = make_sde(sde_name)
    t = interior_times(sde) if isinstance(sde, DiscreteVPSDE) else time_grid(sde)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(len(t), 3, generator=gen, dtype=torch.float64)
    c = exact_drift_coef(sde, t)
    np.testing.assert_allclose(to_np(sde.drift(x, t64(t))), c[:, None] * to_np(x), rtol=RTOL, atol=1e-300)
    np.testing.assert_allclose(to_np(sde.diffusion(t64(t))) ** 2, exact_g2(sde, t), rtol=RTOL, atol=0)


def _ddt(fn, t: torch.Tensor) -> torch.Tensor:
    """Elementwise derivative of ``fn: [B] -> [B]`` by autograd (zero where fn does not depend on t)."""
    t = t.detach().requires_grad_(True)
    y = fn(t)
    if not y.requires_grad:  # e.g. VE's log alpha = 0
        return torch.zeros_like(t)
    return torch.autograd.grad(y.sum(), t)[0]


@ALL_SDES
def test_marginals_consistent_with_drift_and_diffusion(sde_name):
    """The library's own alpha, sigma, f and g obey the moment ODEs (autograd, float64)."""
    sde = make_sde(sde_name)
    t = t64(interior_times(sde))
    dlog_alpha, dvar = _ddt(sde.log_alpha, t), _ddt(lambda u: sde.sigma(u) ** 2, t)
    ones = torch.ones(len(t), 1, dtype=torch.float64)
    c = sde.drift(ones, t)[:, 0]  # f(x, t) = c(t) x
    var, g2 = sde.sigma(t) ** 2, sde.diffusion(t) ** 2
    torch.testing.assert_close(dlog_alpha, c, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dvar, 2 * c * var + g2, rtol=1e-10, atol=0)


@MAIN
def test_euler_maruyama_simulation_matches_marginals(sde_name):
    """Simulate the forward SDE with the library's f and g (Euler-Maruyama, float64) and compare
    the empirical mean and std of x_t with alpha(t) x_0 and sigma(t) from the closed forms.

    Start: x_{t_min} ~ N(alpha(t_min) x_0, sigma(t_min)^2) drawn exactly (VE has sigma(0) = sigma_min
    > 0, so the marginal at t_min is not a point mass).  Then ``num_steps`` EM steps of size h.

    Tolerance, per coordinate and checkpoint.  For a linear SDE the EM chain is itself exactly
    Gaussian with mean m_j and variance v_j given by the deterministic recursion
        m_{j+1} = (1 + c_j h) m_j,   v_{j+1} = (1 + c_j h)^2 v_j + g_j^2 h
    (c, g from MATH.md).  So with n samples:
      * the sample mean has standard error sqrt(v / n) about m,
      * the sample std has standard error sqrt(v / (2 n)) about sqrt(v) (Gaussian samples),
      * the EM chain itself is off the exact marginal by the O(h) Euler bias |m - alpha x_0|
        and |sqrt(v) - sigma|, computed exactly by the recursion (and checked to be small).
    We allow 5 standard errors (two-sided Gaussian tail 6e-7) plus the Euler bias.
    """
    sde = make_sde(sde_name)
    # Batch of two starting points x_0 = 1.5 and -0.5, each with n i.i.d. paths stored as its
    # n data coordinates: x is [2, n] and t is [2], so the coefficients are evaluated on the
    # batch (2 values), not on every path.
    n, num_steps = 10_000, 600
    gen = torch.Generator().manual_seed(1234)
    x0 = np.array([1.5, -0.5])
    ts = np.linspace(sde.t_min, 1.0, num_steps + 1)
    if isinstance(sde, DiscreteVPSDE):
        # evaluate the piecewise-constant rate strictly inside knot intervals
        ts = np.linspace(sde.t_min + 0.5 / sde.num_steps, 1.0, num_steps + 1)
    h = ts[1] - ts[0]

    a0, s0 = exact_alpha(sde, ts[0]), exact_sigma(sde, ts[0])
    x = t64(a0 * x0)[:, None] + float(s0) * torch.randn(2, n, generator=gen, dtype=torch.float64)
    m, v = a0 * x0, s0**2
    checkpoints = {num_steps // 4, num_steps // 2, num_steps}
    c_all, g2_all = exact_drift_coef(sde, ts[:-1]), exact_g2(sde, ts[:-1])
    for j in range(num_steps):
        t = torch.full((2,), ts[j], dtype=torch.float64)
        z = torch.randn(2, n, generator=gen, dtype=torch.float64)
        x = x + sde.drift(x, t) * h + sde.diffusion(t)[:, None] * math.sqrt(h) * z
        m = (1 + c_all[j] * h) * m
        v = (1 + c_all[j] * h) ** 2 * v + g2_all[j] * h
        if j + 1 in checkpoints:
            t_end = ts[j + 1]
            mean_exact, std_exact = exact_alpha(sde, t_end) * x0, exact_sigma(sde, t_end)
            bias_mean, bias_std = np.abs(m - mean_exact), abs(math.sqrt(v) - std_exact)
            # the Euler bias is O(h) and small: the tolerance is dominated by sampling error
            assert bias_std < 0.01 * std_exact and np.all(bias_mean < 0.01 * std_exact)
            emp_mean, emp_std = to_np(x.mean(1)), to_np(x.std(1))
            tol_mean = 5 * math.sqrt(v / n) + bias_mean
            tol_std = 5 * math.sqrt(v / (2 * n)) + bias_std
            assert np.all(np.abs(emp_mean - mean_exact) <= tol_mean), (t_end, emp_mean, mean_exact, tol_mean)
            assert np.all(np.abs(emp_std - std_exact) <= tol_std), (t_end, emp_std, std_exact, tol_std)


# -- transitions and discretisation ------------------------------------------------------------


def _exact_transition(sde, s, t):
    """x_t | x_s = a x_s + b z for s < t; closed forms per SDE."""
    a = exact_alpha(sde, t) / exact_alpha(sde, s)
    if isinstance(sde, VESDE):
        b2 = exact_sigma(sde, t) ** 2 - exact_sigma(sde, s) ** 2  # variances add, alpha = 1
    elif isinstance(sde, (VPSDE, DiscreteVPSDE)):  # (SubVPSDE is not a VPSDE subclass)
        b2 = -np.expm1(2 * np.log(a))  # variance preserving: a^2 + b^2 = 1
    else:  # sub-VP: Var = (1 - alpha_t^2)^2 - a^2 (1 - alpha_s^2)^2
        b2 = exact_sigma(sde, t) ** 2 - a**2 * exact_sigma(sde, s) ** 2
    return a, np.sqrt(b2)


@ALL_SDES
def test_transition_and_discretize_match_closed_forms(sde_name):
    sde = make_sde(sde_name)
    rng = np.random.default_rng(0)
    s = rng.uniform(sde.t_min, 0.95, 64)
    t = s + rng.uniform(0.01, 1.0 - s)
    a_exact, b_exact = _exact_transition(sde, s, t)
    a, b = sde.transition(t64(s), t64(t))
    np.testing.assert_allclose(to_np(a), a_exact, rtol=RTOL)
    # b^2 is a difference sigma_t^2 - a^2 sigma_s^2; with gaps >= 0.01 it loses < 3 digits
    np.testing.assert_allclose(to_np(b), b_exact, rtol=1e-11)

    x = torch.randn(64, 2, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    f, g = sde.discretize(x, t64(s), t64(t))
    np.testing.assert_allclose(to_np(f), (a_exact - 1)[:, None, None] * to_np(x), rtol=1e-11, atol=1e-300)
    np.testing.assert_allclose(to_np(g), b_exact, rtol=1e-11)


@ALL_SDES
def test_transition_composes(sde_name):
    """Chapman-Kolmogorov for a Gaussian chain: s -> u -> t equals s -> t, i.e.
    a_st = a_su a_ut and b_st^2 = a_ut^2 b_su^2 + b_ut^2."""
    sde = make_sde(sde_name)
    rng = np.random.default_rng(1)
    s, u, t = np.sort(rng.uniform(sde.t_min, 1.0, (3, 32)), axis=0)
    (a_su, b_su), (a_ut, b_ut), (a_st, b_st) = (sde.transition(t64(p), t64(q)) for p, q in ((s, u), (u, t), (s, t)))
    torch.testing.assert_close(a_su * a_ut, a_st, rtol=1e-12, atol=0)
    torch.testing.assert_close(a_ut**2 * b_su**2 + b_ut**2, b_st**2, rtol=1e-10, atol=1e-14)


def test_ddpm_linear_schedule():
    """DiscreteVPSDE.linear(1000) is Ho et al.'s schedule: beta linear from 1e-4 to 0.02,
    alpha_bar = cumprod(1 - beta), and alpha(t_k)^2 = alpha_bar_k at the knots t_k = k/1000."""
    ddpm_betas = np.linspace(1e-4, 0.02, 1000)
    ddpm_alpha_bar = np.cumprod(1.0 - ddpm_betas)
    for sde in (DiscreteVPSDE.linear(1000), VPSDE().discrete(1000), DiscreteVPSDE(torch.tensor(ddpm_betas))):
        assert sde.num_steps == 1000 and sde.t_min == 1e-3
        np.testing.assert_allclose(sde.betas.numpy(), ddpm_betas, rtol=1e-12, atol=0)
        np.testing.assert_allclose(sde.alpha_bar.numpy(), ddpm_alpha_bar, rtol=1e-12, atol=0)
        knots = t64(np.arange(1, 1001) / 1000)
        np.testing.assert_allclose(to_np(sde.alpha(knots)) ** 2, ddpm_alpha_bar, rtol=1e-12, atol=0)
        np.testing.assert_allclose(to_np(sde.sigma(knots)) ** 2, 1 - ddpm_alpha_bar, rtol=1e-12, atol=0)
        assert sde.prior_std == 1.0


def test_ddpm_transition_between_knots_is_the_ddpm_step():
    """Exact transition t_{k-1} -> t_k is x_k = sqrt(1 - beta_k) x_{k-1} + sqrt(beta_k) z (Ho et al. eq. 2),
    and ``discretize`` is score_sde's f = (sqrt(1 - beta_k) - 1) x, G = sqrt(beta_k)."""
    sde = DiscreteVPSDE.linear(1000)
    betas = np.linspace(1e-4, 0.02, 1000)
    k = np.arange(1, 1001)
    a, b = sde.transition(t64((k - 1) / 1000), t64(k / 1000))
    np.testing.assert_allclose(to_np(a), np.sqrt(1 - betas), rtol=1e-12)
    np.testing.assert_allclose(to_np(b), np.sqrt(betas), rtol=1e-12)
    x = torch.ones(1000, 2, dtype=torch.float64)
    f, g = sde.discretize(x, t64((k - 1) / 1000), t64(k / 1000))
    np.testing.assert_allclose(to_np(f)[:, 0], np.sqrt(1 - betas) - 1, rtol=1e-11)
    np.testing.assert_allclose(to_np(g), np.sqrt(betas), rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ddpm_rate_at_knots_is_left_continuous(dtype):
    """beta(t) = -N log(1 - beta_k) on (t_{k-1}, t_k]: at a knot t_k (even after float32 round-off)
    the rate is that of the step that ends there."""
    sde = DiscreteVPSDE.linear(1000)
    k = np.arange(1, 1001)
    rates = -1000 * np.log1p(-np.linspace(1e-4, 0.02, 1000))
    got = to_np(sde.beta(torch.tensor(k / 1000, dtype=dtype)))
    np.testing.assert_allclose(got, rates, rtol=1e-6 if dtype == torch.float32 else 1e-12)


def test_ddpm_timesteps_and_index_rounding():
    sde = DiscreteVPSDE.linear(1000)
    np.testing.assert_array_equal(to_np(sde.timesteps(1000)), np.arange(1000, 0, -1) / 1000)
    for num_steps in (1, 10, 100, 333):
        ts = to_np(sde.timesteps(num_steps))
        expected = np.round(np.linspace(1000, 1, num_steps)) / 1000
        np.testing.assert_array_equal(ts, expected)
        assert ts[0] == 1.0 and (num_steps == 1 or ts[-1] == sde.t_min)
        assert np.all(np.diff(ts) < 0)
    # Map t to an index by rounding, not truncation (score_sde issue #2): knot t_k -> index k - 1.
    k = np.arange(1, 1001)
    for offset in (-0.4, -1e-9, 0.0, 1e-9, 0.4):
        idx = sde.timestep_index(t64((k + offset) / 1000))
        np.testing.assert_array_equal(idx.numpy(), k - 1)
    assert sde.timestep_index(t64([0.4999999999])).item() == 499  # truncation would give 498


# -- time <-> noise level ----------------------------------------------------------------------


def _vp_equal_betas():
    return VPSDE(beta_min=3.0, beta_max=3.0)  # beta constant: the quadratic degenerates to linear


INVERSE_CASES = {**SDE_CASES, "vp_const_beta": _vp_equal_betas, "subvp_custom": lambda: SubVPSDE(0.5, 8.0, 1e-3)}


@pytest.mark.parametrize("sde_name", list(INVERSE_CASES))
def test_t_from_sigma_ve_inverts_sigma_ve(sde_name):
    """t(sigma~(t)) = t, both with the subclass's closed form and with the base class's bisection.

    sigma~ comes from the independent closed forms; the error allowed is 1e-12 absolute in t in
    [t_min, 1] (t is recovered from a float64 sigma~ whose conditioning d t / d log sigma~ is O(1)).
    """
    sde = INVERSE_CASES[sde_name]()
    t = time_grid(sde)
    sigma_ve = t64(exact_sigma(sde, t) / exact_alpha(sde, t))
    np.testing.assert_allclose(to_np(sde.t_from_sigma_ve(sigma_ve)), t, rtol=0, atol=1e-12)
    np.testing.assert_allclose(to_np(SDE.t_from_sigma_ve(sde, sigma_ve)), t, rtol=0, atol=1e-12)
    if not isinstance(sde, DiscreteVPSDE):
        # near t_min the relative error matters too (sigma~^2 ~ beta_min t for VP, sigma~ ~ beta_min t for sub-VP)
        pos = t > 0
        np.testing.assert_allclose(to_np(sde.t_from_sigma_ve(sigma_ve))[pos], t[pos], rtol=1e-12)


@pytest.mark.parametrize("sde_name", list(INVERSE_CASES))
def test_t_from_sigma_ve_float32_accuracy(sde_name):
    """In float32 the inverse is limited only by the rounding of its input: with eps = 2^-24,
    |dt| <~ eps |d t / d log sigma~| = eps sigma~ / (d sigma~ / dt).  We allow 16 such ulps plus 4 ulps
    of t itself (the conditioning is taken from the closed forms by central differences)."""
    sde = INVERSE_CASES[sde_name]()
    t = interior_times(sde, 40) if isinstance(sde, DiscreteVPSDE) else time_grid(sde)
    h = 1e-7

    def sv(u):
        return exact_sigma(sde, u) / exact_alpha(sde, u)

    dsv = (sv(t + h) - sv(np.maximum(t - h, 0))) / (t + h - np.maximum(t - h, 0))
    eps = 2.0**-24
    tol = 16 * eps * sv(t) / dsv + 4 * eps * t
    got = to_np(sde.t_from_sigma_ve(torch.tensor(sv(t), dtype=torch.float32)))
    assert np.all(np.abs(got - t) <= tol), np.max(np.abs(got - t) / tol)


# -- prior, reverse time, grid ---------------------------------------------------------------------


@ALL_SDES
def test_prior(sde_name):
    sde = make_sde(sde_name)
    assert sde.prior_std == exact_prior_std(sde)
    gen = torch.Generator().manual_seed(5)
    x = 3.0 * torch.randn(7, 3, 4, generator=gen, dtype=torch.float64)
    expected = multivariate_normal(np.zeros(12), sde.prior_std**2 * np.eye(12)).logpdf(to_np(x).reshape(7, 12))
    np.testing.assert_allclose(to_np(sde.prior_log_prob(x)), expected, rtol=1e-12)

    shape = (2000, 3, 4)
    a = sde.prior_sample(shape, torch.Generator().manual_seed(11), dtype=torch.float64)
    b = sde.prior_sample(shape, torch.Generator().manual_seed(11), dtype=torch.float64)
    assert a.shape == shape and a.dtype == torch.float64 and torch.equal(a, b)
    # n = 24000 i.i.d. N(0, prior_std^2) entries: 5 standard errors, sd/sqrt(n) for the mean
    # and sd/sqrt(2n) for the sample std.
    n = a.numel()
    assert abs(float(a.mean())) <= 5 * sde.prior_std / math.sqrt(n)
    assert abs(float(a.std()) - sde.prior_std) <= 5 * sde.prior_std / math.sqrt(2 * n)


@ALL_SDES
def test_reverse_drift_formulas(sde_name):
    """Reverse SDE drift f - g^2 s and probability-flow drift f - g^2 s / 2 (Song et al. 2021, eqs. 6, 13)."""
    sde = make_sde(sde_name)
    t = interior_times(sde)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(len(t), 2, generator=gen, dtype=torch.float64)
    s = torch.randn(len(t), 2, generator=gen, dtype=torch.float64)
    f = exact_drift_coef(sde, t)[:, None] * to_np(x)
    g2 = exact_g2(sde, t)[:, None]
    np.testing.assert_allclose(to_np(sde.reverse_drift(x, t64(t), s)), f - g2 * to_np(s), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        to_np(sde.reverse_drift(x, t64(t), s, probability_flow=True)), f - 0.5 * g2 * to_np(s), rtol=1e-12, atol=1e-12
    )

    def score_fn(x_, t_):
        return s

    for pf in (False, True):
        rev = sde.reverse(score_fn, probability_flow=pf)
        assert isinstance(rev, ReverseTimeSDE) and rev.probability_flow == pf
        np.testing.assert_allclose(
            to_np(rev.drift(x, t64(t))), f - (0.5 if pf else 1.0) * g2 * to_np(s), rtol=1e-12, atol=1e-12
        )
        expected_g = np.zeros(len(t)) if pf else np.sqrt(exact_g2(sde, t))
        np.testing.assert_allclose(to_np(rev.diffusion(t64(t))), expected_g, rtol=1e-12, atol=0)


@ALL_SDES
def test_probability_flow_transports_a_gaussian(sde_name):
    """For data N(mu, s^2 I) the marginal is N(alpha mu, std_t^2 I), std_t^2 = alpha^2 s^2 + sigma^2, and the
    probability-flow ODE with the exact score must move each point along x = alpha mu + std_t e with e
    fixed, i.e. dx/dt = alpha' mu + std_t' (x - alpha mu) / std_t.  (An affine velocity transporting an
    isotropic Gaussian is this one up to a rotation; f - g^2 s / 2 is a multiple of the identity plus a
    shift, so no rotation.)  alpha', std_t' by central differences of the closed forms, h = 1e-6:
    error ~ h^2 + eps / h ~ 1e-10 relative, hence rtol 1e-7."""
    sde = make_sde(sde_name)
    t = interior_times(sde)
    mu, s = np.array([1.0, -2.0]), 0.7
    h = 1e-6

    def std(u):
        return np.sqrt(exact_alpha(sde, u) ** 2 * s**2 + exact_sigma(sde, u) ** 2)

    alpha = exact_alpha(sde, t)[:, None]
    dalpha = ((exact_alpha(sde, t + h) - exact_alpha(sde, t - h)) / (2 * h))[:, None]
    dstd = ((std(t + h) - std(t - h)) / (2 * h))[:, None]
    x = to_np(torch.randn(len(t), 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    x = alpha * mu + std(t)[:, None] * x
    score = (alpha * mu - x) / std(t)[:, None] ** 2
    velocity = dalpha * mu + dstd * (x - alpha * mu) / std(t)[:, None]
    got = sde.reverse_drift(t64(x), t64(t), t64(score), probability_flow=True)
    np.testing.assert_allclose(to_np(got), velocity, rtol=1e-7, atol=1e-7 * np.abs(velocity).max())


@ALL_SDES
def test_timesteps(sde_name):
    sde = make_sde(sde_name)
    ts = sde.timesteps(50)
    assert ts.shape == (50,) and ts.dtype == torch.float64
    assert float(ts[0]) == 1.0 and abs(float(ts[-1]) - sde.t_min) < 1e-15
    assert bool((ts[1:] < ts[:-1]).all())
    if not isinstance(sde, DiscreteVPSDE):
        np.testing.assert_allclose(to_np(ts), np.linspace(1.0, sde.t_min, 50), rtol=1e-15, atol=1e-15)
    np.testing.assert_array_equal(to_np(sde.timesteps(1)), [1.0])
    assert sde.timesteps(8, dtype=torch.float32).dtype == torch.float32


# -- shapes, per-sample time, dtypes ---------------------------------------------------------


@ALL_SDES
@pytest.mark.parametrize("data_shape", [(2,), (3, 8, 8)])
def test_shape_generic_with_per_sample_time(sde_name, data_shape):
    sde = make_sde(sde_name)
    b = 6
    t = interior_times(sde, b)
    gen = torch.Generator().manual_seed(9)
    x0 = torch.randn(b, *data_shape, generator=gen, dtype=torch.float64)
    z = torch.randn(b, *data_shape, generator=gen, dtype=torch.float64)
    col = (-1,) + (1,) * len(data_shape)
    alpha, sigma = exact_alpha(sde, t).reshape(col), exact_sigma(sde, t)

    mean, std = sde.marginal(x0, t64(t))
    assert mean.shape == x0.shape and std.shape == (b,)
    np.testing.assert_allclose(to_np(mean), alpha * to_np(x0), rtol=RTOL, atol=1e-300)
    np.testing.assert_allclose(to_np(std), sigma, rtol=RTOL)
    xt = sde.perturb(x0, t64(t), z)
    np.testing.assert_allclose(to_np(xt), alpha * to_np(x0) + sigma.reshape(col) * to_np(z), rtol=1e-12, atol=1e-14)
    c = exact_drift_coef(sde, t).reshape(col)
    np.testing.assert_allclose(to_np(sde.drift(x0, t64(t))), c * to_np(x0), rtol=RTOL, atol=1e-300)
    assert sde.reverse_drift(x0, t64(t), z).shape == x0.shape
    f, g = sde.discretize(x0, t64(t), t64(t + 1e-3))
    assert f.shape == x0.shape and g.shape == (b,)


@ALL_SDES
def test_outputs_follow_the_dtype_of_x(sde_name):
    """float32 data with float64 times (the default grid dtype) stay float32, for every SDE alike."""
    sde = make_sde(sde_name)
    t = t64(interior_times(sde, 4))
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    assert sde.drift(x, t).dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in sde.marginal(x, t))
    assert sde.perturb(x, t, x).dtype == torch.float32
    assert sde.reverse_drift(x, t, x).dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in sde.discretize(x, t, t + 1e-3))


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: VESDE(sigma_min=1.0, sigma_max=0.5), "sigma_min"),
        (lambda: VESDE(sigma_min=2.0, sigma_max=2.0), "sigma_min"),
        (lambda: VESDE(sigma_min=0.0), "sigma_min"),
        (lambda: VESDE(sigma_min=float("nan")), "sigma_min"),
        (lambda: VESDE(sigma_max=-1.0), "sigma_max"),
        (lambda: VESDE(sigma_max=float("inf")), "sigma_max"),
        (lambda: VESDE(t_min=1.0), "t_min"),
        (lambda: VESDE(t_min=-0.1), "t_min"),
        (lambda: VPSDE(beta_min=0.0), "beta_min"),
        (lambda: VPSDE(beta_min=-0.1), "beta_min"),
        (lambda: VPSDE(beta_max=0.0), "beta_max"),
        (lambda: VPSDE(beta_min=5.0, beta_max=1.0), "beta_min"),
        (lambda: SubVPSDE(beta_min=5.0, beta_max=1.0), "beta_min"),
        (lambda: SubVPSDE(beta_max=-2.0), "beta_max"),
        (lambda: VPSDE(t_min=0.0), "t_min"),
        (lambda: VPSDE(t_min=1.5), "t_min"),
        (lambda: DiscreteVPSDE(torch.tensor([0.1, 0.0])), "betas"),
        (lambda: DiscreteVPSDE(torch.tensor([0.1, -0.2])), "betas"),
        (lambda: DiscreteVPSDE(torch.tensor([0.5, 1.0])), "betas"),
        (lambda: DiscreteVPSDE(torch.full((2, 3), 0.1)), "betas"),
        (lambda: DiscreteVPSDE(torch.zeros(0)), "betas"),
        (lambda: DiscreteVPSDE.linear(1), "num_steps"),
        (lambda: DiscreteVPSDE.linear(10, beta_min=0.0), "beta_min"),
        (lambda: DiscreteVPSDE.linear(10, beta_min=5.0, beta_max=1.0), "beta_min"),
        (lambda: VPSDE().discrete(1), "num_steps"),
        (lambda: VPSDE().timesteps(0), "num_steps"),
        (lambda: DiscreteVPSDE.linear(10, 0.1, 2.0).timesteps(11), "num_steps"),
    ],
)
def test_bad_parameters_raise_naming_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_non_integer_num_steps_is_a_type_error():
    with pytest.raises(TypeError, match="num_steps"):
        VPSDE().timesteps(2.5)


@ALL_SDES
def test_time_outside_range_is_rejected(sde_name):
    sde = make_sde(sde_name)
    x = torch.zeros(2, 2, dtype=torch.float64)
    sde.check_time(t64([sde.t_min, 1.0]))  # both ends are allowed
    sde.marginal(x, t64([sde.t_min, 1.0]))
    for bad in ([0.5, 1.01], [sde.t_min - 1e-3, 0.5], [0.5, float("nan")]):
        with pytest.raises(ValueError, match=r"`t` must lie in \[t_min, T\]"):
            sde.marginal(x, t64(bad))
        with pytest.raises(ValueError, match="`s`"):
            sde.check_time(t64(bad), name="s")
    with pytest.raises(ValueError, match="`t` must be a 1-D tensor"):
        sde.check_time(torch.tensor(0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="`t` must be a 1-D tensor"):
        sde.marginal(x, 0.5)
