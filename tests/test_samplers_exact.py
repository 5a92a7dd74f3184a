"""Samplers against closed forms: DDPM is Ho et al. Alg. 2, DDIM's affine chain, the exact PF-ODE flow."""
import math

import pytest
import torch

from scoresde.bridges import eps_to_score
from scoresde.samplers import DDIM, DDPM, AncestralPredictor, ProbabilityFlowODE, ReverseSDE
from scoresde.sdes import VESDE, VPSDE, SubVPSDE
from scoresde.data.toy import GaussianMixture

F64 = torch.float64


def _ho_tables(n=1000):
    # Independent construction of Ho et al.'s linear schedule (not via scoresde).
    betas = torch.linspace(1e-4, 0.02, n, dtype=F64)
    alphas = 1 - betas
    return betas, alphas, torch.cumprod(alphas, 0)


def _eps_model_int(x, k, abar):
    """A deterministic non-linear eps-network stand-in indexed by the integer timestep k (0-based)."""
    a = abar[k].sqrt()
    return torch.tanh(0.7 * x - 0.3 * a) + 0.1 * x * (1 - a)


@pytest.mark.parametrize("variance", ["large", "small"])
def test_ddpm_equals_ho_algorithm_2_step_for_step(variance):
    """DDPM through the eps->score bridge on VPSDE().discrete(1000) is Alg. 2 with the eps-model, to 1e-10."""
    sde = VPSDE().discrete(1000)
    betas, alphas, abar = _ho_tables()
    abar_prev = torch.cat([torch.ones(1, dtype=F64), abar[:-1]])

    def eps_model(x, t):  # how a DDPM network sees time: an integer index, by rounding
        k = sde.timestep_index(t)
        assert bool((k == k[0]).all())
        return _eps_model_int(x, int(k[0]), abar)

    trajectory = []
    x_lib = DDPM(num_steps=1000, variance=variance).sample(
        eps_to_score(eps_model, sde), sde, (64, 3), generator=torch.Generator().manual_seed(7),
        dtype=F64, callback=lambda info: trajectory.append(info.x),
    )

    g = torch.Generator().manual_seed(7)
    x = torch.randn(64, 3, generator=g, dtype=F64)
    for step, k in enumerate(reversed(range(1000))):  # Ho's t = k + 1 = 1000 ... 1
        z = torch.randn(64, 3, generator=g, dtype=F64) if k > 0 else torch.zeros(64, 3, dtype=F64)
        var = betas[k] if variance == "large" else betas[k] * (1 - abar_prev[k]) / (1 - abar[k])
        eps = _eps_model_int(x, k, abar)
        x = (x - betas[k] / (1 - abar[k]).sqrt() * eps) / alphas[k].sqrt() + var.sqrt() * z
        torch.testing.assert_close(trajectory[step], x, atol=1e-10, rtol=0)
    torch.testing.assert_close(x_lib, x, atol=1e-10, rtol=0)
    assert len(trajectory) == 1000


def test_ddpm_nfe_and_respacing():
    sde = VPSDE().discrete(1000)
    score = GaussianMixture([1.0], [[0.5, -0.5]], [0.3]).score_fn(sde)
    result = DDPM(num_steps=100).run(score, sde, (8, 2), generator=torch.Generator().manual_seed(0))
    assert result.nfe == 100
    ts = sde.timesteps(100)
    assert ts[0] == 1.0 and ts[-1] == 1 / 1000 and len(set((ts * 1000).round().tolist())) == 100


