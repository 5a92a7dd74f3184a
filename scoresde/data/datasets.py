"""Toy 2-D training data sets: ``sample(n, generator) -> float32 [n, *event_shape]``.

Two families:

* the exact Gaussian mixtures of ``scoresde.data.toy`` (``MixtureDataset`` wraps, never copies them):
  exact log-density and exact perturbed score, labels = mixture component;
* the classic 2-D shapes of FFJORD's ``toy_data.py`` (Grathwohl et al. 2019), re-written with an
  explicit ``torch.Generator`` and documented parameters: swiss roll, two moons, concentric
  circles, pinwheel, two spirals, checkerboard.

Every data set is a small frozen dataclass (so a config node can build it by ``_target_``).
Parameters are checked once, at construction.  Sampling draws in float64 on ``generator.device``
and casts to ``dtype`` (default float32); labels, where natural, are int64 ``[n]`` from
``sample_with_labels`` and index ``range(num_classes)``, drawn i.i.d. uniformly (FFJORD splits
``n`` evenly instead; i.i.d. labels make a batch's law independent of the batch size).
``log_prob`` exists where a closed form does (mixtures, checkerboard); elsewhere it raises
``NotImplementedError``.

``check_data(x)`` is the guard the trainer runs on training data: empty or non-finite data stop
with a ``DataError`` that says what is wrong.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Callable

import torch

from . import toy
from .._checks import check_generator, check_int, check_nonnegative, check_positive

__all__ = [
    "DataError",
    "check_data",
    "ToyDataset",
    "StoredSamples",
    "MixtureDataset",
    "SwissRoll",
    "TwoMoons",
    "Circles",
    "Pinwheel",
    "TwoSpirals",
    "Checkerboard",
    "DATASETS",
    "make_dataset",
]


class DataError(ValueError):
    """Training data that cannot be used: empty, not floating point, or with NaN / inf entries."""


def check_data(x: torch.Tensor, name: str = "data") -> torch.Tensor:
    """Return ``x`` if it is a non-empty, floating-point, finite batch ``[N, *D]``; raise ``DataError`` otherwise.

    One host synchronisation (the finiteness reduction); the trainer calls it on the whole data
    tensor, or on the first batch drawn from a data set, never per step.
    """
    if not torch.is_tensor(x):
        raise DataError(f"`{name}` must be a tensor [N, *D], got {type(x).__name__}")
    if x.ndim < 2:
        raise DataError(f"`{name}` must be batch-first [N, *D] with at least one data dim, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise DataError(f"`{name}` is empty (shape {tuple(x.shape)}); need at least one sample with >= 1 entry")
    if not x.is_floating_point():
        raise DataError(f"`{name}` must be floating point, got dtype {x.dtype}")
    bad = ~torch.isfinite(x.flatten(1)).all(1)
    if bool(bad.any()):
        idx = bad.nonzero().flatten()
        raise DataError(
            f"`{name}` contains non-finite values (NaN or inf) in {idx.numel()} of {x.shape[0]} samples, "
            f"first at index {int(idx[0])}; clean or filter the data before training"
        )
    return x


class ToyDataset(abc.ABC):
    """Base class: a distribution one can draw ``[n, *event_shape]`` samples from.

    Subclasses implement ``_draw(n, generator) -> (x float64 [n, d], labels int64 [n] | None)``.
    """

    event_shape: tuple[int, ...] = (2,)

    @property
    def num_classes(self) -> int:
        """Number of labels of ``sample_with_labels`` (0: the data set has no natural labels)."""
        return 0

    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    @abc.abstractmethod
    def _draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``n`` float64 samples ``[n, dim]`` on ``generator.device`` and their labels (or None)."""

    def sample_with_labels(
        self, n: int, generator: torch.Generator | None = None, *, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples ``[n, *event_shape]`` and their labels ``[n]`` (int64, in ``range(num_classes)``).

        Samples are drawn on ``generator.device`` (CPU for ``generator=None``, which seeds a fresh
        generator from OS entropy: pass a seeded one for reproducible data).
        """
        if self.num_classes == 0:
            raise NotImplementedError(f"{type(self).__name__} has no natural labels; use sample()")
        x, labels = self._sample(n, generator, dtype)
        return x, labels

    def sample(
        self, n: int, generator: torch.Generator | None = None, *, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """``n`` samples ``[n, *event_shape]`` in ``dtype``, drawn on ``generator.device``."""
        return self._sample(n, generator, dtype)[0]

    def _sample(self, n, generator, dtype):
        check_int("n", n)
        generator = check_generator(generator)
        x, labels = self._draw(n, generator)
        return x.to(dtype).reshape(n, *self.event_shape), labels

    @property
    def has_log_prob(self) -> bool:
        """Whether ``log_prob`` has a closed form for this data set."""
        return False

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-density ``[B]`` where a closed form exists."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form density")


def _uniform(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g, device=g.device, dtype=torch.float64)


def _normal(shape, g: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=g, device=g.device, dtype=torch.float64)


def _labels(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(k, (n,), generator=g, device=g.device)


class StoredSamples:
    """Mixin for data sets that hold their N samples: ``labels``, ``to_user_units`` and drawing rows.

    The holder sets ``_labels`` (int64 ``[N]`` or None) and ``transform`` (``to_user_units(y)``);
    ``_resample(rows, n, generator)`` draws ``n`` of ``rows [N, ...]`` with replacement (one
    ``randint`` from ``generator``), keeping one copy of rows and labels per device so that training
    makes no host-to-device copy per step.  Used by ``files.FileDataset`` and ``images.ImageDataset``.
    """

    _labels: torch.Tensor | None = None

    @property
    def labels(self) -> torch.Tensor | None:
        """Labels ``[N]`` in ``range(num_classes)``, or None."""
        return self._labels

    def to_user_units(self, y: torch.Tensor) -> torch.Tensor:
        """``transform.to_user_units``: samples in training units back to the data's own units."""
        return self.transform.to_user_units(y)

    def _resample(self, rows: torch.Tensor, n: int, generator: torch.Generator):
        """``(rows[idx], labels[idx] | None)`` for ``idx`` ~ U{0..N-1}^n on ``generator.device``."""
        device = generator.device
        copies = self.__dict__.setdefault("_device_copies", {})
        if device not in copies:
            copies[device] = (rows.to(device), None if self._labels is None else self._labels.to(device))
        rows, labels = copies[device]
        idx = torch.randint(rows.shape[0], (n,), generator=generator, device=device)
        return rows[idx], (None if labels is None else labels[idx])


@dataclass(frozen=True)
class MixtureDataset(ToyDataset):
    """A ``scoresde.data.toy.GaussianMixture`` as training data; labels are mixture components.

    ``log_prob`` and ``score_fn(sde)`` (the exact perturbed score) delegate to the mixture.
    """

    mixture: toy.GaussianMixture
    _device_params: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.mixture, toy.GaussianMixture):
            raise TypeError(f"`mixture` must be a scoresde.data.toy.GaussianMixture, got {type(self.mixture).__name__}")

    @property
    def event_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return self.mixture.event_shape

    @property
    def num_classes(self) -> int:
        return self.mixture.num_components

    def _draw(self, n, generator):
        # The draws of ``GaussianMixture.sample_with_labels`` (same values, same generator use),
        # with the parameters cached per device: moving them at every call would be a host
        # synchronisation per training step on CUDA.
        device = generator.device
        if device not in self._device_params:
            m = self.mixture
            self._device_params[device] = tuple(p.to(device) for p in (m.weights, m.means, torch.linalg.cholesky(m.covs)))
        weights, means, chol = self._device_params[device]
        labels = torch.multinomial(weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.mixture.dim, generator=generator, device=device, dtype=torch.float64)
        return means[labels] + torch.einsum("nij,nj->ni", chol[labels], z), labels

    @property
    def has_log_prob(self) -> bool:
        return True

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixture.log_prob(x)

    def score_fn(self, sde):
        """Exact score of the perturbed data distribution under ``sde`` (see ``toy.MixtureScore``)."""
        return self.mixture.score_fn(sde)


