"""The default evaluation (``scoresde.evaluation.floors.assess``, what the apps run): power, calibration, records.

Power (issue 9): n = 2000, fixed seeds; 2 % of an exact sample replaced by
* ``box``: points uniform in the sample's bounding box, or
* ``segments``: points uniform on segments between neighbouring modes (mixtures: pairs of means at
  the smallest inter-mean distance, +1 %; two_moons: the segment between the means of its two
  moons, (-0.5, 0.387) and (0.5, -0.387), which crosses the gap between them),
must be flagged "above floor" by the headline in >= 95 % of 40 repetitions; exact samples in <= 10 %.
Measured with the headline ``outlier_z`` (40 repetitions, seed 123), flagged / 40:

    data              exact   box   segments
    eight_gaussians     0     40    1   <- see below
    grid_gaussians      3     40    40
    two_moons           2     40    40

eight_gaussians' segments are *not* detectable by any density-based metric: neighbouring means are
2.16 apart, 6.1 sds, so the whole segment lies within 3.05 sd of a mode; the density at its
midpoint is 1.9 % of a mode's peak, above the 1 % quantile level (and far above the 0.1 % one), and
only 6 % of the segment lies below the 2 % level.  (Filaments a sampler draws are not confined to the
segment: DDIM with 8 steps on the exact score puts 1.9 % of its samples below the 1 % level and is
flagged.)  C2ST cannot see 2 % of any contamination
(accuracy <= 0.51, inside its band), nor can precision (the points lie inside the data manifold).
The test asserts the two-sided requirement everywhere else and records this case.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from scoresde.data.datasets import TwoMoons
from scoresde.evaluation.floors import HEADLINE, FloorCache, assess
from scoresde.data.toy import GaussianMixture, eight_gaussians, grid_gaussians

N = 2000
FRACTION = 0.02


def contaminate(target, n: int, kind: str, generator: torch.Generator) -> torch.Tensor:
    """An exact sample of ``target`` with a fraction 2 % replaced (``kind``: none, box, segments)."""
    m = round(FRACTION * n)
    if isinstance(target, GaussianMixture):
        x = target.sample(n, generator, dtype=torch.float64)
    else:
        x, labels = target.sample_with_labels(n, generator, dtype=torch.float64)
    if kind == "none":
        return x
    if kind == "box":
        lo, hi = x.min(0).values, x.max(0).values
        bad = lo + (hi - lo) * torch.rand(m, x.shape[1], generator=generator, dtype=torch.float64)
    elif isinstance(target, GaussianMixture):
        mu = target.means
        dist = torch.cdist(mu, mu).fill_diagonal_(float("inf"))
        pairs = (dist <= 1.01 * dist.min()).nonzero()
        pick = pairs[torch.randint(len(pairs), (m,), generator=generator)]
        u = torch.rand(m, 1, generator=generator, dtype=torch.float64)
        bad = (1 - u) * mu[pick[:, 0]] + u * mu[pick[:, 1]]
    else:  # two moons: its two modes are the moons; the segment joins their means (2/pi - 1/4 = 0.387)
        centre = torch.tensor([-0.5 * target.scale, (2 / math.pi - 0.25) * target.scale], dtype=torch.float64)
        u = torch.rand(m, 1, generator=generator, dtype=torch.float64)
        bad = (1 - u) * centre + u * (-centre)
    x = x.clone()
    x[torch.randperm(n, generator=generator)[:m]] = bad
    return x


TARGETS = {"eight_gaussians": eight_gaussians, "grid_gaussians": grid_gaussians, "two_moons": TwoMoons}
UNDETECTABLE = {("eight_gaussians", "segments")}  # see the module docstring


def flag_rate(name: str, kind: str, repeats: int, cache: FloorCache) -> float:
    target, g = TARGETS[name](), torch.Generator().manual_seed(123)
    flags = 0
    for _ in range(repeats):
        res = assess(contaminate(target, N, kind, g), target, cache=cache, metrics=[HEADLINE])
        flags += res["metrics"][HEADLINE]["verdict"] == "above floor"
    return flags / repeats


@pytest.fixture(scope="module")
def cache():
    return FloorCache()


@pytest.mark.parametrize("name", list(TARGETS))
def test_power_40_repetitions(name, cache):
    """The issue's criterion: >= 95 % of 40 contaminated samples flagged, <= 10 % of exact ones.

    Not marked slow: the headline alone costs ~10 ms per evaluation once the thresholds are cached
    (all three data sets: ~5 s on one core)."""
    for kind in ("box", "segments"):
        rate = flag_rate(name, kind, 40, cache)
        if (name, kind) not in UNDETECTABLE:
            assert rate >= 0.95, (name, kind, rate)
    assert flag_rate(name, "none", 40, cache) <= 0.10


def test_assess_record_is_readable(cache):
    """Every metric once, with value, floor band, verdict and meaning; the headline first; JSON-ready."""
    target = eight_gaussians()
    x = contaminate(target, N, "none", torch.Generator().manual_seed(0))  # N: the floors cached by the power tests
    res = assess(x, target, cache=cache)
    json.dumps(res, allow_nan=False)
    assert next(iter(res["metrics"])) == HEADLINE == res["headline"]
    for name, m in res["metrics"].items():
        assert set(m) == {"value", "floor_band", "floor_mean", "verdict", "meaning"}, name
        assert m["floor_band"][0] <= m["floor_band"][1] and m["verdict"] in ("at floor", "above floor")
    assert len(res["within_mode"]["mean_error"]) == 8


def test_assess_is_deterministic_and_cached(tmp_path):
    """Same (target, n, seed): identical result, read back from the on-disk cache by a fresh process-like cache."""
    target = TwoMoons()
    x = target.sample(300, torch.Generator().manual_seed(1), dtype=torch.float64)
    metrics = [HEADLINE, "outlier_rate_1pct", "knn_precision"]
    first = assess(x, target, cache=FloorCache(tmp_path), metrics=metrics)
    assert list(tmp_path.glob("floors-*.json"))
    second = assess(x, target, cache=FloorCache(tmp_path), metrics=metrics)
    assert {k: v for k, v in first["metrics"].items()} == second["metrics"]
    assert first["density"] == "kde"


def test_assess_flags_a_blurred_sample(cache):
    """Samples blurred by N(0, 0.3^2) noise (the VE ode_heun case) are above floor on the headline."""
    target = TwoMoons()
    g = torch.Generator().manual_seed(2)
    x = target.sample(N, g, dtype=torch.float64) + 0.3 * torch.randn(N, 2, generator=g, dtype=torch.float64)
    res = assess(x, target, cache=cache, metrics=[HEADLINE, "c2st"])
    assert res["metrics"][HEADLINE]["verdict"] == "above floor"
    assert res["metrics"]["c2st"]["verdict"] == "above floor"


def test_assess_rejects_bad_input():
    with pytest.raises(ValueError, match="metrics"):
        assess(torch.zeros(20, 2), TwoMoons(), metrics=["max_mean_error"])
    with pytest.raises(ValueError, match="finite"):
        assess(torch.full((20, 2), float("nan")), TwoMoons())
    with pytest.raises(ValueError, match="dimension"):
        assess(torch.zeros(20, 3), eight_gaussians(), metrics=["c2st"])
