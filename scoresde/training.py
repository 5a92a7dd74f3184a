"""Training loop for score models: Adam(W), gradient clipping, linear warm-up, EMA, checkpoints.

``train(model, data, TrainConfig(...))`` runs ``num_steps`` steps of

    x0 ~ data (from the data generator); t ~ U(t_min, T), z ~ N(0, I) (from the noise generator);
    loss = mean_b DSMLoss(model.score_fn, x0)_b;  backward;  clip grad norm;  lr = lr * min(1, (k+1)/warmup);
    optimizer step;  ema <- ema + (1 - decay_k)(params - ema),  decay_k = min(ema_decay, (1 + k)/(10 + k))

and returns ``TrainResult(model, ema_model, losses)``.  The EMA warm-up (TensorFlow's
``ExponentialMovingAverage`` with ``num_updates``) keeps the EMA from averaging in the random
initialisation on short runs; the EMA weights are the ones to sample with.

**Reproducibility.**  Batches are drawn from the data set (or by index from a data tensor) with
a ``torch.Generator`` seeded from ``seed``; t, z and label dropout come from a second generator
seeded from ``seed + 0x9E3779B97F4A7C15`` (mod 2^64), so a change of loss leaves the data stream
alone.  No DataLoader, no global RNG.  A checkpoint holds the model, EMA, optimizer state, both
generator states (uint8 tensors), the step and the loss history, so resuming continues to the
bit-identical result of an uninterrupted run with the same config (same device type).

**Host synchronisation.**  The step itself never synchronises: per-step losses go into a
preallocated device tensor.  Every ``check_every`` steps (default 100), at each checkpoint and at
the end, one ``isfinite(...).all()`` over the new losses is read back; that single sync feeds the
non-finite guard and the progress bar.  A non-finite loss therefore stops the run at most
``check_every`` steps late, which is harmless because parameters are only ever written to disk
after their losses (and the parameters themselves) have been checked.

**Checkpoints** (``<checkpoint_dir>/last.pt``) are written to a temporary file in the same
directory, flushed, fsynced and ``os.replace``d, so the file on disk is always a complete earlier
checkpoint.  They hold only tensors, numbers, strings, lists and dicts and are read back with
``torch.load(weights_only=True)``; errors name the file and the problem.
"""
import contextlib
import copy
import logging
import math
import os
import pickle
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

from ._checks import check_int, check_in, check_nonnegative, check_positive, check_probability
from .datasets import check_data
from .losses import DSMLoss