@dataclass(frozen=True)
class SwissRoll(ToyDataset):
    """FFJORD's "swissroll": u ~ U(0, 1), t = 1.5 pi (1 + 2u), x = scale (t cos t, t sin t) + noise N(0, I).

    Defaults (scale 1/5, noise std 0.2 in output units) are FFJORD's ``make_swiss_roll(noise=1) / 5``.
    The noise-free radius is scale * t in [0.94, 2.83]; E|x|^2 = scale^2 E[t^2] + 2 noise^2 with
    E[t^2] = a^2 + ab + b^2/3, a = 1.5 pi, b = 3 pi.  No labels, no closed-form density.
    """

    scale: float = 0.2
    noise: float = 0.2

    def __post_init__(self):
        check_positive("scale", self.scale)
        check_nonnegative("noise", self.noise)

    def _draw(self, n, g):
        t = 1.5 * math.pi * (1 + 2 * _uniform(n, g))
        x = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) * self.scale
        return x + self.noise * _normal((n, 2), g), None


@dataclass(frozen=True)
class TwoMoons(ToyDataset):
    """sklearn's ``make_moons``, centred: theta ~ U(0, pi), label k ~ U{0, 1},
    moon 0 = (cos theta - 1/2, sin theta - 1/4), moon 1 = (1/2 - cos theta, 1/4 - sin theta),
    x = scale * moon + noise N(0, I).

    Mean 0; without noise Var(x_1) = 3/4 and Var(x_2) = 9/16 - 1/pi.  Defaults: scale 1, noise std
    0.1 (sklearn's / FFJORD's noise; FFJORD also doubles the scale).  Labels: moon index.
    """

    scale: float = 1.0
    noise: float = 0.1

    def __post_init__(self):
        check_positive("scale", self.scale)
        check_nonnegative("noise", self.noise)

    @property
    def num_classes(self) -> int:
        return 2

    def _draw(self, n, g):
        labels = _labels(n, 2, g)
        theta = math.pi * _uniform(n, g)
        sign = (1 - 2 * labels).to(torch.float64)  # +1 for moon 0, -1 for moon 1
        moon = torch.stack([torch.cos(theta) - 0.5, torch.sin(theta) - 0.25], 1) * sign[:, None]
        return self.scale * moon + self.noise * _normal((n, 2), g), labels


