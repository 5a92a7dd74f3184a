"""Guidance and likelihood options of the apps (``conf/guidance``, ``conf/likelihood``): checks, builders, metrics.

Guidance (``scoresde-sample guidance=<kind> guidance.scale=S guidance.label=c``), see ``scoresde.guidance``:

* ``cfg``: ``ClassifierFreeGuidance(model.score_fn, labels, S, null_label)`` of a conditional checkpoint;
* ``classifier``: ``ClassifierGuidance(score, NoisyClassifier, labels, S)``, the classifier trained on the
  data set's labels (``train_classifier``) before sampling; ``score`` is the checkpoint's unconditional
  score (its null label when conditional) or, with ``checkpoint=null``, the exact mixture score;
* ``exact`` (``checkpoint=null``, a Gaussian-mixture data set): ``ClassifierFreeGuidance`` of the exact
  ``MixtureConditionalScore``, s(x,t) + S (s(x,t|c) - s(x,t)); it equals classifier guidance with the
  exact classifier at w = S, and S = 1 is the exact conditional score.

``label`` is one class in [0, num_classes), or null: sample i gets class i mod num_classes.
Every check (scale >= 0, labels in range, a conditional checkpoint for ``cfg``, labelled data for
``classifier``, an exact mixture for ``exact``) runs before any training or sampling.

Per-class metrics of guided samples (``metrics.json`` ``precision``): the fraction of the samples of
class c that are *of* class c, judged by

* ``"mixture_assignment"`` for Gaussian-mixture data: the most responsible component
  (``GaussianMixture.assign``), the labels being the components;
* ``"nearest_neighbour"`` for the other labelled data sets (two moons, circles, pinwheel, two spirals):
  the label of the nearest of 4 n fresh labelled data points;

and ``spread``: per class, the rms distance of the samples to their mean (diversity), with the exact
value sqrt(tr Sigma_c) of the component for mixtures.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..data.datasets import MixtureDataset
from ..guidance import (ClassifierFreeGuidance, ClassifierGuidance, MixtureConditionalScore, NoisyClassifier,
                        train_classifier)
from ..data.toy import GaussianMixture

log = logging.getLogger(__name__)

__all__ = ["check_guidance_values", "build_guidance", "class_metrics", "class_target", "likelihood_metrics"]


def check_guidance_values(g: DictConfig | None) -> str:
    """The guidance kind, after checking the values no model is needed for (scale >= 0)."""
    kind = "none" if g is None else g.kind
    if kind not in ("none", "cfg", "classifier", "exact"):
        raise ValueError(f"guidance.kind must be one of none, cfg, classifier, exact; got {kind!r}")
    if kind != "none":
        scale = g.scale
        if not math.isfinite(scale) or scale < 0:
            raise ValueError(f"guidance.scale must be a finite number >= 0 (1: conditional, 0: unconditional), "
                             f"got {scale}")
    return kind


def _num_classes(kind: str, model, data, exact: bool) -> int:
    """The number of classes guidance ``kind`` can condition on, or a ValueError saying why it cannot."""
    if kind == "cfg":
        if exact:
            raise ValueError("guidance=cfg guides a conditional checkpoint, but checkpoint=null: pass "
                             "checkpoint=/path/to/last.pt of `scoresde-train conditional=true`, or use "
                             "guidance=exact for the exact conditional score of a mixture")
        k = getattr(model, "num_classes", 0) or 0
        if k <= 0:
            raise ValueError("guidance=cfg needs a label-conditioned checkpoint, but this one is unconditional "
                             "(model.num_classes=0): train it with `scoresde-train conditional=true`, or use "
                             "guidance=classifier")
        return k
    if kind == "exact":
        if not exact or not isinstance(data, MixtureDataset):
            raise ValueError("guidance=exact is the exact conditional score of a Gaussian-mixture data set: it needs "
                             "checkpoint=null and data=eight_gaussians, grid_gaussians, ncsn_two_modes or "
                             "anisotropic_mixture; for a checkpoint use guidance=cfg or guidance=classifier")
        return data.mixture.num_components
    # classifier
    k = getattr(data, "num_classes", 0)
    if k < 2:
        raise ValueError(f"guidance=classifier trains a classifier on the data set's labels, but {type(data).__name__} "
                         f"has {k} labels: choose a labelled data set (a mixture, two_moons, circles, pinwheel, "
                         "two_spirals)")
    return k


def build_guidance(g: DictConfig | None, *, score_fn, model, data, sde, n: int, exact: bool,
                   generator: torch.Generator, device: torch.device) -> tuple[Any, torch.Tensor | None, dict]:
    """(score_fn to sample, labels ``[n]`` or None, the ``guidance`` record of metrics.json).

    Checks first (labels in range, a model / data set that supports the kind), then builds; only
    ``guidance=classifier`` does work here (it trains its classifier with ``generator``).
    """
    kind = check_guidance_values(g)
    if kind == "none":
        return score_fn, None, {"kind": "none"}
    num_classes = _num_classes(kind, model, data, exact)
    if g.label is not None and not 0 <= g.label < num_classes:
        raise ValueError(f"guidance.label must be a class in [0, {num_classes}) for this {'model' if kind == 'cfg' else 'data set'}, "
                         f"got {g.label}; or null for every class in turn")
    if g.label is None:
        labels = torch.arange(n, device=device) % num_classes
    else:
        labels = torch.full((n,), int(g.label), device=device, dtype=torch.long)
    record = {"kind": kind, "scale": float(g.scale), "label": g.label, "num_classes": num_classes}
    if kind == "cfg":
        guided = ClassifierFreeGuidance(model.score_fn, labels, float(g.scale), null_label=model.null_label,
                                        num_classes=num_classes)
    elif kind == "exact":
        cond = MixtureConditionalScore(data.mixture, sde)
        guided = ClassifierFreeGuidance(cond, labels, float(g.scale), null_label=cond.null_label,
                                        num_classes=num_classes)
    else:
        c = g.classifier
        classifier = NoisyClassifier(sde, data.dim, num_classes, width=c.width, depth=c.depth,
                                     generator=generator).to(device)
        start = time.perf_counter()
        losses = train_classifier(classifier, _Labelled(data), sde, num_steps=c.num_steps, batch_size=c.batch_size, lr=c.lr,
                                  generator=generator)
        classifier.requires_grad_(False)
        tail = losses[-max(1, len(losses) // 10):]
        record["classifier"] = {**OmegaConf.to_container(c), "final_loss": float(tail.mean()),
                                "train_s": time.perf_counter() - start}
        log.info("trained the noisy classifier: %d steps, final cross-entropy %.4f", c.num_steps, float(tail.mean()))
        guided = ClassifierGuidance(score_fn, classifier, labels, float(g.scale), num_classes=num_classes)
    return guided, labels, record


class _Labelled:
    """A data set as ``train_classifier`` draws it: ``sample_with_labels(n, generator, device=, dtype=)``.

    (``scoresde.data.datasets.ToyDataset.sample_with_labels`` takes no ``device``; it draws on the generator's device.)
    """

    def __init__(self, data):
        self.data = data

    def sample_with_labels(self, n, generator, *, device=None, dtype=torch.float32):
        x, labels = self.data.sample_with_labels(n, generator, dtype=dtype)
        return x.to(device), labels.to(device)


def class_target(data, labels: torch.Tensor, n: int, generator: torch.Generator):
    """What guided samples with ``labels`` are compared with: a mixture, or data ``[4n, D]`` float64."""
    single = int(labels[0]) if bool((labels == labels[0]).all()) else None
    if isinstance(data, MixtureDataset):
        mix = data.mixture
        if single is not None:
            return mix.component(single)
        k = mix.num_components  # every class in turn: the equally weighted mixture
        return GaussianMixture(torch.full((k,), 1.0 / k, dtype=torch.float64), mix.means, mix.covs, mix.event_shape)
    if single is None:  # labels i.i.d. uniform in the data set too
        return data.sample(4 * n, generator, dtype=torch.float64).reshape(4 * n, -1)
    chunks, have = [], 0
    while have < 4 * n:
        x, y = data.sample_with_labels(4 * n * data.num_classes, generator, dtype=torch.float64)
        chunks.append(x.reshape(x.shape[0], -1)[y == single])
        have += chunks[-1].shape[0]
    return torch.cat(chunks)[: 4 * n]


def class_metrics(x: torch.Tensor, labels: torch.Tensor, data, generator: torch.Generator) -> tuple[dict, dict]:
    """(precision, spread) records of samples ``x`` ``[n, D]`` float64 drawn for ``labels`` ``[n]``."""
    labels = labels.cpu()
    if isinstance(data, MixtureDataset):
        method = "mixture_assignment"
        predicted = data.mixture.assign(x.reshape(x.shape[0], *data.event_shape))
        covs = data.mixture.covs
    else:
        method = "nearest_neighbour"
        ref, ref_labels = data.sample_with_labels(4 * x.shape[0], generator, dtype=torch.float64)
        ref = ref.reshape(ref.shape[0], -1)
        predicted = torch.cat([ref_labels[torch.cdist(chunk, ref).argmin(1)] for chunk in x.split(1024)])
        covs = None
    per_class, spread, exact_spread = {}, {}, {}
    for c in labels.unique().tolist():
        mask = labels == c
        per_class[str(c)] = float((predicted[mask] == c).double().mean())
        xc = x[mask]
        spread[str(c)] = float(((xc - xc.mean(0)) ** 2).sum(1).mean().sqrt())
        if covs is not None:
            exact_spread[str(c)] = float(torch.diagonal(covs[c]).sum().sqrt())
    precision = {"mean": float((predicted == labels).double().mean()), "per_class": per_class, "method": method}
    spread_record = {"mean": sum(spread.values()) / len(spread), "per_class": spread}
    if exact_spread:
        spread_record["exact_per_class"] = exact_spread
        spread_record["exact_mean"] = sum(exact_spread.values()) / len(exact_spread)
    return precision, spread_record


def likelihood_metrics(lcfg: DictConfig, score_fn, sde, data, *, generator: torch.Generator,
                       probe_generator: torch.Generator, device: torch.device) -> dict:
    """The ``nll`` record: PF-ODE NLL (nats) of ``lcfg.num_points`` held-out data points, with exact terms where known.

    ``{"mean", "stderr", "nfe", "num_points", "t_eps", "divergence", "time_s"}`` and, for data with an
    exact density (the mixtures): ``"exact_mean"`` = mean -log p(x) over the same points (a Monte Carlo
    estimate of the entropy H(p)), ``"exact_stderr"``, ``"kl_estimate"`` = mean (NLL - (-log p)) (an
    estimate of KL(p || p_model), up to the t_eps and solver error) and ``"kl_stderr"``.
    """
    options = OmegaConf.to_container(lcfg)
    num_points, batch_size = options.pop("num_points"), options.pop("batch_size")
    solver = instantiate(options, _convert_="all")
    x = data.sample(num_points, generator, dtype=torch.float64)
    start = time.perf_counter()
    nll, nfe, result = [], 0, None
    for chunk in x.split(batch_size):
        result = solver.run(score_fn, sde, chunk.to(device), generator=probe_generator)
        nll.append(result.nll.cpu())
        nfe += result.nfe
    nll = torch.cat(nll)
    out = {"mean": float(nll.mean()), "stderr": _stderr(nll), "nfe": nfe, "num_points": num_points,
           "t_eps": result.t_eps, "divergence": result.divergence, "time_s": time.perf_counter() - start}
    if getattr(data, "has_log_prob", False):
        exact = -data.log_prob(x).to(torch.float64).reshape(-1)
        gap = nll - exact
        out.update(exact_mean=float(exact.mean()), exact_stderr=_stderr(exact), kl_estimate=float(gap.mean()),
                   kl_stderr=_stderr(gap))
    return out


def _stderr(v: torch.Tensor) -> float:
    return float(v.std(unbiased=True) / math.sqrt(v.numel())) if v.numel() > 1 else float("nan")
