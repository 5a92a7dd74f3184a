"""Restart sampling (Xu et al. 2023) on trained models at 10-20 NFE: does it close the ODE-SDE gap? (issue 17)

Issue 17's unmet goal: a stochastic sampler at <= 20 NFE as good as the predictor-corrector sampler
at 400 NFE on a trained model (the radius-5 ring trained through ``data=file``: W2 <= 0.21 at
n = 10 000; the default run at floor on its headline).  Fitted deterministic grids reach the model's
converged probability-flow ODE at NFE 10 (``fitted_grids_trained.md``), but that limit is worse than
PC-400 on trained models; fitted per-step noise (AdaSDE-style, ``fitted_grids_sde.md``) did not close
the gap.  This prototype tests Restart sampling, with no library change, over the public API only.

**Restart** (Xu, Deng, Cheng, Tian, Liu & Jaakkola, "Restart Sampling for Improving Generative
Processes", NeurIPS 2023, Sec. 4 and Alg. 1; reference code ``Newbeeer/diffusion_restart_sampling``,
``benchmarks/generate_restart.py``).  In EDM's variables (x~ = x/alpha, sigma~ = sigma/alpha) the paper
solves the ODE down to t_min of a restart interval [t_min, t_max], then K times: the *restart forward
process* x~_{t_max} = x~_{t_min} + sqrt(sigma~_max^2 - sigma~_min^2) z, z ~ N(0, I), followed by the
*restart backward process*, the ODE from t_max back to t_min; then the ODE to the end.  In this
library's VP coordinates the forward jump is the SDE's exact transition ``sde.transition(t_min, t_max)``:

    x_{t_max} = (alpha_max/alpha_min) x_{t_min} + sqrt(sigma_max^2 - (alpha_max/alpha_min)^2 sigma_min^2) z,

the same law (multiply the EDM form by alpha_max; for VE alpha = 1 and it is x + sqrt(sigma_max^2 -
sigma_min^2) z).  The paper's ODE solver is EDM's Heun on a Karras sub-grid of the interval; here the
inner solver is DPM-Solver++(2M) (``samplers.DPMSolverPP``) and the backward process re-solves the main
grid's own times between the two interval ends (on a fitted grid: the fitted steps), each re-solve
starting without multistep history (its first step is first order).  NFE = N_main + K (j - i), j - i
the grid steps inside the interval: every score evaluation is counted (``SampleResult.nfe``).

The interval is placed where stochasticity helps this model (measured, ``--diagnose``: the converged
ODE down to sigma~ = s, then PC-400 from s: W2 falls from the ODE's value to PC's only for s >= 1, so
the ODE's excess error is made at sigma~ >= 1, where modes merge); the interval ends are snapped to
the grid times nearest sigma~ = ``--restart-lo`` (1.5) and ``--restart-hi`` (8) in the model's training
units (both models' data have spread ~1 there).  K = (NFE - N_main) // (j - i).

Rows per model and NFE: the fitted DPM-Solver++(2M) at the same NFE (``fitting.fit_grid``, LD3-style,
seed 0); Restart on the fitted grid of N_main times and on the standard (log-SNR) grid of N_main times;
the fitted stochastic DPM-Solver++(2M) SDE (``fit_stochastic.fit_stochastic``, eta = 1 start, sliced-W2
loss) with its default teacher (the model's PF-ODE) and with the PC-400 sampler as teacher (the
distribution the goal names; the committed run has ``--pc-teacher-only``); references: the converged
PF-ODE (RK45 at 1e-7) and PC-400 (the app's default). Evaluated on prior draws of an evaluation seed
never used by the fits or the screening that chose the settings: exact W2
(``evaluation.metrics.w2_exact``) against as many fresh data points (ring: n = 10 000; default: n = 4000)
with the W2 of an i.i.d. sample of the same size as its floor; for the default run also the calibrated
headline (``evaluation.assess``, n = 4000).

Writes ``benchmarks/results/restart.{json,md,png}``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

from _common import RESULTS, Timer, command_line, log, machine, machine_line, md_table, set_threads, write_results

import torch  # noqa: E402

from scoresde import toy  # noqa: E402
from scoresde.bridges import tweedie_denoise  # noqa: E402
from scoresde.evaluation import assess  # noqa: E402
from scoresde.evaluation.floors import FloorCache  # noqa: E402
from scoresde.evaluation.metrics import w2_exact  # noqa: E402
from scoresde.grids import log_snr  # noqa: E402
from scoresde.samplers import DPMSolverPP, PredictorCorrector  # noqa: E402
from scoresde.samplers.fit_stochastic import fit_stochastic  # noqa: E402
from scoresde.samplers.fitting import default_teacher, fit_grid  # noqa: E402
from scoresde.training import load  # noqa: E402

NAME = "restart"
F64 = torch.float64
RING = {"radius": 5.0, "std": 1.0}
MODELS = {"ring5": "ring5/best.pt", "default": "default/last.pt"}
# NFE budget -> grid times of the main pass (6 and 12 chosen on the seed-1 screening draws; 11 by the same rule)
MAIN_STEPS = {10: 6, 15: 11, 20: 12, 30: 12, 40: 12}
TEACHERS = (("PC-400 teacher", PredictorCorrector()), ("PF-ODE teacher", None))  # of fit_stochastic


def target_of(name):
    return toy.eight_gaussians(**RING) if name == "ring5" else toy.eight_gaussians()


def nearest(ts, sde, sigma_ve: float) -> int:
    """Index of the grid time whose sigma~ is nearest ``sigma_ve`` in log."""
    return int((sde.sigma_ve(ts).log() - math.log(sigma_ve)).abs().argmin())


def restart_run(inner, score, sde, x_init, ts, i: int, j: int, K: int, generator):
    """Restart (module docstring): ``inner`` over ts[:j+1]; K times the exact forward jump ts[j] -> ts[i]
    and ``inner`` over ts[i:j+1]; then ``inner`` over ts[j:] with its final denoise.  Returns (x, NFE)."""
    quiet = dataclasses.replace(inner, denoise=False)
    r = quiet.run(score, sde, x_init=x_init, ts=ts[: j + 1])
    x, nfe = r.x, r.nfe
    a, b = (float(v) for v in sde.transition(ts[j:j + 1], ts[i:i + 1]))
    for _ in range(K):
        x = a * x + b * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        r = quiet.run(score, sde, x_init=x, ts=ts[i: j + 1])
        x, nfe = r.x, nfe + r.nfe
    if j < len(ts) - 1:
        r = inner.run(score, sde, x_init=x, ts=ts[j:])
        return r.x, nfe + r.nfe
    t = torch.full((x.shape[0],), float(ts[j]), dtype=x.dtype)
    return tweedie_denoise(score(x, t), sde, x, t), nfe + 1


class Evaluator:
    def __init__(self, target, to_user, n_w2, n_assess, seed, headline):
        g = torch.Generator().manual_seed(20_000 + seed)
        self.target, self.to_user, self.n_w2, self.n_assess, self.seed, self.headline = \
            target, to_user, n_w2, n_assess, seed, headline
        self.data = target.sample(n_w2, g, dtype=F64)
        with Timer() as tm:
            self.floor = w2_exact(target.sample(n_w2, g, dtype=F64), self.data, max_n=n_w2)
        self.cache = FloorCache()
        log(f"  W2 floor {self.floor:.3f} at n = {n_w2} ({tm.cpu_seconds:.0f} s cpu)")

    def __call__(self, x) -> dict:
        xu = self.to_user(x).double()
        if not bool(torch.isfinite(xu).all()):
            return {"finite": False}
        out = {"w2": w2_exact(xu[: self.n_w2], self.data, max_n=self.n_w2)}
        if self.headline:
            a = assess(xu[: self.n_assess].float(), self.target, seed=self.seed, cache=self.cache, metrics=None)
            m = a["metrics"]
            out.update({k: m[k]["value"] for k in ("outlier_z", "c2st")},
                       **{f"{k}_verdict": m[k]["verdict"] for k in ("outlier_z", "c2st")},
                       overall=a["overall"]["verdict"])
        return out


def diagnose(score, sde, z, ev, rows, model):
    """Where does stochasticity help?  Converged ODE (DPM-Solver++(2M), 200 log-SNR steps) down to sigma~ = s,
    then PC (200 steps uniform in t) from there."""
    ts = log_snr(sde, 200, sigma_min="sde")
    for s in (0.1, 0.3, 1.0, 3.0):
        t = float(sde.t_from_sigma_ve(torch.tensor([s], dtype=F64)))
        head = torch.cat([ts[ts > t], torch.tensor([t], dtype=F64)])
        xs = DPMSolverPP(num_steps=200, denoise=False).run(score, sde, x_init=z, ts=head).x
        tail = torch.linspace(t, sde.t_min, 200, dtype=F64)
        x = PredictorCorrector(num_steps=200).run(score, sde, x_init=xs, ts=tail,
                                                  generator=torch.Generator().manual_seed(5)).x
        rows.append({"model": model, "kind": "diagnostic", "label": f"ODE to sigma~ {s:g}, then PC", "nfe": None,
                     **ev(x)})
        log(f"  diagnostic {s}: W2 {rows[-1].get('w2', math.nan):.3f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs-dir", type=Path, default=Path("/tmp/fitrows/runs"),
                   help="checkpoints of benchmarks/fitted_grids_trained.py (ring5/best.pt, default/last.pt)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--nfes", type=int, nargs="+", default=[10, 15, 20], choices=sorted(MAIN_STEPS))
    p.add_argument("--restart-lo", type=float, default=1.5, help="sigma~ of the interval's lower end (snapped)")
    p.add_argument("--restart-hi", type=float, default=8.0, help="sigma~ of the interval's upper end (snapped)")
    p.add_argument("--n-w2-ring", type=int, default=10_000)
    p.add_argument("--n-w2", type=int, default=4000)
    p.add_argument("--eval-seed", type=int, default=2, help="evaluation draws (fits: seed 0; screening: seed 1)")
    p.add_argument("--sde-fit-num", type=int, default=1024, help="train = validation draws of fit_stochastic")
    p.add_argument("--sde-fit-iterations", type=int, default=60)
    p.add_argument("--no-sde-fits", action="store_true", help="skip the fit_stochastic rows")
    p.add_argument("--pc-teacher-only", action="store_true", help="fit_stochastic only with the PC-400 teacher")
    p.add_argument("--fit-num", type=int, default=256, help="fit_grid's train = validation draws (but NFE 10: 512)")
    p.add_argument("--fit-iterations", type=int, default=75, help="fit_grid's Adam steps (but NFE 10: 150)")
    p.add_argument("--diagnose", action="store_true", help="also the ODE-then-PC rows (where stochasticity helps)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--part", default="", help="suffix of the output name")
    p.add_argument("--merge", type=Path, nargs="+", default=None, help="merge part JSONs into restart.*")
    p.add_argument("--note", default="", help="with --merge: the findings paragraph of the report")
    p.add_argument("--quick", action="store_true", help="smoke run: default model, NFE 10, n = 500")
    args = p.parse_args(argv)
    if args.merge:
        parts = [json.loads(q.read_text()) for q in args.merge]
        payload = {**parts[0], "benchmark": NAME, "command": " ; ".join(q["command"] for q in parts),
                   "rows": [r for q in parts for r in q["rows"]], "fits": [f for q in parts for f in q["fits"]],
                   "models": {k: v for q in parts for k, v in q["models"].items()},
                   "total_cpu_seconds": sum(q["total_cpu_seconds"] for q in parts), "note": args.note}
        write_results(NAME, payload, report(payload), RESULTS)
        plot(payload, RESULTS / f"{NAME}.png")
        return
    if args.quick:
        args.models, args.nfes, args.n_w2, args.n_w2_ring = ["default"], [10], 500, 500
        args.sde_fit_num, args.sde_fit_iterations = 64, 5
    set_threads(args.threads)
    rows, fits, models, at_start = [], [], {}, machine()
    with Timer() as total:
        for name in args.models:
            loaded = load(args.runs_dir / MODELS[name])
            score, sde, shape = loaded.score_fn, loaded.sde, tuple(loaded.event_shape)
            to_user = loaded.data_transform.to_user_units if loaded.data_transform is not None else (lambda x: x)
            n = args.n_w2_ring if name == "ring5" else args.n_w2
            log(f"{name}: {MODELS[name]} (step {loaded.step})")
            ev = Evaluator(target_of(name), to_user, n, min(n, 4000), args.eval_seed, headline=name == "default")
            models[name] = {"checkpoint": str(args.runs_dir / MODELS[name]), "step": loaded.step, "sde": repr(sde),
                            "target": repr(ev.target), "n_w2": n, "w2_floor": ev.floor}
            z = sde.prior_sample((n, *shape), torch.Generator().manual_seed(1000 * args.eval_seed), dtype=F64)

            def add(kind, label, res_x, nfe, **extra):
                with Timer() as tm:
                    metrics = ev(res_x.to(F64))
                rows.append({"model": name, "kind": kind, "label": label, "nfe": nfe, **extra, **metrics,
                             "eval_cpu_s": tm.cpu_seconds})
                log(f"  {label} (NFE {nfe}): W2 {metrics.get('w2', math.nan):.3f}"
                    + (f", outlier_z {metrics['outlier_z']:.2f} / c2st {metrics['c2st']:.3f} ({metrics['overall']})"
                       if "overall" in metrics else ""))

            for label, s in (("PF-ODE RK45 1e-7 (converged)", default_teacher()), ("PC, 200 steps (default)",
                                                                                  PredictorCorrector())):
                r = s.run(score, sde, x_init=z, generator=torch.Generator().manual_seed(5))
                add("reference", label, r.x, r.nfe)
            if args.diagnose:
                diagnose(score, sde, z, ev, rows, name)
            for nfe in args.nfes:
                # the fitted deterministic sampler at the same NFE
                kw = {} if nfe == 10 else {"num_train": args.fit_num, "num_val": args.fit_num,
                                           "iterations": args.fit_iterations}
                f = fit_grid(score, sde, DPMSolverPP(num_steps=nfe), nfe, shape, seed=0, **kw)
                fits.append({"model": name, "what": f"DPM++2M NFE {nfe}", "method": f.method, "cpu_s": f.cpu_s})
                r = DPMSolverPP(num_steps=nfe).run(score, sde, x_init=z, ts=f.ts)
                add("fitted ODE", "DPM++2M, fitted grid", r.x, r.nfe, budget=nfe)
                # Restart on the fitted and on the standard grid of N_main times
                n_main = MAIN_STEPS[nfe]
                inner = DPMSolverPP(num_steps=n_main)
                fm = f if n_main == nfe else fit_grid(score, sde, inner, n_main, shape, seed=0, **(
                    {} if n_main == 10 else {"num_train": args.fit_num, "num_val": args.fit_num,
                                             "iterations": args.fit_iterations}))
                if n_main != nfe:
                    fits.append({"model": name, "what": f"DPM++2M N_main {n_main}", "method": fm.method,
                                 "cpu_s": fm.cpu_s})
                for grid_kind, ts in (("fitted", fm.ts), ("standard", inner.make_grid(sde))):
                    j = nearest(ts, sde, args.restart_lo)
                    i = min(nearest(ts, sde, args.restart_hi), j - 1)
                    K = (nfe - n_main) // (j - i)
                    x, used = restart_run(inner, score, sde, z, ts, i, j, K, torch.Generator().manual_seed(11))
                    sig = sde.sigma_ve(ts)
                    add("restart", f"Restart, {grid_kind} grid", x, used, budget=nfe, n_main=n_main, K=K,
                        interval=[float(sig[j]), float(sig[i])], restart_steps=j - i)
                # the fitted stochastic sampler (AdaSDE-style) at the same NFE, two teachers
                if args.no_sde_fits:
                    continue
                for teacher_label, teacher in TEACHERS[: 1 if args.pc_teacher_only else 2][::-1]:
                    fs = fit_stochastic(score, sde, DPMSolverPP(num_steps=nfe, eta=1.0), nfe, shape, seed=0,
                                        num_train=args.sde_fit_num, num_val=args.sde_fit_num,
                                        iterations=args.sde_fit_iterations, teacher=teacher)
                    fits.append({"model": name, "what": f"DPM++2M SDE NFE {nfe}, {teacher_label}",
                                 "method": fs.method, "cpu_s": fs.cpu_s})
                    s = fs.grid.configure(DPMSolverPP(num_steps=nfe, eta=1.0))
                    r = s.run(score, sde, x_init=z, ts=fs.ts, generator=torch.Generator().manual_seed(11))
                    add("fitted SDE", f"DPM++2M SDE, fitted ({teacher_label})", r.x, r.nfe, budget=nfe,
                        method=fs.method)
    payload = {"benchmark": NAME + ("_quick" if args.quick else "") + args.part, "command": command_line(),
               "machine": at_start, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "total_seconds": total.seconds, "total_cpu_seconds": total.cpu_seconds, "models": models,
               "fits": fits, "rows": rows}
    write_results(payload["benchmark"], payload, report(payload), RESULTS)
    plot(payload, RESULTS / f"{payload['benchmark']}.png")
    print(report(payload))


def report(payload) -> str:
    rows, models = payload["rows"], payload["models"]
    out = ["# Restart sampling on trained models (issue 17)", "", f"`{payload['command']}`", "",
           machine_line(payload["machine"]) + f"; {payload['total_cpu_seconds']:.0f} s CPU in all.", "",
           "Restart (Xu et al. 2023, Alg. 1) with DPM-Solver++(2M) as the ODE solver: the main pass on N_main grid "
           "times, K restarts over the interval [sigma~ lo, sigma~ hi] (snapped to grid times; the exact forward "
           "transition up, the same grid times back down), NFE = N_main + K x restart steps.  Exact W2 against "
           "fresh data from the evaluation draws (seed "
           f"{payload['args']['eval_seed']}; the fits use seed 0, the settings were chosen on seed-1 draws).", ""]
    if payload.get("note"):
        out += [payload["note"], ""]
    for name, m in models.items():
        mr = [r for r in rows if r["model"] == name]
        head = "headline" if any("overall" in r for r in mr) else None
        ref = {r["label"]: r for r in mr if r["kind"] == "reference"}
        ode = ref.get("PF-ODE RK45 1e-7 (converged)", {}).get("w2", math.nan)
        pc = ref.get("PC, 200 steps (default)", {}).get("w2", math.nan)
        out += [f"## {name}", "", f"W2 floor (i.i.d. sample, n = {m['n_w2']}): {m['w2_floor']:.3f}; converged "
                f"PF-ODE {ode:.3f}; PC-400 {pc:.3f}.", ""]
        cols = ["kind", "sampler", "NFE", "setting", "W2", "W2 / PC-400"] + (
            ["outlier_z / c2st", "overall"] if head else [])
        trs = []
        for r in mr:
            setting = ""
            if r["kind"] == "restart":
                setting = (f"N_main {r['n_main']}, K {r['K']} x {r['restart_steps']} steps on "
                           f"[{r['interval'][0]:.2f}, {r['interval'][1]:.2f}]")
            elif "method" in r:
                setting = f"returned: {r['method']}"
            w = r.get("w2", math.nan)
            line = [r["kind"], r["label"], r["nfe"] if r["nfe"] is not None else "", setting,
                    "non-finite" if r.get("finite") is False else f"{w:.3f}", f"{w / pc:.2f}"]
            if head:
                line += [f"{r['outlier_z']:.2f} / {r['c2st']:.3f}" if "c2st" in r else "", r.get("overall", "")]
            trs.append(line)
        out += [md_table(cols, trs), ""]
    frows = [[f["model"], f["what"], f["method"], f"{f['cpu_s']:.1f}"] for f in payload["fits"]]
    out += ["## Fits", "", md_table(["model", "fit", "returned", "CPU s"], frows), ""]
    return "\n".join(out)


def plot(payload, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = payload["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    for ax, (name, m) in zip(axes[0], models.items()):
        mr = [r for r in payload["rows"] if r["model"] == name and "w2" in r]
        ref = {r["label"]: r["w2"] for r in mr if r["kind"] == "reference"}
        for label, style in (("PF-ODE RK45 1e-7 (converged)", "C0"), ("PC, 200 steps (default)", "C3")):
            if label in ref:
                ax.axhline(ref[label], ls="--", color=style, label=label.split(" (")[0] + f" ({ref[label]:.3f})")
        ax.axhline(m["w2_floor"], ls=":", color="k", label=f"i.i.d. floor ({m['w2_floor']:.3f})")
        labels = sorted({r["label"] for r in mr if r["kind"] not in ("reference", "diagnostic")})
        for k, label in enumerate(labels):
            pts = sorted((r["nfe"], r["w2"]) for r in mr if r["label"] == label)
            ax.plot(*zip(*pts), marker="osv^D"[k % 5], label=label)
        ax.set(title=f"{name} (n = {m['n_w2']})", xlabel="NFE", ylabel="exact W2 to fresh data")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
