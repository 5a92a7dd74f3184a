"""Low-NFE sigma_min for the Karras and log-SNR grids (issue 17, "Also in scope"): does ending the grid
at a larger sigma~ = sigma/alpha, chosen from the number of steps, help *every* sampler that uses those grids?

Setup as ``fitted_grids.py`` / ``quality_vs_nfe.py --parts low_nfe``: the four exact mixtures of
``scoresde.data.toy.TARGETS`` under ``VPSDE()`` (``--sde ve``: ``VESDE()``), started from its prior
(n = ``--n`` draws per seed, ``--seeds`` seeds), exact scores.  Samplers: those whose default grid is
log-SNR (DPM-Solver++ 2M / 3M, UniPC-2 / UniPC-3) or Karras (EDM Heun), each on both grids, at
``--nfes`` (EDM Heun (NFE + 1) // 2 grid times, 2N - 1 evaluations).  Grid ends sigma_min
(``Karras(sigma_min=s)`` / ``LogSNR(sigma_min=s)``):

* ``sde``: the SDE's own sigma~(t_min) (1.0e-3 for the default VPSDE; the grids before issue 17);
* ``rule``: the default end ``grids.default_sigma_min(sde, num_steps)`` (``sigma_min=None``);
* each of ``--sigma-mins``.

``--samplers DPM++2M-SDE EDMHeun-churn``: the stochastic samplers on the same grids (DPM-Solver++(2M)-SDE,
eta = 1; EDM Heun with S_churn = 10), with fixed noise generators.

Every sampler ends with its final denoise (Tweedie) from the last grid time.  Error: the worst of the
within-mode mean / covariance / mode-weight errors over their i.i.d. floors (``within_mode_errors``,
``fitted_grids.errors``), averaged over the seeds.

Writes ``benchmarks/results/sigma_min_low_nfe{,_ve}.{json,md,png}`` (``--quick``: ``results/quick/``);
``--append`` adds the new (NFE, end) cells to the results already there (runs at other NFEs / ends).

``--trained default moons_noise_005=<own_data run dir> two_spirals --nfes 6 8 10 20 --n-w2 2000``: trained models
instead (DPM-Solver++(2M), UniPC-2, EDM Heun on their default grid, own end vs rule; exact W2 against fresh data
and RMS to the model's converged PF-ODE), ``sigma_min_low_nfe_trained.{json,md}``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
from pathlib import Path

from _common import RESULTS, Timer, command_line, log, machine, machine_line, md_table, set_threads, write_results
from fitted_grids import errors, mean_runs

import torch  # noqa: E402

from scoresde import grids, toy  # noqa: E402
from scoresde.evaluation.metrics import within_mode_floor  # noqa: E402
from scoresde.samplers import DPMSolverPP, EDMHeun, UniPC  # noqa: E402
from scoresde.sdes import VESDE, VPSDE  # noqa: E402

NAME = "sigma_min_low_nfe"
SDES = {"vp": VPSDE(), "ve": VESDE()}
F64 = torch.float64
SAMPLERS = {  # label -> (sampler, NFE -> num_steps)
    "DPM++2M": (DPMSolverPP(order=2), lambda nfe: nfe),
    "DPM++3M": (DPMSolverPP(order=3), lambda nfe: nfe),
    "UniPC-2": (UniPC(order=2), lambda nfe: nfe),
    "UniPC-3": (UniPC(order=3), lambda nfe: nfe),
    "EDMHeun": (EDMHeun(), lambda nfe: (nfe + 1) // 2),
}
STOCHASTIC = {  # samplers on the same default grids that draw noise (--samplers; not run by default)
    "DPM++2M-SDE": (DPMSolverPP(order=2, eta=1.0), lambda nfe: nfe),
    "EDMHeun-churn": (EDMHeun(s_churn=10.0), lambda nfe: (nfe + 1) // 2),
}
GRIDS = ("karras", "log_snr")
SDE_END, RULE = "sde", "rule"  # the SDE's own end (the grids before issue 17); the default end (the rule)
GRID_CLASSES = {"karras": grids.Karras, "log_snr": grids.LogSNR}


def grid_ts(sde, grid: str, sigma_min, num_steps: int) -> torch.Tensor:
    """The ``grid``'s times ending at ``sigma_min`` ("sde", "rule" or a number) through the public grid objects."""
    end = None if sigma_min == RULE else sigma_min
    return GRID_CLASSES[grid](sigma_min=end)(sde, num_steps)


