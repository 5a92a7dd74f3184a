"""Energy parameterisation: a network with a scalar output E_theta(x, t) whose score is -grad_x E_theta.

``EnergyMLP(sde, event_shape)`` is the residual MLP of ``scoresde.models.mlp`` (``MLPBackbone``: the
same body, noise embeddings and initialisation, not a copy) read as an energy.  With EDM's
coefficients (``bridges.edm_coefficients``, VP coordinates, sigma_d = ``sigma_data``)

    v = sigma(t)^2 + alpha(t)^2 sigma_d^2,   x_in = x / sqrt(v)   (c_in),   c_noise = ln(sigma / alpha) / 4,
    F = MLPBackbone(x_in, c_noise) in R^d,

the energy and the score are

    E_theta(x, t) = 1/2 ||x_in||^2  +  (sqrt(v) / sigma) <x_in, F>                        [B]
    s_theta(x, t) = -grad_x E_theta = -x / v  -  (F + J_F^T x_in) / sigma                   [B, *D]

and ``log_prob(x, t) = -E_theta(x, t)``, log p_t up to a constant that depends on t only (so it serves
MALA at a fixed t, ``samplers.Langevin(metropolis=True)``, and the PC corrector with ``metropolis=True``,
but differences across t mean nothing).

**Why this form** (the time conditioning and the sigma scaling).  The first term is the exact energy
of N(0, sigma_d^2 I) data diffused to time t, ||x||^2 / (2 v): at large noise (the prior) it is the
whole answer, and the network has to learn only the data's departure from a Gaussian.  The second
term is an "E = <x, f(x, t)>" energy whose gradient divided by sigma is an eps-prediction:
-sigma s_theta = F + J_F^T x_in + sigma x / v plays the part of DDPM's eps-hat, so the "sigma2" DSM
loss reads ||eps-hat - z||^2 exactly as for ``ScoreMLP(parameterization="eps")``, and the score has the
magnitude 1/sigma that sharp modes need at small noise (a bare scalar head would give a score of
order 1 there; the denoiser-type energy ||x - alpha D(x)||^2 / (2 sigma^2) makes the score vanish with
the Jacobian of D on broad data).  The factor sqrt(v)/sigma is the one that turns the gradient with
respect to x_in (unit scale, as the backbone sees it) into 1/sigma.  Salimans & Ho 2021 ("Should
EBMs model the energy or the score?", ICLR EBM workshop) report that energies differentiated by
autograd ("constrained score models") do as well as unconstrained score networks of a comparable
structure; Du et al. 2023 ("Reduce, reuse, recycle", ICML) use an energy parameterisation of a
diffusion model so that Metropolis-corrected samplers (MALA, HMC) and products of models become
possible.  Their exact parameterisations were not checked from here (only their abstracts); the
form above is this library's choice, for the reasons given.

**Autograd.**  The score is computed with gradients switched on inside (samplers run under
``torch.no_grad``).  When gradients are enabled by the caller and something needs them (the model's
parameters while training, or ``x`` itself, as in the exact PF-ODE divergence of
``scoresde.likelihood``), the gradient is taken with ``create_graph=True``, so the same DSM loss
trains the model and second derivatives exist; otherwise the score is detached.  One score
evaluation costs one forward and one backward pass of the MLP, and training differentiates through
that backward pass: measured (``benchmarks/energy.py``, one thread, width 128) about 1.7x the CPU of a
``ScoreMLP`` training step (batch 512) and 1.1-1.3x per score evaluation while sampling (batch 2000).  Not usable under
``torch.inference_mode`` (an error says so).

``model.score_fn`` is an ``EnergyScore``: callable as ``score_fn(x, t, labels=None)`` like every
model's, with ``log_prob(x, t)`` and ``energy(x, t)``, so ``scoresde.load(path).score_fn`` carries its
log-density to MALA.  Checkpoints store the class path and ``config`` as every model's does.
"""
from __future__ import annotations

import torch
from torch import nn

from .._checks import append_dims, check_generator, check_positive
from ..bridges import edm_coefficients
from ..sdes import SDE
from .mlp import MLPBackbone, NullLabel, ScoreMLP, _check_event_shape

__all__ = ["EnergyMLP", "EnergyScore"]


