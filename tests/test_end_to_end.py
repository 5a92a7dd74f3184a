"""End to end (issue 3): data set -> SDE -> ScoreMLP + DSM loss -> train -> sampler -> metrics vs the exact target.

Issue 3: "Training with VE, VP and sub-VP all work; a VP eps-model trained here sampled with DDPM and with
ReverseSDE/PredictorCorrector gives matching quality (DDPM as a special case, end to end)."

**Target.**  ``toy.eight_gaussians`` through ``datasets.MixtureDataset``: eight modes of weight 1/8 on a
circle of radius 2.83, std 0.35.  Its density is exact, so samples are scored against the target
itself, not against a reference sample.  Every run draws n = 5000 samples; every seed is fixed.

**Measures.**

* ``ratio`` = ``metrics.sliced_w2_to_mixture`` (128 fixed directions) / its i.i.d. floor, the rms of the
  same metric for 10 exact samples of size n (``metrics.noise_floor``: rms 0.050, sd / rms 0.25).  About
  1 means "as good as an exact sample".  One value scatters with sd ~0.3 around its mean, for exact and
  trained samples alike (measured below): the binomial fluctuation of each mode's mass (sd 0.0047 at
  n = 5000) moved across the distance between modes dominates it.
* ``excess`` = ratio(trained score) - ratio(exact score), same sampler and same generator seed, hence
  the same prior draw and the same noise (common random numbers).  The pair shares the mode-mass
  noise, so the excess measures what training got wrong with less scatter than the ratio.
* ``mode error`` = max_k |fraction of samples assigned to mode k - the exact target's fraction|
  (``metrics.mode_weights`` vs ``expected_mode_weights`` of 100 000 exact samples, sd 0.001).  For an
  exact sampler each fraction has binomial sd 0.0047, and the maximum over 8 modes averages ~0.009.

Bounds are set from measurements (2-core machine, torch 2.13 CPU, 1 thread): "mean + 4 sd" over
re-drawn training and sampling seeds, rounded up, so a run with other seeds (or another platform,
which perturbs the trajectory like a new seed) fails with probability ~1e-4, while a broken or
untrained pipeline is far outside.

**(a) Every SDE trains** (``test_training_works_for_every_sde``, default suite).  ScoreMLP width 64,
depth 3 (eps output; the bridge makes it a score for any SDE), 1400 steps of batch 512, lr 3e-3,
EMA 0.995; sampled with ``ReverseSDE`` (Euler-Maruyama), 200 steps, from the prior.  Why 1400 steps:
the held-out DSM excess of this model falls from ~0.04 at 400 steps (a "blurred" solution with modes
too wide, where short runs of smaller models stay stuck) to 0.006-0.011 at 1400 (3 training seeds per
SDE; sub-VP converges last).  Measured over
4 training seeds x 5 sampling seeds = 20 runs per SDE:

    SDE     ratio mean  sd    max   | excess mean  sd    max  | mode error mean  sd      max
    VE      1.17        0.33  1.91  | 0.21         0.24  0.68 | 0.0089           0.0026  0.0134
    VP      1.46        0.34  1.94  | 0.19         0.19  0.39 | 0.0107           0.0019  0.0135
    sub-VP  1.56        0.30  2.19  | 0.41         0.21  0.82 | 0.0111           0.0027  0.0153
    exact score, same sampler, 10 seeds: ratio mean 0.94-1.03 (sd 0.26-0.35), mode error mean 0.008, max 0.014

Bounds: ratio <= 2.9 (largest mean + 4 sd: sub-VP 2.77, VP 2.82); excess <= 1.25 (sub-VP 0.41 + 4 x
0.21); mode error <= 0.025 (sub-VP 0.0111 + 4 x 0.0027 = 0.022; 5.3 binomial sds of one mode, so an
exact sampler essentially never fails it, while a mode off by a fifth of its weight does).  For
contrast (training seed 0, 5 sampling seeds): untrained, excess 750 (VE) to 6300 (VP); after 400
steps 1.1-2.0; after 800 steps 0.65-1.7.  The ratio bound alone accepts the blurred 400-step models
(ratio 2.4-2.9); the paired excess is what separates them.

**Bounds set from a correct model (issue 20, item 10).**  ``RATIO_MAX = 2.9`` above was set from the
trained models' own spread and admits the blurred 400-step models (ratio 2.75-2.81 measured again with
training seed 0, sampling seed 7).  The bounds now come from what a *correct* score achieves:

* ratio <= 2.45: the exact score with the same sampler scatters with mean <= 1.03 and sd <= 0.35 (10
  seeds, table above), so 2.45 is its mean + 4 sd.  A trained model is not exact: over the 20 runs
  per SDE above, the largest mean is 1.56 (sub-VP, sd 0.30), which puts 2.45 at 3.0 of its sds: a
  false-failure rate of ~0.15 % per SDE for seeds other than the fixed ones (these pass: 0.85-1.62).
* within-mode covariance error (``evaluation.modes.within_mode_errors``, max over the 8 modes of
  ||C_hat - C||_F / ||C||_F) <= 1.1.  Measured with training seed 0 and sampling seeds 7, 8: exact
  score 0.07-0.12 (i.i.d. floor p95 at n = 5000: 0.13), trained (1400 steps) 0.46-0.73 (mean 0.59,
  sd 0.11 over the 6 runs, so 1.1 is mean + 4.5 sd), blurred (400 steps) 1.77-1.81.  The trained
  models' modes are measurably too wide (0.5-0.7 against 0.1 for the exact score), which sliced W2
  does not resolve; 1.1 separates them from the blurred ones by 6 of their sds.

**(b) DDPM as a special case** (``test_ddpm_and_sde_samplers_agree_on_one_eps_model``, slow).  One
eps-network (``parameterization="eps"``) trained on ``VPSDE().discrete(1000)``, DDPM's chain with Ho
et al.'s linear betas 1e-4 ... 0.02: with s = -eps/sigma the default DSM loss is DDPM's simple loss
||eps_hat - z||^2 (``tests/test_losses.py``), at t ~ U(1/1000, 1) rather than on the integer knots
only (``DiscreteVPSDE`` interpolates log alpha_bar linearly between knots, so the marginal at every
knot is DDPM's).  Sampled with ``DDPM(num_steps=1000)`` -- on this SDE Ho et al.'s Algorithm 2 step for
step (checked to 1e-10 in ``tests/test_samplers_exact.py``) -- and with the SDE samplers on the same
SDE: ``ReverseSDE`` (Euler-Maruyama on the reverse SDE with the chain's piecewise-constant beta(t),
1000 steps, i.e. the same knots) and ``PredictorCorrector`` (reverse diffusion + annealed Langevin,
500 steps, 1000 score evaluations).  Training on the discrete chain rather than on ``VPSDE()`` is what
makes the DDPM run *literally* DDPM, and every sampler here evaluates the network only on the 1000
knots (``DiscreteVPSDE.timesteps``).  The chain is a VP SDE, so the SDE samplers need nothing
DDPM-specific.

"Matching quality", stated as three checks on R = 3 draws per sampler, all with seeds 1, 2, 3:

* DDPM vs Euler-Maruyama, coupled: both draw from the generator identically (the prior, then one normal
  per step on the same knots), so with equal seeds their draws coincide path by path up to the
  difference of the two update rules (O(beta^2) in the mean, O(beta^1.5) in the noise scale per
  step).  Measured (3 training seeds x 3 seeds): the samples differ by 0.0011 (median distance), the
  ratios by at most 0.0057 (sd 0.0027), so the mean of 3 differences has sd 0.0016: bound
  |mean ratio difference| <= 0.01 (4 sd, rounded up).  Independent draws could not resolve less than
  ~1 (next item): the coupling is what makes this check sharp.
* PC vs DDPM, independent: PC draws corrector noise in between and shares only the prior draw with
  DDPM (ratio correlation 0.36 over the 9 measured pairs, partly the shared model; a positive
  correlation only shrinks the difference, so counting the draws as independent is conservative).
  With per-draw sd s the difference of two means of R draws has sd s sqrt(2 / R); s = 0.33 (measured
  per-draw sds: 0.29 here, pooled over 3 training seeds; 0.30-0.34 in (a)) gives 0.27, so
  |mean ratio difference| <= 1.1 (4 sd).  Measured PC - DDPM: -0.03, -0.14, -0.14.  That is all that
  R = 3 draws of n = 5000 resolve; each PC run costs ~9 s.
* Absolute: each sampler's mean ratio <= 2.0.  Measured means 0.89-1.26 (mean 1.10 over 3 training
  seeds x 2 distinct samplers); the mean of 3 draws has sd 0.33 / sqrt(3) = 0.19, and the training seed
  adds ~0.1 (sd of the DDPM means over training seeds, 0.11): 1.10 + 4 x 0.22 = 1.98.  Every draw's mode
  error <= 0.025 as in (a) (measured max 0.016).

Run time of (b) (1 thread): training ~13 s, each 1000-evaluation sampler run ~7-11 s, ~100 s in all.
"""
import functools

