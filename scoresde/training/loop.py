"""Training loop for score models: Adam(W), gradient clipping, linear warm-up, EMA, checkpoints.

``train(model, data, TrainConfig(...))`` runs ``num_steps`` steps of denoising score matching
(Song et al. 2021, eq. 7; ``DSMStep``), step k:

    x0 ~ data (data generator);  t ~ U(t_min, T), z ~ N(0, I) (noise generator)
    loss = mean_b DSMLoss(model.score_fn, x0)_b;  backward;  clip the gradient norm
    lr = base_lr * schedule(k);  optimizer step
    ema <- ema + (1 - decay_k)(params - ema),  decay_k = min(ema_decay, (1 + k)/(10 + k))

and returns ``TrainResult(model, ema_model, losses)``.  The EMA warm-up (TensorFlow's
``ExponentialMovingAverage`` with ``num_updates``) keeps the EMA from averaging in the random
initialisation on short runs; the EMA weights are the ones to sample with.

**Everything else is a callback** (``scoresde.training.callbacks``, whose docstring defines the
interface: hooks ``on_start``, ``on_step_end``, ``on_check``, ``on_save``, ``on_end``, ``on_close``,
run by ``order``): ``StopOnSignal`` (SIGINT / SIGTERM), ``Checkpointer`` (timing and writing),
``guards.LossGuard`` (non-finite and exploded losses), ``logs.StepLog`` (CSV, TensorBoard) and
``logs.ProgressBar``; ``train(..., callbacks=[...])`` adds more.

**At scale** (issue 19): ``precision`` (bf16 / fp16 autocast), ``accumulate`` (micro-batches),
``compile`` and data parallelism over ``process_group`` (or the initialised default group) run the
step through ``scaling.ScaledStep``; ``distributed`` holds the conventions (``batch_size`` is the
global batch, rank 0 writes, a signal on any rank stops all).  Without them the step is the above, bit for bit.

**Reproducibility.**  Batches are drawn from the data set (or by index from a data tensor) with
a ``torch.Generator`` seeded from ``seed``; t, z and label dropout come from a second generator
seeded from ``seed + 0x9E3779B97F4A7C15`` (mod 2^64), so a change of loss leaves the data stream
alone.  No DataLoader, no global RNG.  A checkpoint holds the model, EMA, optimizer state, both
generator states (uint8 tensors), the step and the loss history, so resuming continues to the
bit-identical result of an uninterrupted run with the same config (same device type).

**Host synchronisation.**  The step itself never synchronises: its loss is recorded on the device
(``history.LossHistory``).  Every ``check_every`` steps (default 100), at each checkpoint and at the
end, the losses since the last check are read back to the host in one transfer; the guards, the
logs and the progress bar read that copy.  Checking the parameters (before a checkpoint, at the
end) is one more.  A non-finite loss therefore stops the run at most ``check_every`` steps late,
which is harmless because parameters are only ever written to disk after their losses (and the
parameters themselves) have been checked.  The loss history grows with the steps run (4 bytes per
step on the host), never with the steps planned.

**Checkpoints** (``<checkpoint_dir>/last.pt``) are written atomically (``scoresde.training.checkpoints``,
whose public names are re-exported here) every ``checkpoint_every`` steps, every
``checkpoint_seconds`` of wall time and at the end; ``checkpoint_dir`` is probed for writability
before the first step, and temporary files of a write that a killed process left behind are removed.

**Interrupts.**  SIGINT (Ctrl-C) or SIGTERM lets the current step finish, runs the guards, writes
a checkpoint and raises ``TrainingInterrupted`` (a ``KeyboardInterrupt``); ``resume=True``
continues from it to the bit-identical result.  A second signal stops at once.

**Divergence.**  Besides non-finite values, the guard stops a run whose loss exploded while
staying finite (the median of the last 10 losses above ``divergence_factor`` times the larger of
the first loss and the median of the last 1000): ``LossExplosionError``, before any checkpoint is
overwritten.
"""
import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .._checks import check_int, check_in, check_nonnegative, check_positive, check_probability, trusted_times
from .._io import OutputError, probe_writable, remove_stale_temporaries
from .batches import batch_source
from .callbacks import Callback, Checkpointer, Due, StopOnSignal, TrainingInterrupted, TrainState, sync_buffers
from .checkpoints import (  # re-exported: the public checkpoint API stays importable from here
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    CheckpointError,
    CheckpointMismatchError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    load_checkpoint,
    load_weights,
    restore_training_state,
    save_checkpoint,
)
from .guards import DivergenceError, LossExplosionError, LossGuard, NonFiniteLossError
from .history import LossHistory
from .logs import ProgressBar, StepLog, summary_writer_class as _summary_writer_class
from .losses import DSMLoss
from .recipes import Adam, AdamW, ConstantLR, check_betas
from .distributed import AgreeOnFinish, AgreeOnStop, resolve_group
from .scaling import PRECISIONS, GradScalerState, ScaledStep, needs_scaled_step

