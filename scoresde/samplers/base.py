"""What every sampler shares: the call contract, input checks, NFE counting, the grid loop and the final denoise.

Every sampler is a frozen dataclass holding only hyperparameters; the problem is passed in the call::

    x = sampler.sample(score_fn, sde, (n, 2), generator=torch.Generator().manual_seed(0))
    result = sampler.run(score_fn, sde, (n, 2), generator=g)   # result.x, result.nfe
    result = sampler.run(score_fn, sde, (n, 2), ts=scoresde.grids.karras(sde, 20))  # explicit grid
    result = sampler.run(score_fn, sde, (n, 2), seeds=range(n))  # per-sample noise streams

Grid convention (shared by all fixed-step samplers, ``FixedGridSampler``): the grid ``ts`` holds
N decreasing times from (about) T to t_min, built by ``sampler.grid`` (``scoresde.grids``; "uniform"
= ``sde.timesteps(num_steps)``, the default of the samplers that predate grids) or passed as
``run(..., ts=...)``.  Step i goes from ts[i] to ts[i+1] (``step``), and the step out of the last grid
time goes to clean data (sigma = 0) (``final_step``, by default Tweedie's formula
x_0 = (x + sigma^2 s) / alpha, ``bridges.tweedie``).  That final step is exactly the last step of
DDPM (x_1 -> x_0, no noise), of DDIM, of SMLD's ancestral sampler and of EDM (its Euler step to
sigma = 0), and the "denoise" of NCSN/score_sde for the others; it is explicit here
(``denoise=True``), not an implicit trailing zero as in k-diffusion.  With ``denoise=False`` the run stops at ts[-1] and returns a sample
of p_{ts[-1]} (one score evaluation fewer).  The loop (``FixedGridSampler._sample``) is written once:
grid, per-sample time tensors, callbacks, progress bar, final denoise and NFE; a method owns only
its update (``step``, which may evaluate the score several times and keep history in ``ctx.state``).

Checks of the score (``CountedScore``): every call's output must have the input's shape, dtype and
device (checked on the host, no sync); the first call's output must be finite (one sync); later
non-finite outputs are recorded on the device without a sync and raised (``NonFiniteScoreError``,
naming the step and t where they first appeared) at the end of the run and before each callback.

Batch independence: with ``seeds`` (one noise stream per sample, as EDM's ``StackedRandomGenerator``)
sample i is the same whatever the batch it is drawn in, for every sampler whose steps act on each
sample separately: all fixed-step samplers, ``Langevin``, ``AnnealedLangevin``, and the Langevin
correctors except ``norm="batch"``.  Not batch-independent: ``LangevinCorrector(norm="batch")``
(couples the step sizes) and the adaptive scipy ODE (one step size for the whole batch).
Up to float round-off: a batched matmul may sum in another order for another batch size.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from .._checks import check_device, check_generator, check_int, check_shape, trusted_times
from ..bridges import tweedie, tweedie_denoise
from ..grids import check_ts, resolve_grid
from ..sdes import SDE, ScoreFn
from .scorecalls import CountedScore, NonFiniteScoreError, PerSampleGenerator, check_seeds, randn_like

__all__ = [
    "Sampler", "FixedGridSampler", "StepContext", "SampleResult", "StepInfo", "CountedScore",
    "NonFiniteScoreError", "PerSampleGenerator", "tweedie_denoise", "progress_bar", "MAX_STEPS", "check_steps",
]

MAX_STEPS = 10**6
"""Ceiling on any step count: a grid of 10^6 times is already 10^6 score evaluations."""


def check_steps(name: str, value) -> int:
    """A step count: an int in [1, ``MAX_STEPS``] (an error naming ``name`` otherwise)."""
    check_int(name, value)
    if value > MAX_STEPS:
        raise ValueError(
            f"`{name}` must be <= {MAX_STEPS} (each step is at least one score evaluation on the whole batch), "
            f"got {value}"
        )
    return value


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


LONG_RUN = 1000
"""With ``progress=None`` (the default) a bar is shown for loops of at least this many steps on a terminal."""


def progress_bar(iterable, enabled: bool | None, desc: str):
    """tqdm over ``iterable`` when ``enabled``, else the iterable itself; ``None``: on for long loops
    (>= ``LONG_RUN`` steps) when stderr is a terminal, off otherwise (quiet in logs and tests)."""
    if enabled is None:
        import sys

        enabled = len(iterable) >= LONG_RUN and sys.stderr is not None and sys.stderr.isatty()
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
        progress: bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        ts: Any = None,
        seeds: Iterable[int] | None = None,
    ) -> SampleResult:
        """Sample and report the number of score evaluations.

        Args:
            score_fn: ``score(x: [B, *D], t: [B]) -> [B, *D]`` (use ``scoresde.bridges`` for eps-models
                and denoisers, ``GaussianMixture.score_fn(sde)`` for an exact toy score).
            sde: the forward SDE (``scoresde.sdes``) whose reverse process is simulated.
            shape: ``(B, *D)``; may be omitted when ``x_init`` is given.
            generator: source of all randomness (a fresh OS-seeded one when None).
            x_init: starting point at t = ts[0] ``[B, *D]`` instead of a prior draw (e.g. a draw from the
                exact p_T to remove the prior mismatch).  Not modified.
            callback: called with a ``StepInfo`` after every step.
            progress: show a tqdm progress bar (True / False); None (default): only for runs of
                >= 1000 steps on a terminal.
            device, dtype: of the samples; default: ``x_init``'s, else the generator's device and
                torch's default dtype.  Use float64 for step-by-step comparisons.
            ts: explicit decreasing time grid (fixed-step samplers only), 1-D, length >= 2, inside
                [t_min, T]; overrides ``sampler.grid`` and ``num_steps`` (then N = len(ts)).
            seeds: one integer seed per sample (length B), instead of ``generator``: sample i (prior
                draw and all its noise) depends on seeds[i] only, whatever the batch size
                (batch-independent samplers, module docstring).
        """
        if not isinstance(sde, SDE):
            raise TypeError(f"`sde` must be a scoresde.sdes.SDE, got {type(sde).__name__}")
        if not callable(score_fn):
            raise TypeError(f"`score_fn` must be callable as score(x, t), got {type(score_fn).__name__}")
        if callback is not None and not callable(callback):
            raise TypeError(f"`callback` must be callable or None, got {type(callback).__name__}")
        if ts is not None:
            if not isinstance(self, FixedGridSampler) or not self.uses_grid:
                raise ValueError(f"`ts` is accepted by fixed-step samplers only, not by {self!r}")
            ts = check_ts(ts, sde)
        if device is not None:
            device = check_device("device", device)  # e.g. CUDA on a machine without it: a clear error here
        if x_init is not None:
            if not torch.is_tensor(x_init):
                raise TypeError(f"`x_init` must be a tensor, got {type(x_init).__name__}")
            if x_init.is_meta:
                raise ValueError("`x_init` is on the meta device (a shape without values); give a tensor with values "
                                 "(or `shape` for a draw from the prior)")
            if shape is not None and tuple(x_init.shape) != check_shape("shape", shape):
                raise ValueError(f"`x_init` has shape {tuple(x_init.shape)} but `shape` is {tuple(shape)}")
            check_shape("x_init.shape", tuple(x_init.shape))
            if not x_init.dtype.is_floating_point:
                raise ValueError(f"`x_init` must have a floating-point dtype, got {x_init.dtype}")
            if not bool(torch.isfinite(x_init).all()):
                raise ValueError("`x_init` must be finite")
            device = x_init.device if device is None else torch.device(device)
            dtype = x_init.dtype if dtype is None else dtype
            shape = tuple(x_init.shape)
        elif shape is None:
            raise ValueError("give `shape` = (B, *D) or `x_init`")
        else:
            shape = check_shape("shape", shape)
        if seeds is not None:
            if generator is not None:
                raise ValueError("give either `generator` or `seeds`, not both")
            seeds = check_seeds(seeds, shape[0])
        if device is None:
            device = generator.device if isinstance(generator, torch.Generator) else torch.device("cpu")
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"`dtype` must be a floating-point torch.dtype, got {dtype!r}")
        if seeds is not None:
            generator = PerSampleGenerator(seeds, torch.device(device))
        else:
            generator = check_generator(generator, device)
        if isinstance(self, FixedGridSampler) and self.uses_grid and ts is None:
            ts = self.make_grid(sde)  # before any work: a bad grid/num_steps raises here
        if x_init is not None:
            x = x_init.detach().to(device=device, dtype=dtype).clone()
        elif isinstance(generator, PerSampleGenerator):
            x = sde.prior_std * generator.randn(shape, dtype, torch.device(device))
        else:
            x = sde.prior_sample(shape, generator, device=device, dtype=dtype)
        counted = CountedScore(score_fn)
        # the grid and the times derived from it are checked once above: no per-call time checks inside
        with torch.no_grad(), trusted_times():
            x = self._sample(counted, sde, x, generator, callback, progress, ts)
        counted.check_finite()
        return SampleResult(x, counted.nfe)

    def _sample(self, score_fn, sde, x, generator, callback, progress, ts):
        return self._run(score_fn, sde, x, generator, callback, progress)

    @abc.abstractmethod
    def _run(
        self, score_fn: CountedScore, sde: SDE, x: torch.Tensor, generator: torch.Generator,
        callback: Callback | None, progress: bool,
    ) -> torch.Tensor:
        """The sampling loop on an initial ``x`` at t = T (inputs already checked)."""


# -- the fixed-grid loop -----------------------------------------------------------------------------

class StepContext:
    """What a step sees, built once per run by the loop (``FixedGridSampler._sample``).

    ``ts`` is the grid (float64 CPU ``[N]``); per-grid-time alpha, sigma, sigma_ve = sigma/alpha and
    lambda = log(alpha/sigma) are python floats computed once in float64; ``t(i, x)`` is ts[i] as a
    ``[B]`` time tensor in x's dtype and device (cached); ``state`` is per-run scratch for multistep history.
    """

    def __init__(self, score_fn: CountedScore, sde: SDE, ts: torch.Tensor, generator):
        self.score_fn, self.sde, self.ts, self.generator = score_fn, sde, ts, generator
        self.state: dict = {}
        self.num_steps = len(ts)
        self._ts = ts.tolist()
        log_alpha = sde.log_alpha(ts)
        self._alpha = log_alpha.exp().tolist()
        self._sigma = sde.sigma(ts).tolist()
        self._t_cache: dict = {}

    def t(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """ts[i] as a ``[B]`` time tensor in ``x``'s dtype and device (the last few are cached)."""
        key = (i, x.shape[0], x.dtype, x.device)
        tb = self._t_cache.get(key)
        if tb is None:
            if len(self._t_cache) >= 4:  # keep the current and next step's only: memory flat in NFE
                del self._t_cache[next(iter(self._t_cache))]
            tb = self._t_cache[key] = torch.full((x.shape[0],), self._ts[i], device=x.device, dtype=x.dtype)
        return tb

    def score(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """s(x, ts[i]) (1 NFE)."""
        return self.score_fn(x, self.t(i, x))

    def score_at(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """s(x, t) at an arbitrary ``[B]`` time (1 NFE)."""
        return self.score_fn(x, t)

    def denoised(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Tweedie's D = (x + sigma_i^2 s(x, ts[i])) / alpha_i in VP coordinates, float64 alpha_i, sigma_i (1 NFE)."""
        return tweedie(x, self.score(x, i), self._alpha[i], self._sigma[i])

    def alpha(self, i: int) -> float:
        return self._alpha[i]

    def sigma(self, i: int) -> float:
        return self._sigma[i]

    def sigma_ve(self, i: int) -> float:
        """sigma/alpha at ts[i] (EDM's / k-diffusion's sigma)."""
        return self._sigma[i] / self._alpha[i]

    def lambda_(self, i: int) -> float:
        """log(alpha/sigma) at ts[i] (half the log-SNR)."""
        return math.log(self._alpha[i]) - math.log(self._sigma[i])

    def time(self, i: int) -> float:
        """ts[i] as a python float."""
        return self._ts[i]

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        """z ~ N(0, I) like ``x`` from the generator (or the per-sample streams)."""
        return randn_like(x, self.generator)


class FixedGridSampler(Sampler):
    """A sampler that walks a time grid; subclasses are frozen dataclasses with fields
    ``num_steps: int``, ``grid: str | Grid`` and ``denoise: bool`` and define ``step`` (and optionally
    ``final_step``).  See the module docstring for the loop."""

    #: False for a subclass configured not to use the grid (``ProbabilityFlowODE`` with scipy).
    uses_grid = True

    #: Where ``final_step`` takes Tweedie's alpha and sigma at the last grid time: False (default) the
    #: float64 grid values (``StepContext.denoised``); True alpha(t), sigma(t) of the ``[B]`` time tensor
    #: in x's dtype (``bridges.tweedie_denoise``).  The same formula; in float32 the two differ in the
    #: last bits.  True for the predictor-corrector family (``PredictorCorrector``, ``ReverseSDE``,
    #: ``DDPM``, ``DDIM``): the arithmetic they had before the shared loop, kept so that their samples
    #: stay bit for bit.
    final_from_time_tensor = False

    def check_grid_fields(self) -> None:
        """Validate ``num_steps``, ``grid`` and ``denoise`` (call from ``__post_init__``, before the
        sampler's own per-step coefficient is checked).

        A stochastic fitted grid (``FittedGrid`` with ``coefficient``, e.g. a file of
        ``scoresde-fit-grid`` for ``EDMHeun`` with churn) brings its per-step noise: the sampler takes
        ``coefficients`` for that field when the field is left at 0 (``EDMHeun(grid=FittedGrid.load(f))``
        samples what was fitted, as ``sampler.grid=<file>`` does); explicit per-step values win (what
        ``FittedGrid.configure`` and the fits pass); a non-zero scalar, or a sampler without the field,
        is an error rather than noise silently dropped or replaced."""
        check_steps("num_steps", self.num_steps)
        grid = resolve_grid(self.grid)
        if not isinstance(self.denoise, bool):
            raise TypeError(f"`denoise` must be a bool, got {self.denoise!r}")
        name = getattr(grid, "coefficient", "")
        if not name:
            return
        if not hasattr(self, name):
            raise ValueError(f"this fitted grid carries per-step `{name}` for {grid.sampler}; "
                             f"{type(self).__name__} has no such field (refit the grid for this sampler)")
        value = getattr(self, name)
        if isinstance(value, (list, tuple)):
            return
        if value != 0:
            raise ValueError(f"`{name}` = {value!r}, but the fitted grid carries per-step `{name}` "
                             f"{list(grid.coefficients)}: leave `{name}` at 0 to sample with them, or give "
                             f"your own per-step values")
        object.__setattr__(self, name, grid.coefficients)

    def make_grid(self, sde: SDE) -> torch.Tensor:
        """The grid of ``num_steps`` times from ``self.grid`` (float64 CPU)."""
        return resolve_grid(self.grid)(sde, self.num_steps).to(torch.float64).cpu()

    @abc.abstractmethod
    def step(self, ctx: StepContext, x: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance x (VP coordinates) from ts[i] to ts[i+1], for i = 0 .. N-2; return (x, x_mean)."""

    def final_step(self, ctx: StepContext, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Out of the last grid time to sigma = 0: Tweedie x0 = D(x, ts[N-1]) (1 NFE; ``final_from_time_tensor``)."""
        i = ctx.num_steps - 1
        if self.final_from_time_tensor:
            x0 = tweedie_denoise(ctx.score(x, i), ctx.sde, x, ctx.t(i, x))
        else:
            x0 = ctx.denoised(x, i)
        return x0, x0

    def finish(self, ctx: StepContext, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """What follows the last grid step: ``final_step`` when ``denoise``, else nothing (None)."""
        return self.final_step(ctx, x) if self.denoise else None

    def _run(self, score_fn, sde, x, generator, callback, progress):
        return self._sample(score_fn, sde, x, generator, callback, progress, None)

    def _sample(self, score_fn, sde, x, generator, callback, progress, ts):
        if ts is None:
            ts = self.make_grid(sde)
        ctx = StepContext(score_fn, sde, ts, generator)
        n = ctx.num_steps
        for i in progress_bar(range(n - 1), progress, type(self).__name__):
            score_fn.step = i
            x, x_mean = self.step(ctx, x, i)
            if callback is not None:
                score_fn.check_finite()
                callback(StepInfo(i, n, ctx.time(i), ctx.time(i + 1), x, x_mean))
        score_fn.step = n - 1
        out = self.finish(ctx, x)
        if out is not None:
            x, x_mean = out
            if callback is not None:
                score_fn.check_finite()
                callback(StepInfo(n - 1, n, ctx.time(n - 1), 0.0, x, x_mean))
        return x


def batch_time(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """A scalar time as the ``[B]`` tensor the score and the SDE expect."""
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)


def per_sample_norm(v: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each sample, ``[B]``."""
    return v.flatten(1).norm(dim=1)


def data_dim(x: torch.Tensor) -> int:
    """Number of data dimensions d = prod(D) of ``x: [B, *D]``."""
    return math.prod(x.shape[1:])