import pytest
import torch

from scoresde import VESDE, VPSDE, SubVPSDE, toy
from scoresde.data.datasets import MixtureDataset
from scoresde.evaluation.metrics import expected_mode_weights, mode_weights, noise_floor, sliced_w2_to_mixture
from scoresde.evaluation.modes import within_mode_errors
from scoresde.models.mlp import ScoreMLP
from scoresde.samplers import DDPM, PredictorCorrector, ReverseSDE
from scoresde.training import TrainConfig, train

N = 5000
MIXTURE = toy.eight_gaussians()
DATA = MixtureDataset(MIXTURE)
SDES = {"ve": VESDE, "vp": VPSDE, "subvp": SubVPSDE}

# (a): bounds derived in the module docstring
TRAIN_A = TrainConfig(num_steps=1400, batch_size=512, lr=3e-3, warmup_steps=50, ema_decay=0.995)
SAMPLER_A = ReverseSDE(num_steps=200)
RATIO_MAX = 2.45  # the exact score's mean ratio + 4 sd (module docstring, "Bounds set from a correct model")
EXCESS_MAX = 1.25
MODE_TOL = 0.025
COV_ERROR_MAX = 1.1  # within-mode covariance error: trained 0.46-0.73, blurred 1.77-1.81, exact 0.07-0.12

