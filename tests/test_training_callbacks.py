"""The training loop's pieces, each on its own: the loss history, the guards, checkpoint timing,
signals, the hook order, rank-0-only writers, callback state in checkpoints, and a quality-check
callback of the kind issue 21 will add (scoresde.training.callbacks / guards / history / logs)."""
from __future__ import annotations

import math
import signal
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from scoresde import VPSDE
from scoresde.data.datasets import make_dataset
from scoresde.models.mlp import ScoreMLP
from scoresde.training import TrainConfig, TrainingInterrupted, train
from scoresde.training import loop
from scoresde.training.callbacks import (EVALUATE, GUARD, REPORT, SCHEDULE, STOP, Callback, Checkpointer, Due,
                                         StopOnSignal)
from scoresde.training.checkpoints import load_checkpoint, save_checkpoint
from scoresde.training.guards import LossExplosionError, LossGuard, NonFiniteLossError, exploded
from scoresde.training.history import LossHistory
from scoresde.training.losses import DSMLoss

TINY = TrainConfig(num_steps=12, batch_size=16, warmup_steps=2, check_every=4)


def tiny_model(seed: int = 0) -> ScoreMLP:
    return ScoreMLP(VPSDE(), (2,), width=16, depth=1, embedding_dim=8, generator=torch.Generator().manual_seed(seed))


DATA = make_dataset("eight_gaussians")


# -- the loss history --------------------------------------------------------------------------
def test_loss_history_reads_back_exactly_what_was_recorded():
    history = LossHistory(torch.device("cpu"), torch.tensor([5.0, 6.0]), pending=2)
    values = [torch.tensor(v, dtype=torch.float64) for v in (0.1, 0.2, 0.3)]  # float64 losses: stored as float32
    for v in values:
        history.record(v)
    assert history.pending == 3 and len(history) == 2  # the device buffer grew past its initial size
    new = history.read_back()
    assert torch.equal(new, torch.tensor([0.1, 0.2, 0.3], dtype=torch.float32))
    assert history.pending == 0 and torch.equal(history.values, torch.tensor([5.0, 6.0, 0.1, 0.2, 0.3]))
    for k in range(3000):  # the host history grows past its initial capacity (1024)
        history.record(torch.tensor(float(k)))
        if k % 7 == 0:
            history.read_back()
    history.read_back()
    assert len(history) == 3005 and torch.equal(history.values[5:], torch.arange(3000, dtype=torch.float32))


def test_a_huge_num_steps_allocates_nothing_up_front(tmp_path):
    """num_steps=10**12 used to preallocate a 4 TB loss buffer; now memory follows the steps run."""

    class StopAtFive(Callback):
        order = STOP

        def on_step_end(self, state):
            if state.step == 5:
                state.due.stop = signal.SIGINT

    config = replace(TINY, num_steps=10**12, checkpoint_dir=str(tmp_path))
    with pytest.raises(TrainingInterrupted, match="after step 5") as info:
        train(tiny_model(), DATA, config, callbacks=[StopAtFive()])
    assert info.value.checkpoint == tmp_path / "last.pt"
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 5 and state["losses"].shape == (5,)
    # the losses agree with the first five steps of a short run with the same seed
    short = train(tiny_model(), DATA, replace(TINY, num_steps=5))
    assert torch.equal(state["losses"], short.losses)


# -- guards ------------------------------------------------------------------------------------
def test_exploded_rule():
    assert exploded(100.0, 1.0, None, 100.0) == (False, 1.0)  # equal to factor x reference: not exploded
    assert exploded(100.1, 1.0, None, 100.0) == (True, 1.0)
    assert exploded(150.0, 1.0, 2.0, 100.0) == (False, 2.0)  # the larger of first loss and history median
    assert exploded(1e9, -1.0, -2.0, 100.0)[0] is False  # a negative reference never triggers


def guard_state(new, first, history=None, params=False):
    history = torch.tensor(history if history is not None else new, dtype=torch.float32)
    return SimpleNamespace(new_losses=torch.tensor(new, dtype=torch.float32), new_from=first, step=first + len(new),
                           history=SimpleNamespace(values=history), due=Due(check=True, params=params),
                           kept_checkpoint=lambda: "no checkpoint of this run was written")


def test_loss_guard_names_the_first_nonfinite_step_without_touching_the_model():
    state = guard_state([1.0, math.inf, math.nan], first=7, history=[1.0] * 7 + [1.0, math.inf, math.nan])
    with pytest.raises(NonFiniteLossError, match=r"non-finite \(inf\) at step 8; no checkpoint") as info:
        LossGuard(100.0).on_check(state)  # state has no model: the loss checks read only the host copy
    assert info.value.step == 8
    LossGuard(None).on_check(guard_state([1.0, 2.0], first=0))  # finite, divergence off: passes


