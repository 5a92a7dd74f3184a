"""Training checkpoints: the file format, atomic writes, safe reads, and restoring a run.

A checkpoint (``<checkpoint_dir>/last.pt``, format ``"scoresde.training/1"``) is a dict of tensors,
numbers, strings, lists and dicts only::

    {"format", "step", "model", "ema", "optimizer",
     "generators": {"data", "noise"},     # torch.Generator states, uint8 tensors
     "losses",                            # float32 [step], the batch-mean loss of every step so far
     "config",                            # the TrainConfig as a plain dict
     "model_config", "sde"}               # model.config (if any) and repr(model.sde)

``training_state`` writes this layout and ``load_checkpoint`` checks it.  Files are written to a
temporary file in the same directory, flushed, fsynced and ``os.replace``d (``save_checkpoint``),
so the file on disk is always a complete earlier checkpoint, and read back with
``torch.load(weights_only=True)``, which refuses pickled code.  Every error names the file and
the problem: ``CorruptCheckpointError`` (truncated, garbage, foreign), ``UnsafeCheckpointError``
(pickled objects), ``CheckpointMismatchError`` (another architecture, SDE, device type or
trajectory-changing config field).  ``restore_training_state`` checks all of that before it loads
anything, so a failed resume leaves the model untouched where it can.

``"model_class"`` (the model's import path) and ``"sde_config"`` (``sde_config``) let
``scoresde.load`` rebuild model and SDE from the file alone; ``"losses"`` may be followed by
``"interrupted": True`` for a checkpoint written on SIGINT / SIGTERM; ``"callbacks"`` (optional)
holds the state of training callbacks that keep one (``scoresde.training.callbacks``).

Used by ``scoresde.training`` (which re-exports the public names); depends only on torch.
"""
import ast
import os
import pickle
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_write_with

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "save_checkpoint",
    "load_checkpoint",
    "load_weights",
    "training_state",
    "restore_training_state",
    "CheckpointError",
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "CheckpointMismatchError",
]

CHECKPOINT_FORMAT = "scoresde.training/1"
CHECKPOINT_NAME = "last.pt"
# Fields of ``training.TrainConfig`` that change the trajectory: a resumed run must agree on them.
TRAJECTORY_FIELDS = (
    "batch_size", "lr", "optimizer", "weight_decay", "beta1", "beta2", "warmup_steps",
    "grad_clip", "ema_decay", "label_dropout", "seed", "accumulate", "precision",
)  # fmt: skip
_WRITTEN_BEFORE = {"accumulate": 1, "precision": "fp32"}  # checkpoints older than these fields: their only value


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used."""


class CorruptCheckpointError(CheckpointError):
    """The file is truncated, corrupted, or not a scoresde training checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """The file holds pickled code or objects that ``torch.load(weights_only=True)`` refuses."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint was written for another model shape, SDE, device type or training config."""


# -- files -----------------------------------------------------------------------------------


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (``scoresde._io.atomic_write``: temp file, fsync, ``os.replace``).

    The state is serialised in memory first, so a full disk raises ``OutputError`` naming the file
    and the OS error (ENOSPC) rather than a torch-internal zip-writer message, and never leaves a
    partial file.
    """
    return atomic_write_with(path, lambda buffer: torch.save(state, buffer))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a training checkpoint with ``torch.load(weights_only=True)`` onto the CPU and check its layout."""
    path = Path(path).expanduser()
    if path.is_dir():
        hint = f"; did you mean {path / CHECKPOINT_NAME}?" if (path / CHECKPOINT_NAME).is_file() else ""
        raise IsADirectoryError(f"checkpoint {path} is a directory, not a checkpoint file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    # Open the file here so that OS-level errors (permissions, ...) propagate unchanged; every
    # error from torch.load itself is about the file's content.
    with open(path, "rb") as f:
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:
            _raise_load_error(e, path)
    _check_layout(state, path)
    return state


def _raise_load_error(e: Exception, path: Path):
    if isinstance(e, pickle.UnpicklingError):
        if "GLOBAL" in str(e):  # weights_only met a class or function reference
            detail = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln), "")
            raise UnsafeCheckpointError(
                f"checkpoint {path} contains pickled code or objects, which safe loading "
                f"(torch.load(weights_only=True)) refuses: {detail}"
            ) from e
    detail = "the file is empty (0 bytes)" if path.stat().st_size == 0 else _first_line(e)
    raise CorruptCheckpointError(f"checkpoint {path} is corrupted or truncated: {detail}") from e


