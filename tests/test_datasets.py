"""Tests for scoresde.data.datasets: shapes, reproducibility, stated statistics, densities, data checks.

Statistical tolerances: a sample mean of n i.i.d. draws is compared with its exact expectation
within 5 standard errors, the standard error being the sample standard deviation / sqrt(n)
(a two-sided 5-sigma band: false-alarm probability ~6e-7, and the seeds are fixed anyway).
"""
import math

import pytest
import torch

from scoresde import toy
from scoresde.data.datasets import (
    DATASETS,
    Checkerboard,
    Circles,
    DataError,
    MixtureDataset,
    Pinwheel,
    SwissRoll,
    TwoMoons,
    TwoSpirals,
    check_data,
    make_dataset,
)

N = 40_000


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_mean(values: torch.Tensor, expected: float, what: str) -> None:
    values = values.to(torch.float64)
    se = float(values.std()) / math.sqrt(values.numel())
    err = abs(float(values.mean()) - expected)
    assert err < 5 * se + 1e-12, f"{what}: mean {float(values.mean()):.5f}, expected {expected:.5f} (5 SE = {5 * se:.5f})"


def assert_fraction(hits: torch.Tensor, p: float, what: str) -> None:
    se = math.sqrt(p * (1 - p) / hits.numel())
    frac = float(hits.to(torch.float64).mean())
    assert abs(frac - p) < 5 * se, f"{what}: fraction {frac:.4f}, expected {p:.4f} (5 SE = {5 * se:.4f})"


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_shape_dtype_and_reproducibility(name):
    ds = make_dataset(name)
    x = ds.sample(64, gen(1))
    assert x.shape == (64, 2) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert torch.equal(x, ds.sample(64, gen(1)))
    assert not torch.equal(x, ds.sample(64, gen(2)))
    assert ds.sample(8, gen(1), dtype=torch.float64).dtype == torch.float64
    if ds.num_classes:
        x2, labels = ds.sample_with_labels(64, gen(1))
        assert torch.equal(x2, x)  # labels come with the very same draws
        assert labels.dtype == torch.int64 and labels.shape == (64,)
        assert int(labels.min()) >= 0 and int(labels.max()) < ds.num_classes
    else:
        with pytest.raises(NotImplementedError, match="no natural labels"):
            ds.sample_with_labels(4, gen())
    if not ds.has_log_prob:
        with pytest.raises(NotImplementedError, match="closed-form"):
            ds.log_prob(x)


def test_sampling_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    for name in DATASETS:
        make_dataset(name).sample(16, gen())
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize("name", sorted(toy.TARGETS))
def test_mixtures_delegate_to_toy(name):
    mixture = toy.TARGETS[name]()
    ds = DATASETS[name]()
    assert isinstance(ds, MixtureDataset) and ds.num_classes == mixture.num_components
    # same draws as the wrapped mixture, label for label
    x, labels = ds.sample_with_labels(500, gen(3))
    x_ref, labels_ref = mixture.sample_with_labels(500, gen(3))
    assert torch.equal(x, x_ref) and torch.equal(labels, labels_ref)
    x64 = x.double()
    assert torch.equal(ds.log_prob(x64), mixture.log_prob(x64))
    # moments and label frequencies
    x = ds.sample(N, gen(4), dtype=torch.float64)
    mean, cov = mixture.mean(), mixture.covariance()
    for i in range(2):
        assert_mean(x[:, i], float(mean[i]), f"{name} mean[{i}]")
        assert_mean((x[:, i] - mean[i]) ** 2, float(cov[i, i]), f"{name} var[{i}]")
    _, labels = ds.sample_with_labels(N, gen(5))
    for k in range(mixture.num_components):
        assert_fraction(labels == k, float(mixture.weights[k]), f"{name} weight[{k}]")


def test_mixture_with_image_event_shape():
    mixture = toy.GaussianMixture([0.5, 0.5], torch.randn(2, 12, generator=gen()), torch.ones(2), event_shape=(3, 2, 2))
    ds = MixtureDataset(mixture)
    x = ds.sample(5, gen())
    assert x.shape == (5, 3, 2, 2)
    assert torch.equal(x, mixture.sample(5, gen()))


def test_swiss_roll_statistics():
    ds = SwissRoll(scale=0.2, noise=0.2)
    x = ds.sample(N, gen(), dtype=torch.float64)
    a, b = 1.5 * math.pi, 3 * math.pi  # t = a + b u
    expected = 0.2**2 * (a * a + a * b + b * b / 3) + 2 * 0.2**2
    assert_mean(x.pow(2).sum(1), expected, "swiss roll E|x|^2")
    noiseless = SwissRoll(noise=0.0).sample(N, gen(), dtype=torch.float64).norm(dim=1)
    assert float(noiseless.min()) >= 0.2 * a - 1e-9 and float(noiseless.max()) <= 0.2 * (a + b) + 1e-9


def test_two_moons_statistics():
    scale, noise = 2.0, 0.1
    x, labels = TwoMoons(scale=scale, noise=noise).sample_with_labels(N, gen(), dtype=torch.float64)
    assert_mean(x[:, 0], 0.0, "moons mean x")
    assert_mean(x[:, 1], 0.0, "moons mean y")
    assert_mean(x[:, 0] ** 2, scale**2 * 0.75 + noise**2, "moons var x")
    assert_mean(x[:, 1] ** 2, scale**2 * (9 / 16 - 1 / math.pi) + noise**2, "moons var y")
    assert_fraction(labels == 0, 0.5, "moon 0")
    upper = x[labels == 0]  # moon 0 = (cos - 1/2, sin - 1/4): mean (-1/2, 2/pi - 1/4) * scale
    assert_mean(upper[:, 0], -0.5 * scale, "moon 0 mean x")
    assert_mean(upper[:, 1], (2 / math.pi - 0.25) * scale, "moon 0 mean y")


