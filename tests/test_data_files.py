"""Tests for scoresde.data.files: a user's data file (.npy, .npz, .csv, .txt) as training data.

Formats, labels, event shapes and the standardisation are checked exactly; every malformed file
raises an error that names it; and a ``.npy`` of two-moons points in shifted, scaled "user units"
trains from the command line and samples come back in those units.
"""
import math

import numpy as np
import pytest
import torch

import scoresde

from scoresde.data.files import FileDataset, Standardization, load_array
from scoresde.data.datasets import DataError, TwoMoons
from scoresde.training import load_checkpoint

from scoresde.apps import train as train_app
from test_apps import run_app  # the apps' in-process runner


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def points(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 3)) * [1.0, 2.0, 3.0] + [5.0, -1.0, 0.0]
    return x


def test_npy_standardisation_exact(tmp_path, points):
    path = tmp_path / "p.npy"
    np.save(path, points)
    d = FileDataset(str(path))
    shift = points.mean(0)
    scale = np.sqrt(np.mean((points - shift) ** 2))
    assert d.event_shape == (3,) and len(d) == 50 and d.num_classes == 0
    np.testing.assert_allclose(d.transform.shift.numpy(), shift, rtol=1e-14)
    assert d.transform.scale == pytest.approx(scale, rel=1e-14)
    np.testing.assert_allclose(d.data.numpy(), (points - shift) / scale, rtol=1e-12, atol=1e-14)
    # unit scale: mean square over samples and coordinates is 1, mean 0
    assert float((d.data**2).mean()) == pytest.approx(1.0, rel=1e-12)
    # round trip through user units
    y = d.sample(7, gen())
    assert y.shape == (7, 3) and y.dtype == torch.float32
    back = d.transform.from_user_units(d.to_user_units(y.double()))
    torch.testing.assert_close(back, y.double(), rtol=1e-12, atol=1e-12)
    # a stated scale, no centring
    d2 = FileDataset(str(path), scale=2.0, center=False)
    np.testing.assert_allclose(d2.data.numpy(), points / 2.0, rtol=1e-14)
    st = Standardization.from_state_dict(d2.transform.state_dict())
    assert st.scale == 2.0 and torch.equal(st.shift, d2.transform.shift)


