"""Tests for the training recipe (issue 11): scoresde.training.recipes, DSMLoss's weightings and time samplers,
train()'s optimizer / lr_schedule / iterable data / CSV log, and the conf/ groups that reach them.

Exact checks where there is an identity (schedules, the EDM weighting, the default path being
bit-identical); statistical checks with tolerances derived from the sample size.
"""
import math
from functools import partial

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from scoresde import VESDE, VPSDE, SubVPSDE
from scoresde.apps import config_dir
from scoresde.apps.schemas import register_schemas
from scoresde.data.datasets import DataError, TwoMoons
from scoresde.training.losses import DSMLoss
from scoresde.models.mlp import ScoreMLP
from scoresde.training.recipes import Adam, AdamW, ConstantLR, ImportanceTime, LogNormalSigma, UniformTime, WarmupCosine
from scoresde.training import TrainConfig, train


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def tiny(sde=None):
    return ScoreMLP(sde or VPSDE(), (2,), width=16, depth=1, embedding_dim=8, generator=gen(0))


# -- schedules and optimisers --------------------------------------------------------------------
def test_schedules_exact_values():
    c = ConstantLR(warmup_steps=4)
    assert [c(k, 10) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert ConstantLR(warmup_steps=0)(0, 10) == 1.0
    w = WarmupCosine(warmup_steps=2, min_factor=0.1)
    assert w(0, 12) == 0.5 and w(1, 12) == 1.0
    assert w(2, 12) == pytest.approx(1.0) and w(11, 12) == pytest.approx(0.1)
    assert w(2 + 9 / 2, 12) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: cos(pi/2) = 0
    with pytest.raises(ValueError, match="min_factor"):
        WarmupCosine(min_factor=2.0)
    with pytest.raises(ValueError, match="beta2"):
        Adam(beta2=1.0)


def test_optimizer_factories():
    p = [torch.nn.Parameter(torch.zeros(3))]
    a = Adam(lr=0.1, beta1=0.5)(p)
    assert isinstance(a, torch.optim.Adam) and a.param_groups[0]["betas"] == (0.5, 0.999)
    w = AdamW()(p)
    assert isinstance(w, torch.optim.AdamW) and w.param_groups[0]["weight_decay"] == 0.01


def test_default_path_is_bit_identical_with_explicit_recipe():
    """Adam(lr, betas) + ConstantLR(warmup) + DSMLoss(time_sampler=UniformTime()) == TrainConfig's own path."""
    data = TwoMoons()
    cfg = TrainConfig(num_steps=30, batch_size=32, lr=2e-3, warmup_steps=10, check_every=10)
    ref = train(tiny(), data, cfg).losses
    sde = VPSDE()
    out = train(tiny(sde), data, cfg, optimizer=Adam(lr=2e-3), lr_schedule=ConstantLR(warmup_steps=10),
                loss_fn=DSMLoss(sde, time_sampler=UniformTime())).losses
    assert torch.equal(ref, out)


def test_a_given_optimizer_keeps_its_learning_rate(tmp_path):
    """Without lr_schedule, TrainConfig's warm-up scales the given optimizer's own lr (it used to set config.lr)."""
    log = tmp_path / "log.csv"
    cfg = TrainConfig(num_steps=20, batch_size=16, lr=2e-3, warmup_steps=10, check_every=10)
    train(tiny(), TwoMoons(), cfg, optimizer=Adam(lr=1e-5), log_file=log)
    lrs = [float(r.split(",")[2]) for r in log.read_text().splitlines()[1:]]
    expected = [1e-5 * min(1.0, (k + 1) / 10) for k in range(20)]
    assert lrs == pytest.approx(expected, rel=1e-12, abs=0)


def test_cosine_schedule_reaches_the_optimizer_and_the_csv_log(tmp_path):
    log = tmp_path / "log.csv"
    train(tiny(), TwoMoons(), TrainConfig(num_steps=25, batch_size=16, check_every=10),
          optimizer=AdamW(lr=1e-2), lr_schedule=WarmupCosine(warmup_steps=5), log_file=log)
    rows = log.read_text().splitlines()
    assert rows[0] == "step,loss,lr" and len(rows) == 26
    lrs = [float(r.split(",")[2]) for r in rows[1:]]
    expected = [1e-2 * WarmupCosine(warmup_steps=5)(k, 25) for k in range(25)]
    assert lrs == pytest.approx(expected, rel=1e-5, abs=1e-12)
    assert all(math.isfinite(float(r.split(",")[1])) for r in rows[1:])


# -- iterable data -------------------------------------------------------------------------------
def test_train_accepts_dataloader_and_iterables():
    x = TwoMoons().sample(100, gen(1))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=32, shuffle=True,
                                         generator=gen(2))
    cfg = TrainConfig(num_steps=12, check_every=5, warmup_steps=0)  # 4 batches per epoch: 3 epochs
    assert torch.isfinite(train(tiny(), loader, cfg).losses).all()
    batches = [x[:50], x[50:]]
    assert train(tiny(), batches, cfg).losses.shape == (12,)
    with pytest.raises(DataError, match="ran out"):
        train(tiny(), iter(batches), cfg)
    with pytest.raises(TypeError, match="batch"):
        train(tiny(), [("a", "b", "c")], cfg)
    bad = [torch.full((4, 2), float("nan"))]
    with pytest.raises(DataError):
        train(tiny(), bad, cfg)


