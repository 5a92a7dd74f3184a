"""The apps under ``torchrun`` or several SLURM / submitit tasks: Hydra on rank 0, its composed config sent to the others.

    torchrun --nproc_per_node=2 -m scoresde.apps.train hydra.run.dir=outputs/ddp train.batch_size=512
    torchrun --nproc_per_node=2 -m scoresde.apps.sample checkpoint=outputs/ddp/last.pt
    scoresde-train -m hydra/launcher=ddp hydra.launcher.nodes=2 hydra.launcher.tasks_per_node=8 device=cuda

``launch(hydra_main, rank_task)`` initialises ``torch.distributed`` from the environment
(``scoresde.training.distributed.init_from_environment``; gloo, plus NCCL for CUDA tensors when a
GPU is present).  Rank 0 runs the app through Hydra as usual: only it creates the run directory,
``.hydra/``, the log file and every output.  Once its job has checked its output directory it calls
``share_config(cfg, out)``, which sends the composed config and the run directory to the other
ranks; they run ``rank_task(cfg, out, scratch)`` without Hydra, with a private scratch directory
for what they would otherwise write (deleted at the end).  If rank 0 stops before that (a usage
error, a refused directory), the others exit with status 1 and rank 0's message stands alone.
A single process (no torchrun) goes straight to Hydra, unchanged.  Under Hydra's submitit launcher
every task runs Hydra's job and calls the app's task function; ``task_on_ranks`` there initialises
torch.distributed from the job (``distributed.cluster_variables``) and lets rank 0 lead the same way.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ..training.callbacks import TrainingInterrupted
from ..training.distributed import (cluster_variables, gather_batches, init_from_environment, rank_batches, rank_seed,
                                    world_size)

__all__ = ["launch", "task_on_ranks", "share_config", "end_data_parallel", "process_rank", "task_overrides",
           "sampling_batch_size", "rank_batches", "gather_samples", "rank_zero_first"]

_shared = False
_received_overrides: list[str] = []
_received_out: list[str] = []  # ranks > 0: rank 0's run directory


def task_overrides() -> list[str]:
    """The command-line overrides of the job: Hydra's, or (ranks > 0 under torchrun) those rank 0 sent."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else list(_received_overrides)


def process_rank() -> int:
    """0 for a single process; this process's rank under torchrun."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def launch(hydra_main, rank_task) -> None:
    """Run ``hydra_main()`` on rank 0 (and alone), ``rank_task(cfg, out, scratch)`` on the other ranks."""
    if not init_from_environment("cuda" if torch.cuda.is_available() else "cpu"):
        hydra_main()
        return
    _lead_or_follow(hydra_main, rank_task)


def task_on_ranks(task, rank_task, cfg: DictConfig):
    """An app's Hydra task function: ``task(cfg)``, once per job; inside a job of several tasks, rank 0's alone.

    Hydra's submitit launcher (``hydra.launcher.tasks_per_node=N``, ``conf/hydra/launcher/ddp*.yaml``)
    starts N processes per job, each calling the task function inside its own Hydra job.  Here they
    initialise torch.distributed from the job's environment (``init_from_environment``); rank 0 runs
    ``task(cfg)`` and shares its config as under torchrun, the others run ``rank_task`` with it, log
    to their submitit log only (not the run's log file) and return None.  (Hydra itself writes the
    same ``.hydra/`` files on every task before the task function starts.)  Under torchrun, a
    single process or a one-task job: ``task(cfg)``.
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return task(cfg)
    if int(cluster_variables().get("RANK", "0")) > 0:  # Hydra's job log file is rank 0's
        root = logging.getLogger()
        for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
            root.removeHandler(handler)
            handler.close()
    if not init_from_environment("cuda" if torch.cuda.is_available() else "cpu"):
        return task(cfg)
    return _lead_or_follow(lambda: task(cfg), rank_task)


