"""A GIF of the reverse process for 2-D data: particles flowing from the prior to the data.

``record_trajectory(sampler, score_fn, sde, n, generator)`` runs a sampler once with a callback that
keeps the particles after every step (``StepInfo.x``), and ``save_animation(frames, path)`` writes
them as an animated GIF (matplotlib's ``PillowWriter``; matplotlib and Pillow are imported only
here, when called).  Frames are evenly spaced over the steps, plus the prior and the final state,
held for a second at the end; axes are fixed to the final samples' range, so the eye follows
particles, not a moving frame.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

__all__ = ["record_trajectory", "save_animation"]


def record_trajectory(sampler, score_fn, sde, n: int, generator: torch.Generator, *, max_frames: int = 60,
                      transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[list[np.ndarray], list[float]]:
    """Run ``sampler`` on ``n`` particles ``[n, 2]`` and return (frames, times): ``frames[k]`` float64 ``[n, 2]``.

    ``transform`` maps particles to the units to show (e.g. ``FileDataset.to_user_units``); at most
    ``max_frames`` frames (first and last always kept).
    """
    states: list[tuple[float, torch.Tensor]] = []

    def callback(info):
        states.append((float(info.t_next), info.x.detach().to("cpu", torch.float64).clone()))

    result = sampler.run(score_fn, sde, (n, 2), generator=generator, callback=callback)
    if not states or not torch.equal(states[-1][1], result.x.detach().to("cpu", torch.float64)):
        states.append((0.0, result.x.detach().to("cpu", torch.float64)))
    keep = np.unique(np.linspace(0, len(states) - 1, min(max_frames, len(states))).round().astype(int))
    frames, times = [], []
    for i in keep:
        t, x = states[i]
        x = transform(x) if transform is not None else x
        frames.append(x.numpy())
        times.append(t)
    return frames, times


def save_animation(frames: Sequence[np.ndarray], path: str | Path, *, times: Sequence[float] | None = None,
                   reference: np.ndarray | None = None, fps: int = 12, title: str = "") -> Path:
    """Write ``frames`` (each ``[n, 2]``) as an animated GIF at ``path``; ``reference`` data drawn faintly behind."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.animation import FuncAnimation, PillowWriter
    from matplotlib.figure import Figure

    path = Path(path)
    final = frames[-1] if reference is None else np.concatenate([frames[-1], reference])
    lo, hi = np.percentile(final, 0.5, axis=0), np.percentile(final, 99.5, axis=0)
    pad = 0.15 * (hi - lo) + 1e-9
    lo, hi = lo - pad, hi + pad
    fig = Figure(figsize=(4.5, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal", adjustable="box")
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=2, c="0.85", linewidths=0)
    dots = ax.scatter(frames[0][:, 0], frames[0][:, 1], s=3, c="C0", linewidths=0)
    label = ax.set_title(title, fontsize=9)

    def update(k):
        k = min(k, len(frames) - 1)  # hold the last frame
        dots.set_offsets(frames[k])  # particles outside the final range leave the picture
        when = f"t = {times[k]:.3f}" if times is not None else f"frame {k}"
        label.set_text(f"{title}  {when}".strip())
        return dots, label

    animation = FuncAnimation(fig, update, frames=len(frames) + fps, blit=False)
    animation.save(path, writer=PillowWriter(fps=fps))
    return path
