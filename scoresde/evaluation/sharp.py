"""Sharp sample-quality metrics: density-quantile outlier rate, C2ST and k-NN precision / recall.

Sliced W2, MMD and energy distance (``scoresde.evaluation.metrics``) average over the whole sample, so a few
percent of misplaced mass (haze between modes, filaments) barely moves them at n = 2000.  The metrics
here look at where each sample lies.  Inputs: ``x: [n, *D]`` (flattened to ``[n, d]``, float64, CPU).

======================  ==============================================  ============================================
metric                  definition                                      i.i.d. floor at sample size n
======================  ==============================================  ============================================
``outlier_rate``        (1/n) #{i : log p(x_i) < tau_q},                count ~ Binomial(n, q) exactly; n = 2000:
                        tau_q = q-quantile of log p(X), X ~ p           q = 1 %: 5-95 % band [0.65, 1.4] %;
                                                                        q = 0.1 %: [0, 0.25] %
``c2st``                k-fold CV accuracy of an MLP telling x from     ~ Binomial(2n, 1/2) / 2n: n = 2000:
                        a fresh target sample y (0.5: no difference)    5-95 % band [0.487, 0.513]
``precision_recall``    k-NN manifold estimate (Kynkaenniemi 2019)      measured by repeats (``scoresde.evaluation.floors``)
======================  ==============================================  ============================================

Where the target has no closed-form density (two moons, spirals ...), ``kde_log_prob`` estimates it
from a large reference sample, and the threshold tau_q is the q-quantile of that *estimate* on a
second, independent reference sample: for a fresh X ~ p, P(log p_hat(X) < tau_q) = q again (up to the
quantile's Monte Carlo error), so the count stays Binomial(n, q) and the same band applies.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from scipy.stats import binom

from .._checks import check_generator, check_int, check_positive, flat_points

__all__ = ["density_threshold", "density_thresholds", "outlier_rate", "binomial_band", "kde_log_prob", "scott_bandwidth",
           "cv_bandwidth", "c2st", "precision_recall"]


_flat = flat_points


def _check_q(q: float) -> float:
    if not isinstance(q, (int, float)) or not 0 < q < 1:
        raise ValueError(f"`q` must be a probability in (0, 1), got {q!r}")
    return float(q)


# -- density-quantile outlier rate ------------------------------------------------------------------
def _log_probs(log_prob: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``log_prob`` over the rows of ``x: [N, d]``, in chunks of 65 536 rows."""
    return torch.cat([log_prob(c) for c in x.split(65536)])


def density_thresholds(log_prob: Callable[[torch.Tensor], torch.Tensor], reference,
                       qs) -> list[tuple[float, float]]:
    """``(tau_q, level)`` for each q in ``qs``, from one pass of ``log_prob`` over ``reference: [N, d]``.

    tau_q is the lower order statistic ceil(q N) of log p over the reference (``density_threshold``);
    level = (1/N) #{j : log p(r_j) < tau_q}, the level actually reached on the reference: (ceil(q N) - 1) / N
    without ties, less where log p has ties (a density with atoms).
    """
    qs = [_check_q(q) for q in qs]
    lp = _log_probs(log_prob, _flat("reference", reference))
    out = []
    for q in qs:
        tau = lp.kthvalue(max(1, math.ceil(q * lp.numel()))).values
        out.append((float(tau), float((lp < tau).double().mean())))
    return out


def density_threshold(log_prob: Callable[[torch.Tensor], torch.Tensor], reference, q: float) -> float:
    """tau_q: the q-quantile (lower order statistic ceil(q N)) of ``log_prob`` over ``reference: [N, d]``.

    ``reference`` must be an exact sample of the target, independent of whatever ``log_prob`` was
    estimated from.  Monte Carlo error of the level: P(log p(X) < tau_q) = q +- sqrt(q (1 - q) / N)
    (N = 10^6, q = 0.1 %: +-3 % relative).  For a density with atoms (checkerboard: constant on its
    support) the strict inequality of ``outlier_rate`` counts only points below the atom, so the
    expected rate is at most q (0 for the checkerboard: points off the board).
    """
    return density_thresholds(log_prob, reference, [q])[0][0]


def outlier_rate(x, log_prob: Callable[[torch.Tensor], torch.Tensor], threshold: float) -> float:
    """(1/n) #{i : log p(x_i) < threshold}: the fraction of samples in the target's low-density tail.

    With ``threshold = density_threshold(log_prob, reference, q)`` the exact expected value for
    x ~ p is q and the count is Binomial(n, q) (``binomial_band``): a calibrated measure of haze,
    bridges between modes and other mass where the target has (almost) none.
    """
    return float((_log_probs(log_prob, _flat("x", x)) < threshold).double().mean())


