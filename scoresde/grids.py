"""Noise grids as values: decreasing time grids ``ts`` for any SDE (``docs/conventions.md``, "Noise grids").

A grid is a strictly decreasing float64 CPU tensor t_0 > t_1 > ... > t_{N-1} of times in [t_min, T].
Fixed-step samplers evaluate the model at these times; the step out of the last one to clean data
(sigma = 0) is explicit (the sampler's final denoise), never an appended trailing zero as in
k-diffusion.  Grids are built in the SDE's own noise variable and mapped back to t through the SDE
(``SDE.t_from_sigma_ve``: closed form for VE, VP, sub-VP; bisection otherwise), so one grid
function serves every SDE.  With sigma_ve = sigma/alpha (EDM's and k-diffusion's sigma) and
lambda = log(alpha/sigma) = -log sigma_ve:

* ``uniform_t``: uniform in t from T to t_min (``SDE.timesteps``; the grid of every sampler before
  grids existed, kept as their default so their results are unchanged).
* ``karras`` (Karras et al. 2022, eq. 5): sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho)
  - sigma_max^(1/rho)))^rho in sigma_ve, rho = 7; sigma_min/sigma_max default to the SDE's own
  sigma_ve(t_min), sigma_ve(T).  k-diffusion's ``get_sigmas_karras`` without its appended 0.
* ``log_snr``: uniform in lambda between lambda(T) and lambda(t_min) (geometric in sigma_ve; for VE
  this is the uniform-t grid).  DPM-Solver's "logSNR" skip type.  On sub-VP, whose sigma_ve(t_min) is
  ~1e-5, it spends many steps at negligible noise: prefer ``karras`` there.
* ``ddpm_spacing`` (diffusers' ``timestep_spacing``) on a ``DiscreteVPSDE`` of N training steps, n
  inference steps, 0-based index j, knot t = (j + 1)/N:
  "leading" j = (arange(n) (N // n))[::-1] + steps_offset; "trailing" j = round(arange(N, 0, -N/n)) - 1;
  "linspace" j = round(linspace(0, N - 1, n))[::-1].  On these knots DDIM/DDPM visit exactly
  diffusers' timesteps.

* ``FittedGrid``: a grid fitted to one (score, SDE, sampler, num_steps) by ``scoresde.samplers.fitting``
  (LD3-style learned steps or a GITS-style dynamic programme), stored as its times; saved to and
  loaded from a small JSON file (``FittedGrid.save`` / ``FittedGrid.load``).

Grid objects (``UniformT``, ``Karras``, ``LogSNR``, ``DDPMSpacing``, ``FittedGrid``) are frozen dataclasses
called as ``grid(sde, num_steps) -> ts``; ``resolve_grid`` turns a config name (or the path of a fitted
grid's ``.json`` file) into one; ``check_ts`` validates an explicit grid once, at the public boundary.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import torch

from ._checks import check_in, check_int, check_positive
from ._io import atomic_write
from .sdes import SDE

__all__ = [
    "uniform_t", "karras", "log_snr", "ddpm_spacing",
    "Grid", "UniformT", "Karras", "LogSNR", "DDPMSpacing", "FittedGrid",
    "GRID_NAMES", "resolve_grid", "check_ts",
]

F64 = torch.float64
SPACINGS = ("leading", "trailing", "linspace")


def _scalar(sde: SDE, fn, t: float) -> float:
    return float(fn(torch.tensor([t], dtype=F64)))


def _from_sigma_ve(sde: SDE, sigmas: torch.Tensor) -> torch.Tensor:
    """Times of the noise levels ``sigmas`` (decreasing), kept inside [t_min, T] against round-off."""
    ts = sde.t_from_sigma_ve(sigmas.to(F64)).to(F64).clamp(sde.t_min, sde.T)
    return ts


def _sigma_range(sde: SDE, sigma_min: float | None, sigma_max: float | None) -> tuple[float, float, bool, bool]:
    lo, hi = _scalar(sde, sde.sigma_ve, sde.t_min), _scalar(sde, sde.sigma_ve, sde.T)
    smin = lo if sigma_min is None else check_positive("sigma_min", sigma_min)
    smax = hi if sigma_max is None else check_positive("sigma_max", sigma_max)
    tol = 1e-9
    if smin < lo * (1 - tol) or smax > hi * (1 + tol) or not smin < smax:
        raise ValueError(
            f"`sigma_min`, `sigma_max` must satisfy sigma_ve(t_min) = {lo:.6g} <= sigma_min < sigma_max <= "
            f"sigma_ve(T) = {hi:.6g} for this SDE, got sigma_min={smin:.6g}, sigma_max={smax:.6g}"
        )
    return smin, smax, sigma_min is None, sigma_max is None


def uniform_t(sde: SDE, num_steps: int) -> torch.Tensor:
    """``num_steps`` times uniform in t from T to t_min: ``sde.timesteps(num_steps)`` (float64)."""
    check_int("num_steps", num_steps)
    return sde.timesteps(num_steps).to(F64).cpu()


def karras(
    sde: SDE, num_steps: int, rho: float = 7.0, sigma_min: float | None = None, sigma_max: float | None = None
) -> torch.Tensor:
    """EDM's grid (Karras et al. 2022, eq. 5) in sigma_ve = sigma/alpha, mapped back to t.

    sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, i = 0..N-1.
    ``sigma_min``/``sigma_max`` (in sigma_ve) default to sigma_ve(t_min), sigma_ve(T); then the grid
    starts exactly at T and ends exactly at t_min.
    """
    check_int("num_steps", num_steps)
    check_positive("rho", rho)
    smin, smax, own_min, own_max = _sigma_range(sde, sigma_min, sigma_max)
    if num_steps == 1:
        return _from_sigma_ve(sde, torch.tensor([smax], dtype=F64))
    i = torch.arange(num_steps, dtype=F64)
    inv = 1.0 / rho
    sigmas = (smax**inv + i / (num_steps - 1) * (smin**inv - smax**inv)) ** rho
    ts = _from_sigma_ve(sde, sigmas)
    if own_max:
        ts[0] = sde.T
    if own_min:
        ts[-1] = sde.t_min
    return ts


def log_snr(sde: SDE, num_steps: int) -> torch.Tensor:
    """Uniform in lambda = log(alpha/sigma) from lambda(T) to lambda(t_min), mapped back to t."""
    check_int("num_steps", num_steps)
    lam_T = -math.log(_scalar(sde, sde.sigma_ve, sde.T))
    lam_min = -math.log(_scalar(sde, sde.sigma_ve, sde.t_min))
    if num_steps == 1:
        return torch.tensor([sde.T], dtype=F64)
    lam = torch.linspace(lam_T, lam_min, num_steps, dtype=F64)
    ts = _from_sigma_ve(sde, torch.exp(-lam))
    ts[0], ts[-1] = sde.T, sde.t_min
    return ts


def ddpm_spacing(sde: SDE, num_steps: int, spacing: str = "leading", steps_offset: int = 0) -> torch.Tensor:
    """diffusers' ``timestep_spacing`` on a ``DiscreteVPSDE`` of N steps: knots t = (j + 1)/N (module docstring).

    Requires an SDE with integer ``num_steps`` knots (``DiscreteVPSDE``, e.g. ``VPSDE().discrete(1000)``);
    ``num_steps`` (inference steps) <= N.  ``steps_offset`` is used by "leading" only, as in diffusers.
    """
    check_in("spacing", spacing, SPACINGS)
    check_int("steps_offset", steps_offset, minimum=0)
    n_train = getattr(sde, "num_steps", None)
    if not isinstance(n_train, int) or not hasattr(sde, "timestep_index"):
        raise ValueError(
            f"grid `{spacing}` (diffusers' DDPM spacing) needs a discrete chain such as VPSDE().discrete(1000), "
            f"got {type(sde).__name__}; use 'uniform', 'karras' or 'log_snr' for continuous SDEs"
        )
    check_int("num_steps", num_steps, maximum=n_train)
    n = num_steps
    if spacing == "leading":
        j = (np.arange(n) * (n_train // n))[::-1] + steps_offset
    elif spacing == "trailing":
        j = np.round(np.arange(n_train, 0, -n_train / n)).astype(np.int64) - 1
    else:
        j = np.round(np.linspace(0, n_train - 1, n))[::-1].astype(np.int64)
    if j.max() > n_train - 1:
        raise ValueError(
            f"`steps_offset` = {steps_offset} puts the first timestep at {int(j.max())} > N - 1 = {n_train - 1}"
        )
    return torch.from_numpy((j.astype(np.float64) + 1) / n_train).to(F64)


# -- grid objects (config-selectable) ----------------------------------------------------------------

@dataclass(frozen=True)
class UniformT:
    """Uniform in t (``uniform_t``)."""

    def __call__(self, sde: SDE, num_steps: int) -> torch.Tensor:
        return uniform_t(sde, num_steps)


@dataclass(frozen=True)
class Karras:
    """EDM/Karras rho-spacing in sigma_ve (``karras``)."""

    rho: float = 7.0
    sigma_min: float | None = None
    sigma_max: float | None = None

    def __post_init__(self):
        check_positive("rho", self.rho)
        for name in ("sigma_min", "sigma_max"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))

    def __call__(self, sde: SDE, num_steps: int) -> torch.Tensor:
        return karras(sde, num_steps, self.rho, self.sigma_min, self.sigma_max)


@dataclass(frozen=True)
class LogSNR:
    """Uniform in log-SNR (``log_snr``)."""

    def __call__(self, sde: SDE, num_steps: int) -> torch.Tensor:
        return log_snr(sde, num_steps)


@dataclass(frozen=True)
class DDPMSpacing:
    """diffusers' DDPM timestep spacing on a discrete chain (``ddpm_spacing``)."""

    spacing: str = "leading"
    steps_offset: int = 0

    def __post_init__(self):
        check_in("spacing", self.spacing, SPACINGS)
        check_int("steps_offset", self.steps_offset, minimum=0)

    def __call__(self, sde: SDE, num_steps: int) -> torch.Tensor:
        return ddpm_spacing(sde, num_steps, self.spacing, self.steps_offset)


