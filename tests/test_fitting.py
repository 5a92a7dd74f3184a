"""scoresde.samplers.fitting: the differentiable path, the LD3-style fit and the GITS-style DP (issue 17).

Exact references: the probability-flow map of a Gaussian target N(mu, s^2 I) is closed-form
(tests/problems.py: x_0 = mu + s (x_T - alpha_T mu) / sqrt(alpha_T^2 s^2 + sigma_T^2), the
standardised x_t is invariant along the flow), gradients are checked against central finite
differences, and the dynamic programme against brute-force enumeration.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from problems import exact_alpha, exact_sigma
from scoresde import grids, toy
from scoresde.samplers import DDIM, DPMSolverPP, EDMHeun, PredictorCorrector, ProbabilityFlowODE, UniPC
from scoresde.samplers import fitting
from scoresde.samplers.fitting import LogSigmaGrid, check_fittable, differentiable_sample, dp_grid, fit_grid
from scoresde.sdes import VESDE, VPSDE

F64 = torch.float64
FITTABLE = [
    DDIM(num_steps=7), DPMSolverPP(num_steps=7, order=1), DPMSolverPP(num_steps=7), DPMSolverPP(num_steps=7, order=3),
    DPMSolverPP(num_steps=7, order=3, third_order="diffusers", solver_type="heun"), UniPC(num_steps=7),
    UniPC(num_steps=7, order=3, variant="bh1"), EDMHeun(num_steps=5), ProbabilityFlowODE(method="euler", num_steps=7),
    ProbabilityFlowODE(method="heun", num_steps=7),
]
MU, S = 0.7, 0.5  # the Gaussian target N(MU, S^2 I)


def gaussian(sde):
    return toy.GaussianMixture(torch.tensor([1.0]), torch.full((1, 2), MU), torch.tensor([S * S]))


def exact_flow(sde, x_T: torch.Tensor) -> torch.Tensor:
    """The PF-ODE map from T to 0 of N(MU, S^2 I) (numpy, from the SDE's parameters only)."""
    a, s = float(exact_alpha(sde, np.array([sde.T]))[0]), float(exact_sigma(sde, np.array([sde.T]))[0])
    x = x_T.numpy()
    return torch.from_numpy(MU + S * (x - a * MU) / math.sqrt(a * a * S * S + s * s))


@pytest.mark.parametrize("sampler", FITTABLE, ids=repr)
@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_max=5.0)], ids=["vp", "ve"])
def test_differentiable_forward_equals_the_ordinary_sampler(sampler, sde):
    score = gaussian(sde).score_fn(sde)
    x = sde.prior_sample((32, 2), torch.Generator().manual_seed(1), dtype=F64)
    ts = grids.karras(sde, sampler.num_steps)
    ordinary = sampler.run(score, sde, x_init=x, ts=ts).x
    diff = differentiable_sample(sampler, score, sde, x, ts.clone().requires_grad_(True))
    # float64 round-off: the coefficients are the same formulas on tensors instead of floats
    assert torch.allclose(diff.detach(), ordinary, rtol=1e-12, atol=1e-12)