def results_name(sde_key: str, quick: bool) -> str:
    return NAME + ("" if sde_key == "vp" else f"_{sde_key}") + ("_quick" if quick else "")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 2 targets, NFE 6 and 10, n = 4000, one seed")
    p.add_argument("--sde", choices=list(SDES), default="vp")
    p.add_argument("--targets", nargs="+", default=list(toy.TARGETS), choices=list(toy.TARGETS))
    p.add_argument("--nfes", type=int, nargs="+", default=[5, 6, 8, 10, 20])
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS) + list(STOCHASTIC))
    p.add_argument("--sigma-mins", type=float, nargs="*", default=[0.01, 0.03, 0.1, 0.3, 0.6])
    p.add_argument("--no-sde-end", action="store_true", help="skip the SDE's own end (already in the results)")
    p.add_argument("--append", action="store_true", help="add to the results already written (other cells kept)")
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--floor-repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report-only", type=Path, default=None, help="rebuild the .md and .png from a results JSON")
    p.add_argument("--trained", nargs="+", default=None, metavar="MODEL",
                   help="instead: trained models, exact W2: a name of fitted_grids_trained.MODELS (default, two_spirals, "
                        "...; trained through the app if missing), or DATASET=RUN_DIR, a run on own_data.DATASETS")
    p.add_argument("--runs-dir", type=Path, default=Path("/tmp/sigmamin/runs"), help="with --trained: checkpoints")
    p.add_argument("--n-w2", type=int, default=4000, help="with --trained: samples and fresh data points for W2")
    args = p.parse_args(argv)
    if args.report_only:
        payload = json.loads(args.report_only.read_text())
        if payload["benchmark"].startswith(NAME + "_trained"):
            write_results(payload["benchmark"], payload, trained_report(payload), args.report_only.parent)
        else:
            finish(payload, args.report_only.parent)
        return
    if args.trained:
        set_threads(args.threads)
        trained(args)
        return
    if args.quick:
        args.targets, args.nfes, args.n, args.seeds, args.floor_repeats = args.targets[:2], [6, 10], 4000, 1, 10
    set_threads(args.threads)
    sde = SDES[args.sde]
    out_dir = RESULTS  # results/quick/ with --quick (_common)
    name = results_name(args.sde, args.quick)
    smins = ([] if args.no_sde_end else [SDE_END]) + [RULE] + list(args.sigma_mins)
    rows, floors = [], {}
    with Timer() as total:
        for ti, tname in enumerate(args.targets):
            mixture = toy.TARGETS[tname]()
            score = mixture.score_fn(sde)
            floors[tname] = within_mode_floor(mixture, args.n, args.floor_repeats, torch.Generator().manual_seed(7 + ti))
            draws = [sde.prior_sample((args.n, mixture.dim), torch.Generator().manual_seed(100 * s + 13 * ti + 5),
                                      dtype=F64) for s in range(args.seeds)]
            for label in args.samplers:
                base, steps_of = {**SAMPLERS, **STOCHASTIC}[label]
                for nfe in args.nfes:
                    sampler = dataclasses.replace(base, num_steps=steps_of(nfe))
                    for grid in GRIDS:
                        for smin in smins:
                            ts = grid_ts(sde, grid, smin, sampler.num_steps)
                            runs, got = [], None
                            for si, z in enumerate(draws):
                                noise = {"generator": torch.Generator().manual_seed(50 + si)} if label in STOCHASTIC else {}
                                res = sampler.run(score, sde, x_init=z, ts=ts, **noise)
                                runs.append(errors(res.x, mixture, floors[tname]))
                                got = res.nfe
                            end = float(sde.sigma_ve(ts[-1:]))
                            rows.append({"target": tname, "sampler": label, "grid": grid, "sigma_min": smin,
                                         "end": end, "nominal_nfe": nfe, "nfe": got,
                                         **mean_runs(runs), "runs": runs})
            log(f"{tname} done ({total_cpu():.0f} s CPU so far)")
    payload = {"benchmark": name, "command": command_line(), "machine": machine(), "args": _args(args),
               "sde": repr(sde), "sigma_ve_t_min": float(sde.sigma_ve(torch.tensor([sde.t_min], dtype=F64))),
               "total_seconds": total.seconds, "total_cpu_seconds": total.cpu_seconds, "floors": floors, "rows": rows,
               "runs": [{"command": command_line(), "cpu_seconds": total.cpu_seconds, "seconds": total.seconds}]}
    if args.append and (out_dir / f"{name}.json").is_file():
        payload = merged(json.loads((out_dir / f"{name}.json").read_text()), payload)
    print(finish(payload, out_dir))
    log(f"done in {total.seconds:.0f} s (cpu {total.cpu_seconds:.0f} s)")


