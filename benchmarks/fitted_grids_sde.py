"""Stochastic samplers with fitted steps and per-step noise (AdaSDE-style, issue 17), exact scores, NFE 6-20.

Does fitted stochasticity close the gap between the ODE limit and the SDE sampler's quality?
For each exact target of ``scoresde.data.toy.TARGETS`` (VPSDE, from its prior, the evaluation draws
of ``fitted_grids.py``: seed 100 s + 13 t), each stochastic sampler and each NFE:

* **fit** (``scoresde.samplers.fit_stochastic.fit_stochastic``) on prior draws, noise and teacher
  samples of seed ``--fit-seed`` (``--num-train`` + ``--num-val``; loss: sliced W2^2 to the PF-ODE
  teacher's samples from other prior draws); it falls back to the best standard setting when that
  is better on validation (the table says which);
* **evaluate** on ``--seeds`` other seeds of n = ``--n`` prior draws and noise: the fitted setting,
  the sampler with its own coefficient on each standard grid (uniform / karras / log_snr; the best
  of them on the evaluation draws is reported: the strongest baseline), ``within_mode_errors``
  (worst within-mode mean / covariance error, mode-weight error) over the i.i.d. floor of the same n;
* **references** on the same draws: the converged PF-ODE (RK45 at 1e-7: the ODE limit), the
  predictor-corrector sampler at ~400 NFE (``PredictorCorrector()``, the CLI's default), and the
  best *deterministic* fitted-grid sampler of the committed ``fitted_grids.json`` (same draws).
* **generalisation gap**: the fit's loss on its training batch, on its validation batch, and the same
  loss on a fresh batch from the evaluation draws (``--num-train`` samples vs the teacher's outputs
  from the other evaluation seed's draws).

Writes ``benchmarks/results/fitted_grids_sde.{json,md,png}``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
from pathlib import Path

from _common import RESULTS, Timer, command_line, log, machine, machine_line, md_table, set_threads, write_results

import torch  # noqa: E402
from fitted_grids import WM, errors, mean_runs  # noqa: E402  (the same metrics as the deterministic benchmark)

from scoresde import toy  # noqa: E402
from scoresde.evaluation.metrics import within_mode_floor  # noqa: E402
from scoresde.samplers import DPMSolverPP, EDMHeun, PredictorCorrector  # noqa: E402
from scoresde.samplers.fit_stochastic import fit_stochastic, sliced_w2  # noqa: E402
from scoresde.samplers.fitting import STANDARD_GRIDS, default_teacher  # noqa: E402
from scoresde.sdes import VPSDE  # noqa: E402

NAME = "fitted_grids_sde"
SDE = VPSDE()
# the index each target's evaluation draws (seed 100 s + 13 i) and floor (seed 7 + i) had in fitted_grids.py, which
# ran in two parts of two targets: the same draws here, so that its fitted deterministic rows compare directly
DRAW_INDEX = {"eight_gaussians": 0, "grid_gaussians": 1, "ncsn_two_modes": 0, "anisotropic_mixture": 1}
GAMMA = 40 / 256  # EDM's ImageNet churn per step (S_churn = 40 at N = 256)
SAMPLERS = {  # label -> (sampler for num_steps N, NFE -> N)
    "DPM++2M SDE": (lambda n: DPMSolverPP(num_steps=n, order=2, eta=1.0), lambda nfe: nfe),
    "EDM Heun churn": (lambda n: EDMHeun(num_steps=n, s_churn=GAMMA * n), lambda nfe: (nfe + 1) // 2),
}


def eval_draws(mixture, ti: int, n: int, seeds: int) -> list:
    """Prior draws z of ``fitted_grids.py`` (seed 100 s + 13 t) and the teacher's outputs from them."""
    out = []
    for seed in range(seeds):
        z = torch.randn(n, mixture.dim, generator=torch.Generator().manual_seed(100 * seed + 13 * ti), dtype=torch.float64)
        res = default_teacher().run(mixture.score_fn(SDE), SDE, x_init=z * SDE.prior_std)
        out.append((z * SDE.prior_std, res.x, res.nfe))
    return out


