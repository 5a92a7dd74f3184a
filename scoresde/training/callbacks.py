"""The training loop's callback interface, the run state it passes, and two callbacks: signals and checkpoints.

**The interface.**  A ``Callback`` has six hooks, each ``hook(state: TrainState) -> None`` and each a
no-op by default.  ``train`` calls them in this order::

    on_start                                   once, after set-up and resume, before the first step
    for every step:
        (the DSM step; its loss is recorded on the device)
        on_step_end                            every step: decide, never synchronise with the device
        on_check     if state.due.sync         after the losses since the last check were read back
        on_save      if state.due.save         write checkpoints
        (TrainingInterrupted if state.due.stop and steps remain; the loop ends if state.due.finish)
    on_end                                     once, after the last step (not after an error)
    on_close                                   always, last (also after an error): release files, handlers

Within a hook, callbacks run by ascending ``order`` (ties: in the order given): ``STOP`` (0, decide
to stop: signals), ``SCHEDULE`` (100, decide what this step does: checkpoint timing), ``GUARD``
(200, check losses and parameters: raise), ``EVALUATE`` (300, measure the checked model, e.g. a
quality check), ``REPORT`` (400, logs and the progress bar).  A callback with ``rank_zero_only =
True`` (file writers, the bar) runs only in the process of rank 0 when ``torch.distributed`` is
initialised (``state.rank``).

**Deciding** (``on_step_end``).  ``state.due`` is a fresh ``Due`` after every step, with ``check``
already set every ``check_every`` steps and at the last step, and ``params`` at the last step.  A
callback sets ``due.check`` (a check point: read back, then ``on_check``), ``due.params`` (the guard
also checks every parameter, before they are written or evaluated), ``due.save`` (a checkpoint:
implies both) or ``due.stop = signum`` (stop after this step: implies a check, and the
``Checkpointer`` saves).  Callbacks that decide to stop come before ``SCHEDULE``, which reads it.
``due.finish`` (settable in ``on_check`` too) ends the run normally after this step (an early stop:
``on_end`` runs, ``TrainResult.losses`` is shorter).  A callback that sets ``due.save`` in
``on_check`` must have set ``due.params`` in ``on_step_end``: the guard has already run.

**Checking** (``on_check``).  ``state.new_losses`` holds the losses of steps ``[state.new_from,
state.step)`` on the host (float32); ``state.history.values`` all losses so far.  Guards raise here,
before any file is written.  ``state.log_scalar(name, value)`` hands an extra scalar (e.g. a
quality check's headline) to the logs, which write it in the same ``on_check``.

**Saving** (``on_save``).  ``state.checkpoint()`` is the run's checkpoint dict (EMA buffers synced);
``state.checkpoint_path`` the run's ``last.pt`` (None: no checkpoints); the ``Checkpointer`` sets
``state.saved_step``.  A callback with a ``state_key`` keeps ``state_dict()`` in every checkpoint
(under ``"callbacks"``) and reads it back from ``state.resumed_callbacks`` on resume.

Two coming features plug in as callbacks: distributed training (issue 19) runs the file writers
on rank 0 only through ``rank_zero_only`` and adds a ``STOP``-order callback that agrees on
``due.stop`` across ranks; quality checks during training (issue 21) are an ``EVALUATE``-order
callback that sets ``due.check`` / ``due.params`` every K steps, samples ``state.ema`` with its own
generator in ``on_check``, writes ``best.pt`` beside ``state.checkpoint_path`` with
``save_checkpoint(state.checkpoint(), ...)``, logs the headline by ``state.log_scalar`` and keeps its
best value through ``state_key``.
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .checkpoints import save_checkpoint, training_state
from .history import LossHistory

__all__ = [
    "Callback", "Due", "TrainState", "Checkpointer", "StopOnSignal", "TrainingInterrupted",
    "STOP", "SCHEDULE", "GUARD", "EVALUATE", "REPORT",
]  # fmt: skip

log = logging.getLogger(__name__)

STOP, SCHEDULE, GUARD, EVALUATE, REPORT = 0, 100, 200, 300, 400


@dataclass
class Due:
    """What follows the step just done; set in ``on_step_end`` (module docstring)."""

    check: bool = False  # a check point: read back the new losses, then on_check
    params: bool = False  # the guard also checks every parameter (implied by save)
    save: bool = False  # write the checkpoint (on_save)
    stop: int | None = None  # the signal that stops the run after this step
    finish: bool = False  # end the run normally after this step (an early stop decided in on_check)

    @property
    def sync(self) -> bool:
        """Whether this step ends at a check point (a check, a save or a stop)."""
        return self.check or self.save or self.stop is not None


class Callback:
    """Base class of the loop's callbacks: every hook does nothing (module docstring)."""

    order: int = REPORT
    rank_zero_only: bool = False
    state_key: str | None = None  # a name under which state_dict() is kept in checkpoints

    def on_start(self, state: "TrainState") -> None: ...

    def on_step_end(self, state: "TrainState") -> None: ...

    def on_check(self, state: "TrainState") -> None: ...

    def on_save(self, state: "TrainState") -> None: ...

    def on_end(self, state: "TrainState") -> None: ...

    def on_close(self, state: "TrainState") -> None: ...

    def state_dict(self) -> dict:
        return {}


