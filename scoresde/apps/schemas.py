"""Structured-config schemas: one typed dataclass per configurable class, derived from its signature.

Every yaml node in ``conf/`` names its schema first in its defaults list, e.g.
``conf/sampler/ddim.yaml``::

    defaults:
      - /schema/sampler/DDIM@_here_
      - _self_
    _target_: scoresde.samplers.DDIM

so Hydra checks every value and key against the class's own signature before anything runs:
``sampler.num_steps=abc`` fails with "Value 'abc' of type 'str' could not be converted to
Integer", ``sampler.nmu_steps=5`` with "Key 'nmu_steps' not in 'DDIMSchema'".

A schema is generated from the class (or factory function) itself, so it cannot drift from the
code: ``_target_`` plus one field per keyword argument, typed by its annotation (int, float,
bool, str, their Optional, a tuple of them as a list; anything else, such as a nested
``Predictor``, as ``Any``, which that node's own schema then types), with the library's default.
An object default (a ``PredictorCorrector``'s predictor) becomes a mandatory node the yaml must
give (or set to null), never a silent None.  Arguments that exist only at run time (the model's
``sde``, ``event_shape``, ``generator``) are left out and passed by the apps to the partial
(``_partial_: true``).

``SCHEMAS`` is the explicit, read-only list of (group, class); ``register_schemas()`` stores them
in Hydra's ConfigStore as ``schema/<group>/<Class>`` and is called by the apps before Hydra
composes.  The generated dataclasses are attributes of this module, so they pickle by reference
into launcher worker processes (joblib, submitit).
"""
from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from .. import elbo, likelihood, samplers, sdes
from ..data import datasets, digits, files, image_folder, images, torchvision_data, toy
from ..models import energy, mlp, precond, unet
from ..training import loop, losses, recipes

__all__ = ["SCHEMAS", "register_schemas", "schema_for", "TrainAppConfig", "SampleAppConfig", "EvalConfig",
           "NoGuidance", "CFGGuidance", "ClassifierGuidanceConfig", "ExactGuidance", "PFODELikelihood", "ELBOLikelihood"]

_PRIMITIVES = (int, float, bool, str)
_RUNTIME_ARGS = ("sde", "event_shape", "generator")  # passed by the apps, not configured


def _target(obj: Any) -> str:
    """The import path Hydra's ``_target_`` uses: ``module.Class`` or ``module.Class.classmethod``."""
    owner = getattr(obj, "__self__", None)
    if isinstance(owner, type):
        return f"{owner.__module__}.{owner.__qualname__}.{obj.__name__}"
    return f"{obj.__module__}.{obj.__qualname__}"


def _schema_name(obj: Any) -> str:
    """``VPSDE`` -> ``VPSDE``, ``DiscreteVPSDE.linear`` -> ``DiscreteVPSDELinear``, ``eight_gaussians`` -> ``EightGaussians``."""
    parts = _target(obj).removeprefix(obj.__module__ + ".").replace(".", "_").split("_")
    return "".join(p[:1].upper() + p[1:] for p in parts)


def _config_type(hint: Any) -> Any:
    """An OmegaConf-supported annotation for ``hint``, or ``Any``."""
    if hint in _PRIMITIVES:
        return hint
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner = _config_type(rest[0]) if len(rest) == 1 else Any
        return Any if inner is Any else Optional[inner]
    if origin in (tuple, list) and args and args[0] in _PRIMITIVES and all(a in (args[0], Ellipsis) for a in args):
        return List[args[0]]
    return Any


def _config_default(value: Any) -> Any:
    if value is inspect.Parameter.empty:
        return MISSING
    if value is None or isinstance(value, _PRIMITIVES):
        return value
    if isinstance(value, tuple) and all(isinstance(v, _PRIMITIVES) for v in value):
        return field(default_factory=lambda v=value: list(v))
    return MISSING  # an object default (a default_factory predictor): the yaml must give the node, or null


