"""The energy parameterisation (``scoresde.models.energy.EnergyMLP``): score = -grad E, log_prob = -E.

Exact references: the score against central finite differences of E (float64, step 1e-5: truncation
O(h^2 E''') ~ 1e-9 relative, round-off ~1e-16 |E| / h ~ 1e-10, so 1e-6 relative is a wide margin);
log_prob differences against the line integral of the score (Gauss-Legendre, 20 nodes on a smooth
path: error far below 1e-8).  Training: the same DSM loss on common random numbers (fixed x0, t, z),
so the before/after comparison has no sampling noise.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import scoresde
from scoresde.data.toy import eight_gaussians
from scoresde.models import EnergyMLP, EnergyScore
from scoresde.samplers import (
    FAST_SETTINGS, AnnealedLangevinCorrector, Langevin, MetropolisResult, PredictorCorrector, sampler_classes,
)
from scoresde.sdes import VESDE, VPSDE
from scoresde.training import DSMLoss, TrainConfig, train

SMALL = dict(width=32, depth=1, embedding_dim=16)


def _model(sde, event_shape=(2,), seed=0, **kw):
    return EnergyMLP(sde, event_shape, generator=torch.Generator().manual_seed(seed), **{**SMALL, **kw}).double()


def _points(shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64), 0.05 + 0.9 * torch.rand(shape[0], generator=g, dtype=torch.float64)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
@pytest.mark.parametrize("event_shape", [(2,), (1, 4, 4)], ids=["2d", "image"])
def test_score_is_minus_the_finite_difference_gradient_of_the_energy(sde, event_shape):
    model = _model(sde, event_shape)
    x, t = _points((6, *event_shape))
    score = model.score_fn(x, t)
    assert score.shape == x.shape and score.requires_grad  # parameters need grad: a graph for training
    with torch.no_grad():
        detached = model.score_fn(x, t)  # samplers' mode: gradients switched on inside, result detached
        assert not detached.requires_grad
        h = 1e-5
        fd = torch.zeros_like(x).flatten(1)
        for j in range(fd.shape[1]):
            e = torch.zeros_like(fd)
            e[:, j] = h
            e = e.reshape(x.shape)
            fd[:, j] = (model.energy(x + e, t) - model.energy(x - e, t)) / (2 * h)
    # the same gradient; with create_graph autograd may use other (differentiable) kernels: equal to round-off
    torch.testing.assert_close(detached, score.detach(), rtol=1e-13, atol=1e-13)
    err = (detached.flatten(1) + fd).abs().max() / fd.abs().max()
    assert err < 1e-6, f"relative error of -grad E against finite differences: {err:.2e}"


def test_log_prob_differences_are_line_integrals_of_the_score():
    """log p(b) - log p(a) = int_0^1 s(g(u)) . g'(u) du on a curved path g (exact for a gradient field)."""
    sde = VPSDE()
    model = _model(sde)
    a, t = _points((5, 2), seed=2)
    b, _ = _points((5, 2), seed=3)
    bend = torch.tensor([[0.3, -0.4]], dtype=torch.float64)
    nodes, weights = np.polynomial.legendre.leggauss(20)
    integral = torch.zeros(5, dtype=torch.float64)
    with torch.no_grad():
        for u, w in zip((nodes + 1) / 2, weights / 2):
            point = a + u * (b - a) + 4 * u * (1 - u) * bend
            velocity = (b - a) + 4 * (1 - 2 * u) * bend
            integral += w * (model.score_fn(point, t) * velocity).sum(1)
        diff = model.score_fn.log_prob(b, t) - model.score_fn.log_prob(a, t)
    torch.testing.assert_close(diff, integral, rtol=1e-8, atol=1e-8)
    assert torch.equal(model.score_fn.log_prob(a, t), -model(a, t))


def test_gaussian_base_is_exact_for_normal_data_when_the_network_is_silent():
    """With F = 0, E = ||x||^2 / (2 v): the exact energy of N(0, sigma_d^2) data at time t (both SDEs)."""
    for sde in (VPSDE(), VESDE()):
        model = _model(sde, sigma_data=0.7)
        with torch.no_grad():
            model.backbone.output.weight.zero_()
            model.backbone.output.bias.zero_()
        x, t = _points((7, 2), seed=4)
        v = (sde.sigma(t) ** 2 + sde.alpha(t) ** 2 * 0.49)[:, None]
        torch.testing.assert_close(model.score_fn(x, t).detach(), -x / v)
        torch.testing.assert_close(model.energy(x, t).detach(), (x**2 / (2 * v)).sum(1))


