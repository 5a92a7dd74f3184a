"""A user's data from a file: ``FileDataset(path)`` for ``.npy``, ``.npz``, ``.csv`` and ``.txt``.

The file holds N samples of any event shape, ``[N, *D]`` (``.npy`` / ``.npz``), or ``[N, d]``
rows (``.csv`` comma-separated, ``.txt`` whitespace-separated; one header line is skipped if it
does not parse as numbers).  A 1-D array is N scalars, event shape ``(1,)``.  Optional labels:
the name of a second array of the ``.npz`` (``labels="y"``), the path of a ``.npy`` / text file
of N labels, or a column of a text file / 2-D array (``label_column=-1``), removed from the data.
Label values are mapped to ``0 .. K-1`` in sorted order (``classes`` keeps the original values).

**Standardisation.**  Training happens in standardised units

    y = (x - shift) / scale,    shift = the per-coordinate mean (``center=True``, else 0),
    scale = sqrt(mean over samples and coordinates of (x - shift)^2)   (``scale=None``, default)

or a stated ``scale``.  One scalar scale (not one per coordinate) keeps the data's geometry
(an image stays an image, a circle a circle), and gives the SDE's default noise range (VP prior
N(0, I), VE sigma_max) the right size.  ``transform`` (a ``Standardization``) maps samples back,
``x = shift + scale * y``; the trainer stores its ``state_dict()`` in the checkpoint
(``"data_transform"``) and the apps write samples in the user's units.

Every problem with the file raises ``DataError`` (or ``FileNotFoundError``) naming the file:
unreadable, empty, ragged rows, non-numeric or non-finite entries, a missing ``.npz`` array.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._checks import check_positive
from .datasets import DataError, ToyDataset

__all__ = ["FileDataset", "Standardization", "load_array"]

SUFFIXES = (".npy", ".npz", ".csv", ".txt")


@dataclass(frozen=True)
class Standardization:
    """The affine map between the user's units x and training units y: y = (x - shift) / scale.

    ``shift``: float64 tensor of the event shape; ``scale``: a positive float.
    """

    shift: torch.Tensor
    scale: float

    def to_user_units(self, y: torch.Tensor) -> torch.Tensor:
        """x = shift + scale * y for ``y: [B, *D]`` (or ``[B, prod(D)]``), in ``y``'s dtype and device."""
        shift = self.shift.to(y.device, y.dtype)
        return shift.reshape(1, *(shift.shape if y.shape[1:] == shift.shape else (-1,))) + self.scale * y

    def from_user_units(self, x: torch.Tensor) -> torch.Tensor:
        """y = (x - shift) / scale."""
        shift = self.shift.to(x.device, x.dtype)
        return (x - shift.reshape(1, *(shift.shape if x.shape[1:] == shift.shape else (-1,)))) / self.scale

    def state_dict(self) -> dict:
        """Plain tensors and floats, for a ``weights_only`` checkpoint."""
        return {"shift": self.shift.clone(), "scale": float(self.scale)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "Standardization":
        return cls(torch.as_tensor(state["shift"], dtype=torch.float64), float(state["scale"]))


def _read_text(path: Path) -> np.ndarray:
    delimiter = "," if path.suffix == ".csv" else None
    errors = []
    for skip in (0, 1):  # one header line allowed
        try:
            return np.loadtxt(path, delimiter=delimiter, ndmin=2, skiprows=skip, dtype=np.float64)
        except ValueError as e:
            errors.append(str(e))
    msg = errors[-1]
    if "columns" in msg or "number of" in msg:
        raise DataError(f"data file {path} is ragged (rows of different lengths): {msg}")
    raise DataError(f"data file {path} could not be read as numbers: {errors[0]}")


def load_array(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """The array stored in ``path`` (``key``: the array's name inside an ``.npz``), with errors naming the file."""
    path = Path(path).expanduser()
    if path.suffix not in SUFFIXES:
        raise DataError(f"data file {path} has suffix {path.suffix!r}; supported: {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.suffix in (".csv", ".txt"):
        if key is not None:
            raise DataError(f"`key`={key!r} applies to .npz files only, got the text file {path}")
        return _read_text(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as e:  # object arrays (ragged lists) need pickle, which we refuse
        raise DataError(f"data file {path} holds an object array (ragged or non-numeric data?): {e}") from e
    except Exception as e:  # truncated or not a numpy file
        raise DataError(f"data file {path} is unreadable ({type(e).__name__}: {e})") from e
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            names = list(loaded.files)
            if key is None:
                if len(names) != 1:
                    raise DataError(f"data file {path} holds the arrays {names}; choose one with `key`")
                key = names[0]
            if key not in names:
                raise DataError(f"data file {path} has no array {key!r}; it holds {names}")
            try:
                return loaded[key]
            except ValueError as e:
                raise DataError(f"array {key!r} of {path} is an object array (ragged or non-numeric data?)") from e
    if key is not None:
        raise DataError(f"`key`={key!r} applies to .npz files only, got {path}")
    return loaded


class FileDataset(ToyDataset):
    """Samples drawn (with replacement, uniformly) from the N points of a file, standardised.

    Args:
        path: ``.npy``, ``.npz``, ``.csv`` or ``.txt`` file; see the module docstring.
        key: the data array's name in an ``.npz`` (optional if it holds one array, or two with ``labels``).
        labels: the labels array's name in the ``.npz``, or the path of a file of N labels.
        label_column: index of the label column of a 2-D array / text file (e.g. -1), or None.
        scale: the training-units scale; None (default): the data's root-mean-square deviation.
        center: subtract the per-coordinate mean (default True).

    ``sample(n, generator)`` returns standardised float32 ``[n, *D]``; ``transform`` maps back.
    """

    def __init__(self, path: str, key: str | None = None, labels: str | None = None,
                 label_column: int | None = None, scale: float | None = None, center: bool = True):
        self.path = Path(path).expanduser()
        if labels is not None and label_column is not None:
            raise ValueError("give `labels` (an array or file) or `label_column`, not both")
        if scale is not None:
            scale = check_positive("scale", scale)
        if not isinstance(center, bool):
            raise TypeError(f"`center` must be a bool, got {center!r}")
        if self.path.suffix == ".npz" and key is None and labels is not None:
            rest = [k for k in _npz_names(self.path) if k != labels]
            key = rest[0] if len(rest) == 1 else None
        x = load_array(self.path, key)
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise DataError(f"data file {self.path} holds {x.dtype} values; need real numbers")
        x = np.asarray(x, dtype=np.float64)
        y = None
        if label_column is not None:
            if x.ndim != 2 or not -x.shape[1] <= label_column < x.shape[1] or x.shape[1] < 2:
                raise DataError(f"`label_column`={label_column} needs a 2-D array with that column and at least one "
                                f"more; {self.path} has shape {x.shape}")
            y = x[:, label_column]
            x = np.delete(x, label_column % x.shape[1], axis=1)
        elif labels is not None:
            y = load_array(self.path, labels) if self.path.suffix == ".npz" else load_array(labels)
            y = np.asarray(y).reshape(-1) if y.ndim == 2 and 1 in y.shape else np.asarray(y)
        if x.ndim == 1:
            x = x[:, None]
        if x.shape[0] == 0 or x.size == 0:
            raise DataError(f"data file {self.path} is empty (array shape {x.shape}); need at least one sample")
        bad = ~np.isfinite(x.reshape(x.shape[0], -1)).all(1)
        if bad.any():
            raise DataError(f"data file {self.path} has non-finite values (NaN or inf) in {int(bad.sum())} of "
                            f"{x.shape[0]} samples, first at row {int(np.argmax(bad))}")
        self.classes: tuple = ()
        self._labels = None
        if y is not None:
            if y.ndim != 1 or y.shape[0] != x.shape[0]:
                raise DataError(f"labels of {self.path} must be one per sample ({x.shape[0]}), got shape {y.shape}")
            if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
                raise DataError(f"labels of {self.path} contain NaN or inf")
            classes, codes = np.unique(y, return_inverse=True)
            self.classes = tuple(c.item() for c in classes)
            self._labels = torch.as_tensor(codes.reshape(-1), dtype=torch.long)
        shift = x.mean(0) if center else np.zeros(x.shape[1:])
        if scale is None:
            scale = float(np.sqrt(np.mean((x - shift) ** 2)))
            if not scale > 0 or not math.isfinite(scale):
                raise DataError(f"data file {self.path} has zero spread (all samples equal?); set `scale` yourself")
        self.event_shape = tuple(x.shape[1:])
        self.transform = Standardization(torch.as_tensor(shift, dtype=torch.float64), float(scale))
        self._x = torch.as_tensor((x - shift) / scale, dtype=torch.float64).reshape(x.shape[0], -1)
        self._cache: dict = {}

    def __repr__(self) -> str:
        return (f"FileDataset(path={str(self.path)!r}, num_samples={len(self)}, event_shape={self.event_shape}, "
                f"num_classes={self.num_classes})")

    def __len__(self) -> int:
        return self._x.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def data(self) -> torch.Tensor:
        """All N samples in training units, float64 ``[N, *D]`` (CPU)."""
        return self._x.reshape(-1, *self.event_shape)

    @property
    def labels(self) -> torch.Tensor | None:
        """Labels ``[N]`` in ``range(num_classes)``, or None."""
        return self._labels

    def to_user_units(self, y: torch.Tensor) -> torch.Tensor:
        """``transform.to_user_units``: samples in training units back to the file's units."""
        return self.transform.to_user_units(y)

    def _draw(self, n, generator):
        device = generator.device
        if device not in self._cache:  # one copy per device, so no host-to-device copy per step
            self._cache[device] = (self._x.to(device), None if self._labels is None else self._labels.to(device))
        x, labels = self._cache[device]
        idx = torch.randint(x.shape[0], (n,), generator=generator, device=device)
        return x[idx], (None if labels is None else labels[idx])


def _npz_names(path: Path) -> list[str]:
    """Array names of an ``.npz`` ([] if it cannot be opened; ``load_array`` then reports why)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return list(f.files)
    except Exception:
        return []
