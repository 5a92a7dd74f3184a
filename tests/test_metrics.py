"""Tests for scoresde.evaluation.metrics against independent exact results.

Exact checks (tolerances are round-off only): brute force over permutations, replication of unequal
samples, monotone couplings of affinely related samples, point masses and scipy quadrature against the
Gaussian-mixture transport formula, metric inequalities, invariances.  Statistical checks use
tolerances derived from the sample size (stated where used) with fixed seeds.
"""
from __future__ import annotations

import functools
import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, stats

from scoresde import metrics as M
from scoresde.data.toy import GaussianMixture, eight_gaussians, ncsn_two_modes


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def unit_directions(p: int, d: int, seed: int) -> torch.Tensor:
    u = torch.randn(p, d, generator=gen(seed), dtype=torch.float64)
    return u / u.norm(dim=1, keepdim=True)


def affine_pair(n, d, m1, s1, m2, s2, seed):
    """x ~ N(m1, s1^2 I) and y = m2 + (s2/s1)(x - m1) ~ N(m2, s2^2 I), y shuffled.

    y is the image of x under the gradient of a convex function, so the identity is an optimal coupling
    (exactly, for the empirical measures, in every dimension and in every 1-D projection):
    W2^2 = (1/n) sum_i |x_i - y_i|^2 before shuffling.
    """
    g = gen(seed)
    x = m1 + s1 * torch.randn(n, d, generator=g, dtype=torch.float64)
    y = m2 + (s2 / s1) * (x - m1)
    cost = float(((x - y) ** 2).sum(1).mean())
    return x, y[torch.randperm(n, generator=g)], cost, (x - y)


# -- sliced W2 -------------------------------------------------------------------------------------------
def test_sliced_w2_unequal_sizes_equals_replicated_equal_sizes():
    # The empirical measure of x (n points) equals that of x repeated m times (nm points, same
    # weights), so W2 with unequal sizes must equal the equal-size sorted formula after replication.
    g = gen(0)
    x, y = torch.randn(6, 3, generator=g), torch.randn(4, 3, generator=g) + 0.5
    u = unit_directions(5, 3, 1)
    got = M.sliced_w2(x, y, directions=u)
    a = (x.double() @ u.T).repeat(4, 1).sort(0).values
    b = (y.double() @ u.T).repeat(6, 1).sort(0).values
    assert got == pytest.approx(math.sqrt(float(((a - b) ** 2).mean())), rel=1e-12)
    assert M.sliced_w2(x, x, directions=u) == 0.0


def test_sliced_w2_in_one_dimension_is_the_exact_w2():
    g = gen(1)
    x, y = torch.randn(50, 1, generator=g), 2 * torch.randn(50, 1, generator=g)
    assert M.sliced_w2(x, y, 3, generator=g) == pytest.approx(M.w2_exact(x, y), rel=1e-12)


def test_sliced_w2_gaussians_closed_form():
    # In every projection u.y is an increasing affine function of u.x, so sorting pairs x_i with y_i:
    # SW2^2 = mean_u u^T C u exactly, C = mean_i (x_i - y_i)(x_i - y_i)^T.
    d, n = 3, 2000
    m1, m2 = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64), torch.tensor([1.0, 1.0, 0.5], dtype=torch.float64)
    s1, s2 = 1.0, 1.5
    x, y, cost, diff = affine_pair(n, d, m1, s1, m2, s2, seed=2)
    c = diff.T @ diff / n
    u = unit_directions(7, d, 3)
    exact = float(torch.einsum("pi,ij,pj->", u, c, u)) / len(u)
    assert M.sliced_w2(x, y, directions=u) ** 2 == pytest.approx(exact, rel=1e-10)
    # Random directions: E_u u^T C u = tr(C)/d because E[u u^T] = I/d (u uniform on the sphere).
    # u^T C u lies in [lam_min, lam_max], so its sd is at most (lam_max - lam_min)/2; 5 sd of the mean.
    p = 1000
    lam = torch.linalg.eigvalsh(c)
    got = M.sliced_w2(x, y, p, generator=gen(4)) ** 2
    assert abs(got - float(torch.trace(c)) / d) <= 5 * float(lam[-1] - lam[0]) / 2 / math.sqrt(p)
    # Sampling: tr(C) = mean|x - y|^2 = |m1-m2|^2 + d (s1-s2)^2 in expectation; with xi = (x-m1)/s1 ~ N(0, I),
    # tr(C) = (s1-s2)^2 mean|xi|^2 + 2 (s1 - s2)(m1 - m2).mean(xi) + |m1-m2|^2, so
    # sd(tr C) = sqrt((s1-s2)^4 2d/n + 4 (s1-s2)^2 |m1-m2|^2 / n).  Closed form: |m1-m2|^2/d + (s1-s2)^2.
    dm2 = float(((m1 - m2) ** 2).sum())
    sd_tr = math.sqrt((s1 - s2) ** 4 * 2 * d / n + 4 * (s1 - s2) ** 2 * dm2 / n)
    assert abs(cost - (dm2 + d * (s1 - s2) ** 2)) <= 5 * sd_tr
    assert abs(got - (dm2 / d + (s1 - s2) ** 2)) <= 5 * (sd_tr / d + float(lam[-1] - lam[0]) / 2 / math.sqrt(p))


