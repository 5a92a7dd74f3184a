"""Tests for scoresde.training.scaling: mixed precision, gradient accumulation and torch.compile."""
from dataclasses import replace

import pytest
import torch

from scoresde import VPSDE
from scoresde.data.datasets import make_dataset
from scoresde.models.mlp import ScoreMLP
from scoresde.training import TrainConfig, train
from scoresde.training.losses import DSMLoss

CFG = TrainConfig(num_steps=6, batch_size=32, lr=1e-3, warmup_steps=2, ema_decay=0.9, check_every=3)


def model(seed=0, **kw):
    return ScoreMLP(VPSDE(), width=32, depth=2, embedding_dim=16, generator=torch.Generator().manual_seed(seed), **kw)


def data():
    return make_dataset("eight_gaussians").sample(512, torch.Generator().manual_seed(1))


@torch.no_grad()
def max_rel(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((p - q).abs().max() / q.abs().max()) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("conditional", [False, True])
def test_accumulate_k_equals_one_step_of_batch_times_k(conditional):
    """accumulate=4 with batch 8 draws the same 32 samples and noise as batch 32, so after 6 Adam
    steps the weights agree to float32 round-off (the gradient sums in another order: ~1e-7 relative
    per step, amplified a little by Adam's normalisation; 1e-4 is far below any real difference,
    e.g. one step of another batch moves the weights by ~1e-3 relative)."""
    x = data()
    labels = (x[:, 0] > 0).long()
    kw = {"num_classes": 2} if conditional else {}
    d = (x, labels) if conditional else x
    one = train(model(**kw), d, CFG)
    acc = train(model(**kw), d, replace(CFG, batch_size=8, accumulate=4))
    assert max_rel(acc.model, one.model) < 1e-4
    assert max_rel(acc.ema_model, one.ema_model) < 1e-4
    torch.testing.assert_close(acc.losses, one.losses, rtol=1e-5, atol=0)
    other = train(model(**kw), d, replace(CFG, batch_size=8))  # a different batch: clearly different weights
    assert max_rel(other.model, one.model) > 1e-3


def test_bf16_loss_within_its_round_off_of_fp32():
    """The same batch, t and z under autocast(bf16): bf16 keeps 8 significant bits (unit round-off
    u = 2^-8 ~ 3.9e-3); the MLP's 3 matmuls each round their inputs once, so the score's relative
    error is a few u, and the batch mean over 256 samples averages the independent per-sample
    errors down; we allow 3 u = 1.2e-2 relative, and check it is above fp32's own round-off
    (so bf16 really ran)."""
    m = model()
    loss_fn = DSMLoss(m.sde)
    x0 = data()[:256]
    g = torch.Generator().manual_seed(3)
    t, z = loss_fn.sample_time(256, g), torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        fp32 = loss_fn(m.score_fn, x0, t=t, z=z).mean()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = loss_fn(m.score_fn, x0, t=t, z=z).mean()
    rel = abs(float(bf16) - float(fp32)) / float(fp32)
    assert 1e-6 < rel < 3 * 2.0**-8


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_keeps_fp32_weights_and_tracks_fp32(precision, tmp_path):
    """Training under autocast: weights, EMA and checkpoint stay fp32.  The first step's loss (same
    weights, data and noise) is within 3 unit round-offs of fp32 (bf16 u = 2^-8, fp16 u = 2^-11);
    bf16's later losses follow fp32 within 5 % (6 steps of Adam at lr 1e-3).  fp16's GradScaler
    skips the steps whose scaled gradients overflow (its first scale is 2^16), so its later steps
    are not compared; the weights must still have moved."""
    x = data()
    ref = train(model(), x, CFG)
    cfg = replace(CFG, precision=precision, checkpoint_dir=str(tmp_path))
    low = train(model(), x, cfg)
    assert all(p.dtype == torch.float32 for p in [*low.model.parameters(), *low.ema_model.parameters()])
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in ckpt["ema"].values() if v.is_floating_point())
    if precision == "fp16":
        assert "grad_scaler" in ckpt["callbacks"]
    rel = (low.losses - ref.losses).abs() / ref.losses
    assert rel[0] < 3 * (2.0**-8 if precision == "bf16" else 2.0**-11), rel
    if precision == "bf16":
        assert rel.max() < 0.05, rel
    assert max_rel(low.model, model()) > 1e-4


def test_fp16_resume_is_bit_identical(tmp_path):
    """The GradScaler's state travels in the checkpoint: 3 + 3 steps equal 6 steps bit for bit."""
    x = data()
    full = train(model(), x, replace(CFG, precision="fp16"))
    cfg = replace(CFG, precision="fp16", checkpoint_dir=str(tmp_path))
    train(model(), x, replace(cfg, num_steps=3))
    resumed = train(model(), x, cfg, resume=True)
    assert torch.equal(resumed.losses, full.losses)
    assert all(torch.equal(p, q) for p, q in zip(resumed.model.parameters(), full.model.parameters()))


def test_resume_refuses_another_accumulate_or_precision(tmp_path):
    """accumulate and precision change the trajectory (TRAJECTORY_FIELDS): resuming with another value
    is refused, naming the field; a checkpoint written before the fields existed resumes as accumulate=1, fp32."""
    from scoresde.training.checkpoints import CheckpointMismatchError, load_checkpoint, save_checkpoint

    cfg = replace(CFG, checkpoint_dir=str(tmp_path))
    train(model(), data(), replace(cfg, num_steps=3))
    for name, was, other in (("accumulate", 1, 2), ("precision", "'fp32'", "bf16")):
        with pytest.raises(CheckpointMismatchError, match=f"written with {name}={was} but the config has {name}="):
            train(model(), data(), replace(cfg, **{name: other}), resume=True)
    old = load_checkpoint(tmp_path / "last.pt")
    del old["config"]["accumulate"], old["config"]["precision"]
    save_checkpoint(old, tmp_path / "last.pt")
    assert len(train(model(), data(), cfg, resume=True).losses) == CFG.num_steps


def test_bad_values_name_the_option():
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="accumulate"):
        TrainConfig(accumulate=0)
    with pytest.raises(TypeError, match="compile"):
        TrainConfig(compile="yes")
    with pytest.raises(ValueError, match="divisible"):
        train(model(), data(), replace(CFG, batch_size=10, accumulate=4))
    with pytest.raises(ValueError, match="DSMLoss"):
        train(model(), data(), replace(CFG, accumulate=2), loss_fn=lambda score, x0, g, labels=None: x0.sum(1))


def _compiler_works() -> str | None:
    """None if torch.compile can build a CPU kernel here, else the reason."""
    try:
        f = torch.compile(lambda a: a * 2 + 1)
        f(torch.ones(3))
        return None
    except Exception as e:  # noqa: BLE001 -- any failure means: no working compiler here
        return f"torch.compile unavailable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


@pytest.mark.slow
def test_compile_matches_eager():
    """compile=true runs the compiled score; the weights match eager to float round-off (1e-4 relative after 6 steps)."""
    reason = _compiler_works()
    if reason:
        pytest.skip(reason)
    x = data()
    eager = train(model(), x, CFG)
    compiled = train(model(), x, replace(CFG, compile=True))
    assert max_rel(compiled.model, eager.model) < 1e-4