def test_a_few_training_steps_reduce_the_dsm_loss():
    """100 Adam steps of the same DSM loss (create_graph through -grad E) lower it on fixed (x0, t, z)."""
    sde = VPSDE()
    model = _model(sde).float()
    data = eight_gaussians()
    loss = DSMLoss(sde)
    g = torch.Generator().manual_seed(5)
    x0 = data.sample(1024, g)
    t = sde.t_min + (sde.T - sde.t_min) * torch.rand(1024, generator=g)
    z = torch.randn(1024, 2, generator=g)

    def held_out():
        with torch.no_grad():
            return float(loss(model.score_fn, x0, t=t, z=z).mean())

    before = held_out()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(6)
    for _ in range(100):
        optimizer.zero_grad()
        value = loss(model.score_fn, data.sample(256, g), g).mean()
        value.backward()
        optimizer.step()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    after = held_out()
    assert after < 0.7 * before, f"DSM loss {before:.3f} -> {after:.3f}"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A trained-for-20-steps EnergyMLP checkpoint written by scoresde.training.train."""
    out = tmp_path_factory.mktemp("energy")
    model = EnergyMLP(VESDE(sigma_max=3.0), (2,), generator=torch.Generator().manual_seed(0), **SMALL)
    train(model, eight_gaussians(), TrainConfig(num_steps=20, batch_size=64, checkpoint_dir=str(out), warmup_steps=0))
    return out


def test_save_load_round_trip_gives_identical_scores(checkpoint):
    loaded = scoresde.load(checkpoint, ema=False)
    assert isinstance(loaded.model, EnergyMLP) and isinstance(loaded.score_fn, EnergyScore)
    state = torch.load(checkpoint / "last.pt", weights_only=False)
    assert state["model_class"] == "scoresde.models.energy.EnergyMLP"
    rebuilt = EnergyMLP(loaded.sde, **state["model_config"])
    rebuilt.load_state_dict(state["model"])
    x, t = _points((9, 2), seed=7)
    x, t = x.float(), t.float()
    with torch.no_grad():
        assert torch.equal(loaded.score_fn(x, t), rebuilt.score_fn(x, t))
        assert torch.equal(loaded.score_fn.log_prob(x, t), rebuilt.score_fn.log_prob(x, t))
    assert loaded.event_shape == (2,)


def test_mala_and_the_mala_corrector_run_on_a_trained_energy_model(checkpoint):
    """``score_fn.log_prob`` reaches MALA (Langevin) and the PC MALA corrector through scoresde.load."""
    loaded = scoresde.load(checkpoint)
    g = torch.Generator().manual_seed(8)
    result = Langevin(num_steps=20, metropolis=True, t=0.5).run(loaded.score_fn, loaded.sde, (200, 2), generator=g)
    assert isinstance(result, MetropolisResult) and 0 < result.acceptance_rate <= 1 and result.nfe == 42
    pc = PredictorCorrector(num_steps=10, corrector=AnnealedLangevinCorrector(metropolis=True))
    result = pc.run(loaded.score_fn, loaded.sde, (200, 2), generator=g)
    assert isinstance(result, MetropolisResult) and 0 < result.acceptance_rate <= 1
    assert result.nfe == 10 + 4 * 10 and torch.isfinite(result.x).all()


@pytest.mark.parametrize("event_shape", [(2,), (1, 4, 4)], ids=["2d", "image"])
@pytest.mark.parametrize("cls", sampler_classes(), ids=lambda c: c.__name__)
def test_every_sampler_runs_with_an_energy_model(cls, event_shape):
    sde = VPSDE()
    model = EnergyMLP(sde, event_shape, generator=torch.Generator().manual_seed(0), **SMALL).requires_grad_(False)
    sampler = cls(**FAST_SETTINGS.get(cls.__name__, {}))
    result = sampler.run(model.score_fn, sde, (16, *event_shape), generator=torch.Generator().manual_seed(1))
    assert result.x.shape == (16, *event_shape) and torch.isfinite(result.x).all() and result.nfe > 0


def test_pf_ode_likelihood_differentiates_through_the_energy_gradient():
    """The exact PF-ODE divergence needs d(score)/dx: x requires grad, so the score keeps its graph."""
    sde = VPSDE()
    model = _model(sde).requires_grad_(False)
    x, t = _points((4, 2), seed=9)
    xg = x.clone().requires_grad_(True)
    score = model.score_fn(xg, t)
    assert score.requires_grad
    hessian_trace = sum(torch.autograd.grad(score[:, i].sum(), xg, retain_graph=True)[0][:, i] for i in range(2))
    with torch.no_grad():  # -Laplacian of E by finite differences of the score
        h, fd = 1e-5, torch.zeros(4, dtype=torch.float64)
        for i in range(2):
            e = torch.zeros_like(x)
            e[:, i] = h
            fd += (model.score_fn(x + e, t)[:, i] - model.score_fn(x - e, t)[:, i]) / (2 * h)
    torch.testing.assert_close(hessian_trace, fd, rtol=1e-6, atol=1e-6)


def test_bad_inputs_are_named():
    sde = VPSDE()
    with pytest.raises(TypeError, match="`sde`"):
        EnergyMLP("vp")
    with pytest.raises(ValueError, match="`sigma_data`"):
        EnergyMLP(sde, sigma_data=0.0)
    with pytest.raises(ValueError, match="`event_shape`"):
        EnergyMLP(sde, (0, 2))
    with pytest.raises(ValueError, match="`width`"):
        EnergyMLP(sde, width=0)
    model = _model(sde)
    x, t = _points((3, 2))
    with pytest.raises(ValueError, match=r"expected x \[B, \*\(2,\)\] and t \[B\]"):
        model.score_fn(x[:, :1], t)
    with pytest.raises(ValueError, match=r"t \[B\]"):
        model.score_fn(x, t[:2])
    with pytest.raises(TypeError, match="`x` and `t` must be tensors"):
        model.energy(x.numpy(), t)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        model.score_fn(x, t)
    with pytest.raises(ValueError, match="`labels` given to an unconditional"):
        model.score_fn(x, t, labels=torch.zeros(3, dtype=torch.long))
