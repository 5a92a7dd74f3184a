"""Tests for scoresde.evaluation.fid (Frechet distance, KID, floors, the Inception glue) and .domain.

Exact results: the Frechet distance between two Gaussians in closed form (diagonal covariances; a
general pair against the independent ``scipy.linalg.sqrtm`` formula of pytorch-fid; 1-D), 0 for
identical feature sets, and the exact finite-sample mean of FID in 1-D, E[FID] = 2/n + 2(1 - c4(n)^2)
with c4(n) = E[s] for the sample standard deviation.  KID against a direct double loop, and its
unbiasedness by repeats.  Statistical tolerances are stated where used.
"""
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from scoresde.data import ImageDataset
from scoresde.evaluation import fid as F
from scoresde.evaluation.domain import DomainClassifier, DomainFeatures, train_domain_classifier


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _random_spd(d, seed):
    a = torch.randn(d, d, generator=_gen(seed), dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


# -- Frechet distance ----------------------------------------------------------------------------------

def test_frechet_distance_closed_forms():
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64), torch.tensor([1.0, 1.0, 0.5], dtype=torch.float64)
    a, b = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64), torch.tensor([9.0, 1.0, 0.25], dtype=torch.float64)
    expected = float((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())  # = 7.25 + 4 + 1
    assert F.frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, rel=1e-12)
    # general covariances: pytorch-fid's formula with scipy's sqrtm of the (non-symmetric) product C1 C2
    c1, c2 = _random_spd(6, 1), _random_spd(6, 2)
    m1, m2 = torch.randn(6, generator=_gen(3), dtype=torch.float64), torch.randn(6, generator=_gen(4), dtype=torch.float64)
    covmean = scipy.linalg.sqrtm(c1.numpy() @ c2.numpy()).real
    reference = float((m1 - m2).square().sum()) + float(np.trace(c1.numpy()) + np.trace(c2.numpy()) - 2 * np.trace(covmean))
    assert F.frechet_distance(m1, c1, m2, c2) == pytest.approx(reference, rel=1e-9)
    # 1-D: the squared W2 distance (m1 - m2)^2 + (s1 - s2)^2
    one = F.frechet_distance(torch.tensor([0.5]), torch.tensor([[4.0]]), torch.tensor([-1.0]), torch.tensor([[1.0]]))
    assert one == pytest.approx(1.5**2 + 1.0, rel=1e-12)


def test_fid_of_identical_feature_sets_is_zero_to_round_off():
    x = torch.randn(500, 16, generator=_gen(5), dtype=torch.float64) * torch.linspace(0.1, 3, 16, dtype=torch.float64)
    trace = float(F.gaussian_stats(x)[1].trace())
    assert abs(F.fid(x, x)) < 1e-12 * trace * 100  # double round-off of the two traces and the eigenvalues
    assert abs(F.fid(x.float(), x.clone())) < 1e-5 * trace  # float32 input is promoted; same points, same value


def test_gaussian_stats_are_numpys_mean_and_unbiased_covariance():
    x = torch.randn(40, 3, generator=_gen(6), dtype=torch.float64)
    mu, cov = F.gaussian_stats(x)
    assert np.allclose(mu.numpy(), x.numpy().mean(0)) and np.allclose(cov.numpy(), np.cov(x.numpy(), rowvar=False))


def _c4(n):
    return math.sqrt(2 / (n - 1)) * math.exp(math.lgamma(n / 2) - math.lgamma((n - 1) / 2))


def test_fid_floor_mean_matches_the_exact_finite_sample_bias_in_1d():
    """Two halves of n i.i.d. N(0, 1) points: E[FID] = E(m1 - m2)^2 + E(s1 - s2)^2 = 2/n + 2(1 - c4(n)^2)."""
    n, repeats = 50, 400
    expected = 2 / n + 2 * (1 - _c4(n) ** 2)  # 0.0604
    pool = torch.randn(40_000, 1, generator=_gen(7), dtype=torch.float64)
    floor = F.fid_floor(pool, n, repeats=repeats, generator=_gen(8))
    # halves of a pool of 40 000 are i.i.d. draws from its empirical law, whose variance is 1 +- 0.007;
    # 4 standard errors of the mean over the repeats (false failure ~ 6e-5) plus 3 % for the pool's own spread
    tol = 4 * floor["fid"]["floor_sd"] / math.sqrt(repeats) + 0.03 * expected
    assert abs(floor["fid"]["floor_mean"] - expected) < tol
    lo, hi = floor["fid"]["floor_band"]
    assert 0 < lo < expected < hi and floor["n"] == n and floor["repeats"] == repeats


