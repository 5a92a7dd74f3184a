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


class _RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of the parameters after every step (the sequence the EMA averages)."""

    def __init__(self, params, **kw):
        super().__init__(params, **kw)
        self.history = []

    def step(self, closure=None):
        out = super().step(closure)
        self.history.append([p.detach().clone() for g in self.param_groups for p in g["params"]])
        return out


def test_ema_follows_its_recursion_with_the_warm_up_decay():
    """ema_{k+1} = ema_k + (1 - d_k)(p_{k+1} - ema_k), d_k = min(decay, (1 + k)/(10 + k)), ema_0 = p_0.

    Recomputed in float64 from the parameters after each optimizer step (recorded by the optimizer
    itself), independently of the loop's foreach lerp.  A swapped weight (lerp by d_k instead of
    1 - d_k) or a missing warm-up moves the EMA by O(lr) = O(1e-2), against a float32 round-off of
    ~1e-6 here.  ema_decay = 0.9 so that the cap min(decay, .) binds after k = 80 of the 120 steps.
    """
    sde = VPSDE()
    model = ScoreMLP(sde, width=16, depth=1, generator=torch.Generator().manual_seed(0))
    start = [p.detach().double().clone() for p in model.parameters()]
    opts = []

    def factory(params):
        opts.append(_RecordingSGD(params, lr=0.05))
        return opts[0]

    config = TrainConfig(num_steps=120, batch_size=32, seed=0, ema_decay=0.9, warmup_steps=0)
    result = train(model, make_dataset("eight_gaussians"), config, optimizer=factory)
    history = opts[0].history
    assert len(history) == 120
    ema = start
    for k, params in enumerate(history):
        d = min(0.9, (1 + k) / (10 + k))
        ema = [e + (1 - d) * (p.double() - e) for e, p in zip(ema, params)]
    final = [p.detach().double() for p in result.ema_model.parameters()]
    moved = max(float((e - s).abs().max()) for e, s in zip(ema, start))
    assert moved > 1e-2  # the EMA really moved, so the comparison below can tell the rules apart
    for got, want in zip(final, ema):
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    # and it is not the raw parameters (decay 0.9 lags them by ~ 10 steps of drift)
    assert max(float((f - p.double()).abs().max()) for f, p in zip(final, history[-1])) > 1e-4
