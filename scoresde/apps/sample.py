"""``scoresde-sample``: sample a trained checkpoint, or the exact score of a toy mixture, with any sampler.

    scoresde-sample                                        # exact score of data=eight_gaussians, sampler=pc
    scoresde-sample data=grid_gaussians sde=ve sampler=annealed_langevin
    scoresde-sample -m 'sampler=glob(*)'                   # every sampler; summary in the sweep directory
    scoresde-sample checkpoint=outputs/train/<date>/<time>/last.pt sampler=ddim sampler.num_steps=20

With ``checkpoint=null`` (default) the score is the closed form of the Gaussian-mixture data set
(``data`` must be one of the mixtures).  With a checkpoint written by ``scoresde-train``, the SDE,
data set and model are those of its training run (read from ``<run>/.hydra/config.yaml``) unless
``sde``/``data`` are overridden on the command line; the SDE must match the one the checkpoint
was trained with.  The EMA weights are used unless ``ema=false``.  Output: ``metrics.json``,
``samples.png``, ``samples.npz``.

Guidance and likelihood (``scoresde.apps.guided``)::

    scoresde-sample guidance=exact guidance.scale=4 guidance.label=2     # exact mixture, no checkpoint
    scoresde-sample checkpoint=<run of scoresde-train conditional=true>/last.pt guidance=cfg guidance.scale=3
    scoresde-sample guidance=classifier guidance.scale=2                  # trains a NoisyClassifier first
    scoresde-sample -m guidance=exact guidance.scale=0,1,2,4,8            # summary.md: precision per scale
    scoresde-sample likelihood=pf_ode likelihood.num_points=500           # metrics.json: nll (and KL estimate)

A guided run records ``guidance``, ``precision`` and ``spread`` in ``metrics.json`` and compares its
samples with the requested class (the component, for mixtures).  The NLL is that of the unguided score.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..data.datasets import MixtureDataset
from ..training.loading import model_from_state
from ..training.loop import load_checkpoint, load_weights
from . import config_dir
from .common import (GUIDANCE, JobRecord, apply_num_threads, evaluate_likelihood, make_generator, output_dir,
                     report_usage_errors, resolve_device, sample_and_evaluate, start_job, user_errors,
                     validate_app_config)
from .fit_grid import fitted_sampler, instantiate_sampler
from .guided import build_guidance, check_guidance_values
from .ranks import launch, rank_zero_first, share_config, task_on_ranks, task_overrides
from .schemas import register_schemas

log = logging.getLogger(__name__)


def _explicit_groups() -> set[str]:
    """The config groups (or their keys) set on the command line, e.g. {"sde", "data"}."""
    return {o.lstrip("+~").split("=")[0].split(".")[0] for o in task_overrides()}  # torchrun ranks > 0: rank 0's


def _trained_model(cfg: DictConfig, device):
    """(model, sde, data, info) of the checkpoint ``cfg.checkpoint``."""
    path = Path(cfg.checkpoint).expanduser()
    state = load_checkpoint(path)  # a clear error for a missing, corrupt or foreign file
    run_file = path.parent / ".hydra" / "config.yaml"
    run_cfg = OmegaConf.load(run_file) if run_file.is_file() else None
    explicit = _explicit_groups()
    nodes = {}
    for group in ("sde", "data"):
        from_run = run_cfg is not None and group not in explicit and group in run_cfg
        nodes[group] = run_cfg[group] if from_run else cfg[group]
        if from_run:
            log.info("%s from the checkpoint's training run %s", group, run_file)
    sde = instantiate(nodes["sde"], _convert_="all")
    data = instantiate(nodes["data"], _convert_="all")
    if state.get("sde") != repr(sde):
        raise ValueError(f"checkpoint {path} was trained with sde {state.get('sde')}, but the config gives "
                         f"{sde!r}; drop the sde override or set it to match")
    if run_cfg is not None and "model" in run_cfg:
        saved = state.get("model_config") or {}
        extra = {"num_classes": saved["num_classes"]} if "num_classes" in saved else {}  # conditional=true runs
        model = instantiate(run_cfg.model, _convert_="all", **extra)(sde, data.event_shape)
    elif state.get("model_config"):
        model = model_from_state(state, sde, path)  # the checkpoint's own model class (scoresde.training.loading)
    else:
        raise ValueError(f"checkpoint {path} has no model config and no training-run config beside it; "
                         "rebuild the model in Python and use scoresde.training.load_weights")
    load_weights(model, path, ema=cfg.ema)
    if "data_transform" in state and hasattr(data, "transform"):  # a FileDataset: the units the model was trained in
        from ..data.files import Standardization
        data.transform = Standardization.from_state_dict(state["data_transform"])
    model.to(device).eval().requires_grad_(False)
    info = {"checkpoint": str(path.resolve()), "step": state["step"], "ema": cfg.ema,
            "run_choices": _run_choices(path.parent)}
    info["num_classes"] = getattr(model, "num_classes", 0)
    return model, sde, data, info


def _run_choices(run_dir: Path) -> dict:
    """The config-group choices of the training run (from its hydra.yaml), {} if unknown."""
    path = run_dir / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return {}
    choices = OmegaConf.select(OmegaConf.load(path), "hydra.runtime.choices", default={})
    return {k: v for k, v in OmegaConf.to_container(choices).items() if not k.startswith(("hydra", "schema"))}


def run(cfg: DictConfig) -> float | None:
    """The task function: ``cfg`` composed from ``conf/sample.yaml`` (submitit's tasks of a job: ``ranks.task_on_ranks``)."""
    return task_on_ranks(lambda c: report_usage_errors("sample", _run, c), _rank_task, cfg)


def _rank_task(cfg: DictConfig, out: Path, scratch: Path) -> None:
    """A rank > 0 (torchrun, submitit tasks): sample its share with rank 0's config (``scoresde.apps.ranks``)."""
    report_usage_errors("sample", lambda c: _run(c, scratch), cfg)


def _run(cfg: DictConfig, out: Path | None = None) -> float | None:
    out = output_dir() if out is None else out  # torchrun's ranks > 0: a scratch directory (scoresde.apps.ranks)
    with JobRecord("sample", out) as record:
        with user_errors("sample"):  # every config value is checked here: one line naming the key
            start_job("sample", out)
            share_config(cfg, out)  # torchrun: the other ranks get this config now and sample their share
            start = time.perf_counter()
            validate_app_config(cfg)
            device = resolve_device(cfg.device)
            check_guidance_values(cfg.guidance)  # a negative scale stops here, before any work
            sampler, grid_fit = instantiate_sampler(cfg)  # sampler.grid=fit: a fitted grid (apps.fit_grid)
            model = None
            if cfg.checkpoint is None:
                sde = instantiate(cfg.sde, _convert_="all")
                data = instantiate(cfg.data, _convert_="all")
                if not isinstance(data, MixtureDataset):
                    choice = record["choices"].get("data", type(data).__name__)
                    raise ValueError(f"checkpoint=null samples the exact score of a Gaussian mixture, but data={choice} "
                                     "has no closed-form score: choose data=eight_gaussians, grid_gaussians, "
                                     "ncsn_two_modes or anisotropic_mixture, or pass checkpoint=/path/to/last.pt")
                score_fn = data.score_fn(sde)
                record["score"] = "exact"
            else:
                model, sde, data, info = _trained_model(cfg, device)
                score_fn = model.score_fn
                record["score"] = "checkpoint"
                record["checkpoint"] = info
                for group in ("data", "sde", "model"):  # report what was actually used
                    if group not in _explicit_groups() and group in info["run_choices"]:
                        record["choices"][group] = info["run_choices"][group]
            if grid_fit:  # load the cached fit (beside the checkpoint) or fit it now; torchrun: rank 0 fits
                with rank_zero_first(out) as lead_out:
                    sampler = fitted_sampler(record, sampler, score_fn, sde, data, checkpoint=record.get("checkpoint"),
                                             out=lead_out, device=device)
            record.update(sde=repr(sde), data=repr(data), sampler=repr(sampler))
            apply_num_threads(cfg.num_threads, None if model is None else sum(p.numel() for p in model.parameters()))
            guided, labels, record["guidance"] = build_guidance(
                cfg.guidance, score_fn=score_fn, model=model, data=data, sde=sde, n=cfg.num_samples,
                exact=cfg.checkpoint is None, generator=make_generator(cfg.seed, GUIDANCE, device), device=device)
            record["time"]["build_s"] = time.perf_counter() - start
        headline = sample_and_evaluate(record, guided, sde, data, sampler, cfg, device, out, labels=labels)
        evaluate_likelihood(record, score_fn, sde, data, cfg, device)
        return headline


def main() -> None:
    """Console entry point ``scoresde-sample``."""
    register_schemas()
    launch(hydra.main(config_path=str(config_dir()), config_name="sample", version_base="1.3")(run), _rank_task)


if __name__ == "__main__":
    main()
