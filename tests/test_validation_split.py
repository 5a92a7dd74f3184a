"""Tests for the validation split of a data file (issue 21): ``FileDataset(validation=f)`` and ``HeldOut``.

The split is checked exactly (sizes, disjoint, order kept, labels carried, standardisation from the
training part only, never drawn in training); ``validation=0`` is the data set of before bit for bit;
``HeldOut.smoothed(h)``'s density is checked against the closed-form equal-weight Gaussian mixture
of ``toy.GaussianMixture`` and its draws against their exact mean and covariance.
"""
import math

import numpy as np
import pytest
import torch

from scoresde.data.datasets import MixtureDataset, TwoMoons
from scoresde.data.files import FileDataset, HeldOut
from scoresde.data.toy import GaussianMixture, eight_gaussians
from scoresde.training.quality import validation_target


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def file_of_points(tmp_path):
    x = np.random.default_rng(0).normal(size=(200, 2)) * [1.0, 3.0] + [2.0, -1.0]
    path = tmp_path / "p.npy"
    np.save(path, x)
    return path, x


def _user(d, y):
    return d.to_user_units(torch.as_tensor(y)).numpy()


def test_split_sizes_disjoint_ordered_and_standardised_on_training_part(file_of_points):
    path, x = file_of_points
    d = FileDataset(str(path), validation=0.1, split_seed=3)
    assert len(d) == 180 and len(d.validation) == 20
    train_pts, held_pts = _user(d, d.data), _user(d, d.validation.data)
    # every file row is in exactly one part, and each part keeps the file's order
    rows = {tuple(np.round(r, 9)): i for i, r in enumerate(x)}
    idx_train = [rows[tuple(np.round(r, 9))] for r in train_pts]
    idx_held = [rows[tuple(np.round(r, 9))] for r in held_pts]
    assert sorted(idx_train + idx_held) == list(range(200))
    assert idx_train == sorted(idx_train) and idx_held == sorted(idx_held)
    # the standardisation is the training part's alone
    part = x[idx_train]
    shift = part.mean(0)
    np.testing.assert_allclose(d.transform.shift.numpy(), shift, rtol=1e-13)
    assert d.transform.scale == pytest.approx(math.sqrt(np.mean((part - shift) ** 2)), rel=1e-13)
    # another seed holds out other rows; the same seed the same ones
    again = FileDataset(str(path), validation=0.1, split_seed=3)
    assert torch.equal(again.validation.data, d.validation.data)
    other = FileDataset(str(path), validation=0.1, split_seed=4)
    assert not torch.equal(other.validation.data, d.validation.data)


def test_held_out_points_are_never_drawn_for_training(file_of_points):
    path, _ = file_of_points
    d = FileDataset(str(path), validation=0.25)
    drawn = d.sample(20_000, gen(1), dtype=torch.float64)  # each of 150 points drawn ~130 times
    held = d.validation.data
    dist = torch.cdist(drawn, held).min(1).values
    assert float(dist.min()) > 0  # not one draw is a held-out point
    assert torch.unique(drawn, dim=0).shape[0] == len(d)  # and every training point is drawn


def test_no_split_is_the_old_data_set_bit_for_bit(file_of_points):
    path, _ = file_of_points
    old, new = FileDataset(str(path)), FileDataset(str(path), validation=0.0, split_seed=5)
    assert new.validation is None and old.validation is None
    assert torch.equal(old.data, new.data) and torch.equal(old.transform.shift, new.transform.shift)
    assert old.transform.scale == new.transform.scale
    assert torch.equal(old.sample(500, gen(2)), new.sample(500, gen(2)))
    assert "validation" not in repr(old)


