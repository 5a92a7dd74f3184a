"""Preconditioning separate from the backbone: any ``backbone(x_in, c_noise[, labels])`` becomes a score model.

EDM's vocabulary (Karras et al. 2022, Table 1 and Sec. 5), in VE-ised coordinates x~ = x / alpha,
sigma~ = sigma(t) / alpha(t) (``docs/conventions.md``), with sigma_d = ``sigma_data``, computed by
``scoresde.bridges.edm_coefficients`` (re-exported here; ``ScoreMLP`` uses the same):

    c_in    = 1 / sqrt(sigma~^2 + sigma_d^2)        the backbone sees x_in = c_in x~ = x / sqrt(sigma^2 + alpha^2 sigma_d^2)
    c_noise = ln(sigma~) / 4                          its noise input
    c_skip  = sigma_d^2 / (sigma~^2 + sigma_d^2)
    c_out   = sigma~ sigma_d / sqrt(sigma~^2 + sigma_d^2)

and the backbone's output F is read in one of four parameterisations; each fixes the denoiser
D(x~, sigma~) (the x0 estimate) and hence the score s = (alpha D - x) / sigma^2 (VP coordinates):

    "score"     s = F / sqrt(sigma^2 + alpha^2 sigma_d^2)        F = the score in units of the
                                                                  score of N(0, sigma_d^2) data
    "eps"       s = -F / sigma                                    D = x~ - sigma~ F (DDPM's eps; EDM's "VP/VE")
    "denoiser"  D = c_skip x~ + c_out F                           (EDM's preconditioned x0-prediction)
    "v"         D = c_skip x~ - c_out F                           (v-prediction, Salimans & Ho 2022)

v-prediction: with a = sigma_d / sqrt(sigma~^2 + sigma_d^2), b = sigma~ / sqrt(sigma~^2 + sigma_d^2)
(a^2 + b^2 = 1), c_in x~ = a x0/sigma_d + b eps and the target is v = a eps - b x0/sigma_d; solving
gives x0 = c_skip x~ - c_out v.  For VP with sigma_d = 1, a = alpha and b = sigma, so v = alpha eps -
sigma x0 is exactly Salimans & Ho's.  (EDM's own F-target is -v: "denoiser" and "v" differ in sign only,
so they train identically up to the sign of the last layer.)

For "denoiser" and "v" the score is computed in the cancellation-free form
s = -x / (sigma^2 + alpha^2 sigma_d^2) +- F sigma_d / (sigma sqrt(sigma~^2 + sigma_d^2)), which
equals ``bridges.denoiser_to_score`` of D in exact arithmetic but does not lose the 1 - c_skip of
small noise levels to float32 rounding.  "eps" is ``bridges.eps_to_score``.  Only the abstract SDE
interface (alpha, sigma) is used, so every SDE works.
"""
from __future__ import annotations

import importlib
from functools import partial
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from .._checks import append_dims, check_generator, check_in, check_int, check_positive
from ..bridges import edm_coefficients, score_to_denoiser
from ..sdes import SDE
from .mlp import NullLabel, labels_or_null

__all__ = ["PARAMETERIZATIONS", "Preconditioned", "edm_coefficients"]

PARAMETERIZATIONS = ("score", "eps", "denoiser", "v")


# Where scoresde 0.1 kept the model classes before the package layout (models/): checkpoints
# written then name e.g. "scoresde.models.mlp.ScoreMLP" as model_class / backbone.  Read-only.
MOVED_MODULES = MappingProxyType({
    "scoresde.nets": "scoresde.models.mlp",
    "scoresde.precond": "scoresde.models.precond",
    "scoresde.unet": "scoresde.models.unet",
})


def model_class(path: str, what: str = "`backbone`") -> type:
    """The ``nn.Module`` class named ``path`` ("module.Class"), which must lie inside ``scoresde``.

    Checkpoints name their model and backbone classes this way; a name outside ``scoresde`` is
    refused, so a checkpoint cannot run arbitrary code.  Module paths of scoresde 0.1 from before
    the package layout (``MOVED_MODULES``) are read as their new homes.  Raises ``ValueError``
    naming ``what``.
    """
    module, _, name = str(path).rpartition(".")
    if not module.startswith("scoresde.") or not name:
        raise ValueError(f"{what} {path!r} is not part of scoresde: a class given by name must lie inside scoresde "
                         "(e.g. 'scoresde.models.UNet')")
    module = MOVED_MODULES.get(module, module)
    try:
        cls = getattr(importlib.import_module(module), name, None)
    except ImportError:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"{what} {path!r} does not name an nn.Module class of scoresde")
    return cls


