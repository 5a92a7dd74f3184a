"""What a run reports: the per-step CSV log, TensorBoard scalars and the progress bar.

Both are ``REPORT``-order callbacks (``scoresde.training.callbacks``) that write at check points only,
from the losses the loop has read back (``state.new_losses``), so they add no host synchronisation;
both are ``rank_zero_only``.

* ``StepLog(log_file, tensorboard_dir)``: a CSV file ``step,loss,lr`` (one row per step, flushed at
  every check; appended to when resuming) and/or TensorBoard event files with the same ``loss`` and
  ``lr`` scalars, plus every scalar a callback handed over by ``state.log_scalar``.
* ``ProgressBar()``: a tqdm bar over the steps showing the mean loss since the last check.
"""
from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from .callbacks import REPORT, Callback, TrainState

__all__ = ["StepLog", "ProgressBar", "summary_writer_class"]


def summary_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``, or an ImportError that says how to install it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError('`tensorboard_dir` needs TensorBoard: pip install -e ".[tensorboard]"') from err
    return SummaryWriter


class StepLog(Callback):
    """The per-step loss and learning rate (of the first parameter group) to a CSV file and/or TensorBoard."""

    order = REPORT
    rank_zero_only = True

    def __init__(self, log_file: str | Path | None = None, tensorboard_dir: str | Path | None = None):
        self.log_file, self.tensorboard_dir = log_file, tensorboard_dir
        self.writer_class = summary_writer_class() if tensorboard_dir is not None else None  # fails before any work
        self.csv = self.board = None
        self.lrs: list[float] = []  # the learning rate of each step not yet written
        self.scalars_written = 0

    def on_start(self, state: TrainState) -> None:
        if self.log_file is not None:
            self.csv = open(self.log_file, "a" if state.start else "w")
            if not state.start:
                self.csv.write("step,loss,lr\n")
        if self.writer_class is not None:
            self.board = self.writer_class(log_dir=str(self.tensorboard_dir), purge_step=state.start or None)

    def on_step_end(self, state: TrainState) -> None:
        self.lrs.append(state.optimizer.param_groups[0]["lr"])

    def on_check(self, state: TrainState) -> None:
        rows = list(zip(range(state.new_from, state.step), state.new_losses.tolist(), self.lrs))
        self.lrs = []
        if self.csv is not None:
            self.csv.writelines(f"{k},{v:.7g},{lr:.6g}\n" for k, v, lr in rows)
            self.csv.flush()
        if self.board is not None:
            for k, v, lr in rows:
                self.board.add_scalar("loss", v, k)
                self.board.add_scalar("lr", lr, k)
            for k, name, value in state.scalars[self.scalars_written :]:
                self.board.add_scalar(name, value, k)
            self.board.flush()
        self.scalars_written = len(state.scalars)

    def on_close(self, state: TrainState) -> None:
        if self.csv is not None:
            self.csv.close()
        if self.board is not None:
            self.board.close()


class ProgressBar(Callback):
    """A tqdm bar over ``num_steps``, refreshed at check points with the mean loss since the last one."""

    order = REPORT
    rank_zero_only = True

    def __init__(self):
        self.bar = None

    def on_start(self, state: TrainState) -> None:
        self.bar = tqdm(total=state.num_steps, initial=state.start, desc="train", unit="step")

    def on_check(self, state: TrainState) -> None:
        if len(state.new_losses):
            self.bar.set_postfix(loss=f"{float(state.new_losses.mean()):.4f}", refresh=False)
        self.bar.update(state.step - self.bar.n)

    def on_close(self, state: TrainState) -> None:
        if self.bar is not None:
            self.bar.close()