def test_conditional_model_uses_labels_from_batches():
    x, y = TwoMoons().sample_with_labels(64, gen(1))
    model = ScoreMLP(VPSDE(), (2,), width=16, depth=1, num_classes=2, generator=gen(0))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    assert train(model, loader, TrainConfig(num_steps=5, warmup_steps=0)).losses.shape == (5,)
    with pytest.raises(ValueError, match="labels"):
        train(ScoreMLP(VPSDE(), (2,), width=8, depth=1, num_classes=2, generator=gen(0)), [x], TrainConfig(num_steps=2))


# -- loss weightings and time samplers -------------------------------------------------------------
@pytest.mark.parametrize("sde", [VPSDE(), VESDE(), SubVPSDE()], ids=["vp", "ve", "subvp"])
def test_edm_weighting_is_edm_loss_on_the_denoiser(sde):
    """lambda_EDM ||D - x0||^2, D = (x_t + sigma^2 s)/alpha, lambda = (sigma~^2 + sd^2)/(sigma~ sd)^2: exact identity."""
    x0 = torch.randn(6, 2, generator=gen(1), dtype=torch.float64)
    z = torch.randn(6, 2, generator=gen(2), dtype=torch.float64)
    t = torch.linspace(0.05, 1.0, 6, dtype=torch.float64)
    score_fn = lambda x, t: torch.sin(x) - x * t[:, None]  # noqa: E731  any score
    sd = 0.7
    loss = DSMLoss(sde, weighting="edm", sigma_data=sd)(score_fn, x0, t=t, z=z)
    alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    x_t = alpha * x0 + sigma * z
    denoised = (x_t + sigma**2 * score_fn(x_t, t)) / alpha
    sv = sde.sigma_ve(t)
    expected = (sv**2 + sd**2) / (sv * sd) ** 2 * (denoised - x0).pow(2).sum(1)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)


def test_lognormal_sigma_distribution():
    """ln sigma~ ~ N(p_mean, p_std^2) (VE: wide range, ~0.3% clipped): median and quartiles within 5 s.e.

    s.e. of the sample median ~ 1.2533 p_std / sqrt(n); of a quartile ~ 1.36 p_std / sqrt(n).
    """
    sde, n = VESDE(sigma_min=0.01, sigma_max=50.0), 40_000
    ts = LogNormalSigma(p_mean=-1.2, p_std=1.2).sample(sde, n, gen(3), dtype=torch.float64)
    assert ts.min() >= sde.t_min and ts.max() <= sde.T
    ls = torch.log(sde.sigma_ve(ts))
    q = torch.quantile(ls, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    expected = torch.tensor([-1.2 - 0.6745 * 1.2, -1.2, -1.2 + 0.6745 * 1.2], dtype=torch.float64)
    assert torch.all((q - expected).abs() < 5 * 1.36 * 1.2 / math.sqrt(n)), (q, expected)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE()], ids=["vp", "subvp"])
def test_importance_time_is_unbiased_and_flattens_the_likelihood_weight(sde):
    sampler, n = ImportanceTime(), 40_000
    t = sampler.sample(sde, n, gen(4), dtype=torch.float64)
    assert t.min() >= sde.t_min and t.max() <= sde.T
    w = sampler.importance_weight(sde, t)
    # (1) with the likelihood weight g^2/sigma^2 the product is (nearly) constant: the table's
    #     piecewise-constant density vs the exact weight differ by the trapezoid error only.
    product = w * (sde.diffusion(t) / sde.sigma(t)) ** 2
    assert float(product.std() / product.mean()) < 0.02
    # (2) unbiased: E_q[f w] = mean of f over U(t_min, T); f(t) = t (exact 0.5 (T + t_min)), tolerance
    #     5 standard errors of the weighted mean.
    f = t * w
    exact = 0.5 * (sde.T + sde.t_min)
    assert abs(float(f.mean()) - exact) < 5 * float(f.std()) / math.sqrt(n), (float(f.mean()), exact)
    # (3) the loss applies the weight to drawn times only
    loss = DSMLoss(sde, weighting="likelihood", time_sampler=sampler)
    x0 = torch.zeros(5, 2, dtype=torch.float64)
    assert loss(lambda x, t: -x, x0, gen(5)).shape == (5,)


