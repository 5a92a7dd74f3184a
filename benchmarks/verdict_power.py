"""How often the evaluation says "above floor": the old headline, "any metric", and the overall verdict.

For each data set and defect (``tests/test_apps_metrics.py``'s ``contaminate``: exact samples, 2 %
haze, 2 % bridges, every mode's covariance inflated by 25 %, half of one mode's mass moved to the
other modes), ``--repeats`` samples of n = 2000 are evaluated by ``scoresde.evaluation.assess`` (all
metrics, one shared floor cache per data set, one thread) and counted as flagged by

* ``headline``: ``outlier_z`` above its floor band (one-sided 5 %), the old headline's verdict;
* ``any``: any metric above its own band (the old "above_floor" list non-empty);
* ``verdict``: the overall verdict (``quality["overall"]``: Holm at 5 % over the floor p-values).

Results: ``benchmarks/results/verdict_power.{json,md}`` (flagged / repeats, and which metrics drove
the overall verdict); the counts of each data set are saved in ``results/verdict_power_parts/`` as
they come, so data sets can run as separate processes and ``--report`` joins them.

    python benchmarks/verdict_power.py [--repeats 40] [--data eight_gaussians ...] [--report] [--quick]
"""
from __future__ import annotations

import argparse
import collections
import json
import sys

from _common import RESULTS, ROOT, Timer, command_line, log, machine, machine_line, md_table, set_threads, write_results

import torch

sys.path.insert(0, str(ROOT / "tests"))
from test_apps_metrics import N, contaminate  # noqa: E402  (the defects of the power test)

from scoresde.data.datasets import TwoMoons  # noqa: E402
from scoresde.data.toy import eight_gaussians, grid_gaussians, ncsn_two_modes  # noqa: E402
from scoresde.evaluation import FloorCache, assess  # noqa: E402
from scoresde.evaluation.floors import HEADLINE  # noqa: E402

TARGETS = {"eight_gaussians": eight_gaussians, "grid_gaussians": grid_gaussians, "ncsn_two_modes": ncsn_two_modes,
           "two_moons": TwoMoons}
PARTS = RESULTS / "verdict_power_parts"  # counts per data set, saved as they come
KINDS = {"none": "exact samples", "box": "2 % haze (box)", "segments": "2 % bridges (segments)",
         "blur": "blur (covariance +25 %)", "half_mode": "half of one mode's mass moved"}


def run_data_set(name: str, repeats: int, kinds=tuple(KINDS)) -> dict:
    """The defects ``kinds`` on one data set; the counts are saved after each (``PARTS/<name>[.<kinds>].json``)."""
    target, cache, results = TARGETS[name](), FloorCache(), {}
    part = PARTS / (f"{name}.json" if tuple(kinds) == tuple(KINDS) else f"{name}.{'+'.join(kinds)}.json")
    for kind in kinds:
        g = torch.Generator().manual_seed(123)  # the power test's seed
        counts, drivers = collections.Counter(), collections.Counter()
        with Timer() as timer:
            for _ in range(repeats):
                q = assess(contaminate(target, N, kind, g), target, cache=cache)
                counts["headline"] += q["metrics"][HEADLINE]["verdict"] == "above floor"
                counts["any"] += bool(q["above_floor"])
                counts["verdict"] += q["overall"]["verdict"] == "above floor"
                drivers.update(q["overall"]["driven_by"])
        results[kind] = {**counts, "drivers": dict(drivers), "cpu_s": timer.cpu_seconds, "repeats": repeats}
        log(f"{name:16s} {kind:10s} headline {counts['headline']:2d}  any {counts['any']:2d}  "
            f"verdict {counts['verdict']:2d} / {repeats}  drivers {dict(drivers)}  ({timer.cpu_seconds:.0f} CPU s)")
        PARTS.mkdir(parents=True, exist_ok=True)
        part.write_text(json.dumps(results, indent=1))
    return results


def report() -> None:
    """The table of every data set with saved counts (``PARTS``)."""
    results = {}
    for name in TARGETS:  # <name>.json, then the runs of single defects <name>.<kinds>.json
        for path in sorted(PARTS.glob(f"{name}.json")) + sorted(PARTS.glob(f"{name}.*.json")):
            results.setdefault(name, {}).update(json.loads(path.read_text()))
    info = machine()
    payload = {"n": N, "results": results, "machine": info, "command": command_line()}
    names = list(results)

    def cell(r, kind):
        if kind not in r:
            return "-"
        return f"{r[kind]['headline']} / {r[kind]['any']} / **{r[kind]['verdict']}** (of {r[kind]['repeats']})"

    rows = [[KINDS[kind], *(cell(results[n], kind) for n in names)] for kind in KINDS]
    driver_rows = [[KINDS[kind], *(", ".join(f"{m} {c}" for m, c in sorted(results[n][kind]["drivers"].items(),
                                                                           key=lambda mc: -mc[1])) or "none"
                                   if kind in results[n] else "-" for n in names)] for kind in KINDS]
    md = (f"# Which evaluation flags what: old headline, any metric, overall verdict (n = {N})\n\n"
          f"`{payload['command']}` (one process per data set: `--data NAME`, then `--report`)\n\n"
          f"{machine_line(info)}\n\n"
          "Flagged \"above floor\": old headline `outlier_z` / any metric above its own band / **overall verdict** "
          "(Holm-Bonferroni at 5 % over the metrics' one-sided floor p-values), out of the repetitions shown.\n\n"
          + md_table(["condition", *names], rows)
          + "\n\nMetrics that drove the overall verdict (repetitions in which Holm rejected each):\n\n"
          + md_table(["condition", *names], driver_rows)
          + "\n\nRequirements (issue 16): exact samples flagged <= 10 %; half of one mode's mass >= 90 % on the "
          "mixtures; haze, bridges and blur >= 90 % (except eight_gaussians' bridges, which lie within 3 sd of "
          "a mode: see tests/test_apps_metrics.py).\n")
    for path in write_results("verdict_power", payload, md):
        log(f"wrote {path}")
    print(md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--data", nargs="*", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--kinds", nargs="*", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--report", action="store_true", help="only rebuild the table from the saved counts")
    parser.add_argument("--quick", action="store_true", help="5 repeats, results under results/quick/")
    args = parser.parse_args()
    set_threads(1)
    if not args.report:
        for name in args.data:
            run_data_set(name, 5 if args.quick else args.repeats, tuple(args.kinds))
    report()


if __name__ == "__main__":
    main()
