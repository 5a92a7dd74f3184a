"""MNIST, Fashion-MNIST and CIFAR-10 in torchvision's on-disk layout: ``TorchvisionImages(name, root)``.

``scoresde-train data=torchvision data.name=MNIST data.root=~/data data.download=true model=unet``.

The files are read by this module itself, so a data set that is already on disk needs no torchvision;
torchvision (``pip install -e ".[torchvision]"``) is used only to download it (``download=True``, on
the first run: MNIST 12 MB, Fashion-MNIST 30 MB, CIFAR-10 170 MB).  Layouts (torchvision's):

* ``MNIST`` / ``FashionMNIST``: ``root/<name>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``,
  the IDX format of LeCun et al.: big-endian header ``0 0 <type 0x08 = uint8> <ndim>``, ``ndim``
  int32 sizes, then the bytes; images ``[N, 28, 28]``, labels ``[N]``.
* ``CIFAR10``: ``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``, Python
  pickles of ``{"data": uint8 [10000, 3072] (R, G, B planes of 32 x 32), "labels": [10000]}``.
  They are unpickled with a restricted unpickler that admits only numpy's array constructors.

Images stay 8-bit in memory; ``resolution`` (None: native 28 or 32) brings them to a square by
``fit_image`` (``mode="pad"`` centres MNIST's 28 x 28 on 32 x 32 black, as LeNet-5 did; ``resize``
and ``center_crop`` scale).  Labels are the data set's classes; ``flip`` as in ``ImageDataset``
(left-right flips suit CIFAR-10, not digits).
"""
from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path

import numpy as np

from .._checks import check_in, check_int
from .datasets import DataError
from .images import FIT_MODES, ImageDataset, fit_array

__all__ = ["TorchvisionImages", "NAMES", "read_idx", "read_cifar10"]

NAMES = ("MNIST", "FashionMNIST", "CIFAR10")
CLASSES = {
    "MNIST": tuple(str(k) for k in range(10)),
    "FashionMNIST": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                     "Ankle boot"),
    "CIFAR10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}
_IDX_TYPES = {0x08: np.uint8}


def read_idx(path: str | Path) -> np.ndarray:
    """The array of an IDX file (``.gz`` too), uint8 only (MNIST's and Fashion-MNIST's type)."""
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path} is not an 8-bit IDX file (header {raw[:4].hex()}, expected 0000 08 <ndim>)")
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    body = np.frombuffer(raw, _IDX_TYPES[raw[2]], offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} holds {body.size} values but its header says shape {shape} (truncated?)")
    return body.reshape(shape)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays; refuses any other global (no code runs)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: not a numpy array")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        return _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DataError(f"{path} is not a CIFAR-10 python batch ({type(e).__name__}: {e})") from e


def read_cifar10(folder: str | Path, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 ``[N, 3, 32, 32]`` and labels ``[N]`` of ``cifar-10-batches-py`` (train: data_batch_1..5)."""
    folder = Path(folder)
    names = [f"data_batch_{k}" for k in range(1, 6)] if train else ["test_batch"]
    images, labels = [], []
    for name in names:
        batch = _unpickle(folder / name)
        if "data" not in batch or "labels" not in batch:
            raise DataError(f"{folder / name} has no 'data' / 'labels' entries (keys: {sorted(batch)})")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch["labels"], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _files(name: str, root: Path, train: bool) -> list[Path]:
    if name == "CIFAR10":
        folder = root / "cifar-10-batches-py"
        return [folder / (f"data_batch_{k}" if train else "test_batch") for k in (range(1, 6) if train else [0])]
    split = "train" if train else "t10k"
    return [root / name / "raw" / f"{split}-images-idx3-ubyte", root / name / "raw" / f"{split}-labels-idx1-ubyte"]


def _present(path: Path) -> Path | None:
    for p in (path, path.with_name(path.name + ".gz")):
        if p.is_file():
            return p
    return None


def _download(name: str, root: Path, train: bool) -> None:
    try:
        import torchvision
    except ImportError as e:
        raise ImportError(f"`download`=True fetches {name} through torchvision, which is not installed: "
                          "pip install -e \".[torchvision]\" (or place the files under `root` yourself)") from e
    getattr(torchvision.datasets, name)(str(root), train=train, download=True)


class TorchvisionImages(ImageDataset):
    """MNIST / FashionMNIST / CIFAR10 read from torchvision's files under ``root`` (module docstring).

    Args:
        name: ``MNIST``, ``FashionMNIST`` or ``CIFAR10``.
        root: torchvision's ``root`` folder.
        train: the training split (else the test split).
        download: fetch missing files through torchvision first (needs the ``torchvision`` extra).
        resolution: side of the square images (None: native, 28 or 32); ``mode`` as in ``fit_image``.
        flip: random left-right flips with probability 1/2.
    """

    def __init__(self, name: str = "MNIST", root: str = "data", train: bool = True, download: bool = False,
                 resolution: int | None = None, mode: str = "pad", flip: bool = False):
        check_in("name", name, NAMES)
        for key, value in (("train", train), ("download", download)):
            if not isinstance(value, bool):
                raise TypeError(f"`{key}` must be a bool, got {value!r}")
        if resolution is not None:
            resolution = check_int("resolution", resolution)
        check_in("mode", mode, FIT_MODES)
        self.name, self.root, self.train = name, Path(root).expanduser(), train
        missing = [p for p in _files(name, self.root, train) if _present(p) is None]
        if missing and download:
            _download(name, self.root, train)
            missing = [p for p in _files(name, self.root, train) if _present(p) is None]
        if missing:
            raise FileNotFoundError(f"{name} is not under `root`={str(self.root)!r} (missing {missing[0]}); set "
                                    "download=true (needs torchvision: pip install -e \".[torchvision]\")")
        if name == "CIFAR10":
            images, labels = read_cifar10(self.root / "cifar-10-batches-py", train)
        else:
            image_file, label_file = (_present(p) for p in _files(name, self.root, train))
            images, labels = read_idx(image_file), read_idx(label_file).astype(np.int64)
            if images.ndim != 3 or labels.shape != images.shape[:1]:
                raise DataError(f"{image_file} / {label_file}: images must be [N, H, W] with N labels, got "
                                f"{images.shape} and {labels.shape}")
            images = images[:, None]
        images = fit_array(images, resolution, mode)
        super().__init__(images, labels, CLASSES[name], flip)
