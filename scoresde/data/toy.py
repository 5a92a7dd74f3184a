"""Exact toy targets: Gaussian mixtures with closed-form densities and perturbed scores.

For p_0 = sum_k w_k N(mu_k, Sigma_k) and any SDE with marginals x_t = alpha x_0 + sigma z,

    p_t = sum_k w_k N(alpha mu_k, C_k),   C_k = alpha^2 Sigma_k + sigma^2 I,
    grad log p_t(x) = sum_k r_k(x) C_k^{-1} (alpha mu_k - x),   r_k = posterior responsibility,

so ``GaussianMixture.score_fn(sde)`` is an oracle score usable by every sampler with no training.
With Sigma_k = U_k diag(lam_k) U_k^T (eigendecomposed once), C_k^{-1} = U_k diag(1/(alpha^2 lam_k + sigma^2)) U_k^T,
which costs O(B K d^2) per call and handles a per-sample time ``t: [B]``.

A mixture lives on flat vectors of dimension d; ``event_shape`` lets the same mixture act on
``[B, C, H, W]`` tensors (flattened internally), so samplers can be tested on image shapes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

import torch

from .._checks import check_int, check_positive
from ..sdes import SDE

__all__ = [
    "GaussianMixture",
    "MixtureScore",
    "eight_gaussians",
    "grid_gaussians",
    "ncsn_two_modes",
    "anisotropic_mixture",
    "TARGETS",
]


class GaussianMixture:
    """p(x) = sum_k w_k N(x; mu_k, Sigma_k) on R^d, d = prod(event_shape).

    Args:
        weights: ``[K]``, positive, summing to 1 (within 1e-6).
        means: ``[K, d]``.
        covs: ``[K, d, d]`` symmetric positive definite, or ``[K]`` / ``[K, d]`` for isotropic /
            diagonal covariances (standard deviations are *not* accepted: pass variances).
        event_shape: shape of one sample, default ``(d,)``.

    Parameters are stored in float64; methods compute in the dtype of their input.
    """

    def __init__(self, weights, means, covs, event_shape: tuple[int, ...] | None = None):
        weights = torch.as_tensor(weights, dtype=torch.float64)
        means = torch.as_tensor(means, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if weights.ndim != 1 or weights.numel() < 1:
            raise ValueError(f"`weights` must be a non-empty 1-D tensor [K], got shape {tuple(weights.shape)}")
        k = weights.numel()
        if means.ndim != 2 or means.shape[0] != k:
            raise ValueError(f"`means` must have shape [K, d] = [{k}, d], got {tuple(means.shape)}")
        d = means.shape[1]
        if not bool(torch.isfinite(weights).all()) or bool((weights <= 0).any()):
            raise ValueError(f"`weights` must be finite and > 0, got {weights.tolist()}")
        if abs(float(weights.sum()) - 1.0) > 1e-6:
            raise ValueError(f"`weights` must sum to 1 (within 1e-6), got sum {float(weights.sum()):.8g}")
        if not bool(torch.isfinite(means).all()):
            raise ValueError("`means` must be finite")
        if covs.shape == (k,):
            covs = covs[:, None, None] * torch.eye(d, dtype=torch.float64)
        elif covs.shape == (k, d):
            covs = torch.diag_embed(covs)
        if covs.shape != (k, d, d):
            raise ValueError(f"`covs` must have shape [K, d, d], [K, d] or [K] with K={k}, d={d}, got {tuple(covs.shape)}")
        if not bool(torch.isfinite(covs).all()):
            raise ValueError("`covs` must be finite")
        if not torch.allclose(covs, covs.transpose(1, 2), atol=1e-10):
            raise ValueError("`covs` must be symmetric")
        lam, vecs = torch.linalg.eigh(covs)
        if bool((lam <= 0).any()):
            bad = int((lam <= 0).any(1).nonzero()[0])
            raise ValueError(
                f"`covs` must be positive definite; component {bad} has eigenvalues {lam[bad].tolist()}"
            )
        if event_shape is None:
            event_shape = (d,)
        event_shape = tuple(int(s) for s in event_shape)
        if math.prod(event_shape) != d:
            raise ValueError(f"`event_shape` {event_shape} must have {d} elements (the means' dimension)")
        self.weights, self.means, self.covs = weights, means, covs
        self.event_shape = event_shape
        self._lam, self._vecs = lam, vecs  # Sigma_k = U diag(lam) U^T
        self._chol = torch.linalg.cholesky(covs)
        self._isotropic = bool(torch.allclose(covs, lam[:, :1, None] * torch.eye(d, dtype=torch.float64), rtol=0, atol=0))
        self._cache: dict = {}

    # -- basic properties ---------------------------------------------------------------------
    @property
    def num_components(self) -> int:
        return self.weights.numel()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def mean(self) -> torch.Tensor:
        """Mixture mean sum_k w_k mu_k, float64 ``[d]``."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """Mixture covariance, float64 ``[d, d]``."""
        m = self.mean()
        second = torch.einsum("k,kij->ij", self.weights, self.covs + self.means[:, :, None] * self.means[:, None, :])
        return second - m[:, None] * m[None, :]

    def _params(self, like: torch.Tensor):
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = tuple(
                p.to(like.device, like.dtype) for p in (self.weights, self.means, self._lam, self._vecs)
            )
        return self._cache[key]

    # -- sampling -----------------------------------------------------------------------------
    def sample_with_labels(
        self, n: int, generator: torch.Generator | None = None, *, device=None, dtype=torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` samples ``[n, *event_shape]`` and their component labels ``[n]`` (int64)."""
        check_int("n", n)
        if device is None and generator is not None:
            device = generator.device
        labels = torch.multinomial(self.weights.to(device), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, device=device, dtype=torch.float64)
        chol = self._chol.to(device)
        x = self.means.to(device)[labels] + torch.einsum("nij,nj->ni", chol[labels], z)
        return x.to(dtype).reshape(n, *self.event_shape), labels

    def sample(self, n: int, generator: torch.Generator | None = None, *, device=None, dtype=torch.float32):
        """Draw ``n`` samples, shape ``[n, *event_shape]``."""
        return self.sample_with_labels(n, generator, device=device, dtype=dtype)[0]

    # -- densities and scores at noise level (alpha, sigma) ------------------------------------
    def component_log_probs(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """log w_k + log N(x; alpha mu_k, alpha^2 Sigma_k + sigma^2 I), ``[B, K]`` (per-sample ``alpha, sigma: [B]``)."""
        if self._isotropic:
            return self._isotropic_terms(x, alpha, sigma)[0]
        return self._component_terms(x, alpha, sigma)[0]

    def _isotropic_terms(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor):
        """Fast path for Sigma_k = lam_k I: O(B K d) work, no d x d rotations.

        v_k = alpha^2 lam_k + sigma^2, log N_k = -(||alpha mu_k - x||^2 / v_k + d log(2 pi v_k)) / 2, and
        the score sum_k r_k (alpha mu_k - x) / v_k = alpha (r / v) @ mu - x sum_k r_k / v_k.
        """
        w, mu, lam, _ = self._params(x)
        xf = x.reshape(x.shape[0], -1)
        a, s = alpha[:, None], sigma[:, None]
        var = a**2 * lam[None, :, 0] + s**2  # [B, K]
        # ||alpha mu_k - x||^2 summed directly, O(B K d) like the expanded form but without its
        # cancellation (|x|^2 - 2 alpha x.mu + alpha^2 |mu|^2 loses eps |x|^2 / var: 1e-4 in log p in
        # float32 at the modes of grid_gaussians)
        diff = a[:, :, None] * mu[None] - xf[:, None, :]  # [B, K, d]
        sq = (diff * diff).sum(-1)
        log_comp = torch.log(w)[None] - 0.5 * (sq / var + self.dim * torch.log(2 * math.pi * var))
        return log_comp, var, xf, a, mu

    def _component_terms(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor):
        """Per component: log w_k + log N(x; alpha mu_k, C_k) ``[B, K]`` and C_k^{-1}(alpha mu_k - x) ``[B, K, d]``."""
        w, mu, lam, vecs = self._params(x)
        xf = x.reshape(x.shape[0], -1)
        a, s = alpha[:, None, None], sigma[:, None, None]
        var = a**2 * lam[None] + s**2  # [B, K, d] eigenvalues of C_k
        diff = a * mu[None] - xf[:, None, :]  # [B, K, d]
        rot = torch.einsum("kji,bkj->bki", vecs, diff)  # U^T diff
        maha = (rot**2 / var).sum(-1)
        log_comp = torch.log(w)[None] - 0.5 * (maha + torch.log(var).sum(-1) + self.dim * math.log(2 * math.pi))
        grad = torch.einsum("kij,bkj->bki", vecs, rot / var)  # C^{-1} diff
        return log_comp, grad

    def _check_x(self, x: torch.Tensor) -> None:
        if x.ndim < 2 or x[0].numel() != self.dim:
            raise ValueError(f"`x` must have shape [B, *{self.event_shape}], got {tuple(x.shape)}")

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p_0(x), shape ``[B]``."""
        self._check_x(x)
        one = torch.ones(x.shape[0], device=x.device, dtype=x.dtype)
        return self.component_log_probs(x, one, 0 * one).logsumexp(1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Exact grad log p_0(x), shape of ``x``."""
        self._check_x(x)
        one = torch.ones(x.shape[0], device=x.device, dtype=x.dtype)
        return self.noisy_score(x, one, 0 * one)

    def noisy_log_prob(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """log p(x) for x = alpha x_0 + sigma z, x_0 ~ this mixture (per-sample ``alpha, sigma: [B]``)."""
        self._check_x(x)
        return self.component_log_probs(x, alpha, sigma).logsumexp(1)

    def noisy_score(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """grad_x log p(x) for x = alpha x_0 + sigma z; shape of ``x``."""
        self._check_x(x)
        if self._isotropic:
            log_comp, var, xf, a, mu = self._isotropic_terms(x, alpha, sigma)
            r_over_v = torch.softmax(log_comp, dim=1) / var
            return (a * (r_over_v @ mu) - xf * r_over_v.sum(1, keepdim=True)).reshape(x.shape)
        log_comp, grad = self._component_terms(x, alpha, sigma)
        r = torch.softmax(log_comp, dim=1)
        return torch.einsum("bk,bki->bi", r, grad).reshape(x.shape)

    def responsibilities(self, x: torch.Tensor, alpha=None, sigma=None) -> torch.Tensor:
        """Posterior component probabilities p(k | x) ``[B, K]`` (at noise level (alpha, sigma), default clean)."""
        self._check_x(x)
        one = torch.ones(x.shape[0], device=x.device, dtype=x.dtype)
        alpha = one if alpha is None else alpha
        sigma = 0 * one if sigma is None else sigma
        return torch.softmax(self.component_log_probs(x, alpha, sigma), dim=1)

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """Most probable component of each sample, ``[B]`` int64."""
        return self.responsibilities(x).argmax(1)

    def mode_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Fraction of samples assigned to each component (by maximum responsibility), float64 ``[K]``."""
        counts = torch.bincount(self.assign(x), minlength=self.num_components)
        return counts.to(torch.float64) / x.shape[0]

    # -- the perturbed mixture under an SDE ------------------------------------------------------
    def score_fn(self, sde: SDE) -> "MixtureScore":
        """The exact score of p_t under ``sde``: a ``score(x, t)`` usable by every sampler."""
        return MixtureScore(self, sde)

    def marginal(self, sde: SDE, t: float) -> "GaussianMixture":
        """The perturbed mixture p_t (alpha mu_k, alpha^2 Sigma_k + sigma^2 I) at one time ``t``."""
        tt = torch.tensor([float(t)], dtype=torch.float64)
        sde.check_time(tt)
        a, s = float(sde.alpha(tt)), float(sde.sigma(tt))
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(self.weights, a * self.means, a**2 * self.covs + s**2 * eye, self.event_shape)

    def component(self, k: int) -> "GaussianMixture":
        """Component ``k`` alone, as a one-component mixture (its exact conditional target)."""
        check_int("k", k, minimum=0, maximum=self.num_components - 1)
        return GaussianMixture(torch.ones(1, dtype=torch.float64), self.means[k : k + 1], self.covs[k : k + 1], self.event_shape)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.num_components}, d={self.dim}, event_shape={self.event_shape})"


@dataclass(frozen=True)
class MixtureScore:
    """Exact score of a Gaussian mixture perturbed by an SDE: ``score(x: [B, *D], t: [B]) -> [B, *D]``."""

    mixture: GaussianMixture
    sde: SDE

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self._check(x, t)
        return self.mixture.noisy_score(x, self.sde.alpha(t).to(x.dtype), self.sde.sigma(t).to(x.dtype))

    def log_prob(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Exact log p_t(x), shape ``[B]``."""
        self._check(x, t)
        return self.mixture.noisy_log_prob(x, self.sde.alpha(t).to(x.dtype), self.sde.sigma(t).to(x.dtype))

    def _check(self, x: torch.Tensor, t: torch.Tensor) -> None:
        # Shapes only (no host synchronisation): cheap enough for every call of a sampling loop.
        if not torch.is_tensor(x) or x.ndim < 2 or tuple(x.shape[1:]) != tuple(self.mixture.event_shape):
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"`x` must have shape [B, *{tuple(self.mixture.event_shape)}] (the mixture's event "
                             f"shape), got {got}")
        if torch.is_tensor(t) and t.ndim == 1 and t.shape[0] != x.shape[0]:
            raise ValueError(f"`t` must have shape [B] = [{x.shape[0]}], got {tuple(t.shape)}")


# -- the standard targets --------------------------------------------------------------------------


def eight_gaussians(radius: float = 2.0 * math.sqrt(2.0), std: float = 0.5 / math.sqrt(2.0)) -> GaussianMixture:
    """8 equal-weight isotropic Gaussians on a ring (FFJORD's "8gaussians": radius 2 sqrt 2, std 0.354)."""
    check_positive("radius", radius)
    check_positive("std", std)
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    f64 = torch.float64
    return GaussianMixture(torch.full((8,), 1 / 8, dtype=f64), means, torch.full((8,), std**2, dtype=f64))


def grid_gaussians(side: int = 5, spacing: float = 2.0, std: float = 0.2) -> GaussianMixture:
    """``side`` x ``side`` equal-weight isotropic Gaussians on a centred square grid (default 5x5, spacing 2, std 0.2)."""
    check_int("side", side)
    check_positive("spacing", spacing)
    check_positive("std", std)
    coords = (torch.arange(side, dtype=torch.float64) - (side - 1) / 2) * spacing
    gx, gy = torch.meshgrid(coords, coords, indexing="ij")
    means = torch.stack([gx.flatten(), gy.flatten()], 1)
    k = side * side
    f64 = torch.float64
    return GaussianMixture(torch.full((k,), 1 / k, dtype=f64), means, torch.full((k,), std**2, dtype=f64))


def ncsn_two_modes(dim: int = 2) -> GaussianMixture:
    """Song & Ermon 2019, section 3.2: p = 1/5 N((-5, -5), I) + 4/5 N((5, 5), I).

    Well-separated modes with unequal weights: plain Langevin with the exact score cannot recover
    the 0.2 / 0.8 split (the score is blind to relative weights away from the low-density
    region between the modes), annealed Langevin can.
    """
    check_int("dim", dim)
    means = torch.stack([torch.full((dim,), -5.0), torch.full((dim,), 5.0)]).to(torch.float64)
    return GaussianMixture(torch.tensor([0.2, 0.8], dtype=torch.float64), means, torch.ones(2, dtype=torch.float64))


def anisotropic_mixture() -> GaussianMixture:
    """Three rotated, anisotropic components with unequal weights 0.5 / 0.3 / 0.2.

    Standard deviations (1.0, 0.15) rotated by 30 degrees, (0.7, 0.2) by -60 degrees and
    (0.4, 0.4) unrotated, centred at (-2, -1), (2, 0) and (0, 2.5).
    """

    def rotated(sd_major: float, sd_minor: float, degrees: float) -> torch.Tensor:
        th = math.radians(degrees)
        r = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]], dtype=torch.float64)
        return r @ torch.diag(torch.tensor([sd_major**2, sd_minor**2], dtype=torch.float64)) @ r.T

    means = torch.tensor([[-2.0, -1.0], [2.0, 0.0], [0.0, 2.5]], dtype=torch.float64)
    covs = torch.stack([rotated(1.0, 0.15, 30.0), rotated(0.7, 0.2, -60.0), rotated(0.4, 0.4, 0.0)])
    return GaussianMixture(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), means, covs)


TARGETS = MappingProxyType({
    "eight_gaussians": eight_gaussians,
    "grid_gaussians": grid_gaussians,
    "ncsn_two_modes": ncsn_two_modes,
    "anisotropic_mixture": anisotropic_mixture,
})
"""Read-only name -> factory map of the exact toy targets (the config tree is the real registry)."""
