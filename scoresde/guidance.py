"""Guidance (conditional generation) as score wrappers: each is a ``score(x: [B, *D], t: [B]) -> [B, *D]``.

A guided score is just another score function, so every sampler uses it unchanged::

    guided = ClassifierFreeGuidance(model.score_fn, labels, scale=3.0, null_label=model.null_label)
    x = DDIM().sample(guided, sde, (len(labels), 2), generator=g)

* ``ClassifierFreeGuidance`` (Ho & Salimans 2022): s = S s(x, t, c) + (1 - S) s(x, t, null).  S = 1 is
  plain conditional sampling, S = 0 unconditional; their "w" is S - 1.  The conditional model is
  called as ``cond_score_fn(x, t, labels)`` (e.g. ``ScoreMLP.score_fn`` with ``null_label`` =
  ``model.null_label``).  S = 1 and S = 0 make one model call per step, other S two.
* ``ClassifierGuidance`` (Dhariwal & Nichol 2021, in score form; Song et al. 2021, sec. 5):
  s = s(x, t) + w grad_x log p_phi(c | x, t) with a noise-conditioned classifier
  ``log_prob_fn(x, t) -> [B, K]``.  The gradient is taken with autograd switched on inside (samplers
  run under ``no_grad``).  ``log_softmax`` is applied to the classifier's output, so raw logits and
  log-probabilities both work (log_softmax of log-probabilities is the identity).

Bayes' rule, grad log p_t(x | c) = grad log p_t(x) + grad log p_t(c | x), makes classifier guidance
at w = 1 with the exact p_t(c | x) *equal* to the exact conditional score.  For a Gaussian mixture
with labels = components, all three are closed-form here:

* ``exact_conditional_score(mixture, sde, k)``: the perturbed score of component k alone;
* ``MixtureConditionalScore(mixture, sde)``: ``(x, t, labels) -> [B, *D]``, component ``labels[i]``
  per sample, label K (= ``null_label``) for the unconditional mixture score: an exact
  classifier-free-guidance model;
* ``MixtureClassifier(mixture, sde)``: ``(x, t) -> log p_t(k | x)`` ``[B, K]``, the log
  responsibilities at (alpha(t), sigma(t)): the exact noise-conditioned classifier.

``NoisyClassifier`` is a small noise-conditioned MLP classifier and ``train_classifier`` fits it by
cross-entropy on x_t = alpha(t) x_0 + sigma(t) z, t ~ U(t_min, T), labels = the component of x_0.

Labels are an int (the same class for the whole batch) or an integer tensor ``[B]``; the batch
size is checked at every call (a shape comparison, no host sync), the range once at construction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch
from torch import nn

from ._checks import append_dims, check_generator, check_int, check_nonnegative, check_positive
from .sdes import SDE, ScoreFn
from .data.toy import GaussianMixture, MixtureScore

__all__ = [
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "exact_conditional_score",
    "MixtureConditionalScore",
    "MixtureClassifier",
    "NoisyClassifier",
    "train_classifier",
]

CondScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``cond_score(x: [B, *D], t: [B], labels: [B] int64) -> [B, *D]``."""
LogProbFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``log_prob(x: [B, *D], t: [B]) -> [B, K]``, log p(c | x, t) (or logits)."""


# -- label handling ------------------------------------------------------------------------------


def _check_labels(labels, num_classes: int | None, name: str = "labels") -> tuple[int | torch.Tensor, int]:
    """Validate ``labels`` (int or 1-D integer tensor) against [0, num_classes); return (labels, max)."""
    if isinstance(labels, bool):
        raise TypeError(f"`{name}` must be an int or an integer tensor [B], got {labels!r}")
    if isinstance(labels, int):
        lo = hi = labels
    elif torch.is_tensor(labels):
        if labels.ndim != 1 or labels.numel() < 1:
            raise ValueError(f"`{name}` must be an int or a non-empty 1-D tensor [B], got shape {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise TypeError(f"`{name}` must have an integer dtype, got {labels.dtype}")
        labels = labels.long()
        lo, hi = int(labels.min()), int(labels.max())
    else:
        raise TypeError(f"`{name}` must be an int or an integer tensor [B], got {type(labels).__name__}")
    if lo < 0 or (num_classes is not None and hi >= num_classes):
        allowed = f"[0, {num_classes})" if num_classes is not None else "[0, inf)"
        raise ValueError(f"`{name}` must lie in {allowed}, got values in [{lo}, {hi}]")
    return labels, hi


def _batch_labels(labels: int | torch.Tensor, x: torch.Tensor, name: str = "labels") -> torch.Tensor:
    if isinstance(labels, int):
        return torch.full((x.shape[0],), labels, device=x.device, dtype=torch.long)
    if labels.shape[0] != x.shape[0]:
        raise ValueError(f"`{name}` has batch size {labels.shape[0]} but `x` has batch size {x.shape[0]}")
    return labels.to(x.device)


def _check_scale(scale) -> float:
    return check_nonnegative("scale", scale)


# -- the wrappers --------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ClassifierFreeGuidance:
    """s(x, t) = S s(x, t, c) + (1 - S) s(x, t, null)  (Ho & Salimans 2022, with S = 1 + w).

    Args:
        cond_score_fn: ``cond_score_fn(x, t, labels) -> [B, *D]``.
        labels: the classes c, an int or an integer tensor ``[B]`` in [0, num_classes).
        scale: S >= 0 (1: conditional, 0: unconditional, > 1: guided).
        null_label: the label meaning "no class".
        num_classes: classes are [0, num_classes); default ``null_label`` (``ScoreMLP``'s convention:
            null row C after classes 0..C-1).
    """

    cond_score_fn: CondScoreFn
    labels: int | torch.Tensor
    scale: float
    null_label: int
    num_classes: int | None = None

    def __post_init__(self):
        if not callable(self.cond_score_fn):
            raise TypeError(f"`cond_score_fn` must be callable as f(x, t, labels), got {type(self.cond_score_fn).__name__}")
        check_int("null_label", self.null_label, minimum=0)
        num_classes = self.null_label if self.num_classes is None else self.num_classes
        check_int("num_classes", num_classes)
        object.__setattr__(self, "num_classes", num_classes)
        labels, _ = _check_labels(self.labels, num_classes)
        has_null = labels == self.null_label if isinstance(labels, int) else bool((labels == self.null_label).any())
        if has_null:
            raise ValueError(f"`labels` must not contain `null_label` = {self.null_label} (use scale=0 for unconditional)")
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "scale", _check_scale(self.scale))

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        labels = _batch_labels(self.labels, x)
        if self.scale == 1.0:
            return self.cond_score_fn(x, t, labels)
        uncond = self.cond_score_fn(x, t, torch.full_like(labels, self.null_label))
        if self.scale == 0.0:
            return uncond
        return uncond + self.scale * (self.cond_score_fn(x, t, labels) - uncond)


@dataclass(frozen=True, eq=False)
class ClassifierGuidance:
    """s(x, t) = score_fn(x, t) + w grad_x log p_phi(c | x, t)  (Dhariwal & Nichol 2021, score form).

    Args:
        score_fn: the unconditional score ``score(x, t) -> [B, *D]``.
        log_prob_fn: noise-conditioned classifier ``log_prob_fn(x, t) -> [B, K]`` (log-probabilities or
            logits; ``log_softmax`` is applied).  Differentiated w.r.t. x with autograd enabled inside.
        labels: the classes c, an int or an integer tensor ``[B]`` in [0, K).
        scale: w >= 0 (0: unconditional; 1 with the exact classifier: the exact conditional score).
        num_classes: K, to check ``labels`` at construction; otherwise checked against the
            classifier's output width at every call.
    """

    score_fn: ScoreFn
    log_prob_fn: LogProbFn
    labels: int | torch.Tensor
    scale: float
    num_classes: int | None = None
    _max_label: int = field(init=False, repr=False, default=0)

    def __post_init__(self):
        for name in ("score_fn", "log_prob_fn"):
            if not callable(getattr(self, name)):
                raise TypeError(f"`{name}` must be callable as f(x, t), got {type(getattr(self, name)).__name__}")
        if self.num_classes is not None:
            check_int("num_classes", self.num_classes)
        labels, hi = _check_labels(self.labels, self.num_classes)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "_max_label", hi)
        object.__setattr__(self, "scale", _check_scale(self.scale))

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        score = self.score_fn(x, t)
        if self.scale == 0.0:
            return score
        return score + self.scale * self.classifier_gradient(x, t)

    def classifier_gradient(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """grad_x log p_phi(c | x, t), shape of ``x`` (detached)."""
        labels = _batch_labels(self.labels, x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            log_probs = self.log_prob_fn(xg, t)
            if not torch.is_tensor(log_probs) or log_probs.ndim != 2 or log_probs.shape[0] != x.shape[0]:
                got = tuple(log_probs.shape) if torch.is_tensor(log_probs) else type(log_probs).__name__
                raise ValueError(f"`log_prob_fn` must return log-probabilities [B, K] with B = {x.shape[0]}, got {got}")
            if self._max_label >= log_probs.shape[1]:
                raise ValueError(
                    f"`labels` must lie in [0, {log_probs.shape[1]}) (the classifier's K), got a label {self._max_label}"
                )
            selected = torch.log_softmax(log_probs, dim=1).gather(1, labels[:, None]).sum()
            (grad,) = torch.autograd.grad(selected, xg, allow_unused=True)
        return torch.zeros_like(x) if grad is None else grad.detach().to(x.dtype)


# -- exact targets for Gaussian mixtures -----------------------------------------------------------


def exact_conditional_score(mixture: GaussianMixture, sde: SDE, k: int) -> MixtureScore:
    """The exact conditional score grad_x log p_t(x | c = k): the perturbed score of component k alone."""
    return mixture.component(k).score_fn(sde)


def _alpha_sigma(sde: SDE, t: torch.Tensor, x: torch.Tensor):
    return sde.alpha(t).to(x.dtype), sde.sigma(t).to(x.dtype)


@dataclass(frozen=True, eq=False)
class MixtureConditionalScore:
    """Exact conditional score of a perturbed Gaussian mixture: ``(x, t, labels [B]) -> [B, *D]``.

    Label k < K gives component k's score grad log p_t(x | k); label K (``null_label``) gives the
    unconditional mixture score grad log p_t(x).  An exact stand-in for a classifier-free model.
    """

    mixture: GaussianMixture
    sde: SDE
    _components: tuple = field(init=False, repr=False)

    def __post_init__(self):
        comps = tuple(self.mixture.component(k) for k in range(self.mixture.num_components))
        object.__setattr__(self, "_components", comps)

    @property
    def num_classes(self) -> int:
        return self.mixture.num_components

    @property
    def null_label(self) -> int:
        return self.mixture.num_components

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = _batch_labels(labels, x)
        alpha, sigma = _alpha_sigma(self.sde, t, x)
        scores = [c.noisy_score(x, alpha, sigma) for c in self._components]
        scores.append(self.mixture.noisy_score(x, alpha, sigma))
        stacked = torch.stack(scores, 0)  # [K + 1, B, *D]
        index = labels.reshape(1, -1, *([1] * (x.ndim - 1))).expand(1, *x.shape)
        return stacked.gather(0, index)[0]


@dataclass(frozen=True, eq=False)
class MixtureClassifier:
    """Exact noise-conditioned classifier log p_t(k | x) ``[B, K]`` of a perturbed Gaussian mixture.

    log p_t(k | x) = log w_k + log N(x; alpha mu_k, alpha^2 Sigma_k + sigma^2 I) - log p_t(x), computed
    as a ``log_softmax`` over components (stable far from every component, unlike log of softmax).
    """

    mixture: GaussianMixture
    sde: SDE

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = _alpha_sigma(self.sde, t, x)
        log_comp = self.mixture.component_log_probs(x, alpha, sigma)
        return torch.log_softmax(log_comp, dim=1)


# -- a small learned classifier ------------------------------------------------------------------


class NoisyClassifier(nn.Module):
    """Noise-conditioned MLP classifier ``(x [B, *D], t [B]) -> log p_phi(c | x, t)`` ``[B, K]``.

    h = Lin(x c_in) + Lin(SiLU(Lin(emb(c_noise)))); ``depth`` times h <- h + Lin(SiLU(h));
    logits = Lin(SiLU(h)); output log_softmax(logits).  c_in = 1/sqrt(alpha^2 data_std^2 + sigma^2)
    and c_noise = ln(sigma/alpha)/4 as in ``scoresde.models.mlp``; emb = [sin 2 pi W c, cos 2 pi W c] with
    fixed W ~ N(0, 4^2).  Weights are initialised from ``generator`` (U(+-1/sqrt(fan_in)), as
    ``nn.Linear``), never from torch's global RNG.  Computes in the weights' dtype and returns the
    input's dtype, so it can be used directly as ``ClassifierGuidance``'s ``log_prob_fn``.
    """

    def __init__(
        self, sde: SDE, dim: int, num_classes: int, *, width: int = 64, depth: int = 2,
        embedding_dim: int = 32, data_std: float = 1.0, generator: torch.Generator | None = None,
    ):
        super().__init__()
        if not isinstance(sde, SDE):
            raise TypeError(f"`sde` must be a scoresde.sdes.SDE, got {type(sde).__name__}")
        self.dim = check_int("dim", dim)
        self.num_classes = check_int("num_classes", num_classes, minimum=2)
        check_int("width", width)
        check_int("depth", depth, minimum=0)
        check_int("embedding_dim", embedding_dim, minimum=2)
        if embedding_dim % 2:
            raise ValueError(f"`embedding_dim` must be even, got {embedding_dim}")
        self.data_std = check_positive("data_std", data_std)
        generator = check_generator(generator)
        self.sde = sde
        self.register_buffer("freqs", 4.0 * torch.randn(embedding_dim // 2, generator=generator))
        linear = partial(nn.utils.skip_init, nn.Linear)
        self.noise_mlp = nn.Sequential(linear(embedding_dim, width), nn.SiLU(), linear(width, width))
        self.input = linear(dim, width)
        self.blocks = nn.ModuleList(linear(width, width) for _ in range(depth))
        self.output = linear(width, num_classes)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    bound = 1 / math.sqrt(m.in_features)
                    m.weight.uniform_(-bound, bound, generator=generator)
                    m.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2 or x[0].numel() != self.dim or t.shape != x.shape[:1]:
            raise ValueError(f"expected x [B, *D] with prod(D) = {self.dim} and t [B], got x {tuple(x.shape)}, t {tuple(t.shape)}")
        dtype = self.input.weight.dtype
        alpha, sigma = self.sde.alpha(t).to(dtype), self.sde.sigma(t).to(dtype)
        c_in = torch.rsqrt(alpha**2 * self.data_std**2 + sigma**2)
        args = (2 * math.pi) * (0.25 * torch.log(sigma / alpha))[:, None] * self.freqs[None, :]
        emb = torch.cat([torch.sin(args), torch.cos(args)], 1)
        h = self.input(x.reshape(x.shape[0], self.dim).to(dtype) * c_in[:, None]) + self.noise_mlp(emb)
        for block in self.blocks:
            h = h + block(nn.functional.silu(h))
        return torch.log_softmax(self.output(nn.functional.silu(h)), dim=1).to(x.dtype)


def train_classifier(
    classifier: nn.Module,
    data,
    sde: SDE,
    *,
    num_steps: int = 2000,
    batch_size: int = 256,
    lr: float = 2e-3,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fit ``classifier(x_t, t) -> log-probs [B, K]`` by cross-entropy on noisy labelled data; returns the losses ``[num_steps]``.

    Each step: (x_0, c) = ``data.sample_with_labels(batch_size, generator)`` (e.g. a
    ``GaussianMixture``: c = component), t ~ U(t_min, T), z ~ N(0, I), x_t = alpha(t) x_0 + sigma(t) z,
    loss = mean_i -log p_phi(c_i | x_t,i, t_i); Adam with learning rate ``lr``.  All randomness is
    drawn from ``generator`` (on its device, where the classifier must live).  Leaves the classifier
    in eval mode.
    """
    if not isinstance(sde, SDE):
        raise TypeError(f"`sde` must be a scoresde.sdes.SDE, got {type(sde).__name__}")
    if not callable(getattr(data, "sample_with_labels", None)):
        raise TypeError(f"`data` must have sample_with_labels(n, generator), e.g. a GaussianMixture; got {type(data).__name__}")
    check_int("num_steps", num_steps)
    check_int("batch_size", batch_size)
    check_positive("lr", lr)
    generator = check_generator(generator)
    device = generator.device
    dtype = next(classifier.parameters()).dtype
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
    losses = torch.empty(num_steps, dtype=torch.float64)
    classifier.train()
    for step in range(num_steps):
        x0, labels = data.sample_with_labels(batch_size, generator, device=device, dtype=dtype)
        t = sde.t_min + (sde.T - sde.t_min) * torch.rand(batch_size, generator=generator, device=device, dtype=dtype)
        z = torch.randn(x0.shape, generator=generator, device=device, dtype=dtype)
        x_t = append_dims(sde.alpha(t), x0.ndim) * x0 + append_dims(sde.sigma(t), x0.ndim) * z
        loss = nn.functional.nll_loss(classifier(x_t, t), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[step] = loss.detach()
    classifier.eval()
    return losses
