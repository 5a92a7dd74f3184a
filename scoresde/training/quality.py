"""Quality checks during training, the best checkpoint, and a recipe that adapts to a user's data (issue 21).

**The target** (``validation_target(data)``): a data set's held-out split (``FileDataset(...,
validation=f).validation``) as the kernel density estimate of its points, with the bandwidth of
likelihood cross-validation (``evaluation.sharp.cv_bandwidth``), i.e. a continuous law with an exact
density (``data.files.HeldOut``); a ``MixtureDataset``'s exact mixture; otherwise the data set itself
(fresh draws).  A model that matches the data is sharper than the KDE of its held-out points, so the
outlier headline of the calibrated evaluation can only err towards "at floor" for it; the
nearest-neighbour metrics would err the other way (exact data is "above floor" on ``knn_recall``
against the wider KDE), so against a held-out split the checks and the final evaluation use the
outlier metrics alone.

**The check** (``QualityCheck``, an ``EVALUATE``-order callback; ``training.callbacks`` defines the
interface).  Every ``every`` steps and at the last step it asks for a check point with the
parameters checked (``due.check``, ``due.params``), then, in ``on_check``:

    x = sampler.run(ema.score_fn, sde, [num_samples, *D], generator=G_step)    G_step: its own generator
    q = evaluation.floors.assess(x, target, metrics=...)                        calibrated, floors cached
    best = the latest check with the largest (overall at floor, at floor after the cool-down, -headline)

logs ``val_<headline>``, ``val_at_floor`` (1 / 0, the overall verdict) and ``val_p_min`` (the smallest
overall p-value) by
``state.log_scalar`` (TensorBoard) and as one row of ``quality_log.csv``, and writes ``best.pt``
beside ``last.pt`` (``save_checkpoint(state.checkpoint(), ...)``) when the check is the best so far.
The sampling generator is seeded from (``seed``, step), the model is the EMA copy, sampling runs
without gradients: nothing of the training state is read or written except the EMA buffers'
copy that every checkpoint makes, so a run with checks is bit for bit the run without them
(``tests/test_quality_checks.py``).  The overall verdict ranks first because it sees missing mass
(``knn_recall``) as well as misplaced mass: a model squeezed into the modes has a low headline
``outlier_z`` but is above floor overall; among checks with the same verdict the headline decides.
(Ranking by the smallest p-value instead picked step 1000 of a 3000-step two-moons run whose
headline was 30, over step 3000 at 8.)  With ``patience = k > 0``
the run finishes early (``due.finish``) after k consecutive checks at floor.  The state (checks so
far, the best one, the run of checks at floor, the cool-down) is kept in every checkpoint
(``state_key``), so a resumed run keeps its best value and its schedule.

**The cool-down before an early finish** (``cooldown = c > 0``, with ``CoolDown`` as the run's
learning-rate schedule; auto's default c = 0.2).  The base schedule (cosine) spans the whole budget,
so a run that finishes early would keep a model trained at a high learning rate (at step 11 000 of
20 000, 0.42 of the peak), whose checks wander in and out of the floor band from one thousand steps
to the next (the S-curve: at floor at 7000, above at 8000-10 000).  So when patience decides the finish
after s steps, the run trains ceil(c s) more steps with the factor going linearly from the one it had
to 0 (the "decay" of a warm-up-stable-decay schedule, Hägele et al. 2024), checks once more at the
end (``record["cooled"]``) and finishes there.  Ranking: (at floor, at floor and cooled, -headline),
so the cooled model is sampled when its check is at floor, else the best earlier check as before.
A run that never reaches patience (the full budget) is unchanged, bit for bit: the schedule is its
base until the decision.

**The adaptive recipe** (``choose_input_features``): the candidates (the plain MLP, then input
Fourier features) in order of capacity; a short pilot run of each but the last with the run's own
recipe, checked once against the target as above; the first whose pilot is at floor is trained for
the full budget, else the last.  A pilot that is already at floor shows the smaller model suffices;
a pilot above floor says little: ranking the pilots by their headline after 2000 steps chose the
plain MLP for two moons of noise 0.05 (24.8 against 34.1), whose checks then stayed above floor for
20 000 steps (best 2.8), while the run with 64 features was at floor on its check from step 11 000
(``benchmarks/results/own_data.md``).  Everything decided is returned as a dict for ``metrics.json``
and the log.
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..data.datasets import MixtureDataset
from ..data.files import HeldOut
from ..evaluation.floors import FloorCache, assess
from ..evaluation.sharp import cv_bandwidth
from ..samplers import ProbabilityFlowODE
from .callbacks import EVALUATE, Callback, TrainState, sync_buffers
from .checkpoints import save_checkpoint

__all__ = ["QualityCheck", "CoolDown", "validation_target", "check_score", "choose_input_features", "BEST_NAME",
           "DEFAULT_CHECK_METRICS", "HELD_OUT_METRICS"]

log = logging.getLogger(__name__)

BEST_NAME = "best.pt"
DEFAULT_CHECK_METRICS = ("outlier_z", "knn_precision", "knn_recall")  # no C2ST: it trains a classifier per check
# against a held-out KDE only the outlier headline: fresh exact S-curve points (n = 2000) are "above floor"
# on knn_recall against the KDE of 1000 held-out ones (0.915-0.934, 3 of 3), which is wider than the data
HELD_OUT_METRICS = ("outlier_z",)


def validation_target(data: Any) -> Any:
    """What to evaluate a model of ``data`` against (module docstring): held-out KDE, exact mixture or ``data``."""
    held = getattr(data, "validation", None)
    if isinstance(held, HeldOut):
        return held if held.bandwidth is not None else held.smoothed(cv_bandwidth(held._x))
    if isinstance(data, MixtureDataset):
        return data.mixture
    return data


def check_score(record: dict) -> tuple[bool, bool, float]:
    """The rank of a check's record, larger is better: (at floor, at floor after a cool-down, -headline value)."""
    at_floor = record["overall"] == "at floor"
    return (at_floor, at_floor and bool(record.get("cooled")), -record["value"])


