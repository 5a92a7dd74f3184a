"""Every sampler, driven by the exact score, reproduces every exact toy target.

Statistical design (n = 40 000 samples, fixed seeds):

* Quality: sliced W2 to the *exact* mixture (``metrics.sliced_w2_to_mixture``, 64 fixed random
  directions) against its i.i.d. floor: the same metric for 12 fresh exact samples of the same
  size.  Its relative spread (coefficient of variation, cv) does not shrink with n, because both
  the metric and its sd scale as n^(-1/2).  A sampler passes when its value is within 3 floor sds
  of the floor mean, i.e. ratio <= 1 + 3 cv (``_factor``, printed on failure).  The factors at
  n = 40 000 with these seeds (cv from 12 repeats) are 2.19 for the ring of eight Gaussians, 1.77
  for the 5x5 grid, 2.63 for the NCSN mixture (its sliced W2 is dominated by the binomial
  mode-weight noise, mass moved between modes 14 apart) and 2.12 for the anisotropic mixture: a
  coarse check, which modes 10 % too wide pass.  The within-mode errors below are the sharp one.
* Within-mode errors (``evaluation.modes.within_mode_errors``: per-component mean error in units of
  the component's std, relative covariance error, weight error, by exact soft responsibilities)
  against their i.i.d. floor (``within_mode_draws``, 100 exact samples of the same n): each
  scalar must be <= 2 x the floor's 95th percentile (``_within_mode_tolerance``).  Why 2 x p95:
  for exact samples, sqrt(n w_k) x mean_error_k is chi with d = 2 degrees of freedom (Rayleigh,
  P(> r) = exp(-r^2/2)) and the covariance and weight errors have Gaussian-like tails, so the
  statistic at twice its 95th percentile (4.9 for one Rayleigh, higher for a maximum over K
  components) has a tail below exp(-12) ~ 6e-6 per component: at most 25 x 6e-6 ~ 2e-4 per check
  with 25 components, the false-failure rate (the p95 estimate from 100 repeats lies between the
  93rd and 97th percentiles, which changes this by less than a factor 2).  Modes 10 % too wide in
  std give a covariance error of 0.21 against an allowed 0.10 on the ring, 0.19 on the 5x5 grid
  (25 components of weight 1/25: a higher floor) and 0.065 on the anisotropic and NCSN mixtures.
  Measured on the 15 default-run pairs: most use under 0.65 of their allowance; closest are PC (200
  steps) on the anisotropic mixture (covariance error 0.060, allowed 0.065), EDM Heun (32 steps) on
  the ring (mean error 0.081, allowed 0.089), EDM Heun with churn on the anisotropic mixture (0.058
  of 0.065) and the Heun ODE on the NCSN mixture / the grid (0.78, 0.76): discretisation biases of
  those step counts, several floor p95s large, which the within-mode errors resolve and sliced W2
  (all these pairs at 0.5-1.7 of its floor) does not.  Fewer steps for these samplers would fail.
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
from scoresde.evaluation.modes import WITHIN_MODE_SCALARS, within_mode_draws, within_mode_errors
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


@functools.lru_cache(maxsize=None)
def _within_mode_tolerance(target_name: str, n: int) -> dict:
    """2 x the 95th percentile of each within-mode scalar over 100 exact samples of size ``n`` (module docstring)."""
    draws = within_mode_draws(TARGETS[target_name](), n, repeats=100, generator=torch.Generator().manual_seed(14))
    return {k: 2 * float(torch.quantile(torch.as_tensor(v), 0.95)) for k, v in draws.items()}


def _check_within_modes(x, target_name):
    errors = within_mode_errors(x, TARGETS[target_name]())
    allowed = _within_mode_tolerance(target_name, x.shape[0])
    print(f"[{target_name}] within-mode errors " + ", ".join(f"{k} = {errors[k]:.4f} (allowed {allowed[k]:.4f})"
                                                           for k in WITHIN_MODE_SCALARS))
    for k in WITHIN_MODE_SCALARS:
        assert errors[k] <= allowed[k], f"{k} = {errors[k]:.4f} > {allowed[k]:.4f} (2 x its i.i.d. p95)"
    return errors


def _check(x, target_name, within_modes=False):
    """Sliced W2 and mode weights (module docstring); with ``within_modes`` also the within-mode errors (measured
    on the default-run pairs; the slow-only tests keep the first two until a measured run shows they fit)."""
    mixture, metric, floor, weights = _reference(target_name)
    ratio = metric(x, mixture) / floor.mean
    mode_err = float((mode_weights(x, mixture) - weights).abs().max())
    factor = _factor(floor)
    print(f"[{target_name}] sliced-W2 / floor = {ratio:.2f} (allowed {factor:.2f}), mode-weight error = {mode_err:.4f}")
    assert ratio <= factor, f"sliced W2 is {ratio:.2f}x the i.i.d. floor (allowed {factor:.2f})"
    assert mode_err <= MODE_TOL, f"mode-weight error {mode_err:.4f} > {MODE_TOL}"
    if within_modes:
        _check_within_modes(x, target_name)
    return ratio, mode_err


# The full matrix (every sampler x every target, about 5 minutes on 2 cores) is ``slow``; the
# default run covers every sampler on one target and every target with one sampler.
_TARGET_NAMES = list(TARGETS)
_DIAGONAL = [(name, _TARGET_NAMES[i % len(_TARGET_NAMES)]) for i, name in enumerate(SAMPLERS) if name not in _DERIVED]
# ancestral, ode_heun and edm_heun fall on the NCSN target above, whose two far-apart isotropic modes
# hide shape errors: each also runs on a target with anisotropic or many modes (issue 20, item 5)
_DIAGONAL += [("ancestral", "anisotropic_mixture"), ("ode_heun", "grid_gaussians"), ("edm_heun", "eight_gaussians")]
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
    # the within-mode check is measured on the default-run pairs; the slow-only pairs keep the sliced-W2 and
    # mode-weight checks until a measured run of the full matrix shows their discretisation bias fits it
    _check(x, target_name, within_modes=(sampler_name, target_name) in _DIAGONAL)


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


# -- fast versions of the slow-only checks (issue 20, item 11) ----------------------------------------
# n = 4000 instead of 40 000, judged by the within-mode errors against their own i.i.d. floor at that n
# (``_within_mode_tolerance``: 2 x p95 of 100 exact samples of size 4000, false-failure rate as derived
# in the module docstring) and by the mode weights within 4.5 binomial sd at n = 4000 of the exact
# assignment fractions (4.5 sqrt(p (1 - p) / n) <= 0.036 for p = 0.5; 3.4e-6 per component).
N_FAST = 4000


def _check_fast(x, target_name):
    mixture, _, _, weights = _reference(target_name)
    n = x.shape[0]
    got = mode_weights(x, mixture)
    allowed = 4.5 * (weights * (1 - weights) / n).sqrt() + 1e-12
    assert bool(((got - weights).abs() <= allowed).all()), (got, weights, allowed)
    _check_within_modes(x, target_name)


_FAST_CASES = [
    # the shipped yaml defaults of the fast solvers and of both Langevins
    ("yaml:dpmpp_2m", "vp", "eight_gaussians"),  # on the anisotropic mixture: mean error 0.16, 91 % of its allowance
    ("yaml:dpmpp_2m_sde", "vp", "grid_gaussians"),
    ("yaml:dpmpp_3m", "ve", "eight_gaussians"),
    ("yaml:unipc", "vp", "eight_gaussians"),
    ("yaml:langevin", "ve", "eight_gaussians"),
    ("yaml:annealed_langevin", "ve", "anisotropic_mixture"),
    # stochastic samplers on VE and sub-VP
    ("euler_maruyama", "ve", "anisotropic_mixture"),
    ("pc", "subvp", "anisotropic_mixture"),
    ("euler_maruyama", "subvp", "eight_gaussians"),
    ("pc", "ve", "grid_gaussians"),
    # DDPM on its own discrete chain
    ("ddpm_discrete", "ddpm", "grid_gaussians"),
]


@pytest.mark.parametrize("sampler_name, sde_name, target_name", _FAST_CASES)
def test_fast_versions_of_the_slow_target_checks(sampler_name, sde_name, target_name):
    from problems import make_sde

    sde = make_sde(sde_name)
    mixture = TARGETS[target_name]()
    g = torch.Generator().manual_seed(sum(map(ord, sampler_name + sde_name + target_name)))
    if sampler_name.startswith("yaml:"):
        sampler = sampler_registry.from_yaml(sampler_name[5:])
    elif sampler_name == "ddpm_discrete":
        sampler = DDPM(num_steps=1000)
    else:
        sampler = SAMPLERS[sampler_name]
    if isinstance(sampler, AnnealedLangevin) or "langevin" in sampler_name:  # they correct the prior themselves
        x = sampler.sample(mixture.score_fn(sde), sde, (N_FAST, 2), generator=g)
    else:
        x_init = mixture.marginal(sde, sde.T).sample(N_FAST, g)
        x = sampler.sample(mixture.score_fn(sde), sde, x_init=x_init, generator=g)
    _check_fast(x, target_name)
