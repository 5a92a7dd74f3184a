"""Tests for scoresde.training.distributed: DDP training on 2 gloo processes of this CPU.

Each test starts 2 processes (torch.multiprocessing, a file rendezvous in tmp_path); the workers
write what they saw to files that the test reads.
"""
import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scoresde import VPSDE
from scoresde.data.datasets import make_dataset
from scoresde.models.mlp import ScoreMLP
from scoresde.training import TrainConfig, TrainingInterrupted, load_checkpoint, train
from scoresde.training.callbacks import Callback
from scoresde.training.distributed import AgreeOnStop, rank_seed, resolve_group
from scoresde.training.quality import QualityCheck

CFG = TrainConfig(num_steps=8, batch_size=32, lr=2e-3, warmup_steps=2, ema_decay=0.9, check_every=4)


def model():
    return ScoreMLP(VPSDE(), width=32, depth=2, embedding_dim=16, generator=torch.Generator().manual_seed(0))


def data():
    return make_dataset("eight_gaussians").sample(512, torch.Generator().manual_seed(1))


def _init(rank: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=2)


def _spawn(fn, tmp_path, *args) -> None:
    # fork: the children inherit the imported modules (spawn would import torch and scoresde twice more)
    mp.start_processes(fn, args=(str(tmp_path), *args), nprocs=2, join=True, start_method="fork")


@torch.no_grad()
def _max_rel(a, b) -> float:
    return max(float((p - q).abs().max() / q.abs().max()) for p, q in zip(a.parameters(), b.parameters()))


# -- 1. two processes with batch B/2 each equal one process with batch B ------------------------


