"""``scoresde-train``: train a score model on a toy data set, sample it, evaluate, plot.

    scoresde-train                                   # defaults of conf/train.yaml
    scoresde-train data=two_moons sde=ve sampler=ode_heun train.num_steps=5000
    scoresde-train -m sampler=pc,ddim,probability_flow
    python -m scoresde.apps.train --cfg job          # print the composed config

The output directory (``outputs/train/<date>/<time>``, or ``hydra.run.dir``) receives ``last.pt``
(``scoresde.training`` checkpoint, unless ``train.checkpoint_dir`` is set; its EMA weights are the
ones sampled), ``metrics.json`` (see ``scoresde.apps.common``), ``loss.png``, ``samples.png`` and
``samples.npz``, every file written atomically, plus ``train_log.csv`` (step, loss, learning rate;
written as training goes) and, with ``plot.animation=true`` (2-D data), ``animation.gif`` of the
reverse process (the first ``plot.animation_points`` particles of the sampling run, recorded as it
goes: no second run).  The recipe groups ``loss``, ``time``, ``optim``, ``scheduler`` (unset by default:
``TrainConfig``'s own Adam, warm-up and uniform-t DSM loss) and ``experiment`` files (e.g.
``experiment=edm_recipe``) are described in ``scoresde.training.recipes`` and ``conf/``.  The output directory is logged at the start and
the end.  A checkpoint is written every ``train.checkpoint_every`` steps, every
``train.checkpoint_seconds`` and at the end; Ctrl-C (SIGINT) or SIGTERM writes one and exits with
one line naming the command that continues the run: ``scoresde-train <same overrides>
resume=true hydra.run.dir=<that directory>``, which reaches the bit-identical result.  A directory
that already holds a run is refused (nothing is written into it) unless ``resume=true``, and
``resume=true`` with nothing to resume from is an error.

Every object is built and every config value checked before training starts (and the output
and checkpoint directories probed for writability), so a wrong value stops the job at once with
one line naming the config key.  ``conditional=true`` trains a label-conditioned model (``model.num_classes`` = the data
set's number of labels; or set ``model.num_classes`` yourself) with the labels dropped to the null
label with probability ``train.label_dropout`` (classifier-free guidance: ``scoresde-sample
checkpoint=<run>/last.pt guidance=cfg``); its samples here are unconditional (the null label).
``likelihood=pf_ode`` adds the PF-ODE NLL of held-out points to ``metrics.json``.

**Validation, quality checks, the best checkpoint, the adaptive recipe** (issue 21,
``scoresde.training.quality``).  ``data=file`` holds out ``data.validation`` (10 %) of the file,
never trained on; the final evaluation is against it (a held-out KDE) instead of the training points.
With checks (``quality.every``, or ``auto``), every ``quality.every`` steps the EMA model is sampled
(its own generator: training is unchanged bit for bit) and assessed against the validation split
(or the data set's exact target / fresh draws); each check is a row of ``quality_log.csv``, a
TensorBoard scalar and a point in the second panel of ``loss.png``; ``best.pt`` keeps the best
check's weights, and the final samples come from it (``quality.final=best``; metrics.json's
``train.sampled`` names the checkpoint and its step).  ``auto`` (null: true for ``data=file``):
``train.num_steps`` becomes ``quality.budget``, ``model.input_features`` is chosen among
``quality.candidates`` by pilot runs, training ends after ``quality.patience`` consecutive checks
at floor, and a sampler left at its default is replaced by ``quality.sampler`` (``_auto_sampler``); ``metrics.json``'s ``train.auto`` records what was decided, so ``auto=false`` with those
values pins it.  ``auto=false`` without checks and without a split is the run of before, bit for bit.  The task function returns the sliced-W2 / noise-floor ratio (for optimising sweepers).
"""
from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

import copy
import dataclasses

from .._io import atomic_write_with, probe_writable
from ..data.files import FileDataset
from ..training.checkpoints import load_weights
from ..training.quality import BEST_NAME, CoolDown, QualityCheck, choose_input_features, validation_target
from ..training.recipes import ConstantLR
from ..training.loop import CHECKPOINT_NAME, TrainingInterrupted, _summary_writer_class, train
from . import config_dir, figures
from .common import (EVAL_DATA, MODEL_INIT, JobRecord, detach_parameters, evaluate_likelihood, make_generator,
                     apply_num_threads, output_dir, report_usage_errors, resolve_device, resume_hint,
                     sample_and_evaluate, start_job, user_errors, validate_app_config)
