"""``batch_size`` in the apps (issue 10 item 13): per-sample seeds make sample i independent of the batching;
``num_threads`` (issue 16 item 3): torch's thread count chosen once at the app's start."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from scoresde.apps import sample
from scoresde.apps.common import SMALL_MODEL_PARAMETERS, apply_num_threads, check_num_threads

from test_apps import FAST, read_metrics, run_app


def _samples(tmp_path, name, *overrides):
    out = tmp_path / name
    run_app(sample, "sampler=ddim", "sampler.num_steps=5", *FAST, "num_samples=40", *overrides,
            f"hydra.run.dir={out}")
    return np.load(out / "samples.npz")["samples"], read_metrics(out)


def test_batched_sampling_does_not_depend_on_the_batch_size(tmp_path):
    whole, m_whole = _samples(tmp_path, "b40", "batch_size=40")
    split, m_split = _samples(tmp_path, "b7", "batch_size=7")
    np.testing.assert_array_equal(whole, split)
    assert m_whole["nfe"] == m_split["nfe"] == 5  # NFE per sample, not summed over batches


def test_batch_size_is_checked_before_work(tmp_path):
    with pytest.raises(SystemExit):
        run_app(sample, "batch_size=0", *FAST, f"hydra.run.dir={tmp_path}")
    m = read_metrics(tmp_path)
    assert m["status"] == "failed" and "batch_size" in m["error"] and "sample_s" not in m.get("time", {})


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_num_threads_auto_is_one_thread_for_small_models(monkeypatch, restore_threads):
    """auto: 1 thread below SMALL_MODEL_PARAMETERS and for exact scores; torch's count above it or when the
    user set OMP_NUM_THREADS; an int is applied as given."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    assert apply_num_threads("auto", 75_010) == 1 == torch.get_num_threads()  # the default run's ScoreMLP
    torch.set_num_threads(2)
    assert apply_num_threads("auto", None) == 1 == torch.get_num_threads()  # scoresde-sample's exact score
    torch.set_num_threads(2)
    assert apply_num_threads("auto", SMALL_MODEL_PARAMETERS) == 2 == torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert apply_num_threads("auto", 75_010) == 2 == torch.get_num_threads()
    assert apply_num_threads(3, 75_010) == 3 == torch.get_num_threads()


@pytest.mark.parametrize("bad", [0, -1, "two", 1.5, True, None])
def test_num_threads_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="num_threads"):
        check_num_threads(bad)


def test_num_threads_is_checked_before_work(tmp_path):
    with pytest.raises(SystemExit):
        run_app(sample, "num_threads=0", *FAST, f"hydra.run.dir={tmp_path}")
    m = read_metrics(tmp_path)
    assert m["status"] == "failed" and "num_threads" in m["error"] and "sample_s" not in m.get("time", {})
