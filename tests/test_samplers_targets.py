"""Every sampler, driven by the exact score, reproduces every exact toy target.

Statistical design (n = 40 000 samples, fixed seeds):

* Quality: sliced W2 to the *exact* mixture (``metrics.sliced_w2_to_mixture``, 64 fixed random
  directions) against its i.i.d. floor: the same metric for 12 fresh exact samples of the same
  size.  Its relative spread (coefficient of variation, cv) does not shrink with n, because both
  the metric and its sd scale as n^(-1/2).  A sampler passes when its value is within 3 floor sds
  of the floor mean, i.e. ratio <= 1 + 3 cv (``_factor``, printed on failure).  Measured cv: 0.2-0.25
  for the ring and the grid (factor 1.6-1.8), 0.36 for the anisotropic mixture and 0.53 for the
  NCSN mixture, whose sliced W2 is dominated by the binomial mode-weight noise (mass moved between
  modes 14 apart); there the mode-weight check below is the sharper test.
* Mode weights: |assignment fraction - exact assignment fraction| <= 0.01 per component.  The
  binomial sd is sqrt(w (1 - w) / n): 0.005 for w = 0.5 at n = 10 000, where a perfect sampler would
  fail the 0.01 check 5 % of the time; at n = 40 000 it is at most 0.0025, so 0.01 is 4 sd.  The
  reference fraction is estimated from 400 000 exact samples (sd <= 0.0008).

Initialisation: x_init is drawn from the exact p_T of the target, which removes the prior-mismatch
error (a property of the SDE's T, not of the sampler: e.g. VP's alpha(1) = 0.0066 shifts the NCSN
mixture's p_T off N(0, I)); the annealed-Langevin family starts from the prior, since it corrects it.
"""
import functools

import pytest
import torch

import sampler_registry
from scoresde.evaluation.metrics import expected_mode_weights, mode_weights, noise_floor, sliced_w2_to_mixture
from scoresde.samplers import (
    DDIM,
    DDPM,
    AncestralPredictor,
    EDMHeun,
    AnnealedLangevin,
    LangevinCorrector,
    PredictorCorrector,
    ProbabilityFlowODE,
    ReverseDiffusionPredictor,
    ReverseSDE,
)
from scoresde.sdes import VESDE, VPSDE, SubVPSDE
from scoresde.data.toy import TARGETS

N = 40_000
MODE_TOL = 0.01

SAMPLERS = {
    "euler_maruyama": ReverseSDE(num_steps=500),
    "reverse_diffusion": ReverseSDE(ReverseDiffusionPredictor(), num_steps=500),
    "ancestral": ReverseSDE(AncestralPredictor(), num_steps=500),
    "pc": PredictorCorrector(num_steps=200),
    "pc_langevin_batch": PredictorCorrector(corrector=LangevinCorrector(snr=0.1, norm="batch"), num_steps=200),
    "ode_rk45": ProbabilityFlowODE(method="RK45"),
    "ode_heun": ProbabilityFlowODE(method="heun", num_steps=50),
    "ddpm": DDPM(num_steps=500),
    "ddim": DDIM(num_steps=200),  # at 100 steps: 1.9x floor on the 5x5 grid (first-order bias)
    # measured sliced-W2 / floor on the four targets (order of toy.TARGETS), n = 40 000:
    "ode_rk4": ProbabilityFlowODE(),  # rk4, uniform, 10 grid times (NFE 37): 0.92 / 0.86 / 1.66 / 0.74
    "edm_heun": EDMHeun(num_steps=32),  # Karras grid, NFE 63: 1.12 / 1.17 / 1.70 / 0.95 (18 steps: 2.9-3.0x)
    "edm_heun_churn": EDMHeun(num_steps=64, s_churn=40.0, s_tmin=0.05, s_tmax=50.0),  # 0.87 / 1.15 / 0.88 / 0.74
}
# every other conf/sampler yaml at its own defaults (derived: a new sampler's yaml adds it), in the
# slow matrix only; its default-run quality check is its own module's test
_DERIVED = [name for name, s in sampler_registry.fast_yaml_samplers().items()
            if type(s) not in {type(v) for v in SAMPLERS.values()}]
SAMPLERS.update({name: sampler_registry.from_yaml(name) for name in _DERIVED})


