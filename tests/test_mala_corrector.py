"""The MALA corrector (``samplers.correctors``, ``metropolis=True``) inside ``PredictorCorrector``.

Exact test: the corrector chain alone (no predictor, no denoise) at t ~ 0 under VE, started from
exact draws of p_t, at a large step eps = 2 (snr sigma_min)^2 = 0.2 (the mixture's variances are
0.3-0.5).  MALA leaves p_t invariant, so after 60 steps the n = 4000 final states are still i.i.d.
draws of p_t; the unadjusted corrector drifts to its own stationary law, whose variance on a
Gaussian of variance v is v / (1 - eps / (2v)): 1.25-1.5 v here.  The reference (region weights and
within-region covariances of p_t, by quadrature) and the tolerance (4.5 i.i.d.-floor sd per
comparison, false-failure rate < 1e-3 over the comparisons) are those of ``tests/test_temperature.py``,
whose helpers this file uses.  The grid is [1e-6, 0]: sigma(1e-6) = sigma_min (1 + 8.5e-6), so
p_{1e-6} and p_0 differ far below the floor.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from problems import mixture_responsibilities
from scoresde.apps import config_dir
from scoresde.apps.schemas import register_schemas
from scoresde.data.toy import GaussianMixture
from scoresde.samplers import (
    AnnealedLangevinCorrector, LangevinCorrector, MetropolisResult, PredictorCorrector, ReverseDiffusionPredictor,
)
from scoresde.samplers.base import CountedScore
from scoresde.sdes import VESDE
from test_temperature import COVS, MEANS, WEIGHTS, _check_against_reference, _reference

N, STEPS, GRID = 4000, 30, [1e-6, 0.0]


def _problem():
    sde = VESDE()
    target = GaussianMixture(torch.tensor(WEIGHTS), torch.tensor(MEANS), torch.tensor(COVS))
    g = torch.Generator().manual_seed(0)
    x0 = target.sample(N, g).double() + sde.sigma_min * torch.randn(N, 2, generator=g, dtype=torch.float64)
    return sde, target.score_fn(sde), x0, COVS + sde.sigma_min**2 * np.eye(2)


def _chain(corrector, seed=1):
    sde, score, x0, covs_t = _problem()
    pc = PredictorCorrector(predictor=None, corrector=corrector, corrector_steps=STEPS, denoise=False)
    return pc.run(score, sde, x_init=x0, ts=GRID, generator=torch.Generator().manual_seed(seed)), covs_t


def _variance_ratio(x: torch.Tensor, covs_t: np.ndarray) -> float:
    """Mean over regions of trace(within-region covariance) / its exact value."""
    x = x.numpy()
    region = mixture_responsibilities(x, WEIGHTS, MEANS, covs_t).argmax(1)
    ref = _reference(1.0, covs_t)
    return float(np.mean([np.trace(np.cov(x[region == k].T)) / np.trace(ref[k][1]) for k in range(2)]))


SNR_ANNEALED = math.sqrt(0.2 / 2) / 0.01  # eps = 2 (snr sigma_min)^2 = 0.2


def test_mala_corrector_leaves_p_t_invariant_at_a_large_step_where_the_unadjusted_one_is_biased():
    mala, covs_t = _chain(AnnealedLangevinCorrector(snr=SNR_ANNEALED, metropolis=True))
    assert isinstance(mala, MetropolisResult) and 0.5 < mala.acceptance_rate < 0.95
    _check_against_reference(mala.x, 1.0, covs_t)
    ula, _ = _chain(AnnealedLangevinCorrector(snr=SNR_ANNEALED))
    # ULA's variance is inflated by 1 / (1 - eps/(2v)) along each axis of a Gaussian of variance v: 1.2-2 for the
    # components' axis variances 0.2-0.55 (trace ratio ~1.4; measured 1.30 on the mixture's regions).  The
    # ratio's sampling sd is about sqrt(2 / (n w)) / sqrt(2) < 0.03, so 1.15 is 5 sd below the measured bias,
    # and MALA's |ratio - 1| < 0.1 is > 3 sd (measured 0.994)
    ratio = _variance_ratio(ula.x, covs_t)
    assert ratio > 1.15, f"unadjusted corrector: variance ratio {ratio:.3f}, expected a bias of 25-50 %"
    assert abs(_variance_ratio(mala.x, covs_t) - 1) < 0.1
    with pytest.raises(AssertionError):
        _check_against_reference(ula.x, 1.0, covs_t)


def test_signal_to_noise_mala_corrector_with_sqrt_d_norm_is_exact():
    """eps(x) = 2 (snr sqrt(d) / ||s(x)||)^2 depends on the state: the reverse kernel uses eps(y)."""
    result, covs_t = _chain(LangevinCorrector(snr=0.4, norm="sqrt_d", metropolis=True))
    assert 0.2 < result.acceptance_rate < 0.98
    _check_against_reference(result.x, 1.0, covs_t)


def test_nfe_counts_two_score_and_two_log_density_calls_per_corrector_step():
    sde, score, x0, _ = _problem()
    pc = PredictorCorrector(num_steps=6, corrector=AnnealedLangevinCorrector(metropolis=True))
    result = pc.run(score, sde, (8, 2), generator=torch.Generator().manual_seed(0))
    assert result.log_prob_evals == 2 * 6 and result.nfe == 6 + 4 * 6  # 6 predictor/denoise + 6 MALA steps
    two = PredictorCorrector(num_steps=6, corrector_steps=2, order="predictor_first",
                             corrector=AnnealedLangevinCorrector(metropolis=True))
    result = two.run(score, sde, (8, 2), generator=torch.Generator().manual_seed(0))
    assert result.nfe == 6 + 4 * 2 * 5 and result.log_prob_evals == 2 * 2 * 5
    # log_prob_fn given explicitly = the score's own log_prob: the same chain
    a = pc.run(score, sde, (8, 2), generator=torch.Generator().manual_seed(3))
    b = pc.run(lambda x, t: score(x, t), sde, (8, 2), generator=torch.Generator().manual_seed(3),
               log_prob_fn=score.log_prob)
    assert torch.equal(a.x, b.x) and a.acceptance_rate == b.acceptance_rate


def test_metropolis_false_is_the_unadjusted_corrector():
    """The default path is untouched (bit identity of all samplers: benchmarks/bit_identity.py)."""
    sde, score, _, _ = _problem()
    for corrector in (AnnealedLangevinCorrector(), LangevinCorrector(norm="batch")):
        pc = PredictorCorrector(num_steps=5, corrector=corrector)
        result = pc.run(score, sde, (8, 2), generator=torch.Generator().manual_seed(0))
        assert type(result).__name__ == "SampleResult" and result.nfe == 10


def test_errors_name_the_argument():
    sde, score, _, _ = _problem()
    for norm in ("per_sample", "batch"):
        with pytest.raises(ValueError, match="`metropolis=True` needs `norm='sqrt_d'`"):
            LangevinCorrector(norm=norm, metropolis=True)
    with pytest.raises(TypeError, match="`metropolis` must be a bool"):
        AnnealedLangevinCorrector(metropolis="yes")
    mala_pc = PredictorCorrector(num_steps=3, corrector=AnnealedLangevinCorrector(metropolis=True))
    with pytest.raises(ValueError, match="log_prob_fn"):
        mala_pc.run(lambda x, t: -x, sde, (4, 2))
    with pytest.raises(ValueError, match="only with `metropolis=True`"):
        PredictorCorrector(num_steps=3).run(score, sde, (4, 2), log_prob_fn=score.log_prob)
    t = torch.full((4,), 0.5)
    with pytest.raises(ValueError, match="run it inside PredictorCorrector"):
        AnnealedLangevinCorrector(metropolis=True).step(torch.zeros(4, 2), CountedScore(score), sde, t, t, None)


def test_config_option_composes():
    """``scoresde-sample sampler=pc sampler.corrector.metropolis=true`` (and the snr corrector with sqrt_d)."""
    register_schemas()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            cfg = compose("sample", overrides=["sampler=pc", "sampler.corrector.metropolis=true"])
            sampler = instantiate(cfg.sampler, _convert_="all")
            assert sampler.corrector.metropolis and sampler.metropolis
            assert isinstance(sampler.predictor, ReverseDiffusionPredictor)
    finally:
        GlobalHydra.instance().clear()