def test_fid_floor_band_holds_exact_samples_and_flags_a_shift():
    d, n = 4, 200
    pool = torch.randn(20_000, d, generator=_gen(9), dtype=torch.float64)
    floor = F.fid_floor(pool, n, repeats=100, generator=_gen(10))
    fresh = [F.fid(torch.randn(n, d, generator=_gen(100 + k), dtype=torch.float64),
                   torch.randn(n, d, generator=_gen(200 + k), dtype=torch.float64)) for k in range(40)]
    above = np.mean(np.array(fresh) > floor["fid"]["floor_band"][1])
    # exact pairs exceed p95 with probability 0.05: 40 draws give 0.05 +- 0.034 (1 sd); 3 sd bound
    assert above <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 40)
    shifted = torch.randn(n, d, generator=_gen(11), dtype=torch.float64) + 0.5  # |shift|^2 = 1 >> the floor's ~0.1
    assert F.fid(shifted, pool[:n]) > floor["fid"]["floor_band"][1]
    kid_shifted = F.kid(shifted, pool[:n], num_subsets=1, subset_size=n).mean
    assert kid_shifted > floor["kid"]["floor_band"][1]


def test_assess_images_gives_values_bands_and_verdicts():
    flat = lambda x: x.flatten(1)  # noqa: E731  raw pixels as features
    data = torch.randn(1000, 1, 2, 2, generator=_gen(20))
    exact = [F.assess_images(torch.randn(100, 1, 2, 2, generator=_gen(300 + k)), data, flat, repeats=20,
                             generator=_gen(400 + k)) for k in range(20)]
    assert set(exact[0]) == {"n", "fid", "kid"} and exact[0]["n"] == 100
    assert set(exact[0]["fid"]) == {"value", "floor_band", "floor_mean", "verdict"}
    # exact samples: "above floor" with probability ~0.05 (band from 20 splits: p95 known to ~+-0.05);
    # 20 draws, bound 0.05 + 0.05 + 3 sd of a binomial proportion (0.15): false failure < 1e-3
    flagged = np.mean([r["fid"]["verdict"] == "above floor" for r in exact])
    assert flagged <= 0.1 + 3 * math.sqrt(0.05 * 0.95 / 20)
    shifted = F.assess_images(torch.randn(100, 1, 2, 2, generator=_gen(21)) + 1, data, flat, generator=_gen(22))
    assert shifted["fid"]["verdict"] == shifted["kid"]["verdict"] == "above floor"  # FID ~ |shift|^2 = 4 >> band
    assert shifted["fid"]["value"] == pytest.approx(4, rel=0.3)
    with pytest.raises(ValueError, match="at least 2n = 1200"):
        F.assess_images(torch.zeros(600, 1, 2, 2), data, flat)
    with pytest.raises(ValueError, match="one image shape"):
        F.assess_images(torch.zeros(10, 1, 2, 3), data, flat)


# -- KID -------------------------------------------------------------------------------------------------

def test_kid_equals_the_unbiased_mmd_of_a_double_loop():
    x = torch.randn(7, 3, generator=_gen(12), dtype=torch.float64)
    y = torch.randn(7, 3, generator=_gen(13), dtype=torch.float64) + 0.3
    k = lambda a, b: (float(a @ b) / 3 + 1) ** 3  # noqa: E731
    m = 7
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    result = F.kid(x, y, num_subsets=3, subset_size=50, generator=_gen(0))  # subset = the whole set, 3 times
    assert result.mean == pytest.approx(xx + yy - 2 * xy, rel=1e-12) and result.std == pytest.approx(0, abs=1e-12)


def test_kid_is_unbiased_for_identical_distributions():
    """Mean over 300 independent pairs of N(0, I_4) samples within 4 standard errors of 0 (false failure ~ 6e-5)."""
    repeats, n, d = 300, 60, 4
    values = np.array([F.kid(torch.randn(n, d, generator=_gen(2 * r), dtype=torch.float64),
                             torch.randn(n, d, generator=_gen(2 * r + 1), dtype=torch.float64),
                             num_subsets=1, subset_size=n).mean for r in range(repeats)])
    se = values.std(ddof=1) / math.sqrt(repeats)
    assert abs(values.mean()) < 4 * se
    # subsets: the average of subset estimates is unbiased too, and its spread is reported
    sub = F.kid(torch.randn(400, d, generator=_gen(1)), torch.randn(400, d, generator=_gen(2)), num_subsets=20,
                subset_size=100, generator=_gen(3))
    assert sub.std > 0 and abs(sub.mean) < 4 * sub.std / math.sqrt(20) * 2  # subsets overlap: a looser 8 sd


