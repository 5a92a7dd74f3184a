"""Tests for conf/ and scoresde.apps.schemas: every config composes, instantiates and type-checks.

Configs are composed with Hydra's compose API from the real config tree, exactly as the apps do.
"""
import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, InstantiationException, MissingConfigException
from hydra.utils import instantiate

import scoresde
from scoresde import samplers, sdes
from scoresde.data.datasets import MixtureDataset, ToyDataset
from scoresde.models.energy import EnergyMLP
from scoresde.models.mlp import ScoreMLP
from scoresde.models.precond import Preconditioned
from scoresde.training import TrainConfig
from scoresde.apps import config_dir
from scoresde.apps import schemas
from scoresde.apps.schemas import register_schemas

import sampler_registry

CONF = config_dir()
REPO = Path(scoresde.__file__).resolve().parent.parent
GROUPS = ("data", "sde", "model", "sampler", "train")
# the sampler options are derived (one source: conf/sampler/*.yaml and scoresde.samplers' exports)
SAMPLERS = tuple(sampler_registry.yaml_names())
MIXTURES = ("eight_gaussians", "grid_gaussians", "ncsn_two_modes", "anisotropic_mixture")
IMAGE_DATA = ("image_folder", "torchvision", "digits")  # need files / scikit-learn: tests/test_image_data.py builds them


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


_COMPOSED: dict = {}


def composed(group: str, option: str):
    """``conf/train.yaml`` with ``group=option``, composed once per test session (compose is slow-ish)."""
    if (group, option) not in _COMPOSED:
        _COMPOSED[group, option] = compose("train", overrides=[f"{group}={option}"])
    return _COMPOSED[group, option]


@pytest.fixture(autouse=True)
def hydra_context():
    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def test_config_dir_is_the_top_level_conf_of_a_checkout():
    assert CONF == REPO / "conf"
    for group in (*GROUPS, "hydra/launcher"):
        assert (CONF / group).is_dir(), group
    assert (CONF / "train.yaml").is_file() and (CONF / "sample.yaml").is_file()


def test_config_dir_prefers_the_wheel_layout(tmp_path, monkeypatch):
    import scoresde.apps as apps

    (tmp_path / "pkg" / "conf").mkdir(parents=True)
    (tmp_path / "pkg" / "conf" / "train.yaml").write_text("{}\n")
    monkeypatch.setattr(apps, "_PACKAGE_DIR", tmp_path / "pkg")
    assert apps.config_dir() == tmp_path / "pkg" / "conf"
    monkeypatch.setattr(apps, "_PACKAGE_DIR", tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match="config tree"):
        apps.config_dir()


def test_sampler_yamls_and_exported_sampler_classes_correspond():
    """Every conf/sampler yaml targets an exported sampler class, every exported sampler class has a
    yaml and fast test settings, and the Hydra schemas cover exactly the exported classes."""
    targets = {type(sampler_registry.from_yaml(name)) for name in SAMPLERS}
    classes = set(samplers.sampler_classes())
    assert targets == classes
    assert set(samplers.FAST_SETTINGS) == {c.__name__ for c in classes}
    generated = {cls for group, cls in schemas.GENERATED.values() if group == "sampler"}
    assert {g.__name__.removesuffix("Schema") for g in generated} == {c.__name__ for c in classes}


def test_groups_hold_the_expected_options():
    assert {"ve", "vp", "subvp", "ddpm"} == set(options("sde"))
    assert set(MIXTURES) | {"swiss_roll", "two_moons", "circles", "pinwheel", "two_spirals", "checkerboard",
                            "file", "shapes", *IMAGE_DATA} == set(options("data"))
    assert {"mlp", "mlp_score", "mlp_denoiser", "precond_mlp", "unet", "unet_mnist", "ddpmpp_cifar10",
            "mlp_energy"} == set(options("model"))
    assert {"default", "long", "smoke"} <= set(options("train"))
    assert {"none", "cfg", "classifier", "exact"} == set(options("guidance"))
    assert {"none", "pf_ode", "elbo"} == set(options("likelihood"))


