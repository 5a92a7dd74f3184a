"""Exact one-dimensional optimal transport for the sliced metrics in ``scoresde.evaluation.metrics``.

In 1-D the optimal W2 coupling is monotone: W2^2(mu, nu) = int_0^1 (Q_mu(q) - Q_nu(q))^2 dq with Q the
quantile functions.  Both functions here work on many 1-D problems at once (one row per projection).
"""
from __future__ import annotations

import math

import torch

__all__ = ["w2sq_empirical", "mixture_grid_size", "w2sq_to_mixture"]

_TAU = math.sqrt(2 * math.pi)


def w2sq_empirical(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact W2^2 ``[P]`` between the empirical measures of sorted rows ``a: [P, n]`` and ``b: [P, m]``.

    Q_a(q) = a_(ceil(q n)) is a step function.  Both quantile functions are constant between consecutive
    points of {i/n} U {j/m}; in integer units of 1/(nm) these are i m and j n, so the integral is a
    finite sum, exact (for n = m: the mean of squared sorted differences).
    """
    n, m = a.shape[1], b.shape[1]
    if n == m:
        return ((a - b) ** 2).mean(1)
    ticks = torch.unique(torch.cat([torch.arange(0, n + 1) * m, torch.arange(1, m) * n])).to(a.device)
    left, width = ticks[:-1], (ticks[1:] - ticks[:-1]).to(torch.float64) / (n * m)
    return (((a[:, left // m] - b[:, left // n]) ** 2) * width).sum(1)


def mixture_grid_size(m: torch.Tensor, sd: torch.Tensor, n: int, nodes_per_sd: int, max_nodes: int = 1 << 14) -> int:
    """Grid points G for ``w2sq_to_mixture``: spacing <= min_k sd_k / nodes_per_sd over the levels' range."""
    zq = torch.special.ndtri(torch.tensor([1 / n, 1 - 1 / n], dtype=torch.float64))
    span = (m + sd * float(zq[1])).amax(1) - (m + sd * float(zq[0])).amin(1)
    return int(min(max_nodes, max(8, math.ceil(float((span / sd.amin(1)).max()) * nodes_per_sd) + 1)))


def w2sq_to_mixture(xs: torch.Tensor, w: torch.Tensor, m: torch.Tensor, sd: torch.Tensor, nodes: int) -> torch.Tensor:
    """W2^2 ``[P]`` between the empirical measures of sorted rows ``xs: [P, n]`` and 1-D Gaussian mixtures
    F_p = sum_k w_k N(m_pk, sd_pk^2) (``w: [K]``, ``m, sd: [P, K]``).

    With z_i = F^-1(i/n) (z_0 = -inf, z_n = +inf) the monotone coupling sends the mass of F on
    (z_(i-1), z_i] to x_(i), so

        W2^2 = mean_i x_(i)^2 + E_F[z^2] - 2 sum_i x_(i) (G(z_i) - G(z_(i-1))),
        G(z) = int_-inf^z s dF(s) = sum_k w_k (m_k Phi(a_k) - sd_k phi(a_k)),  a_k = (z - m_k) / sd_k.

    F, f = F' and G are evaluated in closed form on a uniform grid of ``nodes`` points covering the levels
    1/n ... 1 - 1/n and interpolated by cubic Hermite splines (slopes f and z f); F^-1(i/n) solves the
    cubic by Newton from the linear guess.  With spacing h <= sd_min / 16 the spline error is ~1e-8 in
    probability and the W2^2 error below 1e-7 (relative 1e-9 for the toy targets, against quadrature).
    Cost O(P nodes K) closed-form terms plus O(P n).
    """
    n = xs.shape[1]
    q = torch.arange(1, n, dtype=torch.float64, device=xs.device) / n
    zq = torch.special.ndtri(torch.tensor([1 / n, 1 - 1 / n], dtype=torch.float64, device=xs.device))
    lo, hi = (m + sd * zq[0]).amin(1), (m + sd * zq[1]).amax(1)  # every level lies in [lo, hi]
    h = ((hi - lo) / (nodes - 1))[:, None]
    z = lo[:, None] + h * torch.arange(nodes, dtype=torch.float64, device=xs.device)  # [P, G]
    a = (z[..., None] - m[:, None]) / sd[:, None]  # [P, G, K]
    cdf, pdf = torch.special.ndtr(a), torch.exp(-0.5 * a * a) / _TAU
    big_f = torch.cummax((w * cdf).sum(-1), 1).values  # F, kept monotone against rounding
    hf, g = h * (w * pdf / sd[:, None]).sum(-1), (w * (m[:, None] * cdf - sd[:, None] * pdf)).sum(-1)
    dy, hzf = big_f.diff(dim=1), z * hf
    coef = (big_f[:, :-1], dy, hf[:, :-1], 3 * dy - 2 * hf[:, :-1] - hf[:, 1:], hf[:, :-1] + hf[:, 1:] - 2 * dy,
            g[:, :-1], g.diff(dim=1), hzf[:, :-1], hzf[:, 1:])  # per grid interval
    j = (torch.searchsorted(big_f, q.expand(len(z), -1).contiguous(), right=True) - 1).clamp_(0, nodes - 2)
    y0, dy, c1, c2, c3, g0, dg, e0, e1 = (c.gather(1, j) for c in coef)
    r = q - y0  # solve c1 t + c2 t^2 + c3 t^3 = r on [0, 1]; h << sd makes the cubic nearly linear,
    t = (r / dy.clamp_min(1e-300)).clamp_(0, 1)  # so Newton from the linear guess squares a ~1e-2 error
    for _ in range(2):
        t = (t - (((c3 * t + c2) * t + c1) * t - r) / ((3 * c3 * t + 2 * c2) * t + c1).clamp_min(1e-300)).clamp_(0, 1)
    g_at = g0 + t * t * (3 - 2 * t) * dg + t * (1 - t) * ((1 - t) * e0 - t * e1)  # Hermite G(F^-1(q))
    first, second = (w * m).sum(1, keepdim=True), (w * (m * m + sd * sd)).sum(1)
    mass_mean = torch.cat([torch.zeros_like(first), g_at, first], 1).diff(dim=1)  # [P, n]
    return (xs * xs).mean(1) + second - 2 * (xs * mass_mean).sum(1)
