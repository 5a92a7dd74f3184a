"""Predictors: one step of a reverse-time process from t to t_next < t, given the score s = s(x, t).

Each predictor is a frozen dataclass with ``step(x, score, sde, t, t_next, generator) -> (x, x_mean)``,
``t`` and ``t_next`` of shape ``[B]``, and uses only the abstract SDE interface, so it works for
every SDE.  Shapes ``[B, *D]``.  z ~ N(0, I) is drawn fresh from ``generator`` at each step.

With (a, b) the exact forward transition x_t = a x_{t_next} + b z (``SDE.transition``):

* ``EulerMaruyamaPredictor``:  x_mean = x - [f(x, t) - g(t)^2 s] dt,  x = x_mean + g(t) sqrt(dt) z,  dt = t - t_next.
* ``ReverseDiffusionPredictor`` (Song et al. 2021, eq. 46):  x_mean = x - f + G^2 s,  x = x_mean + G z,
  with f = (a - 1) x, G = b the forward discretisation.
* ``AncestralPredictor`` (Ho et al. 2020; Song et al. 2021, App. F):  x_mean = (x + b^2 s) / a,
  x = x_mean + std z with std^2 = b^2 ("large", DDPM's sigma_t^2 = beta_t) or the posterior
  variance b^2 sigma(t_next)^2 / sigma(t)^2 ("small", DDPM's beta-tilde; SMLD's VE rule).
  score_sde uses "large" for VP and "small" for VE; here one rule serves every SDE.
* ``DDIMPredictor`` (Song, Meng & Ermon 2021, eq. 12): x0 = (x + sigma^2 s)/alpha, eps = -sigma s,
  c = eta * b sigma(t_next)/sigma(t), x = alpha(t_next) x0 + sqrt(sigma(t_next)^2 - c^2) eps + c z.
  For VP, c is DDIM's sigma_t(eta); eta = 0 is deterministic.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

import torch

from .._checks import append_dims, check_in, check_probability
from ..bridges import tweedie
from ..sdes import SDE
from .base import randn_like

__all__ = ["Predictor", "EulerMaruyamaPredictor", "ReverseDiffusionPredictor", "AncestralPredictor", "DDIMPredictor"]


class Predictor(abc.ABC):
    """One step of the reverse process from ``t`` to ``t_next`` given the score at (x, t)."""

    @abc.abstractmethod
    def step(
        self, x: torch.Tensor, score: torch.Tensor, sde: SDE, t: torch.Tensor, t_next: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (x, x_mean) at ``t_next``; x_mean is the step without its noise."""


@dataclass(frozen=True)
class EulerMaruyamaPredictor(Predictor):
    """Euler–Maruyama on the reverse SDE (or, with ``probability_flow``, Euler on the probability-flow ODE)."""

    probability_flow: bool = False

    def step(self, x, score, sde, t, t_next, generator):
        dt = append_dims(t - t_next, x.ndim)
        x_mean = x - sde.reverse_drift(x, t, score, probability_flow=self.probability_flow) * dt
        if self.probability_flow:
            return x_mean, x_mean
        g = append_dims(sde.diffusion(t).to(x.dtype), x.ndim)
        return x_mean + g * dt.sqrt() * randn_like(x, generator), x_mean


@dataclass(frozen=True)
class ReverseDiffusionPredictor(Predictor):
    """Reverse diffusion: the forward discretisation x_{i+1} = x_i + f_i + G_i z run backwards."""

    def step(self, x, score, sde, t, t_next, generator):
        f, g = sde.discretize(x, t_next, t)
        g = append_dims(g.to(x.dtype), x.ndim)
        x_mean = x - f + g**2 * score
        return x_mean + g * randn_like(x, generator), x_mean


@dataclass(frozen=True)
class AncestralPredictor(Predictor):
    """Ancestral sampling; ``variance`` is "small" (posterior, beta-tilde) or "large" (beta)."""

    variance: str = "small"

    def __post_init__(self):
        check_in("variance", self.variance, ("small", "large"))

    def step(self, x, score, sde, t, t_next, generator):
        a, b = sde.transition(t_next, t)
        # (x + b^2 s)/a = E[x_{t_next} | x_t]: Tweedie's formula for the transition x_t = a x_{t_next} + b z
        x_mean = tweedie(x, score, append_dims(a, x.ndim), append_dims(b, x.ndim))
        std = b if self.variance == "large" else b * sde.sigma(t_next) / sde.sigma(t)
        return x_mean + append_dims(std, x.ndim) * randn_like(x, generator), x_mean


@dataclass(frozen=True)
class DDIMPredictor(Predictor):
    """DDIM's generalised step with stochasticity ``eta`` in [0, 1] (0: deterministic)."""

    eta: float = 0.0

    def __post_init__(self):
        check_probability("eta", self.eta)

    def step(self, x, score, sde, t, t_next, generator):
        alpha, sigma = sde.alpha(t), sde.sigma(t)
        alpha_next, sigma_next = sde.alpha(t_next), sde.sigma(t_next)
        x0 = tweedie(x, score, append_dims(alpha, x.ndim), append_dims(sigma, x.ndim))
        eps = -append_dims(sigma, x.ndim) * score
        _, b = sde.transition(t_next, t)
        c = self.eta * b * sigma_next / sigma
        # c <= sigma_next for eta <= 1; the clamp only absorbs round-off
        direction = (sigma_next**2 - c**2).clamp_min(0).sqrt()
        x_mean = append_dims(alpha_next, x.ndim) * x0 + append_dims(direction, x.ndim) * eps
        if self.eta == 0:
            return x_mean, x_mean
        return x_mean + append_dims(c, x.ndim) * randn_like(x, generator), x_mean
