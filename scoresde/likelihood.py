"""Log-likelihood by the probability-flow ODE (Song et al. 2021, sec. 4.3 and App. D.2; Chen et al. 2018).

Along a solution x(t) of the probability-flow ODE dx/dt = f~(x, t) = f(x, t) - g(t)^2 s(x, t) / 2,
the instantaneous change of variables gives d log p_t(x(t)) / dt = -div f~(x(t), t).  Integrating the
augmented ODE

    d/dt [x; delta] = [f~(x, t); div f~(x, t)],    x(t_eps) = x,  delta(t_eps) = 0,

**forwards** from t_eps to T gives x_T = x(T) and delta(T) = int_{t_eps}^T div f~ dt, and then

    log p_{t_eps}(x) = log p_T(x_T) + delta(T)          (sign: + the integral of the divergence)

with log p_T replaced by the prior N(0, prior_std^2 I) (``SDE.prior_log_prob``), or by any
``prior_log_prob`` passed in (e.g. the exact p_T of a toy mixture, to remove the prior mismatch).

**Which density is returned.** The ODE starts at t_eps (default ``sde.t_min``), so the result is
the model's log p_{t_eps}(x): the density of x as a sample of the *perturbed* marginal at t_eps, not
of clean data.  For VP, sigma(t_min = 1e-5)^2 = 1e-6; for VE, t_min = 0 but sigma(0) = sigma_min > 0,
so even at t = 0 the VE marginal is the data convolved with N(0, sigma_min^2 I).  The gap
log p_{t_eps} - log p_0 is O(sigma(t_eps)^2 / (data scale)^2) per point and of second order on average
(the tests quantify it on the toy mixtures).  score_sde adds no correction either (it evaluates at
eps = 1e-5 and reports that as the data likelihood).

**Divergence.** ``"exact"``: one backward pass per data dimension (d passes per evaluation).
``"hutchinson"`` (Hutchinson 1989; Skilling 1989; FFJORD): div f~ ~ mean_p eps_p^T (d f~/dx) eps_p
with Rademacher or Gaussian probes eps_p (E[eps eps^T] = I), one backward pass per probe.  The probes
are drawn once from ``generator`` and kept fixed for the whole solve (as FFJORD and score_sde do),
so the integrand is a smooth function of t; the estimate is unbiased for log p (the x trajectory does
not depend on the probes) up to the solver's error.  ``"auto"`` (default) is exact for
d <= ``exact_max_dim`` (16), Hutchinson above.  Both assume the score of sample i depends on x_i only
(no batch coupling such as batch norm in training mode).

**Integrator.** ``method`` one of scipy's "RK45" (default), "RK23", "DOP853", "Radau", "BDF", "LSODA":
``scipy.integrate.solve_ivp`` on the flattened batch [x; delta] in float64 with ``rtol``, ``atol``
(score_sde: RK45, 1e-5, 1e-5); one solver for the whole batch, so the steps are chosen for the worst
sample and results depend (slightly) on the batch, as in ``samplers.ProbabilityFlowODE``.  NFE = the
solver's ``nfev``.  Or fixed steps in torch on ``num_steps`` intervals uniform in t from t_eps to T:
"euler" (NFE = num_steps), "heun" (2 num_steps), "rk4" (4 num_steps); delta accumulates in float64.
Both paths are ``scoresde.integrators`` (``solve_adaptive``, ``rk_step``), shared with
``samplers.ProbabilityFlowODE``; tolerances have a floor of 100 float64 eps.
The score is evaluated in ``x``'s dtype: pass float64 ``x`` for comparisons with exact densities.

Gradients are switched on inside (samplers run under ``no_grad``); do not call under
``torch.inference_mode``.  Only ``x`` is differentiated: no ``.grad`` of model parameters is touched.

Units: nats.  Bits per dimension only with an explicit dequantisation offset (``bits_per_dim``):
score_sde's offset of 7 bits is right for 8-bit images scaled to [-1, 1] only (its issue #51).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from . import integrators
from ._checks import check_generator, check_in, check_int, trusted_times
from .sdes import SDE, ScoreFn

__all__ = [
    "ProbabilityFlowLikelihood",
    "LikelihoodResult",
    "log_likelihood",
    "bits_per_dim",
    "pf_ode_divergence",
    "draw_probes",
]

_SCIPY_METHODS = integrators.SCIPY_METHODS
_FIXED_STAGES = integrators.STAGES
DIVERGENCES = ("auto", "exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


@dataclass(frozen=True, eq=False)
class LikelihoodResult:
    """Per-sample negative log-likelihood ``nll = -log p_{t_eps}(x)`` in nats, float64 ``[B]``.

    ``prior_log_prob`` (log p_T(x_T)) and ``delta_log_prob`` (int_{t_eps}^T div f~ dt) are its two
    terms, float64 ``[B]``; ``latent`` is x_T = x(T), the ODE's encoding of x ``[B, *D]`` (so another
    prior can be applied afterwards: nll' = -(log p'(latent) + delta_log_prob)); ``nfe`` counts velocity evaluations (each with d or num_probes backward
    passes); ``divergence`` is "exact" or "hutchinson"; ``dim`` = d.
    """

    nll: torch.Tensor
    prior_log_prob: torch.Tensor
    delta_log_prob: torch.Tensor
    latent: torch.Tensor
    nfe: int
    t_eps: float
    divergence: str
    dim: int

    @property
    def mean(self) -> float:
        """Mean NLL over the batch (nats)."""
        return float(self.nll.mean())

    @property
    def stderr(self) -> float:
        """Standard error of ``mean``: std(nll, ddof=1) / sqrt(B) (nan for B = 1)."""
        n = self.nll.numel()
        return float(self.nll.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")

    def bits_per_dim(self, *, dequantization_offset: float) -> torch.Tensor:
        """``bits_per_dim(self.nll, self.dim, dequantization_offset=...)``, ``[B]``."""
        return bits_per_dim(self.nll, self.dim, dequantization_offset=dequantization_offset)


def bits_per_dim(nll: torch.Tensor, dim: int, *, dequantization_offset: float) -> torch.Tensor:
    """nll / (dim ln 2) + ``dequantization_offset`` (bits per dimension), shape of ``nll``.

    The offset turns a continuous density into a discrete one under uniform dequantisation:
    with 2^b levels mapped onto an interval of width w, it is b - log2(w), e.g. 8 for 8-bit data
    in [0, 1] and 7 for 8-bit data in [-1, 1] (score_sde's hard-coded 7).  Pass 0 for continuous
    data (plain nats -> bits per dimension).  There is deliberately no default.
    """
    check_int("dim", dim)
    if isinstance(dequantization_offset, bool) or not isinstance(dequantization_offset, (int, float)) \
            or not math.isfinite(dequantization_offset):
        raise ValueError(f"`dequantization_offset` must be a finite number (bits), got {dequantization_offset!r}")
    return nll / (dim * math.log(2.0)) + dequantization_offset


def draw_probes(
    shape: tuple[int, ...], num_probes: int, kind: str, generator: torch.Generator, *,
    device=None, dtype=torch.float64,
) -> torch.Tensor:
    """``num_probes`` Hutchinson probes for a batch of ``shape`` = (B, *D): ``[num_probes, B, *D]``.

    "rademacher": +-1 with probability 1/2 each; "gaussian": N(0, 1).  Both have E[eps eps^T] = I.
    """
    check_in("probe", kind, PROBES)
    check_int("num_probes", num_probes)
    full = (num_probes, *shape)
    if kind == "gaussian":
        return torch.randn(full, generator=generator, device=device, dtype=dtype)
    return torch.randint(0, 2, full, generator=generator, device=device).to(dtype) * 2 - 1


def pf_ode_divergence(
    score_fn: ScoreFn, sde: SDE, x: torch.Tensor, t: torch.Tensor, probes: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Probability-flow velocity f~(x, t) ``[B, *D]`` and its divergence ``[B]`` (both detached).

    ``probes=None``: exact divergence, sum_i d f~_i / d x_i, one backward pass per dimension.
    ``probes: [P, B, *D]``: Hutchinson, mean_p sum_i eps_p,i (eps_p^T d f~/dx)_i, one backward pass per probe.
    Gradients are enabled here whatever the caller's grad mode.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        score = score_fn(x, t)
        if not torch.is_tensor(score) or score.shape != x.shape:
            got = tuple(score.shape) if torch.is_tensor(score) else type(score).__name__
            raise ValueError(f"`score_fn` must return a tensor of the input's shape {tuple(x.shape)}, got {got}")
        v = sde.reverse_drift(x, t, score, probability_flow=True)
        if not v.requires_grad:  # a velocity that does not depend on x through autograd (constant field)
            return v.detach(), torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        div = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        if probes is None:
            vf = v.flatten(1)
            d = vf.shape[1]
            for i in range(d):
                (grad,) = torch.autograd.grad(vf[:, i].sum(), x, retain_graph=i < d - 1, allow_unused=True)
                if grad is not None:
                    div = div + grad.flatten(1)[:, i]
        else:
            for p, eps in enumerate(probes):
                (grad,) = torch.autograd.grad(
                    (v * eps).sum(), x, retain_graph=p < probes.shape[0] - 1, allow_unused=True
                )
                if grad is not None:
                    div = div + (grad * eps).flatten(1).sum(1)
            div = div / probes.shape[0]
    return v.detach(), div.detach()


@dataclass(frozen=True)
class ProbabilityFlowLikelihood:
    """log p_{t_eps}(x) by the probability-flow ODE; see the module docstring for the maths.

    Args:
        method: "RK45" (default) | "RK23" | "DOP853" | "Radau" | "BDF" | "LSODA" (scipy, adaptive)
            or "euler" | "heun" | "rk4" (fixed steps in torch).
        rtol, atol: tolerances of the adaptive solvers (score_sde: 1e-5, 1e-5).
        num_steps: number of intervals of the fixed-step methods.
        divergence: "auto" (exact for d <= ``exact_max_dim``) | "exact" | "hutchinson".
        probe: Hutchinson probe distribution, "rademacher" (default, lower variance) | "gaussian".
        num_probes: probes averaged per evaluation (variance / num_probes, cost * num_probes).
        exact_max_dim: the "auto" threshold.
        t_eps: start time of the ODE, in [sde.t_min, T); None (default) is ``sde.t_min``.
    """

    method: str = "RK45"
    rtol: float = 1e-5
    atol: float = 1e-5
    num_steps: int = 100
    divergence: str = "auto"
    probe: str = "rademacher"
    num_probes: int = 1
    exact_max_dim: int = 16
    t_eps: float | None = None

    def __post_init__(self):
        check_in("method", self.method, _SCIPY_METHODS + tuple(_FIXED_STAGES))
        integrators.check_tolerances(self.rtol, self.atol)
        check_int("num_steps", self.num_steps)
        check_in("divergence", self.divergence, DIVERGENCES)
        check_in("probe", self.probe, PROBES)
        check_int("num_probes", self.num_probes)
        check_int("exact_max_dim", self.exact_max_dim, minimum=0)
        if self.t_eps is not None and (
            isinstance(self.t_eps, bool) or not isinstance(self.t_eps, (int, float))
            or not math.isfinite(self.t_eps) or self.t_eps < 0
        ):
            raise ValueError(f"`t_eps` must be None or a finite number >= 0, got {self.t_eps!r}")

    def run(
        self,
        score_fn: ScoreFn,
        sde: SDE,
        x: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        prior_log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> LikelihoodResult:
        """Negative log-likelihood of every sample of ``x`` ``[B, *D]`` (nats); see ``LikelihoodResult``.

        Args:
            score_fn: ``score(x: [B, *D], t: [B]) -> [B, *D]``: an exact toy score, a trained net,
                an eps-model through ``scoresde.bridges``, a guided score from ``scoresde.guidance``.
            sde: the forward SDE (drift, diffusion, prior, [t_min, T]).
            x: the points, batch-first ``[B, *D]``, finite (not modified).
            generator: source of the Hutchinson probes (unused with the exact divergence).
            prior_log_prob: ``log p_T(x_T: [B, *D]) -> [B]``; default ``sde.prior_log_prob``.
        """
        if not isinstance(sde, SDE):
            raise TypeError(f"`sde` must be a scoresde.sdes.SDE, got {type(sde).__name__}")
        if not callable(score_fn):
            raise TypeError(f"`score_fn` must be callable as score(x, t), got {type(score_fn).__name__}")
        if prior_log_prob is not None and not callable(prior_log_prob):
            raise TypeError(f"`prior_log_prob` must be callable or None, got {type(prior_log_prob).__name__}")
        if not torch.is_tensor(x):
            raise TypeError(f"`x` must be a tensor, got {type(x).__name__}")
        if x.ndim < 2 or x.shape[0] < 1 or x[0].numel() < 1:
            raise ValueError(f"`x` must be batch-first [B, *D] with B >= 1 and at least one data dim, got shape {tuple(x.shape)}")
        if not x.dtype.is_floating_point:
            raise ValueError(f"`x` must have a floating-point dtype, got {x.dtype}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("`x` must be finite")
        from ._checks import check_event_shape  # issue 10: a wrong data dimension fails here, before any work

        check_event_shape("x", x, score_fn)
        t_eps = sde.t_min if self.t_eps is None else float(self.t_eps)
        if not sde.t_min <= t_eps < sde.T:
            raise ValueError(f"`t_eps` must lie in [t_min, T) = [{sde.t_min:g}, {sde.T:g}), got {t_eps!r}")
        dim = x[0].numel()
        exact = self.divergence == "exact" or (self.divergence == "auto" and dim <= self.exact_max_dim)
        probes = None
        if not exact:
            generator = check_generator(generator, x.device)
            probes = draw_probes(tuple(x.shape), self.num_probes, self.probe, generator, device=x.device, dtype=x.dtype)

        field = _AugmentedField(score_fn, sde, probes)
        x = x.detach()
        # the solver's own times lie in [t_eps, T]: no range check (a host sync) per evaluation
        with trusted_times():
            if self.method in _SCIPY_METHODS:
                x_end, delta = self._adaptive(field, x, t_eps, sde.T)
            else:
                x_end, delta = self._fixed(field, x, t_eps, sde.T)
        prior = (sde.prior_log_prob if prior_log_prob is None else prior_log_prob)(x_end)
        if not torch.is_tensor(prior) or prior.shape != (x.shape[0],):
            got = tuple(prior.shape) if torch.is_tensor(prior) else type(prior).__name__
            raise ValueError(f"`prior_log_prob` must return a tensor of shape [B] = [{x.shape[0]}], got {got}")
        prior = prior.detach().to(torch.float64)
        return LikelihoodResult(
            nll=-(prior + delta), prior_log_prob=prior, delta_log_prob=delta, latent=x_end, nfe=field.nfe,
            t_eps=t_eps, divergence="exact" if exact else "hutchinson", dim=dim,
        )

    def _adaptive(self, field: "_AugmentedField", x: torch.Tensor, t0: float, t1: float):
        delta0 = torch.zeros(x.shape[0], device=x.device, dtype=torch.float64)
        return integrators.solve_adaptive(
            lambda y, t: field(y[0], t), (x, delta0), t0, t1, method=self.method, rtol=self.rtol, atol=self.atol,
            what="likelihood ODE",
        )

    def _fixed(self, field: "_AugmentedField", x: torch.Tensor, t0: float, t1: float):
        ts = torch.linspace(t0, t1, self.num_steps + 1, dtype=torch.float64).tolist()
        y = (x, torch.zeros(x.shape[0], device=x.device, dtype=torch.float64))
        for t, t_next in zip(ts[:-1], ts[1:]):
            y = integrators.rk_step(lambda y, t: field(y[0], t), y, t, t_next, self.method)
        return y


class _AugmentedField:
    """(x, scalar t) -> (f~, div f~) with NFE counting; checks every output's finiteness (one host
    sync per evaluation, which the solver needs anyway) and names the time where it fails."""

    def __init__(self, score_fn: ScoreFn, sde: SDE, probes: torch.Tensor | None):
        self.score_fn, self.sde, self.probes = score_fn, sde, probes
        self.nfe = 0

    def __call__(self, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        tb = torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)
        v, div = pf_ode_divergence(self.score_fn, self.sde, x, tb, self.probes)
        div = div.to(torch.float64)
        self.nfe += 1
        if not bool(torch.isfinite(div).all()) or not bool(torch.isfinite(v).all()):
            what = "divergence" if not bool(torch.isfinite(div).all()) else "velocity"
            bad = (~torch.isfinite(div) | ~torch.isfinite(v.flatten(1)).all(1)).nonzero().flatten()[:5].tolist()
            raise FloatingPointError(
                f"non-finite probability-flow {what} at t = {float(t):.6g} (evaluation {self.nfe}), "
                f"samples {bad}: check `score_fn` there"
            )
        return v, div


def log_likelihood(
    score_fn: ScoreFn,
    sde: SDE,
    x: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    prior_log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
    **options,
) -> LikelihoodResult:
    """``ProbabilityFlowLikelihood(**options).run(score_fn, sde, x, ...)``: NLL in nats, ``[B]``."""
    return ProbabilityFlowLikelihood(**options).run(score_fn, sde, x, generator=generator, prior_log_prob=prior_log_prob)