@pytest.mark.parametrize("option", options("guidance"))
def test_every_guidance_option_composes_typed(option):
    # guidance nodes are app settings (scoresde.apps.guided builds the wrappers), typed by their schema.
    cfg = compose("sample", overrides=[f"guidance={option}"])
    assert cfg.guidance.kind == option
    if option != "none":
        assert cfg.guidance.scale == 1.0 and cfg.guidance.label is None
        cfg = compose("sample", overrides=[f"guidance={option}", "guidance.scale=3", "guidance.label=2"])
        assert cfg.guidance.scale == 3.0 and cfg.guidance.label == 2
    assert compose("sample").guidance.kind == "none"  # the default


@pytest.mark.parametrize("app", ["train", "sample"])
def test_likelihood_options_compose_and_instantiate(app):
    from omegaconf import OmegaConf
    from scoresde.likelihood import ProbabilityFlowLikelihood

    assert compose(app).likelihood is None
    assert compose(app, overrides=["likelihood=none"]).likelihood is None
    cfg = compose(app, overrides=["likelihood=pf_ode", "likelihood.num_points=64", "likelihood.method=heun"])
    node = OmegaConf.to_container(cfg.likelihood)
    assert node.pop("num_points") == 64 and node.pop("batch_size") > 0
    solver = instantiate(node)
    assert isinstance(solver, ProbabilityFlowLikelihood) and solver.method == "heun"


def test_train_conditional_switch_and_label_dropout():
    cfg = compose("train", overrides=["conditional=true", "train.label_dropout=0.2"])
    assert cfg.conditional is True and instantiate(cfg.train).label_dropout == 0.2
    assert compose("train").conditional is False


@pytest.mark.parametrize("override, message", [
    ("guidance=cfg guidance.scale=abc", "could not be converted to Float"),
    ("guidance=exact guidance.label=1.5", "could not be converted to Integer"),
    ("guidance.scale=2", "Key 'scale' not in 'NoGuidance'"),
    ("guidance=classifier guidance.classifier.num_steps=many", "could not be converted to Integer"),
    ("likelihood=pf_ode likelihood.num_points=x", "could not be converted to Integer"),
    ("likelihood=pf_ode likelihood.rtol=tight", "could not be converted to Float"),
])
def test_bad_guidance_and_likelihood_values_fail_at_composition(override, message):
    with pytest.raises(ConfigCompositionException) as info:
        compose("sample", overrides=override.split())
    assert message in f"{info.value} {info.value.__cause__}"


def test_glob_sweeps_exactly_the_sampler_files():
    # `-m 'sampler=glob(*)'` expands to the group's options: the schema group must not leak in.
    loader = GlobalHydra.instance().config_loader()
    assert sorted(loader.get_group_options("sampler")) == sorted(SAMPLERS)


def _nodes_without_target(node, path=""):
    """Dict nodes (below the group's root) that configure an object but name no _target_."""
    from omegaconf import DictConfig

    missing = [] if "_target_" in node else [path or "<root>"]
    for key, value in node.items():
        if isinstance(value, DictConfig):
            missing += _nodes_without_target(value, f"{path}.{key}" if path else key)
    return missing


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_instantiates_and_names_its_target(group, option, tmp_path):
    cfg = composed(group, option)
    node = cfg[group]
    if (group, option) == ("data", "file"):  # data=file needs data.path (tests/test_data_files.py covers it)
        np.save(tmp_path / "points.npy", np.random.default_rng(0).normal(size=(20, 2)))
        node = compose("train", overrides=["data=file", f"data.path={tmp_path / 'points.npy'}"]).data
    if (group, option) == ("data", "image_folder"):  # needs data.path (an empty folder: not instantiated here)
        node = compose("train", overrides=["data=image_folder", f"data.path={tmp_path}"]).data
    assert _nodes_without_target(node) == []
    if group == "data" and option in IMAGE_DATA:
        return
    obj = instantiate(node, _convert_="all")
    if group == "sampler":
        assert isinstance(obj, samplers.Sampler)
    elif group == "sde":
        assert isinstance(obj, sdes.SDE)
    elif group == "data":
        assert isinstance(obj, ToyDataset)
        assert obj.sample(8, torch.Generator().manual_seed(0)).shape == (8, *obj.event_shape)
        assert isinstance(obj, MixtureDataset) == (option in MIXTURES)
    elif group == "model":
        images = ("unet", "unet_mnist", "ddpmpp_cifar10")  # the U-Net backbone takes images [B, C, H, W]
        shape = (1, 8, 8) if option == "unet" else (1, 16, 16) if option in images else (2,)
        model = obj(sdes.VPSDE(), shape, generator=torch.Generator().manual_seed(0))
        expected = Preconditioned if option in ("precond_mlp", *images) else EnergyMLP if option == "mlp_energy" else ScoreMLP
        assert isinstance(model, expected)
        x, t = torch.randn(4, *shape), torch.full((4,), 0.5)
        assert model.score_fn(x, t).shape == (4, *shape)
    else:
        assert isinstance(obj, TrainConfig)
        assert obj.seed == cfg.seed and obj.device == cfg.device  # interpolated from the root


