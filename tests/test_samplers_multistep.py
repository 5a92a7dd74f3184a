"""Multistep fast solvers (DPM-Solver++, UniPC) against closed forms, in float64.

* Orders of convergence on a Gaussian target N(mu, s^2 I), whose probability-flow map is closed-form:
  in EDM's variables x~ = x/alpha, sigma~ = sigma/alpha the exact flow is
  x~(sigma~') = mu + (x~(sigma~) - mu) sqrt((s^2 + sigma~'^2) / (s^2 + sigma~^2)) (tests/problems.py).
* Step-for-step equivalences with recurrences written here from the papers: k-diffusion's
  ``sample_dpmpp_2m`` (DPM-Solver++ Alg. 2 in sigma~, x~), diffusers' third-order multistep
  (``third_order="diffusers"``), DDIM (eta = 0) as DPM-Solver++(1), UniPC-1; UniP-2 ("bh2") without
  its corrector is DPM-Solver++(2M).  The "taylor" third-order step is exact for D quadratic in lambda.
* DPM-Solver++(2M/3M) SDE (eta = 1) is statistically correct on a Gaussian mixture.
"""
import math

import numpy as np
import pytest
import torch

from scoresde import grids, toy
from scoresde.samplers import DDIM, DPMSolverPP, UniPC
from scoresde.sdes import VESDE, VPSDE

from problems import MAIN_SDES, exact_alpha, exact_sigma, gaussian_edm_denoiser, make_sde, t64, to_np, whitened_moment_errors

F64 = torch.float64
MU, S = 0.7, 0.5  # the Gaussian target N(MU, S^2 I)


def gaussian_score(sde):
    """Exact score of N(MU, S^2 I) perturbed by ``sde``: (alpha MU - x) / (alpha^2 S^2 + sigma^2), any shape."""

    def score(x, t):
        shape = (-1,) + (1,) * (x.ndim - 1)
        a, sg = sde.alpha(t).to(x.dtype).reshape(shape), sde.sigma(t).to(x.dtype).reshape(shape)
        return (a * MU - x) / (a**2 * S**2 + sg**2)

    return score


def sigma_ve(sde, ts) -> np.ndarray:
    """sigma~ = sigma/alpha at ``ts`` from the independent closed forms of tests/problems.py."""
    t = to_np(ts)
    return exact_sigma(sde, t) / exact_alpha(sde, t)


