"""TensorBoard logging of a training run (issue 11 item 5): the same loss and lr scalars as the CSV log."""
from __future__ import annotations

import csv

import pytest
import torch

from scoresde.models.mlp import ScoreMLP
from scoresde.sdes import VPSDE
from scoresde.data.toy import eight_gaussians
from scoresde.training import TrainConfig, train
from scoresde.training.loop import _summary_writer_class

try:
    _summary_writer_class()
    HAVE_TENSORBOARD = True
except ImportError:
    HAVE_TENSORBOARD = False


def _run(tmp_path, **kwargs):
    data = eight_gaussians().sample(512, torch.Generator().manual_seed(0))
    model = ScoreMLP(VPSDE(), event_shape=(2,), width=16, depth=1, generator=torch.Generator().manual_seed(1))
    config = TrainConfig(num_steps=30, batch_size=64, check_every=10, checkpoint_dir=str(tmp_path / "ckpt"))
    return train(model, data, config, log_file=tmp_path / "log.csv", **kwargs)


@pytest.mark.skipif(HAVE_TENSORBOARD, reason="tensorboard installed")
def test_tensorboard_without_the_extra_fails_before_training(tmp_path):
    with pytest.raises(ImportError, match=r"\.\[tensorboard\]"):
        _run(tmp_path, tensorboard_dir=tmp_path / "tb")
    assert not (tmp_path / "ckpt" / "last.pt").exists() and not (tmp_path / "log.csv").exists()


@pytest.mark.skipif(not HAVE_TENSORBOARD, reason="optional extra .[tensorboard] not installed")
def test_tensorboard_scalars_equal_the_csv_log(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _run(tmp_path, tensorboard_dir=tmp_path / "tb")
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    losses = events.Scalars("loss")
    assert [e.step for e in losses] == [int(r["step"]) for r in rows]
    # event files store float32: compare at float32 precision against the CSV's 7 significant digits
    assert [e.value for e in losses] == pytest.approx([float(r["loss"]) for r in rows], rel=1e-6)