def _default_sampler():
    return ProbabilityFlowODE(method="heun", num_steps=25)


class QualityCheck(Callback):
    """Every ``every`` steps: sample ``num_samples`` points of the EMA model and ``assess`` them against ``target``.

    Args:
        target: what ``assess`` compares with (``validation_target(data)``).
        every: steps between checks (and one at the last step).
        num_samples: points per check (n of ``assess``; its floors are cached after the first check).
        sampler: the sampler of the checks (default ``ProbabilityFlowODE(method="heun", num_steps=25)``,
            48 score evaluations: deterministic, so checks differ only by the model).
        metrics: ``assess``'s metrics (default ``DEFAULT_CHECK_METRICS``, plus the within-mode
            errors for a mixture target; ``HELD_OUT_METRICS``, the headline alone, for a ``HeldOut``).
        patience: 0 (never) or k > 0: finish the run after k consecutive checks at floor.
        cooldown: with ``patience``: 0 (finish at once) or c in (0, 1]: when the finish is decided after
            s steps, train ceil(c s) more (at most to the budget) with the learning rate of ``CoolDown``
            going linearly to 0, check once more at the end, and finish there (module docstring).
        seed: the checks' sampling seed (the generator of the check at step s is seeded from (seed, s)).
        log_file: None or a CSV file of one row per check (appended to when resuming).
        eval_seed: ``assess``'s yardstick seed.
        cache: ``assess``'s ``FloorCache`` (default: a new one in memory; the first check pays for the floors).

    After the run: ``records`` (one dict per check), ``best`` (the best check, or None), ``finished_early``,
    ``cooldown_steps`` (None, or (s, end): the cool-down's first and last step).
    """

    order = EVALUATE
    rank_zero_only = True
    state_key = "quality"

    def __init__(self, target: Any, every: int = 1000, num_samples: int = 1000, sampler: Any = None,
                 metrics=None, patience: int = 0, seed: int = 0, log_file: str | Path | None = None,
                 eval_seed: int = 0, cache: FloorCache | None = None, cooldown: float = 0.0):
        for name, value, lo in (("every", every, 1), ("num_samples", num_samples, 10), ("patience", patience, 0),
                                ("seed", seed, 0), ("eval_seed", eval_seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"`{name}` must be an integer >= {lo}, got {value!r}")
        if isinstance(cooldown, bool) or not isinstance(cooldown, (int, float)) or not 0 <= cooldown <= 1:
            raise ValueError(f"`cooldown` must be a number in [0, 1] (a fraction of the steps done), got {cooldown!r}")
        if not callable(getattr(target, "sample", None)):
            raise TypeError(f"`target` must have sample(k, generator, dtype=) (a data set or mixture), got {target!r}")
        self.target, self.every, self.num_samples, self.patience = target, every, num_samples, patience
        self.sampler = _default_sampler() if sampler is None else sampler
        if not callable(getattr(self.sampler, "run", None)):
            raise TypeError(f"`sampler` must be a scoresde sampler with run(...), got {self.sampler!r}")
        self.metrics, self.cooldown = metrics, float(cooldown)
        self.seed, self.eval_seed, self.log_file = seed, eval_seed, log_file
        self.cache = FloorCache() if cache is None else cache
        self.records: list[dict] = []
        self.best: dict | None = None
        self.at_floor_run = 0
        self.finished_early = False
        self.cooldown_steps: tuple[int, int] | None = None
        self.seconds = 0.0
        self._due = False
        self._csv = None

    # -- state kept in checkpoints ---------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"records": [dict(r) for r in self.records], "best": None if self.best is None else dict(self.best),
                "at_floor_run": self.at_floor_run, "seconds": self.seconds,
                "cooldown_steps": None if self.cooldown_steps is None else list(self.cooldown_steps)}

    def on_start(self, state: TrainState) -> None:
        kept = state.resumed_callbacks.get(self.state_key) if state.start else None
        if kept:
            self.records = [dict(r) for r in kept.get("records", [])]
            self.best = None if kept.get("best") is None else dict(kept["best"])
            self.at_floor_run, self.seconds = int(kept.get("at_floor_run", 0)), float(kept.get("seconds", 0.0))
            steps = kept.get("cooldown_steps")
            self.cooldown_steps = None if steps is None else (int(steps[0]), int(steps[1]))
        if self.log_file is not None:
            fresh = not state.start or not Path(self.log_file).exists()
            self._csv = open(self.log_file, "w" if fresh else "a", newline="")
            if fresh:
                self._csv.write("step,headline,value,floor_p95,verdict,overall,p_min,best_step,seconds\n")

    # -- the check -------------------------------------------------------------------------------
    def on_step_end(self, state: TrainState) -> None:
        self._due = state.step % self.every == 0 or state.step == state.num_steps or \
            (self.cooldown_steps is not None and state.step == self.cooldown_steps[1])
        if self._due:
            state.due.check = state.due.params = True  # the guard checks the parameters before we sample them

    def on_check(self, state: TrainState) -> None:
        if not self._due:
            return
        self._due = False
        start = time.process_time()
        quality = self.evaluate(state.ema, state.model, state.step)
        record = self._record(state.step, quality)
        cooled = self.cooldown_steps is not None and state.step == self.cooldown_steps[1]
        if cooled:
            record["cooled"] = True
        record["cpu_s"] = time.process_time() - start
        self.seconds += record["cpu_s"]
        self.records.append(record)
        improved = self.best is None or check_score(record) >= check_score(self.best)
        if improved:
            self.best = dict(record)
        self.at_floor_run = self.at_floor_run + 1 if record["overall"] == "at floor" else 0
        state.log_scalar(f"val_{record['headline']}", record["value"])
        state.log_scalar("val_at_floor", float(record["overall"] == "at floor"))
        state.log_scalar("val_p_min", record["p_min"])
        if improved and state.checkpoint_path is not None:
            save_checkpoint(state.checkpoint(), state.checkpoint_path.parent / BEST_NAME)
        if self._csv is not None:
            self._csv.write(",".join(str(record[k]) for k in ("step", "headline", "value", "floor_p95", "verdict",
                                                                 "overall", "p_min")) +
                            f",{self.best['step']},{record['cpu_s']:.3f}\n")
            self._csv.flush()
        log.info("step %d: validation %s %.3g (floor <= %.3g), overall %s (p_min %.3g)%s", state.step,
                 record["headline"], record["value"], record["floor_p95"], record["overall"], record["p_min"],
                 "; best so far" if improved else "")
        if cooled and state.step < state.num_steps:
            self.finished_early = True
            state.due.finish = state.due.save = True
            log.info("step %d: cool-down done: training finishes", state.step)
        elif self.patience and self.at_floor_run >= self.patience and state.step < state.num_steps \
                and self.cooldown_steps is None:
            if self.cooldown:
                end = min(state.num_steps, state.step + math.ceil(self.cooldown * state.step))
                self.cooldown_steps = (state.step, end)
                log.info("step %d: %d consecutive checks at floor: the learning rate goes to 0 by step %d, "
                         "then training finishes", state.step, self.at_floor_run, end)
            else:
                self.finished_early = True
                state.due.finish = state.due.save = True
                log.info("step %d: %d consecutive checks at floor: training finishes", state.step, self.at_floor_run)

    def evaluate(self, ema: torch.nn.Module, model: torch.nn.Module | None, step: int) -> dict:
        """``assess`` of ``num_samples`` points of ``ema`` (its own generator, seeded from (seed, step))."""
        if model is not None:
            sync_buffers(ema, model)
        device = next(ema.parameters()).device
        g = torch.Generator(device=device).manual_seed((self.seed * 1_000_003 + step) % 2**63)
        shape = (self.num_samples, *getattr(ema, "event_shape", self.target.sample(1, torch.Generator()).shape[1:]))
        with torch.no_grad():
            x = self.sampler.run(ema.score_fn, ema.sde, shape, generator=g).x
        x = x.detach().to("cpu", torch.float64).reshape(self.num_samples, -1)
        if not torch.isfinite(x).all():
            return {"headline": "outlier_z", "metrics": {"outlier_z": {"value": math.inf, "floor_band": [0, 0],
                                                                       "verdict": "above floor"}},
                    "overall": {"verdict": "above floor", "p_values": {"outlier_z": 0.0}}}
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small tensors: one thread is faster (scoresde.apps.evaluation)
        try:
            return assess(x, self.target, seed=self.eval_seed, cache=self.cache, metrics=self._metrics())
        finally:
            torch.set_num_threads(threads)

    def _metrics(self):
        if self.metrics is not None:
            return tuple(self.metrics)
        if isinstance(self.target, HeldOut):
            return HELD_OUT_METRICS
        extra = ("max_mean_error", "max_cov_error", "weight_error") if hasattr(self.target, "means") else ()
        return (*DEFAULT_CHECK_METRICS, *extra)

    @staticmethod
    def _record(step: int, quality: dict) -> dict:
        name = quality["headline"]
        m = quality["metrics"][name]
        p = quality["overall"]["p_values"]
        p_min = min(p.values()) if p else 1.0
        return {"step": int(step), "headline": name, "value": float(m["value"]), "floor_p95": float(m["floor_band"][1]),
                "verdict": m["verdict"], "overall": quality["overall"]["verdict"], "p_min": float(p_min)}

    def on_close(self, state: TrainState) -> None:
        if self._csv is not None:
            self._csv.close()
            self._csv = None


