"""ODE integrators shared by the probability-flow sampler and the likelihood (one formula, one place).

* ``rk_step(field, y, s, s_next, method)``: one explicit step of dy/ds = field(y, s) from s to
  s_next (either direction), y a tensor or a tuple of tensors (e.g. (x, delta log p)):
  "euler" (1 evaluation), "heun" (explicit trapezoid: Euler predictor, slope averaged with the one at
  (y + h k1, s_next); 2 evaluations; Karras et al. 2022, Alg. 1), "rk4" (classical Runge-Kutta, 4).
  Global orders 1, 2, 4.  The sampler integrates in EDM's variables (s = sigma/alpha, y = x/alpha,
  dy/ds = (y - D)/s), the likelihood in t.
* ``solve_adaptive(field, y0, s0, s1, method, rtol, atol)``: scipy's ``solve_ivp`` ("RK45" (default),
  "RK23", "DOP853", "Radau", "BDF", "LSODA") on the flattened tensors in float64; returns the state at
  s1 only (``t_eval=[s1]``: memory flat in NFE); raises after ``max_nfe`` evaluations.
* ``check_tolerances``: rtol, atol >= ``TOL_FLOOR`` (100 float64 eps, scipy's own floor for rtol)
  so that a tolerance cannot ask for unbounded work.
"""
from __future__ import annotations

from typing import Callable, Sequence, Union

import numpy as np
import torch

from ._checks import check_positive

__all__ = [
    "SCIPY_METHODS", "FIXED_METHODS", "STAGES", "TOL_FLOOR", "MAX_NFE",
    "rk_step", "solve_adaptive", "check_tolerances",
]

SCIPY_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")
FIXED_METHODS = ("euler", "heun", "rk4")
STAGES = {"euler": 1, "heun": 2, "rk4": 4}
TOL_FLOOR = 100 * float(np.finfo(np.float64).eps)
MAX_NFE = 1_000_000

State = Union[torch.Tensor, tuple]


def check_tolerances(rtol, atol) -> None:
    """``rtol`` and ``atol`` must be finite numbers >= ``TOL_FLOOR`` (2.2e-14)."""
    for name, value in (("rtol", rtol), ("atol", atol)):
        check_positive(name, value)
        if value < TOL_FLOOR:
            raise ValueError(
                f"`{name}` must be >= {TOL_FLOOR:.3g} (100 float64 eps; smaller asks for unbounded work), got {value!r}"
            )


def _axpy(y: State, h: float, ks: Sequence[tuple[float, State]]) -> State:
    """y + h sum_j c_j k_j, elementwise over a tensor or a tuple of tensors."""
    if isinstance(y, tuple):
        return tuple(_axpy(yi, h, [(c, k[i]) for c, k in ks]) for i, yi in enumerate(y))
    acc = None
    for c, k in ks:
        term = k if c == 1 else c * k
        acc = term if acc is None else acc + term
    return y + h * acc


def rk_step(field: Callable[[State, float], State], y: State, s: float, s_next: float, method: str) -> State:
    """One explicit Runge-Kutta step of dy/ds = field(y, s) from ``s`` to ``s_next`` (module docstring)."""
    h = s_next - s
    k1 = field(y, s)
    if method == "euler":
        return _axpy(y, h, [(1, k1)])
    if method == "heun":
        k2 = field(_axpy(y, h, [(1, k1)]), s_next)
        return _axpy(y, h, [(0.5, k1), (0.5, k2)])
    if method == "rk4":
        mid = s + h / 2
        k2 = field(_axpy(y, h / 2, [(1, k1)]), mid)
        k3 = field(_axpy(y, h / 2, [(1, k2)]), mid)
        k4 = field(_axpy(y, h, [(1, k3)]), s_next)
        return _axpy(y, h, [(1 / 6, k1), (1 / 3, k2), (1 / 3, k3), (1 / 6, k4)])
    raise ValueError(f"`method` must be one of {list(FIXED_METHODS)}, got {method!r}")


def solve_adaptive(
    field: Callable[[tuple, float], tuple], y0: tuple, s0: float, s1: float, *, method: str = "RK45",
    rtol: float = 1e-5, atol: float = 1e-5, max_nfe: int = MAX_NFE, what: str = "ODE",
) -> tuple:
    """Integrate dy/ds = field(y, s) from s0 to s1 with scipy; ``y0`` a tuple of tensors (any dtypes).

    The solver works on all entries flattened into one float64 vector; ``field`` receives them
    reshaped to their shapes, dtypes and devices.  Returns the tuple at s1.
    """
    from scipy.integrate import solve_ivp

    specs = [(t.shape, t.dtype, t.device, t.numel()) for t in y0]
    bounds = np.cumsum([0] + [n for *_, n in specs])
    count = [0]

    def unpack(v):
        return tuple(
            torch.from_numpy(np.ascontiguousarray(v[a:b])).reshape(shape).to(device=device, dtype=dtype)
            for (shape, dtype, device, _), a, b in zip(specs, bounds[:-1], bounds[1:])
        )

    def rhs(s, v):
        count[0] += 1
        if count[0] > max_nfe:
            raise RuntimeError(
                f"{what} solver {method} exceeded {max_nfe} evaluations (rtol={rtol:g}, atol={atol:g}): "
                "loosen the tolerances or use a fixed-step method"
            )
        out = field(unpack(v), float(s))
        return np.concatenate([o.reshape(-1).to(torch.float64).cpu().numpy() for o in out])

    v0 = np.concatenate([t.reshape(-1).to(torch.float64).cpu().numpy() for t in y0])
    sol = solve_ivp(rhs, (s0, s1), v0, method=method, rtol=rtol, atol=atol, t_eval=[s1])
    if not sol.success:
        raise RuntimeError(f"{what} solver {method} failed: {sol.message}")
    return unpack(sol.y[:, -1])
