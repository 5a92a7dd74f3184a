"""Tests for the quality checks during training (issue 21): ``scoresde.training.quality.QualityCheck``.

* A run with checks is the run without them, bit for bit (losses, weights, EMA).
* The checks' verdicts come from ``assess``: exact draws of the target (a stand-in sampler that a
  perfect model would be) against a visibly wrong law (the same draws 1.5x wider).
* ``best.pt`` holds the EMA of the best check's step (checked against a run of exactly that many steps);
  ``quality_log.csv`` and ``state.log_scalar`` report every check; patience finishes the run after k
  consecutive checks at floor; a resumed run keeps the checks and the best one.
* The cool-down (``cooldown`` with ``CoolDown`` as the lr schedule): the base schedule until patience
  decides, then the lr linearly to 0 over ceil(c s) steps, a check at the end (marked ``cooled``,
  ranked first when at floor) and the finish there; resumed in the middle it is the same run.
"""
import csv
import math
import signal
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from scoresde import sdes
from scoresde.data.datasets import MixtureDataset
from scoresde.data.toy import eight_gaussians
from scoresde.evaluation import FloorCache
from scoresde.models import ScoreMLP
from scoresde.samplers import SampleResult
from scoresde.training import TrainConfig, TrainingInterrupted, load_checkpoint, train
from scoresde.training.callbacks import REPORT, STOP, Callback
from scoresde.training.quality import BEST_NAME, CoolDown, QualityCheck, check_score
from scoresde.training.recipes import ConstantLR, WarmupCosine

DATA = MixtureDataset(eight_gaussians())
TARGET = DATA.mixture
CACHE = FloorCache()  # the floors of (TARGET, n = 400) are computed once for the whole file
N = 400


@dataclass(frozen=True)
class ExactDraws:
    """A stand-in sampler: ``scale`` times exact draws of the target (1.0: what a perfect model gives)."""

    target: Any
    scale: float = 1.0

    def run(self, score_fn, sde, shape, *, generator=None, **kwargs):
        x = self.target.sample(shape[0], generator, dtype=torch.float64)
        return SampleResult(self.scale * x, 0)


class Scalars(Callback):
    """Keeps what the callbacks handed to the logs."""

    order = REPORT

    def on_end(self, state):
        self.scalars = list(state.scalars)


class StopAt(Callback):
    """Acts as SIGTERM after ``step`` steps."""

    order = STOP

    def __init__(self, step):
        self.step = step

    def on_step_end(self, state):
        if state.step == self.step:
            state.due.stop = signal.SIGTERM


def model():
    return ScoreMLP(sdes.VPSDE(), (2,), width=32, generator=torch.Generator().manual_seed(0))


def config(num_steps=300, **kw):
    return TrainConfig(num_steps=num_steps, batch_size=64, check_every=50, **kw)


def check(**kw):
    kw = {"every": 100, "num_samples": N, "cache": CACHE, **kw}
    return QualityCheck(TARGET, **kw)


def test_training_with_checks_equals_training_without_them_bit_for_bit(tmp_path):
    plain = train(model(), DATA, config())
    checks = check(every=70)  # the default ODE sampler on the model itself, checks off the check_every grid
    checked = train(model(), DATA, config(checkpoint_dir=str(tmp_path)), callbacks=[checks])
    assert [r["step"] for r in checks.records] == [70, 140, 210, 280, 300]
    assert torch.equal(plain.losses, checked.losses)
    for a, b in ((plain.model, checked.model), (plain.ema_model, checked.ema_model)):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), name
    assert (tmp_path / BEST_NAME).is_file()


def test_verdicts_exact_draws_at_floor_a_wider_law_above():
    good, bad = check(sampler=ExactDraws(TARGET), every=20), check(sampler=ExactDraws(TARGET, 1.5), every=20)
    train(model(), DATA, config(200), callbacks=[good, bad])
    # exact draws: each check's overall verdict is "above floor" with probability <= 5 % (Holm at 5 %), so
    # 3 or more of 10 has probability <= C(10, 3) 0.05^3 = 1.2 % (fixed seeds: the outcome is fixed)
    assert len(good.records) == 10 and sum(r["overall"] == "above floor" for r in good.records) <= 2
    # 1.5x too wide: far more than 1 % of points below the 1 % density level; outlier_z in the tens
    assert all(r["overall"] == "above floor" and r["value"] > 10 for r in bad.records)
    assert good.best["overall"] == "at floor" and bad.at_floor_run == 0
    assert good.seconds > 0 and all(r["cpu_s"] >= 0 for r in good.records)