def test_sliced_w2_triangle_inequality_with_exact_targets():
    # For fixed directions, SW2 is a metric on measures: |SW2(x, y) - SW2(P, Q)| <= SW2(x, P) + SW2(y, Q),
    # where SW2(P, Q)^2 = mean_u [(u.(m1 - m2))^2 + (s1 - s2)^2] for isotropic Gaussians.
    u = unit_directions(16, 2, 5)
    p = GaussianMixture([1.0], [[0.0, 0.0]], [1.0])
    q = GaussianMixture([1.0], [[1.0, -0.5]], [0.25])
    x, y = p.sample(3000, gen(6), dtype=torch.float64), q.sample(2000, gen(7), dtype=torch.float64)
    exact = math.sqrt(float(((u @ torch.tensor([-1.0, 0.5], dtype=torch.float64)) ** 2).mean()) + 0.5**2)
    ex, ey = M.sliced_w2_to_mixture(x, p, directions=u), M.sliced_w2_to_mixture(y, q, directions=u)
    assert abs(M.sliced_w2(x, y, directions=u) - exact) <= ex + ey
    assert ex + ey < 0.1  # and the bound is tight: both samples are close to their targets


# -- sliced W2 to an exact mixture ----------------------------------------------------------------------
def _w2sq_reference(x: np.ndarray, w, mu, sd) -> float:
    """1-D W2^2 between the empirical measure of x and a Gaussian mixture, by brentq + quad (scipy)."""
    xs, n = np.sort(x), len(x)
    cdf = lambda z: sum(wk * stats.norm.cdf(z, m, s) for wk, m, s in zip(w, mu, sd))  # noqa: E731
    pdf = lambda z: sum(wk * stats.norm.pdf(z, m, s) for wk, m, s in zip(w, mu, sd))  # noqa: E731
    lo, hi = min(mu) - 40 * max(sd), max(mu) + 40 * max(sd)
    cuts = [-np.inf] + [optimize.brentq(lambda z: cdf(z) - i / n, lo, hi, xtol=1e-14) for i in range(1, n)] + [np.inf]
    return sum(integrate.quad(lambda z: (xs[i] - z) ** 2 * pdf(z), cuts[i], cuts[i + 1], epsabs=1e-13, epsrel=1e-12)[0]
               for i in range(n))


def test_sliced_w2_to_mixture_matches_quadrature_in_one_dimension():
    w, mu, sd = [0.5, 0.3, 0.2], [-2.0, 0.5, 3.0], [0.4, 1.0, 0.15]
    mix = GaussianMixture(w, [[m] for m in mu], [s**2 for s in sd])
    for seed, n in ((8, 7), (9, 40)):
        x = 3 * torch.rand(n, 1, generator=gen(seed), dtype=torch.float64) - 1  # not a sample of mix
        ref = _w2sq_reference(x[:, 0].numpy(), w, mu, sd)
        got = M.sliced_w2_to_mixture(x, mix, directions=[[1.0]]) ** 2
        assert got == pytest.approx(ref, rel=1e-8, abs=1e-10)
        assert M.sliced_w2_to_mixture(x, mix, directions=[[-1.0]]) ** 2 == pytest.approx(ref, rel=1e-8)


def test_sliced_w2_to_mixture_point_mass_closed_form():
    # All n points at c: on direction u the only coupling moves everything to c, W2^2 = (u.(c - m))^2 + u^T S u.
    cov = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    mix = GaussianMixture([1.0], [[1.0, -2.0]], cov[None])
    c = torch.tensor([0.5, 0.5], dtype=torch.float64)
    u = unit_directions(9, 2, 10)
    exact = ((u @ (c - mix.means[0])) ** 2 + torch.einsum("pi,ij,pj->p", u, cov, u)).mean()
    assert M.sliced_w2_to_mixture(c.expand(100, 2), mix, directions=u) ** 2 == pytest.approx(float(exact), rel=1e-9)