@pytest.mark.parametrize("call, match", [
    (lambda: F.fid(torch.zeros(1, 3), torch.zeros(5, 3)), r"features \[n, d\] with n >= 2"),
    (lambda: F.fid(torch.full((4, 2), math.nan), torch.zeros(4, 2)), "NaN or inf"),
    (lambda: F.frechet_distance(torch.zeros(2), torch.eye(3), torch.zeros(2), torch.eye(2)), "one d"),
    (lambda: F.kid(torch.zeros(5, 2), torch.zeros(5, 3)), "same feature dimension"),
    (lambda: F.kid(torch.zeros(5, 2), torch.zeros(5, 2), subset_size=1), "subset_size"),
    (lambda: F.fid_floor(torch.zeros(10, 2), 6), r"2n <= N = 10"),
    (lambda: F.extract_features(lambda x: x.flatten(1)[:1], torch.zeros(3, 1, 2, 2)), r"\[B, d\] = \[3, d\]"),
])
def test_bad_inputs_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# -- Inception glue (torch-fidelity's interface, with a small network in its place) -------------------

class _FidelityLike(nn.Module):
    """torch-fidelity's FeatureExtractorInceptionV3 interface: uint8 [B, 3, H, W] -> (features [B, d],)."""

    def __init__(self):
        super().__init__()
        self.seen = None
        self.proj = nn.Linear(3, 5)

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.ndim == 4 and x.shape[1] == 3
        self.seen = x
        return (self.proj(x.float().mean((2, 3))),)


def test_inception_glue_feeds_8_bit_rgb_and_returns_features():
    values = torch.arange(256, dtype=torch.float64).reshape(1, 1, 16, 16)
    images = (values / 127.5 - 1).float().expand(3, 1, 16, 16)  # grey images in [-1, 1]
    net = _FidelityLike()
    extractor = F.InceptionFeatures(network=net)
    feats = F.extract_features(extractor, images, batch_size=2)
    assert feats.shape == (3, 5) and feats.dtype == torch.float64
    assert torch.equal(net.seen[0, 1].long(), values[0, 0].long())  # u8 = v exactly, grey copied to 3 channels
    # batching changes nothing but float32 summation order in the network
    assert torch.allclose(feats, F.extract_features(extractor, images, batch_size=64), rtol=1e-6, atol=0)
    out_of_range = F.InceptionFeatures(network=net)(torch.full((1, 3, 4, 4), 1.7))
    assert out_of_range.shape == (1, 5) and int(net.seen.max()) == 255  # samples past +-1 are clipped


def test_inception_without_torch_fidelity_says_how_to_install():
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install torch-fidelity"):
            F.InceptionFeatures()
    else:
        pytest.skip("torch-fidelity is installed: building it would download the Inception weights")


# -- the domain classifier -------------------------------------------------------------------------------

def _two_class_images(n=200, seed=0):
    """Class 0: a bright left half; class 1: a bright right half, with pixel noise."""
    g = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = g.integers(0, 60, size=(n, 1, 8, 8))
    images[labels == 0, :, :, :4] += 180
    images[labels == 1, :, :, 4:] += 180
    return ImageDataset(images.astype(np.uint8), labels, classes=("left", "right"))


def test_domain_classifier_learns_and_is_cached(tmp_path):
    data = _two_class_images()
    settings = dict(num_steps=40, batch_size=32, width=4, feature_dim=8)
    first = DomainFeatures(data, cache_dir=tmp_path, **settings)
    assert first.info["cached"] is False and first.info["holdout_accuracy"] >= 0.95 and first.cache_path.is_file()
    second = DomainFeatures(data, cache_dir=tmp_path, **settings)
    assert second.info["cached"] is True and second.cache_path == first.cache_path
    x = data.data[:10]
    assert torch.equal(first(x), second(x)) and first(x).shape == (10, 8)
    f = first(data.data).double()  # scaled to unit rms deviation on the 80 % trained on; the rest is alike
    assert 0.8 < float((f - f.mean(0)).square().mean().sqrt()) < 1.25
    other = DomainFeatures(data, cache_dir=tmp_path, **{**settings, "seed": 1})
    assert other.cache_path != first.cache_path  # a changed setting trains (and caches) another classifier
    with pytest.raises(TypeError, match="unknown settings"):
        DomainFeatures(data, cache_dir=tmp_path, steps=3)


def test_domain_classifier_is_reproducible_and_needs_labels():
    data = _two_class_images(60)
    a, _ = train_domain_classifier(data, num_steps=3, batch_size=8, width=2, feature_dim=4, seed=5)
    b, _ = train_domain_classifier(data, num_steps=3, batch_size=8, width=2, feature_dim=4, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="labelled classes"):
        train_domain_classifier(ImageDataset(np.zeros((4, 1, 8, 8), np.uint8)))
    with pytest.raises(ValueError, match=r"`event_shape` must be \(C, H, W\)"):
        DomainClassifier((64,), 2)
