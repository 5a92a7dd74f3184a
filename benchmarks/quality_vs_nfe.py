"""Sample quality against the number of score evaluations (NFE) for every sampler family.

For every exact toy target of ``scoresde.data.toy.TARGETS`` and every sampler family, run the sampler with
the *exact* score ``mixture.score_fn(sde)`` at a grid of NFE and report

* ``sw2_ratio``: sliced W2 to the exact mixture (``metrics.sliced_w2_to_mixture``, fixed directions per
  target) divided by its i.i.d. noise floor at the same n (root-mean-square over ``--floor-repeats``
  exact samples, ``metrics.noise_floor``); the value is the RMS over ``--repeats`` independent runs;
* ``mw_err``: max_k |mode fraction - expected fraction| (``metrics.mode_weight_error`` against
  ``metrics.expected_mode_weights`` from 200 000 exact samples), RMS over runs, and its floor;
* ``time_s``: median wall time of one sampler run (score evaluations included).

Parts (``--parts``):
  exact   - initialised from the exact p_T (``x_init = mixture.marginal(sde, sde.T).sample(n)``): only the
            sampler's own error is left;
  prior   - initialised from the SDE's prior (``sde.prior_sample``): adds the prior mismatch p_T != prior;
  trained - a ``nets.ScoreMLP`` trained with ``training.train`` on one target, then the same sweep with its
            score (exact p_T initialisation): separates the network's error from the sampler's.
  low_nfe - issue 8: at NFE 10, 20, 50 (``--low-nfes``), every fixed-step scoresde sampler (DDIM, DDPM,
            ReverseSDE-EM, PC, ODE Euler/Heun/RK4, EDMHeun, DPM-Solver++ 2M/3M/2M-SDE, UniPC 2/3) on every grid
            (uniform, karras, log_snr; plus Karras grids with a larger sigma_min for the Karras-default solvers),
            started from the prior of ``VPSDE()``, n = ``--low-n`` (20 000) per run, ``--low-seeds`` seeds; and
            the peers of ``benchmarks/peers.py`` (diffusers, k-diffusion) with the same exact score and the same
            standard-normal draws.  Metrics: ``metrics.within_mode_errors`` (worst within-mode mean error,
            covariance error, mode-weight error) over ``metrics.within_mode_floor``; the report gives the best
            scoresde cell, the best peer and their ratio per target and NFE.  Writes ``quality_low_nfe.*``.
            ``--quick`` (n = 2000, 1 seed) writes ``results/quick/quality_low_nfe_quick.*``.

Families and their NFE (nominal grid value -> sampler arguments; the *actual* NFE is reported):
  Langevin          VP  Langevin(num_steps=NFE), score at t_min, default step 0.005
  AnnealedLangevin  VE  AnnealedLangevin(num_levels=10, steps_per_level=round((NFE-1)/10)), NFE = 10 spl + 1
  ReverseSDE-EM     VP  ReverseSDE(EulerMaruyamaPredictor, num_steps=NFE)
  PC                VP  PredictorCorrector(ReverseDiffusion + AnnealedLangevinCorrector(snr 0.1), num_steps=NFE/2)
  DDPM              VP  DDPM(num_steps=NFE, variance="large")
  DDIM              VP  DDIM(num_steps=NFE, eta=0)
  ODE-Euler         VP  ProbabilityFlowODE("euler", num_steps=NFE)
  ODE-Heun          VP  ProbabilityFlowODE("heun", num_steps=(NFE+1)//2), NFE = 2 num_steps - 1
  ODE-RK45          VP  ProbabilityFlowODE("RK45", rtol=atol=tol) over a tolerance grid (NFE is the solver's)

Outputs ``benchmarks/results/quality_vs_nfe.{json,md,png}`` (+ ``_samples.png``, ``_trained_score.png``);
``--quick`` writes ``results/quick/quality_vs_nfe_quick.*`` instead, so a smoke run never overwrites the full results.
Run ``python benchmarks/quality_vs_nfe.py`` (full) or ``--quick`` (smoke run, about a minute).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import statistics
import time
from pathlib import Path

from _common import RESULTS, Timer, command_line, log, machine, machine_line, md_table, set_threads, write_results

import torch  # noqa: E402

from scoresde import grids, samplers, toy  # noqa: E402
from scoresde.evaluation.metrics import within_mode_errors, within_mode_floor  # noqa: E402
from scoresde.data.scale import prior_mismatch  # noqa: E402
from scoresde.data.datasets import MixtureDataset  # noqa: E402
from scoresde.evaluation.metrics import expected_mode_weights, mode_weight_error, noise_floor, sliced_w2_to_mixture  # noqa: E402
from scoresde.models.mlp import ScoreMLP  # noqa: E402
from scoresde.plotting import plot_quality_vs_nfe, plot_sample_grid, plot_score_field  # noqa: E402
from scoresde.samplers import (  # noqa: E402
    DDIM, DDPM, AnnealedLangevin, Langevin, PredictorCorrector, ProbabilityFlowODE, ReverseSDE,
)
from scoresde.sdes import VESDE, VPSDE  # noqa: E402
from scoresde.training import TrainConfig, train  # noqa: E402

NAME = "quality_vs_nfe"
SDES = {"vp": VPSDE(), "ve": VESDE()}
FAMILIES = {  # name -> (sde, nominal NFE -> sampler)
    "Langevin": ("vp", lambda n: Langevin(num_steps=n)),
    "AnnealedLangevin": ("ve", lambda n: AnnealedLangevin(num_levels=10, steps_per_level=max(1, round((n - 1) / 10)))),
    "ReverseSDE-EM": ("vp", lambda n: ReverseSDE(num_steps=n)),
    "PC": ("vp", lambda n: PredictorCorrector(num_steps=max(1, n // 2))),
    "DDPM": ("vp", lambda n: DDPM(num_steps=n)),
    "DDIM": ("vp", lambda n: DDIM(num_steps=n)),
    "ODE-Euler": ("vp", lambda n: ProbabilityFlowODE(method="euler", num_steps=n)),
    "ODE-Heun": ("vp", lambda n: ProbabilityFlowODE(method="heun", num_steps=max(2, (n + 1) // 2))),
}
RK45 = "ODE-RK45"
TRAINED_FAMILIES = ("ReverseSDE-EM", "PC", "DDPM", "DDIM", "ODE-Euler", "ODE-Heun")
GOOD, OK = 1.1, 1.2  # thresholds on sw2_ratio


def rk45(tol: float) -> ProbabilityFlowODE:
    return ProbabilityFlowODE(method="RK45", rtol=tol, atol=tol)


class Target:
    """One exact target with its fixed metric directions, floors and expected mode fractions."""

    def __init__(self, name: str, n: int, num_projections: int, floor_repeats: int, seed: int):
        self.name, self.n = name, n
        self.mixture = toy.TARGETS[name]()
        g = torch.Generator().manual_seed(seed)
        u = torch.randn(num_projections, self.mixture.dim, generator=g, dtype=torch.float64)
        self.sw2 = functools.partial(sliced_w2_to_mixture, directions=u)
        self.expected = expected_mode_weights(self.mixture, 200_000, generator=g)
        self.mw = lambda x, mix: mode_weight_error(x, mix, self.expected)
        sample = lambda k, gen: self.mixture.sample(k, gen)  # noqa: E731
        self.sw2_floor = noise_floor(self.sw2, sample, n, floor_repeats, g, reference=self.mixture)
        self.mw_floor = noise_floor(self.mw, sample, n, floor_repeats, g, reference=self.mixture)

    def resolution(self, repeats: int) -> float:
        """Approximate sd of sw2_ratio for a perfect sampler averaged (RMS) over ``repeats`` runs."""
        sq = [v * v for v in self.sw2_floor.values]
        return statistics.stdev(sq) / (2 * statistics.fmean(sq) * math.sqrt(repeats))


def run_cell(target: Target, score_fn, sde, sampler, init: str, repeats: int, seed: int, keep: bool = False):
    """Run one (sampler, setting) ``repeats`` times; aggregate metrics; optionally keep the first samples."""
    values, errors, times, cpu, nfes, kept, finite = [], [], [], [], [], None, True
    for r in range(repeats):
        g_init = torch.Generator().manual_seed(seed + 7919 * r)  # common random numbers across samplers
        if init == "prior":
            x_init = sde.prior_sample((target.n, target.mixture.dim), g_init)
        else:
            x_init = target.mixture.marginal(sde, sde.T).sample(target.n, g_init)
        g = torch.Generator().manual_seed(seed + 7919 * r + 1)
        with Timer() as tm:
            result = sampler.run(score_fn, sde, x_init=x_init, generator=g)
        times.append(tm.seconds)
        cpu.append(tm.cpu_seconds)
        nfes.append(result.nfe)
        x = result.x
        if keep and r == 0:
            kept = x[:3000].clone()
        if not bool(torch.isfinite(x).all()):
            finite = False
            values.append(math.inf)
            errors.append(math.nan)
            continue
        values.append(target.sw2(x, target.mixture))
        errors.append(target.mw(x, target.mixture))
    sw2 = math.sqrt(statistics.fmean(v * v for v in values))
    mw = math.sqrt(statistics.fmean(e * e for e in errors)) if finite else math.nan
    row = {
        "target": target.name, "init": init, "nfe": max(nfes), "nfe_runs": nfes, "finite": finite,
        "sw2": sw2, "sw2_runs": values, "sw2_floor_rms": target.sw2_floor.rms, "sw2_ratio": sw2 / target.sw2_floor.rms,
        "mw_err": mw, "mw_floor_rms": target.mw_floor.rms, "mw_ratio": mw / target.mw_floor.rms,
        "time_s": statistics.median(times), "time_runs": times, "cpu_s": statistics.median(cpu), "repeats": repeats,
    }
    return row, kept


def sweep(targets, families, nfes, tols, init, repeats, seed, score_of=None, keep_for=None, tag=None):
    """All cells of one part; ``score_of(target, sde)`` defaults to the exact score."""
    rows, kept = [], {}
    for ti, target in enumerate(targets):
        for fi, family in enumerate(families):
            sde_name = FAMILIES[family][0] if family != RK45 else "vp"
            sde = SDES[sde_name]
            score = score_of(target, sde) if score_of else target.mixture.score_fn(sde)
            settings = [("tol", t) for t in tols] if family == RK45 else [("nominal_nfe", n) for n in nfes]
            for key, value in settings:
                sampler = rk45(value) if family == RK45 else FAMILIES[family][1](value)
                keep = keep_for is not None and target.name == keep_for and value == 20 and key == "nominal_nfe"
                cell_seed = seed + 1_000_003 * ti + (0 if init == "exact" else 17)
                row, x = run_cell(target, score, sde, sampler, init, repeats, cell_seed, keep)
                row.update(part=tag or init, sampler=family, sde=sde_name, **{key: value})
                if family == RK45:
                    row["nominal_nfe"] = None
                rows.append(row)
                if x is not None:
                    kept[family] = x
                log(f"[{row['part']:7s}] {target.name:20s} {family:16s} {key}={value:<7g} nfe={row['nfe']:<5d} "
                    f"sw2/floor={row['sw2_ratio']:7.3f} mw_err={row['mw_err']:.4f} {row['time_s']:.2f}s (cpu {row['cpu_s']:.2f}s)")
    return rows, kept


# -- trained model ---------------------------------------------------------------------------------
def train_model(target: Target, steps: int, seed: int):
    sde = SDES["vp"]
    model = ScoreMLP(sde, (target.mixture.dim,), generator=torch.Generator().manual_seed(seed))
    with Timer() as tm:
        result = train(model, MixtureDataset(target.mixture), TrainConfig(num_steps=steps, seed=seed))
    ema = result.ema_model.eval()
    g = torch.Generator().manual_seed(seed + 1)
    errors = []
    exact = target.mixture.score_fn(sde)
    for t in (0.01, 0.05, 0.2, 0.5, 1.0):
        x0 = target.mixture.sample(target.n, g)
        tb = torch.full((target.n,), t)
        xt = sde.perturb(x0, tb, torch.randn(x0.shape, generator=g))
        with torch.no_grad():
            s, s_star = ema.score_fn(xt, tb), exact(xt, tb)
        rel = float(((s - s_star) ** 2).sum(1).mean().sqrt() / (s_star**2).sum(1).mean().sqrt())
        errors.append({"t": t, "sigma": float(sde.sigma(tb[:1])), "relative_score_error": rel})
    info = {"target": target.name, "sde": "vp", "train_steps": steps, "train_seconds": tm.seconds,
            "final_loss": float(result.losses[-100:].mean()), "parameters": sum(p.numel() for p in model.parameters()),
            "score_error": errors}
    return ema, info


# -- report (built from the JSON payload alone, so --report-only can redo it) ----------------------------
DETERMINISTIC = ("DDIM", "ODE-Euler", "ODE-Heun")


def fmt(v, digits=2):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "diverged" if v is not None and math.isinf(v) else "—"
    return f"{v:.{digits}f}"


def grid_table(rows, nfes, key, digits):
    out = []
    for target in dict.fromkeys(r["target"] for r in rows):
        for family in dict.fromkeys(r["sampler"] for r in rows if r["target"] == target and r["sampler"] != RK45):
            cells = {r["nominal_nfe"]: r for r in rows if r["target"] == target and r["sampler"] == family}
            out.append([target, family] + [fmt(cells[n][key], digits) if n in cells else "" for n in nfes])
    return md_table(["target", "sampler"] + [f"NFE {n}" for n in nfes], out)


def num(v) -> float:
    """A metric value from a row; None (a non-finite value in the JSON) reads as +inf."""
    return math.inf if v is None else float(v)


def stays_below(values: dict, nfes, threshold):
    """Smallest grid NFE from which every larger grid NFE has a value <= threshold; None if never."""
    best = None
    for n in sorted(nfes, reverse=True):
        v = values.get(n)
        if v is not None and math.isfinite(v) and v <= threshold:
            best = n
        else:
            break
    return best


def paired_rows(exact):
    """Deterministic samplers against the exact flow of the *same* initial points (RK45 at its tightest tol).

    Both share x_init (common random numbers), so their metric noise largely cancels: sw2 / sw2_ref
    measures the discretisation error alone, far more precisely than sw2 / floor.
    """
    out = []
    for target in dict.fromkeys(r["target"] for r in exact):
        refs = [r for r in exact if r["target"] == target and r["sampler"] == RK45]
        if not refs:
            continue
        ref = min(refs, key=lambda r: r["tol"])
        for r in exact:
            if r["target"] == target and r["sampler"] in DETERMINISTIC:
                out.append(dict(r, paired_ratio=num(r["sw2"]) / num(ref["sw2"]), reference_tol=ref["tol"]))
    return out


def summarise(payload):
    args, floors = payload["args"], payload["floors"]
    nfes, targets = args["nfes"], list(floors)
    exact = [r for r in payload["rows"] if r["part"] == "exact"]
    lines, summary = [], {"nfe20": {}, "recommended_nfe": {}, "deterministic_vs_exact_flow": {}}
    table = []
    for t in targets:
        at20 = sorted((r for r in exact if r["target"] == t and r["nominal_nfe"] == 20), key=lambda r: num(r["sw2_ratio"]))
        if not at20:
            continue
        best = at20[0]
        summary["nfe20"][t] = {"best": best["sampler"], "best_ratio": best["sw2_ratio"],
                               "within_1.1": [r["sampler"] for r in at20 if num(r["sw2_ratio"]) <= GOOD]}
        table.append([t, f"{best['sampler']} ({fmt(best['sw2_ratio'])}, NFE {best['nfe']})",
                      ", ".join(f"{r['sampler']} {fmt(r['sw2_ratio'])}" for r in at20 if num(r["sw2_ratio"]) <= GOOD)
                      or "none",
                      f"±{floors[t]['ratio_sd_perfect_sampler']:.2f}"])
    if table:
        lines += ["## Which sampler reaches <= 1.1x the floor at NFE 20 (exact score, exact p_T)", "",
                  md_table(["target", "best (ratio, actual NFE)", "all with ratio <= 1.1", "ratio sd of a perfect sampler"],
                           table), ""]
    table = []
    for family in dict.fromkeys(r["sampler"] for r in exact if r["sampler"] != RK45):
        per = {t: stays_below({r["nominal_nfe"]: r["sw2_ratio"] for r in exact if r["sampler"] == family
                               and r["target"] == t}, nfes, OK) for t in targets}
        worst = None if any(v is None for v in per.values()) else max(per.values())
        summary["recommended_nfe"][family] = {"all_targets": worst, **per}
        table.append([family, worst if worst is not None else f"> {max(nfes)}"]
                     + [v if v is not None else f"> {max(nfes)}" for v in per.values()])
    rk = [r for r in exact if r["sampler"] == RK45]
    if rk:
        per = {}
        for t in targets:
            ok = sorted((r for r in rk if r["target"] == t and num(r["sw2_ratio"]) <= OK), key=lambda r: r["nfe"])
            per[t] = f"{ok[0]['nfe']} (tol {ok[0]['tol']:g})" if ok else "not reached"
        summary["recommended_nfe"][RK45] = per
        table.append([RK45, "see per-target"] + list(per.values()))
    if table:
        lines += ["## Recommended NFE: smallest grid NFE from which sw2/floor stays <= 1.2 (exact score, exact p_T)", "",
                  md_table(["sampler", "all targets"] + targets, table), ""]
    paired = paired_rows(exact)
    if paired:
        table = []
        for family in DETERMINISTIC:
            cells = []
            for t in targets:
                vals = {r["nominal_nfe"]: r["paired_ratio"] for r in paired if r["sampler"] == family and r["target"] == t}
                if not vals:
                    continue
                n11, n12 = stays_below(vals, nfes, GOOD), stays_below(vals, nfes, OK)
                summary["deterministic_vs_exact_flow"].setdefault(family, {})[t] = {"1.1": n11, "1.2": n12,
                                                                                    "at_20": vals.get(20)}
                cells.append(f"{fmt(vals.get(20))} / {n11 or '> ' + str(max(nfes))} / {n12 or '> ' + str(max(nfes))}")
            table.append([family] + cells)
        lines += ["## Deterministic samplers against the exact flow of the same starting points (low-noise view)", "",
                  "sw2 of the sampler / sw2 of ODE-RK45 at the tightest tolerance from the same x_init (both runs share "
                  "their sampling noise, so this isolates the discretisation error).  Cells: ratio at NFE 20 / "
                  "smallest NFE from which it stays <= 1.1 / <= 1.2.", "",
                  md_table(["sampler"] + targets, table), ""]
    return lines, summary


def report(payload) -> tuple[str, dict]:
    args, floors, rows = payload["args"], payload["floors"], payload["rows"]
    exact = [r for r in rows if r["part"] == "exact"]
    name = payload["benchmark"]
    md = [f"# Quality vs NFE ({'quick' if args['quick'] else 'full'} run)", "",
          f"Command: `{payload['command']}`  ", f"Machine: {machine_line(payload['machine'])}  ",
          f"Total run time: {payload['total_seconds']:.0f} s.  n = {args['n']} samples per run, {args['repeats']} run(s) "
          f"per cell (exact part), floors from {args['floor_repeats']} exact samples, {args['projections']} fixed "
          "directions.", "",
          "sw2/floor = sliced W2 to the exact mixture (RMS over runs) / its i.i.d. floor (RMS) at the same n; "
          "1 is as good as an exact sample.  mw_err = max_k |mode fraction - expected|.  "
          "All samplers of a part share their initial points (common random numbers): the deterministic ones "
          "(DDIM, ODE-*) converge to nearly the same sample, whose own luck is the ODE-RK45 value at its tightest tolerance; a "
          "perfect sampler's ratio scatters by the sd in the last column.", "",
          md_table(["target", "sw2 floor (rms)", "floor sd / rms", "mw_err floor (rms)", "ratio sd of a perfect sampler"],
                   [[t, fmt(f["sw2"]["rms"], 4), fmt(f["sw2"]["std"] / f["sw2"]["rms"]), fmt(f["mw"]["rms"], 4),
                     f"±{f['ratio_sd_perfect_sampler']:.2f}"] for t, f in floors.items()]), ""]
    lines, summary = summarise(payload)
    md += lines
    nfes = args["nfes"]
    if exact:
        md += ["## sw2 / floor, exact score, exact p_T initialisation", "", grid_table(exact, nfes, "sw2_ratio", 2), "",
               "## Mode-weight error, exact score, exact p_T initialisation", "", grid_table(exact, nfes, "mw_err", 4), "",
               "## Time per run (s), exact score: wall time (median over runs)", "", grid_table(exact, nfes, "time_s", 2), "",
               "## Time per run (s), exact score: CPU time of the process (median; ~ wall time on an idle machine)", "",
               grid_table(exact, nfes, "cpu_s", 2), "",
               "Actual NFE where it differs from the nominal grid value: AnnealedLangevin 10 x round((NFE-1)/10) + 1, "
               "ODE-Heun 2 ((NFE+1)//2) - 1, PC 2 (NFE//2).", ""]
    rk = [r for r in rows if r["sampler"] == RK45]
    if rk:
        md += ["## ODE-RK45 (adaptive): tolerance -> NFE", "",
               md_table(["part", "target", "rtol = atol", "NFE", "sw2/floor", "mw_err", "wall (s)", "CPU (s)"],
                        [[r["part"], r["target"], f"{r['tol']:g}", r["nfe"], fmt(r["sw2_ratio"]), fmt(r["mw_err"], 4),
                          fmt(r["time_s"]), fmt(r["cpu_s"])] for r in rk]), ""]
    prior = [r for r in rows if r["part"] == "prior"]
    if prior:
        table = []
        for r in prior:
            match = next((e for e in exact if e["target"] == r["target"] and e["sampler"] == r["sampler"]
                          and e.get("nominal_nfe") == r.get("nominal_nfe") and e.get("tol") == r.get("tol")), None)
            table.append([r["target"], r["sampler"], r["sde"], r["nfe"], fmt(match["sw2_ratio"]) if match else "",
                          fmt(r["sw2_ratio"]), fmt(match["mw_err"], 4) if match else "", fmt(r["mw_err"], 4)])
        md += ["## Prior mismatch: exact p_T vs prior initialisation (prior: 1 run per cell)", "",
               md_table(["target", "sampler", "SDE", "NFE", "sw2/floor exact p_T", "sw2/floor prior",
                         "mw_err exact p_T", "mw_err prior"], table), ""]
    trained = [r for r in rows if r["part"] == "trained"]
    if trained:
        ti = payload["trained"]
        md += [f"## Trained ScoreMLP on {ti['target']} (VP, {ti['parameters']} parameters, {ti['train_steps']} steps, "
               f"{ti['train_seconds']:.0f} s, final loss {ti['final_loss']:.3f}; EMA weights)", "",
               "Relative score error sqrt(E|s_theta - s|^2 / E|s|^2) on x_t ~ p_t: "
               + ", ".join(f"t={e['t']:g}: {e['relative_score_error']:.3f}" for e in ti["score_error"]), ""]
        table = []
        for r in trained:
            match = next((e for e in exact if e["target"] == r["target"] and e["sampler"] == r["sampler"]
                          and e.get("nominal_nfe") == r.get("nominal_nfe")
                          and (r["sampler"] != RK45 or e.get("tol") == r.get("tol"))), None)
            table.append([r["sampler"], r["nfe"], fmt(match["sw2_ratio"]) if match else "", fmt(r["sw2_ratio"]),
                          fmt(match["mw_err"], 4) if match else "", fmt(r["mw_err"], 4), fmt(r["time_s"]), fmt(r["cpu_s"])])
        md += [md_table(["sampler", "NFE", "sw2/floor exact score", "sw2/floor trained", "mw_err exact", "mw_err trained",
                         "wall (s) trained", "CPU (s) trained"], table), ""]
    md += [f"Figures: `{name}.png` (sw2/floor vs NFE), `{name}_samples.png` (samples at NFE 20)"
           + (f", `{name}_trained_score.png` (trained vs exact score)" if trained else "") + "."]
    if payload.get("report_regenerated_by"):
        md += ["", f"Tables regenerated from the JSON by `{payload['report_regenerated_by']}`."]
    return "\n".join(md), summary


def plot_nfe(payload, path):
    exact = [r for r in payload["rows"] if r["part"] == "exact"]
    if exact:
        plot_quality_vs_nfe(exact, y="sw2_ratio", title="sliced W2 / noise floor, exact score, exact p_T", path=path)


# -- part low_nfe (issue 8): within-mode errors at NFE 10-50, scoresde samplers x grids vs the peers ------
LOW_NAME = "quality_low_nfe"
LOW_SDE = VPSDE()  # the library's default SDE; every scoresde sampler starts from its prior N(0, I)
LOW_GRIDS = ("uniform", "karras", "log_snr")
# Extra, informative: Karras grids ending at a larger sigma_ve than the SDE's own sigma_ve(t_min) = 1e-3, for the
# solvers whose default grid is Karras (a low-NFE grid should not spend steps where nothing changes).


@dataclasses.dataclass(frozen=True)
class UniformToEnd:
    """Grid object: uniform in t from T down to T / num_steps, not to t_min: diffusers' default "linspace"
    timesteps (999, 899, ..., 100 at 10 steps) on the continuous VP, whose final step is the denoise from
    sigma_ve(T / N) (0.34 at N = 10) and so spends no evaluation at tiny sigma."""

    def __call__(self, sde, num_steps: int) -> torch.Tensor:
        return torch.linspace(sde.T, sde.T / num_steps, num_steps, dtype=torch.float64)


_EXTRA_FOR = ("EDMHeun", "DPM++2M", "DPM++3M", "UniPC-2")
LOW_EXTRA_GRIDS = {**{f"karras smin={s:g}": (grids.Karras(sigma_min=s), _EXTRA_FOR) for s in (0.03, 0.1)},
                   "uniform to T/N": (UniformToEnd(), _EXTRA_FOR)}
LOW_SAMPLERS = {  # label -> (class exported by scoresde.samplers, its hyperparameters besides num_steps / grid)
    "DDIM": ("DDIM", {}),
    "DDPM": ("DDPM", {}),
    "ReverseSDE-EM": ("ReverseSDE", {}),
    "PC": ("PredictorCorrector", {}),
    "ODE-Euler": ("ProbabilityFlowODE", {"method": "euler"}),
    "ODE-Heun": ("ProbabilityFlowODE", {"method": "heun"}),
    "ODE-RK4": ("ProbabilityFlowODE", {"method": "rk4"}),
    "EDMHeun": ("EDMHeun", {}),
    "DPM++2M": ("DPMSolverPP", {"order": 2}),
    "DPM++3M": ("DPMSolverPP", {"order": 3}),
    "DPM++2M-SDE": ("DPMSolverPP", {"order": 2, "eta": 1.0}),
    "UniPC-2": ("UniPC", {"order": 2}),
    "UniPC-3": ("UniPC", {"order": 3}),
}
WM = ("max_mean_error", "max_cov_error", "weight_error")  # scoresde.evaluation.metrics.within_mode_errors scalars
WM_SHORT = {"max_mean_error": "mean", "max_cov_error": "cov", "weight_error": "weight"}
LOW_TARGETS = {10: 2.0, 20: 1.2}  # nominal NFE -> allowed worst ratio to the floor (issue 8)


def low_sampler_factories() -> tuple[dict, dict]:
    """label -> (num_steps, grid) -> sampler, for the samplers exported now; and label -> why missing."""
    found, missing = {}, {}
    for label, (cls_name, kw) in LOW_SAMPLERS.items():
        cls = getattr(samplers, cls_name, None)
        if cls is None:
            missing[label] = f"scoresde.samplers has no {cls_name} (yet)"
            continue
        found[label] = functools.partial(lambda c, k, steps, grid: c(num_steps=steps, grid=grid, **k), cls, kw)
    return found, missing


def fit_num_steps(make, grid: str, nominal: int, mixture) -> tuple[int, int]:
    """The largest num_steps whose actual NFE is <= ``nominal`` (dry runs on 2 points): (num_steps, NFE)."""
    x = LOW_SDE.prior_sample((2, mixture.dim), torch.Generator().manual_seed(0))

    def nfe(steps):
        return make(steps, grid).run(mixture.score_fn(LOW_SDE), LOW_SDE, x_init=x.clone(),
                                     generator=torch.Generator().manual_seed(0)).nfe

    steps, got = nominal, nfe(nominal)
    while got > nominal and steps > 2:
        steps = max(2, min(steps - 1, steps * nominal // got))
        got = nfe(steps)
    while True:  # NFE is increasing in num_steps: step up while it still fits
        up = nfe(steps + 1)
        if up > nominal:
            return steps, got
        steps, got = steps + 1, up


def _errors(x: torch.Tensor, mixture) -> dict:
    if not bool(torch.isfinite(x).all()):
        return {k: math.inf for k in WM}
    e = within_mode_errors(x, mixture)
    return {k: float(e[k]) for k in WM}


def low_nfe_sweep(args, out: Path, name: str) -> None:
    """Run the low-NFE part and write ``<name>.{json,md,png}``."""
    from peers import available_peers  # noqa: PLC0415  (diffusers is optional)

    factories, missing = low_sampler_factories()
    peers, peer_status = available_peers()
    if args.low_samplers:
        factories = {k: v for k, v in factories.items() if k in args.low_samplers}
    if args.no_peers:
        peers = []
    info = machine()
    rows, floors, mismatch, steps_of = [], {}, {}, {}
    with Timer() as total:
        for ti, tname in enumerate(args.targets):
            mixture = toy.TARGETS[tname]()
            score = mixture.score_fn(LOW_SDE)
            g = torch.Generator().manual_seed(args.seed + 101 * ti)
            floors[tname] = within_mode_floor(mixture, args.n, args.floor_repeats, g)
            mismatch[tname] = prior_mismatch(mixture, LOW_SDE).as_dict()
            log(f"floor {tname}: " + ", ".join(f"{k} {v['mean']:.4f} (p95 {v['p95']:.4f})" for k, v in floors[tname].items())
                + f"; prior mismatch TV bound {mismatch[tname]['tv_bound']:.4f}")
            cells = []  # (kind, label, grid, nominal, runner)
            for label, make in factories.items():
                grid_objs = {g: g for g in LOW_GRIDS}
                if not args.no_extra_grids:
                    grid_objs.update({k: g for k, (g, which) in LOW_EXTRA_GRIDS.items() if label in which})
                for grid, grid_obj in grid_objs.items():
                    for nominal in args.low_nfes:
                        key = (label, grid, nominal)
                        if key not in steps_of:
                            steps_of[key] = fit_num_steps(make, grid_obj, nominal, mixture)
                        sampler = make(steps_of[key][0], grid_obj)
                        cells.append(("scoresde", label, grid, nominal, sampler))
            for peer in peers:
                for nominal in args.low_nfes:
                    cells.append(("peer", peer.name, "", nominal, peer))
            per_cell = {c[:4]: {"values": [], "nfe": None, "time_s": []} for c in cells}
            for seed in range(args.low_seeds):
                gz = torch.Generator().manual_seed(args.seed + 7919 * seed + 13 * ti)
                z = torch.randn(args.n, mixture.dim, generator=gz)  # common random numbers for every sampler
                for kind, label, grid, nominal, obj in cells:
                    with Timer() as tm:
                        if kind == "scoresde":
                            res = obj.run(score, LOW_SDE, x_init=z * LOW_SDE.prior_std,
                                          generator=torch.Generator().manual_seed(args.seed + seed + 1))
                            x, nfe = res.x, res.nfe
                        else:
                            x, nfe = obj.sample(mixture, z.clone(), nominal, LOW_SDE, seed=args.seed + seed + 1)
                    cell = per_cell[(kind, label, grid, nominal)]
                    cell["values"].append(_errors(x.reshape(args.n, -1), mixture))
                    cell["nfe"], cell["time_s"] = nfe, cell["time_s"] + [tm.seconds]
                log(f"{tname}: seed {seed} done ({total_time(total)})")
            for (kind, label, grid, nominal), cell in per_cell.items():
                row = {"target": tname, "kind": kind, "sampler": label, "grid": grid, "nominal_nfe": nominal,
                       "nfe": cell["nfe"], "num_steps": steps_of.get((label, grid, nominal), (None,))[0],
                       "runs": cell["values"], "time_s": statistics.median(cell["time_s"])}
                for k in WM:
                    row[k] = statistics.fmean(v[k] for v in cell["values"])
                    row[k + "_ratio"] = row[k] / floors[tname][k]["mean"]
                row["worst_ratio"] = max(row[k + "_ratio"] for k in WM)
                row["worst_metric"] = max(WM, key=lambda k: row[k + "_ratio"])
                rows.append(row)
            # diagnostic: the best scoresde cell of each NFE again, started from the exact p_T instead of the prior
            for nominal in args.low_nfes:
                best = min((r for r in rows if r["target"] == tname and r["kind"] == "scoresde"
                            and r["nominal_nfe"] == nominal), key=lambda r: r["worst_ratio"], default=None)
                if best is None:
                    continue
                grid_obj = LOW_EXTRA_GRIDS[best["grid"]][0] if best["grid"] in LOW_EXTRA_GRIDS else best["grid"]
                sampler = factories[best["sampler"]](best["num_steps"], grid_obj)
                vals = []
                for seed in range(args.low_seeds):
                    gx = torch.Generator().manual_seed(args.seed + 7919 * seed + 13 * ti + 5)
                    x0 = mixture.marginal(LOW_SDE, LOW_SDE.T).sample(args.n, gx)
                    res = sampler.run(score, LOW_SDE, x_init=x0, generator=torch.Generator().manual_seed(args.seed + seed + 1))
                    vals.append(_errors(res.x.reshape(args.n, -1), mixture))
                row = {"target": tname, "kind": "scoresde, exact p_T start", "sampler": best["sampler"], "grid": best["grid"],
                       "nominal_nfe": nominal, "nfe": best["nfe"], "num_steps": best["num_steps"], "runs": vals}
                for k in WM:
                    row[k] = statistics.fmean(v[k] for v in vals)
                    row[k + "_ratio"] = row[k] / floors[tname][k]["mean"]
                row["worst_ratio"] = max(row[k + "_ratio"] for k in WM)
                row["worst_metric"] = max(WM, key=lambda k: row[k + "_ratio"])
                rows.append(row)
    payload = {"benchmark": name, "command": command_line(), "machine": info, "args": vars(args),
               "total_seconds": total.seconds, "sde": repr(LOW_SDE), "floors": floors, "prior_mismatch": mismatch,
               "peer_status": peer_status, "missing_samplers": missing, "rows": rows}
    markdown, payload["summary"] = low_nfe_report(payload)
    paths = write_results(name, payload, markdown, out)
    plot_low_nfe(payload, out / f"{name}.png")
    print(markdown)
    log(f"wrote {paths[0]}, {paths[1]} and {name}.png in {total.seconds:.0f} s")


def total_time(timer) -> str:
    return f"{time.perf_counter() - timer._start:.0f} s"  # noqa: SLF001


def _perfect_sd(floor: dict, seeds: int) -> float:
    return (floor["p95"] - floor["p05"]) / 3.29 / floor["mean"] / math.sqrt(seeds)


def _ratios(r) -> str:
    return "/".join(f"{r[k + '_ratio']:.2f}" for k in WM)


def low_nfe_report(payload) -> tuple[str, dict]:
    args, rows, floors = payload["args"], payload["rows"], payload["floors"]
    nfes, targets = args["low_nfes"], list(floors)
    md = [f"# Quality at low NFE, exact score, from the prior ({'quick' if args['quick'] else 'full'} run)", "",
          f"Command: `{payload['command']}`  ", f"Machine: {machine_line(payload['machine'])}  ",
          f"Total run time: {payload['total_seconds']:.0f} s.  n = {args['n']} samples per run, mean over "
          f"{args['low_seeds']} seed(s) (common random numbers: every sampler of a seed starts from the same "
          f"standard-normal draw z), floors from {args['floor_repeats']} i.i.d. exact samples of the same n.  "
          f"scoresde: {payload['sde']}, x_T = prior_std z.  Peers: " + "; ".join(payload["peer_status"].values()) + ".", "",
          "Metrics (`scoresde.evaluation.metrics.within_mode_errors`, soft assignment by exact responsibilities): worst "
          "within-mode mean error (in component stds), worst relative covariance error, max mode-weight error; "
          "each divided by the mean of its i.i.d. floor.  **ratio m/c/w** = mean/cov/weight ratios; **worst** = "
          "their maximum.  Targets (issue 8): worst <= 1.2 at NFE 20 and <= 2 at NFE 10; scoresde's best <= the best "
          "peer's at every NFE.  NFE is the actual number of score evaluations (final denoise included), the "
          "largest not above the nominal value.", ""]
    if payload["missing_samplers"]:
        md += ["Not run (missing): " + ", ".join(f"{k} ({v})" for k, v in payload["missing_samplers"].items()), ""]
    md += ["## Floors and prior mismatch", "",
           md_table(["target"] + [f"{WM_SHORT[k]} floor (mean; p95/mean; ±sd)" for k in WM]
                    + ["prior mismatch KL (nats)", "TV bound"],
                    [[t] + [f"{floors[t][k]['mean']:.4g}; {floors[t][k]['p95'] / floors[t][k]['mean']:.2f}; "
                            f"±{_perfect_sd(floors[t][k], args['low_seeds']):.2f}" for k in WM]
                     + [f"{payload['prior_mismatch'][t]['kl']:.2g}", f"{payload['prior_mismatch'][t]['tv_bound']:.4f}"]
                     for t in targets]), "",
           "p95/mean: a perfect sampler's single-seed ratio exceeds this value 5 % of the time.  ±sd: the standard "
           f"deviation of a perfect sampler's ratio averaged over the {args['low_seeds']} seed(s), from the floor's "
           "5-95 % range ((p95 - p05) / 3.29 / mean / sqrt(seeds), normal approximation): ratios within about 2 sd "
           "of 1 cannot be told from an exact sample, so the 1.2 target is at the resolution limit for the weight error.  TV bound: `scoresde.data.scale.prior_mismatch` — the share of probability mass that a start "
           "from the prior instead of p_T can misplace (Pinsker on the moment-matched KL).", ""]
    summary, table = {}, []
    for t in targets:
        for nfe in nfes:
            cell = [r for r in rows if r["target"] == t and r["nominal_nfe"] == nfe]
            ours = min((r for r in cell if r["kind"] == "scoresde"), key=lambda r: r["worst_ratio"], default=None)
            peer = min((r for r in cell if r["kind"] == "peer"), key=lambda r: r["worst_ratio"], default=None)
            std = min((r for r in cell if r["kind"] == "scoresde" and r["grid"] in LOW_GRIDS),
                      key=lambda r: r["worst_ratio"], default=None)
            exact = next((r for r in cell if r["kind"].endswith("exact p_T start")), None)
            rel = ours["worst_ratio"] / peer["worst_ratio"] if ours and peer else math.nan
            goal = LOW_TARGETS.get(nfe)
            met = "" if goal is None or ours is None else ("yes" if ours["worst_ratio"] <= goal else "**no**")
            summary[f"{t}/{nfe}"] = {"best": ours and f"{ours['sampler']} {ours['grid']}", "best_worst": ours and ours["worst_ratio"],
                                     "peer": peer and peer["sampler"], "peer_worst": peer and peer["worst_ratio"],
                                     "ratio_to_peer": rel, "target_met": met,
                                     "best_standard_grid": std and f"{std['sampler']} {std['grid']}",
                                     "best_standard_grid_worst": std and std["worst_ratio"]}
            table.append([t, nfe,
                          f"{ours['sampler']} {ours['grid']} ({ours['nfe']})" if ours else "",
                          _ratios(ours) if ours else "", f"**{ours['worst_ratio']:.2f}**" if ours else "",
                          f"{peer['sampler']} ({peer['nfe']})" if peer else "", _ratios(peer) if peer else "",
                          f"{peer['worst_ratio']:.2f}" if peer else "", f"{rel:.2f}" if math.isfinite(rel) else "",
                          met, f"{std['sampler']} {std['grid']}: {std['worst_ratio']:.2f}" if std else "",
                          _ratios(exact) if exact else ""])
    md += ["## Best scoresde sampler vs best peer", "",
           md_table(["target", "NFE", "best scoresde (sampler grid (NFE))", "ratio m/c/w", "worst",
                     "best peer (NFE)", "peer m/c/w", "peer worst", "scoresde / peer", "target met",
                     "best on uniform / karras / log_snr: worst", "best scoresde from exact p_T: m/c/w"], table), "",
           "Grids `karras smin=S` are `scoresde.grids.Karras(sigma_min=S)` (the default Karras grid ends at the SDE's "
           "sigma_ve(t_min) = 1e-3); `uniform to T/N` is a grid object uniform in t from T to T/N (diffusers' default "
           "'linspace' timesteps, passed as `grid=`); the last column re-runs the best scoresde cell from the exact p_T: what is left "
           "there is the sampler's own error, the difference is the prior mismatch.", ""]
    for t in targets:
        labels = list(dict.fromkeys((r["kind"], r["sampler"], r["grid"]) for r in rows
                                    if r["target"] == t and r["kind"] in ("scoresde", "peer")))
        body = []
        for kind, label, grid in labels:
            cells = {r["nominal_nfe"]: r for r in rows if r["target"] == t and r["kind"] == kind
                     and r["sampler"] == label and r["grid"] == grid}
            body.append([label if kind == "scoresde" else f"*{label}*", grid]
                        + [f"{cells[n]['worst_ratio']:.2f} ({_ratios(cells[n])}) @{cells[n]['nfe']}" if n in cells else ""
                           for n in nfes])
        md += [f"## {t}: worst ratio (m/c/w) @ actual NFE", "",
               md_table(["sampler", "grid"] + [f"NFE {n}" for n in nfes], body), ""]
    md += [f"Figure: `{payload['benchmark']}.png` (worst ratio vs NFE; each scoresde sampler on its best grid, peers dashed)."]
    return "\n".join(md), summary


def plot_low_nfe(payload, path: Path) -> None:
    import matplotlib  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415
    from matplotlib.ticker import NullFormatter  # noqa: PLC0415

    rows, targets = payload["rows"], list(payload["floors"])
    ncols = min(2, len(targets))
    nrows = (len(targets) + ncols - 1) // ncols
    fig = Figure(figsize=(6.2 * ncols + 2.6, 4.2 * nrows + 0.6), layout="constrained")
    colors = matplotlib.colormaps["tab20"].colors
    labels = list(dict.fromkeys((r["kind"], r["sampler"]) for r in rows if r["kind"] in ("scoresde", "peer")))
    for i, t in enumerate(targets):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for j, (kind, label) in enumerate(labels):
            best = {}
            for r in rows:
                if r["target"] == t and r["kind"] == kind and r["sampler"] == label and math.isfinite(r["worst_ratio"]):
                    if r["nominal_nfe"] not in best or r["worst_ratio"] < best[r["nominal_nfe"]]["worst_ratio"]:
                        best[r["nominal_nfe"]] = r
            pts = sorted((r["nfe"], r["worst_ratio"]) for r in best.values())
            if pts:
                style = dict(ls="-", lw=1.3) if kind == "scoresde" else dict(ls="--", lw=1.0)
                ax.plot(*zip(*pts), marker="osD^v<>pPX*h"[j % 12], ms=4, color=colors[j % 20], label=label, **style)
        for level in (1.0, 1.2, 2.0):
            ax.axhline(level, color="k", lw=0.6, ls=":" if level != 1.0 else "-")
        ax.set(xscale="log", yscale="log", title=t, xlabel="NFE", ylabel="worst within-mode error / floor")
        ax.set_xticks(payload["args"]["low_nfes"], [str(n) for n in payload["args"]["low_nfes"]])
        ax.xaxis.set_minor_formatter(NullFormatter())
    handles, names = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right center", fontsize=8)
    fig.suptitle("Exact score, start from the prior: scoresde samplers (solid, best grid) vs peers (dashed)")
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small smoke run (about a minute)")
    p.add_argument("--n", type=int, default=10_000, help="samples per run")
    p.add_argument("--nfes", type=int, nargs="+", default=[10, 20, 50, 100, 200, 1000])
    p.add_argument("--tols", type=float, nargs="+", default=[1e-1, 1e-2, 1e-3, 1e-4, 1e-5], help="RK45 rtol = atol grid")
    p.add_argument("--prior-nfes", type=int, nargs="+", default=[20, 200])
    p.add_argument("--prior-tols", type=float, nargs="+", default=[1e-3])
    p.add_argument("--repeats", type=int, default=2, help="independent runs per cell (exact part)")
    p.add_argument("--floor-repeats", type=int, default=20)
    p.add_argument("--projections", type=int, default=64)
    p.add_argument("--targets", nargs="+", default=None, choices=list(toy.TARGETS), help="default: all")
    p.add_argument("--families", nargs="+", default=list(FAMILIES) + [RK45], choices=list(FAMILIES) + [RK45])
    p.add_argument("--parts", nargs="+", default=["exact", "prior", "trained", "low_nfe"],
                   choices=["exact", "prior", "trained", "low_nfe"])
    p.add_argument("--low-nfes", type=int, nargs="+", default=[10, 20, 50], help="low_nfe part: nominal NFE")
    p.add_argument("--low-n", type=int, default=20_000, help="low_nfe part: samples per run")
    p.add_argument("--low-seeds", type=int, default=2, help="low_nfe part: runs (seeds) per cell")
    p.add_argument("--low-floor-repeats", type=int, default=100, help="low_nfe part: i.i.d. samples for the floors")
    p.add_argument("--low-samplers", nargs="+", default=None, help="low_nfe part: subset of the sampler labels")
    p.add_argument("--no-peers", action="store_true", help="low_nfe part: skip diffusers / k-diffusion")
    p.add_argument("--no-extra-grids", action="store_true", help="low_nfe part: only uniform / karras / log_snr")
    p.add_argument("--train-target", default="eight_gaussians", choices=list(toy.TARGETS))
    p.add_argument("--train-steps", type=int, default=4000)
    p.add_argument("--train-nfes", type=int, nargs="+", default=[20, 50, 200])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results, --quick: results/quick)")
    p.add_argument("--report-only", metavar="JSON", help="rebuild the Markdown and the NFE figure from a results JSON")
    args = p.parse_args(argv)
    if args.report_only:
        json_path = Path(args.report_only)
        payload = json.loads(json_path.read_text())
        payload["report_regenerated_by"] = command_line()
        low = payload["benchmark"].startswith(LOW_NAME)
        markdown, payload["summary"] = (low_nfe_report if low else report)(payload)
        write_results(json_path.stem, payload, markdown, json_path.parent)
        (plot_low_nfe if low else plot_nfe)(payload, json_path.with_suffix(".png"))
        print(markdown)
        return
    if args.quick:
        args.n, args.nfes, args.tols, args.prior_nfes, args.prior_tols = 2000, [10, 20, 100], [1e-2, 1e-4], [20], [1e-2]
        args.repeats, args.floor_repeats, args.train_steps, args.train_nfes = 1, 5, 300, [20, 100]
        args.low_n, args.low_seeds, args.low_floor_repeats = 2000, 1, 20
        args.targets = args.targets or (list(toy.TARGETS) if args.parts == ["low_nfe"] else ["eight_gaussians", "ncsn_two_modes"])
    args.targets = args.targets or list(toy.TARGETS)
    set_threads(args.threads)
    out = Path(args.out or RESULTS)  # RESULTS is results/quick/ for a --quick run (_common)
    suffix = "_quick" if args.quick else ""  # a smoke run never overwrites the full results
    if "low_nfe" in args.parts:
        low_args = argparse.Namespace(**{**vars(args), "n": args.low_n, "floor_repeats": args.low_floor_repeats})
        low_nfe_sweep(low_args, out, LOW_NAME + suffix)
        args.parts = [q for q in args.parts if q != "low_nfe"]
        if not args.parts:
            return
    info = machine()
    name = NAME + suffix
    keep_for = "grid_gaussians" if "grid_gaussians" in args.targets else args.targets[0]

    with Timer() as total:
        targets = [Target(t, args.n, args.projections, args.floor_repeats, args.seed + 101 * i)
                   for i, t in enumerate(args.targets)]
        for t in targets:
            log(f"floor {t.name}: sw2 rms {t.sw2_floor.rms:.4f} (sd {t.sw2_floor.std:.4f}), mw rms {t.mw_floor.rms:.4f}")
        rows, kept, trained_info = [], {}, None
        if "exact" in args.parts:
            r, kept = sweep(targets, args.families, args.nfes, args.tols, "exact", args.repeats, args.seed,
                            keep_for=keep_for)
            rows += r
        if "prior" in args.parts:
            rows += sweep(targets, args.families, args.prior_nfes, args.prior_tols, "prior", 1, args.seed)[0]
        if "trained" in args.parts:
            target = next((t for t in targets if t.name == args.train_target), None) or Target(
                args.train_target, args.n, args.projections, args.floor_repeats, args.seed + 999)
            model, trained_info = train_model(target, args.train_steps, args.seed)
            log(f"trained {trained_info}")
            fams = [f for f in TRAINED_FAMILIES if f in args.families] + ([RK45] if RK45 in args.families else [])
            rows += sweep([target], fams, args.train_nfes, [1e-3], "exact", 1, args.seed,
                          score_of=lambda tg, sde: model.score_fn, tag="trained")[0]
            plot_score_field(model.score_fn, target.mixture.score_fn(SDES["vp"]), SDES["vp"], [0.01, 0.1, 0.5, 1.0],
                             extent=(-4.5, 4.5, -4.5, 4.5), data=target.mixture.sample(2000),
                             labels=("trained", "exact"), path=out / f"{name}_trained_score.png")

    payload = {"benchmark": name, "command": command_line(), "machine": info, "args": vars(args),
               "total_seconds": total.seconds,
               "floors": {t.name: {"sw2": t.sw2_floor._asdict(), "mw": t.mw_floor._asdict(),
                                   "expected_mode_weights": t.expected.tolist(),
                                   "ratio_sd_perfect_sampler": t.resolution(args.repeats)} for t in targets},
               "trained": trained_info, "rows": rows}
    markdown, payload["summary"] = report(payload)
    paths = write_results(name, payload, markdown, out)
    plot_nfe(payload, out / f"{name}.png")
    if kept:
        target = next(t for t in targets if t.name == keep_for)
        plot_sample_grid(kept, target.mixture.sample(3000), suptitle=f"{target.name}, nominal NFE 20, exact score",
                         path=out / f"{name}_samples.png")
    print(markdown)
    log(f"wrote {paths[0]} and {paths[1]} in {total.seconds:.0f} s")


if __name__ == "__main__":
    main()