def schema_for(obj: Any, *, partial: bool = False, exclude: tuple[str, ...] = ()) -> type:
    """A dataclass ``<Name>Schema`` with ``_target_`` and one typed field per keyword argument of ``obj``."""
    try:
        hints = typing.get_type_hints(obj.__init__ if isinstance(obj, type) else obj)
    except (NameError, TypeError):  # an annotation that does not resolve: leave those fields untyped
        hints = {}
    fields: list = [("_target_", str, field(default=_target(obj)))]
    if partial:
        fields.append(("_partial_", bool, field(default=True)))
    for name, p in inspect.signature(obj).parameters.items():
        if name in exclude or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = _config_default(p.default)
        if not isinstance(default, dataclasses.Field):
            default = field(default=default)
        fields.append((name, _config_type(hints.get(name, Any)), default))
    cls = dataclasses.make_dataclass(f"{_schema_name(obj)}Schema", fields)
    cls.__module__ = __name__
    cls.__doc__ = f"Structured config of ``{_target(obj)}`` (generated from its signature)."
    return cls


SCHEMAS: tuple[tuple[str, Any, dict], ...] = (
    # derived from the package's exports (one source): a new sampler needs no edit here
    *(("sampler", c, {}) for c in samplers.sampler_classes()),
    *(("predictor", c, {}) for c in samplers.predictor_classes()),
    *(("corrector", c, {}) for c in samplers.corrector_classes()),
    *(("sde", c, {}) for c in (sdes.VESDE, sdes.VPSDE, sdes.SubVPSDE, sdes.DiscreteVPSDE.linear)),
    *(("data", c, {}) for c in (
        datasets.MixtureDataset, datasets.SwissRoll, datasets.TwoMoons, datasets.Circles, datasets.Pinwheel,
        datasets.TwoSpirals, datasets.Checkerboard, files.FileDataset, images.Shapes,
        image_folder.ImageFolder, torchvision_data.TorchvisionImages, digits.Digits)),
    *(("mixture", toy.TARGETS[name], {}) for name in toy.TARGETS),
    ("model", mlp.ScoreMLP, {"partial": True, "exclude": _RUNTIME_ARGS}),
    ("model", precond.Preconditioned, {"partial": True, "exclude": _RUNTIME_ARGS}),
    ("model", energy.EnergyMLP, {"partial": True, "exclude": _RUNTIME_ARGS}),
    *(("backbone", c, {"partial": True, "exclude": ("event_shape", "generator", "num_classes")})
      for c in (mlp.MLPBackbone, unet.UNet)),
    ("train", loop.TrainConfig, {}),
    # issue 11's training recipe: conf/optim, conf/scheduler, conf/loss, conf/time
    *(("optim", c, {}) for c in (recipes.Adam, recipes.AdamW)),
    *(("scheduler", c, {}) for c in (recipes.ConstantLR, recipes.WarmupCosine)),
    *(("time", c, {}) for c in (recipes.UniformTime, recipes.LogNormalSigma, recipes.ImportanceTime)),
    ("loss", losses.DSMLoss, {"partial": True, "exclude": ("sde", "time_sampler")}),
)
"""(schema group, class or factory, options of ``schema_for``): everything ``conf/`` instantiates."""

_GENERATED: dict[str, tuple[str, type]] = {}
for _group, _obj, _options in SCHEMAS:
    _cls = schema_for(_obj, **_options)
    globals()[_cls.__name__] = _cls  # importable by name, so it pickles by reference
    _GENERATED[_cls.__name__] = (_group, _cls)
GENERATED = types.MappingProxyType(_GENERATED)
"""Read-only ``schema class name -> (group, class)`` of the generated schemas."""


# -- guidance and likelihood options of the apps (conf/guidance/*.yaml, conf/likelihood/*.yaml) ---------
GUIDANCE_KINDS = ("none", "cfg", "classifier", "exact")


@dataclass
class NoGuidance:
    """``guidance=none``: the unconditional score (the default)."""

    kind: str = "none"


