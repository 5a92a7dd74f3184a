"""Samplers as interchangeable strategies over any score function.

Each sampler is a small frozen dataclass of hyperparameters; the problem is passed in the call::

    x = sampler.sample(score_fn, sde, (n, 2), generator=torch.Generator().manual_seed(0))
    result = sampler.run(score_fn, sde, (n, 2), generator=g)   # result.x, result.nfe

Families: ``Langevin``, ``AnnealedLangevin`` (langevin); ``ReverseSDE`` with an
``EulerMaruyamaPredictor``, ``ReverseDiffusionPredictor`` or ``AncestralPredictor``;
``PredictorCorrector`` with a ``LangevinCorrector`` or ``AnnealedLangevinCorrector``;
``ProbabilityFlowODE`` (adaptive or Euler/Heun); ``DDPM`` and ``DDIM``.
"""
from .base import CountedScore, SampleResult, Sampler, StepInfo, tweedie_denoise
from .correctors import AnnealedLangevinCorrector, Corrector, LangevinCorrector
from .langevin import AnnealedLangevin, Langevin
from .ode import ProbabilityFlowODE
from .pc import DDIM, DDPM, PredictorCorrector, ReverseSDE
from .predictors import (
    AncestralPredictor,
    DDIMPredictor,
    EulerMaruyamaPredictor,
    Predictor,
    ReverseDiffusionPredictor,
)

__all__ = [
    "Sampler", "SampleResult", "StepInfo", "CountedScore", "tweedie_denoise",
    "Langevin", "AnnealedLangevin",
    "Predictor", "EulerMaruyamaPredictor", "ReverseDiffusionPredictor", "AncestralPredictor", "DDIMPredictor",
    "Corrector", "LangevinCorrector", "AnnealedLangevinCorrector",
    "PredictorCorrector", "ReverseSDE", "DDPM", "DDIM", "ProbabilityFlowODE",
]