def exact_flow(sde, x_T: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """x at ts[-1] on the exact PF-ODE trajectory through x_T at ts[0] (VP coordinates)."""
    sv = sigma_ve(sde, ts[[0, -1]])
    a = exact_alpha(sde, to_np(ts[[0, -1]]))
    x_ve = x_T / a[0]
    return a[1] * (MU + (x_ve - MU) * math.sqrt((S**2 + sv[1] ** 2) / (S**2 + sv[0] ** 2)))


def x_start(sde, n=9):
    return torch.linspace(-2.0, 2.0, n, dtype=F64)[:, None] * sde.prior_std


# -- orders of convergence -------------------------------------------------------------------------
# Karras grids with N = 40 ... 160 (error 1e-3 ... 1e-8): past N ~ 40 every method is in its asymptotic
# regime on every SDE (below that the 3rd/4th-order errors change sign on some SDEs); float64 round-off
# (1e-15) stays far below.  UniPC-p has order p + 1 (UniC raises the order of UniP-p by one, Zhao et
# al. 2023; diffusers: "the effective order of accuracy is solver_order + 1").
ORDERS = {
    "dpmpp_1": (DPMSolverPP(order=1, denoise=False), 1),
    "dpmpp_2m": (DPMSolverPP(order=2, denoise=False), 2),
    "dpmpp_2m_heun": (DPMSolverPP(order=2, solver_type="heun", denoise=False), 2),
    "dpmpp_3m": (DPMSolverPP(order=3, denoise=False), 3),
    "unipc_1_bh2": (UniPC(order=1, denoise=False), 2),
    "unipc_2_bh2": (UniPC(order=2, denoise=False), 3),
    "unipc_2_bh1": (UniPC(order=2, variant="bh1", denoise=False), 3),
    "unipc_3_bh2": (UniPC(order=3, denoise=False), 4),
}
STEPS = [40, 57, 80, 113, 160]
MAIN_ORDERS = ("dpmpp_2m", "dpmpp_3m", "unipc_2_bh2", "unipc_3_bh2")  # on every SDE, the others on VP
ORDER_CASES = [(name, sde) for name in ORDERS for sde in (MAIN_SDES if name in MAIN_ORDERS else ("vp",))]


@pytest.mark.parametrize("name, sde_name", ORDER_CASES)
def test_order_of_convergence_on_a_gaussian(name, sde_name):
    sampler, order = ORDERS[name]
    sde = make_sde(sde_name)
    x_T = x_start(sde)
    errors = []
    for n in STEPS:
        ts = grids.karras(sde, n, sigma_min="sde")  # the same interval [t_min, T] for every n (no low-NFE end)
        x = sampler.sample(gaussian_score(sde), sde, x_init=x_T, ts=ts)
        errors.append(float((x - exact_flow(sde, x_T, ts)).abs().max()))
    slope = -np.polyfit(np.log(STEPS), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.3, (name, sde_name, slope, errors)


def test_third_order_step_is_exact_for_a_denoiser_quadratic_in_lambda():
    """3M integrates D = D_0 + u D' + u^2 D''/2 exactly: with D(lambda) quadratic (and independent of x)
    every 3M step is exact.  With diffusers' half-weight second difference it is not (DPMSolverPP doc)."""
    sde, n = VESDE(), 6
    ts = grids.log_snr(sde, n)
    lam = -np.log(sigma_ve(sde, ts))
    coef = (1.0, 0.3, 0.2)  # D(lambda) = 1 + 0.3 u + 0.2 u^2, u = lambda - lambda_0

    def score(x, t):  # VE: D = x + sigma^2 s
        sv = sde.sigma_ve(t).to(x.dtype).reshape(-1, 1)
        u = -torch.log(sv) - lam[0]
        return (coef[0] + coef[1] * u + coef[2] * u**2 - x) / sv**2

    trajectory = []  # trajectory[i] = x at ts[i + 1]
    DPMSolverPP(order=3, denoise=False, lower_order_final=False).sample(
        score, sde, x_init=torch.zeros(1, 1, dtype=F64), ts=ts, callback=lambda info: trajectory.append(float(info.x)))
    for i in range(2, n - 1):  # steps 0, 1 are the warm-up (orders 1, 2)
        h, u0 = lam[i + 1] - lam[i], lam[i] - lam[0]
        # int_0^h e^{v-h} v^k dv for k = 0, 1, 2, and D(lambda_i + v) = c0 + c1 v + c2 v^2
        m = (-math.expm1(-h), h + math.expm1(-h), h * h - 2 * h - 2 * math.expm1(-h))
        c = (coef[0] + coef[1] * u0 + coef[2] * u0**2, coef[1] + 2 * coef[2] * u0, coef[2])
        expected = math.exp(-h) * trajectory[i - 1] + sum(ck * mk for ck, mk in zip(c, m))
        assert abs(trajectory[i] - expected) < 1e-10, (i, trajectory[i], expected)


# -- step-for-step equivalences --------------------------------------------------------------------


def edm_denoiser(x_ve: np.ndarray, sigma: float) -> np.ndarray:
    return gaussian_edm_denoiser(x_ve, np.full(len(x_ve), sigma), MU, S)


def kdiffusion_dpmpp_2m(x_ve: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """k-diffusion's ``sample_dpmpp_2m`` written from DPM-Solver++ Alg. 2 in sigma~, x~ on ``sigmas``
    followed by k-diffusion's implicit trailing 0; t = -log sigma~, h = t_next - t, r = h_last / h."""
    sigmas = np.append(sigmas, 0.0)
    old = None
    for i in range(len(sigmas) - 1):
        denoised = edm_denoiser(x_ve, sigmas[i])
        if sigmas[i + 1] == 0:
            x_ve = denoised  # the first-order step into sigma = 0
        else:
            h = math.log(sigmas[i] / sigmas[i + 1])
            d = denoised
            if old is not None:
                r = math.log(sigmas[i - 1] / sigmas[i]) / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            x_ve = (sigmas[i + 1] / sigmas[i]) * x_ve - math.expm1(-h) * d
        old = denoised
    return x_ve


def diffusers_dpmpp_3m(x_ve: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """diffusers' DPMSolverMultistepScheduler (dpmsolver++, solver_order=3, midpoint, lower_order_final,
    final sigma 0), in sigma~, x~: warm-up orders 1, 2; order <= 2 into the last grid time when N < 15;
    first order into sigma = 0; third order with D2 = (D1_0 - D1_1)/(r0 + r1)."""
    n = len(sigmas)
    sigmas = np.append(sigmas, 0.0)
    lam = -np.log(sigmas[:-1])
    ms = []
    for i in range(n):
        ms.append(edm_denoiser(x_ve, sigmas[i]))
        if i == n - 1:
            return ms[-1]  # first order into sigma = 0
        h = math.log(sigmas[i] / sigmas[i + 1])
        order = 1 if i == 0 else 2 if (i == 1 or (i == n - 2 and n < 15)) else 3
        x_ve = (sigmas[i + 1] / sigmas[i]) * x_ve - math.expm1(-h) * ms[-1]
        if order >= 2:
            r0 = (lam[i] - lam[i - 1]) / h
            d1_0 = (ms[-1] - ms[-2]) / r0
        if order == 2:
            x_ve = x_ve - 0.5 * math.expm1(-h) * d1_0
        if order == 3:
            r1 = (lam[i - 1] - lam[i - 2]) / h
            d1_1 = (ms[-2] - ms[-3]) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            x_ve = x_ve + (math.expm1(-h) / h + 1) * d1 - ((math.expm1(-h) + h) / h**2 - 0.5) * d2


@pytest.mark.parametrize("sde_name", MAIN_SDES)
@pytest.mark.parametrize("n", [8, 25])
@pytest.mark.parametrize("solver_kw, reference", [
    ({}, kdiffusion_dpmpp_2m),                                       # k-diffusion sample_dpmpp_2m
    ({"order": 3, "third_order": "diffusers"}, diffusers_dpmpp_3m),  # diffusers' 3M form
], ids=["2m_kdiffusion", "3m_diffusers"])
def test_dpmpp_equals_peer_recurrence_on_karras_grid(sde_name, n, solver_kw, reference):
    sde = make_sde(sde_name)
    ts = grids.karras(sde, n)
    x_T = x_start(sde, 33)
    x = DPMSolverPP(num_steps=n, **solver_kw).sample(gaussian_score(sde), sde, x_init=x_T, ts=ts)
    a_T = exact_alpha(sde, to_np(ts[:1]))[0]
    ref = reference(to_np(x_T) / a_T, sigma_ve(sde, ts))
    assert np.abs(to_np(x) - ref).max() < 1e-10
    taylor = DPMSolverPP(num_steps=n, order=3).sample(gaussian_score(sde), sde, x_init=x_T, ts=ts)
    assert float((taylor - x).abs().max()) > 1e-6  # the two forms differ for order 3 ...
    two = [DPMSolverPP(num_steps=n, third_order=f).sample(gaussian_score(sde), sde, x_init=x_T, ts=ts)
           for f in ("taylor", "diffusers")]
    assert torch.equal(*two)  # ... and only there


@pytest.mark.parametrize("sde_name", MAIN_SDES)
def test_dpmpp_order_1_equals_ddim(sde_name):
    sde = make_sde(sde_name)
    ts = grids.karras(sde, 12)
    x_T = x_start(sde, 33)
    for denoise in (True, False):
        x_dpm = DPMSolverPP(order=1, denoise=denoise).sample(gaussian_score(sde), sde, x_init=x_T, ts=ts)
        x_ddim = DDIM(eta=0.0, denoise=denoise).sample(gaussian_score(sde), sde, x_init=x_T, ts=ts)
        torch.testing.assert_close(x_dpm, x_ddim, atol=1e-12, rtol=0)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_unipc_1_equals_its_recurrence(sde_name, variant):
    """UniPC-1 written from Zhao et al. 2023 (data prediction): UniP-1 is the DDIM step; UniC-1 re-does it
    with D_s + (D_t - D_s)/2 weighted by B(h) instead of 1 - e^{-h}; the output is D at the last grid time."""
    sde = make_sde(sde_name)
    n = 10
    ts = grids.karras(sde, n)
    a, sg = exact_alpha(sde, to_np(ts)), exact_sigma(sde, to_np(ts))
    lam = np.log(a / sg)
    x = to_np(x_start(sde, 33))

    def D(x, i):
        return (x + sg[i] ** 2 * to_np(gaussian_score(sde)(t64(x), ts[i].repeat(len(x))))) / a[i]

    for i in range(n):
        d = D(x, i)
        if i > 0:  # UniC-1 from (x_prev, d_prev) at ts[i-1] to ts[i]
            h = lam[i] - lam[i - 1]
            B = -h if variant == "bh1" else math.expm1(-h)
            x = sg[i] / sg[i - 1] * x_prev - a[i] * math.expm1(-h) * d_prev - a[i] * B * 0.5 * (d - d_prev)
        if i == n - 1:
            break
        x_prev, d_prev = x, d
        h = lam[i + 1] - lam[i]
        x = sg[i + 1] / sg[i] * x - a[i + 1] * math.expm1(-h) * d  # UniP-1
    out = UniPC(num_steps=n, order=1, variant=variant).run(gaussian_score(sde), sde, x_init=x_start(sde, 33), ts=ts)
    assert np.abs(to_np(out.x) - d).max() < 1e-10
    assert out.nfe == n  # the corrector reuses the next evaluation


@pytest.mark.parametrize("sde_name", ["vp", "ddpm"])
def test_unip_2_bh2_without_corrector_is_dpmpp_2m(sde_name):
    sde = make_sde(sde_name)
    x_T = x_start(sde, 33)
    for n in (6, 20):
        uni = UniPC(num_steps=n, disable_corrector=tuple(range(n))).sample(gaussian_score(sde), sde, x_init=x_T)
        dpm = DPMSolverPP(num_steps=n).sample(gaussian_score(sde), sde, x_init=x_T)
        torch.testing.assert_close(uni, dpm, atol=1e-12, rtol=0)


def test_lower_order_final_follows_diffusers():
    # DPM-Solver++: the step into ts[N-1] uses order <= 2 when N < 15; warm-up min(order, i + 1)
    assert [DPMSolverPP(order=3).step_order(i, 10) for i in range(9)] == [1, 2, 3, 3, 3, 3, 3, 3, 2]
    assert [DPMSolverPP(order=3).step_order(i, 15)for i in range(14)][-1] == 3
    assert DPMSolverPP(order=3, lower_order_final=False).step_order(8, 10) == 3
    # and it changes the result only for order 3
    sde = VPSDE()
    x_T = x_start(sde)
    for order, differs in ((2, False), (3, True)):
        x1, x2 = (DPMSolverPP(num_steps=8, order=order, lower_order_final=f, denoise=False).sample(
            gaussian_score(sde), sde, x_init=x_T) for f in (True, False))
        assert bool((x1 != x2).any()) == differs


# -- the SDE variant ---------------------------------------------------------------------------------


def _weighted_moments(x: torch.Tensor, mixture):
    """Mode weights, means and covariances by exact responsibilities r_k(x).  For x ~ p these are unbiased:
    E[r_k] = w_k, E[r_k x] = w_k mu_k, E[r_k x x^T] = w_k (Sigma_k + mu_k mu_k^T)."""
    r = mixture.responsibilities(x)
    w = r.mean(0)
    means = (r.T @ x) / r.sum(0)[:, None]
    centred = [x - means[k] for k in range(r.shape[1])]
    covs = torch.stack([(r[:, k, None] * c).T @ c / r[:, k].sum() for k, c in enumerate(centred)])
    return w, means, covs


@pytest.mark.parametrize("sde_name", ["ve", "vp"])
@pytest.mark.parametrize("order", [2, 3])
def test_dpmpp_sde_samples_a_gaussian_mixture(sde_name, order):
    """eta = 1 from the exact p_T, 50 steps, n = 20 000: mode weights, within-mode means and
    covariances within 5 standard errors of sampling noise.

    Each statistic is standardised by its own standard error, so a thin axis counts as much as a
    major one (issue 20, item 4: a Frobenius norm of C_hat - C let a doubled minor-axis std pass):
    weight (r_k - w_k) / sqrt(w (1 - w) / n); mean sqrt(m) L^-1 (m_hat - mu) ~ N(0, I); covariance
    W = L^-1 C_hat L^-T - I with its Wishart standard errors sqrt(2/m) (diagonal), sqrt(1/m)
    (off-diagonal), m = n w_k draws, L L^T = C_k.  Measured at n = 20 000 with seeds 3 and 4 on
    both SDEs and orders: |z| <= 3.4 over the 18 statistics per run (a small positive covariance
    bias of ~1 standard error from the 50-step discretisation included), so 5 standard errors
    leave a false-failure rate below 18 x P(|N(1, 1)| > 5) ~ 6e-4 even with that bias.  A doubled
    minor-axis std gives W = 3 (~ 300 standard errors); a weight off by 0.02 at w = 0.5 is 5.7.
    """
    sde, mixture, n = make_sde(sde_name), toy.anisotropic_mixture(), 20_000
    g = torch.Generator().manual_seed(3)
    x_T = mixture.marginal(sde, sde.T).sample(n, g, dtype=F64)
    x = DPMSolverPP(num_steps=50, order=order, eta=1.0).sample(mixture.score_fn(sde), sde, x_init=x_T, generator=g)
    w, means, covs = _weighted_moments(x, mixture)
    for k in range(mixture.num_components):
        wk, m_k, C = float(mixture.weights[k]), mixture.means[k], mixture.covs[k]
        m = n * wk
        # weight: Var(r_k) <= w (1 - w), standard error sqrt(w (1 - w) / n)
        assert abs(float(w[k]) - wk) < 5 * math.sqrt(wk * (1 - wk) / n), (k, w)
        z, w_z = whitened_moment_errors(means[k], covs[k], m_k, C, m)
        assert float(z.abs().max()) < 5, (k, z)
        assert float(w_z.abs().max()) < 5, (k, w_z)


def test_dpmpp_sde_is_batch_independent_with_seeds():
    sde, mixture = VPSDE(), toy.eight_gaussians()
    sampler = DPMSolverPP(num_steps=10, eta=1.0)
    full = sampler.sample(mixture.score_fn(sde), sde, (8, 2), seeds=range(8), dtype=F64)
    part = sampler.sample(mixture.score_fn(sde), sde, (2, 2), seeds=[3, 6], dtype=F64)
    torch.testing.assert_close(part, full[[3, 6]], atol=1e-12, rtol=0)


# -- shapes, NFE, input checks -------------------------------------------------------------------------

SAMPLERS = {
    "dpmpp_2m": DPMSolverPP(num_steps=7),
    "dpmpp_3m": DPMSolverPP(num_steps=7, order=3),
    "dpmpp_2m_sde": DPMSolverPP(num_steps=7, eta=1.0),
    "dpmpp_3m_sde_heun": DPMSolverPP(num_steps=7, order=3, eta=0.5, solver_type="heun"),
    "unipc": UniPC(num_steps=7),
    "unipc_3_bh1": UniPC(num_steps=7, order=3, variant="bh1", disable_corrector=(0, 1)),
}


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("sde_name", MAIN_SDES)
def test_shapes_and_nfe(name, sde_name):
    """[B, 2] and [B, C, H, W] give the same numbers as the flattened problem; NFE = num_steps (+0: the
    corrector is free; -1 without the final denoise)."""
    sampler, sde = SAMPLERS[name], make_sde(sde_name)
    for shape in [(5, 2), (5, 3, 4, 4)]:
        x_T = sde.prior_std * torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=F64)
        out = sampler.run(gaussian_score(sde), sde, x_init=x_T, generator=torch.Generator().manual_seed(1))
        flat = sampler.run(gaussian_score(sde), sde, x_init=x_T.flatten(1), generator=torch.Generator().manual_seed(1))
        assert out.x.shape == shape and out.nfe == sampler.num_steps
        torch.testing.assert_close(out.x.flatten(1), flat.x, atol=1e-12, rtol=0)
        assert bool(torch.isfinite(out.x).all())
    short = type(sampler)(**{**sampler.__dict__, "denoise": False}).run(gaussian_score(sde), sde, (5, 2))
    assert short.nfe == sampler.num_steps - 1


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: DPMSolverPP(order=4), ValueError, "`order`"),
        (lambda: DPMSolverPP(order=2.0), TypeError, "`order`"),
        (lambda: DPMSolverPP(solver_type="sde"), ValueError, "`solver_type`"),
        (lambda: DPMSolverPP(eta=-0.5), ValueError, "`eta`"),
        (lambda: DPMSolverPP(eta=float("nan")), ValueError, "`eta`"),
        (lambda: DPMSolverPP(lower_order_final="yes"), TypeError, "`lower_order_final`"),
        (lambda: DPMSolverPP(num_steps=0), ValueError, "`num_steps`"),
        (lambda: DPMSolverPP(grid="bogus"), ValueError, "`grid`"),
        (lambda: DPMSolverPP(denoise=1), TypeError, "`denoise`"),
        (lambda: DPMSolverPP(third_order="exact"), ValueError, "`third_order`"),
        (lambda: UniPC(order=0), ValueError, "`order`"),
        (lambda: UniPC(variant="bh3"), ValueError, "`variant`"),
        (lambda: UniPC(disable_corrector=3), TypeError, "`disable_corrector`"),
        (lambda: UniPC(disable_corrector=(1.5,)), TypeError, "`disable_corrector`"),
        (lambda: UniPC(lower_order_final=None), TypeError, "`lower_order_final`"),
        (lambda: UniPC(num_steps=-3), ValueError, "`num_steps`"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_disable_corrector_from_a_config_list_is_stored_as_a_tuple():
    assert UniPC(disable_corrector=[0, 2]).disable_corrector == (0, 2)
    hash(UniPC(disable_corrector=[0, 2]))
