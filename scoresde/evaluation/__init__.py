"""Sample quality against a target, with noise floors.

Contract: ``assess(x, target, ...)`` returns every metric with its floor band (what i.i.d. samples of
the target give at the same n) and a verdict, the headline (``HEADLINE``) first, and one overall
verdict (``["overall"]``: Holm at 5 % over the metrics' floor p-values, with the metrics that drove
it).  ``target`` is a ``GaussianMixture`` (exact density) or a data set (KDE density).

* ``floors``: ``assess``, floors and verdicts (the calibrated evaluation the apps use);
* ``metrics``: distances between point sets (sliced / exact W2, MMD, energy) and ``evaluate``;
* ``sharp``: density-quantile outlier rates, C2ST, k-NN precision / recall;
* ``modes``: within-mode mean / covariance / weight errors by exact responsibility;
* ``fid``: Frechet distance (FID) and KID between image features, their floors, Inception-v3 features;
* ``domain``: a classifier trained (and cached) on the data set, whose features serve FID where Inception cannot.
"""
from . import fid, metrics
from .floors import HEADLINE, MEANINGS, FloorCache, assess, overall_verdict, verdict
from .metrics import evaluate
from .domain import DomainFeatures
from .fid import InceptionFeatures, assess_images, extract_features, fid_floor, frechet_distance, kid

__all__ = ["metrics", "assess", "verdict", "overall_verdict", "FloorCache", "HEADLINE", "MEANINGS", "evaluate",
           "fid", "kid", "frechet_distance", "fid_floor", "assess_images", "extract_features", "InceptionFeatures",
           "DomainFeatures"]
