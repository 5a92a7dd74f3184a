"""Tests for the adaptive recipe (issue 21): ``quality.choose_input_features`` and ``scoresde-train auto=...``.

* The pilots choose the first candidate whose check is at floor, else the last (a stand-in sampler
  gives exact draws for one candidate, a 1.5x wider law for the others).
* ``scoresde-train data=file`` (auto by default) records what it decided, samples from ``best.pt``
  and says so (with its ``quality.cooldown``, checked at the boundary); ``auto=false data.validation=0``
  writes no check files, and turning checks on
  leaves the trained weights and (with ``quality.final=last``) the samples bit for bit the same.
* auto's final sampler (``quality.sampler``, Euler-Maruyama 400) replaces only a sampler left at
  its default, and is what thin data need: with the exact score of a thin curve, PC-200 (the
  default, the same 400 NFE) leaves far more samples below the 1 % density level.
"""
import json
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from scoresde import sdes
from scoresde.apps import train as train_app
from scoresde.data.datasets import MixtureDataset
from scoresde.data.toy import GaussianMixture, eight_gaussians
from scoresde.evaluation import FloorCache, assess
from scoresde.models import ScoreMLP
from scoresde.samplers import PredictorCorrector, ReverseSDE, SampleResult
from scoresde.training import TrainConfig, load_checkpoint
from scoresde.training.quality import QualityCheck, choose_input_features

from test_apps import run_app

DATA = MixtureDataset(eight_gaussians())
TARGET = DATA.mixture
CACHE = FloorCache()


@dataclass(frozen=True)
class GoodFor:
    """Exact draws of the target for a model with ``features`` input features, 1.5x wider ones otherwise."""

    target: Any
    features: int

    def run(self, score_fn, sde, shape, *, generator=None, **kwargs):
        good = score_fn.__self__.config.get("input_features", 0) == self.features
        return SampleResult(self.target.sample(shape[0], generator, dtype=torch.float64) * (1.0 if good else 1.5), 0)


def make(features):
    return ScoreMLP(sdes.VPSDE(), (2,), width=32, input_features=features, generator=torch.Generator().manual_seed(0))


CONFIG = TrainConfig(num_steps=10_000, batch_size=64, check_every=20)


@pytest.mark.parametrize("good", [0, 64])
def test_the_first_candidate_at_floor_is_chosen_else_the_last(good):
    """Plain MLP first: chosen when its pilot is at floor (exact draws), else the last candidate, unpiloted."""
    check = QualityCheck(TARGET, num_samples=400, sampler=GoodFor(TARGET, good), cache=CACHE)
    choice = choose_input_features(make, DATA, CONFIG, TARGET, candidates=(0, 64), pilot_steps=20, check=check)
    assert choice["input_features"] == good and choice["pilot_steps"] == 20
    [pilot] = choice["pilots"]  # one pilot: the plain MLP's (the last candidate needs none)
    assert pilot["input_features"] == 0 and pilot["step"] == 20 and pilot["cpu_s"] > 0
    assert pilot["overall"] == ("at floor" if good == 0 else "above floor")
    assert check.records == []  # the pilots do not count as checks of the run


def test_pilots_stop_at_the_first_at_floor_and_a_single_candidate_needs_none():
    check = QualityCheck(TARGET, num_samples=400, sampler=GoodFor(TARGET, 32), cache=CACHE)
    choice = choose_input_features(make, DATA, CONFIG, TARGET, candidates=(0, 32, 64), pilot_steps=10, check=check)
    assert choice["input_features"] == 32 and [p["input_features"] for p in choice["pilots"]] == [0, 32]
    choice = choose_input_features(make, DATA, CONFIG, TARGET, candidates=(0, 64, 32), pilot_steps=10, check=check)
    assert choice["input_features"] == 32 and [p["input_features"] for p in choice["pilots"]] == [0, 64]
    choice = choose_input_features(make, DATA, CONFIG, TARGET, candidates=(64,), pilot_steps=10, check=check)
    assert choice["input_features"] == 64 and choice["pilots"] == []


