"""A domain feature extractor for FID / KID: a small classifier trained on the data set itself, cached.

Inception-v3 features need a 91 MB download and describe ImageNet photographs; for MNIST-like data
the custom is a classifier trained on the data set's own labels, whose penultimate activations
serve as features (e.g. the "MNIST FID" of many small-scale generative papers).  Numbers from
such features compare runs on the same data set only, never with published Inception FIDs.

``DomainClassifier`` (any ``[C, H, W]``):

    h = SiLU(Conv3x3(C -> w)),  h = SiLU(Conv3x3 stride 2 (w -> 2w)),  h = SiLU(Conv3x3 stride 2 (2w -> 2w))
    f = SiLU(Linear(AdaptiveAvgPool(4 x 4)(h) flattened -> feature_dim)),  logits = Linear(f -> num_classes)
    features = f / s                                                                    [B, feature_dim]

with s (``feature_scale``, a buffer saved with the weights) the root-mean-square deviation of f over the
training images and dimensions, fixed after training: features of the data then have unit spread per
dimension on average, the scale KID's kernel (x.y / d + 1)^3 is made for (Inception's pool features
are O(1) too), and FID values do not grow with however large training made the activations.

``train_domain_classifier(data)``: cross-entropy, Adam, a fixed number of steps on the labelled images
of an ``ImageDataset`` (``data.data``, ``data.labels``, with its random flips if it has them), with a
held-out fraction kept out of training to report an honest accuracy; everything random comes from
``seed``.  ``DomainFeatures(data)`` trains it once per data set and configuration and caches the
weights as ``<cache_dir>/domain_classifier/<key>.pt`` (default cache_dir ``$SCORESDE_CACHE`` or
``~/.cache/scoresde``), key = SHA-256 of the images, labels and every setting: a second call (any
process) loads it, and a changed data set or setting trains a new one.
"""
from __future__ import annotations

import hashlib
import inspect
import io
import json
import logging
import os
import resource
from pathlib import Path

import torch
from torch import nn

from .._checks import check_generator, check_int, check_positive, check_probability
from .._io import atomic_write
from ..models.mlp import init_weights

__all__ = ["DomainClassifier", "train_domain_classifier", "DomainFeatures", "default_cache_dir"]

log = logging.getLogger(__name__)
VERSION = 2  # bump when the architecture or the training changes: old cache entries are then ignored


def default_cache_dir() -> Path:
    """``$SCORESDE_CACHE`` or ``~/.cache/scoresde``."""
    return Path(os.environ.get("SCORESDE_CACHE", Path.home() / ".cache" / "scoresde")).expanduser()


class DomainClassifier(nn.Module):
    """``[B, C, H, W] -> logits [B, num_classes]``; ``features(x) -> [B, feature_dim]`` (module docstring)."""

    def __init__(self, event_shape: tuple[int, ...], num_classes: int, width: int = 16, feature_dim: int = 128,
                 generator: torch.Generator | None = None):
        super().__init__()
        if len(tuple(event_shape)) != 3:
            raise ValueError(f"`event_shape` must be (C, H, W), got {tuple(event_shape)}")
        self.config = {"event_shape": [int(s) for s in event_shape],
                       "num_classes": check_int("num_classes", num_classes, minimum=2),
                       "width": check_int("width", width), "feature_dim": check_int("feature_dim", feature_dim)}
        c, w = int(event_shape[0]), width
        with torch.device("meta"):  # allocated without drawing; init_weights draws from `generator`
            self.body = nn.Sequential(
                nn.Conv2d(c, w, 3, padding=1), nn.SiLU(),
                nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.SiLU(),
                nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.SiLU(),
                nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(2 * w * 16, feature_dim), nn.SiLU())
            self.head = nn.Linear(feature_dim, num_classes)
        init_weights(self, check_generator(generator))
        self.register_buffer("feature_scale", torch.ones(()))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) / self.feature_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _split(n: int, holdout: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=g)
    k = int(round(holdout * n))
    return perm[k:], perm[:k]


