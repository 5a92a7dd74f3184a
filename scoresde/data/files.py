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

**Validation split.**  ``validation=f`` (0 <= f < 1; ``conf/data/file.yaml``: 0.1) holds out
round(f N) samples, chosen by a permutation seeded from ``split_seed`` (the rest keep the file's
order; fewer than 10 held out or 10 left to train on: none held out, with a warning).  They are
never trained on: ``sample`` draws only the training part, the standardisation is
computed from it alone, and ``validation`` (a ``HeldOut``) gives the held-out points in training
units for the quality checks and the final evaluation (``scoresde.training.quality``).  ``f = 0``
(the default of the class) is the behaviour of a file without a split, bit for bit.

Every problem with the file raises ``DataError`` (or ``FileNotFoundError``) naming the file:
unreadable, empty, ragged rows, non-numeric or non-finite entries, a missing ``.npz`` array.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._checks import check_int, check_positive
from .datasets import DataError, StoredSamples, ToyDataset

__all__ = ["FileDataset", "HeldOut", "Standardization", "load_array"]

SUFFIXES = (".npy", ".npz", ".csv", ".txt")
log = logging.getLogger(__name__)


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


class FileDataset(StoredSamples, ToyDataset):
    """Samples drawn (with replacement, uniformly) from the N points of a file, standardised.

    Args:
        path: ``.npy``, ``.npz``, ``.csv`` or ``.txt`` file; see the module docstring.
        key: the data array's name in an ``.npz`` (optional if it holds one array, or two with ``labels``).
        labels: the labels array's name in the ``.npz``, or the path of a file of N labels.
        label_column: index of the label column of a 2-D array / text file (e.g. -1), or None.
        scale: the training-units scale; None (default): the data's root-mean-square deviation.
        center: subtract the per-coordinate mean (default True).
        validation: the fraction of samples held out (module docstring), in [0, 1); 0: none.
        split_seed: the seed of the held-out samples' permutation.

    ``sample(n, generator)`` returns standardised float32 ``[n, *D]``; ``transform`` maps back.
    """

    def __init__(self, path: str, key: str | None = None, labels: str | None = None,
                 label_column: int | None = None, scale: float | None = None, center: bool = True,
                 validation: float = 0.0, split_seed: int = 0):
        self.path = Path(path).expanduser()
        if isinstance(validation, bool) or not isinstance(validation, (int, float)) or not 0 <= validation < 1:
            raise ValueError(f"`validation` must be a fraction in [0, 1) (0: no held-out split), got {validation!r}")
        check_int("split_seed", split_seed, minimum=0, maximum=2**63 - 1)
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
        held = None
        if validation > 0:  # before the standardisation: computed from the training part alone
            x, held = self._split(x, validation, split_seed)
        shift = x.mean(0) if center else np.zeros(x.shape[1:])
        if scale is None:
            scale = float(np.sqrt(np.mean((x - shift) ** 2)))
            if not scale > 0 or not math.isfinite(scale):
                raise DataError(f"data file {self.path} has zero spread (all samples equal?); set `scale` yourself")
        self.event_shape = tuple(x.shape[1:])
        self.transform = Standardization(torch.as_tensor(shift, dtype=torch.float64), float(scale))
        self._x = torch.as_tensor((x - shift) / scale, dtype=torch.float64).reshape(x.shape[0], -1)
        self.validation: HeldOut | None = None  # the held-out samples, in training units
        if held is not None:
            self.validation = HeldOut(torch.as_tensor((held - shift) / scale, dtype=torch.float64), self.transform,
                                      name=f"{self.path.name} validation {validation:g} seed {split_seed}")

    def _split(self, x: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(training part, held-out part or None) of ``x`` (and of the labels); both keep the file's order."""
        n = x.shape[0]
        held = round(fraction * n)
        if held < 10 or n - held < 10:  # too small to split: train on everything, and say so
            log.warning("`validation`=%g of the %d samples of %s would hold out %d; a validation split needs at "
                        "least 10 held-out samples and 10 to train on: none held out", fraction, n, self.path, held)
            return x, None
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
        out = np.zeros(n, dtype=bool)
        out[perm[:held]] = True
        if self._labels is not None:
            self._labels = self._labels[torch.as_tensor(~out)]
        return x[~out], x[out]

    def __repr__(self) -> str:
        held = "" if self.validation is None else f", validation={len(self.validation)}"
        return (f"FileDataset(path={str(self.path)!r}, num_samples={len(self)}, event_shape={self.event_shape}, "
                f"num_classes={self.num_classes}{held})")

    def __len__(self) -> int:
        return self._x.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def data(self) -> torch.Tensor:
        """All N samples in training units, float64 ``[N, *D]`` (CPU)."""
        return self._x.reshape(-1, *self.event_shape)

    def _draw(self, n, generator):
        return self._resample(self._x, n, generator)


class HeldOut(ToyDataset):
    """Held-out samples ``points: [M, *D]`` (training units) as a target to evaluate against.

    ``bandwidth=None``: ``sample`` resamples the points (with replacement), without a density.
    ``bandwidth=h``: the Gaussian kernel density estimate of the points,
    p_h(y) = (1/M) sum_j N(y; y_j, h^2 I), with its exact ``log_prob`` and exact draws
    y_J + h z (J uniform, z ~ N(0, I); the smoothed bootstrap, Silverman 1986, 6.4.1), so that a
    calibrated evaluation's floors are those of a continuous law instead of M repeated points.
    ``to_user_units`` maps to the file's units like the training data's.
    """

    def __init__(self, points: torch.Tensor, transform: Standardization | None = None, bandwidth: float | None = None,
                 name: str = "held-out"):
        self.event_shape = tuple(points.shape[1:])
        self._x = points.to(torch.float64).reshape(points.shape[0], -1)
        self.transform, self.name = transform, name
        self.bandwidth = None if bandwidth is None else check_positive("bandwidth", bandwidth)
        self._digest = hashlib.sha1(self._x.numpy().tobytes()).hexdigest()[:12]

    def __len__(self) -> int:
        return self._x.shape[0]

    def __repr__(self) -> str:  # names the points by content: floor caches are keyed by it
        smooth = "" if self.bandwidth is None else f", bandwidth={self.bandwidth:.6g}"
        return f"HeldOut({self.name!r}, {len(self)} points, sha1 {self._digest}{smooth})"

    @property
    def data(self) -> torch.Tensor:
        """The held-out points, float64 ``[M, *D]`` (training units)."""
        return self._x.reshape(-1, *self.event_shape)

    def smoothed(self, bandwidth: float) -> "HeldOut":
        """The same points as a kernel density estimate of bandwidth ``bandwidth`` (class docstring)."""
        return HeldOut(self.data, self.transform, bandwidth, self.name)

    @property
    def has_log_prob(self) -> bool:
        return self.bandwidth is not None

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p_h(x) = logsumexp_j (-|x - y_j|^2 / 2h^2) - log M - (d/2) log(2 pi h^2), ``[B]`` float64."""
        if self.bandwidth is None:
            raise NotImplementedError("HeldOut without a bandwidth has no density; use smoothed(h)")
        h, (m, d) = self.bandwidth, self._x.shape
        x = x.to(torch.float64).reshape(x.shape[0], -1)
        ref = self._x.to(x.device)
        const = math.log(m) + 0.5 * d * math.log(2 * math.pi * h * h)
        out = [torch.logsumexp(torch.cdist(chunk, ref).pow_(2).div_(-2 * h * h), 1) - const
               for chunk in x.split(max(1, 2**22 // max(1, m)))]
        return torch.cat(out) if out else x.new_zeros(0)

    def to_user_units(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.transform is None else self.transform.to_user_units(y)

    def _draw(self, n, generator):
        x = self._x.to(generator.device)
        idx = torch.randint(x.shape[0], (n,), generator=generator, device=generator.device)
        y = x[idx]
        if self.bandwidth is not None:
            y = y + self.bandwidth * torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        return y, None


def _npz_names(path: Path) -> list[str]:
    """Array names of an ``.npz`` ([] if it cannot be opened; ``load_array`` then reports why)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return list(f.files)
    except Exception:
        return []
