"""The EMA weights returned by ``train`` are plain tensors, not nodes of an autograd graph."""
import torch

from scoresde.data.datasets import make_dataset
from scoresde.models.mlp import ScoreMLP
from scoresde.sdes import VPSDE
from scoresde.training import TrainConfig, train


def test_ema_weights_carry_no_autograd_history():
    # Regression: the EMA lerp ran with grad enabled, so every EMA parameter hung on a graph that
    # grew with each step and made later backward passes (likelihood, guidance) ~200x slower.
    sde = VPSDE()
    model = ScoreMLP(sde, width=16, depth=1, generator=torch.Generator().manual_seed(0))
    result = train(model, make_dataset("eight_gaussians"), TrainConfig(num_steps=20, batch_size=32, seed=0))
    for p in result.ema_model.parameters():
        assert p.grad_fn is None and not p.requires_grad
    for p in result.model.parameters():
        assert p.grad_fn is None and p.requires_grad
