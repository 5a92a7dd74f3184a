"""Bridges between parameterisations; everything reduces to ``score(x: [B, *D], t: [B]) -> [B, *D]``.

Two coordinate conventions (``docs/conventions.md``):

* **VP coordinates** (score_sde, DDPM, diffusers): the model sees x_t = alpha(t) x_0 + sigma(t) z and t.
    eps:       score = -eps / sigma(t)                      eps = -sigma(t) score
    denoiser:  score = (alpha(t) x0_hat - x) / sigma(t)^2    x0_hat = (x + sigma(t)^2 score) / alpha(t)
* **VE-ised coordinates** (EDM, k-diffusion): the model sees x~ = x / alpha(t) and the noise level
  sigma~ = sigma(t) / alpha(t), i.e. it is called as ``model(x / alpha, sigma~)`` with sigma~ of shape ``[B]``.
  Since grad_x log p_t(x) = (1/alpha) grad_x~ log p~(x~) and grad_x~ log p~ = (D - x~)/sigma~^2 = -eps/sigma~:
    eps:       score = -eps(x~, sigma~) / sigma(t)          (the same eps as in VP coordinates)
    denoiser:  score = (alpha D(x~, sigma~) - x) / sigma(t)^2

The two eps conventions differ only in what the network is fed; mixing them (feeding x instead of
x / alpha) is the classic bug, so every bridge names its convention.  The reverse bridges
(``score_to_*``) let a score model be used where an eps-model or denoiser is expected, e.g. with
k-diffusion-style code; in VE-ised coordinates they need t(sigma~), from ``SDE.t_from_sigma_ve``.

Each bridge is a small frozen dataclass, so it pickles, compares and prints, and the round trips
``score_to_eps(eps_to_score(f))`` are the identity up to floating point.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ._checks import append_dims
from .sdes import SDE, ScoreFn

__all__ = [
    "eps_to_score",
    "score_to_eps",
    "denoiser_to_score",
    "score_to_denoiser",
    "ve_eps_to_score",
    "score_to_ve_eps",
    "ve_denoiser_to_score",
    "score_to_ve_denoiser",
    "Bridge",
    "tweedie",
    "tweedie_denoise",
    "edm_coefficients",
]

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _coeffs(sde: SDE, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (append_dims(sde.alpha(t).to(x.dtype), x.ndim), append_dims(sde.sigma(t).to(x.dtype), x.ndim))


def tweedie(x: torch.Tensor, score: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """Tweedie's formula (VP coordinates): x0_hat = E[x_0 | x_t = x] = (x + sigma^2 score) / alpha.

    ``score`` is the score at (x, t); ``alpha``, ``sigma`` are alpha(t), sigma(t) as python floats or
    as tensors that broadcast against ``x`` (e.g. ``[B]`` through ``append_dims``).  The one place the
    formula is written: the denoiser bridges, the samplers' final denoise, ``Preconditioned.denoise``.
    """
    return (x + sigma**2 * score) / alpha


def tweedie_denoise(score: torch.Tensor, sde: SDE, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``tweedie`` with alpha(t), sigma(t) taken from the ``[B]`` time tensor ``t`` in ``x``'s dtype."""
    return tweedie(x, score, *_coeffs(sde, t, x))


def edm_coefficients(sde: SDE, t: torch.Tensor, sigma_data: float = 1.0) -> dict[str, torch.Tensor]:
    """EDM's preconditioning (Karras et al. 2022, Table 1) at times ``t [B]``, all ``[B]`` in ``t``'s dtype.

    In VE-ised coordinates x~ = x / alpha, sigma~ = sigma(t) / alpha(t), with sigma_d = ``sigma_data``:

        c_in = 1 / sqrt(sigma~^2 + sigma_d^2)    c_noise = ln(sigma~) / 4
        c_skip = sigma_d^2 / (sigma~^2 + sigma_d^2)    c_out = sigma~ sigma_d c_in

    Also ``alpha``, ``sigma``, ``sigma_ve`` = sigma~, and for VP coordinates ``var`` = sigma^2 + alpha^2
    sigma_d^2 (the variance of x_t for data of std sigma_d), ``c_in_vp`` = 1 / sqrt(var) = c_in / alpha
    (a network fed c_in x~ is fed c_in_vp x) and ``std_ve`` = sqrt(sigma~^2 + sigma_d^2).  The one
    place these are computed: ``ScoreMLP`` and ``Preconditioned`` both read them from here.
    """
    alpha, sigma = sde.alpha(t), sde.sigma(t)
    sigma_ve = sigma / alpha
    s2 = sigma_data**2
    var = sigma**2 + alpha**2 * s2
    var_ve = sigma_ve**2 + s2
    c_in = torch.rsqrt(var_ve)
    # std_ve and c_in = 1/std_ve both: Preconditioned's score divides by std_ve, c_out multiplies by c_in
    # (the arithmetic of the models' outputs so far, kept bit for bit)
    return {"alpha": alpha, "sigma": sigma, "sigma_ve": sigma_ve, "var": var, "c_in_vp": torch.rsqrt(var),
            "std_ve": torch.sqrt(var_ve), "c_in": c_in, "c_noise": 0.25 * torch.log(sigma_ve),
            "c_skip": s2 / var_ve, "c_out": sigma_ve * sigma_data * c_in}