__all__ = [
    "TrainConfig",
    "TrainResult",
    "train",
    "save_checkpoint",
    "load_checkpoint",
    "load_weights",
    "CheckpointError",
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "CheckpointMismatchError",
    "NonFiniteLossError",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "scoresde.training/1"
CHECKPOINT_NAME = "last.pt"
_NOISE_SEED_OFFSET = 0x9E3779B97F4A7C15
# Config fields that change the trajectory: a resumed run must agree on them.
_TRAJECTORY_FIELDS = (
    "batch_size", "lr", "optimizer", "weight_decay", "beta1", "beta2", "warmup_steps",
    "grad_clip", "ema_decay", "label_dropout", "seed",
)  # fmt: skip


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used."""


class CorruptCheckpointError(CheckpointError):
    """The file is truncated, corrupted, or not a scoresde training checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """The file holds pickled code or objects that ``torch.load(weights_only=True)`` refuses."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint was written for another model shape, SDE, device type or training config."""


class NonFiniteLossError(RuntimeError):
    """The training loss (or a parameter) became NaN or inf; ``step`` is the first bad step."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


@dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters, checked on construction.

    Defaults suit the 2-D toys with the default ``ScoreMLP`` (about 75k parameters): Adam at 1e-3
    with 100 warm-up steps, gradient norm clipped at 1, batch 512, EMA decay 0.999 (a window of
    about 1000 steps, i.e. a tenth of the default 10k-step run).
    """

    num_steps: int = 10_000
    batch_size: int = 512
    lr: float = 1e-3
    optimizer: str = "adam"  # "adam" or "adamw"
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 100  # linear warm-up from lr / warmup_steps to lr; 0 disables it
    grad_clip: float | None = 1.0  # max global gradient norm; None disables clipping
    ema_decay: float = 0.999
    label_dropout: float = 0.1  # p_uncond of classifier-free guidance (conditional models only)
    checkpoint_dir: str | None = None  # None: no checkpoints
    checkpoint_every: int = 0  # steps between checkpoints; 0: only at the end
    check_every: int = 100  # steps between non-finite checks / progress-bar refreshes
    progress: bool = False
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        check_int("num_steps", self.num_steps)
        check_int("batch_size", self.batch_size)
        check_positive("lr", self.lr)
        check_in("optimizer", self.optimizer, ("adam", "adamw"))
        check_nonnegative("weight_decay", self.weight_decay)
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if check_probability(name, value) == 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {value!r}")
        check_int("warmup_steps", self.warmup_steps, minimum=0)
        if self.grad_clip is not None:
            check_positive("grad_clip", self.grad_clip)
        check_probability("ema_decay", self.ema_decay)
        check_probability("label_dropout", self.label_dropout)
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, (str, os.PathLike)):
            raise TypeError(f"`checkpoint_dir` must be a path or None, got {self.checkpoint_dir!r}")
        check_int("checkpoint_every", self.checkpoint_every, minimum=0)
        check_int("check_every", self.check_every)
        if not isinstance(self.progress, bool):
            raise TypeError(f"`progress` must be a bool, got {self.progress!r}")
        check_int("seed", self.seed, minimum=0, maximum=2**63 - 1)
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"`device` must name a torch device such as 'cpu' or 'cuda', got {self.device!r}") from e


class TrainResult(NamedTuple):
    model: nn.Module  # the trained model (trained in place)
    ema_model: nn.Module  # EMA of the weights, for sampling
    losses: torch.Tensor  # float32 [num_steps] on CPU, the batch-mean loss of every step