TRAINED_SAMPLERS = ("DPM++2M", "UniPC-2", "EDMHeun")


def trained(args) -> None:
    """Trained models (``fitted_grids_trained``'s recipes, trained through the app if missing): DPM-Solver++(2M),
    UniPC-2 and EDM Heun at ``--nfes`` on their default grid with the SDE's own end and with the rule, from
    the same prior draws; exact W2 (``w2_exact``) of ``--n-w2`` samples against as many fresh data points,
    beside the W2 of an i.i.d. sample (the floor) and of the model's converged PF-ODE (RK4, 100 steps)."""
    from fitted_grids_trained import checkpoint_of, ensure_trained, target_of  # noqa: PLC0415

    from scoresde.evaluation.metrics import w2_exact  # noqa: PLC0415
    from scoresde.samplers import ProbabilityFlowODE  # noqa: PLC0415
    from scoresde.training import load  # noqa: PLC0415

    rows, models, payload = [], {}, {}
    with Timer() as total:
        for name in args.trained:
            if "=" in name:  # a run of benchmarks/own_data.py: DATASET=RUN_DIR, fresh points from its generator
                from own_data import Fresh  # noqa: PLC0415

                name, run = name.split("=", 1)
                info, target = {"run_dir": run}, Fresh(name)
                ckpt = Path(run) / "best.pt" if (Path(run) / "best.pt").is_file() else Path(run) / "last.pt"
            else:
                try:
                    info = ensure_trained(name, args.runs_dir)
                except Exception as e:  # noqa: BLE001 (a training failure leaves the other models)
                    log(f"{name}: training failed ({e}); skipped")
                    continue
                ckpt, target = checkpoint_of(name, args.runs_dir), target_of(name)
            loaded = load(ckpt)
            score, sde, shape = loaded.score_fn, loaded.sde, tuple(loaded.event_shape)
            to_user = loaded.data_transform.to_user_units if loaded.data_transform is not None else (lambda x: x)
            g = torch.Generator().manual_seed(10_000)
            data = target.sample(args.n_w2, g, dtype=F64)
            floor = w2_exact(target.sample(args.n_w2, g, dtype=F64), data, max_n=args.n_w2)
            z = sde.prior_sample((args.n_w2, *shape), torch.Generator().manual_seed(1000), dtype=F64)
            with torch.no_grad():
                ref = ProbabilityFlowODE(method="rk4", num_steps=100).run(score, sde, x_init=z)
            models[name] = {"checkpoint": str(ckpt), "step": loaded.step, "sde": repr(sde), "target": repr(target),
                            "w2_floor": floor, "w2_pf_ode": w2_exact(to_user(ref.x).double(), data, max_n=args.n_w2),
                            "pf_ode_nfe": ref.nfe, **info}
            log(f"{name}: floor {floor:.3f}, PF-ODE {models[name]['w2_pf_ode']:.3f}")
            for label in TRAINED_SAMPLERS:
                base, steps_of = SAMPLERS[label]
                for nfe in args.nfes:
                    sampler = dataclasses.replace(base, num_steps=steps_of(nfe))
                    grid = "karras" if label == "EDMHeun" else "log_snr"  # the sampler's default grid
                    for end in (SDE_END, RULE):
                        ts = grid_ts(sde, grid, end, sampler.num_steps)
                        with torch.no_grad():
                            res = sampler.run(score, sde, x_init=z, ts=ts)
                        x = to_user(res.x).double()
                        w2 = w2_exact(x, data, max_n=args.n_w2) if bool(torch.isfinite(x).all()) else math.inf
                        rms = float(((res.x - ref.x) ** 2).flatten(1).sum(1).mean().sqrt())  # model units
                        rows.append({"model": name, "sampler": label, "grid": grid, "sigma_min": end, "rms_to_ode": rms,
                                     "end": float(sde.sigma_ve(ts[-1:])), "nominal_nfe": nfe, "nfe": res.nfe, "w2": w2})
                    log(f"  {label} NFE {nfe}: own end {rows[-2]['w2']:.3f}, rule {rows[-1]['w2']:.3f}")
            payload = {"benchmark": NAME + "_trained", "command": command_line(), "machine": machine(),
                       "args": _args(args), "total_seconds": math.nan, "total_cpu_seconds": total_cpu(),
                       "models": models, "rows": rows}
            if not args.append:
                write_results(payload["benchmark"], payload, trained_report(payload), RESULTS)  # after each model
    payload.update(total_seconds=total.seconds, total_cpu_seconds=total.cpu_seconds)
    stored = RESULTS / f"{payload['benchmark']}.json"
    if args.append and stored.is_file():  # keep the stored cells not recomputed here
        old = json.loads(stored.read_text())
        key = lambda r: (r["model"], r["sampler"], r["nominal_nfe"], _key(r["sigma_min"]))  # noqa: E731
        cells = {**{key(r): r for r in old["rows"]}, **{key(r): r for r in rows}}
        payload.update(rows=list(cells.values()), models={**old["models"], **models},
                       args={**old["args"], "nfes": sorted({r["nominal_nfe"] for r in cells.values()})},
                       command=old["command"] + " ; " + payload["command"],
                       total_cpu_seconds=old["total_cpu_seconds"] + payload["total_cpu_seconds"])
    md = trained_report(payload)
    write_results(payload["benchmark"], payload, md, RESULTS)
    print(md)