def test_sampler_configs_mirror_one_class_each():
    def build(name):
        return instantiate(composed("sampler", name).sampler, _convert_="all")

    # Hydra's composed node (schema defaults + yaml) must build the object the yaml alone describes
    # with the class's own defaults: the generated schemas add or change nothing.
    rsde = samplers.ReverseSDE
    expected = {name: sampler_registry.from_yaml(name) for name in SAMPLERS}
    assert expected["euler_maruyama"] == rsde(predictor=samplers.EulerMaruyamaPredictor())
    assert expected["pc_langevin"] == samplers.PredictorCorrector(corrector=samplers.LangevinCorrector(norm="batch"))
    assert expected["probability_flow"] == samplers.ProbabilityFlowODE(method="RK45")
    for name, sampler in expected.items():
        assert build(name) == sampler, name


def test_sde_configs_match_the_library():
    def build(name):
        return instantiate(composed("sde", name).sde)

    assert repr(build("ve")) == repr(sdes.VESDE())
    assert repr(build("vp")) == repr(sdes.VPSDE())
    assert repr(build("subvp")) == repr(sdes.SubVPSDE())
    ddpm = build("ddpm")
    assert isinstance(ddpm, sdes.DiscreteVPSDE)
    torch.testing.assert_close(ddpm.betas, sdes.VPSDE().discrete(1000).betas, rtol=0, atol=0)


def test_model_parameterisations():
    for option, param in (("mlp", "eps"), ("mlp_score", "score"), ("mlp_denoiser", "denoiser")):
        model = instantiate(composed("model", option).model)(sdes.VESDE(), (2,))
        assert model.parameterization == param


def test_overrides_reach_nested_nodes():
    cfg = compose("sample", overrides=["sampler=pc_langevin", "sampler.corrector.snr=0.2", "sampler.num_steps=30",
                                       "data=grid_gaussians", "data.mixture.side=3", "sde=ve", "sde.sigma_max=10"])
    sampler = instantiate(cfg.sampler, _convert_="all")
    assert sampler.corrector == samplers.LangevinCorrector(snr=0.2, norm="batch") and sampler.num_steps == 30
    assert instantiate(cfg.data).mixture.num_components == 9
    assert instantiate(cfg.sde).sigma_max == 10.0


