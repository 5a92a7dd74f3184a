"""Cost of the default sample-quality evaluation (``scoresde.evaluation.floors.assess``, what the apps run) at n = 2000.

For each data set: a *cold* evaluation (empty ``FloorCache``: thresholds, KDE bandwidth and floors
computed, as for the first job of a sweep or a single run) and a *warm* one (the same cache, as
for every later job of a sweep), one thread as in the apps; wall and CPU seconds.  With
``--legacy`` also the old ``scoresde.evaluation.metrics.evaluate`` (sliced W2, MMD, energy distance, 5 repeats)
for comparison.  Results: ``benchmarks/results/eval_cost.{json,md}``.

    python benchmarks/eval_cost.py [--n 2000] [--legacy] [--quick]
"""
from __future__ import annotations

import argparse

from _common import Timer, command_line, log, machine, machine_line, md_table, set_threads, write_results

import torch

from scoresde.data.datasets import TwoMoons
from scoresde.evaluation.floors import HEADLINE, FloorCache, assess
from scoresde.evaluation.metrics import evaluate
from scoresde.data.toy import GaussianMixture, eight_gaussians, grid_gaussians

TARGETS = {"eight_gaussians": eight_gaussians, "grid_gaussians": grid_gaussians, "two_moons": TwoMoons}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--legacy", action="store_true", help="also time metrics.evaluate (slow)")
    parser.add_argument("--quick", action="store_true", help="n = 500, results under results/quick/")
    args = parser.parse_args()
    n = 500 if args.quick else args.n
    set_threads(1)
    info, rows, payload = machine(), [], {"n": n, "results": {}}
    assess(eight_gaussians().sample(50, torch.Generator().manual_seed(0)), eight_gaussians(), c2st_steps=2)  # warm-up
    for name, make in TARGETS.items():
        target = make()
        x = target.sample(n, torch.Generator().manual_seed(1), dtype=torch.float64)
        cache = FloorCache()
        with Timer() as cold:
            res = assess(x, target, cache=cache)
        with Timer() as warm:
            assess(x, target, cache=cache)
        entry = {"cold_s": cold.seconds, "cold_cpu_s": cold.cpu_seconds, "warm_s": warm.seconds,
                 "warm_cpu_s": warm.cpu_seconds, "metrics": len(res["metrics"]),
                 "headline": res["metrics"][HEADLINE]["value"]}
        if args.legacy:
            ref = target if isinstance(target, GaussianMixture) else \
                target.sample(4 * n, torch.Generator().manual_seed(2), dtype=torch.float64).reshape(4 * n, -1)
            with Timer() as old:
                evaluate(x, ref, repeats=5, generator=torch.Generator().manual_seed(3))
            entry.update(legacy_s=old.seconds, legacy_cpu_s=old.cpu_seconds)
        payload["results"][name] = entry
        log(f"{name}: cold {cold.seconds:.2f} s ({cold.cpu_seconds:.2f} CPU s), warm {warm.seconds:.2f} s "
            f"({warm.cpu_seconds:.2f} CPU s)" + (f", legacy {entry['legacy_s']:.1f} s" if args.legacy else ""))
        rows.append([name, f"{cold.seconds:.2f} ({cold.cpu_seconds:.2f})", f"{warm.seconds:.2f} ({warm.cpu_seconds:.2f})",
                     entry["metrics"]] + ([f"{entry['legacy_s']:.1f} ({entry['legacy_cpu_s']:.1f})"] if args.legacy else []))
    payload["machine"], payload["command"] = info, command_line()
    headers = ["data", "cold: wall s (CPU s)", "warm: wall s (CPU s)", "metrics"] + (["old evaluate (5 repeats)"] if args.legacy else [])
    md = (f"# Cost of the default evaluation, n = {n}\n\n`{payload['command']}`\n\n{machine_line(info)}\n\n"
          + md_table(headers, rows) + "\n\nCold: first evaluation of a data set (thresholds, floors computed); "
          "warm: later jobs of a sweep (floors cached). CPU seconds are what one idle core would take.\n")
    for path in write_results("eval_cost", payload, md):
        log(f"wrote {path}")
    print(md)


if __name__ == "__main__":
    main()
