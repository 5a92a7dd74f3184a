"""The apps' figures: loss curve, samples beside the data, and a sweep's comparison grid.

Each function builds a ``matplotlib.figure.Figure`` directly (no pyplot, so no global state and no
display: the Agg canvas renders the PNG) and writes it to ``path``.  Points are ``[n, >= 2]``
numpy arrays; only the first two coordinates are drawn.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

__all__ = ["plot_loss", "plot_samples", "plot_comparison"]

_SAMPLES = dict(s=2, alpha=0.5, linewidths=0, color="C0")
_DATA = dict(s=2, alpha=0.5, linewidths=0, color="0.45")
_DATA_BEHIND = dict(s=2, alpha=0.3, linewidths=0, color="0.55")


def _limits(*arrays: np.ndarray | None) -> tuple[float, float, float, float]:
    """Common square-ish axes limits: the 0.5%-99.5% quantiles of the data-like points, padded."""
    present = [a[:, :2] for a in arrays if a is not None and len(a)]
    pts = np.concatenate(present) if present else np.empty((0, 2))  # no job left samples: default limits
    pts = pts[np.isfinite(pts).all(1)]
    if len(pts) == 0:
        return -1.0, 1.0, -1.0, 1.0
    lo, hi = np.quantile(pts, 0.005, axis=0), np.quantile(pts, 0.995, axis=0)
    pad = 0.15 * max(float((hi - lo).max()), 1e-6)
    return lo[0] - pad, hi[0] + pad, lo[1] - pad, hi[1] + pad


def _scatter(ax, points: np.ndarray | None, limits, style: dict) -> None:
    if points is not None:
        ax.scatter(points[:, 0], points[:, 1], rasterized=True, **style)
    ax.set_xlim(limits[0], limits[1])
    ax.set_ylim(limits[2], limits[3])
    ax.set_aspect("equal")
    ax.tick_params(labelsize=7)


def plot_loss(losses: np.ndarray, path: str | Path) -> None:
    """Per-step training loss (light) and its running mean over ~2% of the steps, log scale."""
    losses = np.asarray(losses, dtype=np.float64)
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.add_subplot()
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, color="C0", alpha=0.3, lw=0.6, label="batch loss")
    window = max(1, len(losses) // 50)
    if len(losses) >= window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, color="C0", lw=1.5, label=f"running mean ({window} steps)")
    if np.all(losses[np.isfinite(losses)] > 0):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("DSM loss")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


def plot_samples(samples: np.ndarray, data: np.ndarray, path: str | Path, *, title: str = "") -> None:
    """Two panels on shared axes: fresh data (left) and generated samples (right)."""
    limits = _limits(data)
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2, sharex=True, sharey=True)
    _scatter(left, data, limits, _DATA)
    left.set_title("data", fontsize=9)
    _scatter(right, samples, limits, _SAMPLES)
    # the run's summary goes under the panel title (a suptitle overlapped the panel titles)
    right.set_title(f"samples\n{title}" if title else "samples", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def plot_comparison(panels: Sequence[dict], path: str | Path) -> None:
    """One scatter per job: ``panels`` of {"title", "samples" (or None), "data" (or None), "error", "above"}.

    ``above``: the job's overall verdict is "above floor"; its title is drawn in red.
    """
    n = max(1, len(panels))
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    limits = _limits(*[p.get("data") for p in panels]) if any(p.get("data") is not None for p in panels) else \
        _limits(*[p.get("samples") for p in panels])
    fig = Figure(figsize=(3.2 * cols, 3.3 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, panel in zip(axes, panels):
        _scatter(ax, panel.get("data"), limits, _DATA_BEHIND)
        if panel.get("samples") is not None:
            _scatter(ax, panel["samples"], limits, _SAMPLES)
        if panel.get("error"):
            ax.text(0.5, 0.5, "\n".join(textwrap.wrap(panel["error"], 34)[:6]), transform=ax.transAxes,
                    ha="center", va="center", fontsize=7, color="C3")
        ax.set_title(panel.get("title", ""), fontsize=8, color="C3" if panel.get("above") else "black")
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    fig.savefig(path, dpi=100)
