"""The DSM step at scale: mixed precision, gradient accumulation, ``torch.compile`` and data parallelism.

``ScaledStep`` replaces ``DSMStep``'s plain "loss, backward" when any of ``TrainConfig.precision``
(``"bf16"`` / ``"fp16"``), ``accumulate > 1``, ``compile`` or a process group of more than one
rank is in use; with none of them the loop keeps its plain path, bit for bit.

**One global batch, split.**  A step draws the global batch of ``batch_size * accumulate``
samples with the data generator, then t, z (and, for a conditional model, the label dropout and
the null label's t, z) for the *whole* global batch from the noise generator, in the order of
``DSMStep.loss``.  Rank r of W evaluates rows ``[r n / W, (r + 1) n / W)`` in ``accumulate``
micro-batches; each micro-batch's backward pass adds the gradient of its share of the rank's
mean loss, and ``DistributedDataParallel`` averages the ranks' gradients (``no_sync`` until the
last micro-batch).  The gradient is therefore the gradient of the global batch mean, and the run
equals one process with batch ``batch_size * accumulate`` to float round-off, whatever W and the
accumulation (MATH.md, "Distributed training").  Every rank draws the same data and noise streams
(the distributed sampler's shared shuffle: each rank keeps its shard), which is what lets a run
resume on another number of processes: the checkpoint's generators are those of one process.
The cost is drawing the global batch's indices and noise on every rank, small next to the network.

**Precision** (``torch.autocast``; Micikevicius et al. 2018 for the loss scaling): the forward
pass and the loss run under autocast to bf16 or fp16 (``precision``); parameters, gradients,
optimizer state, EMA and checkpoints stay fp32.  fp16 scales the loss with ``torch.amp.GradScaler``
(unscaled before clipping; a step whose gradients overflow is skipped and the scale halved; the
scaler's state is kept in checkpoints by ``GradScalerState``).  The scaler's overflow check is one
host synchronisation per step.

**compile**: the score evaluation (``model.score_fn`` behind the DDP wrapper) is compiled with
``torch.compile``; the model itself (its state dict, checkpoints) is unchanged.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from .callbacks import STOP, Callback, TrainState
from .losses import DSMLoss

__all__ = ["PRECISIONS", "ScaledStep", "GradScalerState", "needs_scaled_step"]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def needs_scaled_step(config, world_size: int) -> bool:
    """Whether ``config`` (a ``TrainConfig``) on ``world_size`` ranks needs ``ScaledStep`` (else the plain step)."""
    return config.precision != "fp32" or config.accumulate > 1 or config.compile or world_size > 1


class _ScoreForward(nn.Module):
    """``forward(x, t, labels) = model.score_fn(x, t[, labels=labels])``: what DDP and torch.compile wrap."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.score_fn(x, t) if labels is None else self.model.score_fn(x, t, labels=labels)