@dataclass
class _ScaledGuidance:
    kind: str = MISSING
    scale: float = 1.0  # >= 0; checked by the app before any work
    label: Optional[int] = None  # the class requested, in [0, num_classes); None: every class in turn


@dataclass
class CFGGuidance(_ScaledGuidance):
    """``guidance=cfg``: classifier-free guidance of a conditional checkpoint, S s(x,t,c) + (1 - S) s(x,t,null)."""

    kind: str = "cfg"


@dataclass
class NoisyClassifierConfig:
    """The noise-conditioned classifier of ``guidance=classifier`` and its training on the data set."""

    width: int = 64
    depth: int = 2
    num_steps: int = 1000
    batch_size: int = 256
    lr: float = 2e-3


@dataclass
class ClassifierGuidanceConfig(_ScaledGuidance):
    """``guidance=classifier``: s(x, t) + w grad log p_phi(c | x, t), p_phi a NoisyClassifier trained on the data."""

    kind: str = "classifier"
    classifier: NoisyClassifierConfig = field(default_factory=NoisyClassifierConfig)


@dataclass
class ExactGuidance(_ScaledGuidance):
    """``guidance=exact``: exact conditional / unconditional scores of a Gaussian mixture (checkpoint=null)."""

    kind: str = "exact"


_PFODE = schema_for(likelihood.ProbabilityFlowLikelihood)
PFODELikelihood = dataclasses.make_dataclass(
    "PFODELikelihood",
    [("num_points", int, field(default=500)),  # held-out data points whose NLL is computed
     ("batch_size", int, field(default=500))],  # points per ODE solve (one adaptive solver per batch)
    bases=(_PFODE,),
)
PFODELikelihood.__module__ = __name__
PFODELikelihood.__doc__ = ("``likelihood=pf_ode``: ``scoresde.likelihood.ProbabilityFlowLikelihood`` (typed from its "
                           "signature) plus the number of held-out points and the batch size of the solves.")

_ELBO = schema_for(elbo.ELBOReport)
ELBOLikelihood = dataclasses.make_dataclass(
    "ELBOLikelihood",
    [("num_points", int, field(default=500)),  # held-out data points
     ("batch_size", int, field(default=500)),  # points per evaluation
     ("pf_ode", bool, field(default=True))],  # also the PF-ODE NLL of the same points, side by side
    bases=(_ELBO,),
)
ELBOLikelihood.__module__ = __name__
ELBOLikelihood.__doc__ = "``likelihood=elbo``: ``scoresde.elbo.ELBOReport`` plus the points, the batch size and the PF-ODE switch."


# -- the apps' root configs ----------------------------------------------------------------------
@dataclass
class EvalConfig:
    """Sample-quality evaluation (``scoresde.apps.evaluation``: ``scoresde.evaluation.floors.assess``) and plots."""

    metrics: Optional[List[str]] = None  # None: every sharp metric that applies (floors.MEANINGS)
    seed: int = 0  # the yardstick's seed (reference sample, thresholds, floors), shared by a sweep's jobs
    c2st_steps: int = 100  # full-batch Adam steps of the C2ST classifier
    repeats: int = 20  # i.i.d. repeats for the floor bands of the older distances (sliced_w2, mmd, ...)
    num_projections: int = 256  # directions of the sliced Wasserstein distances
    plot_points: int = 2000  # at most this many points per scatter plot


@dataclass
class PlotConfig:
    """Extra figures of ``scoresde-train`` (issue 11)."""

    animation: bool = False  # GIF of the reverse process (2-D data only): animation.gif in the run directory
    animation_points: int = 1000  # particles in the animation
    animation_frames: int = 60  # at most this many frames


