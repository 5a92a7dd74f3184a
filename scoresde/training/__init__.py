"""Training by denoising score matching: the loop, its losses, recipes, checkpoints and loading.

Contract: ``train(model, data, TrainConfig(...)) -> TrainResult(model, ema_model, losses)``; a
checkpoint written by it is rebuilt for sampling by ``load(path)`` (also ``scoresde.load``).

* ``loop``: ``train``, ``TrainConfig``, the DSM step (``DSMStep``) and the errors a run can end with;
* ``callbacks``: the loop's callback interface (hooks, ``TrainState``, ``Due``), signals and checkpoint timing;
* ``guards``: the non-finite and divergence guards; ``logs``: CSV / TensorBoard log and progress bar;
* ``history``: the per-step loss history (read back once per check); ``batches``: where batches come from;
* ``losses``: ``DSMLoss`` (per-sample denoising score matching, any SDE);
* ``recipes``: optimizers, learning-rate schedules and noise-level samplers;
* ``checkpoints``: atomic checkpoint files and their checks;
* ``loading``: ``load`` and the rebuilding of a model and SDE from a checkpoint.
* ``quality``: quality checks during training (``QualityCheck``, ``best.pt``), the validation target
  and the adaptive recipe's pilot comparison (issue 21).
"""
from .checkpoints import CHECKPOINT_NAME
from .loading import Loaded, load
from .loop import *  # noqa: F401,F403  (the loop's public names)
from .loop import __all__ as _loop_all
from .losses import DSMLoss
from .quality import QualityCheck, validation_target

__all__ = [*_loop_all, "CHECKPOINT_NAME", "DSMLoss", "Loaded", "load", "QualityCheck", "validation_target"]
