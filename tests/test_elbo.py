"""The ELBO (``scoresde.elbo``): every term against a closed form, the bounds against the exact NLL.

Closed forms are written here in numpy from Ho et al. (2020) eqs. 5-13 and a Gaussian's exact score,
independently of the library's code.  Statistical tolerances: each comparison of a Monte Carlo mean
with its exact value allows 4.5 standard errors (the sample sd / sqrt(n) of the very quantity
averaged), a false failure rate of ~7e-6 per comparison for a normal mean.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from scoresde import bridges
from scoresde.data import toy
from scoresde.data.toy import GaussianMixture
from scoresde.elbo import ContinuousELBO, DiscreteELBO, dsm_bound_constant, time_integral_g2_over_sigma2
from scoresde.sdes import DiscreteVPSDE, SubVPSDE, VESDE, VPSDE
from scoresde.training import DSMLoss

Z_TOL = 4.5


def vp_chain(num_steps: int) -> DiscreteVPSDE:
    """The N-step DDPM chain with the VP SDE's alpha_bar at the knots k/N (the same process for every N)."""
    vp = VPSDE()
    t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    two_log_alpha = 2 * vp.log_alpha(t)
    return DiscreteVPSDE(-torch.expm1(two_log_alpha[1:] - two_log_alpha[:-1]))


def _within(samples: torch.Tensor, exact: float, what: str) -> None:
    se = float(samples.std()) / math.sqrt(samples.numel())
    assert abs(float(samples.mean()) - exact) <= Z_TOL * se + 1e-12, f"{what}: {float(samples.mean()):.6g} vs {exact:.6g} (se {se:.2g})"


# -- discrete: every term on a single Gaussian ----------------------------------------------------------

@pytest.mark.parametrize("variance", ["small", "large"])
def test_discrete_terms_on_a_single_gaussian_match_their_closed_forms(variance):
    """Data N(mu0, s0^2 I) in d = 3 with its exact score; one x_0 repeated n times, so each term's mean
    over the repeats estimates E_{x_t | x_0}[L_{t-1}], closed-form because mu_t is linear in x_t."""
    n, d, s0 = 20_000, 3, 0.7
    mu0 = np.array([0.5, -0.3, 1.0])
    sde = vp_chain(20)
    target = GaussianMixture(torch.ones(1, dtype=torch.float64), torch.tensor(mu0)[None], torch.full((1,), s0**2, dtype=torch.float64))
    x0_np = np.array([0.9, 0.1, -0.4])
    x0 = torch.tensor(x0_np).repeat(n, 1)
    r = DiscreteELBO(variance=variance).run(target.score_fn(sde), sde, x0, generator=torch.Generator().manual_seed(0))

    betas = sde.betas.numpy()
    abar = np.cumprod(1 - betas)
    # L_T: deterministic
    a = abar[-1]
    exact_prior = 0.5 * np.sum((1 - a) + a * x0_np**2 - 1 - np.log(1 - a))
    np.testing.assert_allclose(r.prior.numpy(), exact_prior, rtol=1e-9, atol=1e-14)
    post = lambda k: (1 - abar[k - 1]) * betas[k] / (1 - abar[k])  # beta~ of 0-based knot k >= 1

    def reverse_mean_coeffs(k):
        """mu_t = A x_t + c with the exact score s = -(x_t - sqrt(abar) mu0) / (abar s0^2 + 1 - abar)."""
        v = abar[k] * s0**2 + 1 - abar[k]
        A = (1 - betas[k] / v) / math.sqrt(1 - betas[k])
        c = betas[k] * math.sqrt(abar[k]) * mu0 / v / math.sqrt(1 - betas[k])
        return A, c

    for k in (1, 2, 5, 10, 19):
        A, c = reverse_mean_coeffs(k)
        c0 = math.sqrt(abar[k - 1]) * betas[k] / (1 - abar[k])
        c1 = math.sqrt(1 - betas[k]) * (1 - abar[k - 1]) / (1 - abar[k])
        # mu~ - mu = (c1 - A) x_t + c0 x0 - c, x_t = sqrt(abar) x0 + sqrt(1 - abar) z
        m = (c1 - A) * math.sqrt(abar[k]) * x0_np + c0 * x0_np - c
        e_sq = np.sum(m**2) + d * (c1 - A) ** 2 * (1 - abar[k])
        var = post(k) if variance == "small" else betas[k]
        exact = 0.5 * (d * (post(k) / var - 1 + math.log(var / post(k))) + e_sq / var)
        _within(r.terms[:, k - 1], exact, f"L_{k} (t = {k + 1})")
    # L_0: -log N(x0; mu_1, s^2 I), mu_1 = A x_1 + c, s^2 = beta~_2 ("small") or beta_1 ("large")
    A, c = reverse_mean_coeffs(0)
    var = post(1) if variance == "small" else betas[0]
    m = A * math.sqrt(abar[0]) * x0_np + c - x0_np
    exact = 0.5 * ((np.sum(m**2) + d * A**2 * (1 - abar[0])) / var + d * math.log(2 * math.pi * var))
    _within(r.decoder, exact, "L_0")
    torch.testing.assert_close(r.total, r.prior + r.terms.sum(1) + r.decoder)
    assert r.nfe == 20 and r.terms.shape == (n, 19)


