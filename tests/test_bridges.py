"""Tests for ``scoresde.bridges``: round trips are the identity, and on targets with a closed-form
score (a Gaussian, a Gaussian mixture) each bridge turns the exact eps / denoiser / EDM denoiser
into the exact score and back, for every SDE."""
from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from problems import (
    MAIN_SDES,
    SDE_CASES,
    exact_alpha,
    exact_sigma,
    gaussian_edm_denoiser,
    gaussian_edm_eps,
    gaussian_eps,
    gaussian_score,
    gaussian_x0_hat,
    make_sde,
    mixture_posterior_mean,
    t64,
    time_grid,
    to_np,
)
from scoresde import bridges
from scoresde.bridges import (
    Bridge,
    denoiser_to_score,
    eps_to_score,
    score_to_denoiser,
    score_to_eps,
    score_to_ve_denoiser,
    score_to_ve_eps,
    ve_denoiser_to_score,
    ve_eps_to_score,
)
from scoresde.data.toy import anisotropic_mixture

ALL_SDES = pytest.mark.parametrize("sde_name", list(SDE_CASES))
MAIN = pytest.mark.parametrize("sde_name", MAIN_SDES)
EPS64 = np.finfo(np.float64).eps


def wiggly(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """An arbitrary smooth nonlinear function of (x, t) standing in for a network (module level,
    so that bridges built on it pickle).  Its relative sensitivity to both inputs is O(1) for
    every input size (|u df/du| <~ |f| + 1), so a round trip that reproduces the inputs to a few ulps
    reproduces f to ~1e-14 (the second argument is t or, in VE-ised coordinates, sigma~ up to ~1e3)."""
    tt = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return torch.tanh(x) * (1 + 1 / (1 + tt)) + 0.1 * x * torch.cos(tt / (1 + tt)) - 0.5


def _setup(sde_name, shape=(2, 3), seed=0):
    sde = make_sde(sde_name)
    t = time_grid(sde, 21)
    gen = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(len(t), *shape, generator=gen, dtype=torch.float64)
    return sde, t, x


# -- round trips ---------------------------------------------------------------------------------


@ALL_SDES
def test_eps_round_trips_are_the_identity(sde_name):
    """score -> eps -> score and eps -> score -> eps multiply and divide by sigma: exact to a few ulps."""
    sde, t, x = _setup(sde_name)
    tt = t64(t)
    f = wiggly(x, tt)
    torch.testing.assert_close(eps_to_score(score_to_eps(wiggly, sde), sde)(x, tt), f, rtol=1e-14, atol=0)
    torch.testing.assert_close(score_to_eps(eps_to_score(wiggly, sde), sde)(x, tt), f, rtol=1e-14, atol=0)


@ALL_SDES
def test_denoiser_round_trips_are_the_identity(sde_name):
    """score -> denoiser -> score: s' = (alpha (x + sigma^2 s)/alpha - x) / sigma^2.  The subtraction
    cancels |x| against |x + sigma^2 s|, so the float64 error is ~ eps (|x| + sigma^2 |s|) / sigma^2; we allow
    8 eps of that (a few roundings), i.e. ~1e-15 relative for sigma ~ 1 and ~1e-11 at the VP t_min.
    denoiser -> score -> denoiser: D' = (x + sigma^2 (alpha D - x)/sigma^2)/alpha, error ~ eps (|x| + alpha |D|)/alpha."""
    sde, t, x = _setup(sde_name)
    tt = t64(t)
    f = wiggly(x, tt)
    col = (-1, 1, 1)
    alpha, sigma = exact_alpha(sde, t).reshape(col), exact_sigma(sde, t).reshape(col)

    got = to_np(denoiser_to_score(score_to_denoiser(wiggly, sde), sde)(x, tt))
    tol = 8 * EPS64 * (np.abs(to_np(x)) + sigma**2 * np.abs(to_np(f))) / sigma**2
    assert np.all(np.abs(got - to_np(f)) <= tol)

    got = to_np(score_to_denoiser(denoiser_to_score(wiggly, sde), sde)(x, tt))
    tol = 8 * EPS64 * (np.abs(to_np(x)) + alpha * np.abs(to_np(f))) / alpha
    assert np.all(np.abs(got - to_np(f)) <= tol)
    # and on the typical scale the round trip is the identity to ~1e-12
    assert np.max(np.abs(got - to_np(f))) <= 1e-12 * (1 + np.max(np.abs(to_np(f))))


@ALL_SDES
def test_ve_round_trips_are_the_identity(sde_name):
    """VE-ised coordinates.  score -> ve -> score goes through t(sigma~(t)), which must return t
    (closed forms, or bisection for the discrete chain); ve -> score -> ve is the identity in
    (x~, sigma~) for sigma~ in the range of the SDE."""
    sde, t, x = _setup(sde_name)
    tt = t64(t)
    f = wiggly(x, tt)
    col = (-1, 1, 1)
    sigma2 = exact_sigma(sde, t).reshape(col) ** 2

    torch.testing.assert_close(ve_eps_to_score(score_to_ve_eps(wiggly, sde), sde)(x, tt), f, rtol=1e-12, atol=1e-12)
    got = to_np(ve_denoiser_to_score(score_to_ve_denoiser(wiggly, sde), sde)(x, tt))
    # as for the VP denoiser: cancellation error eps |x| / sigma^2 on top of the 1e-12 relative
    tol = 1e-12 * np.abs(to_np(f)) + 8 * EPS64 * (np.abs(to_np(x)) + sigma2 * np.abs(to_np(f))) / sigma2 + 1e-14
    assert np.all(np.abs(got - to_np(f)) <= tol)

    # the other direction, in the coordinates (x~, sigma~) the EDM model sees
    sigma_ve = sde.sigma_ve(tt)
    x_ve = x / t64(exact_alpha(sde, t)).reshape(col)
    g = wiggly(x_ve, sigma_ve)
    torch.testing.assert_close(score_to_ve_eps(ve_eps_to_score(wiggly, sde), sde)(x_ve, sigma_ve), g, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        score_to_ve_denoiser(ve_denoiser_to_score(wiggly, sde), sde)(x_ve, sigma_ve), g, rtol=1e-12, atol=1e-12
    )


# -- exact scores of a Gaussian target N(mu, s^2 I) -----------------------------------------------

MU, S = np.array([1.0, -2.0, 0.5]), 0.7


def _gaussian_fns(sde):
    """Closed forms (tests/problems.py) as torch callables; alpha(t), sigma(t) from the closed forms too."""

    def coeffs(t):
        tn = to_np(t)
        return exact_alpha(sde, tn), exact_sigma(sde, tn)

    def score(x, t):
        return t64(gaussian_score(to_np(x), *coeffs(t), MU, S)).to(x.dtype)

    def eps(x, t):
        return t64(gaussian_eps(to_np(x), *coeffs(t), MU, S)).to(x.dtype)

    def x0_hat(x, t):
        return t64(gaussian_x0_hat(to_np(x), *coeffs(t), MU, S)).to(x.dtype)

    def edm_denoiser(x_ve, sigma_ve):  # knows only (x~, sigma~), not t
        return t64(gaussian_edm_denoiser(to_np(x_ve), to_np(sigma_ve), MU, S)).to(x_ve.dtype)

    def edm_eps(x_ve, sigma_ve):
        return t64(gaussian_edm_eps(to_np(x_ve), to_np(sigma_ve), MU, S)).to(x_ve.dtype)

    return score, eps, x0_hat, edm_denoiser, edm_eps


def _gaussian_points(sde, t, seed=1):
    """Points spread like p_t itself: x = alpha mu + sqrt(alpha^2 s^2 + sigma^2) e."""
    alpha, sigma = exact_alpha(sde, t)[:, None], exact_sigma(sde, t)[:, None]
    e = to_np(torch.randn(len(t), 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return t64(alpha * MU + np.sqrt(alpha**2 * S**2 + sigma**2) * e)


@ALL_SDES
def test_gaussian_closed_forms_agree_with_each_other(sde_name):
    """Sanity of the test problem itself: eps is the same number in VP and VE-ised coordinates,
    and Tweedie's formula links the VP and EDM denoisers to the score."""
    sde = make_sde(sde_name)
    t = time_grid(sde, 21)
    x = to_np(_gaussian_points(sde, t))
    alpha, sigma = exact_alpha(sde, t), exact_sigma(sde, t)
    a, sg = alpha[:, None], sigma[:, None]
    score = gaussian_score(x, alpha, sigma, MU, S)
    np.testing.assert_allclose(gaussian_eps(x, alpha, sigma, MU, S), -sg * score, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(gaussian_edm_eps(x / a, sigma / alpha, MU, S), -sg * score, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gaussian_x0_hat(x, alpha, sigma, MU, S), (x + sg**2 * score) / a, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        gaussian_edm_denoiser(x / a, sigma / alpha, MU, S), (x + sg**2 * score) / a, rtol=1e-12, atol=1e-12
    )


@ALL_SDES
def test_bridges_recover_the_exact_gaussian_score(sde_name):
    """eps*, x0_hat*, EDM's D* and eps~* of N(mu, s^2 I), computed from their own closed forms, are
    turned by the bridges into the exact score (alpha mu - x)/(alpha^2 s^2 + sigma^2).  The error is the
    float64 evaluation error of the closed forms, divided by sigma (eps) or sigma^2 (denoisers) as in
    the round-trip tests; the relative bounds below cover t down to the VP t_min (sigma^2 ~ 2e-6)."""
    sde = make_sde(sde_name)
    t = time_grid(sde, 21)
    tt, x = t64(t), _gaussian_points(sde, t)
    score, eps, x0_hat, edm_denoiser, edm_eps = _gaussian_fns(sde)
    expected = score(x, tt)
    scale = expected.abs().max()
    sigma2 = t64(exact_sigma(sde, t))[:, None] ** 2
    den_tol = (8 * EPS64 * (x.abs() + expected.abs() * sigma2) / sigma2).max()

    torch.testing.assert_close(eps_to_score(eps, sde)(x, tt), expected, rtol=1e-12, atol=1e-13 * scale)
    torch.testing.assert_close(ve_eps_to_score(edm_eps, sde)(x, tt), expected, rtol=1e-12, atol=1e-13 * scale)
    torch.testing.assert_close(denoiser_to_score(x0_hat, sde)(x, tt), expected, rtol=1e-12, atol=float(den_tol))
    torch.testing.assert_close(ve_denoiser_to_score(edm_denoiser, sde)(x, tt), expected, rtol=1e-12, atol=float(den_tol))


@ALL_SDES
def test_bridges_turn_the_exact_score_into_eps_and_denoisers(sde_name):
    """The reverse direction: from the exact score, ``score_to_*`` give the exact eps*, x0_hat*, and, at
    (x~, sigma~) in VE-ised coordinates, EDM's D*(x~, sigma~) and eps~*(x~, sigma~)."""
    sde = make_sde(sde_name)
    t = time_grid(sde, 21)
    tt, x = t64(t), _gaussian_points(sde, t, seed=2)
    score, eps, x0_hat, edm_denoiser, edm_eps = _gaussian_fns(sde)
    torch.testing.assert_close(score_to_eps(score, sde)(x, tt), eps(x, tt), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(score_to_denoiser(score, sde)(x, tt), x0_hat(x, tt), rtol=1e-12, atol=1e-12)

    sigma_ve = t64(exact_sigma(sde, t) / exact_alpha(sde, t))
    x_ve = x / t64(exact_alpha(sde, t))[:, None]
    torch.testing.assert_close(score_to_ve_eps(score, sde)(x_ve, sigma_ve), edm_eps(x_ve, sigma_ve), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(
        score_to_ve_denoiser(score, sde)(x_ve, sigma_ve), edm_denoiser(x_ve, sigma_ve), rtol=1e-12, atol=1e-12
    )


@MAIN
def test_feeding_x_instead_of_x_over_alpha_is_detected(sde_name):
    """The classic bug named in the module docstring: giving an EDM model x instead of x / alpha.
    Where alpha(t) != 1 this is visibly wrong, so the Gaussian tests above do discriminate."""
    sde = make_sde(sde_name)
    t = np.array([0.3, 0.6, 0.9])
    tt, x = t64(t), _gaussian_points(sde, t)
    score, _, _, edm_denoiser, _ = _gaussian_fns(sde)

    def wrong(x_, t_):  # VE-ised denoiser fed VP coordinates
        return (edm_denoiser(x_, sde.sigma_ve(t_)) - x_) / sde.sigma_ve(t_)[:, None] ** 2

    err = (wrong(x, tt) - score(x, tt)).abs().max()
    if sde_name == "ve":  # alpha = 1: the two coordinate systems coincide
        assert err < 1e-12
    else:
        assert err > 1e-2


# -- a Gaussian-mixture target: Tweedie's formula ----------------------------------------------------


@MAIN
def test_denoiser_of_mixture_score_is_the_posterior_mean(sde_name):
    """score_to_denoiser(exact mixture score) = E[x_0 | x_t] (Tweedie), and the EDM denoiser at
    (x / alpha, sigma~) is the same posterior mean; E[x_0 | x_t] from Gaussian conditioning per component
    (scipy / numpy, tests/problems.py)."""
    sde = make_sde(sde_name)
    mix = anisotropic_mixture()
    score = mix.score_fn(sde)
    w, mu, cov = (p.numpy() for p in (mix.weights, mix.means, mix.covs))
    for t in (0.05, 0.3, 0.7):
        tt = torch.full((64,), t, dtype=torch.float64)
        x0 = mix.sample(64, torch.Generator().manual_seed(3), dtype=torch.float64)
        z = torch.randn(64, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        x = sde.perturb(x0, tt, z)
        a, s = float(exact_alpha(sde, t)), float(exact_sigma(sde, t))
        expected = mixture_posterior_mean(to_np(x), w, mu, cov, a, s)
        np.testing.assert_allclose(to_np(score_to_denoiser(score, sde)(x, tt)), expected, rtol=1e-12, atol=1e-12)
        got_ve = score_to_ve_denoiser(score, sde)(x / a, torch.full((64,), s / a, dtype=torch.float64))
        np.testing.assert_allclose(to_np(got_ve), expected, rtol=1e-12, atol=1e-12)


# -- shapes, dtypes, the Bridge object --------------------------------------------------------------

ALL_BRIDGES = [
    eps_to_score,
    score_to_eps,
    denoiser_to_score,
    score_to_denoiser,
    ve_eps_to_score,
    score_to_ve_eps,
    ve_denoiser_to_score,
    score_to_ve_denoiser,
]


@MAIN
@pytest.mark.parametrize("make_bridge", ALL_BRIDGES, ids=lambda f: f.__name__)
def test_bridges_are_shape_generic_and_per_sample(sde_name, make_bridge):
    """On [B, 3, 8, 8] with a different time per sample, each row equals the bridge applied to that
    row alone (no coupling across the batch), and float32 inputs give float32 outputs."""
    sde = make_sde(sde_name)
    t = time_grid(sde, 5)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(len(t), 3, 8, 8, generator=gen, dtype=torch.float64)
    second = t64(t)
    if make_bridge.__name__.startswith("score_to_ve"):
        second = sde.sigma_ve(second)  # these bridges are called as model(x~, sigma~)
    bridge = make_bridge(wiggly, sde)
    out = bridge(x, second)
    assert out.shape == x.shape and out.dtype == torch.float64
    for i in range(len(t)):
        torch.testing.assert_close(out[i : i + 1], bridge(x[i : i + 1], second[i : i + 1]), rtol=1e-14, atol=0)
    out32 = bridge(x.float(), second)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out, rtol=1e-4, atol=1e-4 * float(out.abs().max()))


def test_bridge_object_is_a_frozen_picklable_value():
    sde = make_sde("vp")
    b = eps_to_score(wiggly, sde)
    assert isinstance(b, Bridge) and b.kind == "eps->score" and b.fn is wiggly and b.sde is sde
    assert b == Bridge(wiggly, sde, "eps->score") and b != score_to_eps(wiggly, sde)
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.kind = "score->eps"
    b2 = pickle.loads(pickle.dumps(b))
    x, t = torch.ones(2, 2, dtype=torch.float64), t64([0.2, 0.8])
    torch.testing.assert_close(b2(x, t), b(x, t), rtol=0, atol=0)
    assert "eps->score" in repr(b)
    kinds = {f(wiggly, sde).kind for f in ALL_BRIDGES}
    assert len(kinds) == 8 and set(bridges.__all__) >= {f.__name__ for f in ALL_BRIDGES}


# -- Tweedie's formula and EDM's coefficients, written once here --------------------------------------------------


@MAIN
def test_tweedie_is_the_exact_gaussian_posterior_mean(sde_name):
    """``tweedie`` (float or tensor coefficients) and ``tweedie_denoise`` (from the [B] time tensor) turn the
    exact score of N(mu, s^2 I) into its exact posterior mean E[x_0 | x_t]; the bound is the float64
    evaluation error amplified by sigma^2 / alpha as in the denoiser round trips."""
    sde = make_sde(sde_name)
    t = time_grid(sde, 21)
    tt, x = t64(t), _gaussian_points(sde, t, seed=3)
    score, _, x0_hat, _, _ = _gaussian_fns(sde)
    expected = x0_hat(x, tt)
    s = score(x, tt)
    alpha, sigma = t64(exact_alpha(sde, t))[:, None], t64(exact_sigma(sde, t))[:, None]
    torch.testing.assert_close(bridges.tweedie_denoise(s, sde, x, tt), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bridges.tweedie(x, s, alpha, sigma), expected, rtol=1e-12, atol=1e-12)
    for i in (0, len(t) // 2, len(t) - 1):  # python-float coefficients (the samplers' grid values)
        torch.testing.assert_close(bridges.tweedie(x[i], s[i], float(alpha[i]), float(sigma[i])), expected[i],
                                   rtol=1e-12, atol=1e-12)


@MAIN
@pytest.mark.parametrize("sigma_data", [1.0, 0.5])
def test_edm_coefficients_are_table_1_in_both_coordinates(sde_name, sigma_data):
    """Karras et al. 2022 Table 1 at sigma~ = sigma/alpha, and the VP-coordinate forms: var = sigma^2 +
    alpha^2 sigma_d^2, c_in_vp = c_in / alpha (so c_in_vp x = c_in x~), std_ve = 1 / c_in; written out
    from exact_alpha / exact_sigma in numpy, to a few float64 roundings."""
    sde = make_sde(sde_name)
    t = time_grid(sde, 21)
    c = bridges.edm_coefficients(sde, t64(t), sigma_data)
    a, s = exact_alpha(sde, t), exact_sigma(sde, t)
    sv, s2 = s / a, sigma_data**2
    expected = {
        "alpha": a, "sigma": s, "sigma_ve": sv, "c_in": 1 / np.sqrt(sv**2 + s2), "c_noise": np.log(sv) / 4,
        "c_skip": s2 / (sv**2 + s2), "c_out": sv * sigma_data / np.sqrt(sv**2 + s2),
        "var": s**2 + a**2 * s2, "c_in_vp": 1 / (a * np.sqrt(sv**2 + s2)), "std_ve": np.sqrt(sv**2 + s2),
    }
    assert set(c) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(to_np(c[name]), value, rtol=1e-12, atol=0, err_msg=name)