def test_sliced_w2_to_mixture_converges_at_the_floor_rate():
    mix = eight_gaussians()
    metric = functools.partial(M.sliced_w2_to_mixture, num_projections=32, generator=gen(11))
    small = M.noise_floor(metric, mix.sample, 250, repeats=6, generator=gen(12), reference=mix)
    large = M.noise_floor(metric, mix.sample, 4000, repeats=6, generator=gen(13), reference=mix)
    # 16x the samples: n^(-1/2) (unimodal) would give 1/4, n^(-1/4) (floor dominated by the binomial
    # fluctuation of well-separated mode weights) 1/2.  The floor's values are right-skewed with a
    # relative sd of ~0.3, so the mean of 6 is good to ~12% (1 sd): accept [0.15, 0.7].
    assert 0.15 < large.mean / small.mean < 0.7
    assert large.mean < 0.1


# -- exact W2 -------------------------------------------------------------------------------------------
def test_w2_exact_matches_brute_force_over_permutations():
    g = gen(14)
    x, y = torch.randn(6, 2, generator=g, dtype=torch.float64), torch.randn(6, 2, generator=g, dtype=torch.float64)
    cost = ((x[:, None] - y[None]) ** 2).sum(-1)
    best = min(float(cost[range(6), list(p)].mean()) for p in itertools.permutations(range(6)))
    assert M.w2_exact(x, y) ** 2 == pytest.approx(best, rel=1e-12)


def test_w2_exact_translation_identity():
    # For every coupling, the cost of (x + c, y) is the cost of (x, y) + 2 c.(mean x - mean y) + |c|^2,
    # so the optimum moves by exactly that amount.
    g = gen(15)
    x, y = torch.randn(200, 3, generator=g, dtype=torch.float64), torch.rand(200, 3, generator=g, dtype=torch.float64)
    c = torch.tensor([0.7, -1.2, 0.4], dtype=torch.float64)
    shift = 2 * float(c @ (x.mean(0) - y.mean(0))) + float(c @ c)
    assert M.w2_exact(x + c, y) ** 2 == pytest.approx(M.w2_exact(x, y) ** 2 + shift, rel=1e-9)
    assert M.w2_exact(x + c, x) ** 2 == pytest.approx(float(c @ c), rel=1e-9)


def test_w2_exact_gaussians_closed_form():
    d, n, m1, s1, m2, s2 = 2, 1000, torch.zeros(2, dtype=torch.float64), 1.0, torch.tensor([0.5, 0.0]), 0.6
    x, y, cost, _ = affine_pair(n, d, m1, s1, m2.double(), s2, seed=16)
    assert M.w2_exact(x, y) ** 2 == pytest.approx(cost, rel=1e-9)  # the identity coupling is optimal
    dm2 = 0.25
    sd_tr = math.sqrt((s1 - s2) ** 4 * 2 * d / n + 4 * (s1 - s2) ** 2 * dm2 / n)  # as in the sliced test
    assert abs(cost - (dm2 + d * (s1 - s2) ** 2)) <= 5 * sd_tr


# -- MMD and energy distance ----------------------------------------------------------------------------
def test_mmd_and_energy_match_direct_formulas_and_chunking(monkeypatch):
    g = gen(17)
    x = torch.randn(120, 3, generator=g, dtype=torch.float64)
    y = 1.2 * torch.randn(90, 3, generator=g, dtype=torch.float64)
    dxx, dyy, dxy = torch.cdist(x, x), torch.cdist(y, y), torch.cdist(x, y)
    h = 1.3
    k = lambda d: torch.exp(-d**2 / (2 * h * h))  # noqa: E731
    mmd_ref = (k(dxx).sum() - 120) / (120 * 119) + (k(dyy).sum() - 90) / (90 * 89) - 2 * k(dxy).mean()
    en_ref = 2 * dxy.mean() - dxx.sum() / (120 * 119) - dyy.sum() / (90 * 89)
    med = float(np.median(torch.pdist(torch.cat([x, y])).numpy()))
    for block in (M._BLOCK, 500):
        monkeypatch.setattr(M, "_BLOCK", block)
        assert M.mmd(x, y, h) == pytest.approx(float(mmd_ref), rel=1e-10)
        # D^2 ~ 1e-2 is a difference of terms ~ 2: compare at the round-off of those terms
        assert M.energy_distance(x, y) == pytest.approx(float(en_ref), rel=1e-8, abs=1e-9)
        assert M.median_bandwidth(x, y) == pytest.approx(med, rel=1e-12)


