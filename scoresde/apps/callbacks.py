"""Hydra callback that summarises a multirun when it ends (``hydra.callbacks`` in ``conf/*.yaml``).

``SweepSummary.on_multirun_end`` writes ``summary.csv``, ``summary.md`` and ``comparison.png`` into
the sweep directory (``scoresde.apps.aggregate``).  Hydra calls it only when every job succeeded;
so after a failed job ``on_job_end`` rewrites the summary after every job, failed jobs as failed rows
(``scoresde-aggregate <sweep dir>`` does the same by hand, e.g. for a sweep killed midway).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from .aggregate import aggregate

log = logging.getLogger(__name__)

__all__ = ["SweepSummary"]


class SweepSummary(Callback):
    """Aggregate the jobs of a finished multirun; ``figure=False`` skips ``comparison.png``."""

    def __init__(self, figure: bool = True):
        self.figure = figure

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        # Hydra skips on_multirun_end once a job of the sweep has failed (the basic launcher re-raises
        # its error), so from the first failed job on, the summary is rewritten after every job:
        # summary.md then always holds the failed rows and every job that ran.
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        self._failed = getattr(self, "_failed", False) or getattr(job_return, "status", None) == JobStatus.FAILED
        if self._failed:
            sweep_dir = Path(config.hydra.sweep.dir)
            try:
                aggregate(sweep_dir, figure=self.figure)
                log.info("sweep summary (with failed jobs): %s", sweep_dir / "summary.md")
            except Exception as e:  # noqa: BLE001 - a summary problem must not hide the job's own error
                log.warning("could not write the sweep summary in %s: %s", sweep_dir, e)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():  # e.g. a sweep whose every job was filtered out
            log.warning("sweep directory %s does not exist; nothing to summarise", sweep_dir)
            return
        aggregate(sweep_dir, figure=self.figure)
        log.info("sweep summary: %s", sweep_dir / "summary.md")
