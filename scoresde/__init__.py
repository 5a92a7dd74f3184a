"""scoresde: score-based generative modelling with SDEs and Langevin dynamics, in PyTorch.

Modules follow the maths and depend one way: ``sdes`` -> ``bridges`` -> ``samplers`` / ``losses``
-> ``training`` -> ``apps``.  The common currency is a score function
``score(x: [B, *D], t: [B]) -> [B, *D]``.  Hydra is imported only by ``scoresde.apps``.
"""
from . import bridges, guidance, likelihood, metrics, samplers, sdes, toy
from .loading import load
from .sdes import SDE, VESDE, VPSDE, DiscreteVPSDE, SubVPSDE

__version__ = "0.1.0"
__all__ = [
    "sdes", "bridges", "toy", "samplers", "metrics", "likelihood", "guidance",
    "SDE", "VESDE", "VPSDE", "SubVPSDE", "DiscreteVPSDE", "load",
]
