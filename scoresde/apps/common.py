"""What both apps share: devices and seeds, the job record (metrics.json), sampling + evaluation.

``metrics.json`` of a job (written also when the job fails, then re-raised)::

    {"status": "ok" | "failed" | "interrupted", "error": null | "Type: message", "app": "train" | "sample",
     "choices": {"data": ..., "sde": ..., "sampler": ..., ...},   # config-group options of the job
     "overrides": [...],                                           # the job's command-line overrides
     "sde": "VPSDE(...)", "data": "MixtureDataset(...)", "sampler": "PredictorCorrector(...)",
     "num_samples", "nfe", "time": {"build_s", "train_s", "sample_s", "evaluate_s", "total_s"},
     "quality": <scoresde.evaluation.floors.assess(...) dict>: {"headline", "n", "density", "metrics":
                 {name: {"value", "floor_band": [p05, p95], "floor_mean", "verdict", "meaning"}},
                 "overall": {"verdict", "driven_by", "alpha", "test", "p_values"}, ...},  # the one verdict
     "train": {...},                                               # scoresde-train only
     "guidance": {"kind", "scale", "label", "num_classes", ...},   # scoresde-sample only
     "precision": {"mean", "per_class": {c: p}, "method"},         # guided runs (scoresde.apps.guided)
     "spread": {"mean", "per_class", "exact_per_class", "exact_mean"},  # guided runs: per-class diversity
     "nll": {"mean", "stderr", "nfe", "num_points", "exact_mean", "kl_estimate", ...}  # likelihood=pf_ode
    }
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .._checks import check_device, check_int
from .._io import atomic_write, atomic_write_with, probe_writable, remove_stale_temporaries

from ..data.datasets import MixtureDataset
from .evaluation import check_eval_metrics, evaluate_job, headline_text
from ..data.scale import warn_prior_mismatch
from ..evaluation.floors import HEADLINE  # noqa: F401  (re-exported: the metric a job returns, tables lead with)
from . import figures
from .guided import class_metrics, class_target, likelihood_metrics
from .ranks import gather_samples, rank_batches, sampling_batch_size

log = logging.getLogger(__name__)

# Independent random streams of one job, derived from the job's seed (training uses the seed itself).
MODEL_INIT, SAMPLING, EVAL_DATA, METRICS, HELD_OUT, GUIDANCE = 1, 2, 3, 4, 5, 6


def output_dir() -> Path:
    """The job's output directory (Hydra's runtime.output_dir; the working directory outside Hydra)."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``, refusing CUDA when it is not available (a clear error before any work)."""
    return check_device("device", name)


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
    """Write ``obj`` as JSON atomically (``scoresde._io.atomic_write``); a failed write names the file."""
    atomic_write(path, (json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n").encode())


# -- user errors, the run directory, validation --------------------------------------------------
class UsageError(CompactHydraException, ValueError):
    """A mistake in the command line or config, found before any work: Hydra prints its message as one line."""


@contextlib.contextmanager
def user_errors(app: str) -> Iterator[None]:
    """Turn the errors of building a job from its config (bad values, missing files, no CUDA) into ``UsageError``."""
    from ..training.checkpoints import CheckpointError
    from ..data.datasets import DataError

    try:
        yield
    except UsageError:
        raise
    except (ValueError, TypeError, OSError, KeyError, CheckpointError, DataError) as e:
        raise UsageError(f"scoresde-{app}: {e}") from e


def report_usage_errors(app: str, task, cfg: DictConfig):
    """Run ``task(cfg)``; a ``UsageError`` of a single run prints one line on stderr and exits with status 1.

    (Hydra would add "Error executing job with overrides" and a HYDRA_FULL_ERROR hint.)  In a
    multirun the error is re-raised, so the launcher records the failed job and runs the others.
    """
    try:
        return task(cfg)
    except UsageError as e:
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        print(f"{e}" if str(e).startswith("scoresde-") else f"scoresde-{app}: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def run_directory_problem(app: str, run_dir: Path, *, resume: bool = False, run_dir_given: bool = True,
                          own_checkpoint_dir: bool = False) -> str | None:
    """Why a single run of ``app`` must not start in ``run_dir`` (None if it may).

    ``scoresde-train`` refuses a directory with ``last.pt`` or ``metrics.json`` unless ``resume=true``,
    and ``resume=true`` without a ``last.pt`` to continue (or without ``hydra.run.dir``);
    ``scoresde-sample`` refuses a training run's directory (one with ``last.pt``).
    """
    if app == "train" and resume and not run_dir_given:
        return "resume=true needs hydra.run.dir=<the directory of the run to continue>"
    has_ckpt, has_metrics = (run_dir / "last.pt").is_file(), (run_dir / "metrics.json").is_file()
    if app == "train" and resume and not has_ckpt and not own_checkpoint_dir:
        return f"resume=true but {run_dir} has no last.pt to resume from; drop resume=true to start a new run"
    if app == "train" and not resume and (has_ckpt or has_metrics):
        return (f"{run_dir} already holds a run ({'last.pt' if has_ckpt else 'metrics.json'}); continue it with "
                f"`scoresde-train resume=true hydra.run.dir={run_dir}` (and the run's other overrides), or choose "
                "another hydra.run.dir")
    if app == "sample" and has_ckpt:
        return f"{run_dir} holds a training run (last.pt); choose another hydra.run.dir for the samples"
    return None


class RunDirectoryGuard(Callback):
    """Hydra callback (``hydra.callbacks.run_directory_guard``): refuse a run directory before Hydra writes into it.

    ``on_run_start`` runs after the config is composed and before Hydra creates the job's
    directory, ``.hydra/`` and log file, so a refused job writes nothing into an existing run: it
    prints one line (``run_directory_problem``) and exits with status 1.  Sweeps are not checked
    (their job directories are new).
    """

    def __init__(self, app: str):
        self.app = app

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        overrides = [*config.hydra.overrides.hydra, *config.hydra.overrides.task]
        given = any(o.lstrip("+").startswith("hydra.run.dir=") for o in overrides)
        checkpoint_dir = OmegaConf.select(config, "train.checkpoint_dir", default=None)
        problem = run_directory_problem(self.app, Path(str(config.hydra.run.dir)).expanduser(),
                                        resume=bool(config.get("resume", False)), run_dir_given=given,
                                        own_checkpoint_dir=checkpoint_dir not in (None, ""))
        if problem:
            print(f"scoresde-{self.app}: error: {problem}", file=sys.stderr, flush=True)
            raise SystemExit(1)


def start_job(app: str, out: Path) -> None:
    """Say where the job writes, check that it can, and remove temporary files of an interrupted earlier write."""
    probe_writable(out, "output directory")
    for stale in remove_stale_temporaries(out):
        log.info("removed %s, left by an interrupted write", stale)
    log.info("scoresde-%s: output directory %s", app, out)


SMALL_MODEL_PARAMETERS = 1_000_000
"""``num_threads=auto``: models with fewer parameters (and exact scores) run on one thread.

Measured on the 2-core development machine (issue 16): the default run (a 75 010-parameter
ScoreMLP) used 81 s of CPU with torch's default of one thread per core and 41-47 s with one; under
load its 2-thread training spent 0.2 s of CPU per step (OpenMP threads spinning) against 7 ms on one
thread.  One-thread CPU per DSM step at batch 512: width 128 (75 k parameters) 7 ms, 256 (281 k)
16 ms, 512 (1.09 M) 47 ms, 1024 (4.3 M) 166 ms: from about 10^6 parameters (512 x 512 x 512 matrix
products) a step is large enough for a second thread to pay for its synchronisation."""


def check_num_threads(value: Any) -> int | str:
    """``num_threads``: "auto" or an integer >= 1 (a clear error naming the key otherwise)."""
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`num_threads` must be 'auto' or an integer >= 1, got {value!r}")
    return value


def apply_num_threads(setting: Any, parameters: int | None) -> int:
    """Set torch's intra-op threads once, at the start of an app's work; returns the count in use.

    ``setting``: an int (``torch.set_num_threads``) or "auto": one thread for a model with fewer than
    ``SMALL_MODEL_PARAMETERS`` parameters or no model (``parameters=None``: an exact score), else
    torch's default (one per core), and torch's count as it stands when ``OMP_NUM_THREADS`` is set
    (the user chose).  Small tensors gain nothing from a second thread (``SMALL_MODEL_PARAMETERS``).
    """
    threads = check_num_threads(setting)
    if threads == "auto":
        if os.environ.get("OMP_NUM_THREADS") or (parameters is not None and parameters >= SMALL_MODEL_PARAMETERS):
            return torch.get_num_threads()
        threads = 1
    torch.set_num_threads(threads)
    log.info("torch threads: %d (num_threads=%s)", threads, setting)
    return threads


def validate_app_config(cfg: DictConfig) -> None:
    """Check the config values that are used only after training or sampling, naming the config key."""
    check_int("num_samples", cfg.num_samples, minimum=1)
    check_num_threads(cfg.get("num_threads", "auto"))
    if cfg.get("batch_size") is not None:
        check_int("batch_size", cfg.batch_size, minimum=1)
        guidance = OmegaConf.select(cfg, "guidance.kind", default="none")
        if guidance != "none":
            raise ValueError(f"batch_size={cfg.batch_size} is not supported with guidance={guidance} "
                             "(guided runs draw their labelled samples in one batch): set batch_size=null")
    check_int("seed", cfg.seed, minimum=0, maximum=2**63 - 1)
    ev = cfg.eval
    check_int("eval.repeats", ev.repeats, minimum=2)
    check_int("eval.seed", ev.seed, minimum=0, maximum=2**63 - 1)
    check_int("eval.c2st_steps", ev.c2st_steps, minimum=1)
    check_int("eval.num_projections", ev.num_projections, minimum=1)
    check_int("eval.plot_points", ev.plot_points, minimum=1)
    if ev.metrics is not None:
        metrics = list(ev.metrics)
        if not metrics:
            raise ValueError("`eval.metrics` must be null (the defaults) or a non-empty list of metric names")
        check_eval_metrics(metrics)
    lk = cfg.get("likelihood")
    if lk is not None:
        check_int("likelihood.num_points", lk.num_points, minimum=1)
        check_int("likelihood.batch_size", lk.batch_size, minimum=1)
        from hydra.utils import instantiate

        options = OmegaConf.to_container(lk)
        options.pop("num_points"), options.pop("batch_size"), options.pop("pf_ode", None)
        try:
            instantiate(options, _convert_="all")
        except Exception as e:  # noqa: BLE001 - Hydra wraps the constructor's error
            cause = e.__cause__ or e
            raise ValueError(f"likelihood: {cause}") from e




def resume_hint(app: str, record: "JobRecord", out: Path) -> str:
    """The command that continues this run: its overrides, ``resume=true`` and ``hydra.run.dir``."""
    keep = [o for o in record.get("overrides", []) if not o.lstrip("+").startswith(("resume=", "hydra.run.dir="))]
    return " ".join(["scoresde-" + app, *map(shlex.quote, keep), "resume=true", f"hydra.run.dir={shlex.quote(str(out))}"])


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
            interrupted = isinstance(exc, KeyboardInterrupt)
            cause = exc.__cause__ if isinstance(exc, UsageError) and exc.__cause__ is not None else exc
            self.update(status="interrupted" if interrupted else "failed", error=f"{type(cause).__name__}: {cause}",
                        traceback="".join(traceback.format_exception(exc_type, exc, tb)))
            if not interrupted and not isinstance(exc, CompactHydraException):  # Hydra prints those compactly
                log.error("job failed (%s: %s); metrics.json records it", exc_type.__name__, exc)
        try:
            write_json(dict(self), self.path)
        except OSError as e:
            if exc is None:
                raise
            log.error("%s", e)  # keep the job's own error as the one that propagates
        if exc is None:
            log.info("results in %s", self.path.parent)
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


def elbo_metrics(lcfg: DictConfig, score_fn, sde, data, *, generator: torch.Generator, device: torch.device) -> dict:
    """``record["elbo"]`` (likelihood=elbo): ``scoresde.elbo.ELBOReport`` on ``num_points`` held-out points (the
    same points as the PF-ODE NLL beside it), per batch, averaged; with the exact mean -log p where known."""
    from hydra.utils import instantiate

    options = OmegaConf.to_container(lcfg)
    num_points, batch_size = options.pop("num_points"), options.pop("batch_size")
    options.pop("pf_ode", None)
    report = instantiate(options, _convert_="all")
    x = data.sample(num_points, generator, dtype=torch.float64)
    start = time.perf_counter()
    parts = [report.run(score_fn, sde, chunk.to(device), generator=generator) for chunk in x.split(batch_size)]
    out = {"num_points": num_points}
    for kind in ("continuous", "discrete"):
        if kind not in parts[0]:
            continue
        total = torch.cat([p["per_point"][kind].cpu() for p in parts])
        weights = [len(p["per_point"][kind]) / num_points for p in parts]
        entry = {k: (sum(w * p[kind][k] for w, p in zip(weights, parts)) if isinstance(v, float) else v)
                 for k, v in parts[0][kind].items() if k != "L_t-1"}
        entry.update(mean=float(total.mean()), stderr=float(total.std() / math.sqrt(total.numel())) if total.numel() > 1
                     else float("nan"))
        if getattr(data, "has_log_prob", False):
            gap = total - (-data.log_prob(x).to(torch.float64).reshape(-1))
            entry.update(gap_to_exact=float(gap.mean()), gap_stderr=float(gap.std() / math.sqrt(gap.numel())))
        out[kind] = entry
    out["time_s"] = time.perf_counter() - start
    log.info("ELBO of %d held-out points: %s", num_points, ", ".join(
        f"{k} {out[k]['mean']:.4f} +- {out[k]['stderr']:.4f} nats ({out[k]['bits_per_dim']:.4f} bits/dim)"
        for k in ("continuous", "discrete") if k in out))
    return out


def evaluate_likelihood(record: JobRecord, score_fn, sde, data, cfg: DictConfig, device: torch.device) -> None:
    """``record["nll"]`` when ``cfg.likelihood`` is set (likelihood=pf_ode): NLL of held-out data points."""
    if cfg.get("likelihood") is None:
        return
    if cfg.likelihood.get("_target_") == "scoresde.elbo.ELBOReport":
        record["elbo"] = elbo_metrics(cfg.likelihood, score_fn, sde, data, generator=make_generator(cfg.seed, HELD_OUT),
                                      device=device)
        if not cfg.likelihood.pf_ode:
            return
    lcfg = cfg.likelihood
    if lcfg.get("_target_") == "scoresde.elbo.ELBOReport":  # the PF-ODE NLL of the same points, beside the bound
        lcfg = OmegaConf.create({"_target_": "scoresde.likelihood.ProbabilityFlowLikelihood",
                                 "num_points": lcfg.num_points, "batch_size": lcfg.batch_size})
    nll = likelihood_metrics(lcfg, score_fn, sde, data, generator=make_generator(cfg.seed, HELD_OUT),
                             probe_generator=make_generator(cfg.seed, HELD_OUT, device), device=device)
    record["nll"] = nll
    record["time"]["likelihood_s"] = nll["time_s"]
    exact = "" if "exact_mean" not in nll else (f", exact -log p {nll['exact_mean']:.4f}, "
                                                f"KL estimate {nll['kl_estimate']:.4f} +- {nll['kl_stderr']:.4f}")
    log.info("NLL of %d held-out points: %.4f +- %.4f nats (NFE %d)%s", nll["num_points"], nll["mean"],
             nll["stderr"], nll["nfe"], exact)


def sample_seed_base(seed: int) -> int:
    """First per-sample seed of a job with ``seed``: sample i uses ``sample_seed_base(seed) + i``.

    Jobs with different seeds get disjoint ranges for up to 2^31 samples each."""
    return (int(seed) % 2**31) * 2**31


def sample_and_evaluate(record: JobRecord, score_fn, sde, data, sampler, cfg: DictConfig,
                        device: torch.device, out_dir: Path, labels: torch.Tensor | None = None,
                        callback=None) -> float | None:
    """Sample ``cfg.num_samples`` points, evaluate them (``evaluation.evaluate_job``), plot; returns the headline value.

    With ``labels`` ``[n]`` (a guided score), the samples are compared with the class's target
    (``guided.class_target``) and ``precision`` / ``spread`` are recorded.  ``callback`` (e.g. an
    ``animation.TrajectoryRecorder``) is passed to the sampler's run (the first batch's when batched)
    and its ``finish`` gets the final samples.
    """
    n = cfg.num_samples
    shape = (n, *data.event_shape)
    generator = make_generator(cfg.seed, SAMPLING, device)
    # p_T far from the prior (data off-centre / too wide for the SDE) biases every sampler: say so
    warn_prior_mismatch(data.mixture if isinstance(data, MixtureDataset)
                        else data.sample(min(n, 10_000), make_generator(cfg.seed, EVAL_DATA)), sde, logger=log)
    start = time.perf_counter()
    batch_size = sampling_batch_size(cfg.get("batch_size"), n)  # torchrun: per-sample seeds (scoresde.apps.ranks)
    if batch_size is None:
        result = sampler.run(score_fn, sde, shape, generator=generator, progress=cfg.progress, callback=callback)
        nfe, x = result.nfe, result.x
    else:
        # one noise stream per sample (EDM's per-sample seeds): sample i is the same whatever the batch size
        base, parts, nfe = sample_seed_base(cfg.seed), [], 0
        for lo, hi in rank_batches(n, batch_size):  # torchrun: this rank's share of the batches
            result = sampler.run(score_fn, sde, (hi - lo, *shape[1:]), seeds=range(base + lo, base + hi),
                                 device=device, progress=cfg.progress, callback=callback if lo == 0 else None)
            parts.append(result.x)
            nfe = max(nfe, result.nfe)  # NFE counts evaluations per sample, as in one batch
        x = gather_samples(parts, n, batch_size)  # torchrun: every rank's, in order; ranks > 0 end here
    if callback is not None:
        callback.finish(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    record["time"]["sample_s"] = time.perf_counter() - start
    record.update(nfe=nfe, num_samples=n)
    x = x.detach().to("cpu", torch.float64).reshape(n, -1)
    bad = int((~torch.isfinite(x).all(1)).sum())
    if bad:
        raise FloatingPointError(f"the sampler produced {bad} non-finite samples out of {n} (it diverged)")
    log.info("sampled %d points with %s: %d score evaluations in %.1f s", n, type(sampler).__name__,
             nfe, record["time"]["sample_s"])

    # Evaluation on the CPU in float64: against the exact mixture where there is one, else the data set
    # (scoresde.apps.evaluation); the reference drawn here is only for the plots and samples.npz.
    start = time.perf_counter()
    data_gen = make_generator(cfg.seed, EVAL_DATA)
    if labels is not None:
        target = class_target(data, labels, n, data_gen)
        if isinstance(target, torch.Tensor):
            reference = target[:n]
        else:
            reference = target.sample(n, data_gen, dtype=torch.float64).reshape(n, -1)
    else:
        reference = data.sample(n, data_gen, dtype=torch.float64).reshape(n, -1)
    record["quality"] = evaluate_job(x, data, cfg, labels, make_generator(cfg.seed, METRICS))
    record["time"]["evaluate_s"] = time.perf_counter() - start
    name = record["quality"].get("headline")
    headline = record["quality"]["metrics"][name]["value"] if name else None

    if labels is not None:
        record["precision"], record["spread"] = class_metrics(x, labels, data, make_generator(cfg.seed, METRICS))
        log.info("precision %.3f (%s), per class %s", record["precision"]["mean"], record["precision"]["method"],
                 {c: round(p, 3) for c, p in record["precision"]["per_class"].items()})

    to_user_units = getattr(data, "to_user_units", None)  # FileDataset: evaluated in training units, saved in the file's
    if to_user_units is not None:
        x = to_user_units(x.reshape(n, *data.event_shape)).reshape(n, -1)
        reference = to_user_units(reference.reshape(reference.shape[0], *data.event_shape)).reshape(reference.shape[0], -1)
        record["units"] = "the data file's (samples.npz, samples.png); metrics in standardised training units"
    k = min(n, cfg.eval.plot_points)
    x_np, ref_np = x[:k].numpy(), reference[:k].numpy()
    atomic_write_with(out_dir / "samples.npz", lambda f: np.savez_compressed(
        f, samples=x.numpy().astype(np.float32), reference=reference.numpy().astype(np.float32)))
    sampler_name = record["choices"].get("sampler", type(sampler).__name__)
    quality_line = headline_text(record["quality"])
    atomic_write_with(out_dir / "samples.png", lambda f: figures.plot_samples(
        x_np, ref_np, f, title=f"{sampler_name}: {n} samples, NFE {nfe}\n{quality_line}"))
    return headline

