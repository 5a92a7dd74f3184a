"""scikit-learn's 8 x 8 handwritten digits as ``[n, 1, 16, 16]`` images: ``Digits()``.

``scoresde-train data=digits model=unet`` (``pip install -e ".[digits]"``, i.e. scikit-learn).

The UCI "Optical Recognition of Handwritten Digits" test set (Alpaydin & Kaynak 1998) that
scikit-learn ships inside its wheel (``sklearn.datasets.load_digits``): 1797 images of 8 x 8 pixels,
each the count (0..16) of ink pixels in a 4 x 4 block of a 32 x 32 bitmap, labels 0..9 (about 180
each).  No download, so it is the real image data set that runs here.  A count c becomes the 8-bit
value round(255 c / 16), then ``fit_image`` brings it to ``resolution`` (default 16): ``resize``
(bicubic upscaling, smooth strokes) or ``pad`` (the 8 x 8 image centred on black).  Training pixels
are ``v / 127.5 - 1`` (``scoresde.data.images``).
"""
from __future__ import annotations

import numpy as np

from .._checks import check_in, check_int
from .images import FIT_MODES, ImageDataset, fit_array

__all__ = ["Digits", "load_digit_images"]


def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 ``[1797, 1, 8, 8]`` (round(255 c / 16)) and labels ``[1797]``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("data=digits reads scikit-learn's bundled digits: pip install -e \".[digits]\" "
                          "(scikit-learn >= 1.3)") from e
    bunch = load_digits()
    counts = np.asarray(bunch.images, dtype=np.float64)
    return np.rint(counts * (255 / 16)).astype(np.uint8)[:, None], np.asarray(bunch.target, dtype=np.int64)


class Digits(ImageDataset):
    """The 1797 digits of scikit-learn at ``resolution x resolution`` (module docstring); labels = the digit.

    Args:
        resolution: side of the square images, >= 8 with ``mode="pad"``.
        mode: ``resize`` | ``center_crop`` | ``pad`` (``scoresde.data.images.fit_image``).
        flip: random left-right flips with probability 1/2 (off: a mirrored digit is another glyph).
    """

    def __init__(self, resolution: int = 16, mode: str = "resize", flip: bool = False):
        resolution = check_int("resolution", resolution)
        check_in("mode", mode, FIT_MODES)
        images, labels = load_digit_images()
        super().__init__(fit_array(images, resolution, mode), labels, tuple(str(k) for k in range(10)), flip)
