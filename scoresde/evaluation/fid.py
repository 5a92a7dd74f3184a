"""Image quality from features: the Frechet distance (FID), the kernel inception distance (KID), their floors.

A *feature extractor* is any callable ``images [B, C, H, W] in [-1, 1] -> features [B, d]``
(``extract_features`` runs it in batches, without gradients).  Two come with scoresde:

* ``InceptionFeatures``: the 2048-d pool features of the TensorFlow Inception-v3 that FID is defined
  with (Heusel et al. 2017), through torch-fidelity (``pip install torch-fidelity``; its weights,
  91 MB, download on the first use into torch's hub cache).  Values comparable with published FIDs.
* ``scoresde.evaluation.domain.DomainFeatures``: a small classifier trained on the data set itself (as
  MNIST papers do), cached once per data set: it runs anywhere, and its numbers compare runs on the
  same data set only.

Distances between feature sets X [n, d] and Y [m, d]:

* ``frechet_distance``: with the means mu and covariances C (unbiased, 1/(n-1): numpy's ``cov``,
  as pytorch-fid and torch-fidelity use),

      FD = |mu_x - mu_y|^2 + tr C_x + tr C_y - 2 tr (C_x^{1/2} C_y C_x^{1/2})^{1/2},

  the squared 2-Wasserstein distance between the two Gaussians (Dowson & Landau 1982).
  tr (C_x C_y)^{1/2} (pytorch-fid's ``scipy.linalg.sqrtm(C_x C_y)``) equals the symmetric form used
  here, whose square root is an eigen-decomposition of a symmetric PSD matrix: real, no ``eps``
  offset, no imaginary round-off to discard.  FD is biased upwards at finite n (two halves of one
  data set do not give 0): compare a model only with a floor at the same n (``fid_floor``).
* ``kid`` (Binkowski et al. 2018, "Demystifying MMD GANs", eq. 3 with the kernel
  k(x, y) = (x.y / d + 1)^3): the unbiased estimate

      MMD_u^2 = 1/(m(m-1)) sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)] - 2/m^2 sum_{i, j} k(x_i, y_j)

  averaged over ``num_subsets`` random subsets of m = min(subset_size, n_x, n_y) points of each set
  (torch-fidelity's defaults: 100 subsets of 1000).  Unbiased, so it can be negative; 0 in
  expectation for identical distributions at any m.

``fid_floor(features, n)``: the 5-95 % band of FID and KID between two disjoint random halves of n
points of the data's own features (the i.i.d. floor of ``scoresde.evaluation.floors``): a model's
FID at n samples against n held-out data points is "at floor" when it lies inside that band.
``assess_images(samples, data, extractor)`` computes both, with verdicts in ``assess``'s format.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import nn

from .._checks import check_generator, check_int

__all__ = ["FeatureExtractor", "extract_features", "gaussian_stats", "frechet_distance", "fid", "kid", "KID",
           "fid_floor", "assess_images", "InceptionFeatures"]

FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]
"""``images [B, C, H, W] in [-1, 1] -> features [B, d]``."""


def _features(name: str, x) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"`{name}` must be features [n, d] with n >= 2, got shape {tuple(x.shape)}")
    x = x.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"`{name}` contains NaN or inf")
    return x


def extract_features(extractor: FeatureExtractor, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``extractor`` on ``images [N, C, H, W]`` in batches of ``batch_size``, without gradients: float64 ``[N, d]`` (CPU)."""
    if not callable(extractor):
        raise TypeError(f"`extractor` must be callable images [B, C, H, W] -> features [B, d], got {extractor!r}")
    if not torch.is_tensor(images) or images.ndim != 4:
        raise ValueError(f"`images` must be a tensor [N, C, H, W], got {getattr(images, 'shape', type(images))}")
    batch_size = check_int("batch_size", batch_size)
    parts = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size]
            out = torch.as_tensor(extractor(batch))
            if out.ndim != 2 or out.shape[0] != batch.shape[0]:
                raise ValueError(f"the feature extractor must return [B, d] = [{batch.shape[0]}, d], got {tuple(out.shape)}")
            parts.append(out.detach().to("cpu", torch.float64))
    return torch.cat(parts)