def test_loss_guard_divergence_uses_the_recent_median_against_the_history():
    history = [1.0] * 20
    fine = guard_state([1.0] * 5 + [500.0] * 4, first=20, history=history + [1.0] * 5 + [500.0] * 4)
    LossGuard(100.0).on_check(fine)  # the median of the last 9 (<10) is 1.0: one spike is not divergence
    exploding = guard_state([1.0] * 4 + [500.0] * 6, first=20, history=history + [1.0] * 4 + [500.0] * 6)
    with pytest.raises(LossExplosionError, match="reached 500 by step 29.*reference 1"):
        LossGuard(100.0).on_check(exploding)


def test_loss_guard_checks_parameters_when_asked():
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = math.nan
    ema = torch.nn.Linear(2, 2)
    state = guard_state([1.0], first=3, history=[1.0] * 4, params=False)
    state.model, state.ema = model, ema
    LossGuard(None).on_check(state)  # not asked: not checked
    state.due.params = True
    with pytest.raises(NonFiniteLossError, match="a parameter became non-finite in the update of step 3"):
        LossGuard(None).on_check(state)
    state.due = Due(save=True)  # a checkpoint is about to be written: checked too
    with pytest.raises(NonFiniteLossError):
        LossGuard(None).on_check(state)


# -- checkpoint timing and signals -------------------------------------------------------------
def test_checkpointer_timing_by_steps_time_stop_and_end():
    now = [0.0]
    every_3 = Checkpointer(every=3, seconds=0, clock=lambda: now[0])
    by_time = Checkpointer(every=0, seconds=10.0, clock=lambda: now[0])
    state = SimpleNamespace(num_steps=8, step=0, due=Due())
    every_3.on_start(state), by_time.on_start(state)
    saves = {"steps": [], "time": []}
    for done in range(1, 9):
        now[0] = 4.0 * done  # 4 s per step
        for name, cb in (("steps", every_3), ("time", by_time)):
            state.step, state.due = done, Due()
            cb.on_step_end(state)
            if state.due.save:
                saves[name].append(done)
                cb.saved_at = now[0]  # what on_save does after writing
    assert saves["steps"] == [3, 6, 8]  # every 3 steps and at the end
    assert saves["time"] == [3, 6, 8]  # 12 s >= 10 s after the last save, and at the end
    state.step, state.due = 1, Due(stop=signal.SIGTERM)
    every_3.on_step_end(state)
    assert state.due.save  # a stop always saves


def test_stop_on_signal_sets_stop_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    state = SimpleNamespace(due=Due())
    with StopOnSignal() as stop:
        stop.on_step_end(state)
        assert state.due.stop is None
        signal.raise_signal(signal.SIGTERM)
        stop.on_step_end(state)
        assert state.due.stop == signal.SIGTERM and state.due.sync
        with pytest.raises(KeyboardInterrupt, match="second SIGTERM"):
            signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before


# -- the hooks ---------------------------------------------------------------------------------
class Recorder(Callback):
    def __init__(self, events, name, order):
        self.events, self.name, self.order = events, name, order

    def _log(self, hook, state):
        self.events.append((state.step, hook, self.name))

    def on_start(self, state): self._log("start", state)  # noqa: E704
    def on_step_end(self, state): self._log("step_end", state)  # noqa: E704
    def on_check(self, state): self._log("check", state)  # noqa: E704
    def on_save(self, state): self._log("save", state)  # noqa: E704
    def on_end(self, state): self._log("end", state)  # noqa: E704
    def on_close(self, state): self._log("close", state)  # noqa: E704


def test_hooks_run_in_the_documented_order(tmp_path):
    events = []
    config = replace(TINY, num_steps=6, check_every=4, checkpoint_every=3, checkpoint_dir=str(tmp_path))
    train(tiny_model(), DATA, config, callbacks=[Recorder(events, "late", REPORT), Recorder(events, "early", GUARD)])
    by_step = {}
    for step, hook, name in events:
        by_step.setdefault(step, []).append((hook, name))
    pair = lambda hook: [(hook, "early"), (hook, "late")]  # noqa: E731
    assert by_step[0] == pair("start")
    assert by_step[1] == pair("step_end")
    assert by_step[3] == pair("step_end") + pair("check") + pair("save")  # a checkpoint is a check point
    assert by_step[4] == pair("step_end") + pair("check")  # check_every
    assert by_step[6] == pair("step_end") + pair("check") + pair("save") + pair("end") + pair("close")[::-1]


def test_writers_run_on_rank_zero_only(tmp_path, monkeypatch):
    config = replace(TINY, checkpoint_dir=str(tmp_path / "ckpt"))
    reference = train(tiny_model(), DATA, replace(TINY))
    monkeypatch.setattr(loop, "_process_rank", lambda: 1)
    result = train(tiny_model(), DATA, config, log_file=tmp_path / "log.csv")
    assert not (tmp_path / "ckpt" / "last.pt").exists() and not (tmp_path / "log.csv").exists()
    assert torch.equal(result.losses, reference.losses)  # guards still run; the training is the same


