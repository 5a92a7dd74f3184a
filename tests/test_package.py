"""Package-level contracts: the core library never imports Hydra."""
import subprocess
import sys


def test_core_library_does_not_import_hydra():
    code = (
        "import sys, scoresde, scoresde.samplers, scoresde.training, scoresde.models.mlp, scoresde.training.losses, "
        "scoresde.data.datasets, scoresde.evaluation.metrics, scoresde.likelihood, scoresde.guidance, scoresde.plotting\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