def binomial_band(n: int, p: float, lo: float = 0.05, hi: float = 0.95) -> tuple[float, float]:
    """The [lo, hi] quantiles of Binomial(n, p) / n (a rate's i.i.d. floor band)."""
    check_int("n", n)
    return float(binom.ppf(lo, n, p) / n), float(binom.ppf(hi, n, p) / n)


def scott_bandwidth(reference) -> float:
    """Scott's rule h = s N^(-1/(d+4)) with s the root-mean per-coordinate variance of ``reference: [N, d]``."""
    ref = _flat("reference", reference)
    n, d = ref.shape
    return float(ref.var(0).mean().sqrt()) * n ** (-1.0 / (d + 4))


def cv_bandwidth(reference, factors=(1.0, 0.7, 0.5, 0.35, 0.25, 0.18, 0.125), max_points: int = 2000) -> float:
    """Likelihood cross-validation: the h = f * ``scott_bandwidth`` (f in ``factors``) that maximises the
    leave-one-out log-likelihood sum_i log p_hat_{-i}(r_i) of ``reference: [M, d]`` (Silverman 1986, 3.4.4).

    Scott's rule assumes a Gaussian-like spread and over-smooths thin structures (two moons with
    noise 0.1 get h = 0.18; cross-validation picks 0.045).  Above ``max_points`` points the choice is
    made on the first ``max_points`` and scaled by (max_points / M)^(1/(d+4)), Scott's rate.
    Cost O(len(factors) max_points^2 d): ~0.3 s.
    """
    ref = _flat("reference", reference)
    scale = (min(max_points, ref.shape[0]) / ref.shape[0]) ** (1.0 / (ref.shape[1] + 4))
    ref = ref[:max_points]
    base, (m, d) = scott_bandwidth(ref), ref.shape
    r32 = ref.float()
    d2 = torch.cdist(r32, r32).pow_(2).fill_diagonal_(float("inf"))
    best, best_ll = base, -math.inf
    for f in factors:
        h = base * f
        ll = float(torch.logsumexp(d2 / (-2 * h * h), 1).double().sum()) - m * (d * math.log(h) + math.log(m - 1))
        if ll > best_ll:
            best, best_ll = h, ll
    return best * scale


