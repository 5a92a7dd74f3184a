"""Images as data sets ``[n, C, H, W]`` in [-1, 1]: procedural shapes and stored image arrays.

Pixel convention (every image data set of scoresde): an 8-bit value v in {0, ..., 255} is trained as

    x = v / 127.5 - 1  in [-1, 1],        and shown / saved as  u = (x + 1) / 2  in [0, 1]

(DDPM's and score_sde's scaling; EDM's ``x / 127.5 - 1`` too).  ``ImageDataset.transform`` is that
map back, a ``Standardization`` with shift 1/2 and scale 1/2, so the trainer stores it in the
checkpoint and the apps write ``samples.npz`` and figures in [0, 1], as they do for a data file's units.

* ``Shapes(size=16)``: one white shape on a black background per image, values in [-1, 1]:

    label 0  disc     signed inside-distance  r - |p - c|
    label 1  square   r - max(|p_1 - c_1|, |p_2 - c_2|)
    label 2  ring     r/4 - | |p - c| - 3r/4 |        (an annulus of width r/2)

  with the centre c ~ U(size/2 - size/8, size/2 + size/8)^2 and the radius r ~ U(size/5, size/3.2)
  in pixels (pixel centres p = (i + 1/2, j + 1/2)).  Edges are anti-aliased by a one-pixel ramp:
  ink = clip(inside-distance + 1/2, 0, 1), image = 2 ink - 1 (background -1, shape +1).  Small
  enough for a few minutes of CPU training of ``UNet`` (``benchmarks/unet_shapes.py``).
* ``ImageDataset(images, labels)``: N stored 8-bit images ``[N, C, H, W]`` drawn uniformly with
  replacement, optionally flipped left-right with probability 1/2 (``flip=True``, the augmentation
  of DDPM / NCSN++ on CIFAR-10).  The base of ``ImageFolder``, ``TorchvisionImages`` and ``Digits``.
* ``fit_image(image, resolution, mode)``: one image to ``resolution x resolution`` by ``resize``,
  ``center_crop`` or ``pad`` (the loaders' common geometry step).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .._checks import check_in, check_int
from .datasets import DataError, StoredSamples, ToyDataset
from .files import Standardization

__all__ = ["Shapes", "ImageDataset", "fit_image", "FIT_MODES", "to_unit_interval", "image_grid"]

FIT_MODES = ("resize", "center_crop", "pad")

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


def to_unit_interval(x: torch.Tensor) -> torch.Tensor:
    """Training pixels x in [-1, 1] to u = (x + 1) / 2 in [0, 1] (not clipped: a sampler may overshoot)."""
    return (x + 1) / 2


def fit_image(image, resolution: int, mode: str = "resize"):
    """A PIL image as ``resolution x resolution`` (same PIL mode), by one of ``FIT_MODES``:

    * ``resize``: the whole image scaled to the square (the aspect ratio is not kept);
    * ``center_crop``: the central square of side min(H, W), then scaled (torchvision's
      ``Resize(r) + CenterCrop(r)``, EDM's ``dataset_tool --transform=center-crop``);
    * ``pad``: centred on a black square of side ``resolution`` (left / top get the smaller half of an odd
      margin); an image larger than ``resolution`` is an error.

    Scaling is PIL's bicubic filter, which low-passes when it shrinks (no aliasing).
    """
    from PIL import Image

    resolution = check_int("resolution", resolution)
    check_in("mode", mode, FIT_MODES)
    w, h = image.size
    if mode == "pad":
        if w > resolution or h > resolution:
            raise ValueError(f"`mode`='pad' needs images no larger than `resolution`={resolution}, got {w}x{h}; "
                             "use mode='resize' or 'center_crop'")
        canvas = Image.new(image.mode, (resolution, resolution))
        canvas.paste(image, ((resolution - w) // 2, (resolution - h) // 2))
        return canvas
    if mode == "center_crop":
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size == (resolution, resolution):
        return image
    return image.resize((resolution, resolution), Image.Resampling.BICUBIC)


def fit_array(images: np.ndarray, resolution: int | None, mode: str) -> np.ndarray:
    """``fit_image`` on every image of a uint8 array ``[N, C, H, W]`` (C = 1 or 3); None: unchanged."""
    if resolution is None or images.shape[-2:] == (resolution, resolution):
        return images
    from PIL import Image

    pil_mode = "L" if images.shape[1] == 1 else "RGB"
    hwc = images.transpose(0, 2, 3, 1)
    out = [np.asarray(fit_image(Image.fromarray(im[..., 0] if pil_mode == "L" else im, pil_mode), resolution, mode))
           for im in hwc]
    out = np.stack(out)
    return (out[:, None] if pil_mode == "L" else out.transpose(0, 3, 1, 2)).copy()


class ImageDataset(StoredSamples, ToyDataset):
    """N stored 8-bit images drawn uniformly with replacement, as ``[n, C, H, W]`` in [-1, 1] (module docstring).

    Args:
        images: uint8 array or tensor ``[N, C, H, W]`` (C = 1 grey or 3 RGB).
        labels: ``[N]`` integers in ``range(len(classes))``, or None.
        classes: the class names (label k is ``classes[k]``); needed with ``labels``.
        flip: flip each drawn image left-right with probability 1/2 (from the sampling generator).

    ``sample(n, generator)``: indices i ~ U{0..N-1} and flips b ~ Bernoulli(1/2) from ``generator``,
    x = images[i] / 127.5 - 1, mirrored where b.  ``data`` / ``labels`` / ``len()`` give the whole set
    (for splits, floors and distributed sampling); ``to_user_units`` maps [-1, 1] back to [0, 1].
    """

    def __init__(self, images, labels=None, classes: Sequence = (), flip: bool = False):
        if not isinstance(flip, bool):
            raise TypeError(f"`flip` must be a bool, got {flip!r}")
        images = torch.as_tensor(np.array(images, copy=True))  # our own (writable) copy
        if images.dtype != torch.uint8:
            raise DataError(f"images must be 8-bit (uint8) [N, C, H, W], got dtype {images.dtype}")
        if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
            raise DataError(f"images must have shape [N, C, H, W] with N >= 1 and C in (1, 3), got {tuple(images.shape)}")
        self.flip = flip
        self._images = images.contiguous()
        self.classes = tuple(classes)
        self._labels = None
        if labels is not None:
            labels = torch.as_tensor(np.asarray(labels)).reshape(-1).to(torch.long)
            if labels.shape[0] != images.shape[0]:
                raise DataError(f"labels must be one per image ({images.shape[0]}), got {labels.shape[0]}")
            if not self.classes or int(labels.min()) < 0 or int(labels.max()) >= len(self.classes):
                raise DataError(f"labels must lie in range(len(classes)) = range({len(self.classes)}), "
                                f"got [{int(labels.min())}, {int(labels.max())}]")
            self._labels = labels
        self.event_shape = tuple(images.shape[1:])
        self.transform = Standardization(torch.full(self.event_shape, 0.5, dtype=torch.float64), 0.5)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_images={len(self)}, event_shape={self.event_shape}, "
                f"num_classes={self.num_classes}, flip={self.flip})")

    def __len__(self) -> int:
        return self._images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self._labels is not None else 0

    @property
    def images(self) -> torch.Tensor:
        """The stored uint8 images ``[N, C, H, W]`` (CPU)."""
        return self._images

    @property
    def data(self) -> torch.Tensor:
        """All N images in training units, float32 ``[N, C, H, W]`` in [-1, 1] (no flips; CPU), equal to what
        ``sample`` draws (computed in float64, then rounded)."""
        return (self._images.to(torch.float64) / 127.5 - 1).to(torch.float32)

    def _draw(self, n, generator):
        device = generator.device
        images, labels = self._resample(self._images, n, generator)
        x = images.to(torch.float64) / 127.5 - 1
        if self.flip:
            mirrored = torch.rand(n, generator=generator, device=device) < 0.5
            x = torch.where(mirrored[:, None, None, None], x.flip(-1), x)
        return x.reshape(n, -1), labels


def image_grid(images, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """Images ``[n, C, H, W]`` in [0, 1] tiled into one ``[rows (H + pad) + pad, nrow (W + pad) + pad, C]`` array
    (values clipped to [0, 1], padding white), for ``matplotlib``'s ``imshow`` (``cmap="gray"`` when C = 1)."""
    x = torch.as_tensor(images).detach().to("cpu", torch.float64)
    if x.ndim != 4:
        raise ValueError(f"`images` must have shape [n, C, H, W], got {tuple(x.shape)}")
    n, c, h, w = x.shape
    nrow = check_int("nrow", nrow if nrow is not None else max(1, int(np.ceil(np.sqrt(n)))))
    rows = -(-n // nrow)
    grid = np.ones((rows * (h + pad) + pad, nrow * (w + pad) + pad, c))
    for k, im in enumerate(x.clamp(0, 1).numpy()):
        r, q = divmod(k, nrow)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[top:top + h, left:left + w] = im.transpose(1, 2, 0)
    return grid
