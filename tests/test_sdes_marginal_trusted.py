"""``SDE.marginal`` / ``perturb`` check t once, outside ``trusted_times()`` only (issue 16), and DSMLoss uses ``perturb``."""
import pytest
import torch

import scoresde.sdes
from scoresde import VESDE, VPSDE, SubVPSDE
from scoresde._checks import trusted_times
from scoresde.training.losses import DSMLoss


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(), SubVPSDE()], ids=["vp", "ve", "subvp"])
def test_marginal_checks_t_only_when_untrusted(sde, monkeypatch):
    calls = []
    original = scoresde.sdes.check_times
    monkeypatch.setattr(scoresde.sdes, "check_times", lambda *a, **k: calls.append(a[0]) or original(*a, **k))
    x0, t, z = torch.ones(3, 2), torch.tensor([0.2, 0.5, 0.9]), torch.zeros(3, 2)
    with trusted_times():
        sde.marginal(x0, t), sde.perturb(x0, t, z)
        sde.marginal(x0, torch.tensor([5.0, 5.0, 5.0]))  # not checked by design: the caller vouches
    assert calls == []  # no range check, so no host synchronisation, inside trusted_times
    sde.perturb(x0, t, z)
    assert calls == ["t"]  # outside: checked once
    with pytest.raises(ValueError, match=r"`t` must lie in \[t_min, T\]"):
        sde.marginal(x0, torch.tensor([0.5, 0.5, 1.5]))
    with pytest.raises(ValueError, match="`t` must be a 1-D tensor"):
        sde.marginal(x0, 0.5)


def test_dsm_loss_perturbs_with_the_sdes_perturb(monkeypatch):
    """The loss's x_t is the SDE's own perturb(x0, t, z), bit for bit, and the loss is ||sigma s(x_t) + z||^2."""
    sde = VPSDE()
    seen = []
    original = VPSDE.perturb
    monkeypatch.setattr(VPSDE, "perturb", lambda self, *a: seen.append(original(self, *a)) or seen[-1])
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 2, generator=g, dtype=torch.float64)
    t = torch.rand(64, generator=g, dtype=torch.float64) * 0.9 + 0.05
    z = torch.randn(64, 2, generator=g, dtype=torch.float64)

    def score(x, tt):
        return -x  # any score: the loss is a closed form of it
    loss = DSMLoss(sde)(score, x0, t=t, z=z)
    x_t = sde.alpha(t)[:, None] * x0 + sde.sigma(t)[:, None] * z
    assert len(seen) == 1 and torch.equal(seen[0], x_t)
    torch.testing.assert_close(loss, (sde.sigma(t)[:, None] * (-x_t) + z).pow(2).sum(1), rtol=1e-14, atol=1e-14)
