"""Noise-conditioned score networks for low-dimensional data.

``MLPBackbone(event_shape)`` is the network alone, ``backbone(x_in, c_noise[, labels]) -> [B, *D]``,
to wrap in ``scoresde.models.precond.Preconditioned`` (EDM's c_in / c_noise / c_skip / c_out, with the
parameterisations score | eps | denoiser | v); ``scoresde.models.unet.UNet`` is the image backbone.
``ScoreMLP`` below is the same MLP with its own built-in preconditioning (kept for its API and its
checkpoints: identical parameter names, and with ``data_std=1`` and "eps" it computes exactly what
``Preconditioned(MLPBackbone, "eps")`` does).

``ScoreMLP(sde, event_shape)`` is a residual SiLU MLP on flattened inputs ``[B, d]`` (``[B, *D]``
is flattened on the way in and reshaped on the way out, so image-shaped toys work), conditioned
on the noise level through an embedding of

    c_noise = ln(sigma(t) / alpha(t)) / 4     (``noise_input="log_sigma"``, default)
    c_noise = t                               (``noise_input="time"``)

The first is EDM's c_noise = ln(sigma) / 4 taken at the VE-ised noise level sigma/alpha; for VE
(alpha = 1) it is score_sde NCSN++'s ln sigma(t) up to the factor 1/4.  Using sigma/alpha rather
than sigma keeps it injective for VP, whose sigma(t) saturates at 1 for t > 0.5 while alpha(t)
still changes by a factor 40.  Embeddings: ``"fourier"`` (score_sde ``GaussianFourierProjection``:
[sin 2 pi W c, cos 2 pi W c], W ~ N(0, fourier_scale^2) fixed) or ``"sinusoidal"`` (DDPM's
transformer embedding of 1000 c, periods up to 10000).

The body sees x * c_in, c_in = 1 / sqrt(alpha^2 data_std^2 + sigma^2) (EDM's c_in in VP
coordinates: unit variance at every t for data of std ``data_std``; ``data_std=None`` feeds x as
is).  c_noise, c_in, c_skip and c_out come from ``scoresde.bridges.edm_coefficients``, as in
``Preconditioned``.  Its output is read in one of three parameterisations, and ``score_fn`` turns
it into a score with the bridges of ``scoresde.bridges`` (VP coordinates):

    "score"     s = out                     (or out / sigma(t) with ``scale_by_sigma``, NCSN style)
    "eps"       s = -out / sigma(t)         (DDPM's eps-network; ``bridges.eps_to_score``)
    "denoiser"  s = (alpha out - x)/sigma^2 (x0-prediction; ``bridges.denoiser_to_score``)

For "denoiser" with ``data_std`` set, the output is EDM-preconditioned (Karras et al. 2022,
Table 1) in VE-ised coordinates: x0_hat = c_skip x / alpha + c_out F, with sigma~ = sigma/alpha,
c_skip = data_std^2 / (sigma~^2 + data_std^2), c_out = sigma~ data_std / sqrt(sigma~^2 + data_std^2);
without it, an MLP's x0 error is amplified by alpha/sigma in the eps-residual at small noise.

The default Fourier scale 4 per unit of c_noise (= 1 per unit of ln sigma~; c_noise spans about 2
for VE and 3 for VP) is a measured choice: after 2000 steps on eight Gaussians (VP and VE) the
excess held-out DSM loss of the EMA model was 0.005-0.008 for scales 1 and 4 and for the
sinusoidal embedding, and 0.013-0.014 for scale 16.  (score_sde uses 16 per unit of ln sigma for
images, which would be 64 here.)

Optional class labels: ``num_classes = C > 0`` adds a learned label embedding of C + 1 rows; row C
(``null_label``) is the "no label" used when ``labels`` is None and, with label dropout, for
classifier-free guidance.

Input Fourier features (optional, ``input_features`` F > 0; Tancik et al. 2020, "Fourier features
let networks learn high frequency functions in low dimensional domains", Gaussian mapping): the
first layer sees phi(x) = [x, sin(2 pi B x), cos(2 pi B x)] instead of x, with a fixed B [F/2, d],
B_ij ~ N(0, input_fourier_scale^2) in units of the (c_in-scaled) input.  An MLP on raw 2-D
coordinates is slow to learn a score that changes on a scale much finer than the data's extent
(the tightly wound centre of two_spirals, a 5 x 5 grid of narrow modes); the features let it.
Off by default (F = 0 computes and initialises exactly as before).

Parameter count (W = width, E = embedding_dim, L = depth, d = data dim, C = num_classes, F = input_features):
    (E + W + 2) W  [noise MLP]  +  (d + F + 1) W  [input]  +  L (W + 1) W  [blocks]  +  (W + 1) d  [output]
    +  (C + 1) W  [labels, if C > 0].
The Fourier frequencies are a fixed buffer, not parameters.  Defaults (W = 128, L = 3, E = 64,
d = 2): 75,010 parameters.
"""
from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from .._checks import check_generator, check_in, check_int, check_positive
from ..bridges import denoiser_to_score, edm_coefficients, eps_to_score
from ..sdes import SDE

