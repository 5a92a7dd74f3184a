"""MALA vs the unadjusted chain at the same step: the light mode's weight (issue 18, item 2).

Every run uses the exact score and, for MALA, the exact log-density (``GaussianMixture.score_fn(sde).log_prob``).
The light mode's weight is the fraction of final states assigned to the light component
(``GaussianMixture.assign``); its i.i.d. floor is the binomial sd sqrt(w (1 - w) / n) (the n chains
are independent and only their last states are used).

* ``annealed``: ``AnnealedLangevin()`` with its defaults (30 levels x 250 steps, step_ratio 0.2,
  final denoise) on ``toy.ncsn_two_modes()`` (0.2 / 0.8 at (-5, -5), (5, 5)) under ``VESDE()``,
  started from U([-8, 8]^2) as in NCSN; unadjusted vs ``metropolis=True`` (MALA at every level,
  the same step sizes).  Exact weight 0.2.
* ``langevin``: ``Langevin`` at one noise level (VESDE at t = 0) on an overlapping two-mode mixture
  (0.3 / 0.7, means (-1, 0), (1, 0.3), the covariances of ``tests/test_temperature.py``), where a
  single-level chain does mix between the modes; started from exact draws of the target, so any
  drift of the weight is the chain's own bias.  Steps 0.005 (the default) and 0.05, 1000 steps.
  Exact region mass from 4 x 10^6 exact draws (sd 2.3e-4).

Writes ``benchmarks/results/mala.{json,md}``.  ``--quick``: n = 4000, for a smoke run.
"""
from __future__ import annotations

import argparse
import math

from _common import Timer, command_line, log, machine, machine_line, md_table, set_threads, write_results

import torch  # noqa: E402

from scoresde.data import toy  # noqa: E402
from scoresde.data.toy import GaussianMixture  # noqa: E402
from scoresde.samplers import AnnealedLangevin, Langevin  # noqa: E402
from scoresde.sdes import VESDE  # noqa: E402


def overlapping() -> GaussianMixture:
    covs = torch.tensor([[[0.45, 0.15], [0.15, 0.3]], [[0.3, -0.1], [-0.1, 0.5]]], dtype=torch.float64)
    return GaussianMixture(torch.tensor([0.3, 0.7], dtype=torch.float64),
                           torch.tensor([[-1.0, 0.0], [1.0, 0.3]], dtype=torch.float64), covs)


def run_one(sampler, target, sde, x_init, seed):
    with Timer() as timer:
        result = sampler.run(target.score_fn(sde), sde, x_init=x_init, generator=torch.Generator().manual_seed(seed))
    light = float((target.assign(result.x) == 0).double().mean())
    return {"light_weight": light, "nfe": result.nfe, "acceptance_rate": getattr(result, "acceptance_rate", None),
            "cpu_s": timer.cpu_seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", type=int, default=None)
    args = parser.parse_args(argv)
    set_threads(1)
    n = args.n or (4000 if args.quick else 40_000)
    rows, payload = [], {"n": n, "command": command_line(), "machine": machine(), "runs": []}

    sde = VESDE()
    target = toy.ncsn_two_modes()
    x_init = 16 * torch.rand(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 8
    for metropolis in (False, True):
        r = run_one(AnnealedLangevin(metropolis=metropolis), target, sde, x_init, 1)
        r.update(experiment="annealed (ncsn_two_modes)", chain="MALA" if metropolis else "unadjusted", step="defaults",
                 exact=0.2, floor=math.sqrt(0.2 * 0.8 / n))
        payload["runs"].append(r)
        log(str(r))

    target = overlapping()
    exact_draws = target.sample(4_000_000, torch.Generator().manual_seed(9), dtype=torch.float64)
    exact = float((target.assign(exact_draws) == 0).double().mean())
    del exact_draws
    x_init = target.sample(n, torch.Generator().manual_seed(3), dtype=torch.float64)
    for step in (0.005, 0.05):
        for metropolis in (False, True):
            r = run_one(Langevin(step_size=step, metropolis=metropolis), target, sde, x_init, 4)
            r.update(experiment="langevin (overlapping 0.3/0.7)", chain="MALA" if metropolis else "unadjusted",
                     step=step, exact=exact, floor=math.sqrt(exact * (1 - exact) / n))
            payload["runs"].append(r)
            log(str(r))

    for r in payload["runs"]:
        bias = r["light_weight"] - r["exact"]
        acc = "" if r["acceptance_rate"] is None else f"{r['acceptance_rate']:.3f}"
        rows.append([r["experiment"], r["chain"], r["step"], r["nfe"], acc, f"{r['light_weight']:.4f}",
                     f"{r['exact']:.4f}", f"{bias:+.4f}", f"{bias / r['floor']:+.1f}", f"{r['cpu_s']:.1f}"])
    md = (f"# MALA vs unadjusted Langevin at the same step\n\nn = {n} chains (last states), exact scores.  "
          f"`{command_line()}`; {machine_line(payload['machine'])}\n\n"
          + md_table(["experiment", "chain", "step", "NFE", "acceptance", "light weight", "exact", "bias",
                      "bias / floor", "CPU s"], rows) + "\n")
    write_results("mala_quick" if args.quick else "mala", payload, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