# -- checkpoint files ------------------------------------------------------------------------


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: temp file in the same directory, fsync, ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable (not supported everywhere)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a training checkpoint with ``torch.load(weights_only=True)`` onto the CPU and check its layout."""
    path = Path(path)
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


# -- the loop --------------------------------------------------------------------------------


def _batch_source(data, model: nn.Module, device: torch.device):
    """A function ``draw(batch_size, generator) -> (x0, labels | None)`` and whether data need a first-batch check."""
    num_classes = getattr(model, "num_classes", 0)
    if torch.is_tensor(data) or (isinstance(data, tuple) and len(data) == 2 and torch.is_tensor(data[0])):
        x, labels = (data, None) if torch.is_tensor(data) else data
        x = check_data(x).to(device)
        if num_classes and labels is None:
            raise ValueError("a conditional model needs labels: pass `data` as (x [N, *D], labels [N])")
        if labels is not None:
            labels = torch.as_tensor(labels).to(device=device, dtype=torch.long)
            if labels.shape != x.shape[:1]:
                raise ValueError(f"`labels` must have shape [N] = [{x.shape[0]}], got {tuple(labels.shape)}")
            if num_classes and not bool(((labels >= 0) & (labels < num_classes)).all()):
                raise ValueError(f"`labels` must lie in [0, {num_classes}) for a model with num_classes={num_classes}")

        def draw(n, g):
            idx = torch.randint(x.shape[0], (n,), generator=g, device=device)
            return x[idx], (labels[idx] if num_classes else None)

        return draw, False
    if not callable(getattr(data, "sample", None)):
        raise TypeError(
            "`data` must be a tensor [N, *D], a tuple (x [N, *D], labels [N]) or a data set with "
            f"sample(n, generator), got {type(data).__name__}"
        )
    if num_classes:
        if getattr(data, "num_classes", 0) != num_classes:
            raise ValueError(
                f"the model has num_classes={num_classes} but the data set has {getattr(data, 'num_classes', 0)} labels"
            )
        return (lambda n, g: data.sample_with_labels(n, g)), True
    return (lambda n, g: (data.sample(n, g), None)), True


def _check_compatible(saved: dict, config: TrainConfig, model: nn.Module, path: Path) -> None:
    for name in _TRAJECTORY_FIELDS:
        if saved.get(name) != getattr(config, name):
            raise CheckpointMismatchError(
                f"checkpoint {path} was written with {name}={saved.get(name)!r} but the config has "
                f"{name}={getattr(config, name)!r}; resuming would not continue the same run"
            )
    if torch.device(saved.get("device", "cpu")).type != torch.device(config.device).type:
        raise CheckpointMismatchError(
            f"checkpoint {path} was written on device {saved.get('device')!r}, config has {config.device!r}: "
            "generator states do not transfer between device types"
        )


def train(model: nn.Module, data, config: TrainConfig = TrainConfig(), *, loss_fn=None, resume=False) -> TrainResult:
    """Train ``model`` (in place) on ``data`` with denoising score matching.

    Args:
        model: a score model with ``score_fn(x, t, labels=None)`` and ``sde`` (e.g. ``nets.ScoreMLP``);
            a model with ``num_classes > 0`` is trained on labels, dropped to ``num_classes`` (the
            null label) with probability ``label_dropout``.
        data: a data set with ``sample(n, generator)`` (and ``sample_with_labels``), a tensor
            ``[N, *D]``, or a tuple ``(x [N, *D], labels [N])``.
        config: ``TrainConfig``.
        loss_fn: per-sample loss ``loss_fn(score_fn, x0, generator, labels=...) -> [B]``; default
            ``DSMLoss(model.sde)``.
        resume: False (refuse to overwrite an existing checkpoint), True (continue from
            ``<checkpoint_dir>/last.pt`` if it exists) or the path of a checkpoint to continue from.

    Raises ``DataError`` for empty or non-finite data, ``NonFiniteLossError`` if the loss diverges
    (the last checkpoint on disk is left untouched) and ``CheckpointError`` subclasses for unusable
    checkpoints.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"`config` must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module) or not callable(getattr(model, "score_fn", None)):
        raise TypeError(f"`model` must be an nn.Module with a score_fn method, got {type(model).__name__}")
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`device` is {config.device!r} but CUDA is not available")
    ckpt_path = Path(config.checkpoint_dir) / CHECKPOINT_NAME if config.checkpoint_dir is not None else None
    resume_path = _resume_path(resume, ckpt_path)

    model.to(device).train()
    loss_fn = DSMLoss(model.sde) if loss_fn is None else loss_fn
    draw, check_first_batch = _batch_source(data, model, device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    pairs = [(p, e) for p, e in zip(model.parameters(), ema.parameters()) if p.requires_grad]
    params, ema_params = [p for p, _ in pairs], [e for _, e in pairs]
    opt_cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    optimizer = opt_cls(params, lr=config.lr, betas=(config.beta1, config.beta2), weight_decay=config.weight_decay)
    data_gen = torch.Generator(device=device).manual_seed(config.seed)
    noise_gen = torch.Generator(device=device).manual_seed((config.seed + _NOISE_SEED_OFFSET) % 2**64)
    losses = torch.full((config.num_steps,), math.nan, device=device)

    start = 0
    if resume_path is not None:
        start = _restore(resume_path, config, model, ema, optimizer, data_gen, noise_gen, losses)
    num_classes = getattr(model, "num_classes", 0)
    checked = start  # losses[:checked] are known to be finite
    same_file = resume_path is not None and ckpt_path is not None and resume_path.resolve() == ckpt_path.resolve()
    last_saved = start if same_file else None

    def guard(stop: int, check_params: bool) -> None:
        nonlocal checked
        finite = torch.isfinite(losses[checked:stop]).all()
        if check_params:
            finite = finite & torch.stack([torch.isfinite(p).all() for p in params + ema_params]).all()
        if not bool(finite):
            bad = (~torch.isfinite(losses[checked:stop])).nonzero()
            if bad.numel():
                step = checked + int(bad[0])
                what = f"training loss became non-finite ({float(losses[step]):g}) at step {step}"
            else:
                step = stop - 1
                what = f"a parameter became non-finite in the update of step {step} (the loss was finite)"
            kept = (
                f"the last good checkpoint {ckpt_path} (step {last_saved}) was left untouched"
                if last_saved is not None
                else "no checkpoint of this run was written"
            )
            raise NonFiniteLossError(f"{what}; {kept}. Lower `lr`, set `grad_clip`, or check the data", step)
        checked = stop

    bar = tqdm(total=config.num_steps, initial=start, disable=not config.progress, desc="train", unit="step")
    try:
        for step in range(start, config.num_steps):
            x0, labels = draw(config.batch_size, data_gen)
            if check_first_batch and step == start:
                check_data(x0, "data batch")
            if num_classes and config.label_dropout > 0:
                drop = torch.rand(labels.shape, generator=noise_gen, device=device) < config.label_dropout
                labels = torch.where(drop, torch.full_like(labels, num_classes), labels)
            loss = loss_fn(model.score_fn, x0, noise_gen, labels=labels).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(params, config.grad_clip, foreach=True)
            if config.warmup_steps:
                lr = config.lr * min(1.0, (step + 1) / config.warmup_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
            optimizer.step()
            decay = min(config.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, params, 1.0 - decay)
            losses[step] = loss.detach()

            done = step + 1
            save_now = ckpt_path is not None and (
                done == config.num_steps or (config.checkpoint_every and done % config.checkpoint_every == 0)
            )
            if save_now or done == config.num_steps or done % config.check_every == 0:
                window = losses[checked:done]
                guard(done, check_params=save_now or done == config.num_steps)
                if config.progress:
                    bar.set_postfix(loss=f"{float(window.mean()):.4f}", refresh=False)
                    bar.update(done - bar.n)
            if save_now:
                _sync_buffers(ema, model)
                save_checkpoint(_state(done, config, model, ema, optimizer, data_gen, noise_gen, losses), ckpt_path)
                last_saved = done
                log.debug("checkpoint at step %d written to %s", done, ckpt_path)
    finally:
        bar.close()
    _sync_buffers(ema, model)
    return TrainResult(model, ema, losses.cpu())


def _resume_path(resume, ckpt_path: Path | None) -> Path | None:
    if resume is False:
        if ckpt_path is not None and ckpt_path.exists():
            raise FileExistsError(
                f"checkpoint {ckpt_path} exists; pass resume=True to continue that run or choose another checkpoint_dir"
            )
        return None
    if resume is True:
        if ckpt_path is None:
            raise ValueError("`resume=True` needs `config.checkpoint_dir`")
        return ckpt_path if ckpt_path.exists() else None
    if not isinstance(resume, (str, os.PathLike)):
        raise TypeError(f"`resume` must be a bool or a checkpoint path, got {resume!r}")
    path = Path(resume)
    if ckpt_path is not None and ckpt_path.exists() and path.resolve() != ckpt_path.resolve():
        raise FileExistsError(
            f"resuming from {path} would overwrite the different checkpoint {ckpt_path}; choose another checkpoint_dir"
        )
    return path


def _sync_buffers(ema: nn.Module, model: nn.Module) -> None:
    with torch.no_grad():
        for e, b in zip(ema.buffers(), model.buffers()):
            e.copy_(b)


def _state(step, config, model, ema, optimizer, data_gen, noise_gen, losses) -> dict:
    model_config = getattr(model, "config", None)
    return {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generators": {"data": data_gen.get_state(), "noise": noise_gen.get_state()},
        "losses": losses[:step].cpu(),
        "config": {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in asdict(config).items()},
        "model_config": dict(model_config) if isinstance(model_config, dict) else None,
        "sde": repr(getattr(model, "sde", None)),
    }


def _restore(path, config, model, ema, optimizer, data_gen, noise_gen, losses) -> int:
    """Check everything first, then load: a failed resume leaves the model untouched where it can."""
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
    losses[:step] = state["losses"].to(losses.device)
    log.info("resumed from %s at step %d", path, step)
    return step
