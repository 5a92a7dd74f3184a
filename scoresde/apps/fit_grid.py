"""``scoresde-fit-grid`` and ``scoresde-sample sampler.grid=fit``: noise grids fitted to the model (issue 17).

    scoresde-fit-grid sampler=dpmpp_2m sampler.num_steps=8                      # exact score of data=...
    scoresde-fit-grid checkpoint=outputs/train/<date>/<time>/last.pt sampler=unipc sampler.num_steps=10
    scoresde-sample checkpoint=<...>/last.pt sampler=dpmpp_2m sampler.num_steps=8 sampler.grid=fit
    scoresde-sample sampler=dpmpp_2m sampler.num_steps=8 sampler.grid=<path>/grid.json

``scoresde-fit-grid`` fits a grid (``scoresde.samplers.fitting``: ``fit.method=ld3`` learned steps,
or ``dp``, the training-free dynamic programme) for the configured sampler, SDE and score, writes it
as JSON (``grid.json`` in the run directory, and with a checkpoint also the cache file beside it)
and records the fit in ``metrics.json``: which grid was chosen, the validation errors of the fitted
and the standard grids, and the fit's CPU time.

``scoresde-sample ... sampler.grid=fit`` loads the cached fit beside the checkpoint
(``<checkpoint dir>/fitted_grids/<Sampler>_<num_steps>_<key>.json``, the key a hash of everything
the fit depends on) or fits and caches it; with ``checkpoint=null`` (exact scores) the fit is
written into the run directory.  The fit's settings are the ``fit`` defaults below (``FitSettings``).

Stochastic samplers (``sampler=edm_heun sampler.s_churn=... `` or ``sampler=dpmpp_2m_sde``, i.e.
EDMHeun with s_churn > 0, DPMSolverPP with eta > 0) get the grid *and* one noise coefficient per step
(``scoresde.samplers.fit_stochastic``, AdaSDE-style, a distributional loss; ``fit.method`` must be
``ld3``); the file carries both, and ``sampler.grid=<file>.json`` sets the sampler's per-step
``s_churn`` / ``eta`` from it.  ``fit.teacher=pc`` fits them to the predictor-corrector sampler's
samples instead of the PF-ODE's: on a trained model the SDE's law is the better target.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .._checks import check_in, check_int, check_positive
from ..grids import FittedGrid, resolve_grid
from ..samplers import PredictorCorrector, fit_stochastic, fitting
from . import config_dir

log = logging.getLogger(__name__)

FIT = "fit"


@dataclass(frozen=True)
class FitSettings:
    """The fit's settings (``fit.*`` of ``conf/fit_grid.yaml``; the defaults for ``sampler.grid=fit``)."""

    method: str = "ld3"
    num_train: int = 512
    num_val: int = 512
    iterations: int = 150
    lr: float = 0.05
    seed: int = 0
    #: stochastic samplers only: the distribution the fit matches.  "ode": the PF-ODE (RK45, 1e-7;
    #: exact for an exact score); "pc": the predictor-corrector sampler's defaults (PC, 400 NFE), whose
    #: law on a trained model is better than its ODE's (benchmarks/results/restart.md: radius-5 ring,
    #: DPM-Solver++(2M) SDE fitted to PC at NFE 10-20, W2 0.246-0.269 against PC's 0.241 and the fitted
    #: ODE's 0.36).  Deterministic fits are pathwise: always the PF-ODE from the same prior draws.
    teacher: str = "ode"

    def __post_init__(self):
        check_in("fit.method", self.method, ("ld3", "dp"))
        check_in("fit.teacher", self.teacher, ("ode", "pc"))
        check_int("fit.num_train", self.num_train)
        check_int("fit.num_val", self.num_val)
        check_int("fit.iterations", self.iterations, minimum=0)
        check_positive("fit.lr", self.lr)
        check_int("fit.seed", self.seed, minimum=0)


def wants_fit(sampler_cfg: DictConfig) -> tuple[DictConfig, bool]:
    """(the sampler's config without ``grid=fit``, whether a fit was asked for)."""
    if OmegaConf.select(sampler_cfg, "grid") != FIT:
        return sampler_cfg, False
    node = OmegaConf.to_container(sampler_cfg)
    node.pop("grid")  # the sampler's default grid until the fitted one replaces it
    return OmegaConf.create(node), True


