"""Guards against a diverged run: non-finite losses or parameters, and a finite loss that exploded.

``LossGuard`` is a ``GUARD``-order callback (``scoresde.training.callbacks``): at every check point it
reads only the losses the loop has already read back to the host (``state.new_losses``), so the
loss checks cost no host synchronisation of their own; checking the parameters (before a
checkpoint is written (``due.save``), at the last step, or when a callback asks by ``due.params``) is
one more.
Both run before any checkpoint is written, so the last good one on disk survives.

* **Non-finite**: a NaN or inf loss stops the run (``NonFiniteLossError`` naming the first bad
  step), as does a non-finite parameter of the model or its EMA.
* **Exploded** (``divergence_factor``; None: off): the median of the last (up to) 10 losses above
  ``divergence_factor`` times the reference, the larger of the first step's loss and the median of
  the (up to) 1000 losses before this check; only for a positive reference
  (``LossExplosionError``).
"""
from __future__ import annotations

import math

import torch

from .callbacks import GUARD, Callback, TrainState

__all__ = ["DivergenceError", "NonFiniteLossError", "LossExplosionError", "LossGuard", "exploded"]

RECENT, HISTORY = 10, 1000  # losses in the recent median and in the reference median


class DivergenceError(RuntimeError):
    """Training diverged at ``step``; the last checkpoint on disk (if any) is the last good one."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class NonFiniteLossError(DivergenceError):
    """The training loss (or a parameter) became NaN or inf; ``step`` is the first bad step."""


class LossExplosionError(DivergenceError):
    """The loss stayed finite but exploded: above ``divergence_factor`` times its reference."""


def exploded(recent: float, first: float, history_median: float | None, factor: float) -> tuple[bool, float]:
    """(recent > factor * reference, reference) with reference = max(first, history_median); never for reference <= 0."""
    reference = max(first, history_median if history_median is not None else -math.inf)
    return reference > 0 and recent > factor * reference, reference


def parameters_finite(state: TrainState) -> bool:
    """Whether every trainable parameter of the model and its EMA is finite (one host synchronisation)."""
    pairs = [(p, e) for p, e in zip(state.model.parameters(), state.ema.parameters()) if p.requires_grad]
    return bool(torch.stack([torch.isfinite(t).all() for pair in pairs for t in pair]).all())


class LossGuard(Callback):
    """Stop a diverged run at a check point (module docstring)."""

    order = GUARD

    def __init__(self, divergence_factor: float | None):
        self.divergence_factor = divergence_factor

    def on_check(self, state: TrainState) -> None:
        new, first = state.new_losses, state.new_from
        finite = torch.isfinite(new)
        if not bool(finite.all()):  # host tensor: no synchronisation
            step = first + int((~finite).nonzero()[0])
            raise NonFiniteLossError(
                f"training loss became non-finite ({float(new[step - first]):g}) at step {step}; "
                f"{state.kept_checkpoint()}. Lower `lr`, set `grad_clip`, or check the data", step)
        if (state.due.params or state.due.save) and not parameters_finite(state):
            raise NonFiniteLossError(
                f"a parameter became non-finite in the update of step {state.step - 1} (the loss was finite); "
                f"{state.kept_checkpoint()}. Lower `lr`, set `grad_clip`, or check the data", state.step - 1)
        if self.divergence_factor is not None and len(new):
            self._check_explosion(state, new, first)

    def _check_explosion(self, state: TrainState, new: torch.Tensor, first: int) -> None:
        history = state.history.values
        before = history[max(0, first - HISTORY) : first]
        recent = float(new[-RECENT:].median())
        bad, reference = exploded(recent, float(history[0]), float(before.median()) if len(before) else None,
                                  self.divergence_factor)
        if bad:
            raise LossExplosionError(
                f"training diverged: the loss reached {recent:.3g} by step {state.step - 1}, more than "
                f"divergence_factor={self.divergence_factor:g} times its reference {reference:.3g}; "
                f"{state.kept_checkpoint()}. Lower `lr` or set `grad_clip`", state.step - 1)