def test_discretized_decoder_is_ho_et_al_eq_13():
    """Every 8-bit level of one pixel: probabilities are the N(mu, var) masses of the bins (scipy), and sum to 1."""
    levels = torch.arange(256, dtype=torch.float64) * 2 / 255 - 1
    x = levels[:, None]
    elbo = DiscreteELBO(decoder="discretized")
    for mu, var in ((0.3, 1e-4), (-0.999, 3e-3), (0.999, 0.5), (4.0, 0.01)):
        log_p = -elbo._decoder(x, torch.full_like(x, mu), var)
        edges = np.concatenate([[-np.inf], (levels[:-1].numpy() + levels[1:].numpy()) / 2, [np.inf]])
        lower = np.diff(norm.cdf(edges, loc=mu, scale=math.sqrt(var)))  # accurate below the mean
        upper = -np.diff(norm.sf(edges, loc=mu, scale=math.sqrt(var)))  # accurate above it
        mass = np.where(levels.numpy() > mu, upper, lower)
        keep = mass > 1e-300
        np.testing.assert_allclose(log_p.numpy()[keep], np.log(mass[keep]), rtol=1e-9, atol=1e-9)
        assert abs(float(log_p.exp().sum()) - 1) < 1e-9
    with pytest.raises(ValueError, match="levels"):
        elbo.run(lambda x, t: -x, vp_chain(20), torch.full((2, 1), 0.001, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        elbo.run(lambda x, t: -x, vp_chain(20), torch.full((2, 1), 2.0, dtype=torch.float64))


def test_discrete_bound_through_an_eps_model_equals_the_score_model():
    sde = vp_chain(30)
    target = toy.eight_gaussians()
    score = target.score_fn(sde)
    eps_model = bridges.score_to_eps(score, sde)
    x0 = target.sample(64, torch.Generator().manual_seed(0), dtype=torch.float64)
    a = DiscreteELBO().run(score, sde, x0, generator=torch.Generator().manual_seed(1))
    b = DiscreteELBO().run(bridges.eps_to_score(eps_model, sde), sde, x0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.total, b.total, rtol=1e-10, atol=1e-10)


# -- the bounds against the exact NLL on a toy mixture -------------------------------------------------------

@pytest.fixture(scope="module")
def mixture_points():
    target = toy.eight_gaussians()
    x0 = target.sample(2000, torch.Generator().manual_seed(0), dtype=torch.float64)
    return target, x0, -target.log_prob(x0)


def test_discrete_bound_is_above_the_exact_nll_and_its_gap_shrinks_with_steps(mixture_points):
    """Mean over 2000 points of L - (-log p(x_0)) (paired, so the data noise cancels): >= 0 within its error, and
    shrinking with N.  Measured (data seed 0, noise seed 1; se 0.03-0.08): "large" 0.698 (10), 0.054 (100), -0.030
    (1000), i.e. tight at 1000 steps; "small" 2.119, 1.587, 1.048: beta~_t is too small a reverse variance for
    data that are smooth at the scale sigma_t, which costs O(1) nats per decade of small t."""
    target, x0, nll = mixture_points
    gaps = {}
    for variance in ("large", "small"):
        for n in (10, 100, 1000):
            sde = vp_chain(n)
            r = DiscreteELBO(variance=variance).run(target.score_fn(sde), sde, x0, generator=torch.Generator().manual_seed(1))
            diff = r.total - nll
            gaps[variance, n] = (float(diff.mean()), float(diff.std()) / math.sqrt(diff.numel()))
            assert gaps[variance, n][0] >= -Z_TOL * gaps[variance, n][1], (variance, n, gaps[variance, n])

    def drop(variance, a, b):
        (ga, sa), (gb, sb) = gaps[variance, a], gaps[variance, b]
        return ga - gb, Z_TOL * math.hypot(sa, sb)

    for variance, a, b in (("large", 10, 100), ("small", 10, 100), ("small", 100, 1000)):
        d, tol = drop(variance, a, b)
        assert d > tol, (variance, a, b, gaps)
    d, tol = drop("large", 100, 1000)
    assert d > -tol, gaps  # no growth; at 1000 steps the gap is within the noise of 0


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(), SubVPSDE()], ids=["vp", "ve", "subvp"])
def test_continuous_bound_is_above_the_exact_nll_and_tight_with_the_exact_score(sde, mixture_points):
    """With the exact score the bound is the exact NLL at t_eps plus KL(p_T || prior) (< 1e-3 here): so
    the paired mean gap must be >= 0 and <= 0.01 (the prior mismatch and t_eps shift, ~1e-3), within 4.5 se."""
    target, x0, nll = mixture_points
    r = ContinuousELBO().run(target.score_fn(sde), sde, x0, generator=torch.Generator().manual_seed(2))
    diff = r.total - nll
    se = float(diff.std()) / math.sqrt(diff.numel())
    assert -Z_TOL * se <= float(diff.mean()) <= 0.01 + Z_TOL * se, (float(diff.mean()), se)
    assert bool((r.variance > 0).all()) and r.nfe == 100


