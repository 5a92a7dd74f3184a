"""Issue 10: no lost work, no silent wrong answers, one-line user errors (items 1-6, 8-11, 14-19).

Each test names the item it covers.  Command-line items run the apps in-process through
``tests/test_apps.run_app`` (Hydra composes, creates directories and reports errors as on the
command line) or, where the process's own output or exit status matters, as a subprocess.
The bad-input table is ``tests/test_robustness_inputs.py``; interrupts are
``tests/test_robustness_interrupts.py``.
"""
from __future__ import annotations

import errno
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

import scoresde
from scoresde import _io
from scoresde._checks import trusted_times
from scoresde.apps import sample, train as train_app
from scoresde.training.checkpoints import load_checkpoint, save_checkpoint
from scoresde.models.mlp import ScoreMLP
from scoresde.sdes import VPSDE
from scoresde.data.toy import eight_gaussians
from scoresde.training import LossExplosionError, OutputError, TrainConfig, train

from test_apps import FAST, REPO, TINY_TRAIN, run_app

QUICK = [*FAST, "sampler=ddim", "sampler.num_steps=2"]
DATA = eight_gaussians().sample(512, torch.Generator().manual_seed(0))


def tiny_model(seed=0):
    return ScoreMLP(VPSDE(), (2,), width=16, depth=1, embedding_dim=8, generator=torch.Generator().manual_seed(seed))


def snapshot(directory: Path) -> dict:
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    run_app(train_app, *TINY_TRAIN, *QUICK, f"hydra.run.dir={out}")
    return out


# -- 1. lost work: periodic checkpoints by default, resume of nothing is an error ------------------------
def test_item1_checkpoints_are_periodic_by_default():
    config = TrainConfig()
    assert config.checkpoint_every > 0 and config.checkpoint_every < config.num_steps and config.checkpoint_seconds > 0
    default = yaml.safe_load((REPO / "conf" / "train" / "default.yaml").read_text())
    assert 0 < default.get("checkpoint_every", config.checkpoint_every) < default["num_steps"]


def test_item1_periodic_checkpoint_by_wall_time(tmp_path):
    # checkpoint_every=0 and a tiny time interval: every step is due by wall time
    config = TrainConfig(num_steps=6, batch_size=8, checkpoint_every=0, checkpoint_seconds=1e-9,
                         checkpoint_dir=str(tmp_path))
    saved = []
    original = scoresde.training.callbacks.save_checkpoint
    try:
        scoresde.training.callbacks.save_checkpoint = lambda state, path: saved.append(state["step"]) or original(state, path)
        train(tiny_model(), DATA, config)
    finally:
        scoresde.training.callbacks.save_checkpoint = original
    assert saved == [1, 2, 3, 4, 5, 6]


def test_item1_sigint_in_the_library_writes_a_checkpoint_and_restores_the_handler(tmp_path):
    import signal

    from scoresde.training import TrainingInterrupted

    before = signal.getsignal(signal.SIGINT)
    config = TrainConfig(num_steps=50, batch_size=8, checkpoint_dir=str(tmp_path))
    calls = {"n": 0}

    def loss_fn(score_fn, x0, generator, labels=None):  # Ctrl-C arrives during step 7
        calls["n"] += 1
        if calls["n"] == 7:
            signal.raise_signal(signal.SIGINT)
        return scoresde.training.losses.DSMLoss(VPSDE())(score_fn, x0, generator)

    with pytest.raises(TrainingInterrupted, match="SIGINT after step 7") as info:
        train(tiny_model(), DATA, config, loss_fn=loss_fn)
    assert info.value.step == 7 and load_checkpoint(tmp_path / "last.pt")["step"] == 7
    assert signal.getsignal(signal.SIGINT) is before
    resumed = train(tiny_model(seed=1), DATA, config, resume=True)  # then bit-identical to a run without Ctrl-C
    full = train(tiny_model(), DATA, replace(config, checkpoint_dir=None))
    assert torch.equal(resumed.losses, full.losses)
    assert all(torch.equal(p, q) for p, q in zip(resumed.ema_model.parameters(), full.ema_model.parameters()))