def check_can_fit(sampler, method: str = "ld3"):
    """``sampler`` if a fit exists for it (deterministic: ``fitting``; stochastic: ``fit_stochastic``)."""
    if fit_stochastic.is_stochastic(sampler):
        if method != "ld3":
            raise ValueError(f"fit.method={method} is for deterministic samplers; the stochastic {type(sampler).__name__} "
                             f"is fitted with fit.method=ld3 (learned steps and per-step noise)")
        return sampler
    try:
        return fitting.check_fittable(sampler)
    except ValueError as e:
        raise ValueError(f"{e}; or a stochastic one with per-step noise (EDMHeun with s_churn > 0, "
                         f"DPMSolverPP with eta > 0)") from None


def instantiate_sampler(cfg: DictConfig):
    """(the sampler of ``cfg.sampler``, whether ``sampler.grid=fit`` asked for a fitted grid); a sampler
    that cannot be fitted, or guidance with a fit, is an error here, before any work.  A fitted-grid
    file of a stochastic fit (``sampler.grid=<file>.json``) also sets the sampler's per-step noise."""
    sampler_cfg, grid_fit = wants_fit(cfg.sampler)
    grid = OmegaConf.select(sampler_cfg, "grid")
    fitted = resolve_grid(grid) if isinstance(grid, str) and grid.endswith(".json") else None
    if fitted is not None and fitted.coefficient:
        # the file's per-step noise replaces the config's scalar (e.g. dpmpp_2m_sde's eta: 1.0)
        node = OmegaConf.to_container(sampler_cfg)
        node.pop("grid")
        sampler = fitted.configure(instantiate(OmegaConf.create(node), _convert_="all"))
        log.info("sampler.grid=%s: per-step %s from the file", grid, fitted.coefficient)
    else:
        sampler = instantiate(sampler_cfg, _convert_="all")
    if grid_fit:
        check_can_fit(sampler)
        guidance = OmegaConf.select(cfg, "guidance.kind", default="none")
        if guidance not in ("none", None):
            raise ValueError(f"sampler.grid=fit fits the grid to the unguided score; it is not supported with "
                             f"guidance={guidance}: fit with scoresde-fit-grid and pass sampler.grid=<file>")
    return sampler, grid_fit


def cache_key(sampler, sde, data, source: dict, settings: FitSettings) -> str:
    """A short hash of everything the fit depends on (the sampler without its grid); the default teacher
    is left out, so that the caches written before ``fit.teacher`` existed keep their names."""
    fields = dataclasses.asdict(settings)
    if fields["teacher"] == "ode":
        del fields["teacher"]
    what = {"sampler": repr(dataclasses.replace(sampler, grid="uniform")), "sde": repr(sde), "data": repr(data),
            "source": source, "settings": fields, "version": 1}
    return hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:12]


def fit(sampler, score_fn, sde, event_shape, settings: FitSettings, device=None):
    """Run the configured fit (``fit_grid``, ``dp_grid``, or ``fit_stochastic`` for a stochastic sampler)
    for ``sampler`` at its ``num_steps``."""
    kw = {"num_train": settings.num_train, "num_val": settings.num_val, "seed": settings.seed, "device": device}
    if fit_stochastic.is_stochastic(check_settings(sampler, settings)):
        teacher = PredictorCorrector() if settings.teacher == "pc" else None
        return fit_stochastic.fit_stochastic(score_fn, sde, sampler, sampler.num_steps, tuple(event_shape),
                                             iterations=settings.iterations, lr=settings.lr, teacher=teacher, **kw)
    if settings.method == "ld3":
        return fitting.fit_grid(score_fn, sde, sampler, sampler.num_steps, tuple(event_shape),
                                iterations=settings.iterations, lr=settings.lr, **kw)
    return fitting.dp_grid(score_fn, sde, sampler, sampler.num_steps, tuple(event_shape), **kw)


def check_settings(sampler, settings: FitSettings):
    """``sampler`` if ``settings`` can fit it (``check_can_fit``; ``fit.teacher=pc`` only for a stochastic one)."""
    check_can_fit(sampler, settings.method)
    if settings.teacher == "pc" and not fit_stochastic.is_stochastic(sampler):
        raise ValueError(f"fit.teacher=pc is for stochastic samplers (a fit to the teacher's distribution); "
                         f"{type(sampler).__name__} is deterministic and is fitted pathwise to the PF-ODE from the "
                         f"same prior draws: use fit.teacher=ode")
    return sampler


