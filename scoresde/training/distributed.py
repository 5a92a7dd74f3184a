"""Training and sampling on several processes with PyTorch's own engine (``torch.distributed``, DDP).

``train(model, data, config, process_group=...)`` (or an initialised default group) trains with
``DistributedDataParallel`` (``scaling.ScaledStep``): NCCL on GPUs, gloo on CPUs.  The conventions
(MATH.md, "Distributed training"):

- ``batch_size`` is the **global** batch; each of W ranks evaluates ``batch_size / W`` of its rows
  (an error if W does not divide it).  Every rank draws the global batch's indices and noise from
  the run's two generators and keeps its shard, as ``DistributedSampler`` does with its shared
  shuffle seed: W ranks equal one process to float round-off, and a checkpoint (whose generators
  are one process's) resumes on any number of processes.
- Randomness that must differ between ranks (the global RNG behind ``nn.Dropout``) is seeded by
  the apps from ``rank_seed(seed, rank)``; per-sample seeds (``scoresde.apps``' sampling) give a
  sample index the same noise on any rank.
- Rank 0 alone writes files (the callbacks with ``rank_zero_only``, the apps' outputs), atomically.
- A SIGINT / SIGTERM on any rank stops every rank after the same step: ``AgreeOnStop`` (order
  ``STOP + 1``) all-reduces (max) each step's local stop signal on a gloo group in the background
  and applies the result one step later, so no rank waits on the device; rank 0 then writes the one
  checkpoint and every rank raises ``TrainingInterrupted``.

``init_from_environment()`` initialises the default group from ``torchrun``'s variables (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``) or from SLURM's (``SLURM_PROCID``,
``SLURM_NTASKS``, ``SLURM_LOCALID``, through ``submitit``'s ``TorchDistributedEnvironment`` when it is
installed); it does nothing for a single process.
"""
from __future__ import annotations

import logging
import os

import torch

from .callbacks import STOP, Callback, TrainState

__all__ = ["resolve_group", "rank_seed", "init_from_environment", "AgreeOnStop", "gather_rows", "world_size", "rank",
           "rank_batches", "gather_batches"]

log = logging.getLogger(__name__)

_RANK_SEED_STRIDE = 0xD1B54A32D192ED03  # an odd 64-bit constant (SplitMix/Weyl style): distinct seeds per rank


def resolve_group(process_group=None):
    """The process group to train on: the given one, else torch.distributed's default group if it is
    initialised; None (one process) if neither exists or the group has one rank."""
    dist = torch.distributed
    if process_group is None:
        if not (dist.is_available() and dist.is_initialized()):
            return None
        process_group = dist.group.WORLD
    elif not (dist.is_available() and dist.is_initialized()):
        raise ValueError("`process_group` was given but torch.distributed is not initialised")
    return process_group if dist.get_world_size(process_group) > 1 else None


def world_size(group=None) -> int:
    """The number of ranks of ``group`` (1 for None)."""
    return torch.distributed.get_world_size(group) if group is not None else 1


def rank(group=None) -> int:
    """This process's rank in ``group`` (None: the default group's rank if initialised, else 0)."""
    dist = torch.distributed
    if group is not None:
        return dist.get_rank(group)
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def rank_seed(seed: int, rank: int) -> int:
    """A seed for rank ``rank``'s own randomness derived from the run ``seed``: distinct per rank, in [0, 2^63)."""
    return (seed + (rank + 1) * _RANK_SEED_STRIDE) % 2**63