def gaussian_stats(features) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[d]`` and unbiased covariance ``[d, d]`` (1/(n-1)) of ``features [n, d]``, float64."""
    x = _features("features", features)
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - 1)


def _psd_sqrt(c: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((c + c.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu_x, cov_x, mu_y, cov_y) -> float:
    """|mu_x - mu_y|^2 + tr C_x + tr C_y - 2 tr (C_x^{1/2} C_y C_x^{1/2})^{1/2} (module docstring), float64."""
    mu_x, mu_y = (torch.as_tensor(m, dtype=torch.float64) for m in (mu_x, mu_y))
    cov_x, cov_y = (torch.as_tensor(c, dtype=torch.float64) for c in (cov_x, cov_y))
    d = mu_x.shape[0]
    if mu_x.shape != (d,) or mu_y.shape != (d,) or cov_x.shape != (d, d) or cov_y.shape != (d, d):
        raise ValueError(f"means must be [d] and covariances [d, d] with one d, got {tuple(mu_x.shape)}, "
                         f"{tuple(cov_x.shape)}, {tuple(mu_y.shape)}, {tuple(cov_y.shape)}")
    root = _psd_sqrt(cov_x)
    cross = torch.linalg.eigvalsh(root @ cov_y @ root).clamp_min(0).sqrt().sum()
    value = (mu_x - mu_y).square().sum() + torch.trace(cov_x) + torch.trace(cov_y) - 2 * cross
    return float(value)


def fid(x, y) -> float:
    """The Frechet distance between the Gaussians fitted to features ``x [n, d]`` and ``y [m, d]``."""
    return frechet_distance(*gaussian_stats(x), *gaussian_stats(y))


class KID(NamedTuple):
    """KID: the mean of the subset estimates and their standard deviation (torch-fidelity's ``kid_std``)."""

    mean: float
    std: float


def _poly_mmd2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3 for batches ``x, y: [S, m, d]`` -> ``[S]``."""
    m, d = x.shape[1], x.shape[2]
    kxx = (x @ x.transpose(1, 2) / d + 1) ** 3
    kyy = (y @ y.transpose(1, 2) / d + 1) ** 3
    kxy = (x @ y.transpose(1, 2) / d + 1) ** 3
    off = lambda k: k.sum((1, 2)) - k.diagonal(dim1=1, dim2=2).sum(1)  # noqa: E731
    return (off(kxx) + off(kyy)) / (m * (m - 1)) - 2 * kxy.sum((1, 2)) / m**2


def kid(x, y, *, num_subsets: int = 100, subset_size: int = 1000, generator: torch.Generator | None = None) -> KID:
    """KID between features ``x [n, d]`` and ``y [k, d]`` (module docstring): ``KID(mean, std)`` over the subsets.

    Each subset draws m = min(subset_size, n, k) points of each set without replacement (from
    ``generator``).  With m = n = k the estimate is the full U-statistic, the same for every subset.
    """
    x, y = _features("x", x), _features("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"`x` and `y` must have the same feature dimension, got {x.shape[1]} and {y.shape[1]}")
    num_subsets = check_int("num_subsets", num_subsets)
    m = min(check_int("subset_size", subset_size, minimum=2), x.shape[0], y.shape[0])
    g = check_generator(generator)
    values = []
    chunk = max(1, 2**22 // (m * m))  # subsets per batched kernel evaluation (bounded memory)
    for start in range(0, num_subsets, chunk):
        s = min(chunk, num_subsets - start)
        ix = torch.stack([torch.randperm(x.shape[0], generator=g)[:m] for _ in range(s)])
        iy = torch.stack([torch.randperm(y.shape[0], generator=g)[:m] for _ in range(s)])
        values.append(_poly_mmd2(x[ix], y[iy]))
    v = torch.cat(values)
    return KID(float(v.mean()), float(v.std(unbiased=False)) if num_subsets > 1 else 0.0)


def fid_floor(features, n: int | None = None, *, repeats: int = 50, kid_subsets: int = 10,
              kid_subset_size: int = 1000, generator: torch.Generator | None = None) -> dict:
    """FID and KID between two disjoint random halves of ``n`` rows of ``features [N, d]`` (default n = N // 2).

    Returns ``{"n", "repeats", "fid": {"floor_band": [p05, p95], "floor_mean", "floor_sd"}, "kid": {...}}``
    over ``repeats`` random splits (``generator``).  The band is what exact data gives at this n; it
    is the yardstick for a model's FID / KID at n samples against n held-out points.  KID per split:
    the full U-statistic when n <= ``kid_subset_size``, else ``kid_subsets`` subsets of that size.
    """
    x = _features("features", features)
    n = x.shape[0] // 2 if n is None else check_int("n", n, minimum=2)
    if 2 * n > x.shape[0]:
        raise ValueError(f"`n`={n} needs 2n <= N = {x.shape[0]} feature rows (two disjoint halves)")
    repeats = check_int("repeats", repeats, minimum=2)
    g = check_generator(generator)
    m = min(n, check_int("kid_subset_size", kid_subset_size, minimum=2))
    subsets = 1 if m == n else check_int("kid_subsets", kid_subsets)
    fids, kids = [], []
    for _ in range(repeats):
        perm = torch.randperm(x.shape[0], generator=g)
        a, b = x[perm[:n]], x[perm[n:2 * n]]
        fids.append(fid(a, b))
        kids.append(kid(a, b, num_subsets=subsets, subset_size=m, generator=g).mean)
    out = {"n": n, "repeats": repeats}
    for name, values in (("fid", np.array(fids)), ("kid", np.array(kids))):
        out[name] = {"floor_band": [float(np.quantile(values, 0.05)), float(np.quantile(values, 0.95))],
                     "floor_mean": float(values.mean()), "floor_sd": float(values.std(ddof=1))}
    return out


def assess_images(samples: torch.Tensor, data: torch.Tensor, extractor: FeatureExtractor, *, repeats: int = 50,
                  batch_size: int = 256, generator: torch.Generator | None = None) -> dict:
    """FID and KID of ``samples [n, C, H, W]`` against n random images of ``data [N, C, H, W]`` (N >= 2n), each
    with its floor band at the same n and a verdict, in ``scoresde.evaluation.assess``'s format:

        {"n", "fid": {"value", "floor_band", "floor_mean", "verdict"}, "kid": {...}}

    The reference images are drawn without replacement from ``data`` (``generator``), so the value is
    what ``fid_floor`` would give if the samples were another draw of real data; "above floor" means
    above the band's 95 % end.  KID: the full U-statistic up to n = 1000, else 10 subsets of 1000.
    """
    from .floors import verdict

    for name, x in (("samples", samples), ("data", data)):
        if not torch.is_tensor(x) or x.ndim != 4:
            raise ValueError(f"`{name}` must be images [n, C, H, W], got {getattr(x, 'shape', type(x))}")
    n = samples.shape[0]
    if samples.shape[1:] != data.shape[1:]:
        raise ValueError(f"`samples` {tuple(samples.shape[1:])} and `data` {tuple(data.shape[1:])} must have one image shape")
    if 2 * n > data.shape[0]:
        raise ValueError(f"`data` must hold at least 2n = {2 * n} images (the floor needs two disjoint halves of n), "
                         f"got {data.shape[0]}")
    g = check_generator(generator)
    data_features = extract_features(extractor, data, batch_size)
    sample_features = extract_features(extractor, samples, batch_size)
    reference = data_features[torch.randperm(data.shape[0], generator=g)[:n]]
    floor = fid_floor(data_features, n, repeats=repeats, generator=g)
    m = min(n, 1000)
    values = {"fid": fid(sample_features, reference),
              "kid": kid(sample_features, reference, num_subsets=1 if m == n else 10, subset_size=m, generator=g).mean}
    out = {"n": n}
    for name, value in values.items():
        band = floor[name]["floor_band"]
        out[name] = {"value": value, "floor_band": band, "floor_mean": floor[name]["floor_mean"],
                     "verdict": verdict(name, value, band)}
    return out


class InceptionFeatures(nn.Module):
    """FID's Inception-v3 pool features through torch-fidelity: ``images [B, C, H, W] in [-1, 1] -> [B, 2048]``.

    The glue: u8 = round(127.5 (x + 1)) clipped to {0..255} (the 8-bit images FID is defined on), grey
    images repeated to 3 channels, then torch-fidelity's ``FeatureExtractorInceptionV3`` (which
    resizes to 299 x 299 as TensorFlow 1 did and returns a tuple of the requested features).
    ``network``: any module with that interface (uint8 [B, 3, H, W] -> (features [B, d],)); None
    builds torch-fidelity's, downloading its weights on the first use (``pip install torch-fidelity``
    next to a matching torchvision).
    """

    def __init__(self, network: nn.Module | None = None, feature: str = "2048"):
        super().__init__()
        if network is None:
            try:
                from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
            except ImportError as e:
                raise ImportError("InceptionFeatures needs torch-fidelity: pip install torch-fidelity (with a "
                                  "torchvision that matches your torch); or pass `network`") from e
            network = FeatureExtractorInceptionV3("inception-v3-compat", [feature])
        self.network = network.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"`images` must be [B, C, H, W] with C in (1, 3), got {tuple(images.shape)}")
        u8 = ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        if u8.shape[1] == 1:
            u8 = u8.expand(-1, 3, -1, -1)
        out = self.network(u8.contiguous())
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out.reshape(out.shape[0], -1)
