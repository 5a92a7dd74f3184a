"""Fitted noise grids (issue 17) on trained models: fitted vs standard grids at NFE 6, 8, 10, 20.

The models are trained the way a user trains them, through ``scoresde-train`` (run here as
``python -m scoresde.apps.train`` when ``--runs-dir/<model>/last.pt`` is missing; nothing is
committed):

* ``default``: ``scoresde-train`` with no overrides (eight_gaussians, 6000 steps);
* ``two_moons``, ``checkerboard``, ``two_spirals``: ``scoresde-train experiment=<name>``;
* ``ring5``: ``scoresde-train data=file data.path=ring5.npy`` on 10 000 points of 8 Gaussians of
  radius 5 and std 1 (issue 17's table; written by this script, seed 17).  ``data=file`` turns the
  adaptive recipe on (``auto: null``), so this is what a user gets; the app samples from ``best.pt``,
  and so does this benchmark.

For each model (``scoresde.training.load``, EMA weights) and each deterministic sampler
(DPM-Solver++(2M), UniPC-bh2, EDM Heun) at nominal NFE 6, 8, 10, 20 (EDM Heun: (NFE + 1) // 2 grid
times, 2N - 1 evaluations):

* **standard**: the sampler's own default grid (log-SNR for DPM-Solver++ and UniPC, Karras for EDM
  Heun: what ``scoresde-sample sampler=<name>`` gives);
* **fitted**: ``scoresde.samplers.fitting.fit_grid`` (LD3-style, seed 0, the teacher the PF-ODE by
  RK45 at 1e-7), on prior draws of seed 0; it falls back to the best standard grid when that is
  better on its validation draws (the table names the grid it returned).  The fit's CPU time is
  recorded.  ``--full-nfes`` (default 10) use ``sampler.grid=fit``'s defaults (512 + 512 draws, 150
  Adam steps); the other NFEs use ``--fit-num`` draws and ``--fit-iterations`` steps (CPU budget);
* **references**: the model's converged probability-flow ODE (RK45, rtol = atol = 1e-7: the fit's
  teacher; and RK4 with 100 steps, 397 NFE) and the predictor-corrector default (200 steps, 400 NFE).

Every row is evaluated on the same ``--n`` prior draws of an evaluation seed (never the fit's):
``scoresde.evaluation.assess`` against the model's data set (headline ``outlier_z``, ``c2st``, the
overall verdict; the ring against its exact mixture, in the file's units), the RMS distance to the
teacher's output from the same draws, and, for the references and NFE ``--w2-nfes``, the exact W2
(``evaluation.metrics.w2_exact``, an optimal permutation) against as many fresh data points
(ring: n = 10 000; the others: n = 4000), with the W2 of an i.i.d. sample of the same size as its
floor.

Writes ``benchmarks/results/fitted_grids_trained.{json,md,png}`` (``--quick``: ``results/quick/``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import subprocess
import sys
from pathlib import Path

from _common import RESULTS, ROOT, Timer, command_line, log, machine, machine_line, md_table, set_threads, write_results

import numpy as np  # noqa: E402
import torch  # noqa: E402

from scoresde import toy  # noqa: E402
from scoresde.data import make_dataset  # noqa: E402
from scoresde.evaluation import assess  # noqa: E402
from scoresde.evaluation.floors import FloorCache  # noqa: E402
from scoresde.evaluation.metrics import w2_exact  # noqa: E402
from scoresde.samplers import DPMSolverPP, EDMHeun, PredictorCorrector, ProbabilityFlowODE, UniPC  # noqa: E402
from scoresde.samplers.fitting import default_teacher, fit_grid  # noqa: E402
from scoresde.training import load  # noqa: E402

NAME = "fitted_grids_trained"
F64 = torch.float64
RING = {"radius": 5.0, "std": 1.0, "n": 10_000, "seed": 17}
MODELS = {  # name -> scoresde-train overrides ({ring} is the data file)
    "default": [],
    "two_moons": ["experiment=two_moons"],
    "checkerboard": ["experiment=checkerboard"],
    "two_spirals": ["experiment=two_spirals"],
    "ring5": ["data=file", "data.path={ring}"],
}
SAMPLERS = {  # label -> (sampler, nominal NFE -> num_steps)
    "DPM++2M": (DPMSolverPP(order=2), lambda nfe: nfe),
    "UniPC": (UniPC(), lambda nfe: nfe),
    "EDM Heun": (EDMHeun(), lambda nfe: (nfe + 1) // 2),
}
RK4 = "PF-ODE RK4, 100 steps"
REFERENCES = {
    "PF-ODE RK45 1e-7 (teacher)": default_teacher(),
    RK4: ProbabilityFlowODE(method="rk4", num_steps=100),
    "PC, 200 steps (default)": PredictorCorrector(),
}


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def ring_target():
    return toy.eight_gaussians(radius=RING["radius"], std=RING["std"])


def ensure_trained(name: str, runs_dir: Path) -> dict:
    """Train ``name`` through the app unless its checkpoint exists; return what was done."""
    run = runs_dir / name
    if (run / "last.pt").is_file() and (run / "metrics.json").is_file():
        return {"trained_here": False}
    ring = runs_dir / "ring5.npy"
    if name == "ring5" and not ring.is_file():
        x = ring_target().sample(RING["n"], torch.Generator().manual_seed(RING["seed"]))
        runs_dir.mkdir(parents=True, exist_ok=True)
        np.save(ring, x.double().numpy())
    overrides = [o.format(ring=ring) for o in MODELS[name]]
    cmd = [sys.executable, "-m", "scoresde.apps.train", f"hydra.run.dir={run}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    log("training: " + " ".join(cmd))
    cpu0 = _child_cpu()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    return {"trained_here": True, "train_cpu_s": _child_cpu() - cpu0}


def target_of(name: str):
    if name == "default":
        return toy.eight_gaussians()
    if name == "ring5":
        return ring_target()
    return make_dataset(name)


def checkpoint_of(name: str, runs_dir: Path) -> Path:
    best = runs_dir / name / "best.pt"  # the adaptive recipe's final samples come from best.pt
    return best if best.is_file() else runs_dir / name / "last.pt"


class Evaluator:
    """Evaluation of samples of one model: assess (first ``n`` samples), RMS to the teacher, exact W2."""

    def __init__(self, name, target, to_user, n, n_w2, seed, cache, floor=True):
        self.name, self.target, self.to_user, self.n, self.n_w2, self.seed, self.cache = \
            name, target, to_user, n, n_w2, seed, cache
        g = torch.Generator().manual_seed(10_000 + seed)  # fresh data for W2, apart from assess' reference
        self.data_w2 = target.sample(n_w2, g, dtype=F64)
        self.w2_floor = w2_exact(target.sample(n_w2, g, dtype=F64), self.data_w2, max_n=n_w2) if floor else math.nan

    def __call__(self, x, teacher_x=None, w2=False) -> dict:
        out = {}
        if teacher_x is not None:
            out["rms_to_teacher"] = float(((x - teacher_x) ** 2).flatten(1).sum(1).mean().sqrt())
        xu = self.to_user(x).double()
        if not bool(torch.isfinite(xu).all()):
            return {**out, "finite": False}
        a = assess(xu[:self.n].float(), self.target, seed=self.seed, cache=self.cache, metrics=None)
        m = a["metrics"]
        out.update({
            "outlier_z": m["outlier_z"]["value"], "outlier_z_band": m["outlier_z"]["floor_band"],
            "outlier_z_verdict": m["outlier_z"]["verdict"],
            "c2st": m["c2st"]["value"], "c2st_band": m["c2st"]["floor_band"], "c2st_verdict": m["c2st"]["verdict"],
            "overall": a["overall"]["verdict"], "driven_by": a["overall"].get("driven_by", []),
        })
        if w2:
            with Timer() as tm:
                out["w2"] = w2_exact(xu[:self.n_w2], self.data_w2, max_n=self.n_w2)
            out["w2_cpu_s"] = tm.cpu_seconds
        return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs-dir", type=Path, default=Path("/tmp/scoresde_fitted_trained"),
                   help="where the models are (trained here when missing)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--nfes", type=int, nargs="+", default=[6, 8, 10, 20])
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    p.add_argument("--n", type=int, default=4000, help="samples assessed per row")
    p.add_argument("--n-w2-ring", type=int, default=10_000, help="exact W2 sample size on the ring")
    p.add_argument("--n-w2", type=int, default=4000, help="exact W2 sample size on the other models")
    p.add_argument("--w2-nfes", type=int, nargs="+", default=[10])
    p.add_argument("--full-nfes", type=int, nargs="+", default=[10], help="NFEs fitted with the app's defaults")
    p.add_argument("--fit-num", type=int, default=256, help="train = validation draws at the other NFEs")
    p.add_argument("--fit-iterations", type=int, default=75, help="Adam steps at the other NFEs")
    p.add_argument("--eval-seed", type=int, default=1, help="seed of the evaluation draws (the fit uses seed 0)")
    p.add_argument("--no-references", action="store_true",
                   help="only the teacher's outputs (for the RMS column), no reference rows: a part over other samplers")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--part", default="", help="suffix of the output name (a run over some of the models)")
    p.add_argument("--merge", type=Path, nargs="+", default=None, help="merge part JSONs into fitted_grids_trained.*")
    p.add_argument("--note", default="", help="with --merge: a paragraph for the report (how the parts were run)")
    p.add_argument("--report-only", type=Path, default=None, help="rebuild .md/.png from a results JSON")
    p.add_argument("--quick", action="store_true", help="smoke run: default model, NFE 6 and 10, n = 1000")
    args = p.parse_args(argv)
    if args.merge:
        parts = [json.loads(q.read_text()) for q in args.merge]
        done = [q for q in parts if "command" in q]  # a "_partial" file holds the samplers a part finished
        payload = {**(done or parts)[0], "benchmark": NAME,
                   "command": " ; ".join(q.get("command", f"(unfinished: {q['benchmark']})") for q in parts),
                   "total_cpu_seconds": sum(q.get("total_cpu_seconds", 0.0) for q in parts),
                   "total_seconds": sum(q.get("total_seconds", 0.0) for q in parts)}
        for key in ("rows", "fits"):
            payload[key] = [r for q in parts for r in q[key]]
        payload["models"] = {}
        for q in parts:  # the first part of a model (the one with its reference rows and W2 floor) describes it
            for k, v in q["models"].items():
                payload["models"].setdefault(k, v)
        union = lambda key, order: [x for x in order if any(x in q["args"][key] for q in parts)]  # noqa: E731
        payload["args"] = {**parts[0]["args"], "models": union("models", list(MODELS)),
                           "samplers": union("samplers", list(SAMPLERS)),
                           "nfes": sorted({n for q in parts for n in q["args"]["nfes"]})}
        payload["note"] = args.note
        write_results(NAME, payload, report(payload), RESULTS)
        plot(payload, RESULTS / f"{NAME}.png")
        return
    if args.report_only:
        payload = json.loads(args.report_only.read_text())
        write_results(payload["benchmark"], payload, report(payload), args.report_only.parent)
        plot(payload, args.report_only.with_suffix(".png"))
        return
    if args.quick:
        args.models, args.nfes, args.n, args.n_w2, args.w2_nfes, args.full_nfes = ["default"], [6, 10], 1000, 1000, [10], []
        args.fit_num, args.fit_iterations = 64, 10
    set_threads(args.threads)
    rows, fits, models = [], [], {}
    cache = FloorCache()
    with Timer() as total:
        for name in args.models:
            trained = ensure_trained(name, args.runs_dir)
            ckpt = checkpoint_of(name, args.runs_dir)
            loaded = load(ckpt)
            score, sde, shape = loaded.score_fn, loaded.sde, tuple(loaded.event_shape)
            to_user = loaded.data_transform.to_user_units if loaded.data_transform is not None else (lambda x: x)
            n_draws = max(args.n, args.n_w2_ring if name == "ring5" else args.n_w2)
            target = target_of(name)
            ev = Evaluator(name, target, to_user, args.n, args.n_w2_ring if name == "ring5" else args.n_w2,
                           args.eval_seed, cache, floor=not args.no_references)
            app = json.loads((args.runs_dir / name / "metrics.json").read_text())
            models[name] = {"checkpoint": str(ckpt), "step": loaded.step, "sde": repr(sde), "target": repr(target),
                            "overrides": MODELS[name], "train_time_s": app.get("time"), "train": app.get("train"),
                            "app_headline": {k: app["quality"]["metrics"].get(k, {}).get("value", math.nan)
                                             for k in ("outlier_z", "c2st")},
                            "app_overall": app["quality"]["overall"]["verdict"], "app_sampler": app.get("sampler"),
                            "app_nfe": app.get("nfe"), "w2_floor": ev.w2_floor, "n_w2": ev.n_w2, **trained}
            log(f"{name}: {ckpt} (step {loaded.step}), W2 floor {ev.w2_floor:.3f} at n = {ev.n_w2}")
            g = torch.Generator().manual_seed(1000 * args.eval_seed)  # the same draws for every model and part
            z = sde.prior_sample((n_draws, *shape), g, dtype=F64)
            teacher_x = None
            for ref, sampler in REFERENCES.items():
                if args.no_references and teacher_x is not None:
                    break
                with Timer() as tm, torch.no_grad():
                    res = sampler.run(score, sde, x_init=z, generator=torch.Generator().manual_seed(5))
                if teacher_x is None:
                    teacher_x = res.x.to(F64)
                    if args.no_references:
                        continue
                rows.append({"model": name, "kind": "reference", "sampler": ref, "grid": getattr(sampler, "grid", ""),
                             "nominal_nfe": None, "nfe": res.nfe, "sample_cpu_s": tm.cpu_seconds,
                             **ev(res.x.to(F64), None if ref.startswith("PC") else teacher_x, w2=ref != RK4)})
                log(f"  {ref}: {_brief(rows[-1])}")
            for label in args.samplers:
                base, steps_of = SAMPLERS[label]
                for nfe in args.nfes:
                    num_steps = steps_of(nfe)
                    sampler = dataclasses.replace(base, num_steps=num_steps)
                    full = nfe in args.full_nfes
                    kw = {} if full else {"num_train": args.fit_num, "num_val": args.fit_num,
                                          "iterations": args.fit_iterations}
                    fit = fit_grid(score, sde, sampler, num_steps, shape, seed=0, **kw)
                    std_name = sampler.grid
                    fits.append({"model": name, "sampler": label, "nominal_nfe": nfe, "num_steps": num_steps,
                                 "settings": "app defaults (512 + 512 draws, 150 steps)" if full else
                                 f"{args.fit_num} + {args.fit_num} draws, {args.fit_iterations} steps",
                                 "method": fit.method, "init": fit.grid.info.get("init"), "cpu_s": fit.cpu_s,
                                 "val_rmse": fit.val_rmse, "train_rmse": fit.train_rmse, "ts": list(fit.grid.ts),
                                 "teacher_nfe": fit.grid.info.get("teacher_nfe")})
                    log(f"  fit {label} NFE {nfe}: {fit.method} (init {fit.grid.info.get('init')}), val rmse "
                        f"{fit.val_rmse['fitted']:.4f} vs {std_name} {fit.val_rmse.get(std_name, math.nan):.4f}; "
                        f"cpu {fit.cpu_s:.1f} s")
                    for kind, grid in (("standard", std_name), ("fitted", fit.grid)):
                        s = dataclasses.replace(sampler, grid=grid)
                        with torch.no_grad():
                            res = s.run(score, sde, x_init=z)
                        rows.append({"model": name, "kind": kind, "sampler": label,
                                     "grid": std_name if kind == "standard" else fit.method, "nominal_nfe": nfe,
                                     "nfe": res.nfe, "num_steps": num_steps,
                                     **ev(res.x.to(F64), teacher_x, w2=nfe in args.w2_nfes)})
                        log(f"    {kind}: {_brief(rows[-1])}")
                partial = {"benchmark": NAME + args.part + "_partial", "args": _args(args), "rows": rows, "fits": fits,
                           "models": models}
                write_results(partial["benchmark"], partial, "partial results, see the final file", RESULTS)
            partial = {"benchmark": NAME + args.part + "_partial", "args": _args(args), "rows": rows, "fits": fits,
                       "models": models}
            write_results(partial["benchmark"], partial, "partial results, see the final file", RESULTS)
    payload = {"benchmark": NAME + ("_quick" if args.quick else "") + args.part, "command": command_line(),
               "machine": machine(), "args": _args(args), "total_seconds": total.seconds,
               "total_cpu_seconds": total.cpu_seconds, "models": models, "fits": fits, "rows": rows}
    md = report(payload)
    paths = write_results(payload["benchmark"], payload, md, RESULTS)
    plot(payload, RESULTS / f"{payload['benchmark']}.png")
    print(md)
    log(f"wrote {paths[0]}, {paths[1]} in {total.seconds:.0f} s (cpu {total.cpu_seconds:.0f} s)")


def _args(args) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def _brief(r) -> str:
    if r.get("finite") is False:
        return "non-finite samples"
    w2 = f", W2 {r['w2']:.3f}" if "w2" in r else ""
    return (f"NFE {r['nfe']}: outlier_z {r['outlier_z']:.2f} ({r['outlier_z_verdict']}), c2st {r['c2st']:.3f} "
            f"({r['c2st_verdict']}), overall {r['overall']}, rms to teacher {r.get('rms_to_teacher', math.nan):.3f}{w2}")


def _num(v, digits: int) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _cell(r) -> str:
    if r is None:
        return ""
    if r.get("finite") is False:
        return "non-finite"
    star = lambda v: "" if v == "at floor" else "*"  # noqa: E731
    return f"{r['outlier_z']:.2f}{star(r['outlier_z_verdict'])} / {r['c2st']:.3f}{star(r['c2st_verdict'])}"


def _find(rows, **match):
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def report(payload) -> str:
    rows, fits, models = payload["rows"], payload["fits"], payload["models"]
    a = payload["args"]
    out = [
        "# Fitted grids on trained models (issue 17)", "",
        f"`{payload['command']}`", "",
        (machine_line(payload["machine"]) if "machine" in payload else "") +
        f"; {payload['total_seconds']:.0f} s wall and {payload['total_cpu_seconds']:.0f} s CPU summed over the parts "
        "(fits, sampling, evaluation; training not included; the parts ran side by side on a machine loaded by other "
        "jobs).", "",
        f"Models trained through `scoresde-train` (below); each row samples the same n = {a['n']} prior draws of "
        f"evaluation seed {a['eval_seed']} (the fits use seed 0), assessed by `scoresde.evaluation.assess` against the "
        "model's data set (the ring against its exact mixture, in the file's units). Cells: headline `outlier_z` / "
        "`c2st`, `*` = above its floor band (one-sided 5 % test each). Standard grid: the sampler's default "
        "(log_snr for DPM++2M and UniPC, karras for EDM Heun). Fitted: `fit_grid` (LD3-style, seed 0) with "
        f"the app's defaults (512 + 512 draws, 150 Adam steps) at NFE {', '.join(map(str, a['full_nfes']))}, "
        f"{a['fit_num']} + {a['fit_num']} draws and {a['fit_iterations']} steps at the other NFEs (CPU budget). "
        "EDM Heun runs (NFE + 1) // 2 grid times, i.e. 5, 7, 9, 19 evaluations.", "",
    ]
    if payload.get("note"):
        out += [payload["note"], ""]
    out += ["## Models", ""]
    mrows = []
    for name, m in models.items():
        t = m.get("train") or {}
        mrows.append([name, " ".join(m["overrides"]) or "(none)", m["step"], Path(m["checkpoint"]).name,
                      f"{_num(m['app_headline']['outlier_z'], 2)} / {_num(m['app_headline']['c2st'], 3)} ({m['app_overall']}, "
                      f"NFE {m['app_nfe']})", f"{(m.get('train_time_s') or {}).get('total_s', math.nan):.0f}",
                      t.get("parameters", "")])
    out += [md_table(["model", "scoresde-train overrides", "steps", "checkpoint",
                      "app's own samples: outlier_z / c2st (n = 2000)", "app wall s", "parameters"], mrows), ""]
    # main table: per model, per sampler, NFE columns
    nfes = a["nfes"]
    for name in models:
        m = models[name]
        out += [f"## {name}", ""]
        ref_rows = [r for r in rows if r["model"] == name and r["kind"] == "reference"]
        out += [md_table(["reference", "NFE", "outlier_z / c2st", "overall", "RMS to teacher",
                          f"W2 (n = {m['n_w2']}; floor {m['w2_floor']:.3f})"],
                         [[r["sampler"], r["nfe"], _cell(r), r.get("overall", ""), f"{r['rms_to_teacher']:.3f}" if "rms_to_teacher" in r else "(stochastic)",
                           f"{r['w2']:.3f}" if "w2" in r else ""] for r in ref_rows]), ""]
        trs = []
        for label in a["samplers"]:
            for kind in ("standard", "fitted"):
                cells = []
                for nfe in nfes:
                    r = _find(rows, model=name, sampler=label, kind=kind, nominal_nfe=nfe)
                    cells.append(_cell(r) + (f" ({r['grid']})" if r and kind == "fitted" and r["grid"] != "ld3" else ""))
                trs.append([label, kind] + cells)
        out += ["outlier_z / c2st by nominal NFE:", "",
                md_table(["sampler", "grid"] + [f"NFE {n}" for n in nfes], trs), ""]
        trs = []
        for label in a["samplers"]:
            for kind in ("standard", "fitted"):
                rr = [_find(rows, model=name, sampler=label, kind=kind, nominal_nfe=n) for n in nfes]
                trs.append([label, kind] + [f"{r['rms_to_teacher']:.3f}" if r and "rms_to_teacher" in r else "" for r in rr])
        out += ["RMS distance to the teacher's output from the same draws (training units):", "",
                md_table(["sampler", "grid"] + [f"NFE {n}" for n in nfes], trs), ""]
        teacher = _find(rows, model=name, kind="reference", sampler="PF-ODE RK45 1e-7 (teacher)")
        w2rows = []
        for nfe in a["w2_nfes"]:
            for label in a["samplers"]:
                st = _find(rows, model=name, sampler=label, kind="standard", nominal_nfe=nfe)
                fi = _find(rows, model=name, sampler=label, kind="fitted", nominal_nfe=nfe)
                if st and fi and "w2" in st and "w2" in fi and teacher and "w2" in teacher:
                    w2rows.append([label, nfe, fi["nfe"], f"{st['w2']:.3f}", f"{fi['w2']:.3f}",
                                   f"{fi['w2'] / teacher['w2']:.2f}", "yes" if fi["w2"] <= 1.1 * teacher["w2"] else "no"])
        if w2rows:
            out += [f"Exact W2 (n = {m['n_w2']}) against fresh data; goal: fitted within 1.1x of the converged PF-ODE "
                    f"(W2 {teacher['w2']:.3f}):", "",
                    md_table(["sampler", "nominal NFE", "NFE", "W2 standard", "W2 fitted", "fitted / PF-ODE", "within 1.1x"],
                             w2rows), ""]
    frows = []
    for f in fits:
        std = f["val_rmse"].get({"EDM Heun": "karras"}.get(f["sampler"], "log_snr"), math.nan)
        best_std = min(v for k, v in f["val_rmse"].items() if k in ("uniform", "karras", "log_snr"))
        frows.append([f["model"], f["sampler"], f["nominal_nfe"], f["method"], f["init"], f"{f['val_rmse']['fitted']:.4f}",
                      f"{std:.4f}", f"{best_std:.4f}", f"{f['cpu_s']:.1f}", f["settings"]])
    out += ["## Fits", "",
            "Validation RMS distance to the teacher (the fit's own held-out draws), the fit's CPU time (teacher, DP "
            "initialisation and Adam steps included):", "",
            md_table(["model", "sampler", "NFE", "returned", "init", "val RMS fitted", "val RMS default grid",
                      "val RMS best standard", "CPU s", "settings"], frows), ""]
    full = [f["cpu_s"] for f in fits if f["nominal_nfe"] in a["full_nfes"]]
    if full:
        out += [f"Fit CPU time with the app's defaults at NFE {a['full_nfes']}: median {float(np.median(full)):.1f} s, "
                f"max {max(full):.1f} s (goal: <= 60 s at NFE 10).", ""]
    return "\n".join(out)


def plot(payload, path: Path) -> None:
    import matplotlib  # noqa: PLC0415
    import matplotlib.ticker  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows, models, a = payload["rows"], list(payload["models"]), payload["args"]
    colours = dict(zip(a["samplers"], ["C0", "C1", "C2", "C3"]))
    fig, axes = plt.subplots(2, len(models), figsize=(3.6 * len(models), 6.4), squeeze=False)
    for j, name in enumerate(models):
        for i, (metric, label) in enumerate((("outlier_z", "headline outlier_z"), ("rms_to_teacher", "RMS to teacher"))):
            ax = axes[i][j]
            for s in a["samplers"]:
                for kind, style in (("standard", "--"), ("fitted", "-")):
                    rr = sorted((r for r in rows if r["model"] == name and r["sampler"] == s and r["kind"] == kind
                                 and metric in r), key=lambda r: r["nfe"])
                    if rr:
                        ax.plot([r["nfe"] for r in rr], [r[metric] for r in rr], style, marker="o", ms=3,
                                color=colours[s], label=f"{s} {kind}")
            for ref, ls in (("PF-ODE RK45 1e-7 (teacher)", ":"), ("PC, 200 steps (default)", "-.")):
                r = _find(rows, model=name, kind="reference", sampler=ref)
                if r and r.get(metric, 0) > 0:  # the teacher's own RMS (0) has no line
                    ax.axhline(r[metric], color="k", ls=ls, lw=1, label=ref.split(",")[0].split(" 1e")[0])
            if metric == "outlier_z":
                band = next((r["outlier_z_band"] for r in rows if r["model"] == name and "outlier_z_band" in r), None)
                if band:
                    ax.axhspan(band[0], band[1], color="0.85", zorder=0, label="i.i.d. floor band")
                ax.set_yscale("symlog", linthresh=2)
            else:
                ax.set_yscale("log")
            ax.set_xscale("log")
            ax.set_xticks([5, 7, 10, 20])
            ax.set_xticklabels(["5", "7", "10", "20"])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_title(f"{name}: {label}", fontsize=9)
            ax.set_xlabel("NFE")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.suptitle("Fitted (solid) vs standard (dashed) grids on trained models", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