def trained_report(payload) -> str:
    a, rows = payload["args"], payload["rows"]
    out = ["# Low-NFE grid end on trained models (issue 17)", "", f"`{payload['command']}`", "",
           machine_line(payload["machine"]) + f"; {payload['total_seconds']:.0f} s wall, "
           f"{payload['total_cpu_seconds']:.0f} s CPU (training excluded).", "",
           f"Exact W2 (``w2_exact``) of n = {a['n_w2']} samples from the same prior draws against as many fresh data "
           "points, in the data's units.  Each sampler on its default grid (DPM-Solver++ / UniPC log-SNR, EDM Heun "
           "Karras) ending at the SDE's own sigma~(t_min) (`own end`, the grids before issue 17) or at the default "
           "end `grids.default_sigma_min` (`rule`; `end` its sigma~).  Floor: W2 of an i.i.d. sample of the "
           "same size; PF-ODE: the model's probability-flow ODE by RK4, 100 steps (397 NFE), from the same draws (RMS: the "
           "root-mean-square distance of the sampler's output to it, in the model's units: how far the sampler is from "
           "its own converged ODE).", ""]
    for name, m in payload["models"].items():
        trs = []
        cell = {(r["sampler"], r["nominal_nfe"], _key(r["sigma_min"])): r for r in rows if r["model"] == name}
        for label in TRAINED_SAMPLERS:
            for nfe in a["nfes"]:
                old, new = cell[(label, nfe, SDE_END)], cell[(label, nfe, RULE)]
                better = new["w2"] < old["w2"]
                trs.append([label, nfe, new["nfe"], f"{new['end']:.3g}", f"{old['w2']:.3f}",
                            f"**{new['w2']:.3f}**" if better else f"{new['w2']:.3f}", f"{new['w2'] / old['w2']:.2f}",
                            f"{old.get('rms_to_ode', math.nan):.3f} -> {new.get('rms_to_ode', math.nan):.3f}"])
        out += [f"## {name}", "", f"`{m['checkpoint']}` (step {m['step']}), {m['sde']}; W2 floor {m['w2_floor']:.3f}, "
                f"PF-ODE {m['w2_pf_ode']:.3f}.", "",
                md_table(["sampler", "NFE", "actual NFE", "end", "W2 own end", "W2 rule", "rule / own",
                          "RMS to PF-ODE, own -> rule"], trs), ""]
    return "\n".join(out)