class EnergyScore:
    """``model.score_fn`` of an energy model: ``score(x, t, labels=None) = -grad_x E``, with ``log_prob`` and ``energy``.

    ``log_prob(x, t) -> [B]`` is -E_theta, log p_t(x) up to a constant in t (what MALA reads as
    ``score_fn.log_prob``).  ``event_shape`` is the model's (so shape checks find it).
    """

    def __init__(self, model: "EnergyMLP"):
        self.model = model
        self.event_shape = model.event_shape

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.score(x, t, labels)

    def log_prob(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """-E_theta(x, t) ``[B]`` (unnormalised log p_t)."""
        return -self.model.energy(x, t, labels)

    def energy(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """E_theta(x, t) ``[B]``."""
        return self.model.energy(x, t, labels)

    def __repr__(self) -> str:
        return f"EnergyScore({type(self.model).__name__}, event_shape={self.event_shape})"


class EnergyMLP(NullLabel, nn.Module):
    """Energy model ``E_theta(x [B, *D], t [B]) -> [B]`` on the residual MLP; its score is -grad_x E (module docstring).

    Args:
        sde: the forward SDE (alpha, sigma in c_in, c_noise and the sqrt(v)/sigma scale).
        event_shape: shape of one sample, e.g. ``(2,)`` or ``(1, 4, 4)`` (flattened by the MLP).
        width, depth, embedding, embedding_dim, fourier_scale, input_features, input_fourier_scale:
            the ``MLPBackbone``'s (``scoresde.models.mlp``).
        sigma_data: sigma_d > 0, the data's std (the Gaussian base energy and c_in).
        num_classes: C > 0 for a label-conditional energy (null label C, used for ``labels=None``).
        generator: initialises the backbone (never torch's global RNG).

    ``model(x, t, labels)`` is the energy ``[B]``; ``model.score_fn`` the score (``EnergyScore``).
    """

    def __init__(
        self,
        sde: SDE,
        event_shape: tuple[int, ...] | int = (2,),
        *,
        width: int = 128,
        depth: int = 3,
        embedding: str = "fourier",
        embedding_dim: int = 64,
        fourier_scale: float = 4.0,
        input_features: int = 0,
        input_fourier_scale: float = 1.0,
        sigma_data: float = 1.0,
        num_classes: int = 0,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if not isinstance(sde, SDE):
            raise TypeError(f"`sde` must be a scoresde.sdes.SDE, got {type(sde).__name__}")
        event_shape = _check_event_shape(event_shape)
        self.sigma_data = check_positive("sigma_data", sigma_data)
        self.backbone = MLPBackbone(
            event_shape, width=width, depth=depth, embedding=embedding, embedding_dim=embedding_dim,
            fourier_scale=fourier_scale, input_features=input_features, input_fourier_scale=input_fourier_scale,
            num_classes=num_classes, generator=check_generator(generator))
        self.sde = sde
        self.event_shape = event_shape
        self.num_classes = num_classes
        self._config = {**self.backbone.config, "sigma_data": self.sigma_data}

    @property
    def config(self) -> dict:
        """The constructor's keyword arguments (except ``sde`` and ``generator``; stored in checkpoints)."""
        return dict(self._config)

    def _check(self, x: torch.Tensor, t: torch.Tensor) -> None:
        if not torch.is_tensor(x) or not torch.is_tensor(t):
            raise TypeError(f"`x` and `t` must be tensors, got {type(x).__name__} and {type(t).__name__}")
        if x.shape[1:] != self.event_shape or t.shape != x.shape[:1]:
            raise ValueError(f"expected x [B, *{self.event_shape}] and t [B], got x {tuple(x.shape)} and t {tuple(t.shape)}")
        if torch.is_inference_mode_enabled():
            raise RuntimeError("an energy model's score is -grad E by autograd: it cannot run under "
                               "torch.inference_mode (use torch.no_grad)")

    def energy(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """E_theta(x, t) ``[B]`` in x's dtype: 1/2 ||x_in||^2 + (sqrt(v)/sigma) <x_in, F> (module docstring)."""
        self._check(x, t)
        c = edm_coefficients(self.sde, t, self.sigma_data)
        x_in = append_dims(c["c_in_vp"].to(x.dtype), x.ndim) * x
        f = self.backbone(x_in, c["c_noise"].to(x.dtype), labels).to(x.dtype)
        scale = 1.0 / (c["sigma"] * c["c_in_vp"]).to(x.dtype)  # sqrt(v) / sigma
        return 0.5 * x_in.flatten(1).pow(2).sum(1) + scale * (x_in * f).flatten(1).sum(1)

    forward = energy

    def score(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """-grad_x E_theta(x, t) ``[B, *D]``; with a graph when the caller's gradients need one (module docstring)."""
        self._check(x, t)
        wanted = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
        with torch.enable_grad():
            xg = x if x.requires_grad and wanted else x.detach().requires_grad_(True)
            energy = self.energy(xg, t, labels)
            (grad,) = torch.autograd.grad(energy.sum(), xg, create_graph=wanted)
        return -grad if wanted else -grad.detach()

    @property
    def score_fn(self) -> EnergyScore:
        """The score function ``score_fn(x, t, labels=None)``, with ``log_prob`` = -E (``EnergyScore``)."""
        return EnergyScore(self)

    @staticmethod
    def parameter_count(dim: int, width: int = 128, depth: int = 3, embedding_dim: int = 64, num_classes: int = 0,
                        input_features: int = 0) -> int:
        """Trainable parameters: those of the ``MLPBackbone`` (the energy adds none)."""
        return ScoreMLP.parameter_count(dim, width, depth, embedding_dim, num_classes, input_features)

    def extra_repr(self) -> str:
        return f"sde={self.sde!r}, event_shape={self.event_shape}, sigma_data={self.sigma_data}"