def evaluate(sampler, score, draws, mixture, floors, ti: int) -> tuple[dict, list]:
    runs, outs = [], []
    for s, (x, _, _) in enumerate(draws):
        g = torch.Generator().manual_seed(5000 + 100 * s + 13 * ti)  # evaluation noise: never a fit's
        res = sampler.run(score, SDE, x_init=x, generator=g)
        runs.append(errors(res.x, mixture, floors))
        outs.append(res.x)
    return {**mean_runs(runs), "nfe": res.nfe, "runs": runs}, outs


def deterministic_best(path: Path) -> dict:
    """(target, nominal NFE) -> the best fitted-grid row of the committed fitted_grids.json (same draws)."""
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text())["rows"]
    best = {}
    for r in rows:
        if r["kind"] == "fitted" and r.get("worst") is not None:
            worst = max(r[k + "_ratio"] for k in WM)
            key = f"{r['target']}/{r['nominal_nfe']}"
            if key not in best or worst < best[key]["worst"]:
                best[key] = {"sampler": r["sampler"], "grid": r["grid"], "nfe": r["nfe"], "worst": worst,
                             **{k + "_ratio": r[k + "_ratio"] for k in WM}}
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--targets", nargs="+", default=list(toy.TARGETS), choices=list(toy.TARGETS))
    p.add_argument("--nfes", type=int, nargs="+", default=[6, 8, 10, 20])
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    p.add_argument("--n", type=int, default=10_000, help="evaluation samples per seed")
    p.add_argument("--seeds", type=int, default=2, help="evaluation seeds")
    p.add_argument("--floor-repeats", type=int, default=20)
    p.add_argument("--num-train", type=int, default=2048)
    p.add_argument("--num-val", type=int, default=2048)
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--fit-seed", type=int, default=1000)
    p.add_argument("--teacher", choices=("ode", "pc"), default="ode",
                   help="the fit's teacher: the PF-ODE (RK45 1e-7) or the predictor-corrector sampler at ~400 NFE")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--part", default="", help="suffix of the output name (a run over some of the targets)")
    p.add_argument("--merge", type=Path, nargs="+", default=None, help="merge part JSONs into fitted_grids_sde.*")
    args = p.parse_args(argv)
    if args.merge:
        parts = [json.loads(q.read_text()) for q in args.merge]
        payload = {**parts[0], "command": " ; ".join(q["command"] for q in parts) + " ; " + command_line(),
                   "total_seconds": sum(q["total_seconds"] for q in parts),
                   "total_cpu_seconds": sum(q["total_cpu_seconds"] for q in parts),
                   "floors": {k: v for q in parts for k, v in q["floors"].items()},
                   "rows": [r for q in parts for r in q["rows"]], "fits": [r for q in parts for r in q["fits"]]}
        payload["args"] = {**parts[0]["args"], "targets": [t for q in parts for t in q["args"]["targets"]]}
        write_results(NAME, payload, report(payload), RESULTS)
        plot(payload, RESULTS / f"{NAME}.png")
        return
    set_threads(args.threads)
    det = deterministic_best(RESULTS / "fitted_grids.json")
    rows, fits, floors = [], [], {}
    with Timer() as total:
        for tname in args.targets:
            ti, di = list(toy.TARGETS).index(tname), DRAW_INDEX.get(tname, list(toy.TARGETS).index(tname))
            mixture = toy.TARGETS[tname]()
            score = mixture.score_fn(SDE)
            floors[tname] = within_mode_floor(mixture, args.n, args.floor_repeats, torch.Generator().manual_seed(7 + di))
            draws = eval_draws(mixture, di, args.n, args.seeds)
            teacher = mean_runs([errors(y, mixture, floors[tname]) for _, y, _ in draws])
            rows.append({"target": tname, "kind": "ode_limit", "sampler": "PF-ODE RK45 1e-7", "grid": "",
                         "nominal_nfe": None, "nfe": draws[0][2], **teacher})
            with Timer() as t_pc:
                pc, _ = evaluate(PredictorCorrector(), score, draws, mixture, floors[tname], ti)
            rows.append({"target": tname, "kind": "pc", "sampler": "PC (reverse diffusion + Langevin)", "grid": "uniform",
                         "nominal_nfe": None, "cpu_s": t_pc.cpu_seconds, **pc})
            log(f"{tname}: ODE limit worst {teacher['worst']:.2f}, PC NFE {pc['nfe']} worst {pc['worst']:.2f}")
            for nfe in args.nfes:
                d = det.get(f"{tname}/{nfe}")
                if d:
                    rows.append({"target": tname, "kind": "det_fitted", "nominal_nfe": nfe, **d})
            for label in args.samplers:
                make, steps_of = SAMPLERS[label]
                for nfe in args.nfes:
                    n_steps = steps_of(nfe)
                    base = make(n_steps)
                    res = fit_stochastic(score, SDE, base, n_steps, (mixture.dim,), num_train=args.num_train,
                                         num_val=args.num_val, iterations=args.iterations, seed=args.fit_seed + ti,
                                         teacher=PredictorCorrector() if args.teacher == "pc" else None)
                    label_t = label + (" (PC teacher)" if args.teacher == "pc" else "")
                    fitted = res.grid.configure(base)
                    row, outs = evaluate(fitted, score, draws, mixture, floors[tname], ti)
                    # the fit's loss on fresh evaluation draws: sampler outputs of seed 0 vs teacher of seed 1
                    u = torch.randn(128, mixture.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
                    u = u / u.norm(dim=1, keepdim=True)
                    k = args.num_train
                    eval_loss = float(sliced_w2(outs[0][:k], draws[-1][1][:k], u))
                    rows.append({"target": tname, "kind": "fitted", "sampler": label_t, "grid": res.method,
                                 "nominal_nfe": nfe, "num_steps": n_steps, **row})
                    std_rows = {}
                    for g in STANDARD_GRIDS:
                        srow, souts = evaluate(dataclasses.replace(base, grid=g), score, draws, mixture, floors[tname], ti)
                        srow["eval_loss"] = float(sliced_w2(souts[0][:k], draws[-1][1][:k], u))
                        std_rows[g] = srow
                        rows.append({"target": tname, "kind": "standard", "sampler": label, "grid": g,
                                     "nominal_nfe": nfe, "num_steps": n_steps, **srow})
                    info = res.grid.info
                    fits.append({"target": tname, "sampler": label_t, "nominal_nfe": nfe, "num_steps": n_steps,
                                 "method": res.method, "init": info["init"], "cpu_s": res.cpu_s,
                                 "train_loss": res.train_loss, "val_loss": res.val_loss, "eval_loss": eval_loss,
                                 "eval_loss_standard": {g: r["eval_loss"] for g, r in std_rows.items()},
                                 "ts": list(res.grid.ts), "coefficient": res.grid.coefficient,
                                 "coefficients": list(res.grid.coefficients), "teacher_nfe": info["teacher_nfe"]})
                    best_std = min(std_rows.values(), key=lambda r: r["worst"])
                    log(f"{tname} {label} NFE {row['nfe']}: fitted ({res.method}) worst {row['worst']:.2f} vs best "
                        f"standard {best_std['worst']:.2f}; fit {res.cpu_s:.1f} s CPU")
    payload = {"benchmark": NAME, "command": command_line(), "machine": machine(), "args": vars(args) | {"merge": None},
               "total_seconds": total.seconds, "total_cpu_seconds": total.cpu_seconds, "sde": repr(SDE),
               "floors": floors, "fits": fits, "rows": rows}
    payload["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in payload["args"].items()}
    write_results(NAME + args.part, payload, report(payload), RESULTS)
    plot(payload, RESULTS / f"{NAME}{args.part}.png")


def _best(rows):
    rows = [r for r in rows if r.get("worst") is not None and math.isfinite(r["worst"])]
    return min(rows, key=lambda r: r["worst"]) if rows else None


def _fmt(v) -> str:
    return "—" if v is None or not math.isfinite(v) else (f"{v:.2f}" if v < 100 else f"{v:.0f}")


def report(payload) -> str:
    rows, args = payload["rows"], payload["args"]
    lines = [f"# {NAME}: stochastic samplers with fitted steps and per-step noise (AdaSDE-style)", "",
             f"`{payload['command']}`", "", machine_line(payload["machine"]), "",
             f"Exact scores, VPSDE, from the prior; n = {args['n']} per seed, {args['seeds']} evaluation seeds "
             f"(the draws of fitted_grids.py), fit on {args['num_train']} + {args['num_val']} other draws "
             f"(seed {args['fit_seed']} + target index), {args['iterations']} Adam steps, loss sliced W2^2 to the PF-ODE "
             f"teacher's samples.  Ratios: error / i.i.d. floor of the same n (mean of the seeds); worst = the "
             f"largest of within-mode mean, within-mode covariance and mode-weight ratios.  Total CPU "
             f"{payload['total_cpu_seconds']:.0f} s.", "",
             "EDM Heun churn: gamma_i = 40/256 (EDM's ImageNet S_churn/N) on the standard grids; NFE = 2N - 1.  "
             "DPM++2M SDE: eta = 1 on the standard grids.  Fitted: per-step gamma_i / eta_i and grid.  "
             "\"(PC teacher)\": fitted to the predictor-corrector sampler's samples (~400 NFE) instead of the PF-ODE's.", ""]
    targets = list(payload["floors"])
    labels = list(dict.fromkeys(r["sampler"] for r in rows if r["kind"] == "fitted"))
    lines += ["## Worst ratio (mean of seeds) by target and NFE", ""]
    head = ["target", "NFE", "sampler", "fitted SDE", "(mean / cov / weight)", "best standard SDE (grid)",
            "fitted ODE (best det.)", "ODE limit", "PC (NFE)"]
    table = []
    for t in targets:
        ode = next(r for r in rows if r["target"] == t and r["kind"] == "ode_limit")
        pc = next(r for r in rows if r["target"] == t and r["kind"] == "pc")
        for n in args["nfes"]:
            det = next((r for r in rows if r["target"] == t and r["kind"] == "det_fitted" and r["nominal_nfe"] == n), None)
            for label in labels:
                fr = next((r for r in rows if r["target"] == t and r["kind"] == "fitted" and r["sampler"] == label
                           and r["nominal_nfe"] == n), None)
                if fr is None:
                    continue
                base = label.removesuffix(" (PC teacher)")
                sb = _best([r for r in rows if r["target"] == t and r["kind"] == "standard" and r["sampler"] == base
                            and r["nominal_nfe"] == n])
                table.append([t, fr["nfe"], label, f"**{_fmt(fr['worst'])}**" + ("" if fr["grid"] == "adasde" else f" (fell back: {fr['grid']})"),
                              " / ".join(_fmt(fr[k + "_ratio"]) for k in WM),
                              f"{_fmt(sb['worst'])} ({sb['grid']})" if sb else "—",
                              f"{_fmt(det['worst'])} ({det['sampler']}, NFE {det['nfe']})" if det else "—",
                              _fmt(ode["worst"]), f"{_fmt(pc['worst'])} ({pc['nfe']})"])
    lines += [md_table(head, table), ""]
    fits = payload["fits"]
    lines += ["## The fits: CPU, losses (sliced W2^2 x 1e3), generalisation", "",
              "train / val: the fit's batches (fitted setting); eval: the same loss on fresh evaluation draws "
              "(fitted; in brackets the best standard grid's).  Gap = eval / train.", ""]
    ft = []
    for f in fits:
        best_std_eval = min(f["eval_loss_standard"].values())
        ft.append([f["target"], f["sampler"], f["nominal_nfe"], f["method"], f["init"], f"{f['cpu_s']:.1f}",
                   f"{1e3 * f['train_loss']['fitted']:.3f}", f"{1e3 * f['val_loss']['fitted']:.3f}",
                   f"{1e3 * f['eval_loss']:.3f} ({1e3 * best_std_eval:.3f})",
                   _fmt(f["eval_loss"] / f["train_loss"]["fitted"]) if f["train_loss"]["fitted"] > 0 else "—",
                   ", ".join(f"{c:.2f}" for c in f["coefficients"])])
    lines += [md_table(["target", "sampler", "NFE", "chosen", "init", "fit CPU s", "train", "val", "eval (std)", "gap",
                        "per-step coefficient (s_churn_i or eta_i)"], ft), ""]
    cpus = sorted(f["cpu_s"] for f in fits)
    if cpus:
        lines += [f"Fit CPU time: median {statistics.median(cpus):.1f} s, max {cpus[-1]:.1f} s (teacher included); "
                  f"{sum(f['method'] == 'adasde' for f in fits)}/{len(fits)} fits kept the fitted setting.", ""]
    return "\n".join(lines)


def plot(payload, path: Path) -> None:
    from matplotlib.figure import Figure  # noqa: PLC0415
    from matplotlib.ticker import NullFormatter  # noqa: PLC0415

    rows, targets, nfes = payload["rows"], list(payload["floors"]), payload["args"]["nfes"]
    ncols = min(2, len(targets))
    nrows = (len(targets) + ncols - 1) // ncols
    fig = Figure(figsize=(6.0 * ncols + 2.6, 4.0 * nrows + 0.6), layout="constrained")
    series = []
    for i, label in enumerate(SAMPLERS):
        series.append((f"{label}, fitted steps + noise", (lambda s: lambda r: r["kind"] == "fitted" and r["sampler"] == s)(label),
                       dict(color=f"C{3 + i}", ls="-", marker="o")))
        series.append((f"{label}, best standard grid", (lambda s: lambda r: r["kind"] == "standard" and r["sampler"] == s)(label),
                       dict(color=f"C{3 + i}", ls="--", marker="^")))
    series.append(("DPM++2M SDE, fitted to the PC teacher", lambda r: r["kind"] == "fitted" and r["sampler"].endswith("(PC teacher)"),
                   dict(color="C9", ls="-", marker="D")))
    series.append(("best fitted deterministic (fitted_grids.json)", lambda r: r["kind"] == "det_fitted",
                   dict(color="C0", ls="-", marker="s")))
    for i, t in enumerate(targets):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for label, pick, style in series:
            pts = []
            for n in nfes:
                best = _best([r for r in rows if r["target"] == t and r.get("nominal_nfe") == n and pick(r)])
                if best is not None:
                    pts.append((best["nfe"], best["worst"]))
            if pts:
                ax.plot(*zip(*sorted(pts)), label=label, ms=4, lw=1.3, **style)
        ode = next(r for r in rows if r["target"] == t and r["kind"] == "ode_limit")
        pc = next(r for r in rows if r["target"] == t and r["kind"] == "pc")
        ax.axhline(ode["worst"], color="C2", lw=1.2, ls="-.", label="ODE limit (PF-ODE RK45 1e-7)")
        ax.axhline(pc["worst"], color="C7", lw=1.2, ls=":", label=f"PC at NFE {pc['nfe']}")
        ax.axhline(1.0, color="k", lw=0.6)
        ax.set(xscale="log", yscale="log", title=t, xlabel="NFE", ylabel="worst within-mode error / floor")
        ax.set_xticks(nfes, [str(n) for n in nfes])
        ax.xaxis.set_minor_formatter(NullFormatter())
    legend = {}
    for ax in fig.axes:  # every series, also those drawn on one panel only
        for h, name in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(name, h)
    fig.legend(list(legend.values()), list(legend), loc="outside right center", fontsize=8)
    fig.suptitle("Exact score, from the prior: stochastic samplers, fitted steps + per-step noise vs standard grids "
                 "(EDM Heun: NFE 2N - 1 = 5, 7, 9, 19)")
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
