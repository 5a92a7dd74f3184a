"""The low-NFE default end of the Karras and log-SNR grids (issue 17; docs/conventions.md, "Low-NFE grid end").

The rule written out: with N_eff = N * L_VP / L (L = log(sigma~(T) / sigma~(t_min)) the SDE's log-noise range,
L_VP that of the default VPSDE), sigma~_min = 0.3 for N_eff <= 10, 0.3 * 3^(-(N_eff - 10)/5) beyond, never below
the SDE's own sigma~(t_min) (where it then stays), and the own end where the rule is not below sigma~_max.  An explicit
``sigma_min="sde"`` (or the float sigma~(t_min) itself) gives the grids of before the rule, bit for bit.
"""
import math

import pytest
import torch

from scoresde import grids
from scoresde.samplers import DPMSolverPP, EDMHeun, UniPC
from scoresde.sdes import VESDE, VPSDE, SubVPSDE

F64 = torch.float64
SDES = [VPSDE(), SubVPSDE(), VESDE(), VPSDE().discrete(1000)]
SDE_IDS = ["VP", "subVP", "VE", "DiscreteVP"]


def _own(sde) -> float:
    return float(sde.sigma_ve(torch.tensor([sde.t_min], dtype=F64)))


def _span(sde) -> float:
    ends = sde.sigma_ve(torch.tensor([sde.T, sde.t_min], dtype=F64))
    return math.log(float(ends[0] / ends[1]))


def _rule(n: int, sde) -> float:  # the rule of the module docstring, written out
    n_eff = n * _span(VPSDE()) / _span(sde)
    return 0.3 if n_eff <= 10 else 0.3 * 3.0 ** (-(n_eff - 10) / 5)


def _vp_sigma_ve(sde: VPSDE, t: torch.Tensor) -> torch.Tensor:  # closed form: sigma~^2 = exp(int_0^t beta) - 1
    return torch.sqrt(torch.expm1(0.5 * (sde.beta_max - sde.beta_min) * t**2 + sde.beta_min * t))


def test_rule_values_at_the_anchors_and_the_sdes_own_end():
    vp = VPSDE()
    assert [grids.default_sigma_min(vp, n) for n in (1, 2, 5, 6, 8, 10)] == [0.3] * 6
    for n, want in ((12, 0.3 * 3 ** -0.4), (15, 0.1), (20, 0.1 / 3), (25, 0.1 / 9), (30, 0.3 / 81)):
        assert grids.default_sigma_min(vp, n) == pytest.approx(want, rel=1e-12)
    # below the SDE's own end the rule is that end, exactly: VP's 1.0005e-3 from N = 36 on (0.3 * 3^-5 = 0.00123 at 35)
    assert grids.default_sigma_min(vp, 35) > _own(vp) and grids.default_sigma_min(vp, 36) == _own(vp)
    # VE: the range log(20 / 0.01) = 7.60 in closed form (sigma~ = sigma_min (sigma_max/sigma_min)^t), so N_eff =
    # N * 11.93 / 7.60; the own end 0.01 is reached at N_eff = 10 + 5 log3(30) = 25.48, i.e. from N = 17 on
    ve = VESDE()
    assert _span(ve) == pytest.approx(math.log(2000.0), rel=1e-12)
    k = _span(vp) / math.log(2000.0)
    for n in (3, 6, 8, 10, 13, 16):
        want = 0.3 if n * k <= 10 else 0.3 * 3 ** (-(n * k - 10) / 5)
        assert grids.default_sigma_min(ve, n) == pytest.approx(want, rel=1e-12)
    assert grids.default_sigma_min(ve, 17) == 0.01 and grids.default_sigma_min(ve, 16) > 0.01
    # an SDE whose own end lies above the rule's value: its own end
    assert grids.default_sigma_min(VESDE(sigma_min=0.2, sigma_max=50.0), 20) == 0.2
    # an SDE whose noise never reaches the rule's value (range log 25: N_eff = 3.7 N): its own end up to 2 steps
    small = VESDE(sigma_min=0.01, sigma_max=0.25)
    assert [grids.default_sigma_min(small, n) for n in (1, 2)] == [0.01] * 2
    assert grids.default_sigma_min(small, 3) == pytest.approx(_rule(3, small), rel=1e-12) and _rule(3, small) < 0.25


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_rule_is_monotone_continuous_and_inside_the_sdes_range(sde):
    """Non-increasing in N, each step at most a factor 3^(k/5), k = L_VP / L the steps' scale (log-linear in N,
    no jump), within [own end, sigma~(T))."""
    vals = [grids.default_sigma_min(sde, n) for n in range(1, 201)]
    hi = float(sde.sigma_ve(torch.tensor([sde.T], dtype=F64)))
    k = _span(VPSDE()) / _span(sde)
    assert all(b <= a for a, b in zip(vals, vals[1:]))
    assert all(math.log(a / b) <= math.log(3) / 5 * k * (1 + 1e-12) for a, b in zip(vals, vals[1:]))
    assert all(_own(sde) <= v < hi for v in vals)
    assert vals[-1] == _own(sde)  # long grids end where they always did


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
@pytest.mark.parametrize("grid", ["karras", "log_snr"])
@pytest.mark.parametrize("n", [2, 6, 10, 20, 35, 80])
def test_default_grids_end_at_the_rule(sde, grid, n):
    ts = grids.resolve_grid(grid)(sde, n)
    assert float(ts[0]) == sde.T and bool((ts[1:] < ts[:-1]).all())
    want = max(_rule(n, sde), _own(sde))
    assert float(sde.sigma_ve(ts[-1:])) == pytest.approx(want, rel=1e-9)
    assert torch.equal(ts, getattr(grids, grid)(sde, n, sigma_min=grids.default_sigma_min(sde, n)))


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
@pytest.mark.parametrize("n", [1, 2, 7, 18, 60])
def test_explicit_sde_end_is_the_old_grid_bit_for_bit(sde, n):
    """``sigma_min="sde"`` / the float sigma~(t_min): eq. 5 (Karras) and lambda uniform (log-SNR) between the
    SDE's own ends, mapped through ``t_from_sigma_ve``, first time T and last time t_min exactly -- the grids
    before issue 17 (``karras``: one time, sigma~(T) mapped, not set to T)."""
    own = _own(sde)
    hi = float(sde.sigma_ve(torch.tensor([sde.T], dtype=F64)))
    rho = 7.0
    if n == 1:
        old_k = sde.t_from_sigma_ve(torch.tensor([hi], dtype=F64)).to(F64).clamp(sde.t_min, sde.T)
        old_l = torch.tensor([sde.T], dtype=F64)
    else:
        i = torch.arange(n, dtype=F64)
        sig = (hi ** (1 / rho) + i / (n - 1) * (own ** (1 / rho) - hi ** (1 / rho))) ** rho
        old_k = sde.t_from_sigma_ve(sig).to(F64).clamp(sde.t_min, sde.T)
        lam = torch.linspace(-math.log(hi), -math.log(own), n, dtype=F64)
        old_l = sde.t_from_sigma_ve(torch.exp(-lam)).to(F64).clamp(sde.t_min, sde.T)
        for old in (old_k, old_l):
            old[0], old[-1] = sde.T, sde.t_min
    for end in ("sde", own):
        assert torch.equal(grids.Karras(sigma_min=end)(sde, n), old_k)
        assert torch.equal(grids.karras(sde, n, sigma_min=end), old_k)
        assert torch.equal(grids.LogSNR(sigma_min=end)(sde, n), old_l)
        assert torch.equal(grids.log_snr(sde, n, sigma_min=end), old_l)
    assert torch.equal(grids.resolve_grid("karras_sde")(sde, n), old_k)
    assert torch.equal(grids.resolve_grid("log_snr_sde")(sde, n), old_l)