def kde_log_prob(reference, bandwidth: float | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Gaussian kernel density estimate of ``reference: [M, d]``: log p_hat(x) = logsumexp_j log N(x; r_j, h^2 I) - log M.

    ``bandwidth`` h (default ``cv_bandwidth``).  Returns a function ``[B, d] -> [B]`` (float64);
    cost O(B M d), chunked.  Used only through quantile thresholds (``density_threshold`` on an
    independent reference), so its bias does not bias the outlier rate's expected value.
    """
    ref = _flat("reference", reference)
    h = cv_bandwidth(ref) if bandwidth is None else check_positive("bandwidth", bandwidth)
    d, m = ref.shape[1], ref.shape[0]
    r32, r2 = (ref / h).float(), (ref / h).float().pow(2).sum(1)
    const = -math.log(m) - d * math.log(h) - 0.5 * d * math.log(2 * math.pi)

    def log_prob(x: torch.Tensor) -> torch.Tensor:
        xs = (x.reshape(x.shape[0], -1).to("cpu", torch.float64) / h).float()
        out = []
        for c in xs.split(max(1, (1 << 23) // m)):
            d2 = torch.addmm(r2[None], c, r32.T, alpha=-2).add_(c.pow(2).sum(1, keepdim=True)).clamp_min_(0)
            # logsumexp by hand, shifted by the nearest point (3x faster); exponents clamped at -80 so that
            # exp never returns float32 denormals (10x slower), changing the sum by < M e^-80 relative
            low = d2.amin(1, keepdim=True)
            out.append((d2.sub_(low).mul_(-0.5).clamp_(min=-80).exp_().sum(1).log_() - 0.5 * low[:, 0]).double())
        return torch.cat(out) + const

    return log_prob


# -- classifier two-sample test -----------------------------------------------------------------------
def c2st(x, y, *, folds: int = 5, steps: int = 100, hidden: int | None = None, lr: float = 0.03,
         generator: torch.Generator | None = None) -> float:
    """Classifier two-sample test: mean k-fold cross-validated accuracy of an MLP telling ``x`` from ``y``.

    Follows sbibm's ``c2st`` (Lueckmann et al. 2021): z-score both samples with the mean and std of
    ``y`` (the target; sbibm uses its first argument, the reference), an MLP with two ReLU hidden
    layers of ``hidden`` = 10 d units, ``folds``-fold CV with shuffled folds, accuracy averaged over the
    held-out points.  Differences from sbibm: the ``folds`` networks train *together* as one batched
    model, full-batch Adam (``lr``) for a fixed ``steps`` (sbibm: sklearn's minibatch Adam up to 1000
    epochs), no weight decay, and the fold split and initialisation come from ``generator``.
    0.5 = indistinguishable; 1 = fully separable; max accuracy 0.5 + TV(p_x, p_y) / 2, so a
    2 % contamination can lift it by at most 0.01.  Floor: for x, y i.i.d. the correct predictions are
    exchangeable Bernoulli(1/2), so accuracy ~ Binomial(n + m, 1/2) / (n + m) (``binomial_band``).
    Cost: n = m = 2000, d = 2, 100 steps: about 0.45 s of CPU time.
    """
    x, y = _flat("x", x), _flat("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"`y` must have the dimension of `x` ({x.shape[1]}), got {y.shape[1]}")
    check_int("folds", folds, minimum=2)
    check_int("steps", steps)
    g = check_generator(generator)
    d = x.shape[1]
    h = 10 * d if hidden is None else check_int("hidden", hidden)
    mean, std = y.mean(0), y.std(0).clamp_min(1e-12)
    z = ((torch.cat([x, y]) - mean) / std).float()
    label = torch.cat([torch.ones(x.shape[0]), torch.zeros(y.shape[0])])
    n = z.shape[0]
    fold = torch.empty(n, dtype=torch.long)
    fold[torch.randperm(n, generator=g, device=g.device).cpu()] = torch.arange(n) % folds
    train = (fold[None] != torch.arange(folds)[:, None]).float()  # [F, N]: 1 where the point trains fold f

    def init(fan_in, fan_out):  # PyTorch's default (Kaiming-uniform) range
        bound = 1 / math.sqrt(fan_in)
        w = (torch.rand(folds, fan_in, fan_out, generator=g, device=g.device).cpu() * 2 - 1) * bound
        b = (torch.rand(folds, 1, fan_out, generator=g, device=g.device).cpu() * 2 - 1) * bound
        return w.requires_grad_(), b.requires_grad_()

    params = [*init(d, h), *init(h, h), *init(h, 1)]
    w1, b1, w2, b2, w3, b3 = params
    opt = torch.optim.Adam(params, lr=lr)
    zb = z[None].expand(folds, -1, -1)

    def logits():
        a = torch.relu(torch.baddbmm(b1, zb, w1))
        a = torch.relu(torch.baddbmm(b2, a, w2))
        return torch.baddbmm(b3, a, w3)[..., 0]  # [F, N]

    weight = train / train.sum(1, keepdim=True)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits(), label.expand(folds, -1),
                                                                        reduction="none")
            (loss * weight).sum().backward()
            opt.step()
    with torch.no_grad():
        correct = ((logits() > 0).float() == label).float()
    return float((correct * (1 - train)).sum() / n)


# -- k-NN precision and recall ------------------------------------------------------------------------
def _knn_radii(a: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row of ``a`` to its k-th nearest other row (float32)."""
    a = a.float()
    return torch.cat([torch.cdist(c, a).topk(k + 1, dim=1, largest=False).values[:, k] for c in a.split(2048)])


def _pr(x: torch.Tensor, y: torch.Tensor, y_radii: torch.Tensor, k: int) -> tuple[float, float]:
    """(precision, recall) from one cross-distance matrix, chunked over x; ``y_radii`` precomputed."""
    x_radii, xf, yf = _knn_radii(x, k), x.float(), y.float()
    inside_y, covered_y = [], torch.zeros(y.shape[0], dtype=torch.bool)
    for s in range(0, x.shape[0], 2048):
        dist = torch.cdist(xf[s:s + 2048], yf)  # [chunk, m]
        inside_y.append((dist <= y_radii[None]).any(1))
        covered_y |= (dist <= x_radii[s:s + 2048, None]).any(0)
    return float(torch.cat(inside_y).double().mean()), float(covered_y.double().mean())


def precision_recall(x, y, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaenniemi et al. 2019) of samples ``x`` against real ``y``.

    The manifold of a set is the union of balls around its points with radius the distance to the
    k-th nearest neighbour within the set (k = 3, the paper's default).  precision = fraction of x
    inside the manifold of y (quality: no samples where the data has none); recall = fraction of y
    inside the manifold of x (coverage: no data where the samples have none).  Like the paper,
    distances are Euclidean in the data space itself (the paper's are between VGG features), and
    both sets should have equal sizes.  Exact samples do not score 1 at finite n: read the values
    against the floor (``scoresde.evaluation.floors``).  Distances in float32.  Cost O((n + m) n d), chunked:
    about 50 ms at n = m = 2000 on one core.
    """
    x, y = _flat("x", x), _flat("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"`y` must have the dimension of `x` ({x.shape[1]}), got {y.shape[1]}")
    check_int("k", k, maximum=min(x.shape[0], y.shape[0]) - 1)
    return _pr(x, y, _knn_radii(y, k), k)