def test_median_heuristic_is_scale_invariant_and_energy_is_isometry_invariant():
    g = gen(18)
    x = torch.randn(200, 2, generator=g, dtype=torch.float64)
    y = torch.randn(150, 2, generator=g, dtype=torch.float64) + 0.3
    assert M.mmd(3.0 * x, 3.0 * y) == pytest.approx(M.mmd(x, y), rel=1e-9)
    q = torch.linalg.qr(torch.randn(2, 2, generator=g, dtype=torch.float64)).Q
    c = torch.tensor([5.0, -2.0], dtype=torch.float64)
    assert M.energy_distance(x @ q + c, y @ q + c) == pytest.approx(M.energy_distance(x, y), rel=1e-8)
    assert M.energy_distance(2 * x, 2 * y) == pytest.approx(2 * M.energy_distance(x, y), rel=1e-9)


def _repeat(stat, p: GaussianMixture, q: GaussianMixture, n: int, reps: int, seed: int):
    g = gen(seed)
    v = np.array([stat(p.sample(n, g, dtype=torch.float64), q.sample(n, g, dtype=torch.float64)) for _ in range(reps)])
    return v.mean(), v.std(ddof=1) / math.sqrt(reps)  # mean and its standard error


def test_mmd_is_unbiased_for_the_gaussian_closed_form():
    # X ~ N(m1, s1^2 I), Y ~ N(m2, s2^2 I), k = exp(-|a-b|^2/(2h^2)):
    # E k(X, Y) = (h^2 / (h^2 + t^2))^(d/2) exp(-|m1 - m2|^2 / (2 (h^2 + t^2))), t^2 = s1^2 + s2^2.
    d, h, s1, s2, dm = 2, 1.0, 1.0, 1.3, 0.5
    ek = lambda t2, mu2: (h * h / (h * h + t2)) ** (d / 2) * math.exp(-mu2 / (2 * (h * h + t2)))  # noqa: E731
    exact = ek(2 * s1**2, 0) + ek(2 * s2**2, 0) - 2 * ek(s1**2 + s2**2, dm**2)
    p, q = GaussianMixture([1.0], [[0.0, 0.0]], [s1**2]), GaussianMixture([1.0], [[dm, 0.0]], [s2**2])
    stat = functools.partial(M.mmd, bandwidth=h)
    mean, se = _repeat(stat, p, q, 300, 30, seed=19)
    assert abs(mean - exact) < 4 * se and exact > 10 * se  # unbiased, and clearly positive
    mean0, se0 = _repeat(stat, p, p, 300, 30, seed=20)
    assert abs(mean0) < 4 * se0 and se0 < se  # ~0 for identical distributions, noise ~1/n there


def test_energy_distance_is_unbiased_for_1d_gaussian_closed_form():
    # D^2 = 2E|X-Y| - E|X-X'| - E|Y-Y'|; with X - Y ~ N(mu, t^2),
    # E|X-Y| = t sqrt(2/pi) exp(-mu^2/(2t^2)) + mu (1 - 2 Phi(-mu/t)) and E|X-X'| = 2 s1 / sqrt(pi).
    m1, s1, m2, s2 = 0.0, 1.0, 0.7, 0.5
    mu, t = m1 - m2, math.hypot(s1, s2)
    exy = t * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * t * t)) + mu * (1 - 2 * stats.norm.cdf(-mu / t))
    exact = 2 * exy - 2 * s1 / math.sqrt(math.pi) - 2 * s2 / math.sqrt(math.pi)
    p, q = GaussianMixture([1.0], [[m1]], [s1**2]), GaussianMixture([1.0], [[m2]], [s2**2])
    mean, se = _repeat(M.energy_distance, p, q, 300, 30, seed=21)
    assert abs(mean - exact) < 4 * se and exact > 10 * se
    mean0, se0 = _repeat(M.energy_distance, p, p, 300, 30, seed=22)
    assert abs(mean0) < 4 * se0 and se0 < se