from .ranks import end_data_parallel, launch, share_config, task_on_ranks
from .schemas import register_schemas

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float | None:
    """The task function: ``cfg`` composed from ``conf/train.yaml`` (submitit's tasks of a job: ``ranks.task_on_ranks``)."""
    return task_on_ranks(_job, _rank_task, cfg)


def _job(cfg: DictConfig) -> float | None:
    out = output_dir()
    try:
        return report_usage_errors("train", lambda c: _run(c, out), cfg)
    except TrainingInterrupted as e:
        saved = f"checkpoint {e.checkpoint} written" if e.checkpoint is not None else "no checkpoint written"
        print(f"scoresde-train: interrupted by {signal.Signals(e.signum).name} after step {e.step}; {saved}. "
              f"Resume with: {e.hint}", file=sys.stderr, flush=True)
        raise SystemExit(128 + e.signum) from None


def _run(cfg: DictConfig, out: Path) -> float | None:
    with JobRecord("train", out) as record:
        with user_errors("train"):  # every config value is checked here: one line naming the key
            start_job("train", out)
            rank = share_config(cfg, out)  # torchrun: the other ranks get this config now (scoresde.apps.ranks)
            start = time.perf_counter()
            validate_app_config(cfg)
            if cfg.get("tensorboard"):  # without the extra: one line naming the key, before any work
                try:
                    _summary_writer_class()
                except ImportError as err:
                    raise ValueError(f"tensorboard=true: {err}") from err
            device = resolve_device(cfg.device)
            sde = instantiate(cfg.sde, _convert_="all")
            data = instantiate(cfg.data, _convert_="all")
            sampler = instantiate(cfg.sampler, _convert_="all")
            train_config = instantiate(cfg.train, checkpoint_dir=cfg.train.checkpoint_dir or str(out), _convert_="all")
            model_options = {}
            data_classes = getattr(data, "num_classes", 0)
            if cfg.conditional and cfg.model.num_classes == 0:
                if data_classes == 0:
                    raise ValueError(f"conditional=true needs a labelled data set, but {type(data).__name__} has no labels; "
                                     "choose a mixture, two_moons, circles, pinwheel or two_spirals")
                model_options["num_classes"] = data_classes
            num_classes = model_options.get("num_classes", cfg.model.num_classes)
            if num_classes and num_classes != data_classes:
                raise ValueError(f"model.num_classes={num_classes} but the data set {type(data).__name__} has "
                                 f"{data_classes} labels; use conditional=true to take the data set's number")
            model = instantiate(cfg.model, _convert_="all", **model_options)(
                sde, data.event_shape, generator=make_generator(cfg.seed, MODEL_INIT))
            if rank == 0:  # the checkpoint directory is rank 0's to write
                probe_writable(train_config.checkpoint_dir, "train.checkpoint_dir")
            recipe = _recipe(cfg, sde)  # loss / time / optim / scheduler groups (None: TrainConfig's own)
            auto, every = _quality_plan(cfg, data)
            if auto:
                train_config = dataclasses.replace(train_config, num_steps=cfg.quality.budget)
                sampler, sampler_rule = _auto_sampler(cfg, record, sampler)
            parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
            apply_num_threads(cfg.num_threads, parameters)  # once, before any work (common.SMALL_MODEL_PARAMETERS)
            record.update(sde=repr(sde), data=repr(data), sampler=repr(sampler), model=getattr(model, "config", repr(model)))
            record["time"]["build_s"] = time.perf_counter() - start
            log.info("training %s (%d parameters) on %r under %r, %d steps on %s",
                     type(model).__name__, parameters, data, sde, train_config.num_steps, device)

        start = time.perf_counter()
        checks, decided = None, {}
        if every:
            target = validation_target(data)
            checks = QualityCheck(target, every=every, num_samples=cfg.quality.num_samples,
                                  patience=cfg.quality.patience if auto else 0, seed=cfg.seed,
                                  log_file=out / "quality_log.csv", eval_seed=cfg.eval.seed,
                                  cooldown=float(cfg.quality.cooldown) if auto and not _distributed() else 0.0)
            if auto:
                model, decided = _auto_model(cfg, sde, data, train_config, recipe, checks, model)
                decided.update(sampler=repr(sampler), sampler_rule=sampler_rule)
                if checks.cooldown and checks.patience:  # the early finish cools the lr down first (quality.CoolDown)
                    base = recipe["lr_schedule"] or ConstantLR(train_config.warmup_steps)  # None: the loop's own
                    recipe = {**recipe, "lr_schedule": CoolDown(base, checks)}
        try:
            with user_errors("train"):  # resume / checkpoint problems are found before the first step
                result = train(model, data, train_config, resume=cfg.resume, log_file=out / "train_log.csv",
                               tensorboard_dir=out / "tensorboard" if cfg.get("tensorboard") else None, **recipe,
                               **({"callbacks": [checks]} if checks is not None else {}))
        except TrainingInterrupted as e:
            e.hint = resume_hint("train", record, out)
            raise
        if end_data_parallel() != 0:  # torchrun: training is over; rank 0 alone samples, evaluates and writes
            return None
        record["time"]["train_s"] = time.perf_counter() - start
        losses = result.losses.numpy()
        tail = losses[-max(1, len(losses) // 10):]
        record["train"] = {"num_steps": len(losses), "parameters": parameters, "final_loss": float(np.mean(tail)),
                           "checkpoint": str(Path(train_config.checkpoint_dir) / CHECKPOINT_NAME)}
        log.info("trained in %.1f s, final loss %.4f", record["time"]["train_s"], record["train"]["final_loss"])
        if checks is None:
            atomic_write_with(out / "loss.png", lambda f: figures.plot_loss(losses, f))
        else:
            atomic_write_with(out / "loss.png", lambda f: _plot_loss_and_checks(losses, checks.records, f))

        ema = detach_parameters(result.ema_model.eval())  # see common.detach_parameters
        if checks is not None:
            _use_best(record, cfg, checks, decided, ema, Path(train_config.checkpoint_dir), len(losses))
        if next(ema.parameters()).device != device:  # train.device may differ from device
            ema.to(device)
        recorder = _trajectory_recorder(data, cfg)  # the animation records the one sampling run
        # a held-out split: the final evaluation is against it (quality.validation_target), not the training points
        eval_data = validation_target(data) if getattr(data, "validation", None) is not None else data
        if eval_data is not data and cfg.eval.metrics is None:  # see quality.HELD_OUT_METRICS: the outlier metrics
            cfg = copy.deepcopy(cfg)
            cfg.eval.metrics = ["outlier_z", "outlier_rate_0.1pct", "outlier_rate_1pct"]
            log.info("evaluating against the %d held-out points (their KDE): outlier metrics only", len(data.validation))
        headline = sample_and_evaluate(record, ema.score_fn, sde, eval_data, sampler, cfg, device, out, callback=recorder)
        if recorder is not None:
            _animate(record, recorder, data, sampler, cfg, out)
        evaluate_likelihood(record, ema.score_fn, sde, data, cfg, device)
        return headline


def _trajectory_recorder(data, cfg: DictConfig):
    """``plot.animation=true`` with 2-D data: a recorder of the first ``plot.animation_points`` particles, else None."""
    if not cfg.plot.animation:
        return None
    if tuple(data.event_shape) != (2,):
        log.warning("plot.animation=true needs 2-D data; %s has event shape %s, no animation written",
                    type(data).__name__, tuple(data.event_shape))
        return None
    from ..animation import TrajectoryRecorder

    return TrajectoryRecorder(cfg.plot.animation_points)


def _animate(record, recorder, data, sampler, cfg: DictConfig, out: Path) -> None:
    """``animation.gif`` of the reverse process recorded from the sampling run (in the data file's units)."""
    from ..animation import save_animation

    start = time.perf_counter()
    to_user = getattr(data, "to_user_units", None)
    frames, times = recorder.frames(max_frames=cfg.plot.animation_frames, transform=to_user)
    reference = data.sample(cfg.plot.animation_points, make_generator(cfg.seed, EVAL_DATA), dtype=torch.float64)
    reference = (to_user(reference) if to_user is not None else reference).numpy()
    name = record["choices"].get("sampler", type(sampler).__name__)
    save_animation(frames, out / "animation.gif", times=times, reference=reference, title=name)
    record["time"]["animation_s"] = time.perf_counter() - start
    log.info("wrote %s (%d frames)", out / "animation.gif", len(frames))


def _quality_plan(cfg: DictConfig, data) -> tuple[bool, int | None]:
    """(auto, steps between checks or None) from ``auto`` and ``quality`` (checked here, before any work)."""
    q = cfg.quality
    # null: a data file of points (not images) with a model that has input_features
    auto = (isinstance(data, FileDataset) and len(data.event_shape) == 1 and "input_features" in cfg.model) \
        if cfg.auto is None else bool(cfg.auto)
    for key, lo in (("num_samples", 10), ("patience", 0), ("budget", 1), ("pilot_steps", 1)):
        if q[key] < lo:
            raise ValueError(f"`quality.{key}` must be >= {lo}, got {q[key]}")
    if not 0 <= q.get("cooldown", 0) <= 1:
        raise ValueError(f"`quality.cooldown` must be in [0, 1] (a fraction of the steps done), got {q.cooldown}")
    if q.every is not None and q.every < 1:
        raise ValueError(f"`quality.every` must be null or >= 1, got {q.every}")
    if q.final not in ("best", "last"):
        raise ValueError(f"`quality.final` must be 'best' or 'last', got {q.final!r}")
    if auto and not list(q.candidates):
        raise ValueError("`quality.candidates` must name at least one model.input_features value")
    every = q.every if q.every is not None else (1000 if auto else None)
    if auto and cfg.resume:  # the pilots ran in the first call; the resumed run keeps its model
        log.info("auto=true with resume=true: continuing the run's own model, no pilot runs")
    return auto, every


def _distributed() -> bool:
    """Under torchrun: no cool-down (``QualityCheck`` runs on rank 0 only, and the lr must agree on every rank)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _auto_sampler(cfg: DictConfig, record, sampler):
    """``auto``: (the final sampler, the rule): ``quality.sampler`` if ``sampler`` is left at its default, else ``sampler``.

    "Left at its default": the choice ``pc`` with no ``sampler...`` override and no experiment file.
    PC-200's coarse last steps (uniform t, 200 predictor steps) leave thin data off their curve:
    ``benchmarks/results/own_data.md`` (the same checkpoints, 400 NFE each: S-curve outlier_z 1.5-4.5
    with PC-200, -0.7-0.7 with Euler-Maruyama 400).
    """
    if cfg.quality.get("sampler") is None:
        return sampler, "quality.sampler=null: the configured sampler"
    chosen = record["choices"].get("sampler") == "pc" and record["choices"].get("experiment") in (None, "null") \
        and not any(o.lstrip("+~").split("=")[0].split(".")[0] == "sampler" for o in record["overrides"])
    if not chosen:
        return sampler, "the sampler given (sampler=..., an override or an experiment)"
    sampler = instantiate(cfg.quality.sampler, _convert_="all")
    record["choices"]["sampler"] = f"quality.sampler ({type(sampler).__name__})"  # names the figures' sampler
    log.info("auto: sampling the final samples with %r (quality.sampler; pin another with sampler=...)", sampler)
    return sampler, "sampler left at its default: quality.sampler"


def _auto_model(cfg: DictConfig, sde, data, train_config, recipe: dict, check: QualityCheck, model):
    """``auto``: choose model.input_features by pilot runs (``quality.choose_input_features``); (model, decisions)."""
    decided = {"auto": True, "num_steps_budget": train_config.num_steps, "patience": cfg.quality.patience,
               "check_every": cfg.quality.every or 1000}
    if cfg.resume or "input_features" not in cfg.model:
        decided["input_features"] = cfg.model.get("input_features")
        decided["rule"] = "resumed run: its own model" if cfg.resume else "the model has no input_features"
        return model, decided

    def make(features):
        return instantiate(cfg.model, _convert_="all", input_features=features)(
            sde, data.event_shape, generator=make_generator(cfg.seed, MODEL_INIT))

    start = time.process_time()
    choice = choose_input_features(make, data, train_config, check.target, candidates=list(cfg.quality.candidates),
                                   pilot_steps=cfg.quality.pilot_steps, check=check, train_kwargs=recipe)
    if torch.distributed.is_available() and torch.distributed.is_initialized():  # torchrun: rank 0's choice
        shared = [choice]
        torch.distributed.broadcast_object_list(shared, src=0)
        choice = shared[0]
    decided.update(choice, pilots_cpu_s=time.process_time() - start)
    log.info("auto: model.input_features=%d (pilots of %d steps: %s)", choice["input_features"], choice["pilot_steps"],
             ", ".join(f"{p['input_features']}: {p['headline']} {p['value']:.3g} {p['overall']}" for p in choice["pilots"]))
    return make(choice["input_features"]), decided


def _use_best(record, cfg: DictConfig, checks: QualityCheck, decided: dict, ema, ckpt_dir: Path, steps: int) -> None:
    """Load best.pt's EMA weights into ``ema`` (``quality.final=best``); record the checks and what was sampled."""
    best = checks.best
    record["train"]["quality_checks"] = {"every": checks.every, "num_samples": checks.num_samples,
                                         "cpu_s": checks.seconds, "checks": checks.records, "best": best}
    if decided:
        decided["finished_early"] = checks.finished_early
        decided["cooldown"] = {"fraction": checks.cooldown, "steps": checks.cooldown_steps}
        decided["steps_trained"] = steps
        record["train"]["auto"] = decided
    used = {"checkpoint": str(ckpt_dir / CHECKPOINT_NAME), "step": steps}
    if cfg.quality.final == "best" and best is not None and (ckpt_dir / BEST_NAME).is_file():
        load_weights(ema, ckpt_dir / BEST_NAME, ema=True)
        used = {"checkpoint": str(ckpt_dir / BEST_NAME), "step": best["step"]}
    record["train"]["sampled"] = used
    log.info("sampling from %s (step %d)%s", used["checkpoint"], used["step"],
             "" if not decided else f"; auto decided {decided.get('input_features')} input features, "
             f"{steps} steps (finished early: {checks.finished_early})")


def _plot_loss_and_checks(losses, records: list, path) -> None:
    """``figures.plot_loss``'s panel and, below it, each check's validation headline with its floor's p95."""
    from matplotlib.figure import Figure

    losses = np.asarray(losses, dtype=np.float64)
    fig = Figure(figsize=(6, 5.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    steps = np.arange(1, len(losses) + 1)
    top.plot(steps, losses, color="C0", alpha=0.3, lw=0.6, label="batch loss")
    window = max(1, len(losses) // 50)
    if len(losses) >= window > 1:
        top.plot(steps[window - 1:], np.convolve(losses, np.ones(window) / window, mode="valid"), color="C0", lw=1.5,
                 label=f"running mean ({window} steps)")
    if np.all(losses[np.isfinite(losses)] > 0):
        top.set_yscale("log")
    top.set_ylabel("DSM loss")
    top.legend(fontsize=8)
    if records:
        s = np.array([r["step"] for r in records])
        v = np.array([r["value"] for r in records])
        ok = np.array([r["overall"] == "at floor" for r in records])
        bottom.plot(s, v, color="0.5", lw=1)
        bottom.scatter(s[ok], v[ok], color="C2", zorder=3, label="overall at floor")
        bottom.scatter(s[~ok], v[~ok], color="C3", zorder=3, label="above floor")
        bottom.plot(s, [r["floor_p95"] for r in records], color="k", ls="--", lw=1, label="floor band's p95")
        if np.all(v > 0):
            bottom.set_yscale("log")
        bottom.set_ylabel(f"validation {records[0]['headline']}")
        bottom.legend(fontsize=8)
    bottom.set_xlabel("step")
    fig.savefig(path, dpi=110)


def _recipe(cfg: DictConfig, sde) -> dict:
    """``train``'s loss_fn, optimizer and lr_schedule from the loss, time, optim and scheduler groups (None if unset)."""
    def build(key):
        return instantiate(cfg[key], _convert_="all") if cfg.get(key) is not None else None

    time_sampler = build("time")
    loss = build("loss")
    loss_fn = loss(sde, time_sampler=time_sampler) if loss is not None else None
    if loss is None and time_sampler is not None:
        from ..training.losses import DSMLoss
        loss_fn = DSMLoss(sde, time_sampler=time_sampler)
    return {"loss_fn": loss_fn, "optimizer": build("optim"), "lr_schedule": build("scheduler")}


def main() -> None:
    """Console entry point ``scoresde-train``."""
    register_schemas()
    launch(hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")(run), _rank_task)


def _rank_task(cfg: DictConfig, out: Path, scratch: Path) -> None:
    """A rank > 0 under torchrun: train with rank 0's config and checkpoint directory (``scoresde.apps.ranks``)."""
    if not cfg.train.checkpoint_dir:
        cfg.train.checkpoint_dir = str(out)
    report_usage_errors("train", lambda c: _run(c, scratch), cfg)


if __name__ == "__main__":
    main()
