"""Tests for the adaptive recipe (issue 21): ``quality.choose_input_features`` and ``scoresde-train auto=...``.

* The pilot comparison picks the candidate whose check is better (a stand-in sampler gives exact
  draws for one candidate, a 1.5x wider law for the other), and the first on a tie.
* ``scoresde-train data=file`` (auto by default) records what it decided, samples from ``best.pt``
  and says so; ``auto=false data.validation=0`` writes no check files, and turning checks on
  leaves the trained weights and (with ``quality.final=last``) the samples bit for bit the same.
"""
import json
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
import torch

from scoresde import sdes
from scoresde.apps import train as train_app
from scoresde.data.datasets import MixtureDataset
from scoresde.data.toy import eight_gaussians
from scoresde.evaluation import FloorCache
from scoresde.models import ScoreMLP
from scoresde.samplers import SampleResult
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
def test_the_better_pilot_is_chosen(good):
    check = QualityCheck(TARGET, num_samples=400, sampler=GoodFor(TARGET, good), cache=CACHE)
    choice = choose_input_features(make, DATA, CONFIG, TARGET, candidates=(0, 64), pilot_steps=20, check=check)
    assert choice["input_features"] == good and choice["pilot_steps"] == 20
    pilots = {p["input_features"]: p for p in choice["pilots"]}
    assert pilots[good]["overall"] == "at floor" and pilots[64 - good]["overall"] == "above floor"
    assert all(p["step"] == 20 and p["cpu_s"] > 0 for p in pilots.values())
    assert check.records == []  # the pilots do not count as checks of the run


def test_a_tie_keeps_the_first_candidate():
    check = QualityCheck(TARGET, num_samples=400, sampler=GoodFor(TARGET, -1), cache=CACHE)  # both 1.5x wide
    choice = choose_input_features(make, DATA, CONFIG, TARGET, candidates=(64, 0), pilot_steps=10, check=check)
    a, b = choice["pilots"]
    assert a["value"] == b["value"] and choice["input_features"] == 64


def test_bad_arguments():
    with pytest.raises(ValueError, match="`pilot_steps` must be an integer >= 1"):
        choose_input_features(make, DATA, CONFIG, TARGET, pilot_steps=0)
    with pytest.raises(ValueError, match="`candidates` must name"):
        choose_input_features(make, DATA, CONFIG, TARGET, candidates=())


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
    assert auto["auto"] and auto["input_features"] in (0, 64) and len(auto["pilots"]) == 2
    assert auto["num_steps_budget"] == 120 and auto["steps_trained"] == m["train"]["num_steps"]
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