def _gaussian_flow(x, mu, lam, vecs, a, s, a2, s2):
    """Exact probability-flow map of a Gaussian target N(mu, U diag(lam) U^T) from (a, s) to (a2, s2)."""
    y = (x - a * mu) @ vecs
    y = y * torch.sqrt((a2**2 * lam + s2**2) / (a**2 * lam + s**2))
    return a2 * mu + y @ vecs.T


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(sigma_max=10.0)], ids=["VP", "subVP", "VE"])
def test_ddim_eta0_is_deterministic_and_matches_its_affine_closed_form(sde):
    """For a Gaussian target, each DDIM step with the exact eps is an affine map; compose them in closed form."""
    mu = torch.tensor([1.0, -2.0], dtype=F64)
    s2 = 0.25  # target N(mu, s2 I)
    target = GaussianMixture([1.0], mu[None], [s2])
    x_init = target.marginal(sde, sde.T).sample(256, torch.Generator().manual_seed(1), dtype=F64)
    sampler = DDIM(num_steps=20, eta=0.0)
    x1 = sampler.sample(target.score_fn(sde), sde, x_init=x_init, generator=torch.Generator().manual_seed(2))
    x2 = sampler.sample(target.score_fn(sde), sde, x_init=x_init, generator=torch.Generator().manual_seed(3))
    assert torch.equal(x1, x2)

    # DDIM: x0 = mu + a s2 / v (x - a mu), eps = (x - a x0)/s, x' = a' x0 + s' eps  (v = a^2 s2 + s^2).
    ts = sde.timesteps(20).tolist() + [None]
    x = x_init.clone()
    for t, t_next in zip(ts[:-1], ts[1:]):
        tt = torch.tensor([t], dtype=F64)
        a, s = float(sde.alpha(tt)), float(sde.sigma(tt))
        v = a * a * s2 + s * s
        x0 = mu + a * s2 / v * (x - a * mu)
        if t_next is None:
            x = x0  # final step to clean data
        else:
            tn = torch.tensor([t_next], dtype=F64)
            an, sn = float(sde.alpha(tn)), float(sde.sigma(tn))
            x = an * x0 + sn * (x - a * x0) / s
    torch.testing.assert_close(x1, x, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(sigma_max=10.0)], ids=["VP", "subVP", "VE"])
@pytest.mark.parametrize("method", ["RK45", "heun"])
def test_probability_flow_maps_prior_samples_onto_the_exact_gaussian_flow(sde, method):
    """The PF-ODE of a Gaussian target is linear; each sample must land where the exact flow sends it."""
    theta = math.radians(35)
    vecs = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=F64)
    lam = torch.tensor([1.5, 0.2], dtype=F64)
    mu = torch.tensor([0.5, 1.0], dtype=F64)
    target = GaussianMixture([1.0], mu[None], (vecs @ torch.diag(lam) @ vecs.T)[None])
    x_init = target.marginal(sde, sde.T).sample(512, torch.Generator().manual_seed(4), dtype=F64)
    sampler = ProbabilityFlowODE(method=method, rtol=1e-7, atol=1e-7, num_steps=400, denoise=False)
    x = sampler.sample(target.score_fn(sde), sde, x_init=x_init, generator=torch.Generator().manual_seed(5))
    T, t_min = torch.tensor([sde.T], dtype=F64), torch.tensor([sde.t_min], dtype=F64)
    expected = _gaussian_flow(
        x_init, mu, lam, vecs, float(sde.alpha(T)), float(sde.sigma(T)), float(sde.alpha(t_min)), float(sde.sigma(t_min))
    )
    # RK45 at rtol 1e-7 is accurate to ~1e-6 here; Heun with 400 steps has O(h^2) error ~1e-4 (measured 2e-5..3e-4)
    tol = 1e-5 if method == "RK45" else 1e-3
    torch.testing.assert_close(x, expected, atol=tol, rtol=0)


def test_ancestral_step_is_exact_posterior_for_a_point_mass_limit():
    """With the exact score of N(mu, s2 I), one ancestral ("small") step from t to t' has mean
    (x + b^2 s)/a, which must equal the Gaussian posterior mean E[x_t' | x_t] computed independently."""
    sde = VPSDE()
    mu, s2 = torch.tensor([2.0, -1.0], dtype=F64), 0.5
    target = GaussianMixture([1.0], mu[None], [s2])
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    t, tn = torch.full((16,), 0.6, dtype=F64), torch.full((16,), 0.55, dtype=F64)
    _, x_mean = AncestralPredictor("small").step(x, target.score_fn(sde)(x, t), sde, t, tn, torch.Generator())
    # Independent: joint Gaussian of (x_t', x_t) given x0 ~ N(mu, s2): E[x_t' | x_t] = m' + C (x_t - m)/V
    a_t, s_t = sde.alpha(t[:1]), sde.sigma(t[:1])
    a_n, s_n = sde.alpha(tn[:1]), sde.sigma(tn[:1])
    a = a_t / a_n
    cov = a * (a_n**2 * s2 + s_n**2)  # Cov(x_t, x_t') = a Var(x_t')
    var_t = a_t**2 * s2 + s_t**2
    expected = a_n * mu + cov / var_t * (x - a_t * mu)
    torch.testing.assert_close(x_mean, expected, atol=1e-12, rtol=0)