def test_importance_sampling_of_t_cuts_the_variance_without_bias(mixture_points):
    target, x0, _ = mixture_points
    sde = VPSDE()
    x0 = x0[:500]
    ris = ContinuousELBO(importance="g2/sigma2").run(target.score_fn(sde), sde, x0, generator=torch.Generator().manual_seed(3))
    uni = ContinuousELBO(importance="uniform").run(target.score_fn(sde), sde, x0, generator=torch.Generator().manual_seed(4))
    assert float(ris.variance.mean()) * 20 < float(uni.variance.mean())  # measured: 4.1 vs 307
    se = math.sqrt(float(ris.variance.sum() + uni.variance.sum())) / len(x0)
    assert abs(ris.mean - uni.mean) <= Z_TOL * se


# -- the likelihood-weighted DSM loss is the bound up to constants --------------------------------------------

def test_time_integral_matches_closed_forms():
    """Z = int g^2/sigma^2: VE 2 ln(sigma_max/sigma_min) T; VP [log expm1(B(t))] with B = int_0^t beta."""
    ve = VESDE(sigma_min=0.05, sigma_max=7.0)
    assert math.isclose(time_integral_g2_over_sigma2(ve, 0.0), 2 * math.log(7.0 / 0.05), rel_tol=1e-9)
    vp = VPSDE()
    B = lambda t: vp.beta_min * t + 0.5 * t**2 * (vp.beta_max - vp.beta_min)
    exact = math.log(math.expm1(B(1.0))) - math.log(math.expm1(B(1e-5)))
    assert math.isclose(time_integral_g2_over_sigma2(vp, 1e-5), exact, rel_tol=1e-8)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_likelihood_weighted_dsm_loss_is_the_bound_up_to_constants(sde, mixture_points):
    """L(x_0) = (T - t_min)/2 E[DSMLoss(sde, "likelihood")] + C(x_0): estimated from the training loss alone
    (uniform t, 400 draws per point) it agrees with the importance-sampled bound and with the exact NLL."""
    target, x0, nll = mixture_points
    x0, nll = x0[:500], nll[:500]
    loss = DSMLoss(sde, weighting="likelihood")
    score, g = target.score_fn(sde), torch.Generator().manual_seed(5)
    draws = torch.stack([loss(score, x0, g) for _ in range(400)])  # [M, B]
    from_loss = (sde.T - sde.t_min) / 2 * draws.mean(0) + dsm_bound_constant(sde, x0)
    se_loss = (sde.T - sde.t_min) / 2 * draws.std(0) / math.sqrt(400)
    bound = ContinuousELBO(num_time_samples=200).run(score, sde, x0, generator=torch.Generator().manual_seed(6))
    se = math.sqrt(float((se_loss**2).sum() + bound.variance.sum())) / len(x0)
    assert abs(float(from_loss.mean()) - bound.mean) <= Z_TOL * se, (float(from_loss.mean()), bound.mean, se)
    diff = from_loss - nll
    assert abs(float(diff.mean())) <= 0.01 + Z_TOL * float((se_loss**2).sum().sqrt()) / len(x0)