@dataclass
class QualityConfig:
    """Quality checks during training and the adaptive recipe of ``scoresde-train`` (issue 21, ``training.quality``)."""

    every: Optional[int] = None  # steps between checks; None: 1000 with auto, no checks without
    num_samples: int = 2000  # points sampled (probability-flow ODE, Heun, 25 steps) and assessed per check
    patience: int = 3  # auto: finish after this many consecutive checks at floor (0: never)
    cooldown: float = 0.2  # auto: before an early finish, ceil(cooldown * steps) more with the lr to 0 (quality.CoolDown)
    budget: int = 20000  # auto: train.num_steps (the most steps a run may take)
    pilot_steps: int = 2000  # auto: steps of each candidate's pilot run
    candidates: List[int] = field(default_factory=lambda: [0, 64])  # auto: model.input_features to choose from
    final: str = "best"  # with checks: sample the final figure / metrics from best.pt ("best") or last.pt ("last")
    sampler: Any = None  # auto: the final sampler when `sampler` is left at its default (conf/train.yaml)


@dataclass
class _AppConfig:
    data: Any = MISSING
    sde: Any = MISSING
    sampler: Any = MISSING
    eval: EvalConfig = field(default_factory=EvalConfig)
    num_samples: int = 2000  # samples drawn, evaluated and plotted
    batch_size: Optional[int] = None  # draw in batches of this size with per-sample seeds (None: one batch)
    seed: int = 0
    device: str = "cpu"
    progress: bool = False  # tqdm bars for training and sampling
    num_threads: Any = "auto"  # torch threads: "auto" (1 for models under 1e6 parameters) or an int >= 1
    likelihood: Any = None  # None (likelihood=none) or a PFODELikelihood node (likelihood=pf_ode)


@dataclass
class TrainAppConfig(_AppConfig):
    """Root of ``conf/train.yaml`` (``scoresde-train``)."""

    model: Any = MISSING
    train: Any = MISSING
    resume: bool = False  # continue from <output dir>/last.pt (with hydra.run.dir=<that dir>)
    conditional: bool = False  # true: model.num_classes = the data set's number of labels (label dropout: train.label_dropout)
    loss: Any = None  # conf/loss: a DSMLoss partial (None: DSMLoss(sde))
    time: Any = None  # conf/time: the loss's time sampler (None: uniform t)
    optim: Any = None  # conf/optim: an optimiser factory (None: train.optimizer / train.lr / ...)
    scheduler: Any = None  # conf/scheduler: a learning-rate schedule (None: train.warmup_steps)
    experiment: Any = None  # conf/experiment: the chosen experiment's own notes (its overrides act on the root)
    plot: PlotConfig = field(default_factory=PlotConfig)
    tensorboard: bool = False  # also log loss and lr as TensorBoard scalars in <run dir>/tensorboard (extra .[tensorboard])
    auto: Optional[bool] = None  # the adaptive recipe (training.quality); None: true for data=file, else false
    quality: QualityConfig = field(default_factory=QualityConfig)  # quality checks during training


@dataclass
class SampleAppConfig(_AppConfig):
    """Root of ``conf/sample.yaml`` (``scoresde-sample``)."""

    checkpoint: Optional[str] = None  # path to a last.pt; None: the exact score of a mixture data set
    ema: bool = True  # sample with the EMA weights of the checkpoint
    guidance: Any = None  # conf/guidance: none | cfg | classifier | exact


def register_schemas() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent): ``schema/<group>/<ClassName>``, ``schema/app/*``."""
    cs = ConfigStore.instance()
    for name, (group, cls) in GENERATED.items():
        cs.store(group=f"schema/{group}", name=name.removesuffix("Schema"), node=cls, provider="scoresde")
    for cls in (NoGuidance, CFGGuidance, ClassifierGuidanceConfig, ExactGuidance):
        cs.store(group="schema/guidance", name=cls.__name__, node=cls, provider="scoresde")
    cs.store(group="schema/likelihood", name="PFODELikelihood", node=PFODELikelihood, provider="scoresde")
    cs.store(group="schema/likelihood", name="ELBOLikelihood", node=ELBOLikelihood, provider="scoresde")
    cs.store(group="schema/app", name="train", node=TrainAppConfig, provider="scoresde")
    cs.store(group="schema/app", name="sample", node=SampleAppConfig, provider="scoresde")
