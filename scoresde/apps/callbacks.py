"""Hydra callback that summarises a multirun when it ends (``hydra.callbacks`` in ``conf/*.yaml``).

``SweepSummary.on_multirun_end`` writes ``summary.csv``, ``summary.md`` and ``comparison.png`` into
the sweep directory (``scoresde.apps.aggregate``).  Hydra calls it only when every job succeeded;
after a failed job, run ``scoresde-aggregate <sweep dir>``, which lists failed jobs as failed rows.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .aggregate import aggregate

log = logging.getLogger(__name__)

__all__ = ["SweepSummary"]


class SweepSummary(Callback):
    """Aggregate the jobs of a finished multirun; ``figure=False`` skips ``comparison.png``."""

    def __init__(self, figure: bool = True):
        self.figure = figure

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():  # e.g. a sweep whose every job was filtered out
            log.warning("sweep directory %s does not exist; nothing to summarise", sweep_dir)
            return
        aggregate(sweep_dir, figure=self.figure)
        log.info("sweep summary: %s", sweep_dir / "summary.md")
