"""Samplers as interchangeable strategies over any score function.

Each sampler is a small frozen dataclass of hyperparameters; the problem is passed in the call::

    x = sampler.sample(score_fn, sde, (n, 2), generator=torch.Generator().manual_seed(0))
    result = sampler.run(score_fn, sde, (n, 2), generator=g)   # result.x, result.nfe

Families: ``Langevin``, ``AnnealedLangevin`` (langevin; ``temperature``, MALA with ``metropolis``);
``SimulatedAnnealing`` (annealing); ``ReverseSDE`` with an
``EulerMaruyamaPredictor``, ``ReverseDiffusionPredictor`` or ``AncestralPredictor``;
``PredictorCorrector`` with a ``LangevinCorrector`` or ``AnnealedLangevinCorrector``;
``ProbabilityFlowODE`` (fixed-step Euler/Heun/RK4 in EDM's variables, or scipy adaptive); ``DDPM``
and ``DDIM``; ``EDMHeun`` (Karras et al. 2022); ``DPMSolverPP``; ``UniPC``.  Fixed-step samplers
(``FixedGridSampler``) take a ``grid`` (``scoresde.grids``) and ``run(..., ts=...)``.

One source for the registries: the concrete samplers are the ``Sampler`` subclasses exported here
(``sampler_classes()``); the Hydra schemas and the tests' parametrisations are derived from them and
from ``conf/sampler/*.yaml``.  ``FAST_SETTINGS`` holds each sampler's fast test settings (keyword
overrides for a cheap run).  Adding a sampler = its module + its export here + one ``FAST_SETTINGS``
entry + one ``conf/sampler/<name>.yaml``.
"""
from .base import (
    CountedScore,
    FixedGridSampler,
    NonFiniteScoreError,
    SampleResult,
    Sampler,
    StepContext,
    StepInfo,
    tweedie_denoise,
)
from .dpm_solver import DPMSolverPP
from .edm import EDMHeun
from .correctors import AnnealedLangevinCorrector, Corrector, LangevinCorrector
from .langevin import AnnealedLangevin, Langevin, MetropolisResult
from .annealing import AnnealingStepInfo, SimulatedAnnealing
from .ode import ProbabilityFlowODE
from .pc import DDIM, DDPM, PredictorCorrector, ReverseSDE
from .unipc import UniPC
from .predictors import (
    AncestralPredictor,
    DDIMPredictor,
    EulerMaruyamaPredictor,
    Predictor,
    ReverseDiffusionPredictor,
)

__all__ = [
    "Sampler", "FixedGridSampler", "StepContext", "SampleResult", "StepInfo", "CountedScore",
    "NonFiniteScoreError", "tweedie_denoise",
    "Langevin", "AnnealedLangevin", "MetropolisResult", "SimulatedAnnealing", "AnnealingStepInfo",
    "Predictor", "EulerMaruyamaPredictor", "ReverseDiffusionPredictor", "AncestralPredictor", "DDIMPredictor",
    "Corrector", "LangevinCorrector", "AnnealedLangevinCorrector",
    "PredictorCorrector", "ReverseSDE", "DDPM", "DDIM", "ProbabilityFlowODE",
    "EDMHeun", "DPMSolverPP", "UniPC",
    "FAST_SETTINGS", "sampler_classes", "predictor_classes", "corrector_classes",
]


from types import MappingProxyType as _MappingProxyType  # noqa: E402

FAST_SETTINGS = _MappingProxyType({
    "Langevin": {"num_steps": 20},
    "AnnealedLangevin": {"num_levels": 4, "steps_per_level": 5},
    "SimulatedAnnealing": {"num_steps": 20},
    "ReverseSDE": {"num_steps": 10},
    "PredictorCorrector": {"num_steps": 10},
    "ProbabilityFlowODE": {"num_steps": 10, "rtol": 1e-3, "atol": 1e-3},
    "DDPM": {"num_steps": 10},
    "DDIM": {"num_steps": 10},
    "EDMHeun": {"num_steps": 10},
    "DPMSolverPP": {"num_steps": 10},
    "UniPC": {"num_steps": 10},
})
"""Read-only ``class name -> keyword overrides`` for a fast run of each sampler (tests, smoke runs)."""


def _concrete(base) -> tuple:
    import inspect

    objs = (globals()[name] for name in __all__)
    return tuple(o for o in objs if isinstance(o, type) and issubclass(o, base) and not inspect.isabstract(o))


def sampler_classes() -> tuple:
    """The concrete ``Sampler`` classes exported by this package, in ``__all__`` order."""
    return _concrete(Sampler)


def predictor_classes() -> tuple:
    """The concrete ``Predictor`` classes exported by this package."""
    return _concrete(Predictor)


def corrector_classes() -> tuple:
    """The concrete ``Corrector`` classes exported by this package."""
    return _concrete(Corrector)