def _train_worker(rank: int, tmp: str, accumulate: int) -> None:
    _init(rank, tmp)
    try:
        result = train(model(), data(), replace(CFG, accumulate=accumulate))
        torch.save({"model": result.model.state_dict(), "ema": result.ema_model.state_dict(),
                    "losses": result.losses}, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("accumulate", [1, 2])
def test_two_processes_equal_one_process_with_the_global_batch(tmp_path, accumulate):
    """After 8 Adam steps, the model and its EMA trained by 2 gloo processes (16 rows each; with
    accumulate=2 two micro-batches of 8) equal one process with batch 32 (accumulate 2: batch 64) to
    float32 round-off: same data, same noise, and DDP's average of the two half-batch gradients is the
    whole batch's gradient, summed in another order (~1e-7 relative per step; 1e-4 is far below the
    1e-3 that one different batch makes).  Both ranks hold the same weights."""
    _spawn(_train_worker, tmp_path, accumulate)
    one = train(model(), data(), replace(CFG, batch_size=CFG.batch_size * accumulate))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key, ref in (("model", one.model), ("ema", one.ema_model)):  # EMA off (the weights) and on
        two = model()
        two.load_state_dict(ranks[0][key])
        assert _max_rel(two, ref) < 1e-4, key
        assert all(torch.equal(ranks[0][key][k], ranks[1][key][k]) for k in ranks[0][key]), key
    torch.testing.assert_close(ranks[0]["losses"], one.losses, rtol=1e-5, atol=0)


# -- 2. a signal on one rank stops both, with one checkpoint; resume on one process ------------


class _SignalAt(Callback):
    """Sends SIGTERM to this process after ``step`` steps, on rank ``rank`` only."""

    def __init__(self, rank: int, step: int):
        self.rank, self.step = rank, step

    def on_step_end(self, state):
        if state.rank == self.rank and state.step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def _interrupt_worker(rank: int, tmp: str) -> None:
    _init(rank, tmp)
    try:
        cfg = replace(CFG, num_steps=1000, checkpoint_dir=f"{tmp}/run")
        train(model(), data(), cfg, callbacks=[_SignalAt(rank=1, step=5)])
        message = "finished"
    except TrainingInterrupted as e:
        message = f"{e.step} {str(e)}"
    finally:
        dist.destroy_process_group()
    with open(f"{tmp}/rank{rank}.txt", "w") as f:
        f.write(message)


def test_sigterm_on_one_rank_stops_every_rank_with_one_checkpoint_and_resumes_on_one(tmp_path):
    """SIGTERM to rank 1 in step 5's on_step_end (after the stop agreement ran): rank 1's
    StopOnSignal raises due.stop after step 6, the all-reduce of step 6 lands at step 7, so both
    ranks stop after step 7 and rank 0 writes last.pt then; one process resumes it to step 12 and matches an
    uninterrupted one-process run of 12 steps to float round-off, with the data and noise
    generators continuing bit for bit."""
    (tmp_path / "run").mkdir()
    _spawn(_interrupt_worker, tmp_path)
    said = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert [s.split()[0] for s in said] == ["7", "7"], said
    assert all("SIGTERM" in s and "last.pt" in s for s in said), said
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["step"] == 7
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["last.pt"]  # no temporaries, one file

    cfg = replace(CFG, num_steps=12, checkpoint_dir=str(tmp_path / "run"))
    resumed = train(model(), data(), cfg, resume=True)
    straight_dir = tmp_path / "straight"
    straight = train(model(), data(), replace(cfg, checkpoint_dir=str(straight_dir)))
    assert _max_rel(resumed.model, straight.model) < 1e-4
    assert _max_rel(resumed.ema_model, straight.ema_model) < 1e-4
    a, b = load_checkpoint(tmp_path / "run" / "last.pt"), load_checkpoint(straight_dir / "last.pt")
    assert all(torch.equal(a["generators"][k], b["generators"][k]) for k in ("data", "noise"))


# -- 2b. an early finish decided on rank 0 (a quality check's patience) ends every rank together --


class _AtFloor(QualityCheck):
    """A QualityCheck whose every check is at floor (no sampling): its real patience rule decides the finish."""

    def evaluate(self, ema, model, step):
        return {"headline": "sliced_w2", "metrics": {"sliced_w2": {"value": 1.0 / step, "floor_band": [0.0, 1.0],
                                                                   "verdict": "at floor"}},
                "overall": {"verdict": "at floor", "p_values": {"sliced_w2": 0.5}}}


def _finish_worker(rank: int, tmp: str, every: int) -> None:
    _init(rank, tmp)
    try:
        check = _AtFloor(make_dataset("eight_gaussians"), every=every, num_samples=10, patience=2)
        result = train(model(), data(), replace(CFG, num_steps=20, checkpoint_dir=f"{tmp}/run"), callbacks=[check])
        with open(f"{tmp}/rank{rank}.txt", "w") as f:
            f.write(f"{len(result.losses)} {check.finished_early}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("every, decided, ended", [(4, 8, 8), (3, 6, 8)])
def test_an_early_finish_on_rank_zero_ends_every_rank_after_the_same_step(tmp_path, every, decided, ended):
    """QualityCheck (rank 0 only) with patience 2 and every check at floor decides to finish at its
    second check (step 2 x every).  With checks on the loop's check_every=4 grid (every=4) both ranks
    end at that step, as one process does; off the grid (every=3: decided at 6) both end at the next
    shared check point, step 8.  Rank 0 wrote one best.pt and one last.pt (of the last step)."""
    (tmp_path / "run").mkdir()
    _spawn(_finish_worker, tmp_path, every)
    said = [(tmp_path / f"rank{r}.txt").read_text().split() for r in range(2)]
    assert said == [[str(ended), "True"], [str(ended), "False"]], said  # rank 1 never ran the check
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.pt", "last.pt"]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == ended
    one = _AtFloor(make_dataset("eight_gaussians"), every=every, num_samples=10, patience=2)
    assert len(train(model(), data(), replace(CFG, num_steps=20), callbacks=[one]).losses) == decided


def _first_worker(rank: int, tmp: str) -> None:
    import time

    from scoresde.apps import ranks

    _init(rank, tmp)
    try:
        if rank == 1:
            ranks._received_out[:] = [f"{tmp}/lead"]  # what launch receives from rank 0
        with ranks.rank_zero_first(Path(f"{tmp}/lead" if rank == 0 else f"{tmp}/scratch")) as out:
            if rank == 0:
                time.sleep(0.5)  # a slow fit: rank 1 must not look before it is written
                (out / "cache.txt").write_text("fitted")
            else:
                seen = (out / "cache.txt").read_text() if (out / "cache.txt").is_file() else "missing"
                (Path(tmp) / "rank1.txt").write_text(f"{out} {seen}")
    finally:
        dist.destroy_process_group()


def test_rank_zero_first_lets_the_others_read_rank_zeros_cache(tmp_path):
    """sampler.grid=fit under torchrun: rank 0 fits and caches in its run directory, the others wait and load it."""
    (tmp_path / "lead").mkdir()
    _spawn(_first_worker, tmp_path)
    assert (tmp_path / "rank1.txt").read_text() == f"{tmp_path / 'lead'} fitted"


# -- helpers -------------------------------------------------------------------------------------


def test_single_process_helpers():
    assert resolve_group(None) is None  # not initialised: one process
    seeds = {rank_seed(7, r) for r in range(64)}
    assert len(seeds) == 64 and all(0 <= s < 2**63 for s in seeds) and 7 not in seeds
    with pytest.raises(ValueError, match="process_group"):
        resolve_group(object())
    assert AgreeOnStop.order == 1  # right after StopOnSignal (STOP = 0), before the Checkpointer reads due.stop


# -- 3. sampling split across ranks by the per-sample seeds ------------------------------------


def _sample(lo_hi: list, n: int):
    from scoresde.samplers import ReverseSDE

    data = make_dataset("eight_gaussians")
    sde = VPSDE()
    parts = [ReverseSDE(num_steps=20).run(data.score_fn(sde), sde, (hi - lo, 2), seeds=range(1000 + lo, 1000 + hi)).x
             for lo, hi in lo_hi]
    return torch.cat(parts)


def _sampling_worker(rank: int, tmp: str) -> None:
    from scoresde.training.distributed import gather_batches, rank_batches

    _init(rank, tmp)
    try:
        x = _sample(rank_batches(70, 16), 70)
        torch.save(gather_batches(x, 70, 16), f"{tmp}/samples{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_samples_split_across_two_ranks_equal_one_process_bit_for_bit(tmp_path):
    """70 samples in batches of 16 (5 batches: rank 0 draws 3, rank 1 draws 2), each sample from its
    own seed: the gathered samples equal one process's batches bit for bit, on both ranks."""
    _spawn(_sampling_worker, tmp_path)
    one = _sample([(lo, min(70, lo + 16)) for lo in range(0, 70, 16)], 70)
    for r in range(2):
        assert torch.equal(torch.load(tmp_path / f"samples{r}.pt", weights_only=True), one)


# -- the apps under torchrun (slow: each process imports Hydra and the apps) ------------------


def _torchrun(module: str, *overrides: str, cwd) -> None:
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", module,
           *overrides]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_torchrun_sample_app_equals_one_process_bit_for_bit(tmp_path):
    """scoresde-sample under torchrun (2 gloo ranks, batch_size 50 of 200 samples) writes the
    samples.npz of a one-process run with the same batch size, bit for bit; rank 1 writes nothing."""
    import subprocess
    import sys

    import numpy as np

    common = ["num_samples=200", "batch_size=50", "sampler=reverse_diffusion", "sampler.num_steps=30"]
    _torchrun("scoresde.apps.sample", f"hydra.run.dir={tmp_path / 'two'}", *common, cwd=tmp_path)
    one = subprocess.run([sys.executable, "-m", "scoresde.apps.sample", f"hydra.run.dir={tmp_path / 'one'}", *common],
                         cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = np.load(tmp_path / "two" / "samples.npz"), np.load(tmp_path / "one" / "samples.npz")
    assert set(a.files) == set(b.files)
    assert all(np.array_equal(a[k], b[k]) for k in a.files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # nothing written beside the run dirs


@pytest.mark.slow
def test_torchrun_train_app_writes_one_run_and_resumes_on_one_process(tmp_path):
    """scoresde-train under torchrun (2 gloo ranks) writes one run directory with a loadable last.pt
    of the requested steps; resume=true on one process continues it to more steps."""
    import subprocess
    import sys

    run = tmp_path / "run"
    common = ["train.batch_size=64", "num_samples=200", "sampler=reverse_diffusion", "sampler.num_steps=30"]
    _torchrun("scoresde.apps.train", f"hydra.run.dir={run}", "train.num_steps=20", *common, cwd=tmp_path)
    assert load_checkpoint(run / "last.pt")["step"] == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    more = subprocess.run([sys.executable, "-m", "scoresde.apps.train", f"hydra.run.dir={run}", "resume=true",
                           "train.num_steps=30", *common], cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True)
    assert more.returncode == 0, more.stderr[-3000:]
    assert load_checkpoint(run / "last.pt")["step"] == 30


class _KillAt(Callback):
    """SIGKILL (no handler can run) to rank 1 after ``step`` steps."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, state):
        if state.rank == 1 and state.step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def _kill_worker(rank: int, tmp: str) -> None:
    _init(rank, tmp)
    try:
        train(model(), data(), replace(CFG, num_steps=1000, checkpoint_dir=f"{tmp}/run", checkpoint_every=10),
              callbacks=[_KillAt(25)])
    except RuntimeError as e:
        with open(f"{tmp}/rank{rank}.txt", "w") as f:
            f.write(str(e))


@pytest.mark.slow
def test_sigkill_of_one_rank_leaves_a_clear_error_and_the_last_checkpoint(tmp_path):
    """Rank 1 killed (SIGKILL) after step 25: rank 0's next collective fails with an error that says
    what to do; last.pt is the intact checkpoint of step 20, and one process resumes it."""
    (tmp_path / "run").mkdir()
    with pytest.raises(mp.ProcessExitedException, match="SIGKILL"):
        _spawn(_kill_worker, tmp_path)
    said = (tmp_path / "rank0.txt").read_text()
    assert "rank 0 of 2" in said and "resume=true" in said, said
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 20
    resumed = train(model(), data(), replace(CFG, num_steps=24, checkpoint_dir=str(tmp_path / "run")), resume=True)
    assert len(resumed.losses) == 24 and torch.isfinite(resumed.losses).all()