def test_best_pt_is_the_ema_of_the_best_step(tmp_path):
    checks = check(sampler=ExactDraws(TARGET), every=50)
    train(model(), DATA, config(200, checkpoint_dir=str(tmp_path / "run")), callbacks=[checks])
    best = checks.best
    assert best == max(checks.records, key=check_score) or check_score(best) == max(map(check_score, checks.records))
    saved = load_checkpoint(tmp_path / "run" / BEST_NAME)
    assert saved["step"] == best["step"] and saved["callbacks"]["quality"]["best"]["step"] == best["step"]
    # the default lr schedule does not depend on num_steps: a run of best_step steps is the same trajectory
    short = train(model(), DATA, config(best["step"]))
    for (name, p), q in zip(short.ema_model.state_dict().items(), saved["ema"].values()):
        assert torch.equal(p, q), name


def test_log_rows_and_scalars(tmp_path):
    log_file = tmp_path / "quality_log.csv"
    checks, scalars = check(sampler=ExactDraws(TARGET, 1.5), log_file=log_file), Scalars()
    train(model(), DATA, config(200), callbacks=[checks, scalars])
    rows = list(csv.DictReader(log_file.open()))
    assert [int(r["step"]) for r in rows] == [100, 200]
    assert [float(r["value"]) for r in rows] == [r["value"] for r in checks.records]
    assert [r["overall"] for r in rows] == ["above floor", "above floor"]
    names = [(s, n) for s, n, _ in scalars.scalars]
    assert names == [(s, n) for s in (100, 200) for n in ("val_outlier_z", "val_at_floor", "val_p_min")]
    assert [v for _, n, v in scalars.scalars if n == "val_at_floor"] == [0.0, 0.0]


def test_patience_finishes_after_consecutive_checks_at_floor(tmp_path):
    checks = check(sampler=ExactDraws(TARGET), every=50, patience=2)
    result = train(model(), DATA, config(400, checkpoint_dir=str(tmp_path)), callbacks=[checks])
    floors = [r["overall"] == "at floor" for r in checks.records]
    end = checks.records[-1]["step"]
    # it stopped at the first check that made two in a row at floor, and nowhere else
    assert floors[-2:] == [True, True] and not any(a and b for a, b in zip(floors[:-2], floors[1:-1]))
    assert checks.finished_early and end < 400 and len(result.losses) == end
    assert load_checkpoint(tmp_path / "last.pt")["step"] == end  # saved at the finish


def test_resume_keeps_the_checks_and_the_best(tmp_path):
    whole = check(sampler=ExactDraws(TARGET), every=50)
    full = train(model(), DATA, config(300, checkpoint_dir=str(tmp_path / "a")), callbacks=[whole])
    first = check(sampler=ExactDraws(TARGET), every=50)
    with pytest.raises(TrainingInterrupted):
        train(model(), DATA, config(300, checkpoint_dir=str(tmp_path / "b")), callbacks=[first, StopAt(150)])
    assert [r["step"] for r in first.records] == [50, 100, 150]
    second = check(sampler=ExactDraws(TARGET), every=50)
    resumed = train(model(), DATA, config(300, checkpoint_dir=str(tmp_path / "b")), resume=True, callbacks=[second])
    strip = lambda records: [{k: v for k, v in r.items() if k != "cpu_s"} for r in records]  # noqa: E731
    assert strip(second.records) == strip(whole.records)
    assert strip([second.best]) == strip([whole.best])
    assert torch.equal(full.losses, resumed.losses)


class LearningRates(Callback):
    """Keeps the learning rate of every step (read after the step)."""

    order = REPORT

    def __init__(self):
        self.lrs = []

    def on_step_end(self, state):
        self.lrs.append(state.optimizer.param_groups[0]["lr"])


def cooled_run(tmp_path, name, callbacks=(), resume=False, num_steps=400):
    """Checks every 50 steps of exact draws, patience 2, cool-down 0.3, with the lr of ``CoolDown``."""
    checks = check(sampler=ExactDraws(TARGET), every=50, patience=2, cooldown=0.3)
    base = ConstantLR(20)
    result = train(model(), DATA, config(num_steps, checkpoint_dir=str(tmp_path / name)), resume=resume,
                   lr_schedule=CoolDown(base, checks), callbacks=[checks, *callbacks])
    return checks, result


