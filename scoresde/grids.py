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
  - sigma_max^(1/rho)))^rho in sigma_ve, rho = 7.  k-diffusion's ``get_sigmas_karras`` without its
  appended 0.
* ``log_snr``: uniform in lambda between lambda(sigma_max) and lambda(sigma_min) (geometric in
  sigma_ve; for VE with the SDE's own ends this is the uniform-t grid).  DPM-Solver's "logSNR" skip type.

Both run from sigma_max (default: the SDE's own sigma_ve(T)) down to sigma_min, whose default is the
**low-NFE end** ``default_sigma_min(sde, num_steps)`` (issue 17; ``docs/conventions.md``, "Low-NFE grid
end"): on the default VP 0.3 up to 10 steps, then log-linear in num_steps (0.1 at 15 steps, 0.033 at
20), never below the SDE's own sigma_ve(t_min), which long grids end at as before (VP: from 36 steps);
step counts are scaled by the SDE's log-noise range (VESDE(): 0.3 up to 6 steps, 0.086 at 10).  The
sampler's final denoise (Tweedie) takes the last step to sigma = 0 from there.  ``sigma_min="sde"`` (or
the float sigma_ve(t_min) itself) ends at the SDE's own t_min: the grids of scoresde before the rule,
bit for bit (grid names ``karras_sde``, ``log_snr_sde``).  On sub-VP, whose sigma_ve(t_min) is ~1e-6,
long log-SNR grids spend many steps at negligible noise: prefer ``karras`` there.
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
from .sdes import SDE, VPSDE

__all__ = [
    "uniform_t", "karras", "log_snr", "ddpm_spacing", "default_sigma_min",
    "Grid", "UniformT", "Karras", "LogSNR", "DDPMSpacing", "FittedGrid",
    "GRID_NAMES", "resolve_grid", "check_ts",
]

F64 = torch.float64
_VP_REF = VPSDE()  # the noise range the low-NFE end's step counts refer to (default_sigma_min)
SPACINGS = ("leading", "trailing", "linspace")


def _scalar(sde: SDE, fn, t: float) -> float:
    return float(fn(torch.tensor([t], dtype=F64)))


def _from_sigma_ve(sde: SDE, sigmas: torch.Tensor) -> torch.Tensor:
    """Times of the noise levels ``sigmas`` (decreasing), kept inside [t_min, T] against round-off."""
    ts = sde.t_from_sigma_ve(sigmas.to(F64)).to(F64).clamp(sde.t_min, sde.T)
    return ts


SDE_END = "sde"  # sigma_min="sde": the SDE's own sigma_ve(t_min) (the grids before the low-NFE end)
# The low-NFE end (docs/conventions.md, "Low-NFE grid end"): sigma~ = END_FLAT up to END_KNEE effective steps,
# then divided by END_DECAY every END_SPAN effective steps (log-linear), never below the SDE's own end.
END_FLAT, END_KNEE, END_DECAY, END_SPAN = 0.3, 10, 3.0, 5


def _log_span(sde: SDE) -> float:
    """log(sigma~(T) / sigma~(t_min)): the noise range a grid of the SDE's own ends covers."""
    return math.log(_scalar(sde, sde.sigma_ve, sde.T) / _scalar(sde, sde.sigma_ve, sde.t_min))


def default_sigma_min(sde: SDE, num_steps: int, sigma_max: float | None = None) -> float:
    """The default end sigma~_min of the Karras and log-SNR grids of ``num_steps`` = N times (issue 17).

    With N_eff = N * L_VP / L the steps per unit of the SDE's own log-noise range L = log(sigma~(T) /
    sigma~(t_min)), relative to the default ``VPSDE()``'s L_VP = 11.93 (so N_eff = N there; VESDE() has
    L = 7.6, N_eff = 1.57 N; sub-VP L = 18.8; ``VPSDE().discrete(1000)`` 9.7):

        s = 0.3 for N_eff <= 10,  s = 0.3 * 3^(-(N_eff - 10)/5) beyond

    (default VP: 0.19 at 12 steps, 0.1 at 15, 0.033 at 20, 0.011 at 25, 0.0037 at 30), returned as
    max(s, sigma~(t_min)): long grids end at the SDE's own t_min, as before (VP: from 36 steps).
    Measured on exact scores, VP and VE, 5-50 NFE (``benchmarks/results/sigma_min_low_nfe*.md``), and on
    trained models (``..._trained.md``), where a slower decay (0.1 at 20 steps, better still on exact
    scores) made DPM-Solver++ and UniPC 3-16 % worse in W2 at 20 steps; with this one they are 0-9 %
    worse there, though 1.5-3x closer to the model's own converged ODE (``docs/conventions.md``, "Low-NFE
    grid end").  The samplers work in sigma~ (EDM's variables), where VP and VE share one
    probability-flow ODE: what sets the best end is how densely the N steps cover the noise range,
    hence N_eff.  Where s is not below ``sigma_max`` (default sigma~(T): an SDE that never
    reaches that noise level) the end is sigma~(t_min).  Continuous and non-increasing in N.

    Keyed on the number of grid times N, not on NFE: NFE = N for DPM-Solver++ and UniPC, 2N - 1 for
    EDM Heun (two evaluations per interval).  Measured, EDM Heun prefers the larger end of its N, not
    of its NFE (VP, NFE 19, N = 10: 0.3 beats 0.1), which keying on N gives.
    """
    num_steps = check_int("num_steps", num_steps)
    lo = _scalar(sde, sde.sigma_ve, sde.t_min)
    hi = _scalar(sde, sde.sigma_ve, sde.T) if sigma_max is None else sigma_max
    n_eff = num_steps * _log_span(_VP_REF) / _log_span(sde)
    s = END_FLAT * END_DECAY ** (-max(n_eff - END_KNEE, 0.0) / END_SPAN)
    return lo if s <= lo or s >= hi else s


def _sigma_range(sde: SDE, num_steps: int, sigma_min, sigma_max) -> tuple[float, float, bool, bool]:
    """(sigma_min, sigma_max, whether the grid ends exactly at t_min, whether it starts exactly at T)."""
    lo, hi = _scalar(sde, sde.sigma_ve, sde.t_min), _scalar(sde, sde.sigma_ve, sde.T)
    _check_end("sigma_min", sigma_min)
    _check_end("sigma_max", sigma_max, sde_allowed=False)
    smax = hi if sigma_max is None else float(sigma_max)
    if sigma_min is None:
        smin = default_sigma_min(sde, num_steps, smax)
    else:
        smin = lo if sigma_min == SDE_END else float(sigma_min)
    tol = 1e-9
    if smin < lo * (1 - tol) or smax > hi * (1 + tol) or not smin < smax:
        raise ValueError(
            f"`sigma_min`, `sigma_max` must satisfy sigma_ve(t_min) = {lo:.6g} <= sigma_min < sigma_max <= "
            f"sigma_ve(T) = {hi:.6g} for this SDE, got sigma_min={smin:.6g}, sigma_max={smax:.6g}"
        )
    return smin, smax, smin == lo, smax == hi


def _check_end(name: str, value, sde_allowed: bool = True) -> None:
    """``sigma_min`` / ``sigma_max`` of a grid: None (the default), a number > 0, or (sigma_min) "sde"."""
    if value is None or (sde_allowed and isinstance(value, str) and value == SDE_END):
        return
    if isinstance(value, str) or isinstance(value, bool):
        allowed = ('None (the low-NFE default end), "sde" (the SDE\'s own sigma_ve(t_min)) or' if sde_allowed
                   else "None or")
        raise TypeError(f"`{name}` must be {allowed} a finite number > 0, got {value!r}")
    check_positive(name, value)


def _check_ends(sigma_min, sigma_max) -> None:
    """Both ends of a grid object, checked once where they are given (the SDE's range is checked at the call)."""
    _check_end("sigma_min", sigma_min)
    _check_end("sigma_max", sigma_max, sde_allowed=False)
    if isinstance(sigma_min, (int, float)) and isinstance(sigma_max, (int, float)) and sigma_min >= sigma_max:
        raise ValueError(f"`sigma_min` must be < `sigma_max`, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}")


def uniform_t(sde: SDE, num_steps: int) -> torch.Tensor:
    """``num_steps`` times uniform in t from T to t_min: ``sde.timesteps(num_steps)`` (float64)."""
    check_int("num_steps", num_steps)
    return sde.timesteps(num_steps).to(F64).cpu()


def karras(
    sde: SDE, num_steps: int, rho: float = 7.0, sigma_min: float | str | None = None, sigma_max: float | None = None
) -> torch.Tensor:
    """EDM's grid (Karras et al. 2022, eq. 5) in sigma_ve = sigma/alpha, mapped back to t.

    sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, i = 0..N-1.
    ``sigma_max`` (in sigma_ve) defaults to sigma_ve(T), and the grid then starts exactly at T;
    ``sigma_min`` defaults to the low-NFE end ``default_sigma_min(sde, num_steps)``; "sde" (or the
    value sigma_ve(t_min)) ends exactly at t_min.
    """
    check_int("num_steps", num_steps)
    check_positive("rho", rho)
    smin, smax, own_min, own_max = _sigma_range(sde, num_steps, sigma_min, sigma_max)
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


def log_snr(
    sde: SDE, num_steps: int, sigma_min: float | str | None = None, sigma_max: float | None = None
) -> torch.Tensor:
    """Uniform in lambda = log(alpha/sigma) = -log sigma_ve from -log sigma_max to -log sigma_min, mapped back to t.

    ``sigma_min`` / ``sigma_max`` as in ``karras`` (defaults: the low-NFE end, sigma_ve(T)).
    """
    check_int("num_steps", num_steps)
    smin, smax, own_min, own_max = _sigma_range(sde, num_steps, sigma_min, sigma_max)
    if num_steps == 1:
        return torch.tensor([sde.T], dtype=F64) if own_max else _from_sigma_ve(sde, torch.tensor([smax], dtype=F64))
    lam = torch.linspace(-math.log(smax), -math.log(smin), num_steps, dtype=F64)
    ts = _from_sigma_ve(sde, torch.exp(-lam))
    if own_max:
        ts[0] = sde.T
    if own_min:
        ts[-1] = sde.t_min
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
    sigma_min: float | str | None = None
    sigma_max: float | None = None

    def __post_init__(self):
        check_positive("rho", self.rho)
        _check_ends(self.sigma_min, self.sigma_max)

    def __call__(self, sde: SDE, num_steps: int) -> torch.Tensor:
        return karras(sde, num_steps, self.rho, self.sigma_min, self.sigma_max)


@dataclass(frozen=True)
class LogSNR:
    """Uniform in log-SNR (``log_snr``); ``sigma_min`` / ``sigma_max`` as in ``Karras``."""

    sigma_min: float | str | None = None
    sigma_max: float | None = None

    def __post_init__(self):
        _check_ends(self.sigma_min, self.sigma_max)

    def __call__(self, sde: SDE, num_steps: int) -> torch.Tensor:
        return log_snr(sde, num_steps, self.sigma_min, self.sigma_max)


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
    line does that), and a sampler given the grid with that field left at 0 takes them too
    (``EDMHeun(grid=FittedGrid.load(f))``; ``FixedGridSampler.check_grid_fields``).  Empty for the
    deterministic fits.
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
    "karras_sde": Karras(sigma_min=SDE_END),
    "log_snr_sde": LogSNR(sigma_min=SDE_END),
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