def test_item1_resume_true_with_nothing_to_resume_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run_app(train_app, *TINY_TRAIN, *QUICK, "resume=true", f"hydra.run.dir={tmp_path / 'new'}")
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "resume=true but" in err and "no last.pt" in err
    assert not (tmp_path / "new").exists()  # refused before Hydra wrote anything
    with pytest.raises(FileNotFoundError, match="no checkpoint .* to resume from"):
        train(tiny_model(), DATA, TrainConfig(num_steps=2, checkpoint_dir=str(tmp_path)), resume=True)


def test_item1_readme_documents_resume():
    readme = (REPO / "README.md").read_text()
    assert "resume=true hydra.run.dir=" in readme


# -- 2. every output location is probed before work ----------------------------------------------------
def test_item2_unwritable_checkpoint_dir_fails_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        run_app(train_app, *TINY_TRAIN, *QUICK, "train.num_steps=100000", f"train.checkpoint_dir={tmp_path}/file/ckpt",
                f"hydra.run.dir={out}")
    assert "train.checkpoint_dir" in capsys.readouterr().err
    record = json.loads((out / "metrics.json").read_text())
    assert record["status"] == "failed" and "train_s" not in record["time"]  # no training happened


def test_item2_probe_writable_names_the_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"checkpoint_dir.*file/sub is not writable"):
        _io.probe_writable(tmp_path / "file" / "sub", "checkpoint_dir")


# -- 4. a refused re-run writes nothing; the hint is command-line syntax ----------------------------------
def test_item4_refused_rerun_writes_nothing(finished_run, capsys):
    before = snapshot(finished_run)
    with pytest.raises(SystemExit) as info:
        run_app(train_app, *TINY_TRAIN, *QUICK, "model.width=64", f"hydra.run.dir={finished_run}")
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert f"resume=true hydra.run.dir={finished_run}" in err and "resume=True" not in err
    assert snapshot(finished_run) == before  # metrics.json, .hydra/config.yaml, last.pt untouched
    assert json.loads((finished_run / "metrics.json").read_text())["status"] == "ok"


def test_item4_sample_refuses_a_training_run_directory(finished_run):
    before = snapshot(finished_run)
    with pytest.raises(SystemExit):
        run_app(sample, *QUICK, f"hydra.run.dir={finished_run}")
    assert snapshot(finished_run) == before