def test_importance_time_is_uniform_for_ve():
    """VE: g^2/sigma^2 = 2 ln(sigma_max/sigma_min) is constant, so q is uniform and the weight 1."""
    sde = VESDE()
    t = ImportanceTime().sample(sde, 1000, gen(6), dtype=torch.float64)
    torch.testing.assert_close(ImportanceTime().importance_weight(sde, t), torch.ones_like(t), rtol=1e-6, atol=0)


def test_dsm_loss_checks():
    with pytest.raises(ValueError, match="weighting"):
        DSMLoss(VPSDE(), weighting="edm2")
    with pytest.raises(ValueError, match="sigma_data"):
        DSMLoss(VPSDE(), weighting="edm", sigma_data=0.0)
    with pytest.raises(TypeError, match="time_sampler"):
        DSMLoss(VPSDE(), time_sampler="lognormal")


# -- configs ---------------------------------------------------------------------------------------
@pytest.fixture
def hydra_context():
    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def test_default_train_config_recipe(hydra_context):
    """The default run (issue 12's ablation): wide log-normal noise levels and cosine lr decay, the
    loss, optimiser and experiment left to TrainConfig's own."""
    cfg = compose("train")
    assert all(cfg[k] is None for k in ("loss", "optim", "experiment"))
    assert (cfg.time.p_mean, cfg.time.p_std) == (-0.6, 1.6)
    assert cfg.scheduler._target_.endswith("WarmupCosine")
    assert cfg.plot.animation is False and cfg.model._target_ == "scoresde.models.mlp.ScoreMLP"


@pytest.mark.parametrize("overrides, check", [
    (["loss=edm", "time=lognormal", "optim=adamw", "scheduler=cosine"], "recipe"),
    (["loss=likelihood", "time=importance"], "likelihood"),
    (["model=precond_mlp", "model.parameterization=v"], "precond"),
    (["model=unet", "data=shapes"], "unet"),
    (["experiment=edm_recipe"], "edm"),
    (["experiment=moons_fast"], "moons"),
    (["experiment=likelihood_recipe"], "likelihood_recipe"),
    (["experiment=unet_shapes"], "unet_exp"),
])
def test_recipe_groups_compose_and_instantiate(hydra_context, overrides, check):
    cfg = compose("train", overrides=overrides)
    sde = VPSDE()
    if cfg.loss is not None:
        time_sampler = instantiate(cfg.time) if cfg.time is not None else None
        loss = instantiate(cfg.loss)(sde, time_sampler=time_sampler)
        assert isinstance(loss, DSMLoss)
    if check == "recipe":
        assert loss.weighting == "edm" and isinstance(loss.time_sampler, LogNormalSigma)
        assert isinstance(instantiate(cfg.optim), AdamW) and isinstance(instantiate(cfg.scheduler), WarmupCosine)
    elif check in ("likelihood", "likelihood_recipe"):
        assert loss.weighting == "likelihood" and isinstance(loss.time_sampler, ImportanceTime)
    data = instantiate(cfg.data)
    model = instantiate(cfg.model, _convert_="all")(sde, data.event_shape, generator=gen(0))
    x = data.sample(2, gen(1))
    assert model.score_fn(x, torch.full((2,), 0.5)).shape == x.shape
    if check == "edm":
        assert model.parameterization == "denoiser" and cfg.sampler._target_.endswith("EDMHeun")
        assert cfg.time.p_mean == -0.4
    if check == "moons":
        assert cfg.plot.animation is True and cfg.train.num_steps == 1500
    if check == "precond":
        assert model.parameterization == "v"


@pytest.mark.parametrize("override, message", [
    ("optim.lr=fast", "could not be converted to Float"),
    ("scheduler.warmup_steps=1.5", "could not be converted to Integer"),
    ("time.p_std=wide", "could not be converted to Float"),
    ("loss.weightng=edm", "Key 'weightng' not in"),
])
def test_bad_recipe_values_fail_at_composition(hydra_context, override, message):
    group = override.split(".")[0]
    choice = {"optim": "adam", "scheduler": "cosine", "time": "lognormal", "loss": "dsm"}[group]
    with pytest.raises(ConfigCompositionException) as info:
        compose("train", overrides=[f"{group}={choice}", override])
    assert message in f"{info.value} {info.value.__cause__}"