__all__ = [
    "CHECKPOINT_FORMAT",
    "TrainConfig",
    "TrainResult",
    "train",
    "DSMStep",
    "Callback",
    "save_checkpoint",
    "load_checkpoint",
    "load_weights",
    "CheckpointError",
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "CheckpointMismatchError",
    "NonFiniteLossError",
    "DivergenceError",
    "LossExplosionError",
    "TrainingInterrupted",
    "OutputError",
]

log = logging.getLogger(__name__)

_NOISE_SEED_OFFSET = 0x9E3779B97F4A7C15


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
    null_label_loss: bool = True  # conditional models: add the null label's DSM loss on every batch (see train)
    checkpoint_dir: str | None = None  # None: no checkpoints
    checkpoint_every: int = 1000  # steps between checkpoints (and at the end); 0: by time / at the end only
    checkpoint_seconds: float = 300.0  # wall time between checkpoints; 0 disables the time trigger
    divergence_factor: float | None = 100.0  # stop when the loss exceeds this times its reference; None: off
    check_every: int = 100  # steps between non-finite checks / progress-bar refreshes
    progress: bool = False
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"  # "bf16" / "fp16": autocast (fp16 with a GradScaler); weights, EMA, checkpoints stay fp32
    accumulate: int = 1  # micro-batches per step: the step's batch is batch_size * accumulate
    compile: bool = False  # torch.compile the score evaluation

    def __post_init__(self):
        check_int("num_steps", self.num_steps)
        check_int("batch_size", self.batch_size)
        check_positive("lr", self.lr)
        check_in("optimizer", self.optimizer, ("adam", "adamw"))
        check_nonnegative("weight_decay", self.weight_decay)
        check_betas(self.beta1, self.beta2)
        check_int("warmup_steps", self.warmup_steps, minimum=0)
        if self.grad_clip is not None:
            check_positive("grad_clip", self.grad_clip)
        check_probability("ema_decay", self.ema_decay)
        check_probability("label_dropout", self.label_dropout)
        if not isinstance(self.null_label_loss, bool):
            raise TypeError(f"`null_label_loss` must be a bool, got {self.null_label_loss!r}")
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, (str, os.PathLike)):
            raise TypeError(f"`checkpoint_dir` must be a path or None, got {self.checkpoint_dir!r}")
        check_int("checkpoint_every", self.checkpoint_every, minimum=0)
        check_nonnegative("checkpoint_seconds", self.checkpoint_seconds)
        if self.divergence_factor is not None and check_positive("divergence_factor", self.divergence_factor) <= 1:
            raise ValueError(f"`divergence_factor` must be > 1 (or None), got {self.divergence_factor!r}")
        check_int("check_every", self.check_every)
        if not isinstance(self.progress, bool):
            raise TypeError(f"`progress` must be a bool, got {self.progress!r}")
        check_int("seed", self.seed, minimum=0, maximum=2**63 - 1)
        check_in("precision", self.precision, tuple(PRECISIONS))
        check_int("accumulate", self.accumulate)
        if not isinstance(self.compile, bool):
            raise TypeError(f"`compile` must be a bool, got {self.compile!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"`device` must name a torch device such as 'cpu' or 'cuda', got {self.device!r}") from e


class TrainResult(NamedTuple):
    model: nn.Module  # the trained model (trained in place)
    ema_model: nn.Module  # EMA of the weights, for sampling
    losses: torch.Tensor  # float32 [num_steps] on CPU (fewer if a callback finished early), the batch-mean loss of every step


# -- the step --------------------------------------------------------------------------------


class DSMStep:
    """One optimisation step of denoising score matching: ``step(k, x0, labels) -> loss`` (0-d, on the device).

    The module docstring's algorithm: the batch-mean loss (with label dropout to the null label
    and the null label's own term for a conditional model, see ``train``), backward, gradient-norm
    clipping, the learning rate of step k, the optimizer step and the EMA update.  t, z and the
    label dropout are drawn from ``noise_gen``; nothing synchronises with the device.
    """

    def __init__(self, model: nn.Module, ema: nn.Module, loss_fn, optimizer: torch.optim.Optimizer, lr_schedule,
                 config: TrainConfig, noise_gen: torch.Generator, group=None):
        self.model, self.loss_fn, self.optimizer, self.lr_schedule = model, loss_fn, optimizer, lr_schedule
        self.config, self.noise_gen, self.device = config, noise_gen, torch.device(config.device)
        pairs = [(p, e) for p, e in zip(model.parameters(), ema.parameters()) if p.requires_grad]
        self.params, self.ema_params = [p for p, _ in pairs], [e for _, e in pairs]
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.num_classes = getattr(model, "num_classes", 0)
        world = torch.distributed.get_world_size(group) if group is not None else 1
        # precision / accumulate / compile / several ranks: scaling.ScaledStep (else the plain path, bit for bit)
        self.scaled = ScaledStep(model, ema, loss_fn, config, noise_gen, group) if needs_scaled_step(config, world) else None

    def __call__(self, step: int, x0: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if self.scaled is None:
            loss = self.loss(x0, labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.scaled.backward(x0, labels)
            self.scaled.unscale(self.optimizer)
        if self.config.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.params, self.config.grad_clip, foreach=True)
        factor = self.lr_schedule(step, self.config.num_steps)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        self.optimizer.step() if self.scaled is None else self.scaled.step(self.optimizer)
        ema_update(self.ema_params, self.params, step, self.config)
        return loss.detach()

    def loss(self, x0: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """mean_b loss_fn(x0)_b; conditional: labels dropped with probability label_dropout, plus the null label's term."""
        config, num_classes, g = self.config, self.num_classes, self.noise_gen
        if num_classes and config.label_dropout > 0:
            drop = torch.rand(labels.shape, generator=g, device=self.device) < config.label_dropout
            labels = torch.where(drop, torch.full_like(labels, num_classes), labels)
        loss = self.loss_fn(self.model.score_fn, x0, g, labels=labels).mean()
        if num_classes and config.null_label_loss:  # the unconditional model, trained on every batch
            null = torch.full_like(labels, num_classes)
            loss = loss + self.loss_fn(self.model.score_fn, x0, g, labels=null).mean()
        return loss


def ema_update(ema_params: list, params: list, step: int, config: TrainConfig) -> None:
    """ema <- ema + (1 - decay)(params - ema) with the warm-up decay = min(ema_decay, (1 + step)/(10 + step))."""
    decay = min(config.ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():  # else the EMA weights carry an autograd history that grows every step
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)


# -- the loop --------------------------------------------------------------------------------


def train(model: nn.Module, data, config: TrainConfig = TrainConfig(), *, loss_fn=None, resume=False,
          optimizer=None, lr_schedule=None, log_file=None, tensorboard_dir=None, callbacks=(),
          process_group=None) -> TrainResult:
    """Train ``model`` (in place) on ``data`` with denoising score matching.

    Args:
        model: a score model with ``score_fn(x, t, labels=None)`` and ``sde`` (e.g. ``nets.ScoreMLP``);
            a model with ``num_classes > 0`` is trained on labels, dropped to ``num_classes`` (the
            null label) with probability ``label_dropout``; with ``null_label_loss`` (default) the
            loss also holds the null label's DSM term on the whole batch (fresh t and z), so the
            unconditional model is trained on every step, as long as an unconditional run, for a
            second forward/backward pass.  (With label dropout alone, 0.1, the null-label samples of
            eight Gaussians stayed far from an unconditional run's: 8.6% vs 2.3% of samples below
            the target's 1% density quantile, covariance error 1.4 vs 0.18.)
        data: a data set with ``sample(n, generator)`` (and ``sample_with_labels``), a tensor
            ``[N, *D]``, a tuple ``(x [N, *D], labels [N])``, or an iterable of batches (a
            ``DataLoader``; each batch ``x [B, *D]`` or ``(x, labels)``, whose labels only a
            conditional model uses; re-iterated at its end, one epoch after another).  With an
            iterable, the batches and their order are the iterable's (``batch_size`` and the data
            seed do not apply, and a resumed run restarts the iterable).
        config: ``TrainConfig``.
        loss_fn: per-sample loss ``loss_fn(score_fn, x0, generator, labels=...) -> [B]``; default
            ``DSMLoss(model.sde)``.
        resume: False (refuse to overwrite an existing checkpoint), True (continue from
            ``<checkpoint_dir>/last.pt``, which must exist) or the path of a checkpoint to continue from.
        optimizer: None (``config.optimizer``, ``lr``, ``beta1``, ``beta2``, ``weight_decay``) or a
            factory ``optimizer(params) -> torch.optim.Optimizer`` (``scoresde.training.recipes.Adam``/``AdamW``,
            ``functools.partial(torch.optim.SGD, lr=0.1)``), which replaces those fields.
        lr_schedule: None (linear warm-up over ``config.warmup_steps``) or ``schedule(step, num_steps)
            -> factor`` of the optimizer's learning rate (``scoresde.training.recipes.WarmupCosine``, ...).
        log_file: None or the path of a CSV file ``step,loss,lr`` (one row per step, written at every
            ``check_every`` sync; appended to when resuming).
        tensorboard_dir: None or a directory for TensorBoard event files with the same ``loss`` and
            ``lr`` scalars (optional extra: ``pip install -e ".[tensorboard]"``; checked before training).
        callbacks: more ``scoresde.training.callbacks.Callback`` objects, run with the built-in ones
            (signals, checkpoints, guards, logs) in the order of their ``order`` attribute.
        process_group: None (torch.distributed's default group when initialised, else one process) or
            a ``torch.distributed`` process group: data-parallel training (``scoresde.training.distributed``:
            ``batch_size`` is the global batch, rank 0 writes the files, a signal on any rank stops all).

    Raises ``DataError`` for empty or non-finite data, ``NonFiniteLossError`` / ``LossExplosionError`` if the loss diverges
    (the last checkpoint on disk is left untouched) and ``CheckpointError`` subclasses for unusable
    checkpoints.  SIGINT / SIGTERM (from the call on) end the run with a checkpoint and
    ``TrainingInterrupted`` (see the module docstring).
    """
    with StopOnSignal() as signals:  # installed first: a signal during set-up is honoured after the first step
        reporting = [StepLog(log_file, tensorboard_dir)] if log_file is not None or tensorboard_dir is not None else []
        given = [signals, *reporting, *_check_callbacks(callbacks)]
        state, dsm_step, draw = _setup(model, data, config, loss_fn, resume, optimizer, lr_schedule, process_group)
        state.callbacks = _callbacks(state, [*given, *_scaling_callbacks(dsm_step)])
        with trusted_times():  # the loop's times are drawn in range: the SDE's and model's checks are skipped
            try:
                _loop(state, dsm_step, draw)
            finally:
                for callback in reversed(state.callbacks):
                    callback.on_close(state)
    sync_buffers(state.ema, state.model)
    return TrainResult(state.model, state.ema, state.history.values.clone())


def _loop(state: TrainState, dsm_step: DSMStep, draw) -> None:
    """The steps from ``state.start`` to ``num_steps`` with the hooks of ``scoresde.training.callbacks``."""
    config, history = state.config, state.history
    _hook(state, "on_start")
    for step in range(state.start, config.num_steps):
        x0, labels = draw(config.batch_size, state.data_gen)
        history.record(dsm_step(step, x0, labels))
        state.step = done = step + 1
        last = done == config.num_steps
        state.due = due = Due(check=last or done % config.check_every == 0, params=last)
        _hook(state, "on_step_end")
        if due.sync:
            state.new_from = done - history.pending
            state.new_losses = history.read_back()  # the one host synchronisation of a check
            _hook(state, "on_check")
        if due.save:
            _hook(state, "on_save")
        if due.stop is not None and not last:
            raise TrainingInterrupted(done, state.checkpoint_path if state.saved_step == done else None, due.stop)
        if due.finish:  # a callback's early stop (e.g. quality.QualityCheck's patience): a normal end
            break
    _hook(state, "on_end")


def _hook(state: TrainState, name: str) -> None:
    for callback in state.callbacks:
        getattr(callback, name)(state)


def _check_callbacks(callbacks) -> list:
    callbacks = list(callbacks)
    for callback in callbacks:
        if not isinstance(callback, Callback):
            raise TypeError(f"`callbacks` must hold scoresde.training.callbacks.Callback objects, got {callback!r}")
    return callbacks


def _callbacks(state: TrainState, given: list) -> list:
    """The run's callbacks, sorted by ``order`` (stable): the given ones plus checkpoints, guards, the bar."""
    config = state.config
    built_in = [LossGuard(config.divergence_factor)]
    if state.checkpoint_path is not None:
        built_in.append(Checkpointer(config.checkpoint_every, config.checkpoint_seconds))
    if config.progress:
        built_in.append(ProgressBar())
    callbacks = [cb for cb in [*built_in, *given] if state.rank == 0 or not cb.rank_zero_only]
    return sorted(callbacks, key=lambda cb: cb.order)


def _scaling_callbacks(dsm_step: DSMStep) -> list:
    """Several ranks: agree on a stop and an early finish; fp16: keep the GradScaler's state in checkpoints."""
    scaled = dsm_step.scaled
    if scaled is None:
        return []
    agree = [AgreeOnStop(scaled.group)] if scaled.world > 1 else []
    return agree + [AgreeOnFinish(stop) for stop in agree] + \
        ([GradScalerState(scaled.scaler)] if scaled.scaler is not None else [])


def _process_rank() -> int:
    """This process's rank when ``torch.distributed`` is initialised, else 0."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _setup(model: nn.Module, data, config: TrainConfig, loss_fn, resume, optimizer, lr_schedule, process_group=None):
    """Check the arguments, build (or restore) the run: ``(TrainState, DSMStep, draw)``; fails before any step."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"`config` must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module) or not callable(getattr(model, "score_fn", None)):
        raise TypeError(f"`model` must be an nn.Module with a score_fn method, got {type(model).__name__}")
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`device` is {config.device!r} but CUDA is not available")
    group = resolve_group(process_group)
    rank = _process_rank() if group is None else torch.distributed.get_rank(group)
    ckpt_path = Path(config.checkpoint_dir) / CHECKPOINT_NAME if config.checkpoint_dir is not None else None
    resume_path = _resume_path(resume, ckpt_path)
    if ckpt_path is not None and rank == 0:  # before any work: an unwritable checkpoint_dir fails now, not at the first save
        probe_writable(ckpt_path.parent, "`checkpoint_dir`")
        for stale in remove_stale_temporaries(ckpt_path.parent):
            log.info("removed %s, left by an interrupted checkpoint write", stale)

    model.to(device).train()
    loss_fn = DSMLoss(model.sde) if loss_fn is None else loss_fn
    draw = batch_source(data, model, device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = _optimizer(optimizer, config, [p for p in model.parameters() if p.requires_grad])
    if lr_schedule is not None and not callable(lr_schedule):
        raise TypeError(f"`lr_schedule` must be callable as schedule(step, num_steps) -> factor, got {lr_schedule!r}")
    if lr_schedule is None:  # TrainConfig's own warm-up, scaling the optimizer's lr (a given optimizer keeps its own)
        lr_schedule = ConstantLR(config.warmup_steps)
    data_gen = torch.Generator(device=device).manual_seed(config.seed)
    noise_gen = torch.Generator(device=device).manual_seed((config.seed + _NOISE_SEED_OFFSET) % 2**64)
    dsm_step = DSMStep(model, ema, loss_fn, optimizer, lr_schedule, config, noise_gen, group)  # before a resume: base lrs
    if config.accumulate > 1:  # the step's batch: batch_size * accumulate, split by ScaledStep
        draw_one = draw
        draw = lambda n, g: draw_one(n * config.accumulate, g)  # noqa: E731

    start, losses, resumed = 0, None, {}
    if resume_path is not None:
        start, losses, resumed = restore_training_state(resume_path, config, model, ema, optimizer, data_gen, noise_gen)
        log.info("resumed from %s at step %d", resume_path, start)
    same_file = resume_path is not None and ckpt_path is not None and resume_path.resolve() == ckpt_path.resolve()
    history = LossHistory(device, losses, pending=min(config.check_every, config.num_steps, 4096))
    state = TrainState(config, model, ema, optimizer, data_gen, noise_gen, history, start, checkpoint_path=ckpt_path,
                       saved_step=start if same_file else None, data_transform=getattr(data, "transform", None),
                       rank=rank, resumed_callbacks=resumed)
    return state, dsm_step, draw


def _optimizer(optimizer, config: TrainConfig, params: list) -> torch.optim.Optimizer:
    """``config``'s Adam / AdamW, or the given factory ``optimizer(params)``."""
    if optimizer is None:
        opt_cls = Adam if config.optimizer == "adam" else AdamW
        optimizer = opt_cls(lr=config.lr, beta1=config.beta1, beta2=config.beta2, weight_decay=config.weight_decay)
    if callable(optimizer) and not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer(params)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"`optimizer` must be a factory params -> torch.optim.Optimizer, got {optimizer!r}")
    return optimizer


def _resume_path(resume, ckpt_path: Path | None) -> Path | None:
    if resume is False:
        if ckpt_path is not None and ckpt_path.exists():
            raise FileExistsError(
                f"checkpoint {ckpt_path} exists; pass resume=True (resume=true on the command line) to continue that "
                "run, or choose another checkpoint_dir"
            )
        return None
    if resume is True:
        if ckpt_path is None:
            raise ValueError("`resume=True` needs `config.checkpoint_dir`")
        if not ckpt_path.exists():
            raise FileNotFoundError(
                f"resume=True but there is no checkpoint {ckpt_path} to resume from; "
                "start a new run with resume=False (the default)"
            )
        return ckpt_path
    if not isinstance(resume, (str, os.PathLike)):
        raise TypeError(f"`resume` must be a bool or a checkpoint path, got {resume!r}")
    path = Path(resume)
    if ckpt_path is not None and ckpt_path.exists() and path.resolve() != ckpt_path.resolve():
        raise FileExistsError(
            f"resuming from {path} would overwrite the different checkpoint {ckpt_path}; choose another checkpoint_dir"
        )
    return path