class Preconditioned(NullLabel, nn.Module):
    """A score model from a backbone: ``model(x, t, labels)`` is F read in ``parameterization``; ``score_fn`` the score.

    Args:
        sde: the forward SDE (alpha, sigma).
        event_shape: shape of one sample (passed to a backbone factory).
        backbone: an ``nn.Module`` called as ``backbone(x_in [B, *D], c_noise [B])`` (or with
            ``labels [B]`` as third argument when ``num_classes > 0``) returning ``[B, *D]``; or a
            factory ``backbone(event_shape, num_classes=..., generator=...)`` that builds one
            (``nets.MLPBackbone``, ``unet.UNet``; what ``conf/model/*`` passes as a partial).
        parameterization: ``"score"``, ``"eps"`` (default), ``"denoiser"`` or ``"v"``.
        sigma_data: sigma_d, the data's standard deviation (1 for standardised data).
        num_classes: C > 0 for a label-conditional model: labels in ``range(C + 1)``, C = the
            null label (used for ``labels=None``, and by label dropout).
        generator: passed to a backbone factory.
        backbone_config: with ``backbone`` given as a class path inside scoresde (how ``config`` and
            checkpoints record it, so ``scoresde.load`` can rebuild the model), that class's keyword arguments.
    """

    def __init__(self, sde: SDE, event_shape: tuple[int, ...] | int = (2,), *, backbone: Any,
                 parameterization: str = "eps", sigma_data: float = 1.0, num_classes: int = 0,
                 generator: torch.Generator | None = None, backbone_config: dict | None = None):
        super().__init__()
        if not isinstance(sde, SDE):
            raise TypeError(f"`sde` must be a scoresde.sdes.SDE, got {type(sde).__name__}")
        event_shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
        check_in("parameterization", parameterization, PARAMETERIZATIONS)
        check_int("num_classes", num_classes, minimum=0)
        self.sigma_data = check_positive("sigma_data", sigma_data)
        if isinstance(backbone, str):  # a checkpoint's model_config (scoresde.load): class path + its config
            backbone = partial(model_class(backbone), **{k: tuple(v) if isinstance(v, list) else v
                                                            for k, v in (backbone_config or {}).items()
                                                            if k not in ("event_shape", "num_classes")})
        if not isinstance(backbone, nn.Module):
            if not callable(backbone):
                raise TypeError(f"`backbone` must be an nn.Module or a factory of one, got {type(backbone).__name__}")
            backbone = backbone(event_shape, num_classes=num_classes, generator=check_generator(generator))
            if not isinstance(backbone, nn.Module):
                raise TypeError(f"the `backbone` factory must return an nn.Module, got {type(backbone).__name__}")
        self.sde = sde
        self.backbone = backbone
        self.event_shape = event_shape
        self.parameterization = parameterization
        self.num_classes = num_classes
        self._config = {"event_shape": list(event_shape), "parameterization": parameterization,
                        "sigma_data": self.sigma_data, "num_classes": num_classes,
                        "backbone": f"{type(backbone).__module__}.{type(backbone).__qualname__}",
                        "backbone_config": dict(getattr(backbone, "config", {}))}

    @property
    def config(self) -> dict:
        """Plain-dict description (stored in checkpoints as ``model_config``)."""
        return dict(self._config)

    def _backbone(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None):
        if x.shape[1:] != self.event_shape or t.shape != x.shape[:1]:
            raise ValueError(f"expected x [B, *{self.event_shape}] and t [B], got x {tuple(x.shape)} and t {tuple(t.shape)}")
        c = edm_coefficients(self.sde, t, self.sigma_data)
        x_in = append_dims(c["c_in_vp"], x.ndim).to(x.dtype) * x  # = c_in x~
        labels = labels_or_null(labels, self.num_classes, t, "model")
        if labels is not None:
            out = self.backbone(x_in, c["c_noise"].to(x.dtype), labels)
        else:
            out = self.backbone(x_in, c["c_noise"].to(x.dtype))
        if out.shape != x.shape:
            raise ValueError(f"the backbone returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
        return out.to(x.dtype), {k: append_dims(v.to(x.dtype), x.ndim) for k, v in c.items()}

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The model's estimate in its parameterisation: the score, eps, the denoised x0 (D) or v; shape of ``x``."""
        out, c = self._backbone(x, t, labels)
        if self.parameterization == "score":
            return out * c["c_in_vp"]
        if self.parameterization == "denoiser":
            return c["c_skip"] * x / c["alpha"] + c["c_out"] * out
        return out  # eps, v

    def score_fn(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The score grad_x log p_t(x | labels) in VP coordinates, ``[B, *event_shape]`` (module docstring)."""
        out, c = self._backbone(x, t, labels)
        if self.parameterization == "score":
            return out * c["c_in_vp"]
        if self.parameterization == "eps":
            return -out / c["sigma"]
        sign = 1.0 if self.parameterization == "denoiser" else -1.0
        return -x / c["var"] + sign * self.sigma_data / (c["sigma"] * c["std_ve"]) * out

    def denoise(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """D = x0_hat = (x + sigma^2 score) / alpha (Tweedie, ``bridges.score_to_denoiser``), for any parameterisation."""
        return score_to_denoiser(partial(self.score_fn, labels=labels), self.sde)(x, t)

    def extra_repr(self) -> str:
        return f"sde={self.sde!r}, parameterization={self.parameterization!r}, sigma_data={self.sigma_data}"