def init_from_environment(device_type: str = "cpu") -> bool:
    """Initialise the default process group from torchrun's or SLURM's environment; True if several ranks.

    NCCL for CUDA tensors and gloo for CPU ones when ``device_type == "cuda"`` (each rank then uses GPU
    ``LOCAL_RANK``), gloo alone otherwise.  A
    single process (no such variables, or a world of 1) is left alone.
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if "WORLD_SIZE" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        try:  # SLURM (and submitit's local executor): submitit knows the master address and port
            from submitit.helpers import TorchDistributedEnvironment
        except ImportError as e:
            raise RuntimeError("several SLURM tasks need `submitit` to set up torch.distributed "
                               "(pip install -e \".[slurm]\"), or launch with torchrun") from e
        TorchDistributedEnvironment().export()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"  # CPU tensors (gathered samples) via gloo
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    log.info("torch.distributed: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return True


class AgreeOnStop(Callback):
    """Every rank stops after the same step when any rank received SIGINT / SIGTERM (module docstring).

    Runs after ``StopOnSignal`` (order ``STOP + 1``): takes this rank's ``due.stop``, clears it, and
    starts an all-reduce (max) of it on a gloo group (CPU; asynchronous); the result of the previous
    step's all-reduce becomes ``due.stop`` on every rank.  Every rank launches one all-reduce per step,
    so they pair up; the last one is waited for in ``on_close``.
    """

    order = STOP + 1

    def __init__(self, group):
        self.group, self.control, self.flag, self.work = group, None, None, None

    def on_start(self, state: TrainState) -> None:
        dist = torch.distributed
        cpu = dist.get_backend(self.group) == "gloo"
        # a CPU-side group, so reading the agreed flag never waits on a GPU stream
        self.control = self.group if cpu else dist.new_group(
            ranks=dist.get_process_group_ranks(self.group), backend="gloo")

    def on_step_end(self, state: TrainState) -> None:
        agreed = self._wait()
        local = state.due.stop or 0
        self.flag = torch.tensor([local], dtype=torch.int64)
        self.work = torch.distributed.all_reduce(self.flag, op=torch.distributed.ReduceOp.MAX, group=self.control,
                                                 async_op=True)
        state.due.stop = agreed or None
        if agreed and state.rank != 0 and state.checkpoint_path is not None:
            state.saved_step = state.step  # rank 0's Checkpointer writes it after this step: say so on every rank

    def _wait(self) -> int:
        if self.work is None:
            return 0
        self.work.wait()
        self.work = None
        return int(self.flag.item())

    def on_close(self, state: TrainState) -> None:
        try:
            self._wait()
        except RuntimeError:  # a peer is gone (killed): the run is ending with that error anyway
            pass


def _batches(n: int, batch_size: int, world: int) -> list[list[tuple[int, int]]]:
    """The batches ``[lo, hi)`` of one process's batching of n samples, in contiguous blocks per rank."""
    batches = [(lo, min(n, lo + batch_size)) for lo in range(0, n, batch_size)]
    per = -(-len(batches) // world)
    return [batches[r * per:(r + 1) * per] for r in range(world)]


def rank_batches(n: int, batch_size: int, group=None) -> list[tuple[int, int]]:
    """This rank's share of the batches ``[lo, hi)`` that one process would draw for n samples.

    Sampling with per-sample seeds (sample i from seed base + i) in exactly these batches gives
    every sample the bits it has in the one-process run; ``gather_batches`` puts them back in order.
    ``group``: None (the default group if initialised, else one process) or a process group.
    """
    group = resolve_group(group)
    return _batches(n, batch_size, world_size(group))[rank(group)]


def gather_batches(x: torch.Tensor, n: int, batch_size: int, group=None) -> torch.Tensor:
    """All ranks' samples of ``rank_batches`` (``x`` this rank's, in order) as the one-process ``[n, *D]``, on every rank."""
    group = resolve_group(group)
    if group is None:
        return x
    counts = [sum(hi - lo for lo, hi in share) for share in _batches(n, batch_size, world_size(group))]
    return gather_rows(x, counts, group)


def gather_rows(x: torch.Tensor, counts: list[int], group=None) -> torch.Tensor:
    """All ranks' ``x [counts[r], *D]`` concatenated in rank order (every rank gets the whole) ``[sum(counts), *D]``."""
    dist = torch.distributed
    biggest = max(counts)
    padded = torch.zeros((biggest, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:c] for p, c in zip(parts, counts)])