@dataclass(frozen=True)
class Circles(ToyDataset):
    """Concentric rings: ring k ~ U{0..K-1}, angle ~ U(0, 2 pi), x = radii[k] (cos, sin) + noise N(0, I).

    Defaults radii (1.5, 3) are FFJORD's ``make_circles(factor=0.5) * 3``; noise std 0.1 (FFJORD:
    0.24).  Mean 0, E[|x|^2 | ring k] = radii[k]^2 + 2 noise^2.  Labels: ring index.
    """

    radii: tuple[float, ...] = (1.5, 3.0)
    noise: float = 0.1

    def __post_init__(self):
        radii = tuple(self.radii) if not isinstance(self.radii, (int, float)) else (self.radii,)
        if len(radii) < 1:
            raise ValueError("`radii` must hold at least one radius, got ()")
        for r in radii:
            check_positive("radii[...]", r)
        object.__setattr__(self, "radii", tuple(float(r) for r in radii))
        check_nonnegative("noise", self.noise)

    @property
    def num_classes(self) -> int:
        return len(self.radii)

    def _draw(self, n, g):
        labels = _labels(n, len(self.radii), g)
        angle = 2 * math.pi * _uniform(n, g)
        r = torch.zeros(n, dtype=torch.float64, device=g.device)
        for k, radius in enumerate(self.radii):  # Python scalars: no host-to-device copy per call
            r = torch.where(labels == k, radius, r)
        x = r[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
        return x + self.noise * _normal((n, 2), g), labels


@dataclass(frozen=True)
class Pinwheel(ToyDataset):
    """FFJORD's "pinwheel": arm k ~ U{0..K-1}, f = (1 + radial_std e_1, tangential_std e_2), e ~ N(0, I),
    angle = 2 pi k / K + rate exp(f_1), x = scale R(angle)^T f.

    Defaults (5 arms, radial std 0.3, tangential std 0.1, rate 0.25, scale 2) are FFJORD's.
    |x| = scale |f|, so E|x|^2 = scale^2 (1 + radial_std^2 + tangential_std^2).  Labels: arm index.
    """

    num_arms: int = 5
    radial_std: float = 0.3
    tangential_std: float = 0.1
    rate: float = 0.25
    scale: float = 2.0

    def __post_init__(self):
        check_int("num_arms", self.num_arms)
        check_nonnegative("radial_std", self.radial_std)
        check_nonnegative("tangential_std", self.tangential_std)
        check_nonnegative("rate", self.rate)
        check_positive("scale", self.scale)

    @property
    def num_classes(self) -> int:
        return self.num_arms

    def _draw(self, n, g):
        labels = _labels(n, self.num_arms, g)
        e = _normal((n, 2), g)
        f = torch.stack([1 + self.radial_std * e[:, 0], self.tangential_std * e[:, 1]], 1)
        angle = 2 * math.pi * labels.to(torch.float64) / self.num_arms + self.rate * torch.exp(f[:, 0])
        c, s = torch.cos(angle), torch.sin(angle)
        # FFJORD: features @ [[c, -s], [s, c]] (row vector times rotation)
        x = torch.stack([f[:, 0] * c + f[:, 1] * s, -f[:, 0] * s + f[:, 1] * c], 1)
        return self.scale * x, labels


@dataclass(frozen=True)
class TwoSpirals(ToyDataset):
    """FFJORD's "2spirals": arm k ~ U{0, 1}, r = 3 pi sqrt(u), u ~ U(0, 1),
    arm 0 = (-r cos r, r sin r), arm 1 = -arm 0, x = scale * arm + noise N(0, I).

    Defaults scale 1/3, noise std 0.1 are FFJORD's (which also adds U(0, 0.5) jitter before
    scaling; omitted here so the noise is exactly Gaussian).  E|x|^2 = scale^2 9 pi^2 / 2 + 2 noise^2.
    Labels: spiral arm.
    """

    scale: float = 1.0 / 3.0
    noise: float = 0.1

    def __post_init__(self):
        check_positive("scale", self.scale)
        check_nonnegative("noise", self.noise)

    @property
    def num_classes(self) -> int:
        return 2

    def _draw(self, n, g):
        labels = _labels(n, 2, g)
        r = 3 * math.pi * torch.sqrt(_uniform(n, g))
        sign = (1 - 2 * labels).to(torch.float64)
        arm = torch.stack([-r * torch.cos(r), r * torch.sin(r)], 1) * sign[:, None]
        return self.scale * arm + self.noise * _normal((n, 2), g), labels


@dataclass(frozen=True)
class Checkerboard(ToyDataset):
    """FFJORD's "checkerboard": uniform on the 8 black squares of a 4 x 4 board covering [-scale, scale]^2.

    Square (i, j) (i, j = floor(x / (scale/2)) in {-2..1}) is black iff i + j is even, so the
    density is 1 / (2 scale^2) there and 0 elsewhere (``log_prob`` gives -inf off the board's
    black squares).  Default scale 4 (FFJORD's board of side 2 squares).  No noise, no labels.
    Marginals are U(-scale, scale): mean 0, E[x_i^2] = scale^2 / 3.
    """

    scale: float = 4.0

    def __post_init__(self):
        check_positive("scale", self.scale)

    def _draw(self, n, g):
        side = self.scale / 2
        x1 = (2 * _uniform(n, g) - 1) * self.scale
        i = torch.floor(x1 / side)
        j = 2 * torch.randint(2, (n,), generator=g, device=g.device).to(torch.float64) - 2 + torch.remainder(i, 2)
        x2 = (j + _uniform(n, g)) * side
        return torch.stack([x1, x2], 1), None

    @property
    def has_log_prob(self) -> bool:
        return True

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"`x` must have shape [B, 2], got {tuple(x.shape)}")
        cell = torch.floor(x / (self.scale / 2))
        inside = (x.abs() <= self.scale).all(1) & (torch.remainder(cell.sum(1), 2) == 0)
        inside_value = torch.full_like(x[:, 0], -math.log(2 * self.scale**2))
        return torch.where(inside, inside_value, torch.full_like(inside_value, -math.inf))


def _mixture(name: str, **kwargs) -> MixtureDataset:
    return MixtureDataset(toy.TARGETS[name](**kwargs))


DATASETS: "MappingProxyType[str, Callable[..., ToyDataset]]" = MappingProxyType(
    {
        **{name: partial(_mixture, name) for name in toy.TARGETS},
        "swiss_roll": SwissRoll,
        "two_moons": TwoMoons,
        "circles": Circles,
        "pinwheel": Pinwheel,
        "two_spirals": TwoSpirals,
        "checkerboard": Checkerboard,
    }
)
"""Read-only name -> factory map (keyword arguments go to the factory).  The mixtures keep their
``scoresde.data.toy.TARGETS`` names."""


def make_dataset(name: str, **kwargs) -> ToyDataset:
    """``DATASETS[name](**kwargs)`` with a clear error for an unknown name."""
    if name not in DATASETS:
        raise ValueError(f"`name` must be one of {sorted(DATASETS)}, got {name!r}")
    return DATASETS[name](**kwargs)