def _args(args) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def _key(smin) -> str:
    return SDE_END if smin in (SDE_END, "default") else smin if smin == RULE else f"{smin:g}"


def _cell(r) -> tuple:
    return (r["target"], r["sampler"], r["grid"], _key(r["sigma_min"]), r["nominal_nfe"])


def merged(old: dict, new: dict) -> dict:
    """``old``'s rows with ``new``'s added (a recomputed cell replaces the old one); floors and settings must agree."""
    if old["sde"] != new["sde"] or old["args"]["n"] != new["args"]["n"] or old["args"]["seeds"] != new["args"]["seeds"]:
        raise SystemExit("--append: the stored results are for another SDE, n or number of seeds")
    for r in old["rows"]:
        r["sigma_min"] = _key(r["sigma_min"]) if r["sigma_min"] in (SDE_END, "default", RULE) else r["sigma_min"]
    cells = {_cell(r): r for r in old["rows"]}
    cells.update({_cell(r): r for r in new["rows"]})
    runs = old.get("runs") or [{"command": old["command"], "cpu_seconds": old["total_cpu_seconds"],
                                "seconds": old["total_seconds"]}]
    out = dict(new, rows=list(cells.values()), floors={**old["floors"], **new["floors"]}, runs=runs + new["runs"])
    out["total_seconds"] = sum(r["seconds"] for r in out["runs"])
    out["total_cpu_seconds"] = sum(r["cpu_seconds"] for r in out["runs"])
    return out


def finish(payload: dict, out_dir: Path) -> str:
    md = report(payload)
    write_results(payload["benchmark"], payload, md, out_dir)
    figure(payload, out_dir / f"{payload['benchmark']}.png")
    return md


def total_cpu() -> float:
    import time  # noqa: PLC0415

    return time.process_time()


def _gmean(v: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(x) for x in v)) if all(math.isfinite(x) and x > 0 for x in v) else math.inf


def _ends(payload) -> dict:
    """NFE -> the ends measured there, in order: sde, rule, then the numbers ascending."""
    got: dict = {}
    for r in payload["rows"]:
        got.setdefault(r["nominal_nfe"], set()).add(_key(r["sigma_min"]))
    order = lambda k: (0, 0) if k == SDE_END else (1, 0) if k == RULE else (2, float(k))  # noqa: E731
    return {n: sorted(v, key=order) for n, v in sorted(got.items())}


def _axes(payload):
    rows = payload["rows"]
    targets = list(dict.fromkeys(r["target"] for r in rows))
    samplers = [s for s in (*SAMPLERS, *STOCHASTIC) if any(r["sampler"] == s for r in rows)]
    return targets, samplers, {_cell(r): r for r in rows}


def summary(payload) -> dict:
    """Per (grid, NFE, end): for each sampler the geometric mean over targets of the worst ratio, and the
    number of (sampler, target) cells it improves over the SDE's own end."""
    targets, samplers, cell = _axes(payload)
    out = {}
    for grid in GRIDS:
        for nfe, ends in _ends(payload).items():
            for smin in ends:
                per, wins, total = {}, 0, 0
                for s in samplers:
                    if (targets[0], s, grid, smin, nfe) not in cell:  # a sampler not run at this NFE
                        continue
                    vals = [cell[(t, s, grid, smin, nfe)]["worst"] if (t, s, grid, smin, nfe) in cell else math.inf for t in targets]
                    base = [cell[(t, s, grid, SDE_END, nfe)]["worst"] if (t, s, grid, SDE_END, nfe) in cell else math.inf for t in targets]
                    per[s] = {"gmean": _gmean(vals), "sde_gmean": _gmean(base),
                              "worst_target_change": max(v / b for v, b in zip(vals, base))}
                    wins += sum(v < b for v, b in zip(vals, base))
                    total += len(vals)
                out[f"{grid}|{nfe}|{smin}"] = {
                    "per_sampler": per, "cells_improved": wins, "cells": total,
                    "helps_every_sampler": all(v["gmean"] < v["sde_gmean"] for v in per.values()),
                    "helps_every_cell": wins == total}
    return out