def test_differentiable_forward_is_shape_generic_and_float32():
    sde = VPSDE()
    mix = toy.GaussianMixture(torch.tensor([1.0]), torch.zeros(1, 12), torch.ones(1, 12))
    flat = mix.score_fn(sde)

    def score(x, t):  # the mixture on images [B, 3, 2, 2]
        return flat(x.flatten(1), t).reshape(x.shape)

    x = torch.randn(8, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    sampler = DPMSolverPP(num_steps=6)
    ordinary = sampler.run(score, sde, x_init=x, ts=grids.log_snr(sde, 6)).x
    diff = differentiable_sample(sampler, score, sde, x, grids.log_snr(sde, 6).requires_grad_(True))
    assert diff.shape == x.shape and diff.dtype == torch.float32
    assert torch.allclose(diff.detach(), ordinary, rtol=1e-5, atol=1e-5)  # float32 round-off over 6 steps


@pytest.mark.parametrize("sampler", [FITTABLE[i] for i in (0, 2, 3, 6, 7, 9)], ids=repr)
def test_gradient_wrt_the_grid_matches_finite_differences(sampler):
    """No coefficient may drop its gradient (e.g. math.expm1 on a tensor returns a float)."""
    sde = VPSDE()
    score = gaussian(sde).score_fn(sde)
    x = sde.prior_sample((16, 2), torch.Generator().manual_seed(2), dtype=F64)
    ts = grids.log_snr(sde, sampler.num_steps)
    v = torch.zeros_like(ts)
    v[1:-1] = torch.linspace(1.0, -0.5, len(ts) - 2) * (ts[:-2] - ts[2:]).min()  # keeps the grid monotone
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=F64)

    def f(t):
        return float((differentiable_sample(sampler, score, sde, x, t) * w).sum())

    tg = ts.clone().requires_grad_(True)
    (differentiable_sample(sampler, score, sde, x, tg) * w).sum().backward()
    eps = 1e-5
    fd = (f(ts + eps * v) - f(ts - eps * v)) / (2 * eps)
    # central differences: truncation O(eps^2 f''') and round-off O(1e-16 |f| / eps) are both < 1e-6 relative
    assert float(tg.grad @ v) == pytest.approx(fd, rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("sampler", [DPMSolverPP(eta=1.0), EDMHeun(s_churn=10.0), PredictorCorrector(),
                                     ProbabilityFlowODE(method="rk4"), DDIM(eta=0.5), "dpm"])
def test_only_deterministic_fixed_grid_samplers_can_be_fitted(sampler):
    with pytest.raises(ValueError, match="`sampler` must be a deterministic fixed-grid sampler"):
        check_fittable(sampler)


def test_bad_inputs_are_named_before_any_work():
    sde = VPSDE()
    score = gaussian(sde).score_fn(sde)
    calls = []

    def counting(x, t):
        calls.append(1)
        return score(x, t)

    for kw, match in [({"num_steps": 1}, "num_steps"), ({"event_shape": (0,)}, "event_shape"),
                      ({"num_train": 0}, "num_train"), ({"num_val": 2.5}, "num_val"), ({"seed": -1}, "seed"),
                      ({"lr": 0.0}, "lr"), ({"iterations": -1}, "iterations")]:
        args = {"num_steps": 5, "event_shape": (2,), **kw}
        with pytest.raises((ValueError, TypeError), match=match):
            fit_grid(counting, sde, DPMSolverPP(), args.pop("num_steps"), args.pop("event_shape"), **args)
    with pytest.raises(TypeError, match="`sde`"):
        fit_grid(counting, "vp", DPMSolverPP(), 5, (2,))
    assert not calls


def test_parameterisation_is_monotone_in_range_and_inverts_a_standard_grid():
    sde = VPSDE()
    p = LogSigmaGrid(sde, 8)
    for seed in range(5):
        theta = 3 * torch.randn(8, generator=torch.Generator().manual_seed(seed), dtype=F64)
        ts = p.times(theta)
        assert ts[0] == sde.T and bool((ts[1:] < ts[:-1]).all()) and float(ts[-1]) >= sde.t_min
    ts = grids.karras(sde, 8, sigma_min=0.05)  # ends above t_min: exactly representable
    assert torch.allclose(p.times(p.theta_of(ts)), ts, rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def gauss_fit():
    sde = VPSDE()
    score = gaussian(sde).score_fn(sde)
    res = fit_grid(score, sde, DPMSolverPP(), 5, (2,), num_train=64, num_val=64, seed=3, iterations=40, dp_candidates=32)
    return sde, score, res


def test_teacher_is_the_exact_flow_map(gauss_fit):
    sde, score, _ = gauss_fit
    x = sde.prior_sample((64, 2), torch.Generator().manual_seed(0), dtype=F64)
    y = fitting.default_teacher().run(score, sde, x_init=x).x
    # RK45 at 1e-7, plus the final Tweedie denoise at t_min (relative effect sigma(t_min)^2/S^2 ~ 1e-4 * ...)
    assert torch.allclose(y, exact_flow(sde, x), atol=2e-5)


def test_fit_beats_every_standard_grid_and_reports_it(gauss_fit):
    sde, score, res = gauss_fit
    ts = res.ts
    assert res.method == "ld3" and res.grid.method == "ld3"
    assert ts[0] == sde.T and bool((ts[1:] < ts[:-1]).all()) and float(ts[-1]) >= sde.t_min and len(ts) == 5
    standard = {k: v for k, v in res.val_rmse.items() if k in fitting.STANDARD_GRIDS}
    assert res.val_rmse["fitted"] < 0.5 * min(standard.values())
    # the reported validation error is the sampler's distance to the exact flow map (independent check)
    g = torch.Generator().manual_seed(3)
    sde.prior_sample((64, 2), g, dtype=F64)  # the training draws come first
    x_val = sde.prior_sample((64, 2), g, dtype=F64)
    out = DPMSolverPP(num_steps=5, grid=res.grid).run(score, sde, x_init=x_val).x
    rmse = float(((out - exact_flow(sde, x_val)) ** 2).sum(1).mean().sqrt())
    assert rmse == pytest.approx(res.val_rmse["fitted"], abs=5e-5)  # teacher error <= 2e-5 per coordinate
    assert res.cpu_s > 0 and res.grid.info["teacher_nfe"] > 20 and res.history


def test_refit_with_the_same_seed_gives_the_same_file(gauss_fit, tmp_path):
    sde, score, res = gauss_fit
    again = fit_grid(score, sde, DPMSolverPP(), 5, (2,), num_train=64, num_val=64, seed=3, iterations=40, dp_candidates=32)
    assert again.grid.ts == res.grid.ts and again.val_rmse == res.val_rmse
    strip = lambda p: p.read_text().replace(repr(res.grid.info["cpu_s"]), "").replace(repr(again.grid.info["cpu_s"]), "")  # noqa: E731
    a, b = res.grid.save(tmp_path / "a.json"), again.grid.save(tmp_path / "b.json")
    assert strip(a) == strip(b)  # only the measured CPU time differs
    other = fit_grid(score, sde, DPMSolverPP(), 5, (2,), num_train=64, num_val=64, seed=4, iterations=40, dp_candidates=32)
    assert other.grid.ts != res.grid.ts


def test_falls_back_to_the_best_standard_grid_when_that_is_better():
    sde = VPSDE()
    score = gaussian(sde).score_fn(sde)
    bad = torch.tensor([1.0, 0.999, 0.998, 0.997, 0.996], dtype=F64)  # every step at the top: hopeless
    res = fit_grid(score, sde, DPMSolverPP(), 5, (2,), num_train=32, num_val=32, seed=0, iterations=0, init=bad)
    standard = {k: v for k, v in res.val_rmse.items() if k in fitting.STANDARD_GRIDS}
    best = min(standard, key=standard.get)
    assert res.method == best == res.grid.method and res.val_rmse["fitted"] > standard[best]
    assert torch.equal(res.ts, grids.GRID_NAMES[best](sde, 5))


def test_dp_path_is_the_brute_force_optimum():
    g = torch.Generator().manual_seed(0)
    M, N = 7, 4
    cost = torch.rand(M, M, generator=g, dtype=F64).triu(1) + torch.full((M, M), math.inf, dtype=F64).tril()
    final = torch.rand(M, generator=g, dtype=F64)
    path = fitting._dp_path(cost, final, N)
    total = lambda p: sum(float(cost[a, b]) for a, b in zip(p[:-1], p[1:])) + float(final[p[-1]])  # noqa: E731
    brute = min(((0, *rest) for rest in itertools.combinations(range(1, M), N - 1)), key=total)
    assert path == list(brute) and total(path) == pytest.approx(total(brute))


def test_dp_grid_on_a_mixture_is_better_than_the_standard_grids():
    """The DP grid beats the grids that end at the SDE's own t_min (uniform, karras_sde, log_snr_sde; 0.27 against
    0.77-2.5 validation RMS); since the low-NFE end (issue 17) the default log-SNR grid beats it at 6 steps (0.15),
    and the fit returns that grid (the fallback), naming it."""
    sde = VPSDE()
    score = toy.TARGETS["eight_gaussians"]().score_fn(sde)
    res = dp_grid(score, sde, DPMSolverPP(), 6, (2,), num_train=64, num_val=64, seed=0, candidates=40)
    dp_ts = torch.tensor(res.candidates["fitted"], dtype=F64)
    assert len(dp_ts) == 6 and dp_ts[0] == sde.T and bool((dp_ts[1:] < dp_ts[:-1]).all())
    prob = fitting._Problem(score, sde, DPMSolverPP(), 6, (2,), 64, 64, 0, None)  # the fit's own validation draws
    assert prob.rmse(dp_ts, "val") == pytest.approx(res.val_rmse["fitted"], rel=1e-12)
    own_end = [prob.rmse(grids.resolve_grid(g)(sde, 6), "val") for g in ("uniform", "karras_sde", "log_snr_sde")]
    assert res.val_rmse["fitted"] < min(own_end)
    best = min(res.val_rmse, key=res.val_rmse.get)
    assert res.method == ("dp" if best == "fitted" else best) == "log_snr" and torch.equal(res.ts, grids.log_snr(sde, 6))


def test_adam_is_torchs_adam():
    g = torch.Generator().manual_seed(0)
    ours = torch.randn(5, dtype=F64, generator=g)
    theirs = ours.clone().requires_grad_(True)
    opt, ref = fitting._Adam(ours, 0.05), torch.optim.Adam([theirs], lr=0.05)
    for _ in range(20):
        grad = torch.randn(5, dtype=F64, generator=g)
        opt.step(grad)
        theirs.grad = grad.clone()
        ref.step()
    assert torch.allclose(ours, theirs.detach(), rtol=0, atol=1e-14)


@pytest.mark.parametrize("sampler", [EDMHeun(), ProbabilityFlowODE(method="heun"), UniPC(order=3)], ids=repr)
def test_fit_runs_for_other_samplers_and_sdes(sampler):
    sde = VESDE(sigma_max=5.0)
    score = toy.TARGETS["eight_gaussians"]().score_fn(sde)
    res = fit_grid(score, sde, sampler, 4, (2,), num_train=32, num_val=32, seed=0, iterations=5, dp_candidates=16)
    ts = res.ts
    assert len(ts) == 4 and ts[0] == sde.T and bool((ts[1:] < ts[:-1]).all()) and float(ts[-1]) >= sde.t_min
    chosen = "fitted" if res.method == "ld3" else res.method  # the fitted grid, or the standard one it fell back to
    assert res.val_rmse[chosen] <= min(v for k, v in res.val_rmse.items() if k in fitting.STANDARD_GRIDS)
    assert res.grid.sde == repr(sde) and type(sampler).__name__ in res.grid.sampler