def test_elbo_errors_name_the_argument():
    score = toy.eight_gaussians().score_fn(VPSDE())
    x0 = torch.zeros(4, 2)
    with pytest.raises(TypeError, match="DiscreteVPSDE"):
        DiscreteELBO().run(score, VPSDE(), x0)
    with pytest.raises(ValueError, match="variance"):
        DiscreteELBO(variance="medium")
    with pytest.raises(ValueError, match="decoder"):
        DiscreteELBO(decoder="logistic")
    with pytest.raises(ValueError, match="importance"):
        ContinuousELBO(importance="beta")
    with pytest.raises(ValueError, match="num_time_samples"):
        ContinuousELBO(num_time_samples=1)
    with pytest.raises(ValueError, match="t_eps"):
        ContinuousELBO(t_eps=2.0).run(score, VPSDE(), x0)
    with pytest.raises(ValueError, match="x0"):
        ContinuousELBO().run(score, VPSDE(), torch.zeros(4))


# -- the app: scoresde-sample likelihood=elbo ------------------------------------------------------------------

@pytest.mark.parametrize("sde_name", ["ddpm", "vp"])
def test_sample_app_writes_the_bound_its_terms_and_the_pf_ode_nll(sde_name, tmp_path):
    """Exact score (checkpoint=null): both bounds sit on the exact NLL (prior mismatch ~1e-3, discrete gap at
    1000 steps ~0, see above), within 4.5 of their standard errors; the PF-ODE NLL of the same points beside."""
    from scoresde.apps import sample
    from test_apps import FAST, read_metrics, run_app

    run_app(sample, *FAST, "sampler=ddim", "sampler.num_steps=10", f"sde={sde_name}", "likelihood=elbo",
            "likelihood.num_points=100", "likelihood.num_time_samples=20", f"hydra.run.dir={tmp_path}")
    m = read_metrics(tmp_path)
    assert m["status"] == "ok"
    elbo, nll = m["elbo"], m["nll"]
    kinds = ("continuous", "discrete") if sde_name == "ddpm" else ("continuous",)
    assert sorted(k for k in elbo if k in ("continuous", "discrete")) == sorted(kinds)
    for kind in kinds:
        e = elbo[kind]
        assert e["bits_per_dim"] == pytest.approx(e["mean"] / (2 * math.log(2)), rel=1e-9)
        assert e["gap_to_exact"] > -Z_TOL * e["gap_stderr"] and abs(e["gap_to_exact"]) < 0.05 + Z_TOL * e["gap_stderr"]
    if sde_name == "ddpm":
        d = elbo["discrete"]
        assert d["mean"] == pytest.approx(d["L_T"] + d["sum_L_t-1"] + d["L_0"], rel=1e-9) and d["nfe"] == 1000
    assert nll["num_points"] == 100 and abs(nll["kl_estimate"]) < 1e-2