def fitted_sampler(record: dict, sampler, score_fn, sde, data, *, checkpoint: dict | None, out: Path,
                   settings: FitSettings = FitSettings(), run_file: str = "fitted_grid.json", device=None):
    """``sampler`` with its fitted grid: loaded from the cache, or fitted (and cached); the fit is
    recorded in ``record["fitted_grid"]`` (cache path, chosen grid, validation errors, fit CPU time).
    Without a checkpoint the fit is written to ``out / run_file``."""
    check_settings(sampler, settings)
    source = {"checkpoint": checkpoint["checkpoint"], "step": checkpoint["step"], "ema": checkpoint["ema"]} \
        if checkpoint else {"score": "exact"}
    key = cache_key(sampler, sde, data, source, settings)
    name = f"{type(sampler).__name__}_{sampler.num_steps}_{key}.json"
    cache = (Path(checkpoint["checkpoint"]).parent / "fitted_grids" / name) if checkpoint else out / run_file
    if cache.is_file():
        grid, cached = FittedGrid.load(cache), True
        log.info("fitted grid loaded from %s (%s)", cache, grid.method)
    else:
        result = fit(sampler, score_fn, sde, data.event_shape, settings, device)
        grid, cached = result.grid, False
        grid.save(cache)
        val, what = (result.val_loss, "loss (sliced W2^2) to the teacher's samples") if grid.coefficient else (
            result.val_rmse, "RMS distance to the teacher")
        log.info("fitted a grid%s for %s in %.1f s of CPU: %s, validation %s %.4g (best standard grid %.4g); "
                 "written to %s", " and per-step noise" if grid.coefficient else "", type(sampler).__name__,
                 result.cpu_s, result.method, what, val["fitted"],
                 min(v for k, v in val.items() if k in fitting.STANDARD_GRIDS), cache)
    info = grid.info
    record["fitted_grid"] = {"path": str(cache), "cached": cached, "method": grid.method, "ts": list(grid.ts),
                             "val_rmse": info.get("val_rmse"), "fit_cpu_s": info.get("cpu_s")}
    if grid.coefficient:
        record["fitted_grid"].update(val_loss=info.get("val_loss"), coefficient=grid.coefficient,
                                     coefficients=list(grid.coefficients))
    return grid.configure(sampler)


# -- scoresde-fit-grid --------------------------------------------------------------------------------

def run(cfg: DictConfig):
    from .common import report_usage_errors  # noqa: PLC0415

    return report_usage_errors("fit-grid", _run, cfg)


def _run(cfg: DictConfig):
    from ..data.datasets import MixtureDataset  # noqa: PLC0415
    from .common import JobRecord, output_dir, resolve_device, start_job, user_errors  # noqa: PLC0415
    from .sample import _trained_model  # noqa: PLC0415

    out = output_dir()
    with JobRecord("fit-grid", out) as record:
        with user_errors("fit-grid"):
            start_job("fit-grid", out)
            settings = instantiate(cfg.fit, _convert_="all")
            sampler_cfg, _ = wants_fit(cfg.sampler)
            sampler = check_settings(instantiate(sampler_cfg, _convert_="all"), settings)
            device = resolve_device(cfg.device)
            if cfg.checkpoint is None:
                sde = instantiate(cfg.sde, _convert_="all")
                data = instantiate(cfg.data, _convert_="all")
                if not isinstance(data, MixtureDataset):
                    raise ValueError("checkpoint=null fits the grid to the exact score of a Gaussian mixture: choose "
                                     "a mixture data set or pass checkpoint=/path/to/last.pt")
                score_fn, info = data.score_fn(sde), None
            else:
                model, sde, data, info = _trained_model(cfg, device)
                score_fn = model.score_fn
        sampler = fitted_sampler(record, sampler, score_fn, sde, data, checkpoint=info, out=out, settings=settings,
                                 run_file="grid.json", device=device)
        path = out / "grid.json"
        if not path.is_file():  # the fit was cached beside the checkpoint: a copy in the run directory
            sampler.grid.save(path)
        record.update(grid_file=str(path), sampler=repr(sampler), sde=repr(sde))
        log.info("grid written to %s; sample with sampler.grid=%s", path, path)
        val = record["fitted_grid"].get("val_loss") or record["fitted_grid"]["val_rmse"]
        return val["fitted"] if val else None


def main() -> None:
    """Console entry point ``scoresde-fit-grid``."""
    from .schemas import register_schemas  # noqa: PLC0415

    register_schemas()
    hydra.main(config_path=str(config_dir()), config_name="fit_grid", version_base="1.3")(run)()


if __name__ == "__main__":
    main()
