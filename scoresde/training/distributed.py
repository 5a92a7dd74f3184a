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
  checkpoint and every rank raises ``TrainingInterrupted``.  An early finish decided on rank 0 (a
  quality check's patience) ends every rank after the same step: ``AgreeOnFinish``.

``init_from_environment()`` initialises the default group from ``torchrun``'s variables (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``) or from a submitit job's / SLURM's
(``cluster_variables``: one process per task, e.g. Hydra's submitit launcher with
``tasks_per_node``); it does nothing for a single process.
"""
from __future__ import annotations

import logging
import os
import random

import torch

from .callbacks import EVALUATE, STOP, Callback, TrainState

__all__ = ["resolve_group", "rank_seed", "cluster_variables", "init_from_environment", "AgreeOnStop", "AgreeOnFinish",
           "gather_rows", "world_size", "rank", "rank_batches", "gather_batches"]

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


def cluster_variables() -> dict[str, str]:
    """torch.distributed's ``env://`` variables for one task of a submitit job or of SLURM tasks.

    Inside a submitit job (``SUBMITIT_EXECUTOR`` set: Hydra's submitit launcher, local or SLURM
    executor) its ``JobEnvironment`` names the task; otherwise, in a job step of several tasks
    (``srun``: ``SLURM_STEP_NUM_TASKS > 1``; not the batch script itself, which is one process),
    submitit's ``SlurmJobEnvironment`` reads ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``,
    ``SLURM_JOB_NUM_NODES``, ``SLURM_JOB_NODELIST`` and ``SLURM_JOB_ID``.  ``RANK`` = the global rank,
    ``WORLD_SIZE`` = the number of tasks, ``LOCAL_RANK`` = the rank on the node, ``MASTER_ADDR`` = the
    job's first host, ``MASTER_PORT`` = ``$MASTER_PORT`` or a port in [20000, 60000] drawn from the
    job id (the rule of submitit's ``TorchDistributedEnvironment``: every task of a job agrees).
    ``{}`` under torchrun (``WORLD_SIZE`` already set), for one task, or outside such a job.
    """
    in_submitit = bool(os.environ.get("SUBMITIT_EXECUTOR"))
    if "WORLD_SIZE" in os.environ or (not in_submitit and int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) <= 1):
        return {}
    try:
        import submitit
        from submitit.slurm.slurm import SlurmJobEnvironment
    except ImportError as e:
        raise RuntimeError("several SLURM tasks need `submitit` to set up torch.distributed "
                           "(pip install -e \".[slurm]\"), or launch with torchrun") from e
    job = submitit.JobEnvironment() if in_submitit else SlurmJobEnvironment()
    if job.num_tasks <= 1:
        return {}
    port = os.environ.get("MASTER_PORT") or str(random.Random(job.job_id).randint(20000, 60000))
    return {"MASTER_ADDR": job.hostnames[0], "MASTER_PORT": port, "RANK": str(job.global_rank),
            "WORLD_SIZE": str(job.num_tasks), "LOCAL_RANK": str(job.local_rank),
            "LOCAL_WORLD_SIZE": str(job.num_tasks // job.num_nodes)}


def init_from_environment(device_type: str = "cpu") -> bool:
    """Initialise the default process group from torchrun's, submitit's or SLURM's environment; True if several ranks.

    The variables of a submitit job or SLURM tasks (``cluster_variables``) are exported first.  NCCL
    for CUDA tensors and gloo for CPU ones when ``device_type == "cuda"`` (each rank then uses GPU
    ``LOCAL_RANK``), gloo alone otherwise.  A single process (no such variables, or a world of 1) is
    left alone.
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    os.environ.update(cluster_variables())
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


class AgreeOnFinish(Callback):
    """Every rank finishes after the same step when a rank-0-only callback sets ``due.finish`` (a quality check's patience).

    Runs after the ``EVALUATE`` callbacks (order ``EVALUATE + 1``) in ``on_check``.  At the loop's own
    check points, which every rank shares (every ``check_every`` steps, the last step, an agreed
    stop), it all-reduces (max) the finish flag on ``AgreeOnStop``'s gloo group and sets the result
    on every rank: one blocking collective per check point, none in between.  A finish decided at
    another step (rank 0 alone syncs there: a quality check off the ``check_every`` grid) is held
    until the next shared check point (and saved there).  A quality check every ``k x check_every``
    steps therefore finishes at the step it decides, as one process would.
    """

    order = EVALUATE + 1

    def __init__(self, stop: AgreeOnStop):
        self.stop, self.pending = stop, False

    def on_step_end(self, state: TrainState) -> None:
        if self.pending:  # a held finish saves where it ends: the guard checks the parameters first
            state.due.params = True

    def on_check(self, state: TrainState) -> None:
        finish = self.pending or bool(state.due.finish)
        shared = state.step % state.config.check_every == 0 or state.step == state.num_steps or state.due.stop
        if not shared:
            self.pending, state.due.finish = finish, False
            return
        flag = torch.tensor([int(finish)], dtype=torch.int64)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self.stop.control)
        if self.pending:  # the checkpoint of the step it ends at
            state.due.save = True
        self.pending, state.due.finish = False, bool(flag.item())


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
