"""Figures for 2-D score models and samplers (matplotlib, no pyplot: safe under any backend).

Every function builds a fresh ``matplotlib.figure.Figure`` (never pyplot's global state, so it
works headless under any backend and leaves no open pyplot figures behind), returns it, and writes it to ``path`` when one is given (parent
folders are created; the format follows the suffix).  Samples are batch-first ``[n, *D]`` tensors
or arrays; only the first two coordinates of each flattened sample are drawn.

* ``plot_samples``: samples over the data (or exact target samples), one scatter.
* ``plot_sample_grid``: one such scatter per sampler / setting, on shared axes.
* ``plot_score_field``: a learned and an exact score as arrows, one panel per time t, titled with
  the relative error on the grid.
* ``TrajectoryRecorder`` + ``plot_trajectories``: paths of a few samples through a sampler run
  (the recorder is the sampler's ``callback``; it keeps ``StepInfo.x`` of the first samples).
* ``plot_quality_vs_nfe``: a metric against NFE per sampler, one panel per target, from a list of
  result dicts (the rows a benchmark writes to JSON).
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from .sdes import SDE, ScoreFn

__all__ = [
    "plot_samples",
    "plot_sample_grid",
    "plot_score_field",
    "TrajectoryRecorder",
    "plot_trajectories",
    "plot_quality_vs_nfe",
]

_SAMPLE_STYLE = dict(s=2, alpha=0.5, linewidths=0, color="C0")
_DATA_STYLE = dict(s=2, alpha=0.25, linewidths=0, color="0.6")


# -- helpers -------------------------------------------------------------------------------------
def _points(name: str, x: Any, max_points: int | None = None) -> np.ndarray:
    """``x: [n, *D]`` (tensor or array) -> float64 numpy ``[min(n, max_points), 2]`` (first two coordinates)."""
    if torch.is_tensor(x):
        x = x.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"`{name}` must be batch-first [n, *D] with n >= 1, got shape {x.shape}")
    x = x.reshape(x.shape[0], -1)
    if x.shape[1] < 2:
        raise ValueError(f"`{name}` must have at least 2 coordinates per sample, got {x.shape[1]}")
    if max_points is not None and x.shape[0] > max_points:
        x = x[np.linspace(0, x.shape[0] - 1, max_points).astype(int)]  # deterministic, evenly strided
    return x[:, :2]


def _extent(*arrays: np.ndarray | None, margin: float = 0.05) -> tuple[float, float, float, float]:
    """Square-ish limits (xmin, xmax, ymin, ymax) covering the 0.5%..99.5% quantiles of all points."""
    pts = np.concatenate([a for a in arrays if a is not None])
    pts = pts[np.isfinite(pts).all(1)]
    if len(pts) == 0:
        return (-1.0, 1.0, -1.0, 1.0)
    lo, hi = np.quantile(pts, 0.005, axis=0), np.quantile(pts, 0.995, axis=0)
    pad = margin * max(float((hi - lo).max()), 1e-6)
    return (lo[0] - pad, hi[0] + pad, lo[1] - pad, hi[1] + pad)


def _grid(n: int) -> tuple[int, int]:
    """(rows, cols) for n panels, at most 4 columns."""
    cols = min(n, 4)
    return math.ceil(n / cols), cols


def _clip(v: np.ndarray, max_norm: float) -> np.ndarray:
    """Rows of ``v`` shortened to norm <= ``max_norm`` (directions kept)."""
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return v * np.minimum(1.0, max_norm / np.maximum(norm, 1e-300))


def _finish(fig: Figure, path: str | os.PathLike | None, dpi: int = 120) -> Figure:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return fig


def _scatter(ax, x: np.ndarray, data: np.ndarray | None, extent, title: str | None) -> None:
    if data is not None:
        ax.scatter(data[:, 0], data[:, 1], label="data", **_DATA_STYLE)
    ax.scatter(x[:, 0], x[:, 1], label="samples", **_SAMPLE_STYLE)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal", adjustable="box")
    if title:
        ax.set_title(title, fontsize=9)


# -- samples ---------------------------------------------------------------------------------------
def plot_samples(samples, data=None, *, title: str | None = None, extent=None, max_points: int = 5000,
                 path: str | os.PathLike | None = None) -> Figure:
    """Scatter of ``samples`` ``[n, *D]`` (blue) over ``data`` ``[m, *D]`` (grey), equal aspect.

    ``extent`` (xmin, xmax, ymin, ymax) defaults to the central 99% of all points; at most
    ``max_points`` of each set are drawn (evenly strided).
    """
    x = _points("samples", samples, max_points)
    d = None if data is None else _points("data", data, max_points)
    fig = Figure(figsize=(4.2, 4.2))
    ax = fig.add_subplot()
    _scatter(ax, x, d, extent or _extent(x, d), title)
    if d is not None:
        ax.legend(loc="upper right", markerscale=5, fontsize=8)
    return _finish(fig, path)


def plot_sample_grid(panels: Mapping[str, Any] | Sequence[tuple[str, Any]], data=None, *, extent=None,
                     max_points: int = 3000, suptitle: str | None = None,
                     path: str | os.PathLike | None = None) -> Figure:
    """One scatter per entry of ``panels`` (title -> samples ``[n, *D]``), shared limits, data in grey.

    The shared ``extent`` defaults to the central 99% of ``data`` (or of all samples when there
    is no data), so a sampler that diverges shows as points leaving the frame rather than a
    zoomed-out panel.
    """
    items = list(panels.items()) if isinstance(panels, Mapping) else list(panels)
    if not items:
        raise ValueError("`panels` must hold at least one (title, samples) entry")
    xs = [(str(title), _points(f"panels[{title!r}]", x, max_points)) for title, x in items]
    d = None if data is None else _points("data", data, max_points)
    if extent is None:
        extent = _extent(d) if d is not None else _extent(*(x for _, x in xs))
    rows, cols = _grid(len(xs))
    fig = Figure(figsize=(3 * cols, 3 * rows))
    for i, (title, x) in enumerate(xs):
        _scatter(fig.add_subplot(rows, cols, i + 1), x, d, extent, title)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return _finish(fig, path)


# -- score fields ------------------------------------------------------------------------------------
def plot_score_field(score_fn: ScoreFn, reference_score_fn: ScoreFn | None, sde: SDE, ts: Sequence[float], *,
                     extent=(-4.0, 4.0, -4.0, 4.0), grid_size: int = 21, data=None,
                     labels: tuple[str, str] = ("learned", "exact"), device: torch.device | str | None = None,
                     path: str | os.PathLike | None = None) -> Figure:
    """Arrows of ``score_fn`` (blue) and ``reference_score_fn`` (red) on a grid, one panel per t in ``ts``.

    Both are ``score(x: [B, 2], t: [B]) -> [B, 2]`` (2-D data only), evaluated without gradients in
    float32 on a ``grid_size`` x ``grid_size`` grid over ``extent``, on ``device`` (default CPU).
    Arrows in a panel share one scale: the 90th percentile of the reference norms spans one grid
    cell, and longer arrows (of both fields alike) are clipped to 1.5 cells, so the far field does
    not dwarf the modes.  Each title gives t, sigma(t) and the relative error
    sum_grid |s - s_ref| / sum_grid |s_ref| (a ratio of sums, so grid points where the reference
    vanishes do not blow it up).  ``reference_score_fn=None`` draws one field.  ``data``
    (``[m, 2]``) is drawn in grey underneath.
    """
    ts = [float(t) for t in ts]
    if not ts:
        raise ValueError("`ts` must hold at least one time")
    for t in ts:
        if not sde.t_min <= t <= sde.T:
            raise ValueError(f"`ts` must lie in [t_min, T] = [{sde.t_min:g}, {sde.T:g}], got {t}")
    if len(extent) != 4:
        raise ValueError(f"`extent` must be (xmin, xmax, ymin, ymax), got {extent!r}")
    u, v = np.meshgrid(np.linspace(extent[0], extent[1], grid_size), np.linspace(extent[2], extent[3], grid_size))
    x = torch.tensor(np.stack([u.ravel(), v.ravel()], 1), dtype=torch.float32)
    xd = x if device is None else x.to(device)

    def evaluate(fn, t: float) -> np.ndarray:
        tb = torch.full((x.shape[0],), t, dtype=torch.float32, device=xd.device)
        with torch.no_grad():
            return fn(xd, tb).reshape(x.shape[0], -1)[:, :2].to("cpu", torch.float64).numpy()

    d = None if data is None else _points("data", data, 3000)
    cell = max(extent[1] - extent[0], extent[3] - extent[2]) / max(grid_size - 1, 1)
    rows, cols = _grid(len(ts))
    fig = Figure(figsize=(3.4 * cols, 3.4 * rows))
    for i, t in enumerate(ts):
        ax = fig.add_subplot(rows, cols, i + 1)
        s = evaluate(score_fn, t)
        ref = None if reference_score_fn is None else evaluate(reference_score_fn, t)
        norms = np.linalg.norm(ref if ref is not None else s, axis=1)
        top = float(np.quantile(norms, 0.9))
        scale = top / cell if top > 0 else 1.0  # score units per data unit of arrow length
        s_draw, ref_draw = _clip(s, 1.5 * top), None if ref is None else _clip(ref, 1.5 * top)
        if d is not None:
            ax.scatter(d[:, 0], d[:, 1], **_DATA_STYLE)
        ax.quiver(x[:, 0], x[:, 1], s_draw[:, 0], s_draw[:, 1], color="C0", angles="xy", scale_units="xy", scale=scale,
                  width=0.004, label=labels[0])
        sigma = float(sde.sigma(torch.tensor([t], dtype=torch.float64)))
        title = f"t = {t:.3g}, sigma = {sigma:.3g}"
        if ref is not None:
            ax.quiver(x[:, 0], x[:, 1], ref_draw[:, 0], ref_draw[:, 1], color="C3", alpha=0.6, angles="xy", scale_units="xy",
                      scale=scale, width=0.004, label=labels[1])
            ref_norm = np.linalg.norm(ref, axis=1).sum()
            rel = np.linalg.norm(s - ref, axis=1).sum() / ref_norm if ref_norm > 0 else float("nan")
            title += f"\nrel. error {rel:.3f}"
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_aspect("equal", adjustable="box")
        ax.set_title(title, fontsize=9)
        if i == 0:
            ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    return _finish(fig, path)


# -- trajectories --------------------------------------------------------------------------------------
class TrajectoryRecorder:
    """A sampler ``callback`` that keeps ``StepInfo.x`` of the first ``num_samples`` samples.

    It records every ``every``-th step (steps every-1, 2 every-1, ...) and always the last one.  Pass
    the starting point with ``start`` (e.g. ``x_init``) to include it.  ``trajectory`` is a float64
    tensor ``[num_recorded, num_samples, *D]`` and ``times`` the matching ``StepInfo.t_next`` list
    (NaN for the start)::

        rec = TrajectoryRecorder(8, start=x_init)
        sampler.run(score, sde, x_init=x_init, callback=rec)
        plot_trajectories(rec, data=target.sample(2000))
    """

    def __init__(self, num_samples: int = 8, start: torch.Tensor | None = None, every: int = 1):
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"`num_samples` must be an int >= 1, got {num_samples!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"`every` must be an int >= 1, got {every!r}")
        self.num_samples, self.every = num_samples, every
        self._states: list[torch.Tensor] = []
        self.times: list[float] = []
        if start is not None:
            self._states.append(start[:num_samples].detach().to("cpu", torch.float64).clone())
            self.times.append(float("nan"))

    def __call__(self, info) -> None:
        if (info.step + 1) % self.every and info.step != info.num_steps - 1:
            return
        self._states.append(info.x[: self.num_samples].detach().to("cpu", torch.float64).clone())
        self.times.append(float(info.t_next))

    @property
    def trajectory(self) -> torch.Tensor:
        if not self._states:
            raise ValueError("no steps recorded yet: pass the recorder as `callback=` to a sampler run")
        return torch.stack(self._states)


def plot_trajectories(trajectory: TrajectoryRecorder | Any, data=None, *, title: str | None = None, extent=None,
                      path: str | os.PathLike | None = None) -> Figure:
    """Paths of a few samples, ``trajectory`` ``[num_steps, k, *D]`` (or a ``TrajectoryRecorder``).

    Each path is a line from a circle (start) to a star (end), over ``data`` in grey.
    """
    traj = trajectory.trajectory if isinstance(trajectory, TrajectoryRecorder) else trajectory
    if torch.is_tensor(traj):
        traj = traj.detach().to("cpu", torch.float64).numpy()
    traj = np.asarray(traj, dtype=np.float64)
    if traj.ndim < 3 or traj.shape[0] < 1:
        raise ValueError(f"`trajectory` must have shape [num_steps, k, *D], got {traj.shape}")
    traj = traj.reshape(traj.shape[0], traj.shape[1], -1)[..., :2]
    d = None if data is None else _points("data", data, 3000)
    fig = Figure(figsize=(4.2, 4.2))
    ax = fig.add_subplot()
    if d is not None:
        ax.scatter(d[:, 0], d[:, 1], **_DATA_STYLE)
    for j in range(traj.shape[1]):
        colour = f"C{j % 10}"
        ax.plot(traj[:, j, 0], traj[:, j, 1], color=colour, lw=0.7, alpha=0.8)
        ax.plot(traj[0, j, 0], traj[0, j, 1], "o", color=colour, ms=4)
        ax.plot(traj[-1, j, 0], traj[-1, j, 1], "*", color=colour, ms=8, mec="k", mew=0.4)
    extent = extent or _extent(traj.reshape(-1, 2), d)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal", adjustable="box")
    ax.set_title(title or f"{traj.shape[1]} trajectories, {traj.shape[0]} states", fontsize=9)
    return _finish(fig, path)


# -- quality against cost --------------------------------------------------------------------------------
def plot_quality_vs_nfe(results: Sequence[Mapping[str, Any]], *, x: str = "nfe", y: str = "sw2_ratio",
                        hue: str = "sampler", panel: str | None = "target", reference: float | None = 1.0,
                        logx: bool = True, logy: bool = True, title: str | None = None,
                        path: str | os.PathLike | None = None) -> Figure:
    """``y`` against ``x`` (default: sliced-W2 / floor against NFE), one line per ``hue``, one panel per ``panel``.

    ``results`` is a list of flat dicts, e.g. ``{"target": ..., "sampler": ..., "nfe": 20, "sw2_ratio": 1.04}``;
    rows missing ``x`` or ``y`` (or with None / non-finite values) are skipped.  ``reference`` draws a
    dashed horizontal line (1 = the i.i.d. noise floor); ``panel=None`` puts everything on one axes.
    """
    rows = [r for r in results if r.get(x) is not None and r.get(y) is not None
            and math.isfinite(float(r[x])) and math.isfinite(float(r[y]))]
    if not rows:
        raise ValueError(f"`results` has no rows with finite {x!r} and {y!r}")
    panels = sorted({str(r.get(panel)) for r in rows}) if panel else [None]
    hues = list(dict.fromkeys(str(r.get(hue)) for r in rows))  # first-seen order
    nrows, ncols = _grid(len(panels))
    fig = Figure(figsize=(4.2 * ncols + 1.6, 3.4 * nrows), layout="constrained")
    markers = "osD^v<>pPX*h"
    for i, p in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for j, h in enumerate(hues):
            pts = sorted((float(r[x]), float(r[y])) for r in rows
                         if str(r.get(hue)) == h and (p is None or str(r.get(panel)) == p))
            if pts:
                ax.plot(*zip(*pts), marker=markers[j % len(markers)], ms=4, lw=1, color=f"C{j % 10}", label=h)
        if reference is not None:
            ax.axhline(reference, color="k", ls="--", lw=0.8)
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.grid(True, which="both", alpha=0.2)
        if p is not None:
            ax.set_title(p, fontsize=10)
    legend: dict = {}
    for ax in fig.axes:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(name, handle)
    fig.legend(list(legend.values()), list(legend), loc="outside right center", fontsize=8)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)
