"""Load a checkpoint written by ``scoresde-train`` (or ``scoresde.training.train``) for sampling in Python.

    import scoresde
    from scoresde.samplers import DDIM

    loaded = scoresde.load("outputs/train/<date>/<time>/last.pt")     # or the run directory
    x = DDIM(num_steps=50).sample(loaded.score_fn, loaded.sde, (1000, *loaded.event_shape))

The checkpoint itself holds everything needed: the model's class (``"model_class"``, an import
path that must lie inside ``scoresde``, so a checkpoint cannot name arbitrary code) and its
constructor values (``"model_config"``), the SDE (``"sde_config"``, or for older checkpoints
parsed from ``repr(sde)``) and the weights.  The file is read with ``torch.load(weights_only=True)``
(``scoresde.training.checkpoints.load_checkpoint``).  The model comes back in eval mode without gradients,
with the EMA weights unless ``ema=False``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .. import sdes
from .checkpoints import (
    CHECKPOINT_NAME,
    CheckpointMismatchError,
    CorruptCheckpointError,
    load_checkpoint,
    load_weights,
    sde_config_from_repr,
)
from ..data.files import Standardization
from ..models.precond import model_class
from ..sdes import SDE, ScoreFn

__all__ = ["Loaded", "load", "sde_from_config", "model_from_state"]

_DEFAULT_MODEL = "scoresde.models.mlp.ScoreMLP"  # checkpoints written before "model_class" was recorded


class Loaded(NamedTuple):
    """What ``load`` returns: the model, its SDE, its score function and the checkpoint's metadata."""

    model: nn.Module
    sde: SDE
    score_fn: ScoreFn  # model.score_fn: score(x [B, *D], t [B]) -> [B, *D]
    event_shape: tuple[int, ...]
    step: int  # training steps the checkpoint has seen
    path: Path
    # a data file's standardisation (scoresde-train data=file): samples are in training units;
    # ``data_transform.to_user_units(x)`` maps them back to the file's units.  None for other data.
    data_transform: Standardization | None = None


def sde_from_config(config: dict, path: Path | str = "<checkpoint>") -> SDE:
    """Rebuild an SDE of ``scoresde.sdes`` from ``checkpoints.sde_config``'s dict."""
    config = dict(config)
    name = config.pop("class", None)
    cls = getattr(sdes, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, SDE)):
        raise CorruptCheckpointError(f"checkpoint {path} names an unknown SDE class {name!r}")
    try:
        if cls is sdes.DiscreteVPSDE:
            if "betas" in config:
                return cls(torch.as_tensor(config["betas"]))
            n = int(config["num_steps"])  # repr of a linear chain: num_steps, beta_first, beta_last
            return cls.linear(n, config["beta_first"] * n, config["beta_last"] * n)
        return cls(**config)
    except (TypeError, ValueError, KeyError) as e:
        raise CorruptCheckpointError(f"checkpoint {path}: cannot rebuild its SDE {name}({config}): {e}") from e


def _model_class(name: str, path: Path) -> type:
    try:
        return model_class(name, what="model class")
    except ValueError as e:
        raise CorruptCheckpointError(f"checkpoint {path}: {e}") from e


def model_from_state(state: dict, sde: SDE, path: Path | str = "<checkpoint>") -> nn.Module:
    """An untrained model of the checkpoint's class and constructor values (``"model_class"``, ``"model_config"``)."""
    model_config = state.get("model_config")
    if not isinstance(model_config, dict):
        raise CorruptCheckpointError(
            f"checkpoint {path} has no model_config; rebuild the model in Python and use "
            "scoresde.training.load_weights(model, path)"
        )
    cls = _model_class(str(state.get("model_class") or _DEFAULT_MODEL), Path(path))
    try:
        return cls(sde, **model_config)
    except (TypeError, ValueError) as e:
        raise CheckpointMismatchError(f"checkpoint {path}: cannot build {cls.__name__}(sde, **{model_config}): {e}") from e


def load(path: str | os.PathLike, *, ema: bool = True, device: torch.device | str = "cpu") -> Loaded:
    """Rebuild model, SDE and score function from a training checkpoint (``last.pt`` or its run directory).

    Args:
        path: the checkpoint file, or a directory holding ``last.pt``.
        ema: load the EMA weights (default; the ones to sample with) or the raw weights.
        device: where the model goes.

    Raises ``FileNotFoundError``, ``scoresde.training.checkpoints.CheckpointError`` subclasses (corrupt,
    unsafe, or not rebuildable: the message names the file and what is missing).
    """
    if not isinstance(ema, bool):
        raise TypeError(f"`ema` must be a bool, got {ema!r}")
    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / CHECKPOINT_NAME).is_file():
            raise FileNotFoundError(f"`path` {path} is a directory without a {CHECKPOINT_NAME}")
        path = path / CHECKPOINT_NAME
    state = load_checkpoint(path)
    sde_config = state.get("sde_config") or sde_config_from_repr(str(state.get("sde")))
    if not sde_config:
        raise CorruptCheckpointError(f"checkpoint {path} does not record its SDE (found sde={state.get('sde')!r})")
    sde = sde_from_config(sde_config, path)
    model = model_from_state(state, sde, path)
    load_weights(model, path, ema=ema)
    model.to(device).eval().requires_grad_(False)
    event_shape = tuple(getattr(model, "event_shape", state["model_config"].get("event_shape", ())))
    transform = state.get("data_transform")
    transform = Standardization.from_state_dict(transform) if transform is not None else None
    return Loaded(model, sde, model.score_fn, event_shape, state["step"], path, transform)
