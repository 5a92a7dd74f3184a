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
reverse process.  The recipe groups ``loss``, ``time``, ``optim``, ``scheduler`` (unset by default:
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
``likelihood=pf_ode`` adds the PF-ODE NLL of held-out points to ``metrics.json``.  The task function returns the sliced-W2 / noise-floor ratio (for optimising sweepers).
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

from .._io import atomic_write_with, probe_writable
from ..training.loop import CHECKPOINT_NAME, TrainingInterrupted, _summary_writer_class, train
from . import config_dir, figures
from .common import (EVAL_DATA, MODEL_INIT, SAMPLING, JobRecord, detach_parameters, evaluate_likelihood,
                     make_generator, output_dir, report_usage_errors, resolve_device, resume_hint,
                     sample_and_evaluate, start_job, user_errors, validate_app_config)
from .schemas import register_schemas

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float | None:
    """The task function: ``cfg`` composed from ``conf/train.yaml``."""
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
            probe_writable(train_config.checkpoint_dir, "train.checkpoint_dir")
            recipe = _recipe(cfg, sde)  # loss / time / optim / scheduler groups (None: TrainConfig's own)
            parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
            record.update(sde=repr(sde), data=repr(data), sampler=repr(sampler), model=getattr(model, "config", repr(model)))
            record["time"]["build_s"] = time.perf_counter() - start
            log.info("training %s (%d parameters) on %r under %r, %d steps on %s",
                     type(model).__name__, parameters, data, sde, train_config.num_steps, device)

        start = time.perf_counter()
        try:
            with user_errors("train"):  # resume / checkpoint problems are found before the first step
                result = train(model, data, train_config, resume=cfg.resume, log_file=out / "train_log.csv",
                               tensorboard_dir=out / "tensorboard" if cfg.get("tensorboard") else None, **recipe)
        except TrainingInterrupted as e:
            e.hint = resume_hint("train", record, out)
            raise
        record["time"]["train_s"] = time.perf_counter() - start
        losses = result.losses.numpy()
        tail = losses[-max(1, len(losses) // 10):]
        record["train"] = {"num_steps": len(losses), "parameters": parameters, "final_loss": float(np.mean(tail)),
                           "checkpoint": str(Path(train_config.checkpoint_dir) / CHECKPOINT_NAME)}
        log.info("trained in %.1f s, final loss %.4f", record["time"]["train_s"], record["train"]["final_loss"])
        atomic_write_with(out / "loss.png", lambda f: figures.plot_loss(losses, f))

        ema = detach_parameters(result.ema_model.eval())  # see common.detach_parameters
        if next(ema.parameters()).device != device:  # train.device may differ from device
            ema.to(device)
        headline = sample_and_evaluate(record, ema.score_fn, sde, data, sampler, cfg, device, out)
        if cfg.plot.animation:
            _animate(record, ema.score_fn, sde, data, sampler, cfg, device, out)
        evaluate_likelihood(record, ema.score_fn, sde, data, cfg, device)
        return headline


def _animate(record, score_fn, sde, data, sampler, cfg: DictConfig, device, out: Path) -> None:
    """``plot.animation=true``: ``animation.gif`` of the reverse process (2-D data; in the data file's units)."""
    if tuple(data.event_shape) != (2,):
        log.warning("plot.animation=true needs 2-D data; %s has event shape %s, no animation written",
                    type(data).__name__, tuple(data.event_shape))
        return
    from ..animation import record_trajectory, save_animation

    start = time.perf_counter()
    to_user = getattr(data, "to_user_units", None)
    n = cfg.plot.animation_points
    frames, times = record_trajectory(sampler, score_fn, sde, n, make_generator(cfg.seed, SAMPLING, device),
                                      max_frames=cfg.plot.animation_frames, transform=to_user)
    reference = data.sample(n, make_generator(cfg.seed, EVAL_DATA), dtype=torch.float64)
    reference = (to_user(reference) if to_user is not None else reference).numpy()
    name = record["choices"].get("sampler", type(sampler).__name__)
    save_animation(frames, out / "animation.gif", times=times, reference=reference, title=name)
    record["time"]["animation_s"] = time.perf_counter() - start
    log.info("wrote %s (%d frames)", out / "animation.gif", len(frames))


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
    hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")(run)()


if __name__ == "__main__":
    main()
