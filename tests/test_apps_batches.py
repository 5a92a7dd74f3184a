"""``batch_size`` in the apps (issue 10 item 13): per-sample seeds make sample i independent of the batching."""
from __future__ import annotations

import numpy as np
import pytest

from scoresde.apps import sample

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