def test_log_snr_sigma_range_against_the_closed_form():
    """LogSNR(sigma_min, sigma_max) on VP: lambda = -log sigma~ of its times, sigma~ from VP's closed form
    (not the SDE's code), is uniform from -log sigma_max to -log sigma_min."""
    sde = VPSDE()
    ts = grids.LogSNR(sigma_min=0.05, sigma_max=10.0)(sde, 7)
    lam = -torch.log(_vp_sigma_ve(sde, ts))
    torch.testing.assert_close(lam, torch.linspace(-math.log(10.0), -math.log(0.05), 7, dtype=F64), rtol=0, atol=1e-10)
    assert float(ts[0]) < sde.T  # sigma_max below sigma~(T): the grid starts below T
    # the default sigma_max: starts at T exactly; the end sigma_min=0.05
    ts = grids.LogSNR(sigma_min=0.05)(sde, 7)
    assert float(ts[0]) == sde.T
    assert float(_vp_sigma_ve(sde, ts[-1:])) == pytest.approx(0.05, rel=1e-10)


def test_default_samplers_use_the_rule():
    """DPM-Solver++ and UniPC (log-SNR) and EDM Heun (Karras) resolve their default grid to the rule's grid."""
    sde = VPSDE()
    cases = ((DPMSolverPP(num_steps=8), "log_snr"), (UniPC(num_steps=8), "log_snr"), (EDMHeun(num_steps=8), "karras"))
    for sampler, grid in cases:
        assert torch.equal(sampler.make_grid(sde), getattr(grids, grid)(sde, 8, sigma_min=0.3))


@pytest.mark.parametrize("cls", [grids.Karras, grids.LogSNR])
def test_bad_ends_are_named(cls):
    sde = VPSDE()
    for bad in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sigma_min"):
            cls(sigma_min=bad)
        with pytest.raises(ValueError, match="sigma_max"):
            cls(sigma_max=bad)
    for bad in ("own", True, [0.1]):
        with pytest.raises((TypeError, ValueError), match="sigma_min"):
            cls(sigma_min=bad)
    with pytest.raises(TypeError, match="sigma_max"):
        cls(sigma_max="sde")  # "sde" names an end for sigma_min only
    with pytest.raises(ValueError, match="sigma_min"):
        cls(sigma_min=0.5, sigma_max=0.5)(sde, 5)  # sigma_min >= sigma_max
    with pytest.raises(ValueError, match="sigma_min"):
        cls(sigma_min=1e-4)(sde, 5)  # below the SDE's own end 1e-3
    with pytest.raises(ValueError, match="sigma_max"):
        cls(sigma_max=1e4)(sde, 5)  # above sigma~(T)
    fn = grids.karras if cls is grids.Karras else grids.log_snr
    with pytest.raises(ValueError, match="sigma_min"):
        fn(sde, 5, sigma_min=-1.0)
    with pytest.raises(TypeError, match="sigma_min"):
        fn(sde, 5, sigma_min="SDE")
    with pytest.raises(ValueError, match="num_steps"):
        grids.default_sigma_min(sde, 0)


@pytest.mark.parametrize("cls", [grids.Karras, grids.LogSNR])
def test_grid_objects_refuse_an_end_above_the_start_when_they_are_made(cls):
    with pytest.raises(ValueError, match="`sigma_min` must be < `sigma_max`, got sigma_min=2.0, sigma_max=1.0"):
        cls(sigma_min=2.0, sigma_max=1.0)
    cls(sigma_min=0.5, sigma_max=1.0)  # a valid pair is accepted
