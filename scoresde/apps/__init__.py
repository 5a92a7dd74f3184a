"""Hydra command-line apps and the sweep callback: the only part of scoresde that imports hydra.

* ``scoresde-train`` (``python -m scoresde.apps.train``): train a score model on a toy data set,
  sample it, evaluate the samples against fresh data and plot (``train.py``);
* ``scoresde-sample`` (``python -m scoresde.apps.sample``): sample a checkpoint or the exact score
  of a toy mixture with any sampler (``sample.py``);
* ``guided.py``: the ``guidance`` (none | cfg | classifier | exact) and ``likelihood`` (none | pf_ode)
  options of the apps: their checks, the guided score, per-class precision / spread and the PF-ODE NLL;
* ``scoresde-aggregate SWEEP_DIR``: ``summary.csv``, ``summary.md`` and ``comparison.png`` of a
  multirun, also written by the ``callbacks.SweepSummary`` Hydra callback at the end of a sweep
  (``aggregate.py``).

The config tree is the top-level ``conf/`` of the repository; a wheel ships the same files as
``scoresde/conf/`` (``pyproject.toml`` maps that package onto ``conf/``).  ``config_dir()`` finds
it in both layouts.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["config_dir"]

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def config_dir() -> Path:
    """The directory holding ``train.yaml`` and the config groups.

    Looked up, in order: ``<package>/conf`` (an installed wheel) and ``<package>/../conf`` (a
    checkout, used as is or installed in editable mode).
    """
    candidates = (_PACKAGE_DIR / "conf", _PACKAGE_DIR.parent / "conf")
    for path in candidates:
        if (path / "train.yaml").is_file():
            return path
    raise FileNotFoundError(
        "scoresde's config tree (train.yaml and its groups) was not found in "
        + " or ".join(str(p) for p in candidates)
        + "; reinstall scoresde, or run from a checkout that has conf/"
    )