class CoolDown:
    """A learning-rate schedule ``schedule(step, num_steps) -> factor`` with ``check``'s cool-down (WSD-style).

    ``base(step, num_steps)`` until ``check.cooldown_steps = (s, end)`` is set (by its patience), then
    base(s, num_steps) (end - step) / (end - s) for the 0-based steps s <= step < end: linear from the
    factor the run had to 1 / (end - s) of it at its last step (Hägele et al. 2024, "Scaling laws and
    compute-optimal training beyond fixed training durations": warm-up, stable, decay).  It reads the
    check's state at every step, so a resumed run (the check keeps ``cooldown_steps`` in checkpoints)
    follows the same schedule; before a cool-down it is ``base`` exactly.
    """

    def __init__(self, base: Callable[[int, int], float], check: QualityCheck):
        if not callable(base):
            raise TypeError(f"`base` must be a schedule(step, num_steps) -> factor, got {base!r}")
        if not isinstance(check, QualityCheck):
            raise TypeError(f"`check` must be a QualityCheck, got {type(check).__name__}")
        self.base, self.check = base, check

    def __call__(self, step: int, num_steps: int) -> float:
        steps = self.check.cooldown_steps
        if steps is None or step < steps[0]:
            return self.base(step, num_steps)
        start, end = steps
        return self.base(start, num_steps) * max(0, end - step) / (end - start)

    def __repr__(self) -> str:
        return f"CoolDown({self.base!r}, cooldown={self.check.cooldown})"


