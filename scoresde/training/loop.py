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
``torch.load(weights_only=True)``; errors name the file and the problem.  The file format, its
checks and the checkpoint errors live in ``scoresde.training.checkpoints`` and are re-exported here.
They are written every ``checkpoint_every`` steps, every ``checkpoint_seconds`` of wall time and
at the end; ``checkpoint_dir`` is probed for writability before the first step, and temporary files
of a write that a killed process left behind are removed.

**Interrupts.**  SIGINT (Ctrl-C) or SIGTERM lets the current step finish, runs the guards, writes
a checkpoint and raises ``TrainingInterrupted`` (a ``KeyboardInterrupt``); ``resume=True``
continues from it to the bit-identical result.  A second signal stops at once.

**Divergence.**  Besides non-finite values, the guard stops a run whose loss exploded while
staying finite (the median of the last 10 losses above ``divergence_factor`` times the larger of
the first loss and the median of the last 1000): ``LossExplosionError``, before any checkpoint is
overwritten.
"""
import contextlib
import copy
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

from .._checks import check_int, check_in, check_nonnegative, check_positive, check_probability, trusted_times
from .._io import OutputError, probe_writable, remove_stale_temporaries
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
    training_state,
)
from ..data.datasets import DataError, check_data
from .losses import DSMLoss
from .recipes import Adam, AdamW, ConstantLR

__all__ = [
    "CHECKPOINT_FORMAT",
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
    "DivergenceError",
    "LossExplosionError",
    "TrainingInterrupted",
    "OutputError",
]

log = logging.getLogger(__name__)

_NOISE_SEED_OFFSET = 0x9E3779B97F4A7C15


class DivergenceError(RuntimeError):
    """Training diverged at ``step``; the last checkpoint on disk (if any) is the last good one."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class NonFiniteLossError(DivergenceError):
    """The training loss (or a parameter) became NaN or inf; ``step`` is the first bad step."""


class LossExplosionError(DivergenceError):
    """The loss stayed finite but exploded: above ``divergence_factor`` times its reference."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training after ``step`` steps; ``checkpoint`` is the checkpoint then written.

    A ``KeyboardInterrupt`` (so ``except Exception`` does not swallow it); resume with ``resume=True``.
    """

    def __init__(self, step: int, checkpoint: Path | None, signum: int):
        self.step, self.checkpoint, self.signum = step, checkpoint, signum
        name = signal.Signals(signum).name
        saved = f"checkpoint {checkpoint} written" if checkpoint is not None else "no checkpoint_dir, nothing saved"
        super().__init__(f"training interrupted by {name} after step {step}; {saved}")


