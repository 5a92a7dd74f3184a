"""What both apps share: devices and seeds, the job record (metrics.json), sampling + evaluation.

``metrics.json`` of a job (written also when the job fails, then re-raised)::

    {"status": "ok" | "failed", "error": null | "Type: message", "app": "train" | "sample",
     "choices": {"data": ..., "sde": ..., "sampler": ..., ...},   # config-group options of the job
     "overrides": [...],                                           # the job's command-line overrides
     "sde": "VPSDE(...)", "data": "MixtureDataset(...)", "sampler": "PredictorCorrector(...)",
     "num_samples", "nfe", "time": {"build_s", "train_s", "sample_s", "evaluate_s", "total_s"},
     "quality": {metric: {"value", "floor", "ratio"}},             # floor: rms over i.i.d. repeats
     "evaluation": <scoresde.metrics.evaluate(...) dict>,
     "train": {...},                                               # scoresde-train only
     "guidance": {"kind", "scale", "label", "num_classes", ...},   # scoresde-sample only
     "precision": {"mean", "per_class": {c: p}, "method"},         # guided runs (scoresde.apps.guided)
     "spread": {"mean", "per_class", "exact_per_class", "exact_mean"},  # guided runs: per-class diversity
     "nll": {"mean", "stderr", "nfe", "num_points", "exact_mean", "kl_estimate", ...}  # likelihood=pf_ode
    }
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ..datasets import MixtureDataset
from ..metrics import evaluate
from . import figures
from .guided import class_metrics, class_target, likelihood_metrics

log = logging.getLogger(__name__)

# Independent random streams of one job, derived from the job's seed (training uses the seed itself).
MODEL_INIT, SAMPLING, EVAL_DATA, METRICS, HELD_OUT, GUIDANCE = 1, 2, 3, 4, 5, 6
HEADLINE = "sliced_w2"  # the metric whose ratio to its noise floor a job returns and tables lead with


def output_dir() -> Path:
    """The job's output directory (Hydra's runtime.output_dir; the working directory outside Hydra)."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``, refusing CUDA when it is not available (a clear error before any work)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"`device` must name a torch device such as 'cpu' or 'cuda', got {name!r}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available on this machine; use device=cpu")
    return device