# -- the adaptive recipe ---------------------------------------------------------------------------


def choose_input_features(make_model: Callable[[int], torch.nn.Module], data: Any, config, target: Any, *,
                          candidates=(0, 64), pilot_steps: int = 2000, check: QualityCheck | None = None,
                          train_kwargs: dict | None = None) -> dict:
    """The first of ``candidates`` (input_features values, by capacity) whose pilot is at floor, else the last.

    Each candidate but the last: a fresh ``make_model(input_features)`` trained ``pilot_steps`` steps
    (``config`` otherwise, the run's seed, recipe and ``train_kwargs``; no checkpoints, no logs) and
    checked once (``QualityCheck.evaluate``); the pilots stop at the first at floor (overall verdict).
    Returns ``{"input_features": the choice, "pilot_steps", "pilots": [{"input_features", "value",
    "overall", "p_min", "cpu_s", ...}, ...], "rule"}`` (module docstring: why not the best headline).
    """
    from .loop import train  # the loop imports nothing of this module

    if isinstance(pilot_steps, bool) or not isinstance(pilot_steps, int) or pilot_steps < 1:
        raise ValueError(f"`pilot_steps` must be an integer >= 1, got {pilot_steps!r}")
    candidates = list(candidates)
    if not candidates:
        raise ValueError("`candidates` must name at least one input_features value")
    check = QualityCheck(target) if check is None else check
    pilot_config = dataclasses.replace(config, num_steps=pilot_steps, checkpoint_dir=None, progress=False)
    pilots, chosen = [], candidates[-1]
    for features in candidates[:-1]:
        start = time.process_time()
        model = make_model(features)
        result = train(model, data, pilot_config, **(train_kwargs or {}))
        record = QualityCheck._record(pilot_steps, check.evaluate(result.ema_model.eval(), None, pilot_steps))
        record.update(input_features=int(features), cpu_s=time.process_time() - start)
        pilots.append(record)
        log.info("pilot input_features=%d, %d steps: validation %s %.3g, overall %s (p_min %.3g), %.1f s CPU",
                 features, pilot_steps, record["headline"], record["value"], record["overall"], record["p_min"],
                 record["cpu_s"])
        if record["overall"] == "at floor":
            chosen = int(features)
            break
    return {"input_features": int(chosen), "pilot_steps": pilot_steps, "pilots": pilots,
            "rule": "candidates in order: the first whose pilot is at floor (one check after the pilot steps), "
                    "else the last (no pilot)"}