def _lead_or_follow(lead, rank_task):
    """With torch.distributed initialised: ``lead()`` on rank 0, rank 0's config into ``rank_task`` on the others."""
    global _shared
    dist = torch.distributed
    _shared = False
    try:
        if dist.get_rank() == 0:
            try:
                return lead()
            finally:
                if not _shared:  # rank 0 stopped before sharing: release the others
                    dist.broadcast_object_list([None], src=0)
        received = [None]
        dist.broadcast_object_list(received, src=0)
        if received[0] is None:
            raise SystemExit(1)
        text, out, overrides = received[0]
        _received_overrides[:] = overrides
        _received_out[:] = [out]
        cfg = OmegaConf.create(text)
        torch.manual_seed(rank_seed(int(cfg.seed), dist.get_rank()))  # rank-local randomness (dropout)
        with tempfile.TemporaryDirectory(prefix=f"scoresde-rank{dist.get_rank()}-") as scratch:
            try:
                rank_task(cfg, Path(out), Path(scratch))
            except TrainingInterrupted as e:  # rank 0 prints the message and the resume command
                raise SystemExit(128 + e.signum) from None
            except RankDone:  # its samples went to rank 0
                pass
        return None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def end_data_parallel() -> int:
    """After training under torchrun: leave the process group (rank 0 then samples alone); return this rank."""
    rank = process_rank()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return rank


def share_config(cfg: DictConfig, out: Path) -> int:
    """On rank 0 of several: send ``cfg`` (resolved) and ``out`` to the other ranks, seed rank 0's global RNG; return the rank."""
    global _shared
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or _shared:
        return process_rank()
    if dist.get_rank() == 0:
        dist.broadcast_object_list([(OmegaConf.to_yaml(cfg, resolve=True), str(out), task_overrides())], src=0)
        _shared = True
        torch.manual_seed(rank_seed(int(cfg.seed), 0))
    return dist.get_rank()


@contextlib.contextmanager
def rank_zero_first(out: Path):
    """Under torchrun: rank 0 runs the block (e.g. fits and caches a grid), then the others, which read its cache.

    Yields the run directory of rank 0 (``out`` itself on rank 0 and for one process), where a cache
    kept in the run directory is found.  One barrier per block; a single process runs it as is.
    """
    dist = torch.distributed
    several = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if several and dist.get_rank() != 0:
        dist.barrier()
        out = Path(_received_out[0]) if _received_out else out
    yield out
    if several and dist.get_rank() == 0:
        dist.barrier()


class RankDone(Exception):
    """Raised on ranks > 0 once their samples are gathered: rank 0 alone evaluates and writes (``launch`` ends the rank)."""


def sampling_batch_size(batch_size: int | None, n: int) -> int | None:
    """The app's sampling batch: ``batch_size``; under torchrun without one, ceil(n / ranks) (per-sample seeds)."""
    ranks = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    if ranks == 1:
        return batch_size
    batch_size = -(-n // ranks) if batch_size is None else batch_size
    if -(-n // batch_size) < ranks:
        raise ValueError(f"`batch_size`: {n} samples in batches of {batch_size} are fewer batches than the {ranks} "
                         "processes; use a smaller batch_size or fewer processes")
    return batch_size


def gather_samples(parts: list, n: int, batch_size: int) -> torch.Tensor:
    """The batches of ``rank_batches`` from every rank, in order, as one process's ``[n, *D]`` (on rank 0).

    On ranks > 0 this raises ``RankDone`` after the gather: they neither evaluate nor write.
    """
    x = torch.cat(parts) if len(parts) else None
    if world_size(_default_group()) == 1:
        return x
    gathered = gather_batches(x.cpu(), n, batch_size)  # every rank has a batch (sampling_batch_size)
    if process_rank() != 0:
        raise RankDone()
    return gathered.to(parts[0].device)


def _default_group():
    dist = torch.distributed
    return dist.group.WORLD if dist.is_available() and dist.is_initialized() else None
