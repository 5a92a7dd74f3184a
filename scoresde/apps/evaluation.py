"""The apps' sample-quality evaluation (``cfg.eval``): what is compared with what, floors cached per sweep.

``evaluate_job(x, data, cfg, labels)`` runs ``scoresde.evaluation.floors.assess`` on the job's samples against

* the exact mixture of a ``MixtureDataset`` (for guided runs: the class's component, or the equally
  weighted mixture when every class is drawn in turn);
* otherwise the data set itself, or, for guided runs with one label, the data set restricted to
  that label (``ClassData``), with a KDE of a large fresh reference sample as its density.

The yardstick (reference sample, thresholds, floors) depends only on the target, n and
``eval.seed``, never on the job's seed, so every job of a sweep is measured alike; it is cached in
memory for the process and, in a multirun, in ``<sweep dir>/.floors/`` (one small JSON file per
target), so only the first job of a sweep pays for the floors.

``eval.metrics`` may also name the older distances (``scoresde.evaluation.metrics``: ``sliced_w2``, ``mmd``,
``energy_distance``, and ``sliced_w2_to_mixture``, ``mode_weight_error`` for mixtures); their floor
band is the 5-95 % range of ``eval.repeats`` i.i.d. repeats (use >= 20 for a meaningful band), and
they join the overall verdict (``quality["overall"]``, Holm at 5 %) with empirical p-values, which
cannot go below 1 / (repeats + 1): they add to the family but seldom drive it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ..data.datasets import MixtureDataset
from ..evaluation.floors import (HEADLINE, MEANINGS, FloorCache, assess, empirical_p_value, overall_verdict, verdict,
                                 verdict_family)
from ..evaluation.metrics import evaluate
from ..evaluation.modes import WITHIN_MODE_SCALARS
from ..data.toy import GaussianMixture
from .guided import class_target

log = logging.getLogger(__name__)

__all__ = ["evaluate_job", "check_eval_metrics", "headline_text", "verdict_text", "LEGACY_METRICS", "ClassData"]

LEGACY_METRICS = {
    "sliced_w2": "sliced 2-Wasserstein distance to a fresh data sample (units of x)",
    "mmd": "unbiased MMD^2, Gaussian kernel (can be negative)",
    "energy_distance": "unbiased squared energy distance (can be negative)",
    "sliced_w2_to_mixture": "sliced 2-Wasserstein distance to the exact mixture (units of x)",
    "mode_weight_error": "max_k |fraction assigned to k - exact|, hard assignment",
}
_CACHES: dict[str, FloorCache] = {}


class ClassData:
    """A labelled data set restricted to one label: ``sample(k, generator, dtype=)`` by rejection."""

    def __init__(self, data, label: int):
        self.data, self.label = data, int(label)

    def sample(self, k: int, generator=None, *, dtype=torch.float64) -> torch.Tensor:
        chunks, have = [], 0
        while have < k:
            x, y = self.data.sample_with_labels(2 * k * self.data.num_classes, generator, dtype=dtype)
            chunks.append(x.reshape(x.shape[0], -1)[y == self.label])
            have += chunks[-1].shape[0]
        return torch.cat(chunks)[:k]

    def __repr__(self) -> str:
        return f"{self.data!r}[label={self.label}]"


def check_eval_metrics(metrics: Any) -> None:
    """``eval.metrics``: null or a non-empty list of known names (``floors.MEANINGS`` or ``LEGACY_METRICS``)."""
    if metrics is None:
        return
    metrics = list(metrics)
    if not metrics:
        raise ValueError("`eval.metrics` must be null (the defaults) or a non-empty list of metric names")
    known = [*MEANINGS, *LEGACY_METRICS]
    for m in metrics:
        if m not in known:
            raise ValueError(f"`eval.metrics` entries must be among {known}, got {m!r}")


def _cache() -> FloorCache:
    directory = None
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        directory = str(Path(HydraConfig.get().sweep.dir) / ".floors")
    key = str(directory)
    if key not in _CACHES:
        _CACHES[key] = FloorCache(directory)
    return _CACHES[key]


def _target(data, labels: torch.Tensor | None, n: int, generator: torch.Generator):
    if labels is not None:
        if isinstance(data, MixtureDataset):
            return class_target(data, labels, n, generator)
        if bool((labels == labels[0]).all()):
            return ClassData(data, int(labels[0]))
        return data
    return data.mixture if isinstance(data, MixtureDataset) else data


def evaluate_job(x: torch.Tensor, data, cfg: DictConfig, labels: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> dict:
    """``metrics.json``'s ``quality``: ``assess`` (plus any requested older distances), logged headline first."""
    ev, n = cfg.eval, x.shape[0]
    names = None if ev.metrics is None else list(ev.metrics)
    target = _target(data, labels, n, generator)
    is_mix = isinstance(target, GaussianMixture)
    sharp = None if names is None else [m for m in names if m in MEANINGS]
    if sharp is not None and not is_mix:  # within-mode errors need a mixture
        sharp = [m for m in sharp if m not in WITHIN_MODE_SCALARS]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: one thread is faster (2 threads: 3x the CPU time, measured)
    try:
        quality = assess(x, target, seed=ev.seed, cache=_cache(), metrics=sharp, c2st_steps=ev.c2st_steps) \
            if sharp != [] else {"n": n, "headline": None, "metrics": {}}
    finally:
        torch.set_num_threads(threads)
    legacy = [m for m in (names or []) if m in LEGACY_METRICS and (is_mix or m in ("sliced_w2", "mmd", "energy_distance"))]
    if legacy:
        g = torch.Generator().manual_seed(ev.seed)
        ref = target if is_mix else target.sample(4 * n, g, dtype=torch.float64).reshape(4 * n, -1)
        old = evaluate(x, ref, metrics=legacy, repeats=ev.repeats, num_projections=ev.num_projections, generator=g)
        p_values = dict((quality.get("overall") or {}).get("p_values", {}))
        for m, r in old["metrics"].items():
            band = [float(np.quantile(r["floor_values"], 0.05)), float(np.quantile(r["floor_values"], 0.95))]
            quality["metrics"][m] = {"value": r["value"], "floor_band": band, "floor_mean": r["floor_mean"],
                                     "verdict": verdict(m, r["value"], band), "meaning": LEGACY_METRICS[m]}
            p_values[m] = empirical_p_value(r["value"], r["floor_values"])  # >= 1 / (repeats + 1)
        quality["overall"] = overall_verdict({m: p_values[m] for m in verdict_family(quality["metrics"])})
    quality["above_floor"] = [m for m, r in quality["metrics"].items() if r["verdict"] == "above floor"]
    for name, m in quality["metrics"].items():
        lead = "HEADLINE " if name == quality.get("headline") else "         "
        log.info("%s%-20s %.4g  floor band [%.4g, %.4g]  %s  (%s)", lead, name, m["value"], m["floor_band"][0],
                 m["floor_band"][1], m["verdict"].upper() if m["verdict"] == "above floor" else m["verdict"],
                 m["meaning"])
    if quality.get("overall"):
        log.info("OVERALL  %s", verdict_text(quality))
    return quality