FITTED_FORMAT = "scoresde.FittedGrid"


@dataclass(frozen=True)
class FittedGrid:
    """A grid fitted to one (score, SDE, sampler, num_steps): its times, and where they came from.

    Built by ``scoresde.samplers.fitting`` (``fit_grid``: LD3-style learned steps; ``dp_grid``: a
    GITS-style dynamic programme); a value like any other grid: ``Sampler(grid=g)``,
    ``run(..., ts=g.ts_tensor())``, or ``sampler.grid=<file>.json`` on the command line.

    Fields: ``ts`` the strictly decreasing times (t_0 = T); ``sde`` the ``repr`` of the SDE they
    were fitted for (calling the grid with another SDE is an error: the same times mean other noise
    levels there); ``sampler`` the ``repr`` of the sampler it was fitted for (informative);
    ``method`` "ld3", "dp", "adasde" or the name of the standard grid it fell back to; ``info`` the
    fit's record (validation errors, CPU time, seed...; not compared, not hashed).

    A stochastic sampler's fit (``samplers.fit_stochastic``) also carries its per-step noise:
    ``coefficient`` the name of the sampler field ("s_churn" of ``EDMHeun``, "eta" of
    ``DPMSolverPP``) and ``coefficients`` its per-step values; ``configure(sampler)`` gives the
    sampler with both the grid and the coefficients (``sampler.grid=<file>.json`` on the command
    line does that).  Empty for the deterministic fits.
    """

    ts: tuple[float, ...]
    sde: str
    sampler: str = ""
    method: str = "ld3"
    info: dict = field(default_factory=dict, compare=False, repr=False)
    coefficient: str = ""
    coefficients: tuple[float, ...] = ()

    def __post_init__(self):
        if not isinstance(self.sde, str) or not self.sde:
            raise TypeError(f"`sde` must be the repr of the SDE the grid was fitted for, got {self.sde!r}")
        t = torch.as_tensor(self.ts, dtype=F64)
        if t.ndim != 1 or t.numel() < 2 or not bool(torch.isfinite(t).all()) or not bool((t[1:] < t[:-1]).all()):
            raise ValueError(f"`ts` must be a strictly decreasing finite sequence of >= 2 times, got {list(self.ts)}")
        object.__setattr__(self, "ts", tuple(float(v) for v in self.ts))
        if not isinstance(self.coefficient, str):
            raise TypeError(f"`coefficient` must be the name of a sampler field (or ''), got {self.coefficient!r}")
        c = tuple(float(v) for v in self.coefficients)
        if bool(c) != bool(self.coefficient) or not all(math.isfinite(v) and v >= 0 for v in c):
            raise ValueError(f"`coefficients` must be finite numbers >= 0, given with their field name `coefficient`, "
                             f"got coefficient={self.coefficient!r}, coefficients={list(self.coefficients)}")
        object.__setattr__(self, "coefficients", c)

    @property
    def num_steps(self) -> int:
        return len(self.ts)

    def ts_tensor(self) -> torch.Tensor:
        """The times as a float64 CPU tensor ``[num_steps]``."""
        return torch.tensor(self.ts, dtype=F64)

    def __call__(self, sde: SDE, num_steps: int) -> torch.Tensor:
        check_int("num_steps", num_steps)
        if repr(sde) != self.sde:
            raise ValueError(f"this fitted grid was fitted for sde {self.sde}, not {sde!r}; refit it for this SDE")
        if num_steps != self.num_steps:
            raise ValueError(
                f"this fitted grid has {self.num_steps} times, but `num_steps` = {num_steps}: set num_steps="
                f"{self.num_steps} or refit the grid for {num_steps} steps"
            )
        return check_ts(self.ts_tensor(), sde, "fitted grid")

    def configure(self, sampler):
        """``sampler`` (a frozen dataclass) with this grid and, for a stochastic fit, its per-step coefficients."""
        extra = {self.coefficient: self.coefficients} if self.coefficient else {}
        if extra and not hasattr(sampler, self.coefficient):
            raise ValueError(f"this fitted grid carries per-step `{self.coefficient}` for {self.sampler}; "
                             f"{type(sampler).__name__} has no such field")
        return dataclasses.replace(sampler, grid=self, **extra)

    def to_dict(self) -> dict:
        d = {"format": FITTED_FORMAT, "version": 1, "ts": list(self.ts), "sde": self.sde,
             "sampler": self.sampler, "method": self.method, "info": self.info}
        if self.coefficient:  # a stochastic fit (files of deterministic fits are unchanged)
            d.update(version=2, coefficient=self.coefficient, coefficients=list(self.coefficients))
        return d

    def save(self, path: str | os.PathLike) -> Path:
        """Write the grid as JSON (atomically); floats are written exactly (``repr`` round trip)."""
        text = json.dumps(self.to_dict(), indent=1, sort_keys=True, allow_nan=False) + "\n"
        return atomic_write(path, text.encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FittedGrid":
        """Read a grid written by ``save``; a clear error for a missing or foreign file."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"fitted grid file {path} does not exist (write one with scoresde-fit-grid)")
        try:
            d = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not a fitted grid file (not JSON: {e})") from e
        if not isinstance(d, dict) or d.get("format") != FITTED_FORMAT:
            raise ValueError(f"{path} is not a fitted grid file (no \"format\": \"{FITTED_FORMAT}\")")
        return cls(tuple(d["ts"]), d["sde"], d.get("sampler", ""), d.get("method", ""), d.get("info", {}),
                   d.get("coefficient", ""), tuple(d.get("coefficients", ())))


Grid = Union[UniformT, Karras, LogSNR, DDPMSpacing, FittedGrid]

GRID_NAMES = {
    "uniform": UniformT(),
    "karras": Karras(),
    "log_snr": LogSNR(),
    "leading": DDPMSpacing("leading"),
    "trailing": DDPMSpacing("trailing"),
    "linspace": DDPMSpacing("linspace"),
}


def resolve_grid(grid) -> "Grid":
    """A grid name (one of ``GRID_NAMES``), the path of a fitted grid's ``.json`` file
    (``FittedGrid.load``), or a grid object (any callable ``grid(sde, num_steps) -> ts``)."""
    if isinstance(grid, os.PathLike) or isinstance(grid, str) and grid.endswith(".json"):
        return FittedGrid.load(grid)
    if isinstance(grid, str):
        if grid not in GRID_NAMES:
            raise ValueError(f"`grid` must be one of {list(GRID_NAMES)} or the path of a fitted grid (.json), "
                             f"got {grid!r}")
        return GRID_NAMES[grid]
    if callable(grid):
        return grid
    raise TypeError(f"`grid` must be one of {list(GRID_NAMES)} or a grid object from scoresde.grids, got {grid!r}")


def check_ts(ts, sde: SDE, name: str = "ts") -> torch.Tensor:
    """Validate an explicit grid once: 1-D, length >= 2, finite, strictly decreasing, inside [t_min, T].

    Returns it as a float64 CPU tensor; raises ``ValueError`` naming ``ts``.
    """
    try:
        t = torch.as_tensor(ts.detach() if torch.is_tensor(ts) else ts, dtype=F64).cpu()
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"`{name}` must be a 1-D tensor (or sequence) of times, got {type(ts).__name__}") from e
    if t.ndim != 1 or t.numel() < 2:
        raise ValueError(f"`{name}` must be 1-D with length >= 2, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"`{name}` must be finite, got {t.tolist()}")
    if not bool((t[1:] < t[:-1]).all()):
        k = int((t[1:] >= t[:-1]).nonzero()[0])
        raise ValueError(
            f"`{name}` must be strictly decreasing (from T towards t_min), but ts[{k}] = {float(t[k]):.6g} "
            f"<= ts[{k + 1}] = {float(t[k + 1]):.6g}"
        )
    lo, hi = float(t[-1]), float(t[0])
    if lo < sde.t_min - 1e-12 or hi > sde.T + 1e-12:
        raise ValueError(
            f"`{name}` must lie in [t_min, T] = [{sde.t_min:g}, {sde.T:g}], got values in [{lo:g}, {hi:g}]"
        )
    return t.clamp(sde.t_min, sde.T).clone()
