"""Low-NFE sigma_min for the Karras and log-SNR grids (issue 17, "Also in scope"): does ending the grid
at a larger sigma~ = sigma/alpha, chosen from NFE, help *every* sampler that uses those grids?

Setup as ``fitted_grids.py`` / ``quality_vs_nfe.py --parts low_nfe``: the four exact mixtures of
``scoresde.data.toy.TARGETS`` under ``VPSDE()``, started from its prior (n = ``--n`` draws per seed,
``--seeds`` seeds), exact scores.  Samplers: those whose default grid is log-SNR (DPM-Solver++ 2M / 3M,
UniPC-2 / UniPC-3) or Karras (EDM Heun), each on both grids, at NFE 5, 6, 8, 10, 20 (EDM Heun
(NFE + 1) // 2 grid times, 2N - 1 evaluations).  Grid ends sigma_min: the default sigma~(t_min)
(= 1.0e-3 for the default VPSDE) and ``--sigma-mins``:

* Karras: ``scoresde.grids.Karras(sigma_min=s)`` (EDM eq. 5 between sigma~(T) and s);
* log-SNR: lambda = -log sigma~ uniform from lambda(T) to -log s, mapped to t by
  ``SDE.t_from_sigma_ve`` (``grids.log_snr`` with its end moved; passed as ``run(..., ts=...)``).

Every sampler ends with its final denoise (Tweedie) from the last grid time.  Error: the worst of the
within-mode mean / covariance / mode-weight errors over their i.i.d. floors (``within_mode_errors``,
``fitted_grids.errors``), averaged over the seeds.

Writes ``benchmarks/results/sigma_min_low_nfe.{json,md}`` (``--quick``: ``results/quick/``).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
from pathlib import Path

from _common import RESULTS, Timer, command_line, log, machine, machine_line, md_table, set_threads, write_results
from fitted_grids import WM, errors, mean_runs

import torch  # noqa: E402

from scoresde import grids, toy  # noqa: E402
from scoresde.evaluation.metrics import within_mode_floor  # noqa: E402
from scoresde.samplers import DPMSolverPP, EDMHeun, UniPC  # noqa: E402
from scoresde.sdes import VPSDE  # noqa: E402

NAME = "sigma_min_low_nfe"
SDE = VPSDE()
F64 = torch.float64
SAMPLERS = {  # label -> (sampler, NFE -> num_steps)
    "DPM++2M": (DPMSolverPP(order=2), lambda nfe: nfe),
    "DPM++3M": (DPMSolverPP(order=3), lambda nfe: nfe),
    "UniPC-2": (UniPC(order=2), lambda nfe: nfe),
    "UniPC-3": (UniPC(order=3), lambda nfe: nfe),
    "EDMHeun": (EDMHeun(), lambda nfe: (nfe + 1) // 2),
}
GRIDS = ("karras", "log_snr")
DEFAULT = "default"


def log_snr_to(sde, num_steps: int, sigma_min: float) -> torch.Tensor:
    """lambda = -log sigma~ uniform from lambda(T) to -log ``sigma_min``, as times (t_0 = T exactly)."""
    lam_T = -math.log(float(sde.sigma_ve(torch.tensor([sde.T], dtype=F64))))
    lam = torch.linspace(lam_T, -math.log(sigma_min), num_steps, dtype=F64)
    ts = sde.t_from_sigma_ve(torch.exp(-lam)).to(F64).clamp(sde.t_min, sde.T)
    ts[0] = sde.T
    return ts


def grid_ts(grid: str, sigma_min, num_steps: int) -> torch.Tensor:
    if grid == "karras":
        g = grids.Karras() if sigma_min == DEFAULT else grids.Karras(sigma_min=sigma_min)
        return g(SDE, num_steps)
    return grids.log_snr(SDE, num_steps) if sigma_min == DEFAULT else log_snr_to(SDE, num_steps, sigma_min)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 2 targets, NFE 6 and 10, n = 4000, one seed")
    p.add_argument("--targets", nargs="+", default=list(toy.TARGETS), choices=list(toy.TARGETS))
    p.add_argument("--nfes", type=int, nargs="+", default=[5, 6, 8, 10, 20])
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    p.add_argument("--sigma-mins", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 0.6])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--floor-repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report-only", type=Path, default=None, help="rebuild the .md from a results JSON")
    args = p.parse_args(argv)
    if args.report_only:
        import json  # noqa: PLC0415

        payload = json.loads(args.report_only.read_text())
        write_results(payload["benchmark"], payload, report(payload), args.report_only.parent)
        return
    if args.quick:
        args.targets, args.nfes, args.n, args.seeds, args.floor_repeats = args.targets[:2], [6, 10], 4000, 1, 10
    set_threads(args.threads)
    smins = [DEFAULT] + list(args.sigma_mins)
    rows, floors = [], {}
    with Timer() as total:
        for ti, tname in enumerate(args.targets):
            mixture = toy.TARGETS[tname]()
            score = mixture.score_fn(SDE)
            floors[tname] = within_mode_floor(mixture, args.n, args.floor_repeats, torch.Generator().manual_seed(7 + ti))
            draws = [torch.randn(args.n, mixture.dim, generator=torch.Generator().manual_seed(100 * s + 13 * ti + 5),
                                 dtype=F64) * SDE.prior_std for s in range(args.seeds)]
            for label in args.samplers:
                base, steps_of = SAMPLERS[label]
                for nfe in args.nfes:
                    sampler = dataclasses.replace(base, num_steps=steps_of(nfe))
                    for grid in GRIDS:
                        for smin in smins:
                            ts = grid_ts(grid, smin, sampler.num_steps)
                            runs, got = [], None
                            for z in draws:
                                res = sampler.run(score, SDE, x_init=z, ts=ts)
                                runs.append(errors(res.x, mixture, floors[tname]))
                                got = res.nfe
                            rows.append({"target": tname, "sampler": label, "grid": grid, "sigma_min": smin,
                                         "nominal_nfe": nfe, "nfe": got, "ts": ts.tolist(), **mean_runs(runs),
                                         "runs": runs})
            log(f"{tname} done ({total_cpu():.0f} s CPU so far)")
    payload = {"benchmark": NAME + ("_quick" if args.quick else ""), "command": command_line(), "machine": machine(),
               "args": vars(args), "sde": repr(SDE), "sigma_ve_t_min": float(SDE.sigma_ve(torch.tensor([SDE.t_min], dtype=F64))),
               "total_seconds": total.seconds, "total_cpu_seconds": total.cpu_seconds, "floors": floors, "rows": rows}
    md = report(payload)
    write_results(payload["benchmark"], payload, md, RESULTS)
    print(md)
    log(f"done in {total.seconds:.0f} s (cpu {total.cpu_seconds:.0f} s)")


def total_cpu() -> float:
    import time  # noqa: PLC0415

    return time.process_time()


def rule(nfe: int) -> float:
    """The proposed end: sigma~_min = 0.3 up to NFE 10, 0.1 up to NFE 20 (beyond: not measured here)."""
    return 0.3 if nfe <= 10 else 0.1


def _key(smin) -> str:
    return DEFAULT if smin == DEFAULT else f"{smin:g}"


def _gmean(v: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(x) for x in v)) if all(math.isfinite(x) and x > 0 for x in v) else math.inf


def summary(payload) -> dict:
    """Per (grid, NFE, sigma_min): for each sampler the geometric mean over targets of the worst ratio,
    and the number of (sampler, target) cells it improves over the default end."""
    rows, a = payload["rows"], payload["args"]
    smins = [DEFAULT] + list(a["sigma_mins"])
    cell = {(r["target"], r["sampler"], r["grid"], _key(r["sigma_min"]), r["nominal_nfe"]): r["worst"] for r in rows}
    out = {}
    for grid in GRIDS:
        for nfe in a["nfes"]:
            for smin in map(_key, smins):
                per = {}
                wins = total = 0
                for s in a["samplers"]:
                    vals = [cell.get((t, s, grid, smin, nfe), math.inf) for t in a["targets"]]
                    base = [cell.get((t, s, grid, DEFAULT, nfe), math.inf) for t in a["targets"]]
                    per[s] = {"gmean": _gmean(vals), "default_gmean": _gmean(base),
                              "worst_target_change": max(v / b for v, b in zip(vals, base))}
                    wins += sum(v < b for v, b in zip(vals, base))
                    total += len(vals)
                out[f"{grid}|{nfe}|{smin}"] = {
                    "per_sampler": per, "cells_improved": wins, "cells": total,
                    "helps_every_sampler": all(v["gmean"] < v["default_gmean"] for v in per.values()),
                    "helps_every_cell": wins == total}
    return out


def rule_section(payload) -> list[str]:
    """The proposed rule (``rule``) against the default end: per sampler and grid, and every cell it makes worse."""
    a, rows = payload["args"], payload["rows"]
    if not all(rule(n) in a["sigma_mins"] for n in a["nfes"]):
        return []
    cell = {(r["target"], r["sampler"], r["grid"], _key(r["sigma_min"]), r["nominal_nfe"]): r for r in rows}
    trs, worse, ratios = [], [], []
    for grid in GRIDS:
        for nfe in a["nfes"]:
            per = []
            for s in a["samplers"]:
                new = [cell[(t, s, grid, _key(rule(nfe)), nfe)]["worst"] for t in a["targets"]]
                old = [cell[(t, s, grid, DEFAULT, nfe)]["worst"] for t in a["targets"]]
                ratios += [x / y for x, y in zip(new, old)]
                worse += [(t, s, grid, nfe, y, x) for t, x, y in zip(a["targets"], new, old) if x > y]
                per.append(f"{_gmean(old):.2f} -> {_gmean(new):.2f}")
            trs.append([grid, nfe, f"{rule(nfe):g}"] + per)
    out = ["## The proposed rule: sigma_min = 0.3 up to NFE 10, 0.1 up to NFE 20", "",
           f"Geometric mean over the targets of the worst ratio, default end -> rule. The rule improves "
           f"{len(ratios) - len(worse)} of {len(ratios)} (target, sampler, grid, NFE) cells; median error ratio "
           f"rule / default {statistics.median(ratios):.2f}, largest {max(ratios):.2f}.", "",
           md_table(["grid", "NFE", "sigma_min"] + a["samplers"], trs), ""]
    if worse:
        out += ["Cells the rule makes worse (per-seed values in the JSON):", "",
                md_table(["target", "sampler", "grid", "NFE", "default", "rule"],
                         [[t, s, g, n, f"{y:.2f}", f"{x:.2f}"] for t, s, g, n, y, x in worse]), ""]
    return out


def report(payload) -> str:
    a, rows = payload["args"], payload["rows"]
    smins = [DEFAULT] + list(a["sigma_mins"])
    summ = summary(payload)
    payload["summary"] = summ
    out = [
        "# Low-NFE sigma_min for the Karras and log-SNR grids (issue 17)", "",
        f"`{payload['command']}`", "",
        machine_line(payload["machine"]) + f"; {payload['total_seconds']:.0f} s wall, {payload['total_cpu_seconds']:.0f} s CPU.", "",
        f"Exact scores, {payload['sde']} from its prior, n = {a['n']} per seed, {a['seeds']} seed(s); each number is the "
        "worst of the within-mode mean / covariance / mode-weight errors over their i.i.d. floors (1 = as good as "
        f"exact samples), mean over the seeds. `default` is the grid's own end, sigma~(t_min) = "
        f"{payload['sigma_ve_t_min']:.2g}; the other columns end the grid at that sigma~ (then the final denoise).",
        "",
        "## Does a larger sigma_min help every sampler?", "",
        "Geometric mean over the targets of the worst ratio, per sampler; a cell is **bold** where the "
        "end beats the default end for that sampler; `cells` counts the (sampler, target) pairs it improves.", "",
    ]
    for grid in GRIDS:
        trs = []
        for nfe in a["nfes"]:
            for smin in map(_key, smins):
                s = summ[f"{grid}|{nfe}|{smin}"]
                cells = []
                for lab in a["samplers"]:
                    v = s["per_sampler"][lab]
                    txt = f"{v['gmean']:.2f}"
                    cells.append(f"**{txt}**" if smin != DEFAULT and v["gmean"] < v["default_gmean"] else txt)
                trs.append([nfe, smin] + cells + ([f"{s['cells_improved']}/{s['cells']}",
                                                   "yes" if s["helps_every_sampler"] else "no"] if smin != DEFAULT else ["", ""]))
        out += [f"### {grid}", "", md_table(["NFE", "sigma_min"] + a["samplers"] + ["cells improved", "every sampler"], trs), ""]
    out += rule_section(payload)
    out += ["## Every cell", "", "Worst ratio per target (columns: sigma_min).", ""]
    cell = {(r["target"], r["sampler"], r["grid"], _key(r["sigma_min"]), r["nominal_nfe"]): r for r in rows}
    for grid in GRIDS:
        trs = []
        for t in a["targets"]:
            for lab in a["samplers"]:
                for nfe in a["nfes"]:
                    rr = [cell.get((t, lab, grid, _key(sm), nfe)) for sm in smins]
                    best = min((r["worst"] for r in rr if r), default=math.inf)
                    trs.append([t, lab, nfe, rr[0]["nfe"] if rr[0] else ""] +
                               [("**%.2f**" if r and r["worst"] == best else "%.2f") % r["worst"] if r else "" for r in rr])
        out += [f"### {grid}", "", md_table(["target", "sampler", "NFE", "actual NFE"] + list(map(_key, smins)), trs), ""]
    return "\n".join(out)


if __name__ == "__main__":
    main()
