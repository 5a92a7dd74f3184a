"""Tests for scoresde.models.unet and scoresde.data.images: shapes, labels, determinism, and every sampler on a U-Net.

Every sampler of the config tree (``conf/sampler/*.yaml``, the registry) runs on a tiny
preconditioned U-Net over ``[B, 1, 8, 8]`` images with few steps: the output has the input's
shape and is finite.  That is the shape-genericity contract end to end (STYLE.md point 6).
"""
import dataclasses
from functools import partial

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from scoresde import VESDE, VPSDE
from scoresde.apps import config_dir
from scoresde.apps.schemas import register_schemas
from scoresde.data.images import Shapes
from scoresde.models.precond import Preconditioned
from scoresde.models.unet import UNet

SHAPE = (1, 8, 8)


def tiny_model(sde, num_classes=0, parameterization="eps"):
    model = Preconditioned(sde, SHAPE, backbone=partial(UNet, channels=8, embedding_dim=16), num_classes=num_classes,
                           parameterization=parameterization, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # a non-zero output layer (it starts at zero, and a zero score stalls snr-based steps)
        model.backbone.conv_out.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    return model


def test_unet_shapes_labels_and_zero_init():
    net = UNet((3, 8, 8), channels=8, channel_mult=(1, 2, 2), num_classes=2, generator=torch.Generator().manual_seed(0))
    x, c = torch.randn(5, 3, 8, 8), torch.linspace(-1, 1, 5)
    out = net(x, c)
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(out))  # zero-initialised output conv
    with torch.no_grad():
        net.conv_out.weight.normal_(generator=torch.Generator().manual_seed(1))
    a, b = net(x, c), net(x, c, torch.tensor([0, 1, 0, 1, 2]))
    assert not torch.equal(a, b) and torch.equal(a[4], b[4])  # label 2 = null label = labels None
    with pytest.raises(ValueError, match="divisible"):
        UNet((1, 6, 6), channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="event_shape"):
        UNet((2,))
    with pytest.raises(ValueError, match="expected x"):
        net(torch.randn(2, 3, 4, 4), c[:2])


def test_unet_init_is_deterministic_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = UNet(SHAPE, channels=8, generator=torch.Generator().manual_seed(3))
    b = UNet(SHAPE, channels=8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_shapes_dataset():
    data = Shapes(size=8)
    x, labels = data.sample_with_labels(30, torch.Generator().manual_seed(0))
    assert x.shape == (30, *SHAPE) and data.num_classes == 3
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    assert (x.flatten(1) > 0).any(1).all()  # every image has ink
    assert torch.equal(x, data.sample(30, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="size"):
        Shapes(size=4)


def test_preconditioned_unet_trains_one_step():
    from scoresde.training import TrainConfig, train

    model = tiny_model(VPSDE(), num_classes=3, parameterization="v")
    result = train(model, Shapes(size=8), TrainConfig(num_steps=3, batch_size=4, warmup_steps=0))
    assert result.losses.shape == (3,) and torch.isfinite(result.losses).all()


def sampler_options() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "sampler").glob("*.yaml"))


@pytest.fixture(scope="module")
def sampler_configs():
    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        nodes = {name: compose("sample", overrides=[f"sampler={name}"]).sampler for name in sampler_options()}
    GlobalHydra.instance().clear()
    return nodes


FEW = {"num_steps": 4, "n_steps_each": 1, "steps_per_level": 1, "num_levels": 3}


@pytest.mark.parametrize("name", sampler_options())
@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_every_sampler_runs_on_the_unet(sampler_configs, name, sde):
    sampler = instantiate(sampler_configs[name], _convert_="all")
    fields = {f.name for f in dataclasses.fields(sampler)} if dataclasses.is_dataclass(sampler) else set()
    sampler = dataclasses.replace(sampler, **{k: v for k, v in FEW.items() if k in fields})
    model = tiny_model(sde).eval().requires_grad_(False)
    result = sampler.run(model.score_fn, sde, (2, *SHAPE), generator=torch.Generator().manual_seed(0))
    assert result.x.shape == (2, *SHAPE) and torch.isfinite(result.x).all() and result.nfe > 0
