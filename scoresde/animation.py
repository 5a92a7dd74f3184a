"""A GIF of the reverse process for 2-D data: particles flowing from the prior to the data.

``TrajectoryRecorder(n)`` is a sampler callback that keeps the first ``n`` particles after every step
(``StepInfo.x``), so a run that samples anyway (the train app's) records its own trajectory;
``record_trajectory(sampler, score_fn, sde, n, generator)`` runs a sampler once with one.
``save_animation(frames, path)`` writes the frames as an animated GIF (matplotlib's ``PillowWriter``; matplotlib and Pillow are imported only
here, when called).  Frames are evenly spaced over the steps, plus the prior and the final state,
held for a second at the end; axes are fixed to the final samples' range, so the eye follows
particles, not a moving frame.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

__all__ = ["TrajectoryRecorder", "record_trajectory", "save_animation"]


class TrajectoryRecorder:
    """Sampler callback: the first ``n`` particles after every step, float64 on the CPU.

    Pass it as ``callback=`` to a sampler's ``run``; then ``finish(result.x)`` adds the final
    samples when the sampler's last callback came before them (a final denoise outside the step
    loop), and ``frames()`` picks the frames to show.
    """

    def __init__(self, n: int):
        self.n = n
        self.states: list[tuple[float, torch.Tensor]] = []  # (t after the step, x [<= n, *D])

    def __call__(self, info) -> None:
        self.states.append((float(info.t_next), self._keep(info.x)))

    def _keep(self, x: torch.Tensor) -> torch.Tensor:
        return x[: self.n].detach().to("cpu", torch.float64).clone()

    def finish(self, x: torch.Tensor) -> None:
        """Record the run's final samples ``x`` unless the last step already showed them."""
        final = self._keep(x)
        if not self.states or not torch.equal(self.states[-1][1], final):
            self.states.append((0.0, final))

    def frames(self, *, max_frames: int = 60, transform: Callable[[torch.Tensor], torch.Tensor] | None = None
               ) -> tuple[list[np.ndarray], list[float]]:
        """(frames, times): at most ``max_frames`` states evenly spaced over the steps (first and last always
        kept), each mapped by ``transform`` (e.g. ``FileDataset.to_user_units``) to a float64 array."""
        keep = np.unique(np.linspace(0, len(self.states) - 1, min(max_frames, len(self.states))).round().astype(int))
        frames, times = [], []
        for i in keep:
            t, x = self.states[i]
            x = transform(x) if transform is not None else x
            frames.append(x.numpy())
            times.append(t)
        return frames, times


def record_trajectory(sampler, score_fn, sde, n: int, generator: torch.Generator, *, max_frames: int = 60,
                      transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[list[np.ndarray], list[float]]:
    """Run ``sampler`` on ``n`` particles ``[n, 2]`` and return (frames, times): ``frames[k]`` float64 ``[n, 2]``.

    ``transform`` maps particles to the units to show (e.g. ``FileDataset.to_user_units``); at most
    ``max_frames`` frames (first and last always kept).
    """
    recorder = TrajectoryRecorder(n)
    recorder.finish(sampler.run(score_fn, sde, (n, 2), generator=generator, callback=recorder).x)
    return recorder.frames(max_frames=max_frames, transform=transform)


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
