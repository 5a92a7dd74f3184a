"""Fixed-grid samplers built from a predictor and a corrector (Song et al. 2021, Alg. 1 and App. G).

All are ``FixedGridSampler``s: the loop (grid, callbacks, final denoise, NFE) is in ``base``.  On
the grid ``ts`` (``grid``, default "uniform" = ``sde.timesteps(num_steps)``, T -> t_min), step i:

    order "corrector_first" (score_sde, its issue #50): corrector_steps corrector steps at ts[i],
        then the predictor to ts[i+1];
    order "predictor_first": the predictor to ts[i+1], then corrector_steps corrector steps there;
    after the last grid time (corrector-first: after its corrector steps) the final Tweedie denoise
    (``base`` module docstring).

NFE = num_steps predictor evaluations (the last one is the denoise) + corrector_steps per corrected
grid time (num_steps for corrector-first, num_steps - 1 for predictor-first), + 1 for the final
denoise when there is no predictor.  A MALA corrector step (``metropolis=True``) counts 4: two score
and two log-density evaluations.  ``ReverseSDE``, ``DDPM`` and ``DDIM`` are this loop with no corrector.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .._checks import check_in, check_int
from ..grids import Grid
from .base import FixedGridSampler, StepContext, batch_time
from .correctors import AnnealedLangevinCorrector, Corrector
from .langevin import _MetropolisRun
from .predictors import AncestralPredictor, DDIMPredictor, EulerMaruyamaPredictor, Predictor, ReverseDiffusionPredictor

__all__ = ["PredictorCorrector", "ReverseSDE", "DDPM", "DDIM", "predict", "correct"]


def predict(predictor: Predictor | None, ctx: StepContext, x: torch.Tensor, i: int):
    """One predictor step from ts[i] to ts[i+1] with the score at (x, ts[i]); (x, x) without a predictor."""
    if predictor is None:
        return x, x
    return predictor.step(x, ctx.score(x, i), ctx.sde, ctx.t(i, x), ctx.t(i + 1, x), ctx.generator)


def correct(corrector: Corrector | None, steps: int, ctx: StepContext, x: torch.Tensor, i: int) -> torch.Tensor:
    """``steps`` corrector steps at ts[i] (the next grid time, or 0 after the last, enters the step size)."""
    if corrector is None or steps == 0:
        return x
    tb = ctx.t(i, x)
    tb_next = ctx.t(i + 1, x) if i + 1 < ctx.num_steps else batch_time(0.0, x)
    for _ in range(steps):
        x, _ = corrector.step(x, ctx.score_fn, ctx.sde, tb, tb_next, ctx.generator)
    return x


@dataclass(frozen=True)
class PredictorCorrector(_MetropolisRun, FixedGridSampler):
    """Predictor–corrector sampling (Song et al. 2021, Alg. 1); ``predictor`` or ``corrector`` may be None.

    Defaults (reverse diffusion + ``AnnealedLangevinCorrector(snr=0.1)``, 200 steps, corrector
    first) were tuned with the exact score on the 2-D targets of ``scoresde.data.toy`` under VE and VP
    (sliced W2 within 0.8-1.2x the sampling-noise floor at n = 10 000).  The signal-to-noise
    ``LangevinCorrector`` with per-sample norms is not the default because in low dimension its
    step is heavy-tailed (see its docstring); with ``norm="batch"`` it does as well.

    With a MALA corrector (``corrector.metropolis=True``, ``samplers.correctors``) ``run`` takes
    ``log_prob_fn(x, t) -> [B]`` (default ``score_fn.log_prob``) and returns a ``MetropolisResult``:
    ``nfe`` counts the score and log-density evaluations, ``acceptance_rate`` the corrector's moves.
    """

    final_from_time_tensor = True  # Tweedie with the [B] time tensor: bit for bit as before (FixedGridSampler)

    predictor: Predictor | None = field(default_factory=ReverseDiffusionPredictor)
    corrector: Corrector | None = field(default_factory=AnnealedLangevinCorrector)
    num_steps: int = 200
    corrector_steps: int = 1
    order: str = "corrector_first"
    denoise: bool = True
    grid: str | Grid = "uniform"

    def __post_init__(self):
        self.check_grid_fields()
        check_int("corrector_steps", self.corrector_steps, minimum=0)
        check_in("order", self.order, ("corrector_first", "predictor_first"))
        if self.predictor is not None and not isinstance(self.predictor, Predictor):
            raise TypeError(f"`predictor` must be a Predictor or None, got {type(self.predictor).__name__}")
        if self.corrector is not None and not isinstance(self.corrector, Corrector):
            raise TypeError(f"`corrector` must be a Corrector or None, got {type(self.corrector).__name__}")
        if self.predictor is None and (self.corrector is None or self.corrector_steps == 0):
            raise ValueError("`predictor` and `corrector` cannot both be None (or corrector_steps = 0)")

    @property
    def metropolis(self) -> bool:
        """True with a MALA corrector: ``run`` then needs a log-density (class docstring)."""
        return self.corrector is not None and self.corrector_steps > 0 and getattr(self.corrector, "metropolis", False)

    def step(self, ctx, x, i):
        if self.order == "corrector_first":
            x = correct(self.corrector, self.corrector_steps, ctx, x, i)
        x, x_mean = predict(self.predictor, ctx, x, i)
        if self.order == "predictor_first":
            x = correct(self.corrector, self.corrector_steps, ctx, x, i + 1)
        return x, x_mean

    def finish(self, ctx, x):
        corrected = self.order == "corrector_first" and self.corrector is not None and self.corrector_steps > 0
        if corrected:
            x = correct(self.corrector, self.corrector_steps, ctx, x, ctx.num_steps - 1)
        if self.denoise:
            return self.final_step(ctx, x)
        return (x, x) if corrected else None


@dataclass(frozen=True)
class ReverseSDE(FixedGridSampler):
    """Reverse-time SDE with one predictor and no corrector (Euler–Maruyama by default), on any grid."""

    final_from_time_tensor = True  # Tweedie with the [B] time tensor: bit for bit as before (FixedGridSampler)

    predictor: Predictor = field(default_factory=EulerMaruyamaPredictor)
    num_steps: int = 500
    denoise: bool = True
    grid: str | Grid = "uniform"

    def __post_init__(self):
        self.check_grid_fields()
        if not isinstance(self.predictor, Predictor):
            raise TypeError(f"`predictor` must be a Predictor, got {type(self.predictor).__name__}")

    def step(self, ctx, x, i):
        return predict(self.predictor, ctx, x, i)


@dataclass(frozen=True)
class DDPM(FixedGridSampler):
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2), in score form, on any grid.

    With eps = -sigma s, the step x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t)
    + sigma_t z is ``AncestralPredictor``'s (x + b^2 s)/a + std z with (a, b) the exact transition
    between consecutive grid times, and the last step (to clean data) is noise-free.  ``variance``:
    "large" (sigma_t^2 = beta_t, the default here, as score_sde's VP ancestral sampler) or "small"
    (the posterior variance beta-tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)).
    **diffusers' DDPMScheduler defaults to "fixed_small" (beta-tilde)**: pass variance="small" to match it.
    On ``VPSDE().discrete(N)`` with num_steps = N this is Algorithm 2 step for step; with fewer
    steps the default "uniform" grid respaces the knots evenly (rounded), and grid="leading" |
    "trailing" | "linspace" visits exactly diffusers' timesteps for that ``timestep_spacing``; on a
    continuous SDE any grid of ``scoresde.grids`` works.
    """

    final_from_time_tensor = True  # Tweedie with the [B] time tensor: bit for bit as before (FixedGridSampler)

    num_steps: int = 1000
    variance: str = "large"
    denoise: bool = True
    grid: str | Grid = "uniform"

    def __post_init__(self):
        self.check_grid_fields()
        check_in("variance", self.variance, ("small", "large"))
        object.__setattr__(self, "_predictor", AncestralPredictor(self.variance))  # built once, not per step

    def step(self, ctx, x, i):
        return predict(self._predictor, ctx, x, i)