def verdict_text(quality: dict) -> str:
    """The overall verdict in one line, e.g. 'ABOVE FLOOR (weight_error p = 0.001); Holm at 5 % over 7 metrics'."""
    overall = quality.get("overall")
    if not overall:
        return ""
    p = overall.get("p_values", {})
    driven = ", ".join(f"{m} p = {p[m]:.2g}" for m in overall["driven_by"])
    state = f"ABOVE FLOOR ({driven})" if overall["verdict"] == "above floor" else "at floor"
    return f"{state}; Holm at {100 * overall['alpha']:.0f} % over {len(p)} metrics"


def headline_text(quality: dict) -> str:
    """Lines for figures: the headline with its band and verdict, the overall verdict (``verdict_text``), the rates."""
    name = quality.get("headline")
    metrics = quality.get("metrics", {})
    m = metrics.get(name) if name else None
    if m is None:
        return ""
    state = "ABOVE FLOOR" if m["verdict"] == "above floor" else "at floor"
    text = f"{name} {m['value']:.3g} (floor band {m['floor_band'][0]:.2g} to {m['floor_band'][1]:.2g}): {state}"
    if quality.get("overall"):
        text += f"\noverall: {verdict_text(quality)}"
    if name == HEADLINE and "outlier_rate_0.1pct" in metrics and "outlier_rate_1pct" in metrics:
        text += (f"\nbelow the 0.1 % / 1 % density levels: {100 * metrics['outlier_rate_0.1pct']['value']:.2f} % / "
                 f"{100 * metrics['outlier_rate_1pct']['value']:.2f} % (exact samples: 0.1 % / 1 %)")
    return text