def test_labels_follow_the_split(tmp_path):
    x = np.arange(100.0)[:, None] * [1.0, 0.0] + [0.0, 1.0]
    y = (np.arange(100) % 3).astype(float)
    path = tmp_path / "l.npy"
    np.save(path, np.concatenate([x, y[:, None]], 1))
    d = FileDataset(str(path), label_column=-1, validation=0.2)
    assert len(d) == 80 and d.labels.shape == (80,) and d.num_classes == 3
    first = np.rint(_user(d, d.data)[:, 0]).astype(int)  # the row index of each training point
    np.testing.assert_array_equal(d.labels.numpy(), first % 3)


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, "a", True, float("nan")])
def test_bad_validation_fraction_names_the_parameter(file_of_points, value):
    path, _ = file_of_points
    with pytest.raises(ValueError, match="`validation` must be a fraction in \\[0, 1\\)"):
        FileDataset(str(path), validation=value)


def test_too_few_held_out_points_hold_out_none(file_of_points, caplog):
    path, _ = file_of_points
    d = FileDataset(str(path), validation=0.02)  # 4 of 200: no split, with a warning
    assert d.validation is None and len(d) == 200 and "at least 10 held-out" in caplog.text
    with pytest.raises(ValueError, match="split_seed"):
        FileDataset(str(path), validation=0.1, split_seed=-1)


def test_smoothed_held_out_density_is_the_equal_weight_mixture():
    pts = torch.tensor([[0.0, 0.0], [1.0, 2.0], [-1.5, 0.5]], dtype=torch.float64)
    h = 0.3
    kde = HeldOut(pts).smoothed(h)
    mix = GaussianMixture(torch.full((3,), 1 / 3, dtype=torch.float64), pts,
                          (h * h * torch.eye(2, dtype=torch.float64)).expand(3, 2, 2))
    x = torch.randn(50, 2, generator=gen(3), dtype=torch.float64) * 2
    torch.testing.assert_close(kde.log_prob(x), mix.log_prob(x), rtol=1e-10, atol=1e-10)
    assert kde.has_log_prob and not HeldOut(pts).has_log_prob
    with pytest.raises(NotImplementedError):
        HeldOut(pts).log_prob(x)
    with pytest.raises(ValueError, match="bandwidth"):
        HeldOut(pts, bandwidth=0.0)


def test_smoothed_draws_have_the_mixture_moments():
    pts = torch.tensor([[0.0, 0.0], [1.0, 2.0], [-1.5, 0.5]], dtype=torch.float64)
    h, n = 0.3, 200_000
    y = HeldOut(pts).smoothed(h).sample(n, gen(4), dtype=torch.float64)
    mean = pts.mean(0)
    cov = torch.cov(pts.T, correction=0) + h * h * torch.eye(2, dtype=torch.float64)
    # the mean of n draws has sd sqrt(diag(cov) / n) <= 0.004: 5 sd (false failure ~1e-6)
    assert torch.all((y.mean(0) - mean).abs() <= 5 * (torch.diag(cov) / n).sqrt())
    # covariance entries: sd <= sqrt(2 var^2 / n) ~ 0.005 for var <= 1.6; 0.03 is > 5 sd
    torch.testing.assert_close(torch.cov(y.T), cov, atol=0.03, rtol=0)
    plain = HeldOut(pts).sample(1000, gen(5), dtype=torch.float64)  # without a bandwidth: the points themselves
    assert torch.cdist(plain, pts).min(1).values.max() == 0


def test_held_out_repr_names_its_content():
    a = HeldOut(torch.zeros(10, 2))
    b = HeldOut(torch.ones(10, 2))
    assert repr(a) != repr(b) and repr(a.smoothed(0.1)) != repr(a.smoothed(0.2))


def test_validation_target(file_of_points):
    path, _ = file_of_points
    d = FileDataset(str(path), validation=0.1)
    target = validation_target(d)
    assert isinstance(target, HeldOut) and target.bandwidth > 0 and torch.equal(target.data, d.validation.data)
    assert validation_target(FileDataset(str(path))).__class__ is FileDataset  # no split: the data set itself
    mix = MixtureDataset(eight_gaussians())
    assert validation_target(mix) is mix.mixture
    moons = TwoMoons()
    assert validation_target(moons) is moons  # draws fresh points
