"""What every sampler shares: the call contract, input checks, NFE counting and the final denoise.

Every sampler is a frozen dataclass holding only hyperparameters; the problem is passed in the call::

    x = sampler.sample(score_fn, sde, (n, 2), generator=torch.Generator().manual_seed(0))
    result = sampler.run(score_fn, sde, (n, 2), generator=g)   # result.x, result.nfe

Grid convention (shared by all fixed-step samplers): ``ts = sde.timesteps(num_steps)`` holds
``num_steps`` decreasing times from T to t_min.  The score is evaluated once at every grid time;
step i goes from ts[i] to ts[i+1], and the step out of the last grid time goes to clean data
(sigma = 0) by Tweedie's formula x_0 = (x + sigma^2 s) / alpha.  That final step is exactly the
last step of DDPM (x_1 -> x_0, no noise), of DDIM and of SMLD's ancestral sampler, and the
"denoise" of NCSN/score_sde for the others; it is explicit here (``denoise=True``), not an implicit
trailing zero.  With ``denoise=False`` the run stops at t_min and returns a sample of p_{t_min}
(one score evaluation fewer).
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Callable

import torch

from .._checks import append_dims, check_generator, check_shape
from ..sdes import SDE, ScoreFn

__all__ = ["Sampler", "SampleResult", "StepInfo", "CountedScore", "tweedie_denoise", "progress_bar"]


@dataclass(frozen=True)
class StepInfo:
    """Passed to ``callback`` after each step: state after the step, at time ``t_next`` (0 after the final denoise)."""

    step: int
    num_steps: int
    t: float
    t_next: float
    x: torch.Tensor
    x_mean: torch.Tensor


Callback = Callable[[StepInfo], None]


@dataclass(frozen=True)
class SampleResult:
    """Samples ``x`` ``[B, *D]`` and the number of score evaluations ``nfe`` (each on the whole batch)."""

    x: torch.Tensor
    nfe: int


class CountedScore:
    """Wraps a score function: counts evaluations and checks the first output once.

    The first call checks that the output has the shape of ``x`` and is finite, raising a
    ``ValueError`` that names ``score_fn``; later calls are not checked (no host syncs in the loop).
    """

    def __init__(self, score_fn: ScoreFn):
        self.score_fn = score_fn
        self.nfe = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.score_fn(x, t)
        self.nfe += 1
        if self.nfe == 1:
            if not torch.is_tensor(out) or out.shape != x.shape:
                got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
                raise ValueError(f"`score_fn` must return a tensor of the input's shape {tuple(x.shape)}, got {got}")
            if not bool(torch.isfinite(out).all()):
                raise ValueError(f"`score_fn` returned non-finite values at t = {float(t[0]):.6g}")
        return out


def tweedie_denoise(score: torch.Tensor, sde: SDE, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Tweedie's formula E[x_0 | x_t] = (x + sigma(t)^2 s) / alpha(t) given the score ``s`` at (x, t)."""
    alpha = append_dims(sde.alpha(t).to(x.dtype), x.ndim)
    sigma = append_dims(sde.sigma(t).to(x.dtype), x.ndim)
    return (x + sigma**2 * score) / alpha


def progress_bar(iterable, enabled: bool, desc: str):
    """tqdm over ``iterable`` when ``enabled``, else the iterable itself (quiet by default)."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)


class Sampler(abc.ABC):
    """Base class of all samplers (subclasses are frozen dataclasses of hyperparameters)."""

    def sample(self, score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...] | None = None, **kwargs) -> torch.Tensor:
        """Draw samples of ``shape`` = ``(B, *D)``; returns ``[B, *D]``.  Keyword arguments as ``run``."""
        return self.run(score_fn, sde, shape, **kwargs).x

    def run(
        self,
        score_fn: ScoreFn,
        sde: SDE,
        shape: tuple[int, ...] | None = None,
        *,
        generator: torch.Generator | None = None,
        x_init: torch.Tensor | None = None,
        callback: Callback | None = None,
        progress: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> SampleResult:
        """Sample and report the number of score evaluations.

        Args:
            score_fn: ``score(x: [B, *D], t: [B]) -> [B, *D]`` (use ``scoresde.bridges`` for eps-models
                and denoisers, ``GaussianMixture.score_fn(sde)`` for an exact toy score).
            sde: the forward SDE (``scoresde.sdes``) whose reverse process is simulated.
            shape: ``(B, *D)``; may be omitted when ``x_init`` is given.
            generator: source of all randomness (a fresh OS-seeded one when None).
            x_init: starting point at t = T ``[B, *D]`` instead of a prior draw (e.g. a draw from the
                exact p_T to remove the prior mismatch).  Not modified.
            callback: called with a ``StepInfo`` after every step.
            progress: show a tqdm progress bar.
            device, dtype: of the samples; default: ``x_init``'s, else the generator's device and
                torch's default dtype.  Use float64 for step-by-step comparisons.
        """
        if not isinstance(sde, SDE):
            raise TypeError(f"`sde` must be a scoresde.sdes.SDE, got {type(sde).__name__}")
        if not callable(score_fn):
            raise TypeError(f"`score_fn` must be callable as score(x, t), got {type(score_fn).__name__}")
        if callback is not None and not callable(callback):
            raise TypeError(f"`callback` must be callable or None, got {type(callback).__name__}")
        if x_init is not None:
            if not torch.is_tensor(x_init):
                raise TypeError(f"`x_init` must be a tensor, got {type(x_init).__name__}")
            if shape is not None and tuple(x_init.shape) != check_shape("shape", shape):
                raise ValueError(f"`x_init` has shape {tuple(x_init.shape)} but `shape` is {tuple(shape)}")
            check_shape("x_init.shape", tuple(x_init.shape))
            if not bool(torch.isfinite(x_init).all()):
                raise ValueError("`x_init` must be finite")
            device = x_init.device if device is None else torch.device(device)
            dtype = x_init.dtype if dtype is None else dtype
        elif shape is None:
            raise ValueError("give `shape` = (B, *D) or `x_init`")
        else:
            shape = check_shape("shape", shape)
        if device is None:
            device = generator.device if isinstance(generator, torch.Generator) else torch.device("cpu")
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if not dtype.is_floating_point:
            raise ValueError(f"`dtype` must be a floating-point dtype, got {dtype}")
        generator = check_generator(generator, device)
        if x_init is not None:
            x = x_init.detach().to(device=device, dtype=dtype).clone()
        else:
            x = sde.prior_sample(shape, generator, device=device, dtype=dtype)
        counted = CountedScore(score_fn)
        with torch.no_grad():
            x = self._run(counted, sde, x, generator, callback, progress)
        return SampleResult(x, counted.nfe)

    @abc.abstractmethod
    def _run(
        self, score_fn: CountedScore, sde: SDE, x: torch.Tensor, generator: torch.Generator,
        callback: Callback | None, progress: bool,
    ) -> torch.Tensor:
        """The sampling loop on an initial ``x`` at t = T (inputs already checked)."""


def randn_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise of ``x``'s shape, dtype and device from ``generator``."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def batch_time(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """A scalar time as the ``[B]`` tensor the score and the SDE expect."""
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)


def per_sample_norm(v: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each sample, ``[B]``."""
    return v.flatten(1).norm(dim=1)


def data_dim(x: torch.Tensor) -> int:
    """Number of data dimensions d = prod(D) of ``x: [B, *D]``."""
    return math.prod(x.shape[1:])