# -- mode weights ---------------------------------------------------------------------------------------
def test_mode_weights_of_exact_samples_within_binomial_tolerance():
    # Assignments of i.i.d. samples are i.i.d. categorical(p), so each count is Binomial(n, p_k):
    # sd(fraction_k) = sqrt(p_k (1 - p_k) / n).  By the 8-fold symmetry p_k = w_k = 1/8 exactly for
    # eight_gaussians; for ncsn_two_modes the overlap is < Phi(-7) (modes 10 sqrt(2) sd apart), so p = w.
    # 5 sd per component, union over K: false-alarm probability <= K * 2 Phi(-5) = K * 5.7e-7.
    n = 20000
    for mix, seed in ((eight_gaussians(), 23), (ncsn_two_modes(), 24)):
        x = mix.sample(n, gen(seed))
        got = M.mode_weights(x, mix)
        p = mix.weights
        assert torch.all((got - p).abs() <= 5 * torch.sqrt(p * (1 - p) / n))
        assert M.mode_weight_error(x, mix) == pytest.approx(float((got - p).abs().max()))


def test_expected_mode_weights_against_exact_assignment_fraction():
    # Overlapping 1-D components: component 0 (narrow) wins where w0 N(z;0,1) > w1 N(z;1,4), an interval
    # [r1, r2] (roots of a quadratic), so the exact assignment fraction is p0 = P_mix(r1 < Z < r2) != w0.
    w, mu, s = [0.5, 0.5], [0.0, 1.0], [1.0, 2.0]
    mix = GaussianMixture(w, [[m] for m in mu], [v**2 for v in s])
    # log w0 N0 - log w1 N1 = 0  <=>  A z^2 + B z + C = 0
    a = 0.5 / s[1] ** 2 - 0.5 / s[0] ** 2
    b = mu[0] / s[0] ** 2 - mu[1] / s[1] ** 2
    c = -0.5 * mu[0] ** 2 / s[0] ** 2 + 0.5 * mu[1] ** 2 / s[1] ** 2 + math.log(s[1] / s[0]) + math.log(w[0] / w[1])
    r1, r2 = sorted(np.roots([a, b, c]).real)
    p0 = sum(wk * (stats.norm.cdf(r2, m, sk) - stats.norm.cdf(r1, m, sk)) for wk, m, sk in zip(w, mu, s))
    n = 40000
    got = M.expected_mode_weights(mix, n, generator=gen(25))
    tol = 5 * math.sqrt(p0 * (1 - p0) / n)  # binomial, as above
    assert abs(float(got[0]) - p0) <= tol and abs(p0 - w[0]) > 10 * tol
    x = mix.sample(n, gen(26))
    assert M.mode_weight_error(x, mix, reference=[p0, 1 - p0]) <= tol
    assert M.mode_weight_error(x, mix) > 5 * tol  # against w it reports a spurious error


# -- noise floors and evaluate --------------------------------------------------------------------------
def test_noise_floor_mechanics_and_data_sampler():
    data = torch.arange(100.0)[:, None].repeat(1, 2)
    overlap = lambda a, b: len(set(a[:, 0].tolist()) & set(b[:, 0].tolist()))  # noqa: E731
    fl = M.noise_floor(overlap, M.data_sampler(data), 50, repeats=3, generator=gen(27))
    assert fl.values == (0, 0, 0) and fl.mean == fl.std == fl.rms == 0  # the two halves are disjoint
    mean_gap = lambda a, b: float((a.mean(0) - b.mean(0)).norm())  # noqa: E731
    f1 = M.noise_floor(mean_gap, eight_gaussians().sample, 100, 5, gen(28))
    f2 = M.noise_floor(mean_gap, eight_gaussians().sample, 100, 5, gen(28))
    assert f1 == f2 and len(f1.values) == 5
    v = np.array(f1.values)
    assert (f1.mean, f1.std, f1.rms) == pytest.approx((v.mean(), v.std(ddof=1), math.sqrt((v * v).mean())))
    with pytest.raises(ValueError, match="`data`"):
        M.data_sampler(data)(101, gen(0))


def test_evaluate_mixture_and_data_reports():
    mix = eight_gaussians()
    x = mix.sample(600, gen(29))
    rep = M.evaluate(x, mix, repeats=3, num_projections=32, generator=gen(30), mode_reference_n=20000)
    json.dumps(rep)
    assert set(rep["metrics"]) == {"sliced_w2_to_mixture", "mode_weight_error", "sliced_w2", "mmd", "energy_distance"}
    assert 0.2 < rep["metrics"]["sliced_w2_to_mixture"]["ratio"] < 5  # an exact sample sits at the floor
    bad = M.evaluate(x + 2.0, mix, metrics=("sliced_w2_to_mixture", "sliced_w2"), repeats=3, num_projections=32,
                     generator=gen(31), mode_reference_n=1000)
    assert all(m["ratio"] > 5 for m in bad["metrics"].values())
    data = mix.sample(1000, gen(32))
    rep = M.evaluate(x[:300], data, metrics=("sliced_w2", "w2_exact"), repeats=2, generator=gen(33))
    assert rep["target"] == "data" and set(rep["metrics"]) == {"sliced_w2", "w2_exact"}
    with pytest.raises(ValueError, match="`target`"):
        M.evaluate(x, data, repeats=2, generator=gen(34))  # 1000 < 2 * 400 rows


