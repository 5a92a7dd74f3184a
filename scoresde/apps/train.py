"""``scoresde-train``: train a score model on a toy data set, sample it, evaluate, plot.

    scoresde-train                                   # defaults of conf/train.yaml
    scoresde-train data=two_moons sde=ve sampler=ode_heun train.num_steps=5000
    scoresde-train -m sampler=pc,ddim,probability_flow
    python -m scoresde.apps.train --cfg job          # print the composed config

The output directory (``outputs/train/<date>/<time>``, or ``hydra.run.dir``) receives ``last.pt``
(``scoresde.training`` checkpoint, unless ``train.checkpoint_dir`` is set; its EMA weights are the
ones sampled), ``metrics.json`` (see ``scoresde.apps.common``), ``loss.png``, ``samples.png`` and
``samples.npz``.  ``resume=true`` with
``hydra.run.dir=<that directory>`` continues an interrupted run from its ``last.pt``.

Every object is built from the config before training starts, so a wrong value stops the job at
once.  ``conditional=true`` trains a label-conditioned model (``model.num_classes`` = the data
set's number of labels; or set ``model.num_classes`` yourself) with the labels dropped to the null
label with probability ``train.label_dropout`` (classifier-free guidance: ``scoresde-sample
checkpoint=<run>/last.pt guidance=cfg``); its samples here are unconditional (the null label).
``likelihood=pf_ode`` adds the PF-ODE NLL of held-out points to ``metrics.json``.  The task function returns the sliced-W2 / noise-floor ratio (for optimising sweepers).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from ..training import CHECKPOINT_NAME, train
from . import config_dir, figures
from .common import (MODEL_INIT, JobRecord, detach_parameters, evaluate_likelihood, make_generator, output_dir,
                     resolve_device, sample_and_evaluate)
from .schemas import register_schemas

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float | None:
    """The task function: ``cfg`` composed from ``conf/train.yaml``."""
    out = output_dir()
    with JobRecord("train", out) as record:
        start = time.perf_counter()
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
        parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
        record.update(sde=repr(sde), data=repr(data), sampler=repr(sampler), model=getattr(model, "config", repr(model)))
        record["time"]["build_s"] = time.perf_counter() - start
        log.info("training %s (%d parameters) on %r under %r, %d steps on %s",
                 type(model).__name__, parameters, data, sde, train_config.num_steps, device)

        start = time.perf_counter()
        result = train(model, data, train_config, resume=cfg.resume)
        record["time"]["train_s"] = time.perf_counter() - start
        losses = result.losses.numpy()
        tail = losses[-max(1, len(losses) // 10):]
        record["train"] = {"num_steps": len(losses), "parameters": parameters, "final_loss": float(np.mean(tail)),
                           "checkpoint": str(Path(train_config.checkpoint_dir) / CHECKPOINT_NAME)}
        log.info("trained in %.1f s, final loss %.4f", record["time"]["train_s"], record["train"]["final_loss"])
        figures.plot_loss(losses, out / "loss.png")

        ema = detach_parameters(result.ema_model.eval())  # see common.detach_parameters
        if next(ema.parameters()).device != device:  # train.device may differ from device
            ema.to(device)
        headline = sample_and_evaluate(record, ema.score_fn, sde, data, sampler, cfg, device, out)
        evaluate_likelihood(record, ema.score_fn, sde, data, cfg, device)
        return headline


def main() -> None:
    """Console entry point ``scoresde-train``."""
    register_schemas()
    hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")(run)()


if __name__ == "__main__":
    main()