def test_circles_statistics():
    ds = Circles(radii=(1.0, 2.0, 4.0), noise=0.1)
    x, labels = ds.sample_with_labels(N, gen(), dtype=torch.float64)
    assert ds.num_classes == 3
    assert_mean(x[:, 0], 0.0, "circles mean x")
    for k, r in enumerate((1.0, 2.0, 4.0)):
        assert_fraction(labels == k, 1 / 3, f"ring {k}")
        assert_mean(x[labels == k].pow(2).sum(1), r * r + 2 * 0.1**2, f"ring {k} E|x|^2")


def test_pinwheel_statistics():
    ds = Pinwheel()
    x, labels = ds.sample_with_labels(N, gen(), dtype=torch.float64)
    assert_mean(x.pow(2).sum(1), 2.0**2 * (1 + 0.3**2 + 0.1**2), "pinwheel E|x|^2")
    for k in range(5):
        assert_fraction(labels == k, 0.2, f"arm {k}")
    # arms are rotated copies: arm k's mean direction is arm 0's rotated by 2 pi k / 5
    m0 = x[labels == 0].mean(0)
    m1 = x[labels == 1].mean(0)
    delta = math.atan2(m1[1], m1[0]) - math.atan2(m0[1], m0[0])
    assert abs(math.remainder(delta + 2 * math.pi / 5, 2 * math.pi)) < 0.05


def test_two_spirals_statistics():
    x, labels = TwoSpirals().sample_with_labels(N, gen(), dtype=torch.float64)
    assert_mean(x.pow(2).sum(1), (1 / 9) * 9 * math.pi**2 / 2 + 2 * 0.1**2, "spirals E|x|^2")
    assert_fraction(labels == 1, 0.5, "spiral 1")
    x0 = TwoSpirals(noise=0.0).sample_with_labels(2000, gen())
    r = x0[0].double().norm(dim=1) * 3  # noiseless radius r = |arm| / scale in [0, 3 pi]
    assert float(r.max()) <= 3 * math.pi + 1e-5


def test_checkerboard_density_and_statistics():
    ds = Checkerboard(scale=4.0)
    x = ds.sample(N, gen(), dtype=torch.float64)
    logp = ds.log_prob(x)
    assert torch.equal(logp, torch.full_like(logp, -math.log(32.0)))  # every sample on a black square
    for i in range(2):
        assert_mean(x[:, i], 0.0, f"checkerboard mean[{i}]")
        assert_mean(x[:, i] ** 2, 16 / 3, f"checkerboard E x_{i}^2")
    cells = torch.floor(x / 2).long() + 2  # in 0..3
    index = cells[:, 0] * 4 + cells[:, 1]
    counts = torch.bincount(index, minlength=16)
    black = [(i * 4 + j) for i in range(4) for j in range(4) if (i + j) % 2 == 0]
    assert int(counts[[k for k in range(16) if k not in black]].sum()) == 0
    for k in black:
        assert_fraction(index == k, 1 / 8, f"square {k}")
    # density integrates to 1: 8 squares of area 4 at 1/32, white squares and outside are -inf
    probe = torch.tensor([[1.0, 1.0], [1.0, -1.0], [5.0, 0.5], [-3.0, -3.0]], dtype=torch.float64)
    assert ds.log_prob(probe).tolist() == [-math.log(32), -math.inf, -math.inf, -math.log(32)]


def test_registry_is_read_only_and_complete():
    with pytest.raises(TypeError):
        DATASETS["mine"] = SwissRoll  # type: ignore[index]
    assert set(toy.TARGETS) <= set(DATASETS)
    assert {"swiss_roll", "two_moons", "circles", "pinwheel", "two_spirals", "checkerboard"} <= set(DATASETS)
    assert make_dataset("circles", radii=[1, 2]).radii == (1.0, 2.0)
    with pytest.raises(ValueError, match="`name` must be one of"):
        make_dataset("moons")


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: SwissRoll(scale=-1.0), "`scale` must be a finite number > 0"),
        (lambda: TwoMoons(noise=-0.1), "`noise` must be a finite number >= 0"),
        (lambda: Circles(radii=()), "at least one radius"),
        (lambda: Circles(radii=(1.0, 0.0)), "radii"),
        (lambda: Pinwheel(num_arms=0), "`num_arms` must be >= 1"),
        (lambda: Checkerboard(scale=float("nan")), "`scale`"),
    ],
)
def test_parameter_validation(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_sample_size_validation():
    with pytest.raises(ValueError, match="`n` must be >= 1, got 0"):
        SwissRoll().sample(0, gen())
    with pytest.raises(TypeError, match="`n` must be an integer"):
        SwissRoll().sample(2.5, gen())
    with pytest.raises(TypeError, match="`generator` must be a torch.Generator"):
        SwissRoll().sample(2, 0)


def test_check_data():
    x = torch.randn(10, 2)
    assert check_data(x) is x
    with pytest.raises(DataError, match=r"`data` is empty \(shape \(0, 2\)\)"):
        check_data(torch.empty(0, 2))
    bad = x.clone()
    bad[3, 1] = float("nan")
    bad[7, 0] = float("inf")
    with pytest.raises(DataError, match="non-finite values .* in 2 of 10 samples, first at index 3"):
        check_data(bad)
    with pytest.raises(DataError, match="floating point"):
        check_data(torch.ones(4, 2, dtype=torch.long))
    with pytest.raises(DataError, match="batch-first"):
        check_data(torch.randn(5))
    with pytest.raises(DataError, match="must be a tensor"):
        check_data([[0.0, 1.0]])