class ScaledStep:
    """``backward(x0, labels) -> loss`` (the global batch mean, detached) and ``step(optimizer)`` (module docstring).

    Args:
        model, ema: the model trained and its EMA (the EMA is broadcast from rank 0 like the model).
        loss_fn: a ``DSMLoss`` (its noise is drawn for the whole global batch, then split).
        config: the ``TrainConfig`` (``precision``, ``accumulate``, ``compile``, ``label_dropout``,
            ``null_label_loss``, ``batch_size``).
        noise_gen: the noise generator (the same state on every rank).
        group: the process group (None: one process).
    """

    def __init__(self, model: nn.Module, ema: nn.Module, loss_fn, config, noise_gen: torch.Generator, group=None):
        if not isinstance(loss_fn, DSMLoss):
            raise ValueError(
                "train.precision / train.accumulate / train.compile / distributed training need a DSMLoss `loss_fn` "
                f"(its noise is drawn once for the global batch, then split), got {type(loss_fn).__name__}")
        self.model, self.loss_fn, self.config, self.noise_gen, self.group = model, loss_fn, config, noise_gen, group
        dist = torch.distributed
        self.rank, self.world = (dist.get_rank(group), dist.get_world_size(group)) if group is not None else (0, 1)
        if config.batch_size % (self.world * config.accumulate):
            raise ValueError(
                f"`batch_size` ({config.batch_size}) must be divisible by the number of processes ({self.world}) "
                f"times `accumulate` ({config.accumulate})")
        self.num_classes = getattr(model, "num_classes", 0)
        device = next(model.parameters()).device
        self.device_type = device.type
        self.dtype = PRECISIONS[config.precision]
        self.scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16" else None
        forward = _ScoreForward(model)
        self.ddp = None
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            with torch.no_grad():  # every rank starts from rank 0's EMA (DDP broadcasts the model itself)
                for e in ema.state_dict().values():
                    dist.broadcast(e, src=dist.get_global_rank(group, 0), group=group)
            forward = self.ddp = DistributedDataParallel(forward, process_group=group,
                                                         device_ids=[device.index] if device.type == "cuda" else None)
        self.score = torch.compile(forward) if config.compile else forward

    def batch_size(self, batch_size: int) -> int:
        """The global batch drawn per step: ``batch_size * accumulate``."""
        return batch_size * self.config.accumulate

    def _noise(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t [n], z [n, *D] for the global batch, drawn as ``DSMLoss`` draws them (t first, then z)."""
        g = self.noise_gen
        t = self.loss_fn.sample_time(x0.shape[0], g, dtype=x0.dtype)
        return t, torch.randn(x0.shape, generator=g, device=x0.device, dtype=x0.dtype)

    def _rows_loss(self, x0, t, z, labels, rows: slice) -> torch.Tensor:
        """The per-sample DSM loss [rows] of the given rows (with the importance weight of a drawn t)."""
        loss = self.loss_fn(self.score, x0[rows], t=t[rows], z=z[rows],
                            labels=None if labels is None else labels[rows])
        sampler = self.loss_fn.time_sampler
        weight = sampler.importance_weight(self.loss_fn.sde, t[rows]) if sampler is not None else None
        return loss if weight is None else loss * weight.to(loss.dtype)

    def backward(self, x0: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Accumulate the gradient of the global batch mean loss on this rank's rows; return that mean (detached)."""
        if self.world == 1:
            return self._backward(x0, labels)
        try:
            return self._backward(x0, labels)
        except RuntimeError as e:  # a collective failed: most often a peer process was killed or crashed
            raise RuntimeError(
                f"the data-parallel step failed on rank {self.rank} of {self.world}: {str(e).splitlines()[0]}  If another "
                "process was killed or crashed, the last checkpoint rank 0 wrote is intact: resume=True (resume=true) "
                "continues it, on any number of processes") from e

    def _backward(self, x0: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        config, g, n = self.config, self.noise_gen, x0.shape[0]
        if self.num_classes and config.label_dropout > 0:  # the draws of DSMStep.loss, in its order
            drop = torch.rand(labels.shape, generator=g, device=x0.device) < config.label_dropout
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        t, z = self._noise(x0)
        null = self._noise(x0) if self.num_classes and config.null_label_loss else None
        local = n // self.world
        micro = local // config.accumulate
        total = torch.zeros((), device=x0.device)
        for i in range(config.accumulate):
            rows = slice(self.rank * local + i * micro, self.rank * local + (i + 1) * micro)
            last = i == config.accumulate - 1
            sync = contextlib.nullcontext() if last or self.ddp is None else self.ddp.no_sync()
            with sync:
                with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                    part = self._rows_loss(x0, t, z, labels, rows).sum()
                    if null is not None:
                        part = part + self._rows_loss(x0, *null, torch.full_like(labels, self.num_classes), rows).sum()
                    part = part.float() / local
                (self.scaler.scale(part) if self.scaler is not None else part).backward()
            total += part.detach()
        if self.world > 1:  # the global mean: the ranks' means averaged (queued on the device: no host sync on NCCL)
            torch.distributed.all_reduce(total, group=self.group)
            total /= self.world
        return total

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """fp16: divide the gradients by the loss scale (before clipping)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer step (fp16: skipped if the gradients overflowed; the scale is updated)."""
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()


class GradScalerState(Callback):
    """Keeps an fp16 run's ``GradScaler`` state in checkpoints and restores it on resume (bit-identical resume)."""

    order = STOP
    state_key = "grad_scaler"

    def __init__(self, scaler: torch.amp.GradScaler):
        self.scaler = scaler

    def on_start(self, state: TrainState) -> None:
        saved = state.resumed_callbacks.get(self.state_key)
        if saved:
            self.scaler.load_state_dict(saved)

    def state_dict(self) -> dict:
        return self.scaler.state_dict()
