"""Sample quality against a target, with noise floors.

Contract: ``assess(x, target, ...)`` returns every metric with its floor band (what i.i.d. samples of
the target give at the same n) and a verdict; the headline (``HEADLINE``) comes first.  ``target``
is a ``GaussianMixture`` (exact density) or reference points (KDE density).

* ``floors``: ``assess``, floors and verdicts (the calibrated evaluation the apps use);
* ``metrics``: distances between point sets (sliced / exact W2, MMD, energy) and ``evaluate``;
* ``sharp``: density-quantile outlier rates, C2ST, k-NN precision / recall;
* ``modes``: within-mode mean / covariance / weight errors by exact responsibility.
"""
from . import metrics
from .floors import HEADLINE, MEANINGS, FloorCache, assess, verdict
from .metrics import evaluate

__all__ = ["metrics", "assess", "verdict", "FloorCache", "HEADLINE", "MEANINGS", "evaluate"]
