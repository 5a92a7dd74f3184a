"""Sample-quality metrics against a data set or an exact Gaussian mixture, and their noise floors.

Inputs are batch-first samples ``x: [n, *D]``, ``y: [m, *D]`` (tensors or array-likes), flattened to
``[n, d]`` and computed in float64 on ``x``'s device.  Metrics return Python floats.

Every metric is noisy at finite n: two independent samples of one target already give a non-zero
value.  So read a number only against its **noise floor**, the same metric between i.i.d. target
samples of the same size (``noise_floor``); ``evaluate`` reports value, floor and ratio in one
JSON-ready dict.  Randomness (projection directions, reference samples) comes only from the
``generator`` argument (None: a fresh OS-seeded one, not reproducible); no global RNG is touched.

=========================  ==================================================  ===========  ======================
metric                     definition                                          units        floor at size n
=========================  ==================================================  ===========  ======================
``sliced_w2``              sqrt(mean_u W2^2(u.x, u.y)), u uniform on S^(d-1)   units of x   n^(-1/2) ... n^(-1/4)
``sliced_w2_to_mixture``   the same, y replaced by the exact mixture           units of x   n^(-1/2) ... n^(-1/4)
``w2_exact``               W2 between equal-size empirical measures            units of x   ~ n^(-1/d) for d >= 3
``mmd``                    unbiased MMD^2, Gaussian kernel                     none         mean 0, sd ~ 1/n
``energy_distance``        2E|X-Y| - E|X-X'| - E|Y-Y'| (squared energy dist.)  units of x   mean 0, sd ~ 1/n
``mode_weight_error``      max_k |fraction assigned to k - reference_k|        probability  ~ sqrt(w (1 - w) / n)
=========================  ==================================================  ===========  ======================

The sliced floors decay like n^(-1/2) for unimodal targets but only like n^(-1/4) when well-separated
modes dominate: the binomial fluctuation sqrt(w(1-w)/n) of a mode's mass must travel the distance D
between modes, W2^2 ~ D^2 sqrt(w(1-w)/n).  Another reason to compare at equal n only.

These distances average over the whole sample, so a few percent of misplaced mass (haze between
modes, filaments, blur) barely moves them at n = 2000.  The sharp metrics live next door:
``scoresde.evaluation.sharp`` (density-quantile outlier rate, C2ST, k-NN precision / recall),
``scoresde.evaluation.modes`` (within-mode errors, re-exported here: ``within_mode_errors``,
``within_mode_floor``), and ``scoresde.evaluation.floors.assess``, the calibrated evaluation the apps run
(every metric with its floor band and a verdict, headline ``outlier_z``).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .._checks import check_generator, check_int, check_positive
from ._ot1d import mixture_grid_size, w2sq_empirical, w2sq_to_mixture
from ..data.toy import GaussianMixture
from .modes import within_mode_errors, within_mode_floor  # noqa: F401  (re-exported: agreed interface)

__all__ = [
    "sliced_w2", "sliced_w2_to_mixture", "w2_exact", "median_bandwidth", "mmd", "energy_distance",
    "mode_weights", "expected_mode_weights", "mode_weight_error",
    "NoiseFloor", "noise_floor", "data_sampler", "evaluate", "W2_EXACT_MAX_N",
    "within_mode_errors", "within_mode_floor",
]

W2_EXACT_MAX_N = 5000
"""Default size limit of ``w2_exact``: O(n^3) time, O(n^2) memory (n = 5000: ~15 s, 200 MB; 10 000: ~2 min)."""
_BLOCK = 1 << 22  # elements per chunk in pairwise sums (32 MB in float64)


# -- input checks (once, at the public boundary) ---------------------------------------------------
def _samples(name: str, x: Any, device=None) -> torch.Tensor:
    """``x: [n, *D]`` -> float64 ``[n, d]``, with n >= 2 and finite entries."""
    try:
        x = torch.as_tensor(x)
    except Exception as err:
        raise TypeError(f"`{name}` must be a tensor [n, *D], got {type(x).__name__}") from err
    if x.ndim < 2 or x.shape[0] < 2 or x[0].numel() < 1:
        raise ValueError(f"`{name}` must be batch-first [n, *D] with n >= 2 samples, got shape {tuple(x.shape)}")
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"`{name}` must be real-valued, got dtype {x.dtype}")
    x = x.reshape(x.shape[0], -1).to(device=device if device is not None else x.device, dtype=torch.float64)
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).any(1).nonzero()[0])
        raise ValueError(f"`{name}` must be finite; sample {bad} has non-finite entries")
    return x


def _pair(x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    x = _samples("x", x)
    y = _samples("y", y, device=x.device)
    if y.shape[1] != x.shape[1]:
        raise ValueError(f"`y` must have the dimension of `x` (d = {x.shape[1]}), got d = {y.shape[1]}")
    return x, y


def _centred(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """``_pair`` minus the pooled mean (pairwise distances unchanged, less round-off in |a|^2 + |b|^2 - 2ab)."""
    x, y = _pair(x, y)
    c = torch.cat([x, y]).mean(0)
    return x - c, y - c


def _check_mixture(mixture: Any, d: int | None, name: str = "mixture") -> GaussianMixture:
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"`{name}` must be a scoresde.data.toy.GaussianMixture, got {type(mixture).__name__}")
    if d is not None and mixture.dim != d:
        raise ValueError(f"`{name}` has dimension {mixture.dim} but `x` has d = {d}")
    return mixture


def _directions(d: int, num_projections: int, generator, directions, device) -> torch.Tensor:
    """Unit directions ``[P, d]``: the given ones (normalised) or P uniform on the sphere from ``generator``."""
    if directions is not None:
        u = torch.as_tensor(directions, dtype=torch.float64, device=device)
        if u.ndim != 2 or u.shape[1] != d or u.shape[0] < 1:
            raise ValueError(f"`directions` must have shape [P, {d}] with P >= 1, got {tuple(u.shape)}")
        norm = u.norm(dim=1, keepdim=True)
        if not bool(torch.isfinite(u).all()) or bool((norm == 0).any()):
            raise ValueError("`directions` must be finite and non-zero")
        return u / norm
    check_int("num_projections", num_projections)
    g = check_generator(generator)
    u = torch.randn(num_projections, d, generator=g, device=g.device, dtype=torch.float64).to(device)
    return u / u.norm(dim=1, keepdim=True)


# -- sliced and exact Wasserstein-2 ------------------------------------------------------------------
def sliced_w2(x, y, num_projections: int = 128, *, generator: torch.Generator | None = None,
              directions=None) -> float:
    """Sliced 2-Wasserstein distance SW2(x, y) = sqrt( (1/P) sum_p W2^2(u_p . x, u_p . y) ).

    Convention: the root of the *mean* over directions of the squared 1-D distances, u_p uniform on
    the unit sphere S^(d-1) (normalised Gaussians from ``generator``), or the rows of ``directions``
    ``[P, d]`` (normalised) when given.  Each 1-D W2^2 is exact between the two empirical measures:
    the projections are sorted and, for unequal sizes n != m, the two step quantile functions are
    integrated exactly on their merged grid (``_ot1d.w2sq_empirical``).  Units: those of x.  For
    N(m1, s1^2 I) vs N(m2, s2^2 I), E_u W2^2 = |m1 - m2|^2 / d + (s1 - s2)^2 since E[u u^T] = I/d.

    Noise: sampling noise (floor between n^(-1/2) and n^(-1/4), see the module notes and ``noise_floor``)
    plus Monte Carlo error over directions, sd of SW2^2 = sd_u(W2^2(u)) / sqrt(P): small in low dimension
    (see ``sliced_w2_to_mixture``), raise P in high dimension.  Cost O(P (n + m) log(n + m)).
    """
    x, y = _pair(x, y)
    u = _directions(x.shape[1], num_projections, generator, directions, x.device)
    a, b = (u @ x.T).sort(1).values, (u @ y.T).sort(1).values
    return math.sqrt(float(w2sq_empirical(a, b).mean().clamp_min(0)))


def sliced_w2_to_mixture(x, mixture: GaussianMixture, num_projections: int = 128, *,
                         generator: torch.Generator | None = None, directions=None,
                         nodes_per_sd: int = 16) -> float:
    """Sliced W2 between a sample and the *exact* Gaussian mixture, same convention as ``sliced_w2``.

    On a unit direction u the mixture is the 1-D mixture F_u = sum_k w_k N(u.mu_k, u^T Sigma_k u).  With
    x_(1) <= ... <= x_(n) the sorted projections and z_i = F_u^-1(i/n) (z_0 = -inf, z_n = +inf),

        W2^2 = sum_i int_{z_(i-1)}^{z_i} (x_(i) - z)^2 dF_u(z)
             = mean_i x_(i)^2 + E_F[z^2] - 2 sum_i x_(i) (G(z_i) - G(z_(i-1))),

    with the closed-form partial mean G(z) = sum_k w_k (mu_k Phi(a_k) - sd_k phi(a_k)), a_k = (z - mu_k)/sd_k.
    The only approximation is the cubic-spline inversion of F_u on a grid of ``nodes_per_sd`` points
    per smallest projected sd (at most 16 384 points; narrower components lose accuracy): the W2^2 error
    is below 1e-7 for the toy targets (checked against quadrature in the tests), far below the sampling
    noise.  Units: those of x.

    Noise: only that of x (no reference sample); the floor (a fresh exact sample of size n against the
    mixture) is about 1/sqrt(2) of ``sliced_w2``'s.  Direction noise as in ``sliced_w2``; for
    eight_gaussians at n = 10 000 and P = 128 its sd is 0.0004, against a floor of 0.03 +- 0.01.
    Cost O(P (G K + n log n)) for a grid of G points, chunked over directions.
    """
    x = _samples("x", x)
    mixture = _check_mixture(mixture, x.shape[1])
    check_int("nodes_per_sd", nodes_per_sd, minimum=4)
    u = _directions(x.shape[1], num_projections, generator, directions, x.device)
    w, mu, cov = (p.to(x.device) for p in (mixture.weights, mixture.means, mixture.covs))
    m, sd = u @ mu.T, torch.einsum("pi,kij,pj->pk", u, cov, u).sqrt()  # projected mixtures [P, K]
    nodes = mixture_grid_size(m.cpu(), sd.cpu(), x.shape[0], nodes_per_sd)
    xs, out = (u @ x.T).sort(1).values, []  # [P, n]
    chunk = max(1, (1 << 22) // max(x.shape[0], nodes * w.numel()))
    for s in range(0, u.shape[0], chunk):
        out.append(w2sq_to_mixture(xs[s:s + chunk], w, m[s:s + chunk], sd[s:s + chunk], nodes))
    return math.sqrt(float(torch.cat(out).mean().clamp_min(0)))


def w2_exact(x, y, *, max_n: int = W2_EXACT_MAX_N) -> float:
    """Exact W2 = sqrt( min_perm (1/n) sum_i |x_i - y_perm(i)|^2 ) between equal-size empirical measures.

    For equal sizes an optimal coupling is a permutation (Birkhoff), found by
    ``scipy.optimize.linear_sum_assignment`` on the squared-distance matrix.  Cost O(n^3) time and
    O(n^2) memory, so n > ``max_n`` (default ``W2_EXACT_MAX_N`` = 5000) raises; pass a larger ``max_n``
    to insist.  Units: those of x.  Noise: biased upwards; in d dims the floor decays like n^(-1/d)
    for d >= 3 (slower than the sliced distances), so compare with ``noise_floor`` at the same n.
    """
    x, y = _centred(x, y)
    check_int("max_n", max_n, minimum=2)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"`y` must have as many samples as `x` ({x.shape[0]}), got {y.shape[0]}")
    if x.shape[0] > max_n:
        raise ValueError(f"`x` has n = {x.shape[0]} > max_n = {max_n}; the cost is O(n^3): pass max_n to insist")
    cost = ((x * x).sum(1)[:, None] + (y * y).sum(1)[None] - 2 * x @ y.T).clamp_min_(0).cpu().numpy()
    rows, cols = linear_sum_assignment(cost)
    return math.sqrt(float(np.mean(cost[rows, cols])))


# -- kernel two-sample statistics ---------------------------------------------------------------------
def _pair_sum(a: torch.Tensor, b: torch.Tensor | None, kernel) -> float:
    """sum_{i, j} kernel(|a_i - b_j|^2); with ``b=None``, sum_{i != j} over ``a`` (upper triangle, doubled).

    Chunked to ~_BLOCK entries per block; ``kernel`` works in place on squared distances that may be
    slightly negative from round-off.
    """
    same, b = b is None, a if b is None else b
    a2, b2, bt, total = (a * a).sum(1), (b * b).sum(1), b.T.contiguous(), 0.0
    rows = max(1, _BLOCK // b.shape[0])
    for s in range(0, a.shape[0], rows):
        e, c = min(s + rows, a.shape[0]), s if same else 0  # within a sample: only columns j >= s
        k = kernel(torch.addmm(b2[None, c:], a[s:e], bt[:, c:], alpha=-2).add_(a2[s:e, None]))
        if same:
            k[:, : e - s] = k[:, : e - s].triu(1)  # keep j > i in the diagonal block
        total += float(k.sum())
    return 2 * total if same else total


def median_bandwidth(x, y=None, max_points: int = 2000) -> float:
    """Median heuristic: the (lower) median Euclidean distance over pairs i < j of the pooled sample (x, y).

    Above ``max_points`` points a deterministic, evenly strided subset of that many is used.
    """
    z = _samples("x", x) if y is None else torch.cat(_pair(x, y))
    check_int("max_points", max_points, minimum=2)
    z = z[torch.linspace(0, z.shape[0] - 1, min(max_points, z.shape[0]), device=z.device).long()]
    h = float(torch.pdist(z).median())
    if h == 0:
        raise ValueError("median heuristic gave bandwidth 0 (most samples coincide); pass `bandwidth`")
    return h


def mmd(x, y, bandwidth: float | None = None) -> float:
    """Unbiased squared maximum mean discrepancy with k(a, b) = exp(-|a - b|^2 / (2 h^2)):

        MMD_u^2 = sum_{i != j} k(x_i, x_j) / (n(n-1)) + sum_{i != j} k(y_i, y_j) / (m(m-1))
                  - 2 sum_{i, j} k(x_i, y_j) / (nm)          (Gretton et al. 2012, eq. 3).

    ``bandwidth`` h: a positive float, or None for the median heuristic (``median_bandwidth``: the
    median pairwise distance of the pooled sample).  Keep h fixed when comparing numbers (``evaluate``
    fixes it from the target).  Unitless (kernel values lie in [0, 1]).  Noise: unbiased, so it can be
    negative; for equal distributions mean 0, sd ~ 1/n and right-skewed (about 2/3 of values negative),
    otherwise sd ~ n^(-1/2).  Cost O((n + m)^2 d) time, O(_BLOCK) memory by chunking (n = m = 10 000:
    about 3 s on one CPU core).
    """
    x, y = _centred(x, y)
    h = median_bandwidth(x, y) if bandwidth is None else check_positive("bandwidth", bandwidth)
    n, m = x.shape[0], y.shape[0]
    x, y = x / (h * math.sqrt(2)), y / (h * math.sqrt(2))  # then k = exp(-|a - b|^2)

    def kernel(d2):
        return d2.neg_().exp_()

    return (_pair_sum(x, None, kernel) / (n * (n - 1)) + _pair_sum(y, None, kernel) / (m * (m - 1))
            - 2 * _pair_sum(x, y, kernel) / (n * m))


def energy_distance(x, y) -> float:
    """Squared energy distance D^2 = 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Szekely & Rizzo), unbiased:

    the cross term averages all n m pairs, the within terms are U-statistics over i != j.  D^2 >= 0,
    with equality iff the distributions agree (its root is a metric).  Units: those of x (not squared:
    it is built from distances).  Noise: as ``mmd`` (mean 0, sd ~ 1/n, skewed, for equal distributions;
    sd ~ n^(-1/2) otherwise).  1-D Gaussians: E|X - Y| = t sqrt(2/pi) exp(-mu^2/(2t^2)) + mu (1 - 2 Phi(-mu/t)),
    mu = m1 - m2, t^2 = s1^2 + s2^2.  Cost O((n + m)^2 d), chunked like ``mmd``.
    """
    x, y = _centred(x, y)
    n, m = x.shape[0], y.shape[0]

    def kernel(d2):
        return d2.clamp_min_(0).sqrt_()

    return (2 * _pair_sum(x, y, kernel) / (n * m) - _pair_sum(x, None, kernel) / (n * (n - 1))
            - _pair_sum(y, None, kernel) / (m * (m - 1)))


# -- mode coverage ------------------------------------------------------------------------------------
def mode_weights(x, mixture: GaussianMixture) -> torch.Tensor:
    """Fraction of samples assigned to each component by maximum posterior responsibility, float64 ``[K]``.

    For overlapping components this *assignment fraction* differs from w_k even for exact samples
    (mass in the overlap goes to the locally dominant component): compare with
    ``expected_mode_weights``, not with ``mixture.weights``, unless the components are well separated
    or the mixture is symmetric.  For n i.i.d. samples each count is Binomial(n, p_k), sd sqrt(p_k(1-p_k)/n).
    """
    x = _samples("x", x)
    mixture = _check_mixture(mixture, x.shape[1])
    counts = sum(torch.bincount(mixture.assign(c), minlength=mixture.num_components) for c in x.split(4096))
    return counts.to(torch.float64).cpu() / x.shape[0]


def expected_mode_weights(mixture: GaussianMixture, n: int = 100_000, *,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """Monte Carlo estimate (``n`` exact samples) of the assignment fraction p_k of the exact target.

    This is what ``mode_weights`` converges to for a perfect sampler; sd sqrt(p_k (1 - p_k) / n) per
    component (at most 0.0016 for the default n = 100 000).
    """
    _check_mixture(mixture, None)
    check_int("n", n, minimum=2)
    return mode_weights(mixture.sample(n, check_generator(generator), dtype=torch.float64), mixture)


def mode_weight_error(x, mixture: GaussianMixture, reference=None) -> float:
    """max_k |mode_weights(x)_k - reference_k|; ``reference`` defaults to ``mixture.weights``.

    Pass ``reference=expected_mode_weights(mixture, ...)`` to compare like with like when components
    overlap.  A probability (unitless).  Noise: for exact samples E|error_k| ~ sqrt(2 p_k (1 - p_k) / (pi n)),
    so the floor decays like n^(-1/2).
    """
    got = mode_weights(x, mixture)
    ref = mixture.weights if reference is None else torch.as_tensor(reference, dtype=torch.float64).cpu()
    if ref.shape != got.shape:
        raise ValueError(f"`reference` must have shape [{got.numel()}], got {tuple(ref.shape)}")
    return float((got - ref).abs().max())


# -- noise floors and reports -------------------------------------------------------------------------
class NoiseFloor(NamedTuple):
    """A metric over i.i.d. repeats at one sample size: mean, sample sd, root-mean-square, the values."""

    mean: float
    std: float
    rms: float
    values: tuple[float, ...]


def noise_floor(metric: Callable[[torch.Tensor, Any], float], sample: Callable[..., torch.Tensor], n: int,
                repeats: int = 10, generator: torch.Generator | None = None, *, reference: Any = None) -> NoiseFloor:
    """The i.i.d. noise floor of ``metric`` at sample size ``n``.

    ``sample(k, generator) -> [k, *D]`` draws k i.i.d. target samples (``mixture.sample``, or
    ``data_sampler(data)``: without replacement).  Each of the ``repeats`` draws 2n points and records
    ``metric(first half, second half)``; with a ``reference`` (e.g. the exact mixture for
    ``sliced_w2_to_mixture``) it draws n and records ``metric(sample, reference)``.  Bind the
    metric's options (``num_projections``, a ``generator`` for its directions, a fixed ``bandwidth``)
    with ``functools.partial``.  A reported value reads as value / floor; ~1 means "as good as an i.i.d.
    target sample of the same size".  The floor's own relative error is about std / (mean sqrt(repeats)).
    """
    check_int("n", n, minimum=2)
    check_int("repeats", repeats, minimum=2)
    g = check_generator(generator)
    values = []
    for _ in range(repeats):
        z = sample(2 * n if reference is None else n, g)
        values.append(float(metric(z[:n], z[n:]) if reference is None else metric(z, reference)))
    v = np.asarray(values)
    return NoiseFloor(float(v.mean()), float(v.std(ddof=1)), float(np.sqrt((v * v).mean())), tuple(values))


def data_sampler(data) -> Callable[[int, torch.Generator], torch.Tensor]:
    """``sample(k, generator)`` drawing k rows of ``data: [N, *D]`` without replacement (k <= N)."""
    data = torch.as_tensor(data)
    _samples("data", data)

    def sample(k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if k > data.shape[0]:
            raise ValueError(f"cannot draw {k} distinct rows from `data` with {data.shape[0]}; use a smaller n")
        g = check_generator(generator)
        idx = torch.randperm(data.shape[0], generator=g, device=g.device)[:k]
        return data[idx.to(data.device)]

    return sample


def evaluate(x, target, *, metrics=None, repeats: int = 5, num_projections: int = 128,
             generator: torch.Generator | None = None, mode_reference_n: int = 100_000) -> dict:
    """Metrics of a sample ``x: [n, *D]`` against ``target``, with their floors at the same n, as a plain dict.

    ``target``: a ``GaussianMixture`` (default metrics ``sliced_w2_to_mixture``, ``mode_weight_error``
    against ``expected_mode_weights`` of ``mode_reference_n`` exact samples, ``sliced_w2``, ``mmd``,
    ``energy_distance``) or data ``[N, *D]`` with N >= 2n (the last three); ``w2_exact`` on request.
    Two-sample metrics compare x with a fresh target sample of size n, whose median heuristic fixes
    the MMD bandwidth.  Floors: ``noise_floor`` with ``repeats``.  Result (JSON-serialisable)::

        {"n", "dim", "target": "mixture" | "data", "repeats",
         "metrics": {name: {"value", "floor_mean", "floor_std", "floor_rms", "ratio", "floor_values"}},
         "mode_weights", "expected_mode_weights"}       # the last two with mode_weight_error only

    ``ratio = value / floor_rms`` (root-mean-square of the floor's values, so that it also serves the
    unbiased MMD^2 / energy distance, whose floor has mean 0): ~1 means as good as an i.i.d. target
    sample of size n.  For those two the null values are right-skewed (about 2/3 negative), so ratios
    within about [-1, 3] are noise.  Cost: (repeats + 1) evaluations of each metric.
    """
    g = check_generator(generator)
    check_int("repeats", repeats, minimum=2)
    x = _samples("x", x)
    n, is_mix = x.shape[0], isinstance(target, GaussianMixture)
    if is_mix:
        _check_mixture(target, x.shape[1], "target")
        sample = lambda k, gen: target.sample(k, gen, dtype=torch.float64).reshape(k, -1).to(x.device)  # noqa: E731
    else:
        data = _samples("target", target, device=x.device)
        if data.shape[1] != x.shape[1] or data.shape[0] < 2 * n:
            raise ValueError(f"`target` data must have d = {x.shape[1]} and at least 2n = {2 * n} rows (two "
                             f"disjoint target samples for the floor), got shape {tuple(data.shape)}")
        sample = data_sampler(data)
    allowed = ("sliced_w2_to_mixture", "mode_weight_error")[: 2 * is_mix] + ("sliced_w2", "mmd", "energy_distance")
    metrics = allowed if metrics is None else tuple(metrics)
    for name in metrics:
        if name not in allowed + ("w2_exact",):
            raise ValueError(f"`metrics` entries must be among {list(allowed) + ['w2_exact']}, got {name!r}")
    out: dict = {"n": n, "dim": x.shape[1], "target": "mixture" if is_mix else "data", "repeats": repeats,
                 "metrics": {}}
    ref = sample(n, g)
    fns: dict = {
        "sliced_w2": lambda a, b: sliced_w2(a, b, num_projections, generator=g),
        "mmd": functools.partial(mmd, bandwidth=median_bandwidth(ref)) if "mmd" in metrics else None,
        "energy_distance": energy_distance,
        "w2_exact": w2_exact,
        "sliced_w2_to_mixture": lambda a, mix: sliced_w2_to_mixture(a, mix, num_projections, generator=g),
    }
    if "mode_weight_error" in metrics:
        emw = expected_mode_weights(target, mode_reference_n, generator=g)
        out["mode_weights"], out["expected_mode_weights"] = mode_weights(x, target).tolist(), emw.tolist()
        fns["mode_weight_error"] = functools.partial(mode_weight_error, reference=emw)
    for name in metrics:
        exact = target if name in ("sliced_w2_to_mixture", "mode_weight_error") else None
        value = fns[name](x, ref if exact is None else exact)
        fl = noise_floor(fns[name], sample, n, repeats, g, reference=exact)
        out["metrics"][name] = {"value": value, "floor_mean": fl.mean, "floor_std": fl.std, "floor_rms": fl.rms,
                                "ratio": value / fl.rms if fl.rms > 0 else None, "floor_values": list(fl.values)}
    return out