# -- input checks ---------------------------------------------------------------------------------------
X, Y3 = torch.randn(10, 2), torch.randn(10, 3)


@pytest.mark.parametrize("call, arg", [
    (lambda: M.sliced_w2(X, Y3), "`y`"),
    (lambda: M.sliced_w2(X[:1], X), "`x`"),
    (lambda: M.sliced_w2(torch.randn(10), X), "`x`"),
    (lambda: M.sliced_w2(X, X.clone().index_fill_(0, torch.tensor([3]), float("nan"))), "`y`"),
    (lambda: M.sliced_w2(X, X, 0), "`num_projections`"),
    (lambda: M.sliced_w2(X, X, directions=torch.zeros(3, 2)), "`directions`"),
    (lambda: M.sliced_w2(X, X, directions=torch.ones(3, 3)), "`directions`"),
    (lambda: M.sliced_w2_to_mixture(Y3, eight_gaussians()), "`mixture`"),
    (lambda: M.sliced_w2_to_mixture(X.clone().fill_(float("inf")), eight_gaussians()), "`x`"),
    (lambda: M.w2_exact(X, X[:5]), "`y`"),
    (lambda: M.w2_exact(X, X, max_n=5), "max_n"),
    (lambda: M.mmd(X, Y3), "`y`"),
    (lambda: M.mmd(X, X, bandwidth=-1.0), "`bandwidth`"),
    (lambda: M.energy_distance(X[:1], X), "`x`"),
    (lambda: M.mode_weights(Y3, eight_gaussians()), "`mixture`"),
    (lambda: M.mode_weight_error(X, eight_gaussians(), reference=[0.5, 0.5]), "`reference`"),
    (lambda: M.expected_mode_weights(eight_gaussians(), 1), "`n`"),
    (lambda: M.noise_floor(M.mmd, eight_gaussians().sample, 10, repeats=1), "`repeats`"),
    (lambda: M.evaluate(X, eight_gaussians(), metrics=("fid",)), "`metrics`"),
    (lambda: M.evaluate(X, Y3), "`target`"),
])
def test_bad_inputs_raise_naming_the_argument(call, arg):
    with pytest.raises(ValueError, match=arg):
        call()


def test_wrong_types_raise_type_error():
    with pytest.raises(TypeError, match="`mixture`"):
        M.sliced_w2_to_mixture(X, "eight_gaussians")
    with pytest.raises(TypeError, match="`x`"):
        M.mmd(object(), X)


# -- sharp metrics (scoresde.evaluation.sharp), within-mode errors (scoresde.evaluation.modes), floors (scoresde.evaluation.floors) -----------
from scoresde.evaluation import floors as F  # noqa: E402
from scoresde.evaluation import modes as W  # noqa: E402
from scoresde.evaluation import sharp as S  # noqa: E402
from scoresde.data.toy import anisotropic_mixture  # noqa: E402