class StepCounter(Callback):
    """A callback with state kept in checkpoints."""

    state_key = "counter"

    def __init__(self):
        self.count = 0

    def on_start(self, state):
        self.count = state.resumed_callbacks.get(self.state_key, {}).get("count", 0)

    def on_step_end(self, state):
        self.count += 1

    def state_dict(self):
        return {"count": self.count}


def test_callback_state_is_kept_in_checkpoints_and_resumed(tmp_path):
    config = replace(TINY, checkpoint_dir=str(tmp_path), checkpoint_every=4)

    class Interrupt(Callback):
        order = STOP

        def on_step_end(self, state):
            if state.step == 6:
                state.due.stop = signal.SIGINT

    with pytest.raises(TrainingInterrupted):
        train(tiny_model(), DATA, config, callbacks=[StepCounter(), Interrupt()])
    assert load_checkpoint(tmp_path / "last.pt")["callbacks"] == {"counter": {"count": 6}}
    counter = StepCounter()
    train(tiny_model(), DATA, config, resume=True, callbacks=[counter])
    assert counter.count == 12 and load_checkpoint(tmp_path / "last.pt")["callbacks"] == {"counter": {"count": 12}}
    assert "callbacks" not in load_checkpoint(_plain_checkpoint(tmp_path))  # no such callback: no entry


def _plain_checkpoint(tmp_path):
    train(tiny_model(), DATA, replace(TINY, num_steps=2, checkpoint_dir=str(tmp_path / "plain")))
    return tmp_path / "plain" / "last.pt"


class QualityCheck(Callback):
    """Issue 21's shape: every ``every`` steps evaluate the EMA model with its own generator (here a
    held-out DSM loss), keep ``best.pt`` beside ``last.pt`` and log the headline."""

    order = EVALUATE
    state_key = "quality"

    def __init__(self, every):
        self.every, self.best, self.best_step, self.seen = every, math.inf, None, []

    def on_step_end(self, state):
        if state.step % self.every == 0:
            state.due.check = state.due.params = True

    def on_check(self, state):
        if state.step % self.every:
            return
        g = torch.Generator().manual_seed(1)
        x0 = DATA.sample(256, g)
        with torch.no_grad():
            value = DSMLoss(state.model.sde)(state.ema.score_fn, x0, g).mean().item()
        state.log_scalar("heldout_loss", value)
        self.seen.append((state.step, value))
        if value < self.best:
            self.best, self.best_step = value, state.step
            save_checkpoint(state.checkpoint(), state.checkpoint_path.parent / "best.pt")

    def state_dict(self):
        return {"best": self.best, "best_step": self.best_step}


def test_a_quality_check_plugs_in_without_changing_the_run(tmp_path):
    config = replace(TINY, num_steps=30, checkpoint_every=0, check_every=10, checkpoint_dir=str(tmp_path / "q"))
    plain = train(tiny_model(), DATA, replace(config, checkpoint_dir=str(tmp_path / "p")))
    quality = QualityCheck(every=6)
    result = train(tiny_model(), DATA, config, callbacks=[quality], log_file=tmp_path / "log.csv")
    assert torch.equal(result.losses, plain.losses)  # its own generator: the training stream is untouched
    assert all(torch.equal(p, q) for p, q in zip(result.ema_model.parameters(), plain.ema_model.parameters()))
    assert [s for s, _ in quality.seen] == [6, 12, 18, 24, 30]
    best = load_checkpoint(tmp_path / "q" / "best.pt")
    assert best["step"] == quality.best_step == min(quality.seen, key=lambda sv: sv[1])[0]
    assert load_checkpoint(tmp_path / "q" / "last.pt")["callbacks"]["quality"]["best_step"] == quality.best_step
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert len(rows) == 31  # extra check points do not change the CSV log: one row per step


def test_callbacks_must_be_callbacks():
    with pytest.raises(TypeError, match="`callbacks` must hold"):
        train(tiny_model(), DATA, TINY, callbacks=[lambda state: None])
    assert sorted([GUARD, STOP, REPORT, SCHEDULE, EVALUATE]) == [STOP, SCHEDULE, GUARD, EVALUATE, REPORT]


def test_ema_update_is_the_warm_up_average():
    """ema <- ema + (1 - d)(p - ema), d = min(ema_decay, (1 + k)/(10 + k)): exact for k = 0 and late k."""
    config = TrainConfig(ema_decay=0.999)
    for step, decay in ((0, 0.1), (5, 6 / 15), (10**6, 0.999)):
        ema, p = [torch.tensor([1.0, -2.0], dtype=torch.float64)], [torch.tensor([3.0, 4.0], dtype=torch.float64)]
        loop.ema_update(ema, p, step, config)
        expected = torch.tensor([1.0, -2.0], dtype=torch.float64) * decay + torch.tensor([3.0, 4.0], dtype=torch.float64) * (1 - decay)
        assert torch.allclose(ema[0], expected, rtol=1e-15, atol=1e-15), (step, ema[0], expected)