# (b): bounds derived in the module docstring
SDE_B = VPSDE().discrete(1000)  # DDPM's chain, betas 1e-4 ... 0.02
TRAIN_B = TrainConfig(num_steps=3000, batch_size=512, lr=3e-3, warmup_steps=50, ema_decay=0.995)
SAMPLERS_B = {
    "DDPM": DDPM(num_steps=1000),  # Ho et al. Alg. 2 on SDE_B
    "ReverseSDE": ReverseSDE(num_steps=1000),  # Euler-Maruyama on the same 1000 knots
    "PredictorCorrector": PredictorCorrector(num_steps=500),  # 1000 score evaluations
}
SEEDS_B = (1, 2, 3)
COUPLED_TOL = 0.01  # |mean ratio(DDPM) - mean ratio(ReverseSDE)|, coupled draws
INDEPENDENT_TOL = 1.1  # |mean ratio(PredictorCorrector) - mean ratio(DDPM)|, independent draws
MEAN_RATIO_MAX = 2.0


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@functools.lru_cache(maxsize=None)
def _reference():
    """(fixed projection directions, floor rms of sliced W2 at size N, exact mode fractions)."""
    directions = torch.randn(128, 2, generator=gen(11), dtype=torch.float64)
    directions /= directions.norm(dim=1, keepdim=True)
    metric = functools.partial(sliced_w2_to_mixture, directions=directions)
    floor = noise_floor(metric, MIXTURE.sample, N, repeats=10, generator=gen(3), reference=MIXTURE)
    return directions, floor.rms, expected_mode_weights(MIXTURE, 100_000, generator=gen(4))


def quality(x: torch.Tensor) -> tuple[float, float]:
    """(sliced-W2 ratio to the i.i.d. floor, mode error) of samples ``x: [N, 2]``."""
    directions, floor_rms, reference = _reference()
    ratio = sliced_w2_to_mixture(x, MIXTURE, directions=directions) / floor_rms
    return ratio, float((mode_weights(x, MIXTURE) - reference).abs().max())


def trained_model(sde, config: TrainConfig, **kw) -> ScoreMLP:
    """EMA weights of a width-64, depth-3 ScoreMLP trained on the mixture (init and data seeds fixed)."""
    model = ScoreMLP(sde, width=64, depth=3, generator=gen(config.seed), **kw)
    return train(model, DATA, config).ema_model


@pytest.mark.parametrize("sde_name", list(SDES))
def test_training_works_for_every_sde(sde_name):
    sde = SDES[sde_name]()
    model = trained_model(sde, TRAIN_A)
    x = SAMPLER_A.sample(model.score_fn, sde, (N, 2), generator=gen(7))
    x_exact = SAMPLER_A.sample(MIXTURE.score_fn(sde), sde, (N, 2), generator=gen(7))  # same prior draw and noise
    ratio, mode_error = quality(x)
    excess = ratio - quality(x_exact)[0]
    cov_error = within_mode_errors(x, MIXTURE)["max_cov_error"]
    summary = (f"{sde_name}: ratio {ratio:.2f}, excess over the exact score {excess:.2f}, mode error {mode_error:.4f}, "
               f"within-mode covariance error {cov_error:.3f}")
    print(summary)  # the measured figures, shown with pytest -rP
    assert ratio <= RATIO_MAX, summary
    assert excess <= EXCESS_MAX, summary
    assert mode_error <= MODE_TOL, summary
    assert cov_error <= COV_ERROR_MAX, summary


@pytest.mark.slow
def test_ddpm_and_sde_samplers_agree_on_one_eps_model():
    model = trained_model(SDE_B, TRAIN_B, parameterization="eps")
    ratios, mode_errors = {}, {}
    for name, sampler in SAMPLERS_B.items():
        runs = [quality(sampler.sample(model.score_fn, SDE_B, (N, 2), generator=gen(seed))) for seed in SEEDS_B]
        ratios[name] = sum(r for r, _ in runs) / len(runs)
        mode_errors[name] = max(m for _, m in runs)
    summary = ", ".join(f"{k}: mean ratio {ratios[k]:.3f}, max mode error {mode_errors[k]:.4f}" for k in ratios)
    print(summary)
    assert abs(ratios["DDPM"] - ratios["ReverseSDE"]) <= COUPLED_TOL, summary
    assert abs(ratios["PredictorCorrector"] - ratios["DDPM"]) <= INDEPENDENT_TOL, summary
    assert max(ratios.values()) <= MEAN_RATIO_MAX, summary
    assert max(mode_errors.values()) <= MODE_TOL, summary
