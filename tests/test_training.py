"""Tests for scoresde.training: learning, bit-identical resume, the non-finite guard, checkpoint safety."""
import math
import os
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from scoresde import VESDE, VPSDE, toy
from scoresde.data.datasets import DataError, make_dataset
from scoresde.training.losses import DSMLoss
from scoresde.models.mlp import ScoreMLP
from scoresde import training
from scoresde.training import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    NonFiniteLossError,
    TrainConfig,
    UnsafeCheckpointError,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    train,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_model(sde=None, seed: int = 0, width: int = 32, **kw) -> ScoreMLP:
    return ScoreMLP(sde or VPSDE(), width=width, depth=2, embedding_dim=16, generator=gen(seed), **kw)


TINY = TrainConfig(num_steps=120, batch_size=64, lr=2e-3, warmup_steps=10, ema_decay=0.99, check_every=20)


class Faulty:
    """Wraps a data set; its ``at``-th draw (1-based) raises KeyboardInterrupt ("interrupt") or,
    from then on, returns NaN batches ("nan")."""

    def __init__(self, base, at: int, mode: str):
        self.base, self.at, self.mode, self.calls = base, at, mode, 0

    @property
    def num_classes(self):
        return self.base.num_classes

    def _fault(self, x):
        self.calls += 1
        if self.calls >= self.at:
            if self.mode == "interrupt":
                raise KeyboardInterrupt
            x = torch.full_like(x, math.nan)
        return x

    def sample(self, n, generator):
        return self._fault(self.base.sample(n, generator))

    def sample_with_labels(self, n, generator):
        x, labels = self.base.sample_with_labels(n, generator)
        return self._fault(x), labels