# -- 5. atomic writes; a full disk names the file and ENOSPC; stale temporaries removed --------------------
def _disk_full_for(name, monkeypatch):
    """os.write raises ENOSPC (after a partial write) while writing a temporary file of ``name``."""
    real_write = os.write
    state = {}

    def write(fd, data):
        target = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        if f".{name}." in os.path.basename(target):
            if not state.get("partial"):
                state["partial"] = True
                return real_write(fd, bytes(data[: max(1, len(data) // 2)]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(_io.os, "write", write)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_item5_disk_full_while_writing_samples(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    _disk_full_for("samples.npz", monkeypatch)
    with pytest.raises(SystemExit):
        run_app(sample, *QUICK, f"hydra.run.dir={out}")
    captured = capsys.readouterr()
    message = captured.err + captured.out
    assert f"could not write {out / 'samples.npz'}" in message and "No space left on device" in message
    assert not (out / "samples.npz").exists()  # never half-written
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no temporary file left
    record = json.loads((out / "metrics.json").read_text())
    assert record["status"] == "failed" and "samples.npz" in record["error"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_item5_disk_full_while_writing_a_checkpoint(tmp_path, monkeypatch):
    good = save_checkpoint({"x": torch.ones(3)}, tmp_path / "last.pt").read_bytes()
    _disk_full_for("last.pt", monkeypatch)
    with pytest.raises(OutputError) as info:
        save_checkpoint({"x": torch.zeros(1000)}, tmp_path / "last.pt")
    assert info.value.errno == errno.ENOSPC
    assert str(tmp_path / "last.pt") in str(info.value) and "No space left on device" in str(info.value)
    assert (tmp_path / "last.pt").read_bytes() == good  # the previous checkpoint survives
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_item5_stale_temporaries_are_removed_at_the_next_start(tmp_path):
    stale = [tmp_path / ".last.pt.abc123.tmp", tmp_path / ".metrics.json.x.tmp"]
    for p in stale:
        p.write_bytes(b"")
    train(tiny_model(), DATA, TrainConfig(num_steps=2, batch_size=8, checkpoint_dir=str(tmp_path)))
    assert not any(p.exists() for p in stale)
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2


def test_item5_app_outputs_are_complete_files(finished_run):
    import zipfile

    with zipfile.ZipFile(finished_run / "samples.npz") as z:
        assert z.testzip() is None
    for name in ("samples.png", "loss.png"):
        assert (finished_run / name).read_bytes()[:4] == b"\x89PNG"
    json.loads((finished_run / "metrics.json").read_text())
    assert not [p for p in finished_run.iterdir() if p.name.endswith(".tmp")]


# -- 6. a finite but exploded loss keeps the last good checkpoint -----------------------------------------
def test_item6_exploding_loss_keeps_the_last_good_checkpoint(tmp_path):
    from scoresde.training.losses import DSMLoss

    dsm = DSMLoss(VPSDE())
    calls = {"n": 0}

    def exploding(score_fn, x0, generator, labels=None):  # finite, but 1e20 x larger from step 30 on
        calls["n"] += 1
        loss = dsm(score_fn, x0, generator)
        return loss * (1e20 if calls["n"] > 30 else 1.0)

    config = TrainConfig(num_steps=100, batch_size=16, checkpoint_every=20, check_every=10,
                         checkpoint_dir=str(tmp_path))
    with pytest.raises(LossExplosionError, match="diverged.*last good checkpoint") as info:
        train(tiny_model(), DATA, config, loss_fn=exploding)
    assert info.value.step < 40
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 20 and bool(torch.isfinite(state["losses"]).all()) and float(state["losses"].max()) < 100


def test_item6_lr_1e3_is_stopped(tmp_path):
    config = TrainConfig(num_steps=300, batch_size=64, lr=1e3, grad_clip=None, checkpoint_every=50,
                         checkpoint_dir=str(tmp_path))
    with pytest.raises(scoresde.training.DivergenceError):
        train(tiny_model(), DATA, config)
    assert not (tmp_path / "last.pt").exists()  # diverged before the first checkpoint was due: none written


# -- 8. times checked once at the public boundary, not in loops -------------------------------------------
def test_item8_times_checked_at_the_boundary_and_trusted_inside_loops():
    sde = VPSDE()
    for call in (lambda: sde.sigma(torch.tensor([5.0])), lambda: sde.transition(s=0.9, t=0.1),
                 lambda: tiny_model().score_fn(torch.zeros(2, 2), torch.full((2,), math.nan))):
        with pytest.raises(ValueError, match="`[st]` must"):
            call()
    with trusted_times():  # the samplers' / training loop's path: no check, no host synchronisation
        assert torch.isfinite(sde.sigma(torch.tensor([0.5]))).all()
        sde.sigma(torch.tensor([5.0]))  # not checked here by design
    grid = sde.timesteps(10)
    assert torch.equal(sde.sigma(grid), sde.sigma(grid))  # in-range grids pass


def test_item8_sampler_results_unchanged_by_checks():
    from scoresde.samplers import DDIM

    score = eight_gaussians().score_fn(VPSDE())
    a = DDIM(num_steps=10).sample(score, VPSDE(), (64, 2), generator=torch.Generator().manual_seed(0))
    with trusted_times():
        b = DDIM(num_steps=10).sample(score, VPSDE(), (64, 2), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


# -- 9. training labels ----------------------------------------------------------------------------------
def test_item9_float_labels_and_labels_for_an_unconditional_model_are_errors():
    x = torch.randn(8, 2)
    with pytest.raises(TypeError, match="`labels` must be an integer tensor"):
        train(ScoreMLP(VPSDE(), (2,), width=8, depth=1, num_classes=2), (x, torch.full((8,), 0.7)),
              TrainConfig(num_steps=1, batch_size=4))
    with pytest.raises(ValueError, match="unconditional"):
        train(tiny_model(), (x, torch.zeros(8, dtype=torch.long)), TrainConfig(num_steps=1, batch_size=4))


# -- 14. the loader ----------------------------------------------------------------------------------------
def test_item14_load_rebuilds_model_sde_and_score(finished_run):
    loaded = scoresde.load(finished_run / "last.pt")
    assert repr(loaded.sde) == "VPSDE(beta_min=0.1, beta_max=20.0, t_min=1e-05)"
    assert loaded.event_shape == (2,) and loaded.step == 20 and not loaded.model.training
    x, t = torch.randn(5, 2), torch.full((5,), 0.3)
    assert loaded.score_fn(x, t).shape == (5, 2)
    assert scoresde.load(finished_run).path == finished_run / "last.pt"  # the run directory works too
    raw = scoresde.load(finished_run, ema=False)
    state = load_checkpoint(finished_run / "last.pt")
    assert all(torch.equal(v, state["model"][k]) for k, v in raw.model.state_dict().items())


def test_item14_load_reads_checkpoints_without_the_new_fields(finished_run, tmp_path):
    state = load_checkpoint(finished_run / "last.pt")
    for key in ("model_class", "sde_config"):
        state.pop(key)
    save_checkpoint(state, tmp_path / "old.pt")
    assert repr(scoresde.load(tmp_path / "old.pt").sde) == state["sde"]


def test_item14_load_refuses_a_model_class_outside_scoresde(finished_run, tmp_path):
    state = load_checkpoint(finished_run / "last.pt")
    state["model_class"] = "os.system"
    save_checkpoint(state, tmp_path / "evil.pt")
    with pytest.raises(scoresde.training.checkpoints.CorruptCheckpointError, match="not part of scoresde"):
        scoresde.load(tmp_path / "evil.pt")


# -- 15. install line and conventions in the package --------------------------------------------------------
def test_item15_readme_install_is_editable_and_conventions_are_shipped():
    readme = (REPO / "README.md").read_text()
    assert 'pip install ".[' not in readme and 'pip install -e ".[joblib]"' in readme
    assert "shared/MATH.md" not in readme
    for path in (REPO / "scoresde").rglob("*.py"):
        assert "shared/MATH.md" not in path.read_text(), path
    assert (REPO / "docs" / "conventions.md").is_file()


# -- 16. feedback: output directory at start and end ------------------------------------------------------
def test_item16_output_directory_is_printed_at_start_and_end(tmp_path, capsys):
    out = tmp_path / "out"
    run_app(sample, *QUICK, f"hydra.run.dir={out}")
    text = capsys.readouterr().out
    assert f"output directory {out}" in text and f"results in {out}" in text
    assert text.index("output directory") < text.index("results in")


def test_item16_readme_mentions_progress_and_test_time():
    readme = (REPO / "README.md").read_text()
    assert "progress=true" in readme and re.search(r"test suite .*takes", readme)


# -- 17. user errors are one line -------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_item17_user_error_is_one_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "scoresde.apps.sample", "device=cuda", *QUICK,
                           f"hydra.run.dir={tmp_path / 'out'}"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == ["scoresde-sample: device='cuda' but CUDA is not available on this machine; use device=cpu"]


# -- 18. a basic-launcher sweep with a failed job still writes summary.md ---------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA (the cuda job must fail)")
def test_item18_sweep_with_a_failed_job_writes_the_summary(tmp_path):
    with pytest.raises(SystemExit):
        run_app(sample, "-m", "device=cuda,cpu", *QUICK, f"hydra.sweep.dir={tmp_path}")
    table = (tmp_path / "summary.md").read_text()
    assert "| 0 | failed |" in table and "| 1 | ok |" in table


# -- 19. quick benchmark runs do not overwrite committed results --------------------------------------------
def test_item19_quick_benchmarks_write_to_an_ignored_folder(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_common_quick", REPO / "benchmarks" / "_common.py")
    monkeypatch.setattr(sys, "argv", ["benchmarks/speed.py", "--quick"])
    quick = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quick)
    assert quick.RESULTS == REPO / "benchmarks" / "results" / "quick"
    assert "benchmarks/results/quick/" in (REPO / ".gitignore").read_text().splitlines()
    monkeypatch.setattr(sys, "argv", ["benchmarks/speed.py"])
    full = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(full)
    assert full.RESULTS == REPO / "benchmarks" / "results"