def test_bad_arguments():
    with pytest.raises(ValueError, match="`pilot_steps` must be an integer >= 1"):
        choose_input_features(make, DATA, CONFIG, TARGET, pilot_steps=0)
    with pytest.raises(ValueError, match="`candidates` must name"):
        choose_input_features(make, DATA, CONFIG, TARGET, candidates=())


@pytest.mark.parametrize("cooldown", [-0.1, 1.5])
def test_app_rejects_a_cooldown_outside_0_1_naming_the_key(cooldown):
    quality = {"every": None, "num_samples": 2000, "patience": 3, "budget": 20000, "pilot_steps": 2000,
               "candidates": [0, 64], "final": "best", "cooldown": cooldown}
    cfg = OmegaConf.create({"auto": True, "resume": False, "model": {"input_features": 0}, "quality": quality})
    with pytest.raises(ValueError, match=r"`quality.cooldown` must be in \[0, 1\]"):
        train_app._quality_plan(cfg, DATA)


@pytest.fixture(scope="module")
def points_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    angle = rng.uniform(0, 2 * np.pi, 600)
    x = np.stack([np.cos(angle), np.sin(angle)], 1) * 3 + 0.1 * rng.normal(size=(600, 2)) + [10.0, -5.0]
    path = tmp_path_factory.mktemp("data") / "ring.npy"
    np.save(path, x)
    return path


FAST = ["num_samples=200", "sampler.num_steps=20", "eval.metrics=[outlier_z]", "train.checkpoint_every=0"]


@pytest.mark.slow
def test_app_auto_on_a_data_file(tmp_path, points_file):
    out = tmp_path / "run"
    run_app(train_app, "data=file", f"data.path={points_file}", f"hydra.run.dir={out}", *FAST,
            "quality.budget=120", "quality.pilot_steps=20", "quality.every=40", "quality.num_samples=200")
    m = json.loads((out / "metrics.json").read_text())
    auto, checks, sampled = m["train"]["auto"], m["train"]["quality_checks"], m["train"]["sampled"]
    assert auto["auto"] and auto["input_features"] in (0, 64) and [p["input_features"] for p in auto["pilots"]] == [0]
    assert auto["sampler_rule"].startswith("the sampler given")  # FAST sets sampler.num_steps
    assert auto["num_steps_budget"] == 120 and auto["steps_trained"] == m["train"]["num_steps"]
    assert auto["cooldown"]["fraction"] == 0.2  # conf/train.yaml's quality.cooldown; steps: None or [s, end]
    assert [c["step"] for c in checks["checks"]][:2] == [40, 80]
    assert sampled["step"] == checks["best"]["step"] and sampled["checkpoint"].endswith("best.pt")
    assert load_checkpoint(out / "best.pt")["step"] == sampled["step"]
    assert (out / "quality_log.csv").is_file() and (out / "loss.png").is_file()
    assert "validation=60" in m["data"]  # 10 % of 600 held out


@pytest.mark.slow
def test_app_without_auto_and_split_writes_no_check_files_and_checks_change_nothing(tmp_path, points_file):
    plain, checked = tmp_path / "plain", tmp_path / "checked"
    base = ["data=file", f"data.path={points_file}", "auto=false", "data.validation=0", "train.num_steps=100", *FAST]
    run_app(train_app, *base, f"hydra.run.dir={plain}")
    run_app(train_app, *base, f"hydra.run.dir={checked}", "quality.every=30", "quality.num_samples=200",
            "quality.final=last")
    assert not (plain / "best.pt").exists() and not (plain / "quality_log.csv").exists()
    m = json.loads((plain / "metrics.json").read_text())
    assert "auto" not in m["train"] and "sampled" not in m["train"] and "validation" not in m["data"]
    a, b = load_checkpoint(plain / "last.pt"), load_checkpoint(checked / "last.pt")
    for key in ("model", "ema"):
        for (name, p), q in zip(a[key].items(), b[key].values()):
            assert torch.equal(p, q), (key, name)
    assert torch.equal(a["losses"], b["losses"])
    np.testing.assert_array_equal(np.load(plain / "samples.npz")["samples"], np.load(checked / "samples.npz")["samples"])
    assert (checked / "best.pt").exists() and json.loads((checked / "metrics.json").read_text())["train"]["sampled"][
        "checkpoint"].endswith("last.pt")


