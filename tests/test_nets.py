"""Tests for scoresde.models.mlp: shapes, the score bridges of each parameterisation, labels, parameter count.

Bridge checks run the network in float64 and compare with the MATH.md formulas written out here
(not via scoresde.bridges), to a relative tolerance of 1e-12 (a few float64 roundings).
"""
import math
from functools import partial

import pytest
import torch

from scoresde import VESDE, VPSDE, SubVPSDE
from scoresde.models.mlp import GaussianFourierEmbedding, ScoreMLP, SinusoidalEmbedding

SDES = {"ve": VESDE(), "vp": VPSDE(), "subvp": SubVPSDE(), "ddpm": VPSDE().discrete(1000)}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def times(sde, b: int, dtype=torch.float32) -> torch.Tensor:
    """b times spread over [t_min, T], both ends included."""
    return torch.linspace(sde.t_min, sde.T, b, dtype=dtype)


@pytest.mark.parametrize("shape", [(2,), (3, 8, 8)])
@pytest.mark.parametrize("parameterization", ["score", "eps", "denoiser"])
@pytest.mark.parametrize("embedding", ["fourier", "sinusoidal"])
def test_output_shapes(shape, parameterization, embedding):
    sde = VPSDE()
    model = ScoreMLP(sde, shape, width=32, depth=2, parameterization=parameterization, embedding=embedding, generator=gen())
    x = torch.randn(5, *shape, generator=gen(1))
    t = times(sde, 5)
    out = model(x, t)
    assert out.shape == (5, *shape) and out.dtype == torch.float32
    score = model.score_fn(x, t)
    assert score.shape == (5, *shape) and torch.isfinite(score).all()


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("noise_input", ["log_sigma", "time"])
def test_score_fn_matches_bridge_formulas(sde_name, noise_input):
    sde = SDES[sde_name]
    x = torch.randn(7, 2, generator=gen(1), dtype=torch.float64)
    t = times(sde, 7, torch.float64)
    alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    kw = dict(width=16, depth=1, noise_input=noise_input)

    eps_model = ScoreMLP(sde, parameterization="eps", generator=gen(), **kw).double()
    torch.testing.assert_close(eps_model.score_fn(x, t), -eps_model(x, t) / sigma, rtol=1e-12, atol=0)

    den_model = ScoreMLP(sde, parameterization="denoiser", generator=gen(), **kw).double()
    torch.testing.assert_close(den_model.score_fn(x, t), (alpha * den_model(x, t) - x) / sigma**2, rtol=1e-12, atol=0)

    score_model = ScoreMLP(sde, parameterization="score", generator=gen(), **kw).double()
    assert torch.equal(score_model.score_fn(x, t), score_model(x, t))

    # scale_by_sigma: the same network (same generator) divided by sigma(t), NCSN style
    scaled = ScoreMLP(sde, parameterization="score", scale_by_sigma=True, generator=gen(), **kw).double()
    torch.testing.assert_close(scaled.score_fn(x, t), score_model(x, t) / sigma, rtol=1e-12, atol=0)