def test_within_mode_errors_closed_form():
    """Far-apart components (responsibilities exactly 0/1): the errors are those of hand-built moments."""
    mix = GaussianMixture([0.5, 0.5], [[0.0, 0.0], [100.0, 0.0]], [[[4.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    a = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]) * 2 + torch.tensor([1.0, 0.0])
    b = torch.tensor([[100.0, 1.0], [100.0, -1.0], [101.0, 0.0], [99.0, 0.0], [100.0, 0.0], [100.0, 0.0]])
    e = W.within_mode_errors(torch.cat([a, b]), mix)
    # component 0: mean (1, 0) -> L^-1 (1, 0) = (1/2, 0); covariance diag(4, 4) vs diag(4, 1): |3| / sqrt(17)
    # component 1: mean exact; covariance diag(1/3, 1/3) vs I: sqrt(2) (2/3) / sqrt(2)
    assert torch.allclose(e["mean_error"], torch.tensor([0.5, 0.0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(e["cov_error"], torch.tensor([3 / math.sqrt(17), 2 / 3], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(e["weights"], torch.tensor([0.4, 0.6], dtype=torch.float64), atol=1e-12)
    assert e["weight_error"] == pytest.approx(0.1) and e["max_mean_error"] == pytest.approx(0.5)
    assert e["max_cov_error"] == pytest.approx(3 / math.sqrt(17))


def test_within_mode_errors_are_consistent_for_overlapping_components():
    """Soft weights: E[r_k] = w_k, E[r_k x] = w_k mu_k, E[r_k (x-mu_k)(x-mu_k)^T] = w_k Sigma_k exactly, so at
    n = 200 000 every error is at the sampling level: weight sd <= sqrt(0.25/n) = 0.0011 -> bound 0.006 (5 sd);
    mean error ~ chi_2 / sqrt(n w) <= 3.5 / sqrt(40 000) = 0.018; covariance error ~ 3 sqrt(2 / (n w)) = 0.021."""
    mix = anisotropic_mixture()
    e = W.within_mode_errors(mix.sample(200_000, gen(0), dtype=torch.float64), mix)
    assert e["weight_error"] < 0.006 and e["max_mean_error"] < 0.02 and e["max_cov_error"] < 0.025, e


def test_within_mode_floor_is_reproducible_and_ordered():
    mix = eight_gaussians()
    a = W.within_mode_floor(mix, 500, 50, gen(1))
    assert a == W.within_mode_floor(mix, 500, 50, gen(1))
    for name in W.WITHIN_MODE_SCALARS:
        assert 0 < a[name]["p05"] <= a[name]["mean"] <= a[name]["p95"], name
    # mean-error floor of one component ~ chi_2 / sqrt(n w): mean sqrt(pi/2) / sqrt(62.5) = 0.16; the max over 8
    # components lies between that and ~2.5x it
    assert 0.16 < a["max_mean_error"]["mean"] < 0.45
    with pytest.raises(ValueError, match="repeats"):
        W.within_mode_floor(mix, 500, 1)
    with pytest.raises(TypeError, match="mixture"):
        W.within_mode_errors(torch.zeros(5, 2), "eight_gaussians")


def test_density_threshold_and_outlier_rate_for_a_gaussian():
    """N(0, I_2): log p = -log(2 pi) - r^2/2 and P(r^2 > c) = exp(-c/2), so tau_q = -log(2 pi) + log q exactly.

    MC: 10^6 reference points, the quantile's level error sd sqrt(q(1-q)/N) -> tau error ~ sd/q in log
    (q = 1 %: 1 %, bound 0.05); outlier rate of 10^5 fresh points at the exact tau: sd 3e-4, bound 1.5e-3."""
    mix = GaussianMixture([1.0], [[0.0, 0.0]], [1.0])
    q = 0.01
    tau = S.density_threshold(mix.log_prob, mix.sample(1_000_000, gen(2), dtype=torch.float64), q)
    assert tau == pytest.approx(-math.log(2 * math.pi) + math.log(q), abs=0.05)
    exact = -math.log(2 * math.pi) + math.log(q)
    assert abs(S.outlier_rate(mix.sample(100_000, gen(3), dtype=torch.float64), mix.log_prob, exact) - q) < 1.5e-3


def test_binomial_band_matches_the_documented_floors():
    assert S.binomial_band(2000, 0.001) == (0.0, 0.0025)
    assert S.binomial_band(2000, 0.01) == (0.0065, 0.014)
    assert S.binomial_band(4000, 0.5) == pytest.approx((0.487, 0.513), abs=5e-4)


def test_kde_log_prob_closed_form_and_cv_bandwidth():
    ref = torch.tensor([[0.0, 0.0], [1.0, 2.0], [-1.0, 0.5]], dtype=torch.float64)
    x = torch.tensor([[0.3, -0.2], [2.0, 2.0]], dtype=torch.float64)
    h = 0.7
    want = torch.logsumexp(torch.stack([torch.tensor(stats.multivariate_normal(r.numpy(), h * h).logpdf(x.numpy()))
                                        for r in ref]), 0) - math.log(3)
    assert torch.allclose(S.kde_log_prob(ref, h)(x), want, atol=1e-5)  # float32 distances
    # Gaussian data: Scott's rule is near-optimal, so cross-validation keeps a factor >= 0.5 of it;
    # two moons (noise 0.1): a much smaller h
    from scoresde.data.datasets import TwoMoons
    g = gen(4)
    normal = torch.randn(2000, 2, generator=g, dtype=torch.float64)
    assert S.cv_bandwidth(normal) >= 0.5 * S.scott_bandwidth(normal)
    moons = TwoMoons().sample(2000, g, dtype=torch.float64)
    assert S.cv_bandwidth(moons) < 0.4 * S.scott_bandwidth(moons)


def test_c2st_known_accuracies():
    """Equal laws: inside the Binomial(2n, 1/2) band; disjoint supports: 1; U(0,1) vs U(1/2, 3/2) in 1-D: the
    Bayes accuracy 0.5 + TV/2 = 0.75 (n = 500 each: sd 0.014, plus the MLP's fit error; bound 0.05)."""
    g = gen(5)
    x, y = torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g)
    lo, hi = S.binomial_band(1000, 0.5)
    acc = S.c2st(x, y, generator=gen(6))
    assert lo - 0.01 <= acc <= hi + 0.01
    assert acc == S.c2st(x, y, generator=gen(6))  # fixed seeds: reproducible
    assert S.c2st(x, y + 20.0, generator=gen(6)) == 1.0
    u, v = torch.rand(500, 1, generator=g), torch.rand(500, 1, generator=g) + 0.5
    assert abs(S.c2st(u, v, steps=200, generator=gen(7)) - 0.75) < 0.05
    with pytest.raises(ValueError, match="dimension"):
        S.c2st(x, torch.zeros(10, 3))


def test_precision_recall_by_hand():
    """1-D, k = 1: y = {0, 1, 2, 3} has 1-NN radii 1; x = {0.5, 5} has radii 4.5: precision 1/2, recall 1."""
    y = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    x = torch.tensor([[0.5], [5.0]])
    assert S.precision_recall(x, y, k=1) == (0.5, 1.0)
    assert S.precision_recall(y, y, k=1) == (1.0, 1.0)
    assert S.precision_recall(y + 100, y, k=1) == (0.0, 0.0)
    with pytest.raises(ValueError, match="k"):
        S.precision_recall(x, y, k=2)  # k <= min(n, m) - 1


def test_outlier_z_band_is_exact():
    """The simulated band of outlier_z against the exact law of the nested binomial counts: the p95 is the
    smallest attainable value whose exact CDF reaches 0.95 (to the simulation's +-0.002)."""
    n, q1, q2 = 2000, 0.001, 0.01
    lo, hi, _ = F._z_band(n, [q1, q2], seed=0)
    k1 = np.arange(0, 60)
    k2 = np.arange(0, 200)
    p1 = stats.binom.pmf(k1, n, q1)

    def cdf(t):  # P(max z <= t) = sum_k1 P(k1) P(k2 <= c2 | k1) over k1 with z1 <= t
        z1 = (k1 - n * q1) / math.sqrt(n * q1 * (1 - q1))
        c2 = n * q2 + t * math.sqrt(n * q2 * (1 - q2))
        inner = stats.binom.cdf(np.floor(c2) - k1, n - k1, (q2 - q1) / (1 - q1))
        return float((p1 * inner * (z1 <= t + 1e-12)).sum())

    assert cdf(hi) >= 0.95 - 0.002 and cdf(hi - 0.01) < 0.95 + 0.002
    assert F._outlier_z([2, 20], n, [q1, q2]) == pytest.approx(0.0, abs=1e-12)


def test_verdict_direction():
    assert F.verdict("c2st", 0.6, (0.48, 0.52)) == "above floor"
    assert F.verdict("c2st", 0.45, (0.48, 0.52)) == "at floor"  # below the band is not worse
    assert F.verdict("knn_recall", 0.9, (0.95, 0.98)) == "above floor"
    assert F.verdict("knn_recall", 0.99, (0.95, 0.98)) == "at floor"


def test_flat_density_uses_the_kde_for_the_outlier_rate():
    """Checkerboard's exact density is flat on its support, so every quantile of log p is the same
    value and the exact outlier rate is degenerate; ``assess`` ranks points by a KDE instead.  Exact
    samples sit inside the floor band; 2 % of points uniform in the bounding box (about half of them
    off the squares) give outlier_z ~ 8.6, far above the band's top (~2.2)."""
    import torch

    from scoresde.data.datasets import Checkerboard
    from scoresde.evaluation.floors import assess

    data, g = Checkerboard(), torch.Generator().manual_seed(0)
    x = data.sample(2000, g, dtype=torch.float64)
    exact = assess(x, data, seed=0)
    assert exact["density"] == "kde" and exact["metrics"]["outlier_z"]["verdict"] == "at floor"
    lo, hi = x.min(0).values, x.max(0).values
    x[:40] = lo + (hi - lo) * torch.rand(40, 2, generator=g, dtype=torch.float64)
    assert assess(x, data, seed=0)["metrics"]["outlier_z"]["verdict"] == "above floor"