def train_domain_classifier(data, *, num_steps: int = 500, batch_size: int = 128, lr: float = 2e-3,
                            holdout: float = 0.2, width: int = 16, feature_dim: int = 128,
                            seed: int = 0) -> tuple[DomainClassifier, dict]:
    """Train a ``DomainClassifier`` on ``data`` (an ``ImageDataset`` with labels); returns it (eval mode) and
    ``{"holdout_accuracy", "num_train", "num_holdout", "final_loss", "cpu_s"}``."""
    labels = getattr(data, "labels", None)
    if labels is None or getattr(data, "num_classes", 0) < 2:
        raise ValueError(f"domain features need a data set with at least 2 labelled classes; {data!r} has none "
                         "(image folders: labels=true with one subfolder per class)")
    num_steps, batch_size = check_int("num_steps", num_steps), check_int("batch_size", batch_size)
    lr, holdout = check_positive("lr", lr), check_probability("holdout", holdout)
    if holdout >= 1:
        raise ValueError(f"`holdout` must be < 1 (a fraction kept out of training), got {holdout}")
    start = resource.getrusage(resource.RUSAGE_SELF)
    g = torch.Generator().manual_seed(seed)
    x, y = data.data, labels
    train_idx, held_idx = _split(x.shape[0], holdout, g)
    model = DomainClassifier(x.shape[1:], data.num_classes, width, feature_dim, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    flip = bool(getattr(data, "flip", False))
    model.train()
    for step in range(num_steps):
        idx = train_idx[torch.randint(train_idx.shape[0], (batch_size,), generator=g)]
        xb = x[idx]
        if flip:
            xb = torch.where((torch.rand(batch_size, generator=g) < 0.5)[:, None, None, None], xb.flip(-1), xb)
        for group in opt.param_groups:  # cosine decay to 0: a well-settled classifier in a fixed budget
            group["lr"] = lr * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * step / num_steps)).item())
        loss = nn.functional.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval().requires_grad_(False)
    with torch.no_grad():
        f = torch.cat([model.body(x[chunk]) for chunk in train_idx.split(512)]).double()
        model.feature_scale.fill_(float((f - f.mean(0)).square().mean().sqrt()))
        acc = float((model(x[held_idx]).argmax(1) == y[held_idx]).double().mean()) if held_idx.numel() else float("nan")
    end = resource.getrusage(resource.RUSAGE_SELF)
    info = {"holdout_accuracy": acc, "num_train": int(train_idx.numel()), "num_holdout": int(held_idx.numel()),
            "final_loss": float(loss.detach()), "cpu_s": (end.ru_utime - start.ru_utime) + (end.ru_stime - start.ru_stime)}
    return model, info


class DomainFeatures(nn.Module):
    """The cached domain classifier's features: ``images [B, C, H, W] in [-1, 1] -> [B, feature_dim]``.

    ``DomainFeatures(data, cache_dir=None, **settings)``: loads ``<cache_dir>/domain_classifier/<key>.pt``
    if it exists, else trains (``train_domain_classifier(data, **settings)``) and writes it atomically.
    ``info`` holds the training record (held-out accuracy, CPU seconds) and ``cache_path`` the file.
    """

    def __init__(self, data, cache_dir: str | os.PathLike | None = None, **settings):
        super().__init__()
        defaults = {k: p.default for k, p in inspect.signature(train_domain_classifier).parameters.items()
                    if p.kind == p.KEYWORD_ONLY}
        unknown = sorted(set(settings) - set(defaults))
        if unknown:
            raise TypeError(f"unknown settings {unknown}; allowed: {sorted(defaults)}")
        settings = {**defaults, **settings}
        labels = getattr(data, "labels", None)
        images = getattr(data, "images", None)
        if images is None or labels is None:
            raise ValueError(f"`data` must be a labelled ImageDataset (images and labels), got {data!r}")
        digest = hashlib.sha256()
        digest.update(json.dumps({"version": VERSION, "flip": bool(getattr(data, "flip", False)), **settings},
                                 sort_keys=True).encode())
        digest.update(str(tuple(images.shape)).encode())
        digest.update(images.contiguous().numpy().tobytes())
        digest.update(labels.to(torch.int64).contiguous().numpy().tobytes())
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.cache_path = root / "domain_classifier" / f"{digest.hexdigest()[:32]}.pt"
        if self.cache_path.is_file():
            state = torch.load(self.cache_path, map_location="cpu", weights_only=True)
            cfg = state["config"]
            self.classifier = DomainClassifier(tuple(cfg["event_shape"]), cfg["num_classes"], cfg["width"],
                                               cfg["feature_dim"])
            self.classifier.load_state_dict(state["state_dict"])
            self.classifier.eval().requires_grad_(False)
            self.info = dict(state["info"], cached=True)
            log.info("domain classifier loaded from %s", self.cache_path)
        else:
            self.classifier, info = train_domain_classifier(data, **settings)
            self.info = dict(info, cached=False)
            buffer = io.BytesIO()
            torch.save({"config": self.classifier.config, "state_dict": self.classifier.state_dict(), "info": info}, buffer)
            atomic_write(self.cache_path, buffer.getvalue())
            log.info("domain classifier trained (held-out accuracy %.3f, %.0f CPU s), cached in %s",
                     info["holdout_accuracy"], info["cpu_s"], self.cache_path)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images.to(torch.float32))