# -- conditional models: the null label is trained on every batch (issue 11 item 6) ---------------
@pytest.mark.parametrize("null_label_loss", [True, False])
def test_null_label_loss_trains_the_null_label_every_step(null_label_loss):
    """label_dropout = 0: the null label's embedding row moves only through the added null-label term."""
    model = ScoreMLP(VPSDE(), (2,), width=16, depth=1, num_classes=2, generator=gen(0))
    before = model.label_embedding.weight.detach().clone()
    config = TrainConfig(num_steps=2, batch_size=16, label_dropout=0.0, null_label_loss=null_label_loss)
    train(model, TwoMoons(), config)
    moved = ~torch.isclose(model.label_embedding.weight.detach(), before).all(1)
    assert moved[:2].all() and bool(moved[2]) == null_label_loss
    with pytest.raises(TypeError, match="null_label_loss"):
        TrainConfig(null_label_loss="yes")


# Default run (issue 20): CI installs the .[test] extra, which brings the Optuna sweeper, so this runs there.
def test_optuna_preset_runs_a_six_trial_study(tmp_path):
    """hparams_search=pc_snr: 6 Optuna trials of the exact-score sampler app (needs the .[optuna] extra)."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    import yaml

    from scoresde.apps import sample as sample_app
    from test_apps import run_app

    run_app(sample_app, "-m", "hparams_search=pc_snr", "num_samples=300", f"hydra.sweep.dir={tmp_path}")
    result = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert 0.01 <= result["best_params"]["sampler.corrector.snr"] <= 0.5
    assert math.isfinite(result["best_value"])
    assert len([d for d in tmp_path.iterdir() if d.is_dir() and d.name.isdigit()]) == 6


# -- watching a run: CSV log and the reverse-process animation (issue 11 item 4) ------------------
def test_animation_of_the_exact_reverse_process(tmp_path):
    from PIL import Image

    from scoresde.animation import record_trajectory, save_animation
    from scoresde.samplers import DDIM
    from scoresde.data.toy import eight_gaussians

    sde, target = VPSDE(), eight_gaussians()
    frames, times = record_trajectory(DDIM(num_steps=12), target.score_fn(sde), sde, 64, gen(0), max_frames=6)
    assert len(frames) == 6 and all(f.shape == (64, 2) for f in frames) and times[-1] == 0.0
    assert times == sorted(times, reverse=True)
    path = save_animation(frames, tmp_path / "a.gif", times=times, reference=target.sample(64, gen(1)).numpy(), fps=4)
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames > 1


def test_experiment_moons_fast_writes_csv_log_and_animation(tmp_path):
    from scoresde.apps import train as train_app
    from test_apps import run_app

    run_app(train_app, "experiment=moons_fast", "train.num_steps=30", "train.check_every=10", "num_samples=300",
            "plot.animation_points=50", "plot.animation_frames=4", f"hydra.run.dir={tmp_path}")
    rows = (tmp_path / "train_log.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr" and len(rows) == 31
    assert (tmp_path / "animation.gif").stat().st_size > 0


def test_cosine_schedule_in_the_csv_log_is_the_closed_form(tmp_path):
    """The learning rates a run logs, against the schedule written out (issue 20, item 8: the old test compared
    with ``WarmupCosine`` itself): lr_k = 1e-2 (k + 1)/5 for k < 5, then 1e-2 (1 + cos(pi (k - 5)/19))/2,
    reaching 0 at the last step k = 24; with min_factor 0.2 the floor is 2e-3 and the midpoint k = 14.5
    would be 0.6."""
    log = tmp_path / "log.csv"
    train(tiny(), TwoMoons(), TrainConfig(num_steps=25, batch_size=16, check_every=10),
          optimizer=AdamW(lr=1e-2), lr_schedule=WarmupCosine(warmup_steps=5), log_file=log)
    lrs = [float(r.split(",")[2]) for r in log.read_text().splitlines()[1:]]
    expected = [1e-2 * (k + 1) / 5 if k < 5 else 1e-2 * 0.5 * (1 + math.cos(math.pi * (k - 5) / 19)) for k in range(25)]
    assert lrs == pytest.approx(expected, rel=1e-5, abs=1e-12)
    assert lrs[4] == pytest.approx(1e-2) and lrs[24] == pytest.approx(0.0, abs=1e-12)
    w = WarmupCosine(warmup_steps=5, min_factor=0.2)
    assert [w(k, 25) for k in (0, 4, 5, 24)] == pytest.approx([0.2, 1.0, 1.0, 0.2])
    assert w(14.5, 25) == pytest.approx(0.6)
