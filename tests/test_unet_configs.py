"""Tests for the configurable U-Net (scoresde.models.unet, issue 19): the parameter count against a
formula written out by hand, shapes, attention / dropout / embeddings / labels, the named configs,
and every sampler on the DDPM layout."""
from functools import partial

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from scoresde import VPSDE
from scoresde.apps import config_dir
from scoresde.apps.schemas import register_schemas
from scoresde.models.precond import Preconditioned
from scoresde.models.unet import UNet

from sampler_registry import fast_yaml_samplers


# -- the parameter count, by hand ----------------------------------------------------------------


def conv(k, cin, cout):
    return k * k * cin * cout + cout


def lin(i, o):
    return i * o + o


def gn(c):
    return 2 * c


def resblock(cin, cout, e):
    """GN, 3x3 conv, the embedding's Linear, GN, 3x3 conv, and a 1x1 skip when the width changes."""
    return gn(cin) + conv(3, cin, cout) + lin(e, cout) + gn(cout) + conv(3, cout, cout) + (conv(1, cin, cout) if cin != cout else 0)


def attention(c):
    """GN, the 1x1 qkv conv (c -> 3c) and the 1x1 output projection."""
    return gn(c) + conv(1, c, 3 * c) + conv(1, c, c)


def formula(c_img, height, channels, mult, blocks, emb_dim=64, emb_mult=2, attn=(), classes=0, layout="compact",
            middle_attention=False):
    """Parameters of UNet as its module docstring describes it (the Fourier frequencies are a buffer)."""
    e = emb_mult * channels
    total = lin(emb_dim, e) + lin(e, e) + (classes + 1) * e * (classes > 0) + conv(3, c_img, channels)
    widths = [channels * m for m in mult]
    res = [height // 2**i for i in range(len(mult))]
    ch = channels
    if layout == "compact":
        kept = []
        for i, w in enumerate(widths):
            for _ in range(blocks):
                total += resblock(ch, w, e) + (attention(w) if res[i] in attn else 0)
                ch = w
            kept.append(ch)
            total += conv(3, ch, ch) if i < len(widths) - 1 else 0
        total += resblock(ch, ch, e) + ((attention(ch) + resblock(ch, ch, e)) if middle_attention else 0)
        for i in reversed(range(len(widths))):
            total += resblock(ch + kept[i], widths[i], e) + (attention(widths[i]) if res[i] in attn else 0)
            ch = widths[i]
            total += conv(3, ch, ch) if i > 0 else 0
    else:
        kept = [ch]
        for i, w in enumerate(widths):
            for _ in range(blocks):
                total += resblock(ch, w, e) + (attention(w) if res[i] in attn else 0)
                ch = w
                kept.append(ch)
            if i < len(widths) - 1:
                total += conv(3, ch, ch)
                kept.append(ch)
        total += 2 * resblock(ch, ch, e) + attention(ch)
        for i in reversed(range(len(widths))):
            for _ in range(blocks + 1):
                total += resblock(ch + kept.pop(), widths[i], e) + (attention(widths[i]) if res[i] in attn else 0)
                ch = widths[i]
            total += conv(3, ch, ch) if i > 0 else 0
    return total + gn(ch) + conv(3, ch, c_img)


CASES = [
    dict(c_img=1, height=16, channels=32, mult=(1, 2), blocks=1),  # the default
    dict(c_img=1, height=16, channels=16, mult=(1, 2), blocks=1),  # conf/model/unet.yaml
    dict(c_img=3, height=16, channels=8, mult=(1, 2, 2), blocks=2, attn=(8,), classes=3, middle_attention=True),
    dict(c_img=1, height=16, channels=8, mult=(1, 2, 3), blocks=2, attn=(16, 4), layout="ddpm", emb_mult=4),
    dict(c_img=3, height=8, channels=16, mult=(2, 2), blocks=1, classes=10, layout="ddpm", emb_dim=32),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.get('layout', 'compact')}-{c['channels']}-{c['mult']}")
def test_parameter_count_matches_the_formula(case):
    net = UNet((case["c_img"], case["height"], case["height"]), channels=case["channels"], channel_mult=case["mult"],
               num_res_blocks=case["blocks"], embedding_dim=case.get("emb_dim", 64), emb_mult=case.get("emb_mult", 2),
               attn_resolutions=case.get("attn", ()), num_classes=case.get("classes", 0),
               layout=case.get("layout", "compact"), middle_attention=case.get("middle_attention", False),
               generator=torch.Generator().manual_seed(0))
    assert net.num_parameters == sum(p.numel() for p in net.parameters()) == formula(**case)


@pytest.fixture(scope="module")
def model_configs():
    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        nodes = {name: compose("train", overrides=[f"model={name}"]).model for name in ("unet", "unet_mnist", "ddpmpp_cifar10")}
    GlobalHydra.instance().clear()
    return nodes


def test_named_configs_have_their_papers_sizes(model_configs):
    """conf/model/ddpmpp_cifar10 (about 56 M in EDM; 53.6 M here, resampling by convolutions),
    unet_mnist (1.5 M) and the tiny unet (97 k): counts from the formula, the CIFAR-10 one also built."""
    cifar = dict(c_img=3, height=32, channels=128, mult=(2, 2, 2), blocks=4, emb_dim=128, emb_mult=4, attn=(16,),
                 layout="ddpm")
    assert formula(**cifar) == 53_634_563
    model = instantiate(model_configs["ddpmpp_cifar10"], _convert_="all")(VPSDE(), (3, 32, 32))
    assert sum(p.numel() for p in model.parameters()) == formula(**cifar)
    assert 50e6 < formula(**cifar) < 60e6
    mnist = instantiate(model_configs["unet_mnist"], _convert_="all")(VPSDE(), (1, 28, 28))
    assert sum(p.numel() for p in mnist.parameters()) == formula(c_img=1, height=28, channels=32, mult=(1, 2, 2),
                                                                  blocks=2, layout="ddpm")
    tiny = instantiate(model_configs["unet"], _convert_="all")(VPSDE(), (1, 16, 16))
    assert sum(p.numel() for p in tiny.parameters()) == 97_265


# -- shapes and options ---------------------------------------------------------------------------


def small(**kw):
    return UNet((3, 8, 8), channels=8, channel_mult=(1, 2), num_res_blocks=1, layout="ddpm", attn_resolutions=(4,),
                generator=torch.Generator().manual_seed(0), **kw)


def test_ddpm_layout_shapes_labels_and_identity_start():
    net = small(num_classes=4, num_heads=2, embedding="positional", skip_rescale=True, norm_groups=32)
    x, c = torch.randn(5, 3, 8, 8), torch.rand(5)
    out = net(x, c, torch.tensor([0, 1, 2, 3, 4]))  # 4: the null label
    assert out.shape == (5, 3, 8, 8) and torch.equal(out, torch.zeros_like(out))  # zero output convolution
    with torch.no_grad():
        net.conv_out.weight.normal_(generator=torch.Generator().manual_seed(1))
    a, b = net(x, c, torch.zeros(5, dtype=torch.long)), net(x, c, torch.ones(5, dtype=torch.long))
    assert not torch.allclose(a, b)  # the label matters
    assert all(torch.equal(m.proj.weight, torch.zeros_like(m.proj.weight))
               for m in net.modules() if type(m).__name__ == "_Attention")
    assert "freqs" in dict(net.embed.named_buffers()) and type(net.embed).__name__ == "SinusoidalEmbedding"


def test_dropout_is_random_in_training_and_off_in_eval():
    net = small(dropout=0.5)
    with torch.no_grad():
        net.conv_out.weight.normal_(generator=torch.Generator().manual_seed(1))
    x, c = torch.randn(2, 3, 8, 8), torch.rand(2)
    assert not torch.equal(net.train()(x, c), net(x, c))
    assert torch.equal(net.eval()(x, c), net(x, c))


@pytest.mark.parametrize("bad, match", [
    (dict(attn_resolutions=(3,)), "attn_resolutions"), (dict(layout="wide"), "layout"),
    (dict(dropout=1.0), "dropout"), (dict(embedding="learned"), "embedding"), (dict(num_heads=3), "num_heads"),
])
def test_bad_options_name_the_parameter(bad, match):
    kw = dict(channels=8, channel_mult=(1, 2), attn_resolutions=(4,), generator=torch.Generator().manual_seed(0))
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        UNet((3, 8, 8), **kw)


# -- every sampler on the DDPM layout ------------------------------------------------------------

FEW = {"num_steps": 3, "n_steps_each": 1, "steps_per_level": 1, "num_levels": 2}


@pytest.mark.parametrize("name, sampler", sorted(fast_yaml_samplers().items()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_sampler_runs_on_the_ddpm_layout(name, sampler):
    import dataclasses

    if getattr(sampler, "metropolis", False):
        pytest.skip(f"{name}: a Metropolis test needs a log-density, which a score network does not have")
    sde = VPSDE()
    sampler = dataclasses.replace(sampler, **{k: v for k, v in FEW.items() if k in {f.name for f in dataclasses.fields(sampler)}})
    model = Preconditioned(sde, (1, 8, 8), parameterization="denoiser", num_classes=0,
                           backbone=partial(UNet, channels=8, channel_mult=(1, 2), layout="ddpm", attn_resolutions=(4,),
                                            embedding_dim=16),
                           generator=torch.Generator().manual_seed(0)).eval().requires_grad_(False)
    result = sampler.run(model.score_fn, sde, (2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    assert result.x.shape == (2, 1, 8, 8) and torch.isfinite(result.x).all() and result.nfe > 0
