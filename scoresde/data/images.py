"""A tiny image data set that needs no download: procedurally drawn shapes, ``[n, 1, size, size]``.

``Shapes(size=16)`` draws one white shape on a black background per image, values in [-1, 1]:

    label 0  disc     signed inside-distance  r - |p - c|
    label 1  square   r - max(|p_1 - c_1|, |p_2 - c_2|)
    label 2  ring     r/4 - | |p - c| - 3r/4 |        (an annulus of width r/2)

with the centre c ~ U(size/2 - size/8, size/2 + size/8)^2 and the radius r ~ U(size/5, size/3.2)
in pixels (pixel centres p = (i + 1/2, j + 1/2)).  Edges are anti-aliased by a one-pixel ramp:
ink = clip(inside-distance + 1/2, 0, 1), image = 2 ink - 1 (background -1, shape +1).

Small enough for a few minutes of CPU training of ``unet.UNet`` (``benchmarks/unet_shapes.py``), and
recognisable at a glance: a sample that is a blob, a box or a ring is right.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_int
from .datasets import ToyDataset

__all__ = ["Shapes"]

SHAPES = ("disc", "square", "ring")


@dataclass(frozen=True)
class Shapes(ToyDataset):
    """Procedural shapes (disc, square, ring) as ``[n, 1, size, size]`` images in [-1, 1]; labels = shape kind."""

    size: int = 16

    def __post_init__(self):
        check_int("size", self.size, minimum=8)

    @property
    def event_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return (1, self.size, self.size)

    @property
    def num_classes(self) -> int:
        return len(SHAPES)

    def _draw(self, n, g):
        s = self.size
        dev = g.device
        labels = torch.randint(len(SHAPES), (n,), generator=g, device=dev)
        spread = s / 8
        centre = s / 2 + spread * (2 * torch.rand(n, 2, generator=g, device=dev, dtype=torch.float64) - 1)
        radius = s / 5 + (s / 3.2 - s / 5) * torch.rand(n, generator=g, device=dev, dtype=torch.float64)
        grid = torch.arange(s, device=dev, dtype=torch.float64) + 0.5
        dy = grid[None, :, None] - centre[:, 0, None, None]  # [n, s, 1]
        dx = grid[None, None, :] - centre[:, 1, None, None]  # [n, 1, s]
        r = radius[:, None, None]
        dist = torch.sqrt(dy**2 + dx**2)
        inside = {
            0: r - dist,  # disc
            1: r - torch.maximum(dy.abs(), dx.abs()),  # square
            2: r / 4 - (dist - 0.75 * r).abs(),  # ring of width r/2 around radius 3r/4
        }
        signed = torch.zeros(n, s, s, dtype=torch.float64, device=dev)
        for k, value in inside.items():
            signed = torch.where((labels == k)[:, None, None], value.expand(n, s, s), signed)
        ink = (signed + 0.5).clamp(0, 1)
        return (2 * ink - 1).reshape(n, s * s), labels
