"""Shape helpers and input checks shared by the public entry points.

Checks run once, at the public boundary, never inside a sampling loop.  Every message
names the argument, the value received and what is allowed (torchsde's style).
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import numbers
import weakref
from typing import Any, Iterator, Sequence

import torch

__all__ = [
    "append_dims",
    "check_positive",
    "check_nonnegative",
    "check_int",
    "check_in",
    "check_probability",
    "check_shape",
    "check_generator",
    "check_device",
    "check_dtype",
    "check_times",
    "trusted_times",
    "times_trusted",
]


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so a per-sample ``[B]`` tensor broadcasts against ``[B, *D]``."""
    missing = ndim - v.ndim
    if missing < 0:
        raise ValueError(f"cannot broadcast a tensor of {v.ndim} dims to {ndim} dims")
    return v.reshape(*v.shape, *([1] * missing))


def _is_number(value: Any) -> bool:
    """A real number: Python or numpy int / float (not bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, torch.Tensor)) and not _is_np_bool(value)


def _is_np_bool(value: Any) -> bool:
    return type(value).__name__ == "bool_"


def check_positive(name: str, value: Any, *, allow_inf: bool = False) -> float:
    """``value`` must be a finite real number > 0."""
    if not _is_number(value) or math.isnan(value) or (math.isinf(value) and not allow_inf) or value <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}")
    return float(value)


def check_nonnegative(name: str, value: Any) -> float:
    """``value`` must be a finite real number >= 0."""
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")
    return float(value)


def check_probability(name: str, value: Any) -> float:
    """``value`` must lie in [0, 1]."""
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}")
    return float(value)


def check_int(name: str, value: Any, *, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` must be an int in ``[minimum, maximum]``."""
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, int)) and not _is_np_bool(value):
        value = int(value)  # numpy / other integral types: accepted and converted
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and <= {maximum}"
        raise ValueError(f"`{name}` must be >= {minimum}{upper}, got {value}")
    return value


