"""Noise-conditioned networks and their preconditioning.

Contract: a model is an ``nn.Module`` with ``sde``, ``event_shape``, ``config`` (a plain dict, stored in
checkpoints as ``model_config``) and ``score_fn(x [B, *D], t [B], labels=None) -> [B, *D]``.
Backbones (``MLPBackbone``, ``UNet``) map ``(x, c_noise[, labels])`` to an output of x's shape and
become score models through ``Preconditioned`` (EDM's c_skip / c_out / c_in / c_noise).

* ``mlp``: ``ScoreMLP`` (the 2-D default), ``MLPBackbone``, the noise embeddings;
* ``unet``: a small convolutional U-Net backbone for ``[B, C, H, W]``;
* ``precond``: ``Preconditioned(backbone, sde, parameterization)`` and ``edm_coefficients``;
* ``energy``: ``EnergyMLP``, a scalar energy E(x, t) on the MLP whose score is -grad_x E (``score_fn.log_prob`` = -E).
"""
from .energy import EnergyMLP, EnergyScore
from .mlp import GaussianFourierEmbedding, MLPBackbone, ScoreMLP, SinusoidalEmbedding
from .precond import PARAMETERIZATIONS, Preconditioned, edm_coefficients
from .unet import UNet

__all__ = [
    "ScoreMLP", "MLPBackbone", "UNet", "Preconditioned", "edm_coefficients", "PARAMETERIZATIONS",
    "GaussianFourierEmbedding", "SinusoidalEmbedding", "EnergyMLP", "EnergyScore",
]
