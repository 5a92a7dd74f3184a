"""A folder of PNG / JPEG images as a data set: ``ImageFolder(path, resolution=32)``.

``scoresde-train data=image_folder data.path=DIR data.resolution=32 model=unet``.

Every ``.png``, ``.jpg``, ``.jpeg`` (any case) under ``path`` is read once with Pillow, converted to
grey (``channels=1``) or RGB (``channels=3``; transparency is dropped onto black by PIL's
conversion), brought to ``resolution x resolution`` by ``fit_image`` (``mode``: ``resize``,
``center_crop`` or ``pad``), and kept in memory as 8 bits; training pixels are ``v / 127.5 - 1``
(``scoresde.data.images``).  Files are read in sorted path order, so the data set does not depend
on the file system's listing order.

Labels (``labels=True``): one class per immediate subfolder of ``path`` (torchvision's
``ImageFolder`` layout, ``DIR/<class>/**/<image>``), classes in sorted name order; an image lying
directly in ``path`` is then an error.  With ``labels=False`` (default) subfolders are searched
too and give no labels.  An unreadable image stops with a ``DataError`` naming the file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .._checks import check_in, check_int
from .datasets import DataError
from .images import FIT_MODES, ImageDataset, fit_image

__all__ = ["ImageFolder", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _read(path: Path, channels: int, resolution: int, mode: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"image {path} could not be read ({type(e).__name__}: {e})") from e
    out = np.asarray(fit_image(im, resolution, mode), dtype=np.uint8)
    return out[None] if channels == 1 else out.transpose(2, 0, 1)


class ImageFolder(ImageDataset):
    """The images under a folder, ``[n, channels, resolution, resolution]`` in [-1, 1] (module docstring).

    Args:
        path: the folder.
        resolution: side of the square images, >= 1.
        mode: ``resize`` | ``center_crop`` | ``pad`` (``scoresde.data.images.fit_image``).
        channels: 1 (grey) or 3 (RGB).
        labels: one class per subfolder of ``path``.
        flip: random left-right flips with probability 1/2.
    """

    def __init__(self, path: str, resolution: int = 32, mode: str = "center_crop", channels: int = 3,
                 labels: bool = False, flip: bool = False):
        self.path = Path(path).expanduser()
        resolution = check_int("resolution", resolution)
        check_in("mode", mode, FIT_MODES)
        check_in("channels", channels, (1, 3))
        if not isinstance(labels, bool):
            raise TypeError(f"`labels` must be a bool, got {labels!r}")
        if not self.path.is_dir():
            raise FileNotFoundError(f"image folder {self.path} does not exist or is not a folder")
        files = _image_files(self.path)
        if not files:
            raise DataError(f"image folder {self.path} holds no {'/'.join(IMAGE_SUFFIXES)} files (searched subfolders too)")
        classes: tuple[str, ...] = ()
        codes = None
        if labels:
            loose = [f for f in files if f.parent == self.path]
            if loose:
                raise DataError(f"`labels`=True needs every image in a class subfolder of {self.path}, but "
                                f"{len(loose)} lie directly in it (first: {loose[0].name})")
            names = [f.relative_to(self.path).parts[0] for f in files]
            classes = tuple(sorted(set(names)))
            codes = np.array([classes.index(n) for n in names], dtype=np.int64)
        images = np.stack([_read(f, channels, resolution, mode) for f in files])
        self.files = tuple(files)
        super().__init__(images, codes, classes, flip)
