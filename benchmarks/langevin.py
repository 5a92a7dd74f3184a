"""NCSN's demonstration (Song & Ermon 2019, section 3.2, Fig. 3): Langevin dynamics with the exact
score cannot recover the relative weights of separated modes; annealed Langevin and the reverse SDE can.

Target ``toy.ncsn_two_modes()``: p = 0.2 N((-5, -5), I) + 0.8 N((5, 5), I).  All runs use the exact
score and report the fraction of samples assigned to the light mode (``metrics.mode_weights``;
exact value 0.2, i.i.d. sd sqrt(0.2 * 0.8 / n) = 0.004 at n = 10 000) against the number of score
evaluations (NFE):

* ``Langevin``: plain Langevin with the data score (VESDE() at t_min = 0, sigma = 0.01), step
  eps = 0.1 (NCSN's toy setting), started from U([-8, 8]^2) as in NCSN.  The score is blind to the
  weights away from the low-density gap, so the split stays that of the initial basins (~0.5).
* ``AnnealedLangevin``: NCSN's toy setting, sigma geometric from 20 to 1 in L = 10 levels
  (``VESDE(sigma_min=1, sigma_max=20)``), eps = 0.1, ``steps_per_level`` = NFE / 10, no final
  denoise (as in the paper), started from U([-8, 8]^2).  Large noise levels let samples cross the gap.
* ``ReverseSDE (prior)`` / ``ReverseSDE (exact p_T)``: Euler-Maruyama on the reverse VE SDE
  (``VESDE()``, sigma 0.01 -> 20), ``num_steps`` = NFE, started from the prior N(0, 20^2 I) or from
  the exact p_T.  The prior's mismatch with p_T (p_T has mean 0.6 (5, 5) and weights 0.2 / 0.8)
  shows up as a mode-weight bias that more steps do not remove.

Outputs ``benchmarks/results/langevin.{json,md,png}``, ``langevin_samples.png`` and
``langevin_trajectories_{Langevin,AnnealedLangevin}.png``.  ``--quick`` writes ``langevin_quick.*`` with n = 2000 and fewer steps.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from _common import RESULTS, Timer, command_line, log, machine, machine_line, md_table, set_threads, write_results

import torch  # noqa: E402

from scoresde.evaluation.metrics import mode_weights  # noqa: E402
from scoresde.plotting import TrajectoryRecorder, plot_quality_vs_nfe, plot_sample_grid, plot_trajectories  # noqa: E402
from scoresde.samplers import AnnealedLangevin, Langevin, ReverseSDE  # noqa: E402
from scoresde.sdes import VESDE  # noqa: E402
from scoresde.data.toy import ncsn_two_modes  # noqa: E402

NAME = "langevin"
BOX = 8.0  # NCSN's initialisation U([-8, 8]^2)


def methods():
    """name -> (sde, NFE -> sampler, initialisation)."""
    ve, ve_ncsn = VESDE(), VESDE(sigma_min=1.0, sigma_max=20.0)
    return {
        "Langevin": (ve, lambda n: Langevin(step_size=0.1, num_steps=n), "uniform"),
        "AnnealedLangevin": (ve_ncsn, lambda n: AnnealedLangevin(step_size=0.1, num_levels=10,
                                                                steps_per_level=max(1, n // 10), denoise=False), "uniform"),
        "ReverseSDE (prior)": (ve, lambda n: ReverseSDE(num_steps=n), "prior"),
        "ReverseSDE (exact p_T)": (ve, lambda n: ReverseSDE(num_steps=n), "exact"),
    }


def initial(kind, mixture, sde, n, g):
    if kind == "uniform":
        return (2 * torch.rand(n, 2, generator=g) - 1) * BOX
    if kind == "prior":
        return sde.prior_sample((n, 2), g)
    return mixture.marginal(sde, sde.T).sample(n, g)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small smoke run (seconds)")
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--nfes", type=int, nargs="+", default=[10, 30, 100, 300, 1000, 3000])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.nfes = 2000, [10, 100, 300]
    set_threads(args.threads)
    info, out = machine(), Path(args.out)
    name = NAME + ("_quick" if args.quick else "")
    mixture = ncsn_two_modes()
    sd = math.sqrt(0.2 * 0.8 / args.n)
    rows, finals, recorders = [], {}, {}
    with Timer() as total:
        for mi, (method, (sde, make, init)) in enumerate(methods().items()):
            score = mixture.score_fn(sde)
            for nfe in args.nfes:
                g = torch.Generator().manual_seed(args.seed + 1000 * mi)  # same start for every NFE of a method
                x_init = initial(init, mixture, sde, args.n, g)
                with Timer() as tm:
                    result = make(nfe).run(score, sde, x_init=x_init, generator=g)
                w = mode_weights(result.x, mixture)
                rows.append({"method": method, "sde": repr(sde), "init": init, "nominal_nfe": nfe, "nfe": result.nfe,
                             "weight_light_mode": float(w[0]), "weight_heavy_mode": float(w[1]),
                             "abs_error": abs(float(w[0]) - 0.2), "error_in_sd": abs(float(w[0]) - 0.2) / sd,
                             "time_s": tm.seconds})
                log(f"{method:24s} NFE {result.nfe:5d}: light-mode weight {float(w[0]):.4f} ({tm.seconds:.1f} s)")
                if nfe == args.nfes[-1]:
                    finals[f"{method}, NFE {result.nfe}"] = result.x
            # a few paths at NFE 1000 (NCSN's 100 steps per level), one state per 100 steps
            g = torch.Generator().manual_seed(args.seed + 1000 * mi + 1)
            x_init = initial(init, mixture, sde, 6, g)
            recorders[method] = TrajectoryRecorder(6, start=x_init, every=100)
            make(1000).run(score, sde, x_init=x_init, generator=g, callback=recorders[method])
        init_weight = float(mode_weights(initial("uniform", mixture, None, args.n, torch.Generator().manual_seed(1)),
                                         mixture)[0])

    headers = ["method", "init"] + [f"NFE {n}" for n in args.nfes]
    table = []
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        table.append([method, rs[0]["init"]] + [f"{r['weight_light_mode']:.3f}" for r in rs])
    md = [f"# Langevin vs annealed Langevin vs reverse SDE on ncsn_two_modes ({'quick' if args.quick else 'full'} run)", "",
          f"Command: `{command_line()}`  ", f"Machine: {machine_line(info)}  ",
          f"Total run time: {total.seconds:.0f} s; n = {args.n} samples per run.", "",
          f"Weight of the light mode (-5, -5) among the samples (exact: 0.200, i.i.d. sd {sd:.3f}; "
          f"the U([-8, 8]^2) start puts {init_weight:.3f} in its basin).  Exact score everywhere; "
          "nominal NFE in the header (AnnealedLangevin: 10 levels x NFE/10 steps).", "",
          md_table(headers, table), "",
          "Wall time (s) per run:", "",
          md_table(headers, [[m, rows[[r["method"] for r in rows].index(m)]["init"]]
                             + [f"{r['time_s']:.2f}" for r in rows if r["method"] == m]
                             for m in dict.fromkeys(r["method"] for r in rows)]), "",
          f"Figures: `{name}.png` (weight vs NFE), `{name}_samples.png` (samples at the largest NFE), "
          f"`{name}_trajectories_Langevin.png`, `{name}_trajectories_AnnealedLangevin.png` (6 paths at NFE 1000, "
          "one point per 100 steps, i.e. per noise level for annealed Langevin)."]
    markdown = "\n".join(md)
    payload = {"benchmark": name, "command": command_line(), "machine": info, "args": vars(args),
               "total_seconds": total.seconds, "exact_light_weight": 0.2, "iid_sd": sd,
               "uniform_start_light_weight": init_weight, "rows": rows}
    paths = write_results(name, payload, markdown, out)
    plot_quality_vs_nfe([dict(r, sampler=r["method"]) for r in rows], y="weight_light_mode", hue="sampler", panel=None,
                        reference=0.2, logy=False, title="ncsn_two_modes: weight of the light mode (exact 0.2, dashed)",
                        path=out / f"{name}.png")
    plot_sample_grid(finals, mixture.sample(3000), suptitle="samples at the largest NFE (grey: exact)",
                     path=out / f"{name}_samples.png")
    for method in ("Langevin", "AnnealedLangevin"):
        plot_trajectories(recorders[method], mixture.sample(2000), extent=(-12, 12, -12, 12),
                          title=f"{method}, NFE 1000: 6 paths, one point per 100 steps",
                          path=out / f"{name}_trajectories_{method}.png")
    print(markdown)
    log(f"wrote {paths[0]} and {paths[1]} in {total.seconds:.0f} s")


if __name__ == "__main__":
    main()