def check_in(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """``value`` must be one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {list(allowed)}, got {value!r}")
    return value


def check_shape(name: str, shape: Any) -> tuple[int, ...]:
    """A batch-first sample shape ``(B, *D)`` with every entry a positive int and at least one data dim."""
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, (tuple, list)) or len(shape) < 2:
        raise ValueError(f"`{name}` must be a batch-first shape (B, *D) with at least 2 entries, got {shape!r}")
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(f"`{name}` entries must be positive integers, got {shape!r}")
    return tuple(shape)


def check_generator(generator: Any, device: torch.device | str | None = None) -> torch.Generator:
    """Return ``generator``, or a fresh one seeded from OS entropy when it is None.

    The library never draws from torch's global RNG: pass a seeded ``torch.Generator`` for
    reproducible results.  A generator must live on the device the samples are drawn on.
    """
    if generator is None:
        generator = torch.Generator(device=device if device is not None else "cpu")
        generator.seed()
        return generator
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator or None, got {type(generator).__name__}")
    if device is not None and torch.device(device).type != generator.device.type:
        raise ValueError(
            f"`generator` is on {generator.device} but samples are drawn on {torch.device(device)}; "
            "create it with torch.Generator(device=...)"
        )
    return generator


def check_device(name: str, value: Any) -> torch.device:
    """``torch.device(value)`` for a device that can hold samples: CUDA only when it is available, never
    "meta" (tensors without values).  Raises ``ValueError`` naming ``name`` before any work."""
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"`{name}` must name a torch device such as 'cpu' or 'cuda', got {value!r}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}={str(value)!r} but CUDA is not available on this machine; use {name}=cpu")
    if device.type == "meta":
        raise ValueError(f"`{name}` must be a device with values, such as 'cpu' or 'cuda', got {str(value)!r}")
    return device


def check_dtype(name: str, dtype: Any, *, floating: bool = True) -> torch.dtype:
    """``dtype`` must be a ``torch.dtype`` (a floating-point one unless ``floating=False``).

    The strings ``"float32"`` / ``"torch.float64"`` are accepted and converted.
    """
    if isinstance(dtype, str):
        converted = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(converted, torch.dtype):
            raise TypeError(f"`{name}` must be a torch.dtype such as torch.float32, got {dtype!r}")
        dtype = converted
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"`{name}` must be a torch.dtype such as torch.float32, got {type(dtype).__name__} {dtype!r}")
    if floating and not dtype.is_floating_point:
        raise ValueError(f"`{name}` must be a floating-point dtype (torch.float32 or torch.float64), got {dtype}")
    return dtype


# -- time arguments ----------------------------------------------------------------------------
# Public SDE, score and model methods check their time arguments once (``check_times``).  A caller
# that has already checked its times (a sampler's grid, the training loop's drawn times) runs
# inside ``trusted_times()``, which turns those checks off, so that no check (and no host
# synchronisation) happens in an inner loop.  A checked method also trusts the calls it makes.
_TRUSTED: contextvars.ContextVar[bool] = contextvars.ContextVar("scoresde_trusted_times", default=False)


@contextlib.contextmanager
def trusted_times() -> Iterator[None]:
    """Within this block, public methods skip their time checks (the caller vouches for its times)."""
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def times_trusted() -> bool:
    """True inside ``trusted_times()`` (or inside a checked method)."""
    return _TRUSTED.get()


def check_times(name: str, t: Any, lo: float, hi: float, *, where: str = "", interval: str = "") -> torch.Tensor:
    """``t`` (a tensor, or a real number converted to a 0-d float64 tensor) must be finite and in [lo, hi].

    A tolerance of 1e-7 (T - t_min) absorbs float32 round-off of grid endpoints.  One host
    synchronisation for a tensor on an accelerator.
    """
    if _is_number(t):
        t = torch.tensor(float(t), dtype=torch.float64)
    if not torch.is_tensor(t):
        raise TypeError(f"{where}`{name}` must be a tensor of times (shape [B]), got {type(t).__name__} {t!r}")
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{where}`{name}` must be a real tensor of times, got dtype {t.dtype}")
    if t.numel() == 0:
        return t
    last = _LAST_CHECKED.get()
    if last is not None and last[0]() is t and last[1] == t._version and last[2] >= lo and last[3] <= hi:
        return t  # the same unchanged tensor was just checked against a range at least as strict
    d = t.detach()
    if d.numel() == 1:
        t_lo = t_hi = float(d.reshape(()))
    else:
        t_lo, t_hi = torch.stack(torch.aminmax(d.to(torch.float64))).tolist()
    tol = 1e-7 * max(hi - lo, 1e-12)
    if not (math.isfinite(t_lo) and math.isfinite(t_hi)) or t_lo < lo - tol or t_hi > hi + tol:
        bad = "non-finite values" if not (math.isfinite(t_lo) and math.isfinite(t_hi)) else f"values in [{t_lo:g}, {t_hi:g}]"
        raise ValueError(f"{where}`{name}` must lie in {interval}[{lo:g}, {hi:g}], got {bad}")
    with contextlib.suppress(TypeError):
        _LAST_CHECKED.set((weakref.ref(t), t._version, lo, hi))
    return t


# The last tensor that passed ``check_times`` (weak reference, version counter, range), so that
# e.g. ``sde.alpha(t)`` then ``sde.sigma(t)`` on the same unchanged ``t`` check it once.
_LAST_CHECKED: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("scoresde_last_checked", default=None)


def event_shape_of(fn: Any) -> tuple[int, ...] | None:
    """The event shape a score function declares: ``fn.event_shape``, its model's (a bound
    ``model.score_fn``) or its mixture's (an exact mixture score); None when it declares none."""
    for owner in (fn, getattr(fn, "__self__", None), getattr(fn, "mixture", None), getattr(fn, "func", None)):
        shape = getattr(owner, "event_shape", None)
        if isinstance(shape, (tuple, list, torch.Size)) and all(isinstance(s, int) for s in shape):
            return tuple(shape)
    return None


def check_event_shape(name: str, x: Any, fn: Any) -> None:
    """``x`` must be ``[B, *event_shape]`` for the event shape ``fn`` declares (if it declares one)."""
    shape = event_shape_of(fn)
    if shape is not None and torch.is_tensor(x) and tuple(x.shape[1:]) != shape:
        raise ValueError(f"`{name}` must have shape [B, *{shape}] (the score function's event shape), "
                         f"got {tuple(x.shape)}")


def flat_points(name: str, x) -> torch.Tensor:
    """A batch of points ``[n, *D]`` (n >= 2, finite) as a float64 CPU tensor ``[n, prod(D)]``; errors name ``name``."""
    try:
        x = torch.as_tensor(x)
    except Exception as err:
        raise TypeError(f"`{name}` must be a tensor [n, *D], got {type(x).__name__}") from err
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"`{name}` must be batch-first [n, *D] with n >= 2, got shape {tuple(x.shape)}")
    x = x.detach().reshape(x.shape[0], -1).to("cpu", torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"`{name}` must be finite")
    return x