def test_cooldown_takes_the_lr_linearly_to_zero_then_finishes_on_the_cooled_model(tmp_path):
    lrs = LearningRates()
    checks, result = cooled_run(tmp_path, "a", [lrs])
    start, end = checks.cooldown_steps
    # patience decided at a check (two in a row at floor), the cool-down is ceil(0.3 start) steps, then the end
    floors = [r["overall"] == "at floor" for r in checks.records if r["step"] <= start]
    assert floors[-2:] == [True, True] and start % 50 == 0 and end == start + math.ceil(0.3 * start) < 400
    assert checks.finished_early and len(result.losses) == end and checks.records[-1]["step"] == end
    assert load_checkpoint(tmp_path / "a" / "last.pt")["step"] == end
    # the base schedule (lr 1e-3 after 20 warm-up steps) until the decision, then linear to 0 over the cool-down
    lr = TrainConfig().lr
    assert lrs.lrs[:start] == [lr * ConstantLR(20)(k, 400) for k in range(start)]
    expected = [lr * (end - k) / (end - start) for k in range(start, end)]
    assert lrs.lrs[start:] == pytest.approx(expected, rel=1e-12) and lrs.lrs[-1] == pytest.approx(lr / (end - start))
    # the cooled check is marked, and at floor it ranks above every other check at floor (best.pt is its model)
    cooled = checks.records[-1]
    assert cooled.get("cooled") and not any(r.get("cooled") for r in checks.records[:-1])
    if cooled["overall"] == "at floor":
        assert checks.best["step"] == end
        assert load_checkpoint(tmp_path / "a" / BEST_NAME)["step"] == end
    assert check_score(cooled) > check_score({**cooled, "cooled": False}) or cooled["overall"] != "at floor"


def test_cooldown_resumed_in_the_middle_is_the_same_run(tmp_path):
    whole, full = cooled_run(tmp_path, "a")
    start, end = whole.cooldown_steps
    with pytest.raises(TrainingInterrupted):
        cooled_run(tmp_path, "b", [StopAt((start + end) // 2)])
    second, resumed = cooled_run(tmp_path, "b", resume=True)
    assert second.cooldown_steps == (start, end) and second.finished_early
    assert torch.equal(full.losses, resumed.losses)
    for (name, p), q in zip(full.ema_model.state_dict().items(), resumed.ema_model.state_dict().values()):
        assert torch.equal(p, q), name


def test_cooldown_schedule_is_its_base_until_the_decision():
    checks = check(cooldown=0.5)
    base = WarmupCosine(warmup_steps=10, min_factor=0.1)
    schedule = CoolDown(base, checks)
    assert [schedule(k, 1000) for k in range(1000)] == [base(k, 1000) for k in range(1000)]
    checks.cooldown_steps = (400, 600)
    assert [schedule(k, 1000) for k in range(400)] == [base(k, 1000) for k in range(400)]
    assert schedule(400, 1000) == base(400, 1000) and schedule(500, 1000) == pytest.approx(base(400, 1000) / 2)
    assert schedule(599, 1000) == pytest.approx(base(400, 1000) / 200) and schedule(700, 1000) == 0.0
    with pytest.raises(TypeError, match="`base` must be a schedule"):
        CoolDown(1.0, checks)
    with pytest.raises(TypeError, match="`check` must be a QualityCheck"):
        CoolDown(base, object())


@pytest.mark.parametrize("kwargs, match", [
    ({"cooldown": 1.5}, "`cooldown` must be a number in \\[0, 1\\]"),
    ({"cooldown": -0.1}, "`cooldown` must be a number in \\[0, 1\\]"),
    ({"every": 0}, "`every` must be an integer >= 1"),
    ({"num_samples": 5}, "`num_samples` must be an integer >= 10"),
    ({"patience": -1}, "`patience` must be an integer >= 0"),
    ({"seed": 1.5}, "`seed` must be an integer"),
])
def test_bad_arguments_name_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QualityCheck(TARGET, **kwargs)


def test_bad_target_and_sampler():
    with pytest.raises(TypeError, match="`target` must have sample"):
        QualityCheck(object())
    with pytest.raises(TypeError, match="`sampler` must be a scoresde sampler"):
        QualityCheck(TARGET, sampler=object())


def test_a_held_out_target_is_checked_on_the_outlier_headline_alone(tmp_path):
    import numpy as np

    from scoresde.data.files import FileDataset
    from scoresde.training.quality import HELD_OUT_METRICS, validation_target

    np.save(tmp_path / "p.npy", np.random.default_rng(0).normal(size=(300, 2)))
    target = validation_target(FileDataset(str(tmp_path / "p.npy"), validation=0.1))
    assert QualityCheck(target)._metrics() == HELD_OUT_METRICS == ("outlier_z",)
    assert QualityCheck(TARGET)._metrics()[:3] == ("outlier_z", "knn_precision", "knn_recall")