@functools.lru_cache(maxsize=None)
def _reference(target_name):
    mixture = TARGETS[target_name]()
    directions = torch.randn(64, 2, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    directions /= directions.norm(dim=1, keepdim=True)
    metric = functools.partial(sliced_w2_to_mixture, directions=directions)
    floor = noise_floor(metric, mixture.sample, N, repeats=12, generator=torch.Generator().manual_seed(12),
                        reference=mixture)
    weights = expected_mode_weights(mixture, 400_000, generator=torch.Generator().manual_seed(13))
    return mixture, metric, floor, weights


def _factor(floor) -> float:
    """Allowed ratio to the floor mean: 3 floor standard deviations above it."""
    return 1 + 3 * floor.std / floor.mean


def _check(x, target_name):
    mixture, metric, floor, weights = _reference(target_name)
    ratio = metric(x, mixture) / floor.mean
    mode_err = float((mode_weights(x, mixture) - weights).abs().max())
    factor = _factor(floor)
    print(f"[{target_name}] sliced-W2 / floor = {ratio:.2f} (allowed {factor:.2f}), mode-weight error = {mode_err:.4f}")
    assert ratio <= factor, f"sliced W2 is {ratio:.2f}x the i.i.d. floor (allowed {factor:.2f})"
    assert mode_err <= MODE_TOL, f"mode-weight error {mode_err:.4f} > {MODE_TOL}"
    return ratio, mode_err


# The full matrix (every sampler x every target, about 5 minutes on 2 cores) is ``slow``; the
# default run covers every sampler on one target and every target with one sampler.
_TARGET_NAMES = list(TARGETS)
_DIAGONAL = [(name, _TARGET_NAMES[i % len(_TARGET_NAMES)]) for i, name in enumerate(SAMPLERS) if name not in _DERIVED]
_MATRIX = [
    pytest.param(s, t, marks=() if (s, t) in _DIAGONAL else pytest.mark.slow)
    for s in SAMPLERS for t in _TARGET_NAMES
]


@pytest.mark.parametrize("sampler_name, target_name", _MATRIX)
def test_sampler_matches_target_with_exact_score(sampler_name, target_name):
    sde = VPSDE()
    mixture = TARGETS[target_name]()
    g = torch.Generator().manual_seed(sum(map(ord, sampler_name + target_name)))
    x_init = mixture.marginal(sde, sde.T).sample(N, g)
    x = SAMPLERS[sampler_name].sample(mixture.score_fn(sde), sde, x_init=x_init, generator=g)
    _check(x, target_name)


@pytest.mark.parametrize("sde", [VESDE(), SubVPSDE()], ids=["VE", "subVP"])
@pytest.mark.parametrize("sampler_name", ["euler_maruyama", "pc", "ode_heun", "ddim"])
@pytest.mark.slow
def test_samplers_on_other_sdes(sampler_name, sde):
    mixture = TARGETS["anisotropic_mixture"]()
    g = torch.Generator().manual_seed(3)
    x_init = mixture.marginal(sde, sde.T).sample(N, g)
    x = SAMPLERS[sampler_name].sample(mixture.score_fn(sde), sde, x_init=x_init, generator=g)
    _check(x, "anisotropic_mixture")


@pytest.mark.slow
def test_ddpm_on_the_discrete_chain_matches_target():
    sde = VPSDE().discrete(1000)
    mixture = TARGETS["grid_gaussians"]()
    g = torch.Generator().manual_seed(4)
    x_init = mixture.marginal(sde, sde.T).sample(N, g)
    _check(DDPM(num_steps=1000).sample(mixture.score_fn(sde), sde, x_init=x_init, generator=g), "grid_gaussians")


_ALD_BIAS = pytest.mark.xfail(
    reason="annealed Langevin's known mode-weight bias (+0.006 on the light mode, see its docstring) "
    "is 3 binomial sd at n = 40 000 and shows in the sliced W2 of this well-separated target",
    strict=False,
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "target_name", [pytest.param(t, marks=_ALD_BIAS if t == "ncsn_two_modes" else ()) for t in TARGETS]
)
def test_annealed_langevin_matches_target_from_the_prior(target_name):
    """NCSN Alg. 1 from the VE prior N(0, 20^2 I), no exact initialisation (its weights are tested
    to 0.01 in test_samplers_api.py)."""
    sde = VESDE()
    mixture = TARGETS[target_name]()
    g = torch.Generator().manual_seed(5)
    x = AnnealedLangevin().sample(mixture.score_fn(sde), sde, (N, 2), generator=g)
    _check(x, target_name)