def _first_line(e: BaseException) -> str:
    """``Type: first informative line`` of an error (skipping torch's generic weights_only preamble)."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(boilerplate)]
    return f"{type(e).__name__}: {(useful or lines or ['(no message)'])[0]}"


def _check_layout(state: Any, path: Path) -> None:
    def bad(what: str):
        raise CorruptCheckpointError(f"checkpoint {path} is corrupted or not a scoresde training checkpoint: {what}")

    if not isinstance(state, dict):
        bad(f"expected a dict, found {type(state).__name__}")
    if state.get("format") != CHECKPOINT_FORMAT:
        bad(f"format is {state.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    for key, kind in (("model", dict), ("ema", dict), ("optimizer", dict), ("generators", dict), ("config", dict)):
        if not isinstance(state.get(key), kind):
            bad(f"entry {key!r} is missing or not a {kind.__name__}")
    step, losses = state.get("step"), state.get("losses")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        bad(f"entry 'step' must be an int >= 0, found {step!r}")
    if not torch.is_tensor(losses) or losses.shape != (step,):
        bad(f"entry 'losses' must be a tensor of shape [{step}]")
    for name in ("data", "noise"):
        g = state["generators"].get(name)
        if not torch.is_tensor(g) or g.dtype != torch.uint8:
            bad(f"generator state {name!r} is missing or not a uint8 tensor")


def _check_module_state(module: nn.Module, state_dict: dict, path: Path, what: str) -> None:
    """Raise ``CheckpointMismatchError`` naming the first missing, unexpected or mis-shaped entry."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"checkpoint {path} does not fit the {what}: missing entries {missing[:5]}, unexpected entries "
            f"{unexpected[:5]} (written for a different architecture?)"
        )
    for k, v in own.items():
        if not torch.is_tensor(state_dict[k]) or state_dict[k].shape != v.shape:
            found = tuple(state_dict[k].shape) if torch.is_tensor(state_dict[k]) else type(state_dict[k]).__name__
            raise CheckpointMismatchError(
                f"checkpoint {path} does not fit the {what}: parameter {k!r} has shape {found} in the "
                f"checkpoint but {tuple(v.shape)} in the model (written for a different architecture?)"
            )


def load_weights(model: nn.Module, path: str | os.PathLike, *, ema: bool = True) -> nn.Module:
    """Load the EMA (default) or raw weights of a training checkpoint into ``model``, in place."""
    path = Path(path)
    state = load_checkpoint(path)
    weights = state["ema" if ema else "model"]
    _check_module_state(model, weights, path, "model")
    model.load_state_dict(weights)
    return model


# -- a training run's state -----------------------------------------------------------------


def training_state(step, config, model, ema, optimizer, data_gen, noise_gen, losses) -> dict:
    """The checkpoint of a run after ``step`` steps (the layout of the module docstring).

    ``config`` is a ``TrainConfig`` (a dataclass), ``losses`` the run's loss buffer (its first
    ``step`` entries are kept), ``data_gen`` / ``noise_gen`` the two generators of the loop.
    """
    model_config = getattr(model, "config", None)
    return {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generators": {"data": data_gen.get_state(), "noise": noise_gen.get_state()},
        "losses": losses[:step].detach().to("cpu", copy=True),
        "config": {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in asdict(config).items()},
        "model_config": dict(model_config) if isinstance(model_config, dict) else None,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "sde": repr(getattr(model, "sde", None)),
        "sde_config": sde_config(getattr(model, "sde", None)),
    }


def sde_config(sde) -> dict | None:
    """What rebuilds ``sde`` (``scoresde.training.loading``): its class name and constructor values (a DDPM chain: its betas)."""
    if sde is None:
        return None
    config = {"class": type(sde).__name__}
    if torch.is_tensor(getattr(sde, "betas", None)):
        config["betas"] = sde.betas.clone()
    else:
        config.update(sde._repr_fields() if hasattr(sde, "_repr_fields") else {})
    return config


def sde_config_from_repr(text: str) -> dict | None:
    """``sde_config`` parsed from an older checkpoint's ``repr(sde)``, e.g. ``VPSDE(beta_min=0.1, ...)``; None if it fails."""
    try:
        call = ast.parse(text, mode="eval").body
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
            return None
        return {"class": call.func.id, **{k.arg: ast.literal_eval(k.value) for k in call.keywords}}
    except (SyntaxError, ValueError):
        return None


def _check_compatible(saved: dict, config, model: nn.Module, path: Path) -> None:
    for name in TRAJECTORY_FIELDS:
        value = saved.get(name, _WRITTEN_BEFORE.get(name))
        if value != getattr(config, name):
            raise CheckpointMismatchError(
                f"checkpoint {path} was written with {name}={value!r} but the config has "
                f"{name}={getattr(config, name)!r}; resuming would not continue the same run"
            )
    if torch.device(saved.get("device", "cpu")).type != torch.device(config.device).type:
        raise CheckpointMismatchError(
            f"checkpoint {path} was written on device {saved.get('device')!r}, config has {config.device!r}: "
            "generator states do not transfer between device types"
        )


def restore_training_state(path, config, model, ema, optimizer, data_gen, noise_gen) -> tuple[int, torch.Tensor, dict]:
    """Load the checkpoint at ``path`` into a run's objects (in place); return (step, losses [step], callback states).

    Check everything first (layout, trajectory fields of ``config``, device type, SDE, step <=
    ``config.num_steps``, every parameter shape), then load: a failed resume leaves the model
    untouched where it can.  The callback states are the checkpoint's ``"callbacks"`` entry ({} if none).
    """
    state = load_checkpoint(path)
    _check_compatible(state["config"], config, model, path)
    sde = repr(getattr(model, "sde", None))
    if state.get("sde") != sde:
        raise CheckpointMismatchError(f"checkpoint {path} was written for sde {state.get('sde')}, the model has {sde}")
    step = state["step"]
    if step > config.num_steps:
        raise CheckpointMismatchError(f"checkpoint {path} is at step {step}, beyond num_steps={config.num_steps}")
    _check_module_state(model, state["model"], path, "model")
    _check_module_state(ema, state["ema"], path, "EMA model")
    try:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        data_gen.set_state(state["generators"]["data"])
        noise_gen.set_state(state["generators"]["noise"])
    except (ValueError, RuntimeError, KeyError) as e:
        raise CheckpointMismatchError(f"checkpoint {path} cannot be restored into this run: {_first_line(e)}") from e
    callbacks = state.get("callbacks", {})
    return step, state["losses"], callbacks if isinstance(callbacks, dict) else {}
