"""Langevin dynamics at one noise level, and annealed over a sequence of levels (NCSN).

Paper convention (Song & Ermon 2019), step size eps, z ~ N(0, I) fresh each step:

* ``Langevin``:  x <- x + (eps/2) s(x, t) + sqrt(eps) z, ``num_steps`` times at one time t
  (default t_min, the least-noised score).  Unadjusted: biased by O(eps), and it mixes between
  separated modes only through the low-density region between them, so it cannot recover their
  relative weights in reasonable time (NCSN section 3.2; ``tests/test_samplers_langevin.py``).
  ncsnv2's code writes x + eta s + sqrt(2 eta) z, i.e. eta = eps/2.
* ``AnnealedLangevin`` (NCSN Alg. 1): levels t_1 = T > ... > t_L = t_min from ``sde.timesteps(num_levels)``,
  sigma_i = sigma(t_i); at level i, alpha_i = eps sigma_i^2 / sigma_L^2 and ``steps_per_level`` steps
  x <- x + (alpha_i/2) s(x, t_i) + sqrt(alpha_i) z.  Optional final Tweedie denoise
  x <- (x + sigma_L^2 s(x, t_L)) / alpha(t_L) (x + sigma_L^2 s for VE; Song & Ermon 2020; Jolicoeur-Martineau et al. 2021).
"""
from __future__ import annotations

from dataclasses import dataclass


from .._checks import check_positive
from .base import MAX_STEPS, Sampler, check_steps, StepInfo, batch_time, progress_bar, randn_like, tweedie_denoise

__all__ = ["Langevin", "AnnealedLangevin"]


@dataclass(frozen=True)
class Langevin(Sampler):
    """Unadjusted Langevin dynamics with the score at one time ``t`` (None: ``sde.t_min``).

    Defaults (eps = 0.005, 1000 steps) suit the 2-D targets of ``scoresde.data.toy`` (smallest
    component variance 0.02): stable, and within-mode mixing in a few hundred steps.
    """

    step_size: float = 0.005
    num_steps: int = 1000
    t: float | None = None

    def __post_init__(self):
        check_positive("step_size", self.step_size)
        check_steps("num_steps", self.num_steps)
        if self.t is not None and not isinstance(self.t, (int, float)):
            raise TypeError(f"`t` must be a number or None, got {self.t!r}")

    def _run(self, score_fn, sde, x, generator, callback, progress):
        t = sde.t_min if self.t is None else float(self.t)
        if not sde.t_min <= t <= sde.T:
            raise ValueError(f"`t` must lie in [t_min, T] = [{sde.t_min:g}, {sde.T:g}], got {t}")
        tb = batch_time(t, x)
        half, noise = self.step_size / 2, self.step_size**0.5
        for i in progress_bar(range(self.num_steps), progress, "Langevin"):
            x_mean = x + half * score_fn(x, tb)
            x = x_mean + noise * randn_like(x, generator)
            if callback is not None:
                callback(StepInfo(i, self.num_steps, t, t, x, x_mean))
        return x


@dataclass(frozen=True)
class AnnealedLangevin(Sampler):
    """Annealed Langevin dynamics (NCSN Alg. 1); NFE = num_levels * steps_per_level (+1 to denoise).

    ``step_size`` is NCSN's eps, the step at the last level (alpha_L = eps).  When it is None
    (default) it is set relative to the SDE, eps = ``step_ratio`` * sigma_L^2, so that
    alpha_i / sigma_i^2 = step_ratio at every level whatever the SDE's scale (NCSN's eps = 2e-5
    with sigma_L = 0.01 is step_ratio = 0.2).  A fixed eps tuned for VE (sigma_L = 0.01) would
    explode on VP, whose sigma_L = 0.0014.

    Defaults (30 levels x 250 steps, step_ratio = 0.2 as in NCSN, final denoise) were tuned with
    the exact score on the 2-D targets of ``scoresde.data.toy`` from the VE prior.  Annealed Langevin
    keeps a bias on separated modes that smaller steps do not remove: on the NCSN 0.2 / 0.8 mixture
    (n = 40 000, two seeds each) the light mode's weight came out +0.0055/+0.0064 with these
    defaults, +0.008/+0.010 with 30 x 100 at ratio 0.5, +0.007/+0.009 with 60 x 100 at 0.5 and
    +0.007/+0.005 with 30 x 500 at 0.1; with 10 levels (a factor 2.3 apart) it is 0.03-0.04.  The
    weights freeze at the noise level where cross-mode mixing stops, and are those of the chain's
    basins there, not exactly the component weights.  The reverse-SDE samplers have no such bias.
    """

    step_size: float | None = None
    step_ratio: float = 0.2
    num_levels: int = 30
    steps_per_level: int = 250
    denoise: bool = True

    def __post_init__(self):
        if self.step_size is not None:
            check_positive("step_size", self.step_size)
        check_positive("step_ratio", self.step_ratio)
        check_steps("num_levels", self.num_levels)
        check_steps("steps_per_level", self.steps_per_level)
        if self.num_levels * self.steps_per_level > MAX_STEPS:
            raise ValueError(
                f"`num_levels` * `steps_per_level` = {self.num_levels * self.steps_per_level} must be <= {MAX_STEPS}"
            )
        if not isinstance(self.denoise, bool):
            raise TypeError(f"`denoise` must be a bool, got {self.denoise!r}")

    def _run(self, score_fn, sde, x, generator, callback, progress):
        ts = sde.timesteps(self.num_levels)
        sigmas = sde.sigma(ts)
        eps = self.step_ratio * float(sigmas[-1]) ** 2 if self.step_size is None else self.step_size
        step_sizes = (eps * sigmas**2 / sigmas[-1] ** 2).tolist()
        ts = ts.tolist()
        total = self.num_levels * self.steps_per_level
        x_mean = x
        for level in progress_bar(range(self.num_levels), progress, "AnnealedLangevin"):
            tb = batch_time(ts[level], x)
            half, noise = step_sizes[level] / 2, step_sizes[level] ** 0.5
            for j in range(self.steps_per_level):
                x_mean = x + half * score_fn(x, tb)
                x = x_mean + noise * randn_like(x, generator)
                if callback is not None:
                    i = level * self.steps_per_level + j
                    callback(StepInfo(i, total, ts[level], ts[level], x, x_mean))
        if self.denoise:
            tb = batch_time(ts[-1], x)
            x = tweedie_denoise(score_fn(x, tb), sde, x, tb)
        return x