def test_reverse_sde_nfe_counts_every_score_call():
    sde = VESDE()
    score = GaussianMixture([1.0], [[0.0, 0.0]], [1.0]).score_fn(sde)
    assert ReverseSDE(num_steps=17).run(score, sde, (4, 2), generator=torch.Generator().manual_seed(0)).nfe == 17
    assert ReverseSDE(num_steps=17, denoise=False).run(score, sde, (4, 2), generator=torch.Generator()).nfe == 16


# -- grids, EDM's variables and orders of convergence (issue 8) ----------------------------------------

from scoresde import grids  # noqa: E402
from scoresde.samplers import EDMHeun  # noqa: E402


def _rotated_gaussian():
    theta = math.radians(35)
    vecs = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=F64)
    lam = torch.tensor([1.5, 0.2], dtype=F64)
    mu = torch.tensor([0.5, 1.0], dtype=F64)
    return GaussianMixture([1.0], mu[None], (vecs @ torch.diag(lam) @ vecs.T)[None]), mu, lam, vecs


def _scalar(fn, t):
    return float(fn(torch.tensor([t], dtype=F64)))


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_on_diffusers_spacings_equals_the_ddim_closed_form_on_those_knots(spacing):
    """DDIM eta = 0 on VPSDE().discrete(1000) with diffusers' 50-step grid is diffusers' DDIM step on
    the integer timesteps j (alpha_bar_j from Ho's table, set_alpha_to_one=True, no clipping), to 1e-10."""
    sde = VPSDE().discrete(1000)
    _, _, abar = _ho_tables()
    ts = grids.ddpm_spacing(sde, 50, spacing)
    js = (ts * 1000).round().long().sub(1).tolist()

    def eps_model(x, t):
        k = sde.timestep_index(t)
        assert bool((k == k[0]).all())
        return _eps_model_int(x, int(k[0]), abar)

    x_init = torch.randn(32, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    x_lib = DDIM(num_steps=50, grid=spacing).sample(eps_to_score(eps_model, sde), sde, x_init=x_init,
                                                    generator=torch.Generator())
    x = x_init.clone()
    for j, j_prev in zip(js, js[1:] + [-1]):
        ab, ab_prev = abar[j], (abar[j_prev] if j_prev >= 0 else torch.tensor(1.0, dtype=F64))
        eps = _eps_model_int(x, j, abar)
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
    torch.testing.assert_close(x_lib, x, atol=1e-10, rtol=0)


def _k_heun(denoiser, x, sigmas, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf, s_noise=1.0, generator=None, cap=math.inf):
    """Karras et al. 2022 Alg. 2 (Alg. 1 when s_churn = 0) in k-diffusion's ``sample_heun`` form, written
    from the paper: sigmas end with 0, denoiser(x, sigma) in VE-ised coordinates.  ``cap``: sigma_hat <= cap."""
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        gamma = min(s_churn / n, 2**0.5 - 1) if s_tmin <= s <= s_tmax else 0.0
        s_hat = min(s * (gamma + 1), cap)
        if s_hat > s:
            x = x + torch.randn(x.shape, generator=generator, dtype=x.dtype) * s_noise * (s_hat**2 - s**2) ** 0.5
        d = (x - denoiser(x, s_hat)) / s_hat
        dt = s_next - s_hat
        if s_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - denoiser(x_2, s_next)) / s_next
            x = x + (d + d_2) / 2 * dt
    return x


