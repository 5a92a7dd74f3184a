"""scoresde: score-based generative modelling with SDEs and Langevin dynamics, in PyTorch.

Packages follow the maths and depend one way (docs/architecture.md): the maths (``sdes``,
``bridges``, ``grids``, ``integrators``) -> ``samplers`` / ``models`` / ``data`` / ``likelihood`` ->
``evaluation`` / ``guidance`` / ``plotting`` -> ``training`` -> ``apps``.  The common currency is a
score function ``score(x: [B, *D], t: [B]) -> [B, *D]``.  Hydra is imported only by ``scoresde.apps``.
"""
import sys

from . import bridges, grids, guidance, likelihood, samplers, sdes
from .data import toy
from .evaluation import metrics
from .sdes import SDE, VESDE, VPSDE, DiscreteVPSDE, SubVPSDE
from .training.loading import load

# ``toy`` and ``metrics`` lived at the top of the package before the layout (docs/architecture.md)
# and are names of this package: ``from scoresde.toy import eight_gaussians`` and
# ``import scoresde.metrics`` keep working as the same module objects.
sys.modules[__name__ + ".toy"] = toy
sys.modules[__name__ + ".metrics"] = metrics

__version__ = "0.1.0"
__all__ = [
    "sdes", "bridges", "grids", "toy", "samplers", "metrics", "likelihood", "guidance",
    "SDE", "VESDE", "VPSDE", "SubVPSDE", "DiscreteVPSDE", "load",
]