@dataclass(frozen=True)
class DDIM(FixedGridSampler):
    """DDIM (Song, Meng & Ermon 2021, eq. 12): ``DDIMPredictor`` on any grid; eta = 0 is deterministic.

    x0 = (x + sigma^2 s)/alpha, eps = -sigma s, x' = alpha' x0 + sqrt(sigma'^2 - c^2) eps + c z with
    c = eta b sigma'/sigma (DDIM's sigma_t(eta) for VP).  eta = 0 is Euler on the probability-flow
    ODE in EDM's variables (x/alpha against sigma/alpha), i.e. k-diffusion's ``sample_euler`` on the
    same grid.  On ``VPSDE().discrete(N)`` with grid="leading" | "trailing" | "linspace" it visits
    diffusers' DDIMScheduler timesteps; the final step to clean data is diffusers' last step with
    ``set_alpha_to_one=True``.  x0_hat is not clipped (diffusers clips to [-1, 1] by default, which
    breaks toy data).
    """

    final_from_time_tensor = True  # Tweedie with the [B] time tensor: bit for bit as before (FixedGridSampler)

    num_steps: int = 50
    eta: float = 0.0
    denoise: bool = True
    grid: str | Grid = "uniform"

    def __post_init__(self):
        self.check_grid_fields()
        object.__setattr__(self, "_predictor", DDIMPredictor(self.eta))  # validates eta; built once, not per step

    def step(self, ctx, x, i):
        return predict(self._predictor, ctx, x, i)
