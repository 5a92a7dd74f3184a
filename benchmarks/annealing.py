"""Simulated annealing (issue 18): does slow cooling reach the global maximum of p and fast cooling stay stuck?

Two targets with exact scores, under ``VESDE()`` at t = 0 (p convolved with N(0, 0.01^2 I)):

* ``ncsn_two_modes``: 0.2 N((-5, -5), I) + 0.8 N((5, 5), I); every chain starts at the light mean (-5, -5).
* ``ring``: the 8-Gaussian ring (radius 2 sqrt 2, std 0.354) with weights 0.3 on mode 0 and 0.1 on the
  others; every chain starts at the mean of mode 4, the light mode opposite the heavy one.

The global maximum of p is found independently with ``scipy.optimize.minimize`` (BFGS on -log p, numpy
density) from every component mean, the best of them kept; the other optima are the local maxima.  A
chain "ends at the global maximum" when its final point is nearer the global argmax than any other
local maximum (the final temperature 1e-4 leaves a spread of ~0.01 sqrt(v) around the mode).
Cooling speed = the number of steps N from ``temperature_start`` to 1e-4 along each schedule
(geometric, linear, logarithmic), 300 chains each, step 0.05 (two modes) / 0.01 (ring).

Writes ``benchmarks/results/annealing.{json,md,png}``.  ``--quick``: 100 chains, fewer N.
"""
from __future__ import annotations

import argparse
import math

from _common import RESULTS, Timer, command_line, log, machine, machine_line, md_table, set_threads, write_results

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.optimize import minimize  # noqa: E402
from scipy.special import logsumexp  # noqa: E402
from scipy.stats import multivariate_normal  # noqa: E402

from scoresde.data import toy  # noqa: E402
from scoresde.data.toy import GaussianMixture  # noqa: E402
from scoresde.samplers import SimulatedAnnealing  # noqa: E402
from scoresde.sdes import VESDE  # noqa: E402


def ring() -> GaussianMixture:
    base = toy.eight_gaussians()
    w = torch.full((8,), 0.1, dtype=torch.float64)
    w[0] = 0.3
    return GaussianMixture(w, base.means, base.covs)


TARGETS = {  # name -> (mixture, start component, temperature_start, step size)
    "ncsn_two_modes": (toy.ncsn_two_modes, 0, 30.0, 0.05),
    "ring": (ring, 4, 3.0, 0.01),
}


def optima(target: GaussianMixture, sigma: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """(global argmax, all distinct local maxima) of p convolved with N(0, sigma^2 I), by BFGS from each mean."""
    w, m = target.weights.numpy(), target.means.numpy()
    c = target.covs.numpy() + sigma**2 * np.eye(target.dim)

    def neg_log_p(x):
        return -logsumexp([math.log(wk) + multivariate_normal(mk, ck).logpdf(x) for wk, mk, ck in zip(w, m, c)])

    found = [minimize(neg_log_p, mk, method="BFGS", options={"gtol": 1e-12}) for mk in m]
    best = min(found, key=lambda r: r.fun).x
    maxima = []
    for r in found:
        if all(np.linalg.norm(r.x - q) > 1e-3 for q in maxima):
            maxima.append(r.x)
    return best, maxima


def fraction_at_global(x: np.ndarray, best: np.ndarray, maxima: list[np.ndarray]) -> tuple[float, float]:
    d = np.stack([np.linalg.norm(x - q, axis=1) for q in maxima], 1)
    nearest = np.array(maxima)[d.argmin(1)]
    at = np.linalg.norm(nearest - best, axis=1) < 1e-6
    dist = np.linalg.norm(x[at] - best, axis=1)
    return float(at.mean()), float(np.median(dist)) if at.any() else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    set_threads(1)
    n = 100 if args.quick else 300
    speeds = [30, 300, 3000] if args.quick else [30, 100, 300, 1000, 3000, 10000]
    sde = VESDE()
    payload = {"command": command_line(), "machine": machine(), "n": n, "runs": [], "optima": {}}
    rows = []
    for name, (make, start, t_start, step) in TARGETS.items():
        target = make()
        best, maxima = optima(target, sde.sigma_min)
        payload["optima"][name] = {"global": best.tolist(), "local": [q.tolist() for q in maxima]}
        x_init = target.means[start].repeat(n, 1).to(torch.float64)
        for schedule in ("geometric", "linear", "logarithmic"):
            for num_steps in speeds:
                sampler = SimulatedAnnealing(schedule=schedule, temperature_start=t_start, temperature_end=1e-4,
                                             num_steps=num_steps, step_size=step)
                with Timer() as timer:
                    x = sampler.sample(target.score_fn(sde), sde, x_init=x_init, generator=torch.Generator().manual_seed(1))
                frac, dist = fraction_at_global(x.numpy(), best, maxima)
                r = {"target": name, "schedule": schedule, "num_steps": num_steps, "fraction_global": frac,
                     "median_distance_global": dist, "cpu_s": timer.cpu_seconds,
                     "binomial_sd": math.sqrt(max(frac * (1 - frac), 1e-12) / n)}
                payload["runs"].append(r)
                rows.append([name, schedule, num_steps, f"{frac:.3f}", f"{r['binomial_sd']:.3f}", f"{dist:.1e}",
                             f"{timer.cpu_seconds:.1f}"])
                log(str(r))
    md = (f"# Simulated annealing: fraction of chains ending at the global maximum vs cooling speed\n\n"
          f"{n} chains per row, all started in the light mode; `{command_line()}`; {machine_line(payload['machine'])}\n\n"
          + md_table(["target", "schedule", "steps N", "fraction at global max", "sd", "median |x - argmax|",
                      "CPU s"], rows) + "\n")
    write_results("annealing_quick" if args.quick else "annealing", payload, md)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TARGETS), figsize=(10, 3.8), sharey=True)
    for ax, name in zip(axes, TARGETS):
        for schedule, marker in zip(("geometric", "linear", "logarithmic"), "os^"):
            rs = [r for r in payload["runs"] if r["target"] == name and r["schedule"] == schedule]
            ax.errorbar([r["num_steps"] for r in rs], [r["fraction_global"] for r in rs],
                        yerr=[2 * r["binomial_sd"] for r in rs], marker=marker, capsize=3, label=schedule)
        ax.set_xscale("log")
        ax.set_xlabel("cooling steps N (slower cooling ->)")
        ax.set_title(name + " (start: light mode)")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of chains at the global max of p")
    axes[0].legend()
    fig.tight_layout()
    out = (RESULTS / ("annealing_quick.png" if args.quick else "annealing.png"))
    fig.savefig(out, dpi=120)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