__all__ = [
    "GaussianFourierEmbedding", "SinusoidalEmbedding", "MLPBackbone", "ScoreMLP", "PARAMETERIZATIONS",
    "init_weights", "labels_or_null",
]

PARAMETERIZATIONS = ("score", "eps", "denoiser")


class GaussianFourierEmbedding(nn.Module):
    """[sin(2 pi W c), cos(2 pi W c)] with fixed W ~ N(0, scale^2), ``[B] -> [B, dim]`` (score_sde, Tancik et al. 2020)."""

    def __init__(self, dim: int, scale: float = 16.0, generator: torch.Generator | None = None):
        super().__init__()
        check_int("embedding_dim", dim, minimum=2)
        if dim % 2:
            raise ValueError(f"`embedding_dim` must be even, got {dim}")
        check_positive("fourier_scale", scale)
        w = torch.randn(dim // 2, generator=check_generator(generator)) * scale
        self.register_buffer("freqs", w)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        args = (2 * math.pi) * c[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class SinusoidalEmbedding(nn.Module):
    """DDPM's embedding of ``input_scale * c``: [sin(a f_i), cos(a f_i)], f_i = max_period^(-i/(dim/2 - 1)).

    With ``input_scale = 1000`` and c = t this is score_sde DDPM++'s embedding of 999 t (to 0.1%).
    """

    def __init__(self, dim: int, max_period: float = 10_000.0, input_scale: float = 1000.0):
        super().__init__()
        check_int("embedding_dim", dim, minimum=4)
        if dim % 2:
            raise ValueError(f"`embedding_dim` must be even, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(check_positive("max_period", max_period)) * torch.arange(half) / (half - 1))
        self.register_buffer("freqs", freqs)
        self.input_scale = check_positive("input_scale", input_scale)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        args = (self.input_scale * c)[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


@torch.no_grad()
def init_weights(module: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default initialisation of ``module``'s layers, drawn from ``generator``, never from torch's global RNG.

    Build the layers under ``with torch.device("meta"):`` (allocated without drawing anything, and
    without values); this materialises them on the CPU and initialises each once, in module order:
    ``nn.Linear`` and ``nn.Conv*`` weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (nn.Linear's
    own bound), ``nn.Embedding`` ~ N(0, 1), normalisation layers weight 1 and bias 0.  Used by
    ``MLPBackbone`` and ``UNet``; other parameters and buffers (e.g. Fourier frequencies) are left alone.
    """
    for m in module.modules():
        if any(p.is_meta for p in m.parameters(recurse=False)):
            m.to_empty(device="cpu", recurse=False)
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            bound = 1 / math.sqrt(m.weight[0].numel())
            m.weight.uniform_(-bound, bound, generator=generator)
            if m.bias is not None:
                m.bias.uniform_(-bound, bound, generator=generator)
        elif isinstance(m, nn.Embedding):
            m.weight.normal_(generator=generator)
        elif isinstance(m, (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d)):
            m.reset_parameters()


def _check_event_shape(event_shape) -> tuple[int, ...]:
    if isinstance(event_shape, int):
        event_shape = (event_shape,)
    event_shape = tuple(event_shape)
    if len(event_shape) < 1 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in event_shape):
        raise ValueError(f"`event_shape` must be a non-empty tuple of positive ints, got {event_shape!r}")
    return event_shape


def labels_or_null(labels: torch.Tensor | None, num_classes: int, like: torch.Tensor, name: str) -> torch.Tensor | None:
    """The labels a model with ``num_classes`` classes uses: ``labels``, or for None the null label
    ``num_classes`` for every sample (``[B]`` int64 like ``like [B]``); None for an unconditional model
    (num_classes = 0), which refuses labels with an error naming ``name``.  Used by ``MLPBackbone``,
    ``UNet`` and ``Preconditioned``."""
    if num_classes == 0:
        if labels is not None:
            raise ValueError(f"`labels` given to an unconditional {name} (num_classes=0)")
        return None
    if labels is None:
        return torch.full(like.shape, num_classes, dtype=torch.long, device=like.device)
    return labels


class NullLabel:
    """Mixin of the label-conditioned score models: ``null_label`` from ``num_classes``."""

    num_classes: int

    @property
    def null_label(self) -> int | None:
        """Index of the "no label" label, ``num_classes``; None for an unconditional model."""
        return self.num_classes if self.num_classes > 0 else None


class MLPBackbone(nn.Module):
    """The residual SiLU MLP as a backbone ``backbone(x_in [B, *D], c_noise [B], labels [B] | None) -> [B, *D]``.

    Architecture: e = embed(c_noise); cond = Lin(SiLU(Lin(e))) (+ label_embedding(labels));
    h = Lin(phi(x_in)); ``depth`` times h <- h + Lin(SiLU(h + cond)); out = Lin(SiLU(h)), with
    phi(x) = x, or with ``input_features`` F > 0 the input Fourier features of the module docstring,
    phi(x) = [x, sin 2 pi B x, cos 2 pi B x].  The input is flattened on the way in and reshaped on
    the way out.  No preconditioning: wrap it in ``scoresde.models.precond.Preconditioned`` (which feeds
    x_in = c_in x and c_noise), or use ``ScoreMLP``.

    Args: ``event_shape``; ``width`` W, ``depth`` L; ``embedding`` ("fourier" | "sinusoidal"),
    ``embedding_dim``, ``fourier_scale`` (see the module docstring); ``input_features`` F (even, 0 =
    off) and ``input_fourier_scale``; ``num_classes`` C > 0 adds a label embedding of C + 1 rows
    (row C, the null label, is used for ``labels=None``); ``generator`` initialises the weights
    (nn.Linear's U(+-1/sqrt(fan_in)), never torch's global RNG) and the frequencies.
    """

    def __init__(
        self,
        event_shape: tuple[int, ...] | int = (2,),
        *,
        width: int = 128,
        depth: int = 3,
        embedding: str = "fourier",
        embedding_dim: int = 64,
        fourier_scale: float = 4.0,
        input_features: int = 0,
        input_fourier_scale: float = 1.0,
        num_classes: int = 0,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        event_shape = _check_event_shape(event_shape)
        check_int("width", width)
        check_int("depth", depth, minimum=0)
        check_in("embedding", embedding, ("fourier", "sinusoidal"))
        check_int("input_features", input_features, minimum=0)
        if input_features % 2:
            raise ValueError(f"`input_features` must be even (sin and cos pairs), got {input_features}")
        check_positive("input_fourier_scale", input_fourier_scale)
        check_int("num_classes", num_classes, minimum=0)
        generator = check_generator(generator)
        self.event_shape = event_shape
        self.dim = math.prod(event_shape)
        self.num_classes = num_classes
        self._config = dict(event_shape=list(event_shape), width=width, depth=depth, embedding=embedding,
                            embedding_dim=embedding_dim, fourier_scale=fourier_scale, num_classes=num_classes)
        if input_features:  # recorded only when used: configs of checkpoints without them stay as they were
            self._config.update(input_features=input_features, input_fourier_scale=input_fourier_scale)
        if embedding == "fourier":
            self.embed = GaussianFourierEmbedding(embedding_dim, fourier_scale, generator)
        else:
            self.embed = SinusoidalEmbedding(embedding_dim)
        # Input Fourier features (Tancik et al. 2020): B [F/2, d] ~ N(0, input_fourier_scale^2), a fixed
        # buffer drawn after the noise embedding's frequencies, so F = 0 draws exactly as before.
        freqs = None
        if input_features:
            freqs = torch.randn(input_features // 2, self.dim, generator=generator) * input_fourier_scale
        self.register_buffer("input_freqs", freqs)
        with torch.device("meta"):  # allocated without drawing from torch's global RNG; init_weights draws them
            self.noise_mlp = nn.Sequential(nn.Linear(embedding_dim, width), nn.SiLU(), nn.Linear(width, width))
            self.label_embedding = nn.Embedding(num_classes + 1, width) if num_classes > 0 else None
            self.input = nn.Linear(self.dim + input_features, width)
            self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
            self.output = nn.Linear(width, self.dim)
        init_weights(self, generator)

    @property
    def config(self) -> dict:
        """The constructor's keyword arguments (except ``generator``) as a plain dict."""
        return dict(self._config)

    def _body(self, h: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None, name: str) -> torch.Tensor:
        """The MLP on flattened ``h [B, d]`` (weights' dtype) with noise input ``c_noise [B]``."""
        cond = self.noise_mlp(self.embed(c_noise.to(h.dtype)))
        if labels is not None and labels.shape != c_noise.shape:
            raise ValueError(f"`labels` must have shape [B] = [{c_noise.shape[0]}], got {tuple(labels.shape)}")
        labels = labels_or_null(labels, self.num_classes, c_noise, name)
        if labels is not None:
            cond = cond + self.label_embedding(labels)
        if self.input_freqs is not None:
            args = (2 * math.pi) * h @ self.input_freqs.to(h.dtype).T
            h = torch.cat([h, torch.sin(args), torch.cos(args)], dim=1)
        h = self.input(h)
        for block in self.blocks:
            h = h + block(nn.functional.silu(h + cond))
        return self.output(nn.functional.silu(h))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, *event_shape]``, ``c_noise [B]``, ``labels`` int64 ``[B]`` or None -> ``[B, *event_shape]``."""
        if x.shape[1:] != self.event_shape or c_noise.shape != x.shape[:1]:
            raise ValueError(f"expected x [B, *{self.event_shape}] and c_noise [B], got x {tuple(x.shape)} "
                             f"and c_noise {tuple(c_noise.shape)}")
        h = x.reshape(x.shape[0], self.dim).to(self.input.weight.dtype)
        return self._body(h, c_noise, labels, "MLPBackbone").reshape(x.shape).to(x.dtype)


class ScoreMLP(NullLabel, MLPBackbone):
    """Residual SiLU MLP score model ``[B, *event_shape], t [B] (, labels [B]) -> [B, *event_shape]``.

    Architecture: e = embed(c_noise); cond = Lin(SiLU(Lin(e))) (+ label_embedding(labels));
    h = Lin(x c_in); ``depth`` times h <- h + Lin(SiLU(h + cond)); out = Lin(SiLU(h)).

    Args:
        sde: the forward SDE (for alpha, sigma in c_noise, c_in and the bridges).
        event_shape: shape of one sample, e.g. ``(2,)`` or ``(3, 8, 8)``.
        width, depth: hidden width W and number of residual blocks L.
        parameterization: ``"score"``, ``"eps"`` (default, DDPM) or ``"denoiser"`` (x0).
        scale_by_sigma: with ``"score"`` only: s = out / sigma(t) (NCSN / score_sde ``scale_by_sigma``).
        embedding: ``"fourier"`` (default) or ``"sinusoidal"``; embedding_dim E (even).
        fourier_scale: std of the Fourier frequencies (per unit c_noise).
        input_features, input_fourier_scale: F > 0 random Fourier features of the scaled input
            (see the module docstring); 0 (default) feeds x c_in alone.
        noise_input: ``"log_sigma"`` (default) or ``"time"``; see the module docstring.
        data_std: std of the data for c_in, or None for no input scaling.
        num_classes: C > 0 for a label-conditional model (null label index C).
        generator: initialises weights and Fourier frequencies (default: fresh OS-entropy seed).

    Weights are initialised as ``nn.Linear`` does (U(-1/sqrt(fan_in), 1/sqrt(fan_in))) but from
    ``generator``, never from torch's global RNG.
    """

    def __init__(
        self,
        sde: SDE,
        event_shape: tuple[int, ...] | int = (2,),
        *,
        width: int = 128,
        depth: int = 3,
        parameterization: str = "eps",
        scale_by_sigma: bool = False,
        embedding: str = "fourier",
        embedding_dim: int = 64,
        fourier_scale: float = 4.0,
        noise_input: str = "log_sigma",
        data_std: float | None = 1.0,
        input_features: int = 0,
        input_fourier_scale: float = 1.0,
        num_classes: int = 0,
        generator: torch.Generator | None = None,
    ):
        if not isinstance(sde, SDE):
            raise TypeError(f"`sde` must be a scoresde.sdes.SDE, got {type(sde).__name__}")
        event_shape = _check_event_shape(event_shape)
        check_int("width", width)
        check_int("depth", depth, minimum=0)
        check_in("parameterization", parameterization, PARAMETERIZATIONS)
        check_in("embedding", embedding, ("fourier", "sinusoidal"))
        check_in("noise_input", noise_input, ("log_sigma", "time"))
        check_int("num_classes", num_classes, minimum=0)
        if not isinstance(scale_by_sigma, bool):
            raise TypeError(f"`scale_by_sigma` must be a bool, got {scale_by_sigma!r}")
        if scale_by_sigma and parameterization != "score":
            raise ValueError(
                f"`scale_by_sigma=True` applies to parameterization='score' only, got {parameterization!r} "
                "(the eps and denoiser bridges already divide by sigma)"
            )
        if data_std is not None:
            data_std = check_positive("data_std", data_std)
        generator = check_generator(generator)
        super().__init__(event_shape, width=width, depth=depth, embedding=embedding, embedding_dim=embedding_dim,
                         fourier_scale=fourier_scale, input_features=input_features,
                         input_fourier_scale=input_fourier_scale, num_classes=num_classes, generator=generator)

        self.sde = sde
        self.parameterization = parameterization
        self.scale_by_sigma = scale_by_sigma
        self.noise_input = noise_input
        self.data_std = data_std
        self._config = dict(
            event_shape=list(event_shape), width=width, depth=depth, parameterization=parameterization,
            scale_by_sigma=scale_by_sigma, embedding=embedding, embedding_dim=embedding_dim,
            fourier_scale=fourier_scale, noise_input=noise_input, data_std=data_std, num_classes=num_classes,
        )  # fmt: skip
        if input_features:
            self._config.update(input_features=input_features, input_fourier_scale=input_fourier_scale)

    @staticmethod
    def parameter_count(dim: int, width: int = 128, depth: int = 3, embedding_dim: int = 64, num_classes: int = 0,
                        input_features: int = 0) -> int:
        """Number of trainable parameters, by the formula in the module docstring."""
        labels = (num_classes + 1) * width if num_classes > 0 else 0
        return ((embedding_dim + width + 2) * width + (dim + input_features + 1) * width + depth * (width + 1) * width
                + (width + 1) * dim + labels)

    # -- evaluation ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The network output in its parameterisation (score, eps or x0), shape of ``x``.

        ``x``: ``[B, *event_shape]`` (any float dtype; computed in the weights' dtype and cast back),
        ``t``: ``[B]`` in [t_min, T], ``labels``: int64 ``[B]`` in ``range(num_classes + 1)`` or None.
        """
        if x.shape[1:] != self.event_shape or t.shape != x.shape[:1]:
            raise ValueError(
                f"expected x [B, *{self.event_shape}] and t [B], got x {tuple(x.shape)} and t {tuple(t.shape)}"
            )
        weight = self.input.weight
        c = edm_coefficients(self.sde, t, 1.0 if self.data_std is None else self.data_std)
        c_noise = c["c_noise"] if self.noise_input == "log_sigma" else t
        h_in = x.reshape(x.shape[0], self.dim).to(weight.dtype)
        h = h_in
        if self.data_std is not None:
            h = h * c["c_in_vp"].to(weight.dtype)[:, None]
        out = self._body(h, c_noise, labels, "ScoreMLP")
        if self.scale_by_sigma:
            out = out / c["sigma"].to(out.dtype)[:, None]
        elif self.parameterization == "denoiser" and self.data_std is not None:
            # EDM preconditioning in VE-ised coordinates: D = c_skip x/alpha + c_out F.
            c_skip = c["c_skip"] / c["alpha"]
            out = c_skip.to(out.dtype)[:, None] * h_in + c["c_out"].to(out.dtype)[:, None] * out
        return out.reshape(x.shape).to(x.dtype)

    def score_fn(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The score grad_x log p_t(x | labels), ``[B, *event_shape]``, via ``scoresde.bridges``.

        A bound ``model.score_fn`` is a ``ScoreFn``; ``functools.partial(model.score_fn, labels=y)``
        is the conditional one.
        """
        fn = self if labels is None else partial(self, labels=labels)
        if self.parameterization == "eps":
            return eps_to_score(fn, self.sde)(x, t)
        if self.parameterization == "denoiser":
            return denoiser_to_score(fn, self.sde)(x, t)
        return fn(x, t)

    def extra_repr(self) -> str:
        return f"sde={self.sde!r}, event_shape={self.event_shape}, parameterization={self.parameterization!r}"
