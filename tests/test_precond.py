"""Tests for scoresde.models.precond: exact identities of the four parameterisations on a Gaussian target.

An "oracle" backbone recovers (x, t) from what the wrapper feeds it (x_in = c_in x~, c_noise =
ln(sigma~)/4) and returns the exact target of its parameterisation for data N(m, s0^2 I), whose
perturbed marginal is N(alpha m, (alpha^2 s0^2 + sigma^2) I).  The wrapper's ``score_fn`` must then
return the exact score, to float64 rounding (t is recovered in closed form or by 60 bisection
steps, good to ~1e-16), for every SDE.  The formulas below are written out from the module
docstring / Karras et al. 2022 Table 1 / Salimans & Ho 2022, not taken from the module.
"""
from functools import partial

import pytest
import torch
from torch import nn

from scoresde import VESDE, VPSDE, SubVPSDE
from scoresde.bridges import denoiser_to_score, eps_to_score
from scoresde.models.mlp import MLPBackbone, ScoreMLP
from scoresde.models.precond import PARAMETERIZATIONS, Preconditioned, edm_coefficients

SDES = {"ve": VESDE(), "vp": VPSDE(), "subvp": SubVPSDE()}
M, S0 = 0.7, 1.3  # data N(M, S0^2 I)


def gaussian_truth(sde, x, t):
    alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    score = -(x - alpha * M) / (alpha**2 * S0**2 + sigma**2)
    eps = -sigma * score
    x0 = (x + sigma**2 * score) / alpha
    return score, eps, x0


class Oracle(nn.Module):
    """Returns the exact F of ``parameterization`` for the Gaussian data, from (x_in, c_noise) alone."""

    def __init__(self, sde, parameterization, sigma_data):
        super().__init__()
        self.sde, self.p, self.sd = sde, parameterization, sigma_data

    def forward(self, x_in, c_noise):
        sigma_ve = torch.exp(4 * c_noise)
        t = self.sde.t_from_sigma_ve(sigma_ve)
        alpha, sigma = self.sde.alpha(t)[:, None], self.sde.sigma(t)[:, None]
        x = x_in * torch.sqrt(sigma**2 + alpha**2 * self.sd**2)
        score, eps, x0 = gaussian_truth(self.sde, x, t)
        sv, sd = sigma_ve[:, None], self.sd
        root = torch.sqrt(sv**2 + sd**2)
        if self.p == "score":
            return score * torch.sqrt(sigma**2 + alpha**2 * sd**2)
        if self.p == "eps":
            return eps
        a, b = sd / root, sv / root
        v = a * eps - b * x0 / sd
        if self.p == "v":
            return v
        c_skip, c_out = sd**2 / (sv**2 + sd**2), sv * sd / root
        return (x0 - c_skip * x / alpha) / c_out  # EDM's F target