def rule_section(payload) -> list[str]:
    """The default end (the rule) against the SDE's own end: per sampler and grid, and every cell it makes worse."""
    targets, samplers, cell = _axes(payload)
    trs, worse, ratios = [], [], []
    for grid in GRIDS:
        for nfe, ends in _ends(payload).items():
            if RULE not in ends or SDE_END not in ends:
                continue
            per = []
            for s in samplers:
                if (targets[0], s, grid, RULE, nfe) not in cell:
                    per.append("")
                    continue
                new = [cell[(t, s, grid, RULE, nfe)]["worst"] for t in targets]
                old = [cell[(t, s, grid, SDE_END, nfe)]["worst"] for t in targets]
                ratios += [x / y for x, y in zip(new, old)]
                worse += [(t, s, grid, nfe, y, x) for t, x, y in zip(targets, new, old) if x > y]
                go, gn = _gmean(old), _gmean(new)
                per.append(f"{go:.2f} -> **{gn:.2f}**" if gn < go else f"{go:.2f} -> {gn:.2f}")
            r0 = cell.get((targets[0], samplers[0], grid, RULE, nfe))
            edm = cell.get((targets[0], "EDMHeun", grid, RULE, nfe))
            ends_txt = (f"{r0['end']:.2g}" if r0 else "-") + (f" / {edm['end']:.2g}" if edm else "")
            trs.append([grid, nfe, ends_txt] + per)
    if not trs:
        return []
    out = ["## The default end (the rule) against the SDE's own end", "",
           "`grids.default_sigma_min(sde, num_steps)`: sigma~ = 0.3 up to N_eff = 10, then 0.3 * 3^(-(N_eff - 10)/5), "
           "N_eff = N * L_VP / L (L the SDE's log-noise range; N_eff = N on the default VP), never "
           "below the SDE's own sigma~(t_min) (column `end`: the end for DPM-Solver++ / UniPC, then EDM Heun, whose "
           "num_steps is (NFE + 1) // 2).  Geometric mean over the targets of the worst ratio, own end -> rule "
           f"(**bold**: better).  The rule improves {len(ratios) - len(worse)} of {len(ratios)} (target, sampler, grid, "
           f"NFE) cells; median error ratio rule / own end {statistics.median(ratios):.2f}, largest {max(ratios):.2f}.", "",
           md_table(["grid", "NFE", "end"] + samplers, trs), ""]
    if worse:
        out += ["Cells the rule makes worse (per-seed values in the JSON):", "",
                md_table(["target", "sampler", "grid", "NFE", "own end", "rule"],
                         [[t, s, g, n, f"{y:.2f}", f"{x:.2f}"] for t, s, g, n, y, x in worse]), ""]
    return out