def make_generator(seed: int, stream: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` for one stream of a job: seeded from numpy's SeedSequence([seed, stream])."""
    state = int(np.random.SeedSequence([seed, stream]).generate_state(1, np.uint64)[0]) & (2**63 - 1)
    return torch.Generator(device).manual_seed(state)


def _json_safe(value: Any) -> Any:
    """Plain JSON: non-finite floats become None, tuples lists, numpy / torch scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.generic, torch.Tensor)) and np.ndim(value) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def write_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as JSON atomically (temporary file in the same directory, then ``os.replace``)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(_json_safe(obj), f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


class JobRecord(dict):
    """The content of ``metrics.json``; as a context manager it writes the file on exit, "ok" or "failed".

    On an exception the record gets ``status = "failed"``, ``error`` (type and message) and
    ``traceback``, is written, and the exception propagates (Hydra then reports it, and the
    sweep's ``on_multirun_end`` is skipped: ``scoresde-aggregate SWEEP_DIR`` summarises it).
    """

    def __init__(self, app: str, out_dir: Path):
        super().__init__(status="running", error=None, app=app, choices={}, overrides=[], time={})
        self.path = out_dir / "metrics.json"
        self._start = time.perf_counter()
        if HydraConfig.initialized():
            hc = HydraConfig.get()
            self["choices"] = {k: v for k, v in hc.runtime.choices.items()
                               if not k.startswith(("hydra", "schema")) and v is not None}
            self["overrides"] = list(hc.overrides.task)

    def __enter__(self) -> "JobRecord":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self["time"]["total_s"] = time.perf_counter() - self._start
        if exc is None:
            self["status"] = "ok"
        else:
            self.update(status="failed", error=f"{exc_type.__name__}: {exc}",
                        traceback="".join(traceback.format_exception(exc_type, exc, tb)))
            log.error("job failed (%s: %s); metrics.json records it. After a sweep, "
                      "`scoresde-aggregate <sweep dir>` summarises the jobs that ran.", exc_type.__name__, exc)
        write_json(dict(self), self.path)
        return False


def detach_parameters(model: torch.nn.Module) -> torch.nn.Module:
    """Make every parameter and buffer of ``model`` a leaf without autograd history, in place; returns it.

    Works around ``training.train``'s EMA model, whose parameters carry the autograd history of
    every EMA update (grad_fn LerpBackward0): each backward pass through the model (the likelihood's
    divergence, classifier guidance) would otherwise traverse that whole history, which makes it
    ~8x slower after 1000 steps and ~40x after 6000.
    """
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.grad_fn is not None:
                tensor.detach_()
        model.requires_grad_(False)
    return model


def evaluate_likelihood(record: JobRecord, score_fn, sde, data, cfg: DictConfig, device: torch.device) -> None:
    """``record["nll"]`` when ``cfg.likelihood`` is set (likelihood=pf_ode): NLL of held-out data points."""
    if cfg.get("likelihood") is None:
        return
    nll = likelihood_metrics(cfg.likelihood, score_fn, sde, data, generator=make_generator(cfg.seed, HELD_OUT),
                             probe_generator=make_generator(cfg.seed, HELD_OUT, device), device=device)
    record["nll"] = nll
    record["time"]["likelihood_s"] = nll["time_s"]
    exact = "" if "exact_mean" not in nll else (f", exact -log p {nll['exact_mean']:.4f}, "
                                                f"KL estimate {nll['kl_estimate']:.4f} +- {nll['kl_stderr']:.4f}")
    log.info("NLL of %d held-out points: %.4f +- %.4f nats (NFE %d)%s", nll["num_points"], nll["mean"],
             nll["stderr"], nll["nfe"], exact)


def sample_and_evaluate(record: JobRecord, score_fn, sde, data, sampler, cfg: DictConfig,
                        device: torch.device, out_dir: Path, labels: torch.Tensor | None = None) -> float | None:
    """Sample ``cfg.num_samples`` points, evaluate them against fresh data, plot; returns the headline ratio.

    With ``labels`` ``[n]`` (a guided score), the samples are compared with the class's target
    (``guided.class_target``) and ``precision`` / ``spread`` are recorded.
    """
    n = cfg.num_samples
    shape = (n, *data.event_shape)
    generator = make_generator(cfg.seed, SAMPLING, device)
    start = time.perf_counter()
    result = sampler.run(score_fn, sde, shape, generator=generator, progress=cfg.progress)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    record["time"]["sample_s"] = time.perf_counter() - start
    record.update(nfe=result.nfe, num_samples=n)
    x = result.x.detach().to("cpu", torch.float64).reshape(n, -1)
    bad = int((~torch.isfinite(x).all(1)).sum())
    if bad:
        raise FloatingPointError(f"the sampler produced {bad} non-finite samples out of {n} (it diverged)")
    log.info("sampled %d points with %s: %d score evaluations in %.1f s", n, type(sampler).__name__,
             result.nfe, record["time"]["sample_s"])

    # Evaluation on the CPU in float64: against the exact mixture where there is one, else fresh data.
    start = time.perf_counter()
    data_gen = make_generator(cfg.seed, EVAL_DATA)
    if labels is not None:
        target = class_target(data, labels, n, data_gen)
        if isinstance(target, torch.Tensor):
            reference = target[:n]
        else:
            reference = target.sample(n, data_gen, dtype=torch.float64).reshape(n, -1)
    elif isinstance(data, MixtureDataset):
        target = data.mixture
        reference = data.mixture.sample(n, data_gen, dtype=torch.float64).reshape(n, -1)
    else:
        target = data.sample(4 * n, data_gen, dtype=torch.float64).reshape(4 * n, -1)  # evaluate draws 2n per repeat
        reference = target[:n]
    ev = cfg.eval
    evaluation = evaluate(x, target, metrics=None if ev.metrics is None else list(ev.metrics), repeats=ev.repeats,
                          num_projections=ev.num_projections, generator=make_generator(cfg.seed, METRICS))
    record["time"]["evaluate_s"] = time.perf_counter() - start
    record["evaluation"] = evaluation
    record["quality"] = {name: {"value": m["value"], "floor": m["floor_rms"], "ratio": m["ratio"]}
                         for name, m in evaluation["metrics"].items()}
    headline = record["quality"].get(HEADLINE, {}).get("ratio")
    for name, q in record["quality"].items():
        log.info("%-22s %.4g  (noise floor %.4g, ratio %.2f)", name, q["value"], q["floor"],
                 math.nan if q["ratio"] is None else q["ratio"])

    if labels is not None:
        record["precision"], record["spread"] = class_metrics(x, labels, data, make_generator(cfg.seed, METRICS))
        log.info("precision %.3f (%s), per class %s", record["precision"]["mean"], record["precision"]["method"],
                 {c: round(p, 3) for c, p in record["precision"]["per_class"].items()})

    k = min(n, cfg.eval.plot_points)
    x_np, ref_np = x[:k].numpy(), reference[:k].numpy()
    np.savez_compressed(out_dir / "samples.npz", samples=x.numpy().astype(np.float32),
                        reference=reference.numpy().astype(np.float32))
    sampler_name = record["choices"].get("sampler", type(sampler).__name__)
    ratio = "" if headline is None else f", sliced W2 / floor = {headline:.2f}"
    figures.plot_samples(x_np, ref_np, out_dir / "samples.png",
                         title=f"{sampler_name}: {n} samples, NFE {result.nfe}{ratio}")
    return headline

