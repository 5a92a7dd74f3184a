"""Denoising score matching (Vincent 2011; Song et al. 2021, eq. 7) as small callables.

A loss returns the **unreduced per-sample loss** ``[B]`` (EDM's ``training/loss.py`` style); the
caller averages.  For x_0 ~ data, t ~ U(t_min, T), z ~ N(0, I) and x_t = alpha(t) x_0 + sigma(t) z,

    "sigma2"      (default)   l = || sigma(t) s(x_t, t) + z ||^2                    lambda(t) = sigma(t)^2
    "likelihood"              l = g(t)^2 || s(x_t, t) + z / sigma(t) ||^2           lambda(t) = g(t)^2

with ||.||^2 **summed** over the data dimensions (score_sde's ``reduce_mean=False``).  The second
is computed as (g^2 / sigma^2) || sigma s + z ||^2, one formula for both.  Only the abstract SDE
interface (alpha, sigma, diffusion, t_min, T) is used, so the loss works for every SDE.

With an eps-network, s = -eps_hat / sigma (``bridges.eps_to_score``) and the "sigma2" loss is
DDPM's "simple" loss || eps_hat - z ||^2.  Its minimiser over s is the exact score of p_t, and its
minimum is E||sigma s* + z||^2 = d - sigma^2 E||s*(x_t)||^2 (Tweedie: E[z | x_t] = -sigma s*); for
data N(0, s0^2 I) in d dims this is d alpha^2 s0^2 / (alpha^2 s0^2 + sigma^2).

Randomness is injected: t is drawn first, then z, both from ``generator`` (so a run is fixed by
the generator's state).  ``t`` and ``z`` may also be passed explicitly (``t`` is then checked to
lie in [t_min, T], which costs a host synchronisation; drawn times skip that check).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .._checks import append_dims, check_generator, check_in, check_positive, times_trusted, trusted_times
from ..sdes import SDE

__all__ = ["DSMLoss", "WEIGHTINGS"]

WEIGHTINGS = ("sigma2", "likelihood", "edm")


@dataclass(frozen=True)
class DSMLoss:
    """Denoising score matching loss ``loss(score_fn, x0, generator) -> [B]``.

    Args:
        sde: the forward SDE defining alpha(t), sigma(t), g(t) and [t_min, T].
        weighting: ``"sigma2"`` (lambda = sigma^2, default), ``"likelihood"`` (lambda = g^2) or
            ``"edm"`` (EDM's lambda = (sigma~^2 + sigma_d^2) / (sigma~ sigma_d)^2 on ||D - x0||^2, Karras
            et al. 2022 Table 1; since D - x0 = sigma~ (sigma s + z) in VE-ised coordinates, this is
            lambda = sigma^2 (1 + sigma~^2 / sigma_d^2) here, sigma~ = sigma / alpha).
        sigma_data: sigma_d of the "edm" weighting.
        time_sampler: None (t ~ U(t_min, T)) or a ``scoresde.training.recipes`` time sampler (``LogNormalSigma``,
            ``ImportanceTime``, ...): drawn times come from it and the loss is multiplied by its
            ``importance_weight`` (if not None).
    """

    sde: SDE
    weighting: str = "sigma2"
    sigma_data: float = 1.0
    time_sampler: Any = None

    def __post_init__(self):
        if not isinstance(self.sde, SDE):
            raise TypeError(f"`sde` must be a scoresde.sdes.SDE, got {type(self.sde).__name__}")
        check_in("weighting", self.weighting, WEIGHTINGS)
        check_positive("sigma_data", self.sigma_data)
        if self.time_sampler is not None and not callable(getattr(self.time_sampler, "sample", None)):
            raise TypeError(f"`time_sampler` must have sample(sde, n, generator, dtype), got {self.time_sampler!r}")

    def sample_time(self, batch_size: int, generator: torch.Generator, *, dtype=torch.float32) -> torch.Tensor:
        """t ~ U(t_min, T) (or from ``time_sampler``), shape ``[batch_size]``, on ``generator.device``."""
        if self.time_sampler is not None:
            return self.time_sampler.sample(self.sde, batch_size, generator, dtype=dtype)
        u = torch.rand(batch_size, generator=generator, device=generator.device, dtype=dtype)
        return self.sde.t_min + (self.sde.T - self.sde.t_min) * u

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) / sigma(t)^2, ``[B]``: 1 for "sigma2", g(t)^2 / sigma(t)^2 for "likelihood",
        1 + sigma~(t)^2 / sigma_data^2 for "edm"."""
        if self.weighting == "sigma2":
            return torch.ones_like(t)
        if self.weighting == "edm":
            return 1 + (self.sde.sigma_ve(t) / self.sigma_data) ** 2
        return (self.sde.diffusion(t) / self.sde.sigma(t)) ** 2

    def __call__(
        self,
        score_fn: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        t: torch.Tensor | None = None,
        z: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-sample loss ``[B]`` for clean data ``x0: [B, *D]``.

        ``score_fn(x, t)`` (or ``score_fn(x, t, labels=labels)`` when ``labels`` is given) is the
        model's score.  ``t: [B]`` and ``z: [B, *D]`` are drawn from ``generator`` unless given.
        """
        if not torch.is_tensor(x0):
            raise TypeError(f"`x0` must be a tensor [B, *D], got {type(x0).__name__}")
        if x0.ndim < 2:
            raise ValueError(f"`x0` must be batch-first [B, *D], got shape {tuple(x0.shape)}")
        if not x0.dtype.is_floating_point:
            raise TypeError(f"`x0` must have a floating-point dtype (convert the data with .float()), got {x0.dtype}")
        if t is None or z is None:
            generator = check_generator(generator, x0.device)
        drawn = t is None
        if t is None:
            t = self.sample_time(x0.shape[0], generator, dtype=x0.dtype)
        else:
            if t.shape != x0.shape[:1]:
                raise ValueError(f"`t` must have shape [B] = [{x0.shape[0]}], got {tuple(t.shape)}")
            if not times_trusted():  # the training loop's drawn times (scaling.ScaledStep): no host sync
                self.sde.check_time(t)
        if z is None:
            z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        elif z.shape != x0.shape:
            raise ValueError(f"`z` must have the shape of `x0` {tuple(x0.shape)}, got {tuple(z.shape)}")
        # The times are checked (or drawn in range) above, so the SDE's and the model's own time
        # checks, which synchronise with the device, are skipped.
        with trusted_times():
            x_t = self.sde.perturb(x0, t, z)  # alpha(t) x0 + sigma(t) z
            sigma = append_dims(self.sde.sigma(t).to(x0.dtype), x0.ndim)
            score = score_fn(x_t, t) if labels is None else score_fn(x_t, t, labels=labels)
            loss = (sigma * score + z).flatten(1).pow(2).sum(1)
            if self.weighting != "sigma2":
                loss = loss * self.weight(t).to(loss.dtype)
            if drawn and self.time_sampler is not None:
                importance = self.time_sampler.importance_weight(self.sde, t)
                if importance is not None:
                    loss = loss * importance.to(loss.dtype)
        return loss