def assert_same(a, b, where="state"):
    """Recursive torch.equal over nested dicts / lists of tensors and numbers."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def held_out_loss(score_fn, sde, target, n=20_000) -> float:
    g = gen(123)
    x0 = target.sample(n, g)
    with torch.no_grad():
        return DSMLoss(sde)(score_fn, x0, g).mean().item()


def test_tiny_training_run_reduces_the_loss():
    """300 steps on eight Gaussians close most of the gap to the irreducible DSM loss of the exact score."""
    sde, data = VPSDE(), make_dataset("eight_gaussians")
    model = ScoreMLP(sde, width=64, depth=2, generator=gen())
    floor = held_out_loss(data.score_fn(sde), sde, data)
    before = held_out_loss(model.score_fn, sde, data)
    result = train(model, data, TrainConfig(num_steps=300, batch_size=256, lr=2e-3, warmup_steps=20, ema_decay=0.99))
    after_ema = held_out_loss(result.ema_model.score_fn, sde, data)
    assert result.losses.shape == (300,) and torch.isfinite(result.losses).all()
    # the held-out estimates share t, z and x0, so their differences are far more precise than 0.1
    assert before - floor > 1.0, (before, floor)
    assert after_ema - floor < 0.1 * (before - floor), (before, after_ema, floor)
    assert result.losses[-50:].mean() < 0.6 * result.losses[:20].mean()


@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "conditional"])
def test_resume_after_interruption_is_bit_identical(tmp_path, conditional):
    data = make_dataset("eight_gaussians")
    kw = dict(num_classes=8) if conditional else {}
    config = replace(TINY, checkpoint_every=40, label_dropout=0.2)

    full = train(tiny_model(**kw), data, replace(config, checkpoint_dir=str(tmp_path / "a")))

    run_b = replace(config, checkpoint_dir=str(tmp_path / "b"))
    with pytest.raises(KeyboardInterrupt):  # interrupted during step 95 (0-based 94): last checkpoint at 80
        train(tiny_model(**kw), Faulty(data, at=95, mode="interrupt"), run_b)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 80
    resumed = train(tiny_model(seed=99, **kw), data, run_b, resume=True)  # different init: all overwritten

    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(full.ema_model.parameters(), resumed.ema_model.parameters()):
        assert torch.equal(p, q)
    assert torch.equal(full.losses, resumed.losses)
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    for key in ("step", "model", "ema", "optimizer", "generators", "losses"):
        assert_same(a[key], b[key], key)
    # EMA weights load for sampling
    fresh = load_weights(tiny_model(seed=5, **kw), tmp_path / "a" / "last.pt")
    assert all(torch.equal(p, q) for p, q in zip(fresh.parameters(), full.ema_model.parameters()))


def test_nonfinite_guard_keeps_the_last_good_checkpoint(tmp_path):
    data = make_dataset("ncsn_two_modes")
    config = replace(TINY, checkpoint_every=25, check_every=10, checkpoint_dir=str(tmp_path / "run"))
    with pytest.raises(NonFiniteLossError, match=r"non-finite \(nan\) at step 60; the last good checkpoint .*last\.pt \(step 50\) was left untouched") as err:
        train(tiny_model(), Faulty(data, at=61, mode="nan"), config)  # NaN data from step 60 on
    assert err.value.step == 60
    assert sorted(os.listdir(tmp_path / "run")) == ["last.pt"]  # no temp files left behind
    kept = load_checkpoint(tmp_path / "run" / "last.pt")
    # identical to the checkpoint of a clean 50-step run
    clean_dir = tmp_path / "clean"
    train(tiny_model(), data, replace(config, num_steps=50, checkpoint_dir=str(clean_dir)))
    clean = load_checkpoint(clean_dir / "last.pt")
    for key in ("step", "model", "ema", "optimizer", "generators", "losses"):
        assert_same(kept[key], clean[key], key)
    # without checkpoints the error says so
    with pytest.raises(NonFiniteLossError, match="no checkpoint of this run was written"):
        train(tiny_model(), Faulty(data, at=3, mode="nan"), replace(TINY, num_steps=20))


def test_checkpoint_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"x": torch.arange(3)}, path)
    before = path.read_bytes()

    def failing_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)  # torch.save itself: the checkpoint writer calls it
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"x": torch.arange(5)}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    train(tiny_model(), make_dataset("eight_gaussians"), replace(TINY, num_steps=5, checkpoint_dir=str(tmp_path / "ok")))
    return tmp_path / "ok" / "last.pt"


def test_corrupted_or_truncated_checkpoint(tmp_path, checkpoint):
    raw = checkpoint.read_bytes()
    cases = {
        "truncated.pt": raw[: len(raw) // 2],
        "garbage.pt": bytes(range(256)) * 8,
        "empty.pt": b"",
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CorruptCheckpointError, match=rf"checkpoint .*{name} is corrupted or truncated: "):
            load_checkpoint(path)
        with pytest.raises(CorruptCheckpointError, match=name):
            train(tiny_model(), make_dataset("eight_gaussians"), replace(TINY, num_steps=10), resume=path)
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CorruptCheckpointError, match="not a scoresde training checkpoint: format is None"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


class Payload:
    """A custom class: unpickling it needs code from this module."""

    def __init__(self):
        self.weights = torch.ones(2)


class Exploit:
    """Unpickling this would create a marker file (arbitrary code execution)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_with_pickled_code_is_refused(tmp_path, checkpoint):
    state = torch.load(checkpoint, weights_only=True)
    state["model_config"] = Payload()
    torch.save(state, tmp_path / "custom.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"contains pickled code .*weights_only=True.*Payload"):
        load_checkpoint(tmp_path / "custom.pt")
    marker = tmp_path / "pwned"
    torch.save({"format": training.CHECKPOINT_FORMAT, "x": Exploit(marker)}, tmp_path / "exploit.pt")
    with pytest.raises(UnsafeCheckpointError, match="refuses"):
        train(tiny_model(), make_dataset("eight_gaussians"), TINY, resume=tmp_path / "exploit.pt")
    assert not marker.exists()


def test_checkpoint_from_a_different_model_shape(checkpoint):
    data = make_dataset("eight_gaussians")
    with pytest.raises(
        CheckpointMismatchError,
        match=r"parameter 'noise_mlp.0.weight' has shape \(32, 16\) in the checkpoint but \(16, 16\) in the model",
    ):
        train(tiny_model(width=16), data, replace(TINY, num_steps=10), resume=checkpoint)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected entries \['blocks.1.weight', 'blocks.1.bias'\]"):
        load_weights(ScoreMLP(VPSDE(), width=32, depth=1, embedding_dim=16, generator=gen()), checkpoint)
    with pytest.raises(CheckpointMismatchError, match="was written for sde VPSDE"):
        train(tiny_model(VESDE()), data, replace(TINY, num_steps=10), resume=checkpoint)
    with pytest.raises(CheckpointMismatchError, match="written with lr=0.002 but the config has lr=0.001"):
        train(tiny_model(), data, replace(TINY, num_steps=10, lr=1e-3), resume=checkpoint)


def test_existing_checkpoint_is_never_overwritten_silently(checkpoint):
    before = checkpoint.read_bytes()
    config = replace(TINY, num_steps=10, checkpoint_dir=str(checkpoint.parent))
    with pytest.raises(FileExistsError, match="pass resume=True"):
        train(tiny_model(), make_dataset("eight_gaussians"), config)
    assert checkpoint.read_bytes() == before
    # resume=True extends the run (the warm-up-then-constant schedule does not depend on num_steps)
    result = train(tiny_model(), make_dataset("eight_gaussians"), config, resume=True)
    assert load_checkpoint(checkpoint)["step"] == 10 and torch.isfinite(result.losses).all()


def test_empty_or_nonfinite_data_is_refused():
    model = tiny_model()
    with pytest.raises(DataError, match="is empty"):
        train(model, torch.empty(0, 2), TINY)
    bad = toy.eight_gaussians().sample(100, gen())
    bad[17, 0] = math.nan
    with pytest.raises(DataError, match="non-finite values .* first at index 17"):
        train(model, bad, TINY)
    with pytest.raises(DataError, match="`data batch` contains non-finite"):
        train(model, Faulty(make_dataset("eight_gaussians"), at=1, mode="nan"), TINY)
    with pytest.raises(TypeError, match="`data` must be a tensor"):
        train(model, [[0.0, 1.0]] * 3, TINY)
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 2\)"):
        train(tiny_model(num_classes=2), (torch.randn(3, 2), torch.tensor([0, 1, 2])), TINY)
    with pytest.raises(ValueError, match="conditional model needs labels"):
        train(tiny_model(num_classes=2), torch.randn(10, 2, generator=gen()), TINY)