def report(payload) -> str:
    a = payload["args"]
    targets, samplers, cell = _axes(payload)
    summ = summary(payload)
    payload["summary"] = summ
    runs = payload.get("runs") or [{"command": payload["command"]}]
    out = [
        "# Low-NFE sigma_min for the Karras and log-SNR grids (issue 17)", "",
        *[f"`{r['command']}`" + (f" ({r['cpu_seconds']:.0f} s CPU)" if "cpu_seconds" in r else "") + "  " for r in runs], "",
        machine_line(payload["machine"]) + f"; {payload['total_seconds']:.0f} s wall, {payload['total_cpu_seconds']:.0f} s CPU in all.", "",
        f"Exact scores, {payload['sde']} from its prior, n = {a['n']} per seed, {a['seeds']} seed(s); each number is the "
        "worst of the within-mode mean / covariance / mode-weight errors over their i.i.d. floors (1 = as good as "
        f"exact samples), mean over the seeds. `sde` is the SDE's own end, sigma~(t_min) = "
        f"{payload['sigma_ve_t_min']:.2g} (the grids' end before issue 17); `rule` the default end "
        "`grids.default_sigma_min`; the other columns end the grid at that sigma~ (then the final denoise).", "",
    ]
    out += rule_section(payload)
    out += ["## Does a larger sigma_min help every sampler?", "",
            "Geometric mean over the targets of the worst ratio, per sampler; a cell is **bold** where the "
            "end beats the SDE's own end for that sampler; `cells` counts the (sampler, target) pairs it improves.", ""]
    ends = _ends(payload)
    for grid in GRIDS:
        trs = []
        for nfe, es in ends.items():
            for smin in es:
                s = summ[f"{grid}|{nfe}|{smin}"]
                cells = []
                for lab in samplers:
                    v = s["per_sampler"].get(lab)
                    if v is None:
                        cells.append("")
                        continue
                    txt = f"{v['gmean']:.2f}"
                    cells.append(f"**{txt}**" if smin != SDE_END and v["gmean"] < v["sde_gmean"] else txt)
                trs.append([nfe, smin] + cells + ([f"{s['cells_improved']}/{s['cells']}",
                                                   "yes" if s["helps_every_sampler"] else "no"] if smin != SDE_END else ["", ""]))
        out += [f"### {grid}", "", md_table(["NFE", "sigma_min"] + samplers + ["cells improved", "every sampler"], trs), ""]
    out += ["## Every cell", "", "Worst ratio per target (columns: sigma_min; empty: not measured at that NFE).", ""]
    cols = sorted({k for es in ends.values() for k in es}, key=lambda k: (0, 0) if k == SDE_END else (1, 0) if k == RULE else (2, float(k)))
    for grid in GRIDS:
        trs = []
        for t in targets:
            for lab in samplers:
                for nfe in ends:
                    rr = [cell.get((t, lab, grid, sm, nfe)) for sm in cols]
                    best = min((r["worst"] for r in rr if r), default=math.inf)
                    first = next((r for r in rr if r), None)
                    if first is None:
                        continue
                    trs.append([t, lab, nfe, first["nfe"]] +
                               [("**%.2f**" if r["worst"] == best else "%.2f") % r["worst"] if r else "" for r in rr])
        out += [f"### {grid}", "", md_table(["target", "sampler", "NFE", "actual NFE"] + cols, trs), ""]
    return "\n".join(out)


def figure(payload, path: Path) -> None:
    """Per grid: the geometric mean over targets of the worst ratio against NFE, per sampler; solid the
    default end (rule), dashed the SDE's own end, dotted the best measured end at each NFE."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import matplotlib.ticker  # noqa: PLC0415

    summ = payload.get("summary") or summary(payload)
    _, samplers, _ = _axes(payload)
    ends = _ends(payload)
    fig, axes = plt.subplots(1, len(GRIDS), figsize=(11, 4.2), sharey=True)
    for ax, grid in zip(axes, GRIDS):
        for i, lab in enumerate(samplers):
            c = f"C{i}"
            for which, style in ((RULE, "-"), (SDE_END, "--")):
                xs = [n for n, es in ends.items() if which in es and lab in summ[f"{grid}|{n}|{which}"]["per_sampler"]]
                ax.plot(xs, [summ[f"{grid}|{n}|{which}"]["per_sampler"][lab]["gmean"] for n in xs], style, color=c,
                        marker="o" if which == RULE else None, ms=3, label=f"{lab} ({'rule' if which == RULE else 'own end'})")
            xs = [n for n in ends if lab in summ[f"{grid}|{n}|{ends[n][0]}"]["per_sampler"]]
            ax.plot(xs, [min(summ[f"{grid}|{n}|{e}"]["per_sampler"][lab]["gmean"] for e in ends[n]
                             if lab in summ[f"{grid}|{n}|{e}"]["per_sampler"]) for n in xs], ":",
                    color=c, lw=1)
        ax.set(xscale="log", yscale="log", xlabel="NFE (nominal)", title=f"{grid} grid, {payload['sde'].split('(')[0]}")
        ax.set_xticks(list(ends), [str(n) for n in ends])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("worst error / i.i.d. floor (gmean over targets)")
    axes[-1].legend(fontsize=6, ncol=2)
    fig.suptitle("Grid end: default rule (solid) vs the SDE's own end (dashed); dotted: best end measured", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
