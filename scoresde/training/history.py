"""The per-step loss history of a training run: pending on the device, read back at each check.

``record(loss)`` stores a step's batch-mean loss (a 0-d device tensor, cast to float32) in a device
buffer without synchronising; ``read_back()`` copies the losses recorded since the last read-back to
the host in **one** transfer (the run's single host synchronisation per check) and appends them to
the host history, which the guards, the logs, the progress bar, checkpoints and ``TrainResult``
read.  Memory therefore grows with the steps *run*, not the steps planned: 4 bytes per step on the
host (the history a checkpoint stores and ``TrainResult.losses`` returns) plus the losses since the
last check on the device.  ``TrainConfig(num_steps=10**12)`` allocates nothing up front (it used to
preallocate a 4 TB buffer).  Both buffers grow by doubling.
"""
from __future__ import annotations

import torch

__all__ = ["LossHistory"]


class LossHistory:
    """Per-step losses, float32: ``values`` on the host, the steps since the last ``read_back`` on ``device``.

    Args:
        device: where the step's losses are recorded.
        initial: the losses of the steps before this run (a resumed run's history), ``[start]``.
        pending: the initial size of the device buffer (it grows if more steps pass between checks).
    """

    def __init__(self, device: torch.device, initial: torch.Tensor | None = None, *, pending: int = 128):
        initial = torch.zeros(0) if initial is None else initial.detach().to("cpu", torch.float32)
        self._host = torch.empty(max(2 * len(initial), 1024), dtype=torch.float32)
        self._host[: len(initial)] = initial
        self._size = len(initial)
        self._pending = torch.empty(max(1, pending), dtype=torch.float32, device=device)
        self._count = 0  # losses recorded on the device since the last read-back

    def record(self, loss: torch.Tensor) -> None:
        """Store the next step's loss (0-d tensor on ``device``); no host synchronisation."""
        if self._count == len(self._pending):
            self._pending = torch.cat([self._pending, torch.empty_like(self._pending)])
        self._pending[self._count] = loss.detach()
        self._count += 1

    def read_back(self) -> torch.Tensor:
        """Copy the losses recorded since the last read-back to the host (one synchronisation); return them."""
        new = self._pending[: self._count].cpu()
        end = self._size + len(new)
        if end > len(self._host):
            grown = torch.empty(max(end, 2 * len(self._host)), dtype=torch.float32)
            grown[: self._size] = self._host[: self._size]
            self._host = grown
        self._host[self._size : end] = new
        self._size, self._count = end, 0
        return self._host[end - len(new) : end]

    @property
    def values(self) -> torch.Tensor:
        """The read-back history ``[steps]`` (float32, CPU; a view: clone it to keep it)."""
        return self._host[: self._size]

    @property
    def pending(self) -> int:
        """How many recorded losses have not been read back yet."""
        return self._count

    def __len__(self) -> int:
        return self._size