@dataclass(eq=False)
class TrainState:
    """A run as the callbacks see it.  ``step`` counts the steps done (the next step's 0-based index)."""

    config: Any  # the TrainConfig
    model: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    data_gen: torch.Generator
    noise_gen: torch.Generator
    history: LossHistory
    start: int  # the step this call started (or resumed) from
    checkpoint_path: Path | None = None  # the run's last.pt; None: no checkpoints
    saved_step: int | None = None  # the step of this run's newest checkpoint on disk
    data_transform: Any = None  # a FileDataset's standardisation, kept in checkpoints
    rank: int = 0
    callbacks: list = field(default_factory=list)
    resumed_callbacks: dict = field(default_factory=dict)  # the callbacks' states of the resumed checkpoint
    step: int = 0
    due: Due = field(default_factory=Due)
    new_from: int = 0  # new_losses are the losses of steps [new_from, step)
    new_losses: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    scalars: list = field(default_factory=list)  # (step, name, value) handed to the logs

    def __post_init__(self):
        self.step = self.new_from = self.start

    @property
    def num_steps(self) -> int:
        return self.config.num_steps

    def log_scalar(self, name: str, value: float) -> None:
        """Hand ``value`` at the current step to the logs (written at this check)."""
        self.scalars.append((self.step, name, float(value)))

    def checkpoint(self) -> dict:
        """The checkpoint of the run now (``scoresde.training.checkpoints`` layout; EMA buffers synced)."""
        sync_buffers(self.ema, self.model)
        state = training_state(self.step, self.config, self.model, self.ema, self.optimizer, self.data_gen,
                               self.noise_gen, self.history.values)
        if self.data_transform is not None:  # a FileDataset's standardisation, to map samples back to user units
            state["data_transform"] = self.data_transform.state_dict()
        kept = {cb.state_key: cb.state_dict() for cb in self.callbacks if cb.state_key}
        if kept:
            state["callbacks"] = kept
        return state

    def kept_checkpoint(self) -> str:
        """What an error says about the checkpoint on disk."""
        if self.saved_step is None:
            return "no checkpoint of this run was written"
        return f"the last good checkpoint {self.checkpoint_path} (step {self.saved_step}) was left untouched"


def sync_buffers(ema: nn.Module, model: nn.Module) -> None:
    """Copy the model's buffers (not averaged) into the EMA model."""
    with torch.no_grad():
        for e, b in zip(ema.buffers(), model.buffers()):
            e.copy_(b)


class Checkpointer(Callback):
    """Checkpoint timing and writing: ``state.checkpoint_path`` every ``every`` steps (0: never by
    count), every ``seconds`` of wall time (0: never by time), at a stop and at the last step."""

    order = SCHEDULE
    rank_zero_only = True

    def __init__(self, every: int, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.every, self.seconds, self.clock = every, seconds, clock
        self.saved_at = math.nan

    def on_start(self, state: TrainState) -> None:
        self.saved_at = self.clock()

    def on_step_end(self, state: TrainState) -> None:
        done = state.step
        if (done == state.num_steps or state.due.stop is not None or (self.every and done % self.every == 0)
                or (self.seconds and self.clock() - self.saved_at >= self.seconds)):
            state.due.save = True

    def on_save(self, state: TrainState) -> None:
        save_checkpoint(state.checkpoint(), state.checkpoint_path)
        state.saved_step, self.saved_at = state.step, self.clock()
        log.debug("checkpoint at step %d written to %s", state.step, state.checkpoint_path)


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training after ``step`` steps; ``checkpoint`` is the checkpoint then written.

    A ``KeyboardInterrupt`` (so ``except Exception`` does not swallow it); resume with ``resume=True``.
    """

    def __init__(self, step: int, checkpoint: Path | None, signum: int):
        self.step, self.checkpoint, self.signum = step, checkpoint, signum
        name = signal.Signals(signum).name
        saved = f"checkpoint {checkpoint} written" if checkpoint is not None else "no checkpoint_dir, nothing saved"
        super().__init__(f"training interrupted by {name} after step {step}; {saved}")


class StopOnSignal(Callback):
    """SIGINT / SIGTERM stop the run after the step in progress (``due.stop``); a second one stops at once.

    Used as a context manager around the whole call (main thread only), so a signal during set-up
    is honoured after the first step; the previous handlers are restored on exit.
    """

    order = STOP

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopped at once")
        self.signum = signum

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(ValueError, OSError):
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def on_step_end(self, state: TrainState) -> None:
        if self.signum is not None:
            state.due.stop = self.signum
