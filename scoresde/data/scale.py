"""Data scale against the SDE: the VE sigma_max from data, and the prior mismatch of any SDE.

* ``sigma_max_from_data(x)``: Song & Ermon 2020 ("Improved techniques for training score-based
  generative models"), technique 1: choose the largest noise level sigma_1 = sigma_max "as large as
  the maximum Euclidean distance between all pairs of training data points", so that the
  perturbed data at T can move between any two data points and p_T is close to the prior
  N(0, sigma_max^2 I).  Use it as ``VESDE(sigma_max=sigma_max_from_data(x))``.
* ``prior_mismatch(data, sde)``: how far p_T (the law of x_T = alpha(T) x0 + sigma(T) z) is from
  the prior N(0, prior_std^2 I) the sampler starts from, as the KL divergence of the moment-matched
  Gaussian of p_T against the prior, in closed form.  Generic over SDEs (it uses only
  ``sde.alpha``, ``sde.sigma``, ``sde.prior_std``, ``sde.T``); it matters mostly for VP / sub-VP
  with data far from the origin (the NCSN mixture at +-5 keeps a mean alpha(1) * 3 = 0.02 in
  every coordinate, which shifts 0.5-1 % of mode weight) and for VE with a sigma_max below the
  data's diameter.
* ``warn_prior_mismatch(data, sde)``: logs a warning (``logging``) when the mismatch is large;
  the apps call it before sampling.

Why the moment-matched KL: the prior q is Gaussian, so E_p[log q] depends on p only through its
first two moments, and for p_G the Gaussian with p's mean and covariance,
KL(p || q) = KL(p || p_G) + KL(p_G || q) >= KL(p_G || q).  The reported value is therefore a
lower bound of KL(p_T || prior), exact when the data are Gaussian; it is what a sampler's start can
be wrong by at the level of means and covariances.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .._checks import check_generator, check_int, check_positive, flat_points
from ..sdes import SDE
from .toy import GaussianMixture

__all__ = ["max_pairwise_distance", "sigma_max_from_data", "PriorMismatch", "prior_mismatch",
           "warn_prior_mismatch"]

log = logging.getLogger(__name__)

EXACT_MAX_POINTS = 4096
"""Up to this many points the diameter is exact (blocked O(n^2) distances); above, see ``max_pairwise_distance``."""

PRIOR_TV_WARN = 0.01
"""Default warning threshold on ``PriorMismatch.tv_bound``: 1 % of the probability mass."""


_flat_data = flat_points


def _blocked_diameter(x: torch.Tensor, block: int = 1024) -> tuple[float, int, int]:
    """Exact max_{i,j} ||x_i - x_j|| by blocks of rows (memory O(block n)); returns (distance, i, j)."""
    best, bi, bj = -1.0, 0, 0
    sq = (x * x).sum(1)
    for s in range(0, x.shape[0], block):
        rows = x[s:s + block]
        # ||a - b||^2 = |a|^2 + |b|^2 - 2 a.b (float64: relative cancellation ~1e-16 |x|^2, far below
        # the distances that matter here); the chosen pair's distance is recomputed directly below
        d2 = sq[s:s + block, None] + sq[None, :] - 2 * rows @ x.T
        v, flat = d2.flatten().max(0)
        if float(v) > best:
            best, bi, bj = float(v), s + int(flat) // x.shape[0], int(flat) % x.shape[0]
    return float((x[bi] - x[bj]).norm()), bi, bj


def max_pairwise_distance(x: torch.Tensor, *, max_points: int = EXACT_MAX_POINTS, sweeps: int = 4,
                          generator: torch.Generator | None = None) -> float:
    """The largest Euclidean distance between two rows of ``x: [n, *D]`` (flattened), as a float.

    * n <= ``max_points``: exact, by blocks of the pairwise distance matrix (O(n^2 d) time,
      O(1024 n) memory).
    * n > ``max_points``: the exact diameter of a uniform subsample of ``max_points`` rows (drawn
      with ``generator``), then up to ``sweeps`` farthest-point sweeps over *all* rows starting from the
      subsample's end points (each replaces one end by the row farthest from the other end, when that
      is farther apart; O(n d) each).
      The result is the distance of an actual pair of rows, hence never above the true diameter D;
      a single sweep alone already guarantees >= D / 2, and on data sets with a few extreme points
      the sweeps find them, which a subsample would miss.  Cost O(max_points^2 d + sweeps n d).
    """
    x = _flat_data("x", x)
    check_int("max_points", max_points, minimum=2)
    check_int("sweeps", sweeps, minimum=0)
    n = x.shape[0]
    if n <= max_points:
        return _blocked_diameter(x)[0]
    g = check_generator(generator)
    idx = torch.randperm(n, generator=g)[:max_points]
    best, i, j = _blocked_diameter(x[idx])
    a, b = int(idx[i]), int(idx[j])
    for _ in range(sweeps):  # from either end, the row farthest from it; stop when neither improves
        for end in (a, b):
            far = int(((x - x[end]) ** 2).sum(1).argmax())
            dist = float((x[far] - x[end]).norm())
            if dist > best:
                best, a, b = dist, far, end
                break
        else:
            break
    return best


def sigma_max_from_data(x: torch.Tensor, *, max_points: int = EXACT_MAX_POINTS,
                        generator: torch.Generator | None = None) -> float:
    """VE sigma_max chosen from data: the largest pairwise Euclidean distance between the rows of ``x``.

    Song & Ermon 2020, technique 1 ("choose sigma_1 to be as large as the maximum Euclidean distance
    between all pairs of training data points").  ``x: [n, *D]``; for n > ``max_points`` the
    distance is computed on a subsample refined by farthest-point sweeps over all rows
    (``max_pairwise_distance``: a lower bound of the exact value, exact for n <= ``max_points``).
    Use the full training set or a large sample of it: the maximum grows with n.
    """
    return max_pairwise_distance(x, max_points=max_points, generator=generator)


@dataclass(frozen=True)
class PriorMismatch:
    """Moment-matched prior mismatch of p_T (see ``prior_mismatch``); all fields are floats / ints.

    kl        KL(N(m, C) || N(0, s^2 I)) in nats, m = alpha mu, C = alpha^2 Sigma + sigma^2 I, s = prior_std
              (a lower bound of KL(p_T || prior), exact for Gaussian data)
    kl_mean   its mean part ||m||^2 / (2 s^2)
    kl_cov    its covariance part (kl - kl_mean)
    tv_bound  sqrt(kl / 2): Pinsker's bound on the total-variation distance between the moment-matched
              p_T and the prior, i.e. (for Gaussian data) the largest share of probability mass that a
              deterministic sampler started from the prior instead of p_T can put in the wrong place
    mean_offset ||m|| / s, the mean of p_T in prior standard deviations
    alpha, sigma, prior_std  alpha(T), sigma(T) and the prior's std;  dim  the data dimension d
    """

    kl: float
    kl_mean: float
    kl_cov: float
    tv_bound: float
    mean_offset: float
    alpha: float
    sigma: float
    prior_std: float
    dim: int

    def as_dict(self) -> dict:
        return asdict(self)


def _moments(data: Any, max_points: int, generator) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean [d], eigenvalues of the covariance (the nonzero part, any length <= d), d) in float64."""
    if isinstance(data, GaussianMixture):
        return data.mean(), torch.linalg.eigvalsh(data.covariance()).clamp_min(0), data.dim
    x = _flat_data("data", data)
    n, d = x.shape
    mu = x.mean(0)
    xc = x - mu
    if min(n, d) > max_points:  # both large: covariance spectrum from a row subsample
        xc = xc[torch.randperm(n, generator=check_generator(generator))[:max_points]]
    # the nonzero eigenvalues of Xc^T Xc / (n-1) [d, d] are those of Xc Xc^T / (n-1) [n, n]: use the smaller
    gram = xc.T @ xc if d <= xc.shape[0] else xc @ xc.T
    return mu, torch.linalg.eigvalsh(gram / (n - 1)).clamp_min(0), d


def prior_mismatch(data: Any, sde: SDE, *, max_points: int = EXACT_MAX_POINTS,
                   generator: torch.Generator | None = None) -> PriorMismatch:
    """How far p_T = law(alpha(T) x0 + sigma(T) z) is from the SDE's prior N(0, s^2 I), s = ``sde.prior_std``.

    ``data``: samples ``[n, *D]`` (their mean mu and covariance Sigma, unbiased) or a
    ``scoresde.data.toy.GaussianMixture`` (its exact moments).  With a = alpha(T), b = sigma(T),
    m = a mu and C = a^2 Sigma + b^2 I (eigenvalues v_i = a^2 lambda_i + b^2), in closed form::

        KL(N(m, C) || N(0, s^2 I)) = ||m||^2 / (2 s^2) + 1/2 sum_i [v_i / s^2 - 1 - log(v_i / s^2)]

    (each bracket >= 0; directions outside the data's span have lambda_i = 0).  This is a lower bound
    of KL(p_T || prior) (module docstring), exact for Gaussian data.  The covariance spectrum is
    taken from the smaller of the d x d and n x n Gram matrices, so image-sized d costs O(n^2 d);
    when both n and d exceed ``max_points`` it is estimated on a row subsample.
    """
    if not isinstance(sde, SDE):
        raise TypeError(f"`sde` must be a scoresde.sdes.SDE, got {type(sde).__name__}")
    check_int("max_points", max_points, minimum=2)
    mu, lam, d = _moments(data, max_points, generator)
    t = torch.tensor([sde.T], dtype=torch.float64)
    a, b = float(sde.alpha(t)), float(sde.sigma(t))
    s2 = float(sde.prior_std) ** 2

    def excess(v: torch.Tensor) -> torch.Tensor:  # v - 1 - log v >= 0, accurate near v = 1
        u = v - 1
        return u - torch.log1p(u)

    v = (a * a * lam + b * b) / s2
    zero = torch.tensor(b * b / s2, dtype=torch.float64)
    kl_cov = 0.5 * (float(excess(v).sum()) + (d - lam.numel()) * float(excess(zero)))
    kl_mean = 0.5 * a * a * float(mu @ mu) / s2
    kl = kl_mean + kl_cov
    return PriorMismatch(kl=kl, kl_mean=kl_mean, kl_cov=kl_cov, tv_bound=math.sqrt(kl / 2),
                         mean_offset=a * float(mu.norm()) / math.sqrt(s2), alpha=a, sigma=b,
                         prior_std=math.sqrt(s2), dim=d)


def warn_prior_mismatch(data: Any, sde: SDE, *, threshold: float = PRIOR_TV_WARN,
                        logger: logging.Logger | None = None) -> PriorMismatch:
    """``prior_mismatch(data, sde)``, logged: a warning when ``tv_bound > threshold``, else a debug line.

    The warning says what to do: centre / rescale the data, lengthen the VP schedule (larger
    beta_max or T), or, for VE, raise sigma_max to the data's diameter (``sigma_max_from_data``).
    """
    check_positive("threshold", threshold)
    pm = prior_mismatch(data, sde)
    logger = logger or log
    msg = (f"prior mismatch of {sde!r} on these data: KL(moment-matched p_T || prior) = {pm.kl:.3g} nats "
           f"(mean part {pm.kl_mean:.3g}, p_T mean {pm.mean_offset:.3g} prior stds from 0), so up to "
           f"~{100 * pm.tv_bound:.2g} % of the probability mass can start in the wrong place")
    if pm.tv_bound > threshold:
        logger.warning("%s (> %.2g %%): centre or rescale the data, or lengthen the schedule "
                       "(VP: larger beta_max; VE: sigma_max >= the data's largest pairwise distance, "
                       "scoresde.data.scale.sigma_max_from_data)", msg, 100 * threshold)
    else:
        logger.debug(msg)
    return pm