def inputs(sde, b=9):
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(max(sde.t_min, 1e-3), sde.T, b, dtype=torch.float64)
    return torch.randn(b, 2, generator=g, dtype=torch.float64) * 2, t


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
@pytest.mark.parametrize("sigma_data", [1.0, 0.5])
def test_exact_backbone_gives_exact_score(sde_name, parameterization, sigma_data):
    sde = SDES[sde_name]
    model = Preconditioned(sde, (2,), backbone=Oracle(sde, parameterization, sigma_data),
                           parameterization=parameterization, sigma_data=sigma_data)
    x, t = inputs(sde)
    score, eps, x0 = gaussian_truth(sde, x, t)
    # 1e-7: the oracle's t comes back from sigma~ with a relative error of ~1e-15 (bisection for
    # sub-VP), which the small-noise end (sigma ~ 1e-4 at t = 1e-3) amplifies by up to ~1e8 / 1e1.
    torch.testing.assert_close(model.score_fn(x, t), score, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(model.denoise(x, t), x0, rtol=1e-7, atol=1e-7)
    out = model(x, t)
    expected = {"score": score, "eps": eps, "denoiser": x0}.get(parameterization)
    if expected is not None:
        torch.testing.assert_close(out, expected, rtol=1e-7, atol=1e-7)


def test_v_is_salimans_ho_for_vp_with_unit_sigma_data():
    """VP, sigma_d = 1: the v target is alpha eps - sigma x0 (Salimans & Ho 2022, sec. 4)."""
    sde = VPSDE()
    x, t = inputs(sde)
    score, eps, x0 = gaussian_truth(sde, x, t)
    alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    v_model = Preconditioned(sde, (2,), backbone=Oracle(sde, "v", 1.0), parameterization="v")
    torch.testing.assert_close(v_model(x, t), alpha * eps - sigma * x0, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_scores_agree_with_the_bridges(sde_name):
    """A random backbone: eps via bridges.eps_to_score, denoiser via bridges.denoiser_to_score (float64);
    v is the denoiser with the backbone's sign flipped."""
    sde = SDES[sde_name]
    x, t = inputs(sde)
    make = partial(MLPBackbone, width=16, depth=1)
    for p in ("eps", "denoiser", "v"):
        model = Preconditioned(sde, (2,), backbone=make, parameterization=p, sigma_data=0.8,
                               generator=torch.Generator().manual_seed(3)).double()
        bridge = eps_to_score(model, sde) if p == "eps" else denoiser_to_score(model.denoise, sde)
        torch.testing.assert_close(model.score_fn(x, t), bridge(x, t), rtol=1e-10, atol=1e-10)
    den = Preconditioned(sde, (2,), backbone=make, parameterization="denoiser",
                         generator=torch.Generator().manual_seed(3)).double()
    v = Preconditioned(sde, (2,), backbone=make, parameterization="v", generator=torch.Generator().manual_seed(3)).double()
    with torch.no_grad():
        v.backbone.output.weight.neg_()
        v.backbone.output.bias.neg_()
    torch.testing.assert_close(v.score_fn(x, t), den.score_fn(x, t), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_score_mlp_is_the_mlp_backbone_with_eps_preconditioning(sde_name):
    """ScoreMLP(eps, data_std=1) == Preconditioned(MLPBackbone, eps, sigma_data=1) with the same weights."""
    sde = SDES[sde_name]
    x, t = inputs(sde)
    legacy = ScoreMLP(sde, (2,), width=16, depth=2, generator=torch.Generator().manual_seed(4)).double()
    model = Preconditioned(sde, (2,), backbone=partial(MLPBackbone, width=16, depth=2),
                           generator=torch.Generator().manual_seed(4)).double()
    assert list(legacy.state_dict()) == [k.removeprefix("backbone.") for k in model.state_dict()]
    torch.testing.assert_close(model.score_fn(x, t), legacy.score_fn(x, t), rtol=1e-12, atol=1e-12)


def test_edm_coefficients_table1():
    sde = VESDE()
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    c = edm_coefficients(sde, t, 0.5)
    s = sde.sigma(t)
    torch.testing.assert_close(c["c_skip"], 0.25 / (s**2 + 0.25))
    torch.testing.assert_close(c["c_out"], s * 0.5 / torch.sqrt(s**2 + 0.25))
    torch.testing.assert_close(c["c_in"], 1 / torch.sqrt(s**2 + 0.25))
    torch.testing.assert_close(c["c_noise"], torch.log(s) / 4)


def test_labels_and_checks():
    sde = VPSDE()
    seen = {}

    class Cond(nn.Module):
        def forward(self, x, c_noise, labels):
            seen["labels"] = labels
            return torch.zeros_like(x)

    model = Preconditioned(sde, (2,), backbone=Cond(), num_classes=3)
    x, t = torch.randn(4, 2), torch.full((4,), 0.5)
    model.score_fn(x, t)
    assert seen["labels"].tolist() == [3] * 4 and model.null_label == 3
    model.score_fn(x, t, torch.tensor([0, 1, 2, 3]))
    assert seen["labels"].tolist() == [0, 1, 2, 3]
    plain = Preconditioned(sde, (2,), backbone=partial(MLPBackbone, width=8))
    with pytest.raises(ValueError, match="labels"):
        plain.score_fn(x, t, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="parameterization"):
        Preconditioned(sde, (2,), backbone=partial(MLPBackbone, width=8), parameterization="x1")
    with pytest.raises(ValueError, match="sigma_data"):
        Preconditioned(sde, (2,), backbone=partial(MLPBackbone, width=8), sigma_data=0)
    with pytest.raises(TypeError, match="backbone"):
        Preconditioned(sde, (2,), backbone=3)
    with pytest.raises(ValueError, match="expected x"):
        plain.score_fn(torch.randn(4, 3), t)


def test_factory_is_deterministic_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = Preconditioned(VPSDE(), (2,), backbone=partial(MLPBackbone, width=8), generator=torch.Generator().manual_seed(1))
    b = Preconditioned(VPSDE(), (2,), backbone=partial(MLPBackbone, width=8), generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert a.config["backbone"] == "scoresde.models.mlp.MLPBackbone" and a.config["backbone_config"]["width"] == 8


@pytest.mark.parametrize("backbone_kw", [{}, {"input_features": 16, "input_fourier_scale": 0.5}])
def test_checkpoint_of_a_preconditioned_model_loads(tmp_path, backbone_kw):
    """model_config records the backbone's class path and config: scoresde.load rebuilds the same model
    (with input Fourier features: the same frequencies, a buffer of the state dict)."""
    import scoresde
    from scoresde.training import TrainConfig, train

    model = Preconditioned(VPSDE(), (2,), backbone=partial(MLPBackbone, width=8, depth=1, **backbone_kw),
                           parameterization="v", sigma_data=0.7, generator=torch.Generator().manual_seed(0))
    result = train(model, torch.randn(64, 2, generator=torch.Generator().manual_seed(1)),
                   TrainConfig(num_steps=3, batch_size=8, checkpoint_dir=str(tmp_path)))
    loaded = scoresde.load(tmp_path)
    assert isinstance(loaded.model, Preconditioned) and loaded.model.config == model.config
    x, t = torch.randn(4, 2), torch.full((4,), 0.3)
    torch.testing.assert_close(loaded.score_fn(x, t), result.ema_model.score_fn(x, t))
    if backbone_kw:
        torch.testing.assert_close(loaded.model.backbone.input_freqs, model.backbone.input_freqs, rtol=0, atol=0)
    with pytest.raises(ValueError, match="inside scoresde"):
        Preconditioned(VPSDE(), (2,), backbone="os.system")


# -- one source of the EDM coefficients (issue 16) ---------------------------------------------------------------


def test_scoremlp_and_preconditioned_read_the_coefficients_from_bridges():
    """``edm_coefficients`` lives in ``scoresde.bridges`` (maths, below models/); precond re-exports it."""
    from scoresde import bridges

    assert edm_coefficients is bridges.edm_coefficients


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("sigma_data", [1.0, 0.5])
def test_scoremlp_denoiser_is_preconditioned_mlp_denoiser(sde_name, sigma_data):
    """With the same weights, ``ScoreMLP(parameterization="denoiser", data_std=s)`` is
    ``Preconditioned(MLPBackbone, "denoiser", sigma_data=s)``: the same network output D and score,
    to float64 rounding (the two multiply c_skip and 1/alpha in another order; the score of the
    latter is the cancellation-free form, which differs from Tweedie's inverse by a few ulps of x/sigma^2)."""
    sde = SDES[sde_name]
    x, t = inputs(sde)
    legacy = ScoreMLP(sde, (2,), width=16, depth=2, parameterization="denoiser", data_std=sigma_data,
                      generator=torch.Generator().manual_seed(4)).double()
    model = Preconditioned(sde, (2,), backbone=partial(MLPBackbone, width=16, depth=2), parameterization="denoiser",
                           sigma_data=sigma_data, generator=torch.Generator().manual_seed(4)).double()
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), legacy(x, t), rtol=1e-13, atol=1e-13)
        scale = (x.abs() / sde.sigma(t)[:, None] ** 2).max()
        torch.testing.assert_close(model.score_fn(x, t), legacy.score_fn(x, t), rtol=1e-12, atol=float(1e-13 * scale))