def test_tensor_data_with_labels_is_reproducible():
    x, labels = toy.eight_gaussians().sample_with_labels(500, gen())
    config = replace(TINY, num_steps=20)
    a = train(tiny_model(num_classes=8), (x, labels), config)
    b = train(tiny_model(num_classes=8), (x, labels), config)
    assert torch.equal(a.losses, b.losses)
    c = train(tiny_model(num_classes=8), (x, labels), replace(config, seed=1))
    assert not torch.equal(a.losses, c.losses)
    d = train(tiny_model(num_classes=8), (x, labels), replace(config, optimizer="adamw", weight_decay=0.01, grad_clip=None))
    assert torch.isfinite(d.losses).all() and not torch.equal(a.losses, d.losses)


def test_progress_bar_shows_the_running_loss(capsys):
    train(tiny_model(), make_dataset("two_moons"), replace(TINY, num_steps=20, check_every=10, progress=True))
    assert "loss=" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kw, error, match",
    [
        (dict(num_steps=0), ValueError, "`num_steps` must be >= 1, got 0"),
        (dict(batch_size="512"), TypeError, "`batch_size` must be an integer"),
        (dict(lr=-1e-3), ValueError, "`lr` must be a finite number > 0"),
        (dict(optimizer="sgd"), ValueError, "`optimizer` must be one of"),
        (dict(beta2=1.0), ValueError, r"`beta2` must be in \[0, 1\)"),
        (dict(grad_clip=0.0), ValueError, "`grad_clip`"),
        (dict(ema_decay=1.5), ValueError, "`ema_decay`"),
        (dict(warmup_steps=-1), ValueError, "`warmup_steps` must be >= 0"),
        (dict(checkpoint_every=-5), ValueError, "`checkpoint_every`"),
        (dict(seed=-1), ValueError, "`seed`"),
        (dict(device="gpu0"), ValueError, "`device` must name a torch device"),
        (dict(progress="yes"), TypeError, "`progress` must be a bool"),
    ],
)
def test_config_validation(kw, error, match):
    with pytest.raises(error, match=match):
        TrainConfig(**kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_step_does_not_synchronise():
    """The number of host syncs does not grow with num_steps (all checks are every check_every steps)."""
    data = make_dataset("eight_gaussians")

    def count_syncs(num_steps: int) -> int:
        config = replace(TINY, num_steps=num_steps, check_every=1000, device="cuda")
        model = tiny_model()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                train(model, data, config)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    assert count_syncs(10) == count_syncs(40)