class _Interrupts:
    """While active (main thread only), SIGINT / SIGTERM set ``signum``; a second one raises KeyboardInterrupt."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopped at once")
        self.signum = signum

    def __enter__(self) -> "_Interrupts":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(ValueError, OSError):
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


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
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"`device` must name a torch device such as 'cpu' or 'cuda', got {self.device!r}") from e


class TrainResult(NamedTuple):
    model: nn.Module  # the trained model (trained in place)
    ema_model: nn.Module  # EMA of the weights, for sampling
    losses: torch.Tensor  # float32 [num_steps] on CPU, the batch-mean loss of every step


# -- the loop --------------------------------------------------------------------------------


def _batch_source(data, model: nn.Module, device: torch.device):
    """A function ``draw(batch_size, generator) -> (x0, labels | None)`` and whether data need a first-batch check."""
    num_classes = getattr(model, "num_classes", 0)
    if torch.is_tensor(data) or (isinstance(data, tuple) and len(data) == 2 and torch.is_tensor(data[0])):
        x, labels = (data, None) if torch.is_tensor(data) else data
        x = check_data(x).to(device)
        if num_classes and labels is None:
            raise ValueError("a conditional model needs labels: pass `data` as (x [N, *D], labels [N])")
        if labels is not None and not num_classes:
            raise ValueError(
                "`data` has labels but the model is unconditional (num_classes=0): pass only x, or build "
                "the model with num_classes > 0 to train on the labels"
            )
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
                raise TypeError(f"`labels` must be an integer tensor [N], got dtype {labels.dtype}")
            labels = labels.to(device=device, dtype=torch.long)
            if labels.shape != x.shape[:1]:
                raise ValueError(f"`labels` must have shape [N] = [{x.shape[0]}], got {tuple(labels.shape)}")
            if num_classes and not bool(((labels >= 0) & (labels < num_classes)).all()):
                raise ValueError(f"`labels` must lie in [0, {num_classes}) for a model with num_classes={num_classes}")

        def draw(n, g):
            idx = torch.randint(x.shape[0], (n,), generator=g, device=device)
            return x[idx], (labels[idx] if num_classes else None)

        return draw, False
    if not callable(getattr(data, "sample", None)) and isinstance(data, Iterable):
        return _iterable_source(data, num_classes, device), True
    if not callable(getattr(data, "sample", None)):
        raise TypeError(
            "`data` must be a tensor [N, *D], a tuple (x [N, *D], labels [N]), an iterable of batches or a data set with "
            f"sample(n, generator), got {type(data).__name__}"
        )
    if num_classes:
        if getattr(data, "num_classes", 0) != num_classes:
            raise ValueError(
                f"the model has num_classes={num_classes} but the data set has {getattr(data, 'num_classes', 0)} labels"
            )
        return (lambda n, g: data.sample_with_labels(n, g)), True
    return (lambda n, g: (data.sample(n, g), None)), True


def _iterable_source(data: Iterable, num_classes: int, device: torch.device):
    """``draw(n, g)`` that returns the next batch of ``data`` (``n`` and ``g`` unused), starting a new epoch at its end."""
    iterator = iter(data)
    one_shot = iterator is data  # a generator or iterator: cannot be restarted

    def draw(n, g):
        nonlocal iterator
        try:
            batch = next(iterator)
        except StopIteration:
            if one_shot:
                raise DataError("`data` (an iterator) ran out of batches before num_steps; pass a re-iterable "
                                "such as a DataLoader or a list of batches") from None
            iterator = iter(data)
            try:
                batch = next(iterator)
            except StopIteration:
                raise DataError("`data` is an empty iterable") from None
        labels = None
        if isinstance(batch, (tuple, list)) and len(batch) == 1:  # DataLoader(TensorDataset(x)) yields [x]
            (batch,) = batch
        elif isinstance(batch, (tuple, list)) and len(batch) == 2:
            batch, labels = batch
        if not torch.is_tensor(batch):
            raise TypeError(f"each batch of `data` must be a tensor x [B, *D] or a pair (x, labels), got {type(batch).__name__}")
        if num_classes:
            if labels is None:
                raise ValueError("a conditional model needs labels: batches of `data` must be pairs (x, labels)")
            labels = torch.as_tensor(labels).to(device=device, dtype=torch.long)
        return batch.to(device), (labels if num_classes else None)

    return draw


def _summary_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``, or an ImportError that says how to install it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError('`tensorboard_dir` needs TensorBoard: pip install -e ".[tensorboard]"') from err
    return SummaryWriter


def train(model: nn.Module, data, config: TrainConfig = TrainConfig(), *, loss_fn=None, resume=False,
          optimizer=None, lr_schedule=None, log_file=None, tensorboard_dir=None) -> TrainResult:
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

    Raises ``DataError`` for empty or non-finite data, ``NonFiniteLossError`` if the loss diverges
    (the last checkpoint on disk is left untouched) and ``CheckpointError`` subclasses for unusable
    checkpoints.  SIGINT / SIGTERM (from the call on) end the run with a checkpoint and
    ``TrainingInterrupted`` (see the module docstring).
    """
    with _Interrupts() as interrupt:  # installed first: a signal during set-up is honoured after the first step
        return _train(model, data, config, loss_fn, resume, interrupt, optimizer, lr_schedule, log_file,
                      tensorboard_dir)