def _denoiser_ve(score_fn, sde):
    """D(x~; sigma~) from a VP-coordinate score: x = alpha x~ at the time with sigma/alpha = sigma~."""
    def denoiser(x_ve, sig):
        t = float(sde.t_from_sigma_ve(torch.tensor([sig], dtype=F64)))
        a, s = _scalar(sde.alpha, t), _scalar(sde.sigma, t)
        x = a * x_ve
        return (x + s**2 * score_fn(x, torch.full((x.shape[0],), t, dtype=F64))) / a
    return denoiser


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_max=10.0)], ids=["VP", "VE"])
def test_edm_heun_without_churn_is_karras_algorithm_1(sde):
    target = eight_gaussians_f64()
    score = target.score_fn(sde)
    ts = grids.karras(sde, 12)
    x_init = sde.prior_sample((64, 2), torch.Generator().manual_seed(0), dtype=F64)
    x_lib = EDMHeun(num_steps=12).sample(score, sde, x_init=x_init, generator=torch.Generator())
    sigmas = [float(v) for v in sde.sigma_ve(ts)] + [0.0]
    x_ref = _k_heun(_denoiser_ve(score, sde), x_init / _scalar(sde.alpha, sde.T), sigmas)
    torch.testing.assert_close(x_lib, x_ref, atol=1e-10, rtol=0)
    assert EDMHeun(num_steps=12).run(score, sde, x_init=x_init, generator=torch.Generator()).nfe == 2 * 12 - 1


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_max=10.0)], ids=["VP", "VE"])
def test_edm_heun_with_churn_is_karras_algorithm_2_with_the_same_noise(sde):
    target = eight_gaussians_f64()
    score = target.score_fn(sde)
    ts = grids.karras(sde, 10)
    sigmas = [float(v) for v in sde.sigma_ve(ts)] + [0.0]
    x_init = sde.prior_sample((64, 2), torch.Generator().manual_seed(0), dtype=F64)
    opts = dict(s_churn=5.0, s_tmin=0.05, s_tmax=sigmas[1] * 1.01, s_noise=1.003)
    x_lib = EDMHeun(num_steps=10, **opts).sample(score, sde, x_init=x_init, generator=torch.Generator().manual_seed(9))
    x_ref = _k_heun(_denoiser_ve(score, sde), x_init / _scalar(sde.alpha, sde.T), sigmas,
                    generator=torch.Generator().manual_seed(9), cap=sigmas[0], **opts)
    torch.testing.assert_close(x_lib, x_ref, atol=1e-10, rtol=0)


def eight_gaussians_f64():
    from scoresde.data.toy import eight_gaussians

    return eight_gaussians()


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_max=10.0)], ids=["VP", "VE"])
def test_pf_ode_euler_in_edm_variables_is_ddim_eta0(sde):
    target = eight_gaussians_f64()
    x_init = sde.prior_sample((64, 2), torch.Generator().manual_seed(0), dtype=F64)
    for grid in ("uniform", "karras"):
        a = ProbabilityFlowODE(method="euler", num_steps=15, grid=grid).sample(target.score_fn(sde), sde, x_init=x_init)
        b = DDIM(num_steps=15, grid=grid).sample(target.score_fn(sde), sde, x_init=x_init)
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_max=10.0)], ids=["VP", "VE"])
@pytest.mark.parametrize("method, order", [("euler", 1), ("heun", 2), ("rk4", 4), ("edm", 2)])
def test_orders_of_convergence_on_the_exact_gaussian_flow(sde, method, order):
    """Slope of log(max error) against log N on Karras grids, N = 10, 20, 40, 80, float64, exact score.

    Measured (max |x - flow(x_init)| over 256 samples): VP euler 0.98, heun 2.19, rk4 4.10, edm 2.19;
    VE 1.00, 2.15, 4.16, 2.15.  The tolerance is the issue's +-0.3.
    """
    target, mu, lam, vecs = _rotated_gaussian()
    x_init = target.marginal(sde, sde.T).sample(256, torch.Generator().manual_seed(4), dtype=F64)
    expected = _gaussian_flow(x_init, mu, lam, vecs, _scalar(sde.alpha, sde.T), _scalar(sde.sigma, sde.T),
                              _scalar(sde.alpha, sde.t_min), _scalar(sde.sigma, sde.t_min))
    ns, errors = [10, 20, 40, 80], []
    for n in ns:
        if method == "edm":  # "karras_sde": the grid ends at t_min for every n (no low-NFE end)
            sampler = EDMHeun(num_steps=n, denoise=False, grid="karras_sde")
        else:
            sampler = ProbabilityFlowODE(method=method, num_steps=n, grid="karras_sde", denoise=False)
        x = sampler.sample(target.score_fn(sde), sde, x_init=x_init)
        errors.append(float((x - expected).abs().max()))
    slope = -float(torch.linalg.lstsq(
        torch.stack([torch.log(torch.tensor(ns, dtype=F64)), torch.ones(4, dtype=F64)], 1),
        torch.log(torch.tensor(errors, dtype=F64))[:, None]).solution[0, 0])
    assert abs(slope - order) <= 0.3, (errors, slope)


# -- DDIM with eta > 0 (issue 20, item 2) -----------------------------------------------------------