@dataclass(frozen=True)
class Bridge:
    """``fn`` adapted to another parameterisation under ``sde``; ``kind`` names the conversion."""

    fn: ModelFn
    sde: SDE
    kind: str

    def __post_init__(self):
        if not isinstance(self.sde, SDE):
            raise TypeError(f"`sde` must be a scoresde.sdes.SDE (e.g. VPSDE()), got {type(self.sde).__name__} {self.sde!r}")
        if self.kind not in _CONVERSIONS:
            raise ValueError(f"`kind` must be one of {sorted(_CONVERSIONS)}, got {self.kind!r}")
        if not callable(self.fn):
            raise TypeError(f"`fn` must be callable as fn(x, t), got {type(self.fn).__name__}")

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return _CONVERSIONS[self.kind](self.fn, self.sde, x, t)


def _eps_to_score(fn, sde, x, t):
    return -fn(x, t) / _coeffs(sde, t, x)[1]


def _score_to_eps(fn, sde, x, t):
    return -_coeffs(sde, t, x)[1] * fn(x, t)


def _denoiser_to_score(fn, sde, x, t):
    alpha, sigma = _coeffs(sde, t, x)
    return (alpha * fn(x, t) - x) / sigma**2


def _score_to_denoiser(fn, sde, x, t):
    return tweedie_denoise(fn(x, t), sde, x, t)


def _ve_eps_to_score(fn, sde, x, t):
    alpha, sigma = _coeffs(sde, t, x)
    return -fn(x / alpha, sde.sigma_ve(t).to(x.dtype)) / sigma


def _ve_denoiser_to_score(fn, sde, x, t):
    alpha, sigma = _coeffs(sde, t, x)
    return (alpha * fn(x / alpha, sde.sigma_ve(t).to(x.dtype)) - x) / sigma**2


def _score_to_ve_eps(fn, sde, x_ve, sigma_ve):
    # x_ve = x / alpha at noise level sigma_ve; recover t and x, then eps = -sigma s.
    t = sde.t_from_sigma_ve(sigma_ve)
    alpha, sigma = _coeffs(sde, t, x_ve)
    return -sigma * fn(alpha * x_ve, t)


def _score_to_ve_denoiser(fn, sde, x_ve, sigma_ve):
    t = sde.t_from_sigma_ve(sigma_ve)
    alpha, sigma = _coeffs(sde, t, x_ve)
    x = alpha * x_ve
    return tweedie(x, fn(x, t), alpha, sigma)


_CONVERSIONS = {
    "eps->score": _eps_to_score,
    "score->eps": _score_to_eps,
    "denoiser->score": _denoiser_to_score,
    "score->denoiser": _score_to_denoiser,
    "ve_eps->score": _ve_eps_to_score,
    "ve_denoiser->score": _ve_denoiser_to_score,
    "score->ve_eps": _score_to_ve_eps,
    "score->ve_denoiser": _score_to_ve_denoiser,
}


# The public constructors, one per conversion.  They share one shape (``duplicates`` lists them) on
# purpose: each is a named function with its own signature and its formula in the docstring, which
# is what a user reads in help() and the docs; the arithmetic is written once, in _CONVERSIONS.


def eps_to_score(eps_fn: ModelFn, sde: SDE) -> ScoreFn:
    """VP coordinates: score(x, t) = -eps(x, t) / sigma(t) (DDPM's eps-network as a score)."""
    return Bridge(eps_fn, sde, "eps->score")


def score_to_eps(score_fn: ScoreFn, sde: SDE) -> ModelFn:
    """VP coordinates: eps(x, t) = -sigma(t) score(x, t)."""
    return Bridge(score_fn, sde, "score->eps")


def denoiser_to_score(denoiser_fn: ModelFn, sde: SDE) -> ScoreFn:
    """VP coordinates: score(x, t) = (alpha(t) x0_hat(x, t) - x) / sigma(t)^2 (Tweedie's formula inverted)."""
    return Bridge(denoiser_fn, sde, "denoiser->score")


def score_to_denoiser(score_fn: ScoreFn, sde: SDE) -> ModelFn:
    """VP coordinates: x0_hat(x, t) = (x + sigma(t)^2 score(x, t)) / alpha(t) (Tweedie's formula)."""
    return Bridge(score_fn, sde, "score->denoiser")


def ve_eps_to_score(eps_fn: ModelFn, sde: SDE) -> ScoreFn:
    """VE-ised coordinates: ``eps_fn(x / alpha, sigma_ve)`` with sigma_ve = sigma/alpha; score = -eps / sigma(t)."""
    return Bridge(eps_fn, sde, "ve_eps->score")


def ve_denoiser_to_score(denoiser_fn: ModelFn, sde: SDE) -> ScoreFn:
    """VE-ised coordinates (EDM's D(x~, sigma~)): score(x, t) = (alpha D(x / alpha, sigma_ve) - x) / sigma(t)^2."""
    return Bridge(denoiser_fn, sde, "ve_denoiser->score")


def score_to_ve_eps(score_fn: ScoreFn, sde: SDE) -> ModelFn:
    """VE-ised coordinates: eps(x~, sigma~) = -sigma(t) score(alpha x~, t) with t = t(sigma~)."""
    return Bridge(score_fn, sde, "score->ve_eps")


def score_to_ve_denoiser(score_fn: ScoreFn, sde: SDE) -> ModelFn:
    """VE-ised coordinates: D(x~, sigma~) = x~ + sigma~^2 score(alpha x~, t) alpha with t = t(sigma~).

    Equivalently (x + sigma^2 score(x, t)) / alpha with x = alpha x~, which is how it is computed.
    """
    return Bridge(score_fn, sde, "score->ve_denoiser")