def test_image_shaped_npy_and_npz_labels(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.normal(size=(20, 1, 4, 4)).astype(np.float32)
    y = rng.choice([3, 7, 9], size=20)
    np.savez(tmp_path / "imgs.npz", images=images, y=y)
    d = FileDataset(str(tmp_path / "imgs.npz"), labels="y")  # key found: the one other array
    assert d.event_shape == (1, 4, 4) and d.num_classes == 3 and d.classes == (3, 7, 9)
    x, lab = d.sample_with_labels(11, gen(), dtype=torch.float64)
    assert x.shape == (11, 1, 4, 4) and lab.dtype == torch.long and set(lab.tolist()) <= {0, 1, 2}
    # the labels follow their samples
    full = d.data
    codes = np.searchsorted([3, 7, 9], y)
    for i in range(5):
        j = int(torch.nonzero((full == x[i]).flatten(1).all(1))[0])
        assert codes[j] == lab[i]
    np.save(tmp_path / "one.npy", images)
    assert FileDataset(str(tmp_path / "one.npy")).event_shape == (1, 4, 4)


def test_csv_header_label_column_and_txt(tmp_path, points):
    labels = (points[:, 0] > 5).astype(int)
    table = np.column_stack([points, labels])
    csv = tmp_path / "p.csv"
    np.savetxt(csv, table, delimiter=",", header="a,b,c,label", comments="")
    d = FileDataset(str(csv), label_column=-1)
    assert d.event_shape == (3,) and d.num_classes == 2
    np.testing.assert_allclose(d.to_user_units(d.data).numpy(), points, rtol=1e-12, atol=1e-12)
    txt = tmp_path / "p.txt"
    np.savetxt(txt, points[:, 0])  # one column: N scalars
    assert FileDataset(str(txt)).event_shape == (1,)
    lab = tmp_path / "lab.txt"
    np.savetxt(lab, labels, fmt="%d")
    np.save(tmp_path / "p.npy", points)
    assert FileDataset(str(tmp_path / "p.npy"), labels=str(lab)).num_classes == 2


@pytest.mark.parametrize("case", ["missing", "suffix", "garbage", "empty", "ragged", "nonnumeric", "nan", "npz_key",
                                  "npz_many", "object", "labels_length", "zero_spread"])
def test_errors_name_the_file(tmp_path, case):
    path = tmp_path / "data.npy"
    kwargs = {}
    if case == "missing":
        path = tmp_path / "nope.npy"
    elif case == "suffix":
        path = tmp_path / "data.json"
        path.write_text("[]")
    elif case == "garbage":
        path.write_bytes(b"not a numpy file at all")
    elif case == "empty":
        np.save(path, np.zeros((0, 2)))
    elif case == "ragged":
        path = tmp_path / "data.csv"
        path.write_text("1,2\n3,4,5\n6,7\n")
    elif case == "nonnumeric":
        path = tmp_path / "data.csv"
        path.write_text("1,2\nx,y\n3,4\n")
    elif case == "nan":
        np.save(path, np.array([[1.0, 2.0], [np.nan, 0.0], [3.0, 4.0]]))
    elif case in ("npz_key", "npz_many"):
        path = tmp_path / "data.npz"
        np.savez(path, a=np.zeros((3, 2)), b=np.ones((3, 2)))
        kwargs = {"key": "c"} if case == "npz_key" else {}
    elif case == "object":
        np.save(path, np.array([[1.0, 2.0], [3.0]], dtype=object), allow_pickle=True)
    elif case == "labels_length":
        np.savez(tmp_path / "data.npz", x=np.zeros((3, 2)), y=np.zeros(4))
        path, kwargs = tmp_path / "data.npz", {"key": "x", "labels": "y"}
    elif case == "zero_spread":
        np.save(path, np.ones((5, 2)))
    error = FileNotFoundError if case == "missing" else DataError
    with pytest.raises(error, match=str(path.name)):
        FileDataset(str(path), **kwargs)


def test_train_from_command_line_in_user_units(tmp_path):
    """``scoresde-train data=file data.path=points.npy``: samples come back in the file's units.

    Tolerances from sampling noise.  Per coordinate, the model samples' mean (n = 2000) and the
    data mean (N = 3000) differ by a N(0, s^2 (1/n + 1/N)) error if the model were exact; the
    sample standard deviations differ by about s sqrt((kappa - 1)/4 (1/n + 1/N)), kappa <= 3 the
    kurtosis (two moons with noise 0.1: ~1.6-2.5 per coordinate).  We allow 5 of those standard
    errors (a chance false alarm < 1e-5 per comparison); a model that did not undo the
    standardisation would be off by 10 / 2.6 ~ 4 data standard deviations in the mean.
    """
    x = TwoMoons().sample(3000, gen(0), dtype=torch.float64).numpy() * 3.0 + np.array([10.0, -5.0])
    path = tmp_path / "points.npy"
    np.save(path, x)
    out = tmp_path / "run"
    run_app(train_app, "data=file", f"data.path={path}", "auto=false", "data.validation=0",  # the plain run (issue 21)
            "sampler=ode_heun", "train.num_steps=1500", "num_samples=2000", "eval.repeats=2",
            "eval.num_projections=64", f"hydra.run.dir={out}")
    samples = np.load(out / "samples.npz")["samples"].astype(np.float64)
    assert samples.shape == (2000, 2)
    n, big_n = samples.shape[0], x.shape[0]
    s = x.std(0)
    se_mean = s * math.sqrt(1 / n + 1 / big_n)
    se_std = s * math.sqrt((3 - 1) / 4 * (1 / n + 1 / big_n))
    assert np.all(np.abs(samples.mean(0) - x.mean(0)) < 5 * se_mean), (samples.mean(0), x.mean(0), se_mean)
    assert np.all(np.abs(samples.std(0) - s) < 5 * se_std), (samples.std(0), s, se_std)
    state = load_checkpoint(out / "last.pt")
    st = Standardization.from_state_dict(state["data_transform"])
    np.testing.assert_allclose(st.shift.numpy(), x.mean(0), rtol=1e-12)
    assert st.scale == pytest.approx(float(np.sqrt(np.mean((x - x.mean(0)) ** 2))), rel=1e-12)
    # in Python, scoresde.load gives the same standardisation to map samples back to the file's units
    loaded = scoresde.load(out)
    np.testing.assert_array_equal(loaded.data_transform.shift.numpy(), st.shift.numpy())
    assert loaded.data_transform.scale == st.scale


def test_load_array_npz_single(tmp_path):
    np.savez(tmp_path / "a.npz", only=np.arange(6.0).reshape(3, 2))
    assert load_array(tmp_path / "a.npz").shape == (3, 2)