def test_ddim_eta1_is_ddpm_small_variance_step_for_step():
    """DDIM(eta = 1) on VPSDE().discrete(1000) is DDPM with the posterior ("small") variance, exactly.

    On the 100 evenly respaced knots (the identity holds on any grid of the chain, so 100 steps
    keep the test fast; step i goes from knot k to knot k' with alpha_bar_k / alpha_bar_k' in the
    place of alpha_t).  With eta = 1, DDIM's sigma_t(1)^2 = (1 - abar_prev)/(1 - abar) (1 - abar/abar_prev) = beta-tilde_t,
    and sqrt(abar_prev) x0 + sqrt(1 - abar_prev - beta-tilde_t) eps = (x - beta_t/sqrt(1 - abar) eps)/sqrt(alpha_t)
    (Song, Meng & Ermon 2021, Sec. 4.1).  Same generator, same noise draws: the trajectories agree to
    float64 round-off at every step; a noise scale off by any factor shows at the first step.
    """
    sde = VPSDE().discrete(1000)
    _, _, abar = _ho_tables()

    def eps_model(x, t):
        k = sde.timestep_index(t)
        return _eps_model_int(x, int(k[0]), abar)

    score = eps_to_score(eps_model, sde)
    runs = {}
    for name, sampler in (("ddim", DDIM(num_steps=100, eta=1.0)), ("ddpm", DDPM(num_steps=100, variance="small"))):
        trajectory = []
        x = sampler.sample(score, sde, (32, 3), generator=torch.Generator().manual_seed(11), dtype=F64,
                           callback=lambda info, tr=trajectory: tr.append(info.x))
        runs[name] = (x, trajectory)
    (x_ddim, tr_ddim), (x_ddpm, tr_ddpm) = runs["ddim"], runs["ddpm"]
    assert len(tr_ddim) == len(tr_ddpm) == 100
    for a, b in zip(tr_ddim, tr_ddpm):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)
    torch.testing.assert_close(x_ddim, x_ddpm, atol=1e-9, rtol=0)


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_ddim_with_eta_equals_ddim_equation_12_on_diffusers_knots(eta):
    """DDIM(eta) on diffusers' "trailing" 50-step grid is eq. 12 of Song, Meng & Ermon (2021) on Ho's
    alpha_bar table, with sigma_t(eta) = eta sqrt((1 - abar_prev)/(1 - abar)) sqrt(1 - abar/abar_prev)
    and the same noise draws (one z per step from the sampler's generator; the last step to clean
    data is noise-free, set_alpha_to_one=True), to 1e-10."""
    sde = VPSDE().discrete(1000)
    _, _, abar = _ho_tables()
    ts = grids.ddpm_spacing(sde, 50, "trailing")
    js = (ts * 1000).round().long().sub(1).tolist()

    def eps_model(x, t):
        return _eps_model_int(x, int(sde.timestep_index(t)[0]), abar)

    x_init = torch.randn(32, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    x_lib = DDIM(num_steps=50, grid="trailing", eta=eta).sample(
        eps_to_score(eps_model, sde), sde, x_init=x_init, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    x = x_init.clone()
    for j, j_prev in zip(js, js[1:] + [-1]):
        ab, ab_prev = abar[j], (abar[j_prev] if j_prev >= 0 else torch.tensor(1.0, dtype=F64))
        eps = _eps_model_int(x, j, abar)
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        if j_prev < 0:
            x = x0
            break
        sigma = eta * ((1 - ab_prev) / (1 - ab)).sqrt() * (1 - ab / ab_prev).sqrt()
        z = torch.randn(x.shape, generator=g, dtype=F64)
        x = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).sqrt() * eps + sigma * z
    torch.testing.assert_close(x_lib, x, atol=1e-10, rtol=0)


# -- correctors (issue 20, item 3) --------------------------------------------------------------------

def _score_sde_langevin_step(x, grad, noise, snr, a, norm):
    """score_sde's ``LangevinCorrector.update_fn`` (Song et al. 2021, Alg. 4/5) on [B, *D], transcribed:
    grad_norm / noise_norm averaged over the batch there ("batch"); per sample or ||z|| = sqrt(d) here."""
    b = x.shape[0]
    grad_norm = grad.reshape(b, -1).norm(dim=-1)
    noise_norm = noise.reshape(b, -1).norm(dim=-1)
    if norm == "batch":
        grad_norm, noise_norm = grad_norm.mean().expand(b), noise_norm.mean().expand(b)
    elif norm == "sqrt_d":
        noise_norm = torch.full((b,), math.sqrt(x[0].numel()), dtype=x.dtype)
    step_size = (snr * noise_norm / grad_norm) ** 2 * 2 * a
    shape = (b,) + (1,) * (x.ndim - 1)
    x_mean = x + step_size.reshape(shape) * grad
    return x_mean + (step_size * 2).sqrt().reshape(shape) * noise, x_mean


def _test_score(x, t):
    """A fixed non-linear stand-in for a score network (any function will do for a one-step transcription)."""
    return -x * (1 + t.reshape(-1, *([1] * (x.ndim - 1)))) + 0.3 * torch.sin(3 * x)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["VP", "VE"])