QUALITY_SAMPLER = {"_target_": "scoresde.samplers.ReverseSDE", "num_steps": 400}


@pytest.mark.parametrize("choices, overrides, quality_sampler, swapped", [
    ({"sampler": "pc", "data": "file"}, ["data=file", "data.path=x.npy"], QUALITY_SAMPLER, True),
    ({"sampler": "pc", "data": "file"}, ["data=file", "sampler.num_steps=50"], QUALITY_SAMPLER, False),
    ({"sampler": "pc", "data": "file"}, ["data=file", "+sampler.denoise=false"], QUALITY_SAMPLER, False),
    ({"sampler": "ddim", "data": "file"}, ["data=file", "sampler=ddim"], QUALITY_SAMPLER, False),
    ({"sampler": "pc", "experiment": "two_moons"}, ["experiment=two_moons"], QUALITY_SAMPLER, False),
    ({"sampler": "pc", "data": "file"}, ["data=file"], None, False),
])
def test_auto_replaces_only_a_sampler_left_at_its_default(choices, overrides, quality_sampler, swapped):
    cfg = OmegaConf.create({"quality": {"sampler": quality_sampler}})
    given = PredictorCorrector()
    record = {"choices": dict(choices), "overrides": overrides}
    sampler, rule = train_app._auto_sampler(cfg, record, given)
    if swapped:
        assert sampler == ReverseSDE(num_steps=400) and "default" in rule
        assert record["choices"]["sampler"] == "quality.sampler (ReverseSDE)"
    else:
        assert sampler is given and record["choices"] == choices


def thin_curve(components: int = 60, std: float = 0.05) -> GaussianMixture:
    """An S-shaped curve of unit rms spread per coordinate, as a mixture of ``components`` small Gaussians."""
    t = torch.linspace(-1.5 * math.pi, 1.5 * math.pi, components, dtype=torch.float64)
    means = torch.stack([torch.sin(t), torch.sign(t) * (torch.cos(t) - 1)], 1)
    means = (means - means.mean(0)) / means.pow(2).sum(1).mean().sqrt() * math.sqrt(2)
    covs = (std ** 2) * torch.eye(2, dtype=torch.float64).expand(components, 2, 2).clone()
    return GaussianMixture(torch.full((components,), 1.0 / components, dtype=torch.float64), means, covs)


@pytest.mark.slow
def test_quality_sampler_is_what_thin_data_need_with_the_exact_score():
    """Exact score of a thin curve (std 0.05 in standardised units, like the S-curve of own_data.md), n = 8000.

    k = samples below the exact density's 1 % level; for exact samples k ~ Bin(8000, 0.01): 80 +- 8.9.
    Measured (seeds 0, 1): PC-200 190, 203 (k ~ 195 +- 14); Euler-Maruyama 400 92, 94 (~ 93 +- 9.6), the
    same 400 NFE.  Asserted: PC-200 >= 80 + 5 sd = 125 (its own margin: 5 sd of its count), and
    Euler-Maruyama <= PC-200 / 1.5 (expected difference 37 +- 13: 2.8 sd, false failure ~0.3 %).
    """
    target, sde = thin_curve(), sdes.VPSDE()
    score = target.score_fn(sde)
    counts = {}
    for name, sampler in (("pc", PredictorCorrector(num_steps=200)), ("em", ReverseSDE(num_steps=400))):
        x = sampler.run(score, sde, (8000, 2), generator=torch.Generator().manual_seed(0)).x
        q = assess(x.double(), target, seed=0, metrics=("outlier_rate_1pct",))
        counts[name] = round(q["metrics"]["outlier_rate_1pct"]["value"] * 8000)
    assert counts["pc"] >= 125, counts
    assert counts["em"] <= counts["pc"] / 1.5, counts