@pytest.mark.parametrize("override, message", [
    ("sampler.num_steps=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
    ("sampler.corrector.snr=abc", "could not be converted to Float"),
    ("sampler.nmu_steps=5", "Key 'nmu_steps' not in 'PredictorCorrectorSchema'"),
    ("data.mixture.std=wide", "could not be converted to Float"),
    ("sde.beta_max=[1]", "could not be converted to Float"),
    ("model.width=abc", "could not be converted to Integer"),
    ("train.lr=fast", "could not be converted to Float"),
    ("train.num_steps=1.5", "could not be converted to Integer"),
    ("eval.repeats=many", "could not be converted to Integer"),
    ("seed=abc", "could not be converted to Integer"),
    ("conditional=maybe", "is not a valid bool"),
    ("colour=red", "Key 'colour' not in 'TrainAppConfig'"),
])
def test_bad_overrides_fail_at_composition_with_hydras_message(override, message):
    with pytest.raises(ConfigCompositionException) as info:
        compose("train", overrides=[override])
    assert message in f"{info.value} {info.value.__cause__}"
    assert override.split("=")[0] in f"{info.value} {info.value.__cause__}"


def test_unknown_option_lists_the_available_ones():
    with pytest.raises(MissingConfigException, match="Could not find 'sampler/nope'") as info:
        compose("sample", overrides=["sampler=nope"])
    assert "ddim" in str(info.value)


def test_appended_unknown_keys_and_bad_values_fail_at_instantiation():
    # `+key=value` bypasses the schema on purpose; the class's signature and checks still refuse it.
    cfg = compose("sample", overrides=["+sampler.nmu_steps=5"])
    with pytest.raises(InstantiationException, match="unexpected keyword argument 'nmu_steps'"):
        instantiate(cfg.sampler)
    cfg = compose("sample", overrides=["sampler.num_steps=0"])
    with pytest.raises(InstantiationException, match="`num_steps` must be >= 1, got 0"):
        instantiate(cfg.sampler)


def test_schemas_follow_the_library_signatures():
    # One generated schema per configured class, defaults equal to the library's own.
    fields = {f.name: f for f in dataclasses.fields(schemas.DDIMSchema)}
    assert fields["_target_"].default == "scoresde.samplers.pc.DDIM"
    assert fields["num_steps"].type is int and fields["num_steps"].default == samplers.DDIM().num_steps
    assert "generator" not in {f.name for f in dataclasses.fields(schemas.ScoreMLPSchema)}
    for name, (group, cls) in schemas.GENERATED.items():
        assert getattr(schemas, name) is cls  # importable by name: pickles into launcher workers


def test_launcher_presets_compose():
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose("sample", overrides=["hydra/launcher=parallel"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 2
    cfg = compose("train", overrides=["hydra/launcher=cluster", "hydra.launcher.partition=gpu"],
                  return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.launcher.partition == "gpu"
    cfg = compose("train", overrides=["hydra/launcher=cluster_local"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("LocalLauncher")


def test_only_the_apps_import_hydra():
    offenders = []
    for path in (REPO / "scoresde").rglob("*.py"):
        if "apps" in path.relative_to(REPO / "scoresde").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("hydra", "omegaconf")]
    assert offenders == []


def test_grid_is_config_selectable_on_every_fixed_step_sampler():
    for name in SAMPLERS:
        sampler = sampler_registry.from_yaml(name)
        if not isinstance(sampler, samplers.FixedGridSampler) or not sampler.uses_grid:
            continue
        cfg = compose("sample", overrides=[f"sampler={name}", "sampler.grid=log_snr"])
        assert instantiate(cfg.sampler, _convert_="all").grid == "log_snr", name
    cfg = compose("sample", overrides=["sampler=ddim", "sampler.grid=karas"])
    with pytest.raises(InstantiationException, match="`grid` must be one of"):
        instantiate(cfg.sampler)


BUILT_IN_DATA = [o for o in options("data") if o not in ("file", "shapes", *IMAGE_DATA)]


@pytest.mark.parametrize("name", BUILT_IN_DATA)
def test_every_built_in_data_set_has_an_experiment_preset(name):
    """Issue 12: ``experiment=<data set>`` exists for each built-in 2-D data set, selects that data set
    and builds a model that runs (its quality is measured by benchmarks/presets.py, not here)."""
    assert (CONF / "experiment" / f"{name}.yaml").exists()
    cfg = compose("train", overrides=[f"experiment={name}"])
    assert cfg.data == composed("data", name).data
    model = instantiate(cfg.model)(sdes.VPSDE(), (2,), generator=torch.Generator().manual_seed(0))
    x, t = torch.randn(4, 2), torch.full((4,), 0.5)
    assert model.score_fn(x, t).shape == (4, 2)
    assert isinstance(instantiate(cfg.sampler), samplers.Sampler)