def _train(model: nn.Module, data, config: TrainConfig, loss_fn, resume, interrupt: "_Interrupts",
           optimizer=None, lr_schedule=None, log_file=None, tensorboard_dir=None) -> TrainResult:
    summary_writer = _summary_writer_class() if tensorboard_dir is not None else None  # fails before any work
    if not isinstance(config, TrainConfig):
        raise TypeError(f"`config` must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module) or not callable(getattr(model, "score_fn", None)):
        raise TypeError(f"`model` must be an nn.Module with a score_fn method, got {type(model).__name__}")
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`device` is {config.device!r} but CUDA is not available")
    ckpt_path = Path(config.checkpoint_dir) / CHECKPOINT_NAME if config.checkpoint_dir is not None else None
    resume_path = _resume_path(resume, ckpt_path)
    if ckpt_path is not None:  # before any work: an unwritable checkpoint_dir fails now, not at the first save
        probe_writable(ckpt_path.parent, "`checkpoint_dir`")
        for stale in remove_stale_temporaries(ckpt_path.parent):
            log.info("removed %s, left by an interrupted checkpoint write", stale)

    model.to(device).train()
    loss_fn = DSMLoss(model.sde) if loss_fn is None else loss_fn
    draw, check_first_batch = _batch_source(data, model, device)
    transform = getattr(data, "transform", None)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    pairs = [(p, e) for p, e in zip(model.parameters(), ema.parameters()) if p.requires_grad]
    params, ema_params = [p for p, _ in pairs], [e for _, e in pairs]
    if optimizer is None:
        opt_cls = Adam if config.optimizer == "adam" else AdamW
        optimizer = opt_cls(lr=config.lr, beta1=config.beta1, beta2=config.beta2, weight_decay=config.weight_decay)
    if callable(optimizer) and not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer(params)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"`optimizer` must be a factory params -> torch.optim.Optimizer, got {optimizer!r}")
    if lr_schedule is not None and not callable(lr_schedule):
        raise TypeError(f"`lr_schedule` must be callable as schedule(step, num_steps) -> factor, got {lr_schedule!r}")
    if lr_schedule is None:  # TrainConfig's own warm-up, scaling the optimizer's lr (a given optimizer keeps its own)
        lr_schedule = ConstantLR(config.warmup_steps)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    data_gen = torch.Generator(device=device).manual_seed(config.seed)
    noise_gen = torch.Generator(device=device).manual_seed((config.seed + _NOISE_SEED_OFFSET) % 2**64)
    losses = torch.full((config.num_steps,), math.nan, device=device)

    start = 0
    if resume_path is not None:
        start = restore_training_state(resume_path, config, model, ema, optimizer, data_gen, noise_gen, losses)
        log.info("resumed from %s at step %d", resume_path, start)
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
        if config.divergence_factor is not None and stop > checked:
            # Divergence beyond non-finiteness: the median of the last (up to) 10 losses against a
            # reference, the larger of the first step's loss and the median of the last 1000 checked
            # losses.  Checked before any checkpoint is written, so the last good one survives.
            recent = float(losses[max(checked, stop - 10) : stop].median())
            history = losses[max(0, checked - 1000) : checked]
            reference = max(float(losses[0]), float(history.median()) if history.numel() else -math.inf)
            if reference > 0 and recent > config.divergence_factor * reference:
                kept = (
                    f"the last good checkpoint {ckpt_path} (step {last_saved}) was left untouched"
                    if last_saved is not None
                    else "no checkpoint of this run was written"
                )
                raise LossExplosionError(
                    f"training diverged: the loss reached {recent:.3g} by step {stop - 1}, more than "
                    f"divergence_factor={config.divergence_factor:g} times its reference {reference:.3g}; {kept}. "
                    "Lower `lr` or set `grad_clip`",
                    stop - 1,
                )
        checked = stop

    # SIGINT / SIGTERM set a flag; the step in progress finishes, a checkpoint is written and
    # TrainingInterrupted is raised.  The loop's times are in range, so time checks are skipped.
    stack = contextlib.ExitStack()
    stack.enter_context(trusted_times())
    saved_at = time.monotonic()
    csv_log, logged, lrs = None, start, []  # lrs: learning rate of each step not yet logged
    if log_file is not None:
        csv_log = stack.enter_context(open(log_file, "a" if start else "w"))
        if not start:
            csv_log.write("step,loss,lr\n")
    board = None
    if summary_writer is not None:
        board = summary_writer(log_dir=str(tensorboard_dir), purge_step=start or None)
        stack.callback(board.close)
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
            if num_classes and config.null_label_loss:  # the unconditional model, trained on every batch
                null = torch.full_like(labels, num_classes)
                loss = loss + loss_fn(model.score_fn, x0, noise_gen, labels=null).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(params, config.grad_clip, foreach=True)
            factor = lr_schedule(step, config.num_steps)
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * factor
            optimizer.step()
            if csv_log is not None or board is not None:
                lrs.append(optimizer.param_groups[0]["lr"])
            decay = min(config.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():  # else the EMA weights carry an autograd history that grows every step
                torch._foreach_lerp_(ema_params, params, 1.0 - decay)
            losses[step] = loss.detach()

            done = step + 1
            stop_now = interrupt.signum is not None
            save_now = ckpt_path is not None and (
                done == config.num_steps
                or stop_now
                or (config.checkpoint_every and done % config.checkpoint_every == 0)
                or (config.checkpoint_seconds and time.monotonic() - saved_at >= config.checkpoint_seconds)
            )
            if save_now or stop_now or done == config.num_steps or done % config.check_every == 0:
                window = losses[checked:done]
                guard(done, check_params=save_now or done == config.num_steps)
                if csv_log is not None or board is not None:
                    rows = list(zip(range(logged, done), losses[logged:done].tolist(), lrs))
                    if csv_log is not None:
                        csv_log.writelines(f"{k},{v:.7g},{lr:.6g}\n" for k, v, lr in rows)
                        csv_log.flush()
                    if board is not None:
                        for k, v, lr in rows:
                            board.add_scalar("loss", v, k)
                            board.add_scalar("lr", lr, k)
                        board.flush()
                    logged, lrs = done, []
                if config.progress:
                    bar.set_postfix(loss=f"{float(window.mean()):.4f}", refresh=False)
                    bar.update(done - bar.n)
            if save_now:
                _sync_buffers(ema, model)
                state = training_state(done, config, model, ema, optimizer, data_gen, noise_gen, losses)
                if transform is not None:  # a FileDataset's standardisation, to map samples back to user units
                    state["data_transform"] = transform.state_dict()
                save_checkpoint(state, ckpt_path)
                last_saved = done
                saved_at = time.monotonic()
                log.debug("checkpoint at step %d written to %s", done, ckpt_path)
            if stop_now and done < config.num_steps:
                raise TrainingInterrupted(done, ckpt_path if save_now else None, interrupt.signum)
    finally:
        bar.close()
        stack.close()
    _sync_buffers(ema, model)
    return TrainResult(model, ema, losses.cpu())


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


def _sync_buffers(ema: nn.Module, model: nn.Module) -> None:
    with torch.no_grad():
        for e, b in zip(ema.buffers(), model.buffers()):
            e.copy_(b)