def test_denoiser_preconditioning_is_edm():
    """With data_std set, x0_hat = c_skip x / alpha + c_out F (EDM Table 1 in VE-ised coordinates)."""
    sde = VPSDE()
    kw = dict(width=16, depth=1, parameterization="denoiser", generator=gen())
    pre = ScoreMLP(sde, data_std=0.5, **kw).double()
    x = torch.randn(6, 2, generator=gen(1), dtype=torch.float64)
    t = times(sde, 6, torch.float64)
    alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    s_ve = sigma / alpha
    out = pre(x, t)
    pre.data_std = None  # the same weights without c_in, c_skip, c_out: the bare body F
    body = pre(x / torch.sqrt(alpha**2 * 0.25 + sigma**2), t)
    expected = 0.25 / (s_ve**2 + 0.25) * x / alpha + s_ve * 0.5 / torch.sqrt(s_ve**2 + 0.25) * body
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_float64_input_with_float32_weights():
    sde = VESDE()
    model = ScoreMLP(sde, width=16, depth=1, generator=gen())
    x = torch.randn(4, 2, generator=gen(1), dtype=torch.float64)
    t = times(sde, 4, torch.float64)
    out = model.score_fn(x, t)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), model.score_fn(x.float(), t.float()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_finite_over_the_whole_time_range(sde_name):
    sde = SDES[sde_name]
    for parameterization in ("score", "eps", "denoiser"):
        model = ScoreMLP(sde, width=16, depth=1, parameterization=parameterization, generator=gen())
        x = torch.randn(9, 2, generator=gen(1)) * sde.prior_std
        assert torch.isfinite(model.score_fn(x, times(sde, 9))).all()


def test_labels_and_null_label():
    sde = VPSDE()
    model = ScoreMLP(sde, width=16, depth=1, num_classes=3, generator=gen())
    assert model.null_label == 3
    x = torch.randn(4, 2, generator=gen(1))
    t = times(sde, 4)
    null = torch.full((4,), 3)
    assert torch.equal(model.score_fn(x, t), model.score_fn(x, t, labels=null))
    y = torch.tensor([0, 1, 2, 0])
    conditional = partial(model.score_fn, labels=y)  # a ScoreFn for samplers
    assert not torch.allclose(conditional(x, t), model.score_fn(x, t))
    assert torch.equal(conditional(x, t), model.score_fn(x, t, labels=y))
    with pytest.raises(ValueError, match=r"`labels` must have shape \[B\] = \[1\]"):
        conditional(x[:1], t[:1])
    with pytest.raises(ValueError, match="unconditional"):
        ScoreMLP(sde, width=8, depth=1, generator=gen())(x, t, labels=y)
    assert ScoreMLP(sde, width=8, depth=1, generator=gen()).null_label is None


@pytest.mark.parametrize(
    "kw",
    [dict(), dict(width=32, depth=0), dict(width=64, depth=5, embedding_dim=16, num_classes=10), dict(event_shape=(3, 8, 8)),
     dict(input_features=64), dict(event_shape=(3, 8, 8), input_features=16)],
)
def test_parameter_count_formula(kw):
    kw = dict(kw)
    event_shape = kw.pop("event_shape", (2,))
    model = ScoreMLP(VPSDE(), event_shape, generator=gen(), **kw)
    actual = sum(p.numel() for p in model.parameters())
    assert actual == ScoreMLP.parameter_count(math.prod(event_shape), **kw)
    if not kw and event_shape == (2,):
        assert actual == 75_010  # the number quoted in the module docstring


def test_deterministic_init_without_global_rng():
    state = torch.random.get_rng_state()
    a = ScoreMLP(VPSDE(), width=16, depth=2, num_classes=2, generator=gen(5))
    b = ScoreMLP(VPSDE(), width=16, depth=2, num_classes=2, generator=gen(5))
    c = ScoreMLP(VPSDE(), width=16, depth=2, num_classes=2, generator=gen(6))
    assert torch.equal(state, torch.random.get_rng_state())
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert "embed.freqs" in sa and not any(p is a.embed.freqs for p in a.parameters())  # fixed buffer


def test_input_fourier_features():
    """phi(x) = [x, sin 2 pi B x, cos 2 pi B x] with fixed B ~ N(0, s^2) (Tancik et al. 2020) feeds the first layer."""
    sde = VPSDE()
    plain = ScoreMLP(sde, width=16, depth=1, generator=gen(3))
    off = ScoreMLP(sde, width=16, depth=1, input_features=0, input_fourier_scale=5.0, generator=gen(3))
    assert off.config == plain.config and "input_freqs" not in off.state_dict()  # F = 0: exactly as before
    model = ScoreMLP(sde, width=16, depth=1, input_features=4000, input_fourier_scale=2.0, generator=gen(3))
    freqs = model.input_freqs
    assert freqs.shape == (2000, 2) and not any(p is freqs for p in model.parameters())
    # B_ij ~ N(0, 2^2): the sample std of 4000 draws is within 5 standard errors (2 / sqrt(2 * 4000)) of 2.
    assert abs(freqs.std().item() - 2.0) < 5 * 2.0 / math.sqrt(2 * 4000)
    x, t = torch.randn(5, 2), torch.full((5,), 0.3)
    # The network output equals the body applied by hand to [x c_in, sin, cos].
    alpha, sigma = sde.alpha(t), sde.sigma(t)
    h = x * torch.rsqrt(alpha**2 + sigma**2)[:, None]
    args = 2 * math.pi * h @ freqs.T
    phi = torch.cat([h, torch.sin(args), torch.cos(args)], 1)
    hh = model.input(phi)
    cond = model.noise_mlp(model.embed(0.25 * torch.log(sigma / alpha)))
    hh = hh + model.blocks[0](torch.nn.functional.silu(hh + cond))
    torch.testing.assert_close(model(x, t), model.output(torch.nn.functional.silu(hh)))
    assert model.config["input_features"] == 4000 and model.config["input_fourier_scale"] == 2.0


def test_embeddings():
    c = torch.linspace(-2, 2, 5)
    fourier = GaussianFourierEmbedding(8, scale=3.0, generator=gen())
    e = fourier(c)
    assert e.shape == (5, 8)
    torch.testing.assert_close(e[:, :4] ** 2 + e[:, 4:] ** 2, torch.ones(5, 4))
    sinus = SinusoidalEmbedding(8)
    e = sinus(torch.tensor([0.001]))  # DDPM: timestep 1 -> [sin(f_i), cos(f_i)], f_0 = 1
    torch.testing.assert_close(e[0, 0], torch.sin(torch.tensor(1.0)))
    torch.testing.assert_close(sinus.freqs[-1], torch.tensor(1e-4))


@pytest.mark.parametrize(
    "kw, error, match",
    [
        (dict(parameterization="x0"), ValueError, "`parameterization` must be one of"),
        (dict(parameterization="eps", scale_by_sigma=True), ValueError, "scale_by_sigma"),
        (dict(embedding="learned"), ValueError, "`embedding` must be one of"),
        (dict(embedding_dim=7), ValueError, "even"),
        (dict(width=0), ValueError, "`width` must be >= 1"),
        (dict(noise_input="sigma"), ValueError, "`noise_input`"),
        (dict(data_std=0.0), ValueError, "`data_std`"),
        (dict(num_classes=-1), ValueError, "`num_classes`"),
        (dict(event_shape=(0, 2)), ValueError, "`event_shape`"),
        (dict(input_features=7), ValueError, "`input_features` must be even"),
        (dict(input_features=-2), ValueError, "`input_features` must be >= 0"),
        (dict(input_features=8, input_fourier_scale=0.0), ValueError, "`input_fourier_scale`"),
    ],
)
def test_constructor_validation(kw, error, match):
    kw = dict(kw)
    event_shape = kw.pop("event_shape", (2,))
    with pytest.raises(error, match=match):
        ScoreMLP(VPSDE(), event_shape, generator=gen(), **kw)


def test_input_shape_validation():
    model = ScoreMLP(VPSDE(), (3, 8, 8), width=8, depth=1, generator=gen())
    with pytest.raises(ValueError, match=r"expected x \[B, \*\(3, 8, 8\)\] and t \[B\]"):
        model(torch.randn(2, 192), torch.rand(2))
    with pytest.raises(ValueError, match="and t"):
        model(torch.randn(2, 3, 8, 8), torch.rand(3))
    with pytest.raises(TypeError, match="`sde` must be"):
        ScoreMLP("vp")


def test_backbone_weights_are_those_of_the_shared_initialiser_and_unchanged():
    """``MLPBackbone`` and ``UNet`` share ``models.mlp.init_weights``: PyTorch's default scheme drawn from the
    generator once, in module order, after the Fourier frequencies.  Checked against the scheme written
    out with ``torch.rand`` (equal to one float32 rounding) and against checksums of the weights that
    scoresde 5ecdb6e (before the shared initialiser) drew with the same seed."""
    from scoresde.models.mlp import MLPBackbone

    net = MLPBackbone((2,), width=16, num_classes=3, input_features=4, generator=gen(3))
    g = gen(3)
    torch.randn(net.embed.freqs.numel(), generator=g)  # noise-embedding frequencies, then input features
    torch.randn(net.input_freqs.shape, generator=g)
    for m in net.modules():
        if isinstance(m, torch.nn.Linear):
            b = 1 / m.in_features**0.5
            torch.testing.assert_close(m.weight, torch.rand(m.weight.shape, generator=g) * 2 * b - b, rtol=0, atol=1e-7)
            torch.testing.assert_close(m.bias, torch.rand(m.bias.shape, generator=g) * 2 * b - b, rtol=0, atol=1e-7)
        elif isinstance(m, torch.nn.Embedding):
            torch.testing.assert_close(m.weight, torch.randn(m.weight.shape, generator=g), rtol=0, atol=0)
    flat = torch.cat([p.detach().double().flatten() for p in net.state_dict().values()])
    assert flat.numel() == 2374
    assert flat.sum().item() == pytest.approx(47.53752681100741, rel=1e-12)
    assert (flat * torch.arange(flat.numel(), dtype=torch.float64)).sum().item() == pytest.approx(13652.087090529501, rel=1e-12)


@pytest.mark.parametrize("kw, expected", [
    # time embedding MLP emb -> width -> width: (emb w + w) + (w w + w); input Linear(d + features -> w);
    # depth residual Linear(w -> w); output Linear(w -> d); label embedding (classes + 1) x w
    (dict(), (64 * 128 + 128) + (128 * 128 + 128) + (2 * 128 + 128) + 3 * (128 * 128 + 128) + (128 * 2 + 2)),  # 75 010
    (dict(width=32, depth=0), (64 * 32 + 32) + (32 * 32 + 32) + (2 * 32 + 32) + (32 * 2 + 2)),  # 3 298
    (dict(width=64, depth=5, embedding_dim=16, num_classes=10),
     (16 * 64 + 64) + (64 * 64 + 64) + (2 * 64 + 64) + 5 * (64 * 64 + 64) + (64 * 2 + 2) + 11 * 64),  # 27 074
    (dict(event_shape=(3, 8, 8)),
     (64 * 128 + 128) + (128 * 128 + 128) + (192 * 128 + 128) + 3 * (128 * 128 + 128) + (128 * 192 + 192)),  # 123 840
    (dict(input_features=64),  # the Fourier features' frequencies are fixed (a buffer), their 64 outputs feed the input layer
     (64 * 128 + 128) + (128 * 128 + 128) + ((2 + 64) * 128 + 128) + 3 * (128 * 128 + 128) + (128 * 2 + 2)),  # 83 202
])
def test_parameter_count_by_hand(kw, expected):
    """The trainable parameters layer by layer (issue 20, item 8: the old test compared with the library's own
    ``parameter_count``), and ``parameter_count`` agrees."""
    kw = dict(kw)
    event_shape = kw.pop("event_shape", (2,))
    model = ScoreMLP(VPSDE(), event_shape, generator=gen(), **kw)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    assert ScoreMLP.parameter_count(math.prod(event_shape), **kw) == expected