@pytest.mark.parametrize("corrector", ["per_sample", "batch", "sqrt_d", "annealed"])
def test_one_corrector_step_is_score_sde_langevin_with_the_same_noise(sde, corrector):
    """One corrector step at t = 0.4 (next grid time 0.39) against score_sde's update rule with the same z.

    a = alpha(t)^2 / alpha(t_next)^2 from the closed form (1 for VE); the annealed corrector's
    step is score_sde's AnnealedLangevinDynamics, 2 a (snr sigma(t))^2."""
    from problems import exact_alpha, exact_sigma
    from scoresde.samplers import AnnealedLangevinCorrector, LangevinCorrector

    x = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    t, t_next = torch.full((6,), 0.4, dtype=F64), torch.full((6,), 0.39, dtype=F64)
    a = float(exact_alpha(sde, 0.4) ** 2 / exact_alpha(sde, 0.39) ** 2)
    snr = 0.16
    if corrector == "annealed":
        step = AnnealedLangevinCorrector(snr=snr)
    else:
        step = LangevinCorrector(snr=snr, norm=corrector)
    got, got_mean = step.step(x, _test_score, sde, t, t_next, torch.Generator().manual_seed(2))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    grad = _test_score(x, t)
    if corrector == "annealed":
        eps = (snr * float(exact_sigma(sde, 0.4))) ** 2 * 2 * a
        want_mean = x + eps * grad
        want = want_mean + math.sqrt(2 * eps) * noise
    else:
        want, want_mean = _score_sde_langevin_step(x, grad, noise, snr, a, corrector)
    torch.testing.assert_close(got_mean, want_mean, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def test_corrector_only_chain_at_fixed_t_samples_the_exact_discretised_stationary_law():
    """Corrector steps at one fixed t (a = 1) on p_t = N(mu, C_t) reach the stationary law of the
    discretised chain x' = x + eps s + sqrt(2 eps) z, which for a Gaussian is exact:
    N(mu, C_t (I - eps C_t^-1 / 2)^-1) (solve C = A C A + 2 eps I with A = I - eps C_t^-1).  It is
    p_t up to the O(eps) factor (here at most 1.9 %).

    VE, t with sigma(t) = 1, C_0 with eigenvalues 4, 0.25 (C_t: 5, 1.25), snr 0.15 -> eps = 0.045:
    the slowest direction contracts by (1 - eps/5) per step, so 600 steps shrink the start's
    offset (N(0, I), mean 0.8 from mu) by e^-5.4 to 0.07 standard errors.  n = 2000 independent
    chains.  Checks in C's whitened frame (L L^T = C): each coordinate of sqrt(n) L^-1 (mean - mu)
    ~ N(0, 1); W = L^-1 Cov_hat L^-T - I has standard errors sqrt(2/n) (diagonal) and sqrt(1/n)
    (off-diagonal) (Wishart).  Every statistic within 4.5 standard errors: a false-failure rate of
    5 statistics x 6.8e-6 ~ 3e-5.  Without the corrector the chain stays at N(0, I) (W ~ -0.8);
    with sqrt(eps) for sqrt(2 eps) the covariance halves (W ~ -0.5, 20 standard errors).
    """
    from problems import exact_sigma, whitened_moment_errors
    from scoresde.samplers import AnnealedLangevinCorrector

    sde = VESDE()
    t = math.log(100.0) / math.log(sde.sigma_max / sde.sigma_min)  # sigma(t) = sigma_min * 100 = 1
    sigma = float(exact_sigma(sde, t))
    assert abs(sigma - 1.0) < 1e-9
    rot = torch.tensor([[math.cos(0.6), -math.sin(0.6)], [math.sin(0.6), math.cos(0.6)]], dtype=F64)
    cov0 = rot @ torch.diag(torch.tensor([4.0, 0.25], dtype=F64)) @ rot.T
    mu = torch.tensor([0.7, -0.4], dtype=F64)
    score = GaussianMixture([1.0], mu[None], cov0[None]).score_fn(sde)
    snr, n, steps = 0.15, 2000, 600
    eps = 2 * (snr * sigma) ** 2
    cov_t = cov0 + sigma**2 * torch.eye(2, dtype=F64)
    stationary = cov_t @ torch.linalg.inv(torch.eye(2, dtype=F64) - eps / 2 * torch.linalg.inv(cov_t))
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    tb = torch.full((n,), t, dtype=F64)
    g = torch.Generator().manual_seed(1)
    corrector = AnnealedLangevinCorrector(snr=snr)
    for _ in range(steps):
        x, _ = corrector.step(x, score, sde, tb, tb, g)
    mean_z, w_z = whitened_moment_errors(x.mean(0), torch.cov(x.T), mu, stationary, n)
    assert float(mean_z.abs().max()) < 4.5, mean_z
    assert float(w_z.abs().max()) < 4.5, w_z


@pytest.mark.parametrize("order", ["corrector_first", "predictor_first"])
def test_predictor_corrector_is_the_composition_of_its_transcribed_steps(order):
    """PredictorCorrector(reverse diffusion, annealed Langevin, 2 corrector steps) on VP, 4 steps, against
    a hand loop of Song et al. 2021 Alg. 1 with the same noise draws: on the uniform grid t_i, the
    corrector score_sde's AnnealedLangevinDynamics (eps = 2 a (snr sigma(t_i))^2, a = alpha(t_i)^2 /
    alpha(t_{i+1})^2 from the closed form, t_{i+1} = 0 after the last), the predictor
    x' = x - f + G^2 s + G z with f = (a - 1) x, G^2 = sigma(t_i)^2 - a^2 sigma(t_{i+1})^2,
    a = alpha(t_i)/alpha(t_{i+1}) (eq. 46), the final step Tweedie's (x + sigma^2 s)/alpha at t_{N-1}."""
    from problems import exact_alpha, exact_sigma
    from scoresde.samplers import AnnealedLangevinCorrector, PredictorCorrector, ReverseDiffusionPredictor

    sde, n_steps, snr, k = VPSDE(), 4, 0.2, 2
    x_init = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    got = PredictorCorrector(ReverseDiffusionPredictor(), AnnealedLangevinCorrector(snr=snr), num_steps=n_steps,
                             corrector_steps=k, order=order).sample(
        _test_score, sde, x_init=x_init, generator=torch.Generator().manual_seed(3))
    ts = [1.0 + (sde.t_min - 1.0) * i / (n_steps - 1) for i in range(n_steps)]
    g = torch.Generator().manual_seed(3)

    def score(x, t):
        return _test_score(x, torch.full((x.shape[0],), t, dtype=F64))

    def corrector(x, i):
        t, t_next = ts[i], (ts[i + 1] if i + 1 < n_steps else 0.0)
        eps = 2 * float(exact_alpha(sde, t) ** 2 / exact_alpha(sde, t_next) ** 2) * (snr * float(exact_sigma(sde, t))) ** 2
        for _ in range(k):
            grad = score(x, t)
            x = x + eps * grad + math.sqrt(2 * eps) * torch.randn(x.shape, generator=g, dtype=F64)
        return x

    x = x_init.clone()
    for i in range(n_steps - 1):
        t, t_next = ts[i], ts[i + 1]
        if order == "corrector_first":
            x = corrector(x, i)
        a = float(exact_alpha(sde, t) / exact_alpha(sde, t_next))
        g2 = float(exact_sigma(sde, t) ** 2 - a**2 * exact_sigma(sde, t_next) ** 2)
        x = x - (a - 1) * x + g2 * score(x, t) + math.sqrt(g2) * torch.randn(x.shape, generator=g, dtype=F64)
        if order == "predictor_first":
            x = corrector(x, i + 1)
    if order == "corrector_first":
        x = corrector(x, n_steps - 1)
    t = ts[-1]
    x = (x + float(exact_sigma(sde, t)) ** 2 * score(x, t)) / float(exact_alpha(sde, t))
    torch.testing.assert_close(got, x, atol=1e-10, rtol=1e-9)
