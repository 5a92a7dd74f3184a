"""The ``experiment=<data set>`` presets (issue 12, item 3): run each, tabulate its headline, draw the grid.

Each preset is ``scoresde-train experiment=<name> seed=S`` (``conf/experiment/<name>.yaml``), run as
the app with ``OMP_NUM_THREADS=1``; the table lists its headline metric (``outlier_z``, against the
exact density or a KDE of a large reference sample) with the i.i.d. floor band and verdict, C2ST and the job's CPU
time (user + sys of the child process: start-up, training, sampling, evaluation and plots).  The
figure ``docs/presets.png`` shows, per data set, fresh data beside the samples of seed 0.

Reproduce::

    OMP_NUM_THREADS=1 python benchmarks/presets.py                     # every preset, seeds 0 1 2
    OMP_NUM_THREADS=1 python benchmarks/presets.py --names two_moons --seeds 0

Writes ``benchmarks/results/presets.json``, ``benchmarks/results/presets.md`` and ``docs/presets.png``
(``--resume`` keeps the runs already in the JSON; ``--figure-only`` redraws from the run directories
recorded in it; ``--merge other.json ...`` adds the runs of parallel invocations, e.g.
``--names two_spirals --json /tmp/a.json`` and ``--names checkerboard --json /tmp/b.json`` on two cores).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
PRESETS = ["eight_gaussians", "grid_gaussians", "anisotropic_mixture", "ncsn_two_modes", "checkerboard",
           "two_moons", "swiss_roll", "circles", "pinwheel", "two_spirals"]


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_one(name: str, seed: int, out: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    args = [sys.executable, "-m", "scoresde.apps.train", f"experiment={name}", f"seed={seed}", f"hydra.run.dir={out}"]
    before, wall = _cpu_children(), time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    cpu, wall = _cpu_children() - before, time.perf_counter() - wall
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"rc {proc.returncode}"])[-1], "cpu_s": cpu}
    m = json.loads((out / "metrics.json").read_text())
    q = m["quality"]
    head = q["metrics"][q["headline"]]
    return {"headline": q["headline"], "value": head["value"], "floor_band": head["floor_band"],
            "verdict": head["verdict"], "c2st": q["metrics"].get("c2st", {}).get("value"),
            "above_floor": q["above_floor"], "nfe": m.get("nfe"), "cpu_s": cpu, "wall_s": wall, "run_dir": str(out)}


def write_markdown(results: dict, path: Path, seeds: list[int]) -> None:
    lines = ["# experiment=<data set> presets: headline per seed", "",
             f"Reproduce: `OMP_NUM_THREADS=1 python benchmarks/presets.py --seeds {' '.join(map(str, seeds))}`.  "
             "Each run is `scoresde-train experiment=<name> seed=S`; headline = the app's (`outlier_z` against the "
             "exact density, or a KDE of a large fresh reference sample for data without one), floor band = 5-95 % range between exact/fresh samples, CPU = the whole job.", "",
             "| preset | headline | floor band | value per seed | at floor | C2ST per seed | CPU s per seed |",
             "|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        ok = [r for r in runs.values() if "error" not in r]
        if not ok:
            lines.append(f"| {name} | error | | {'; '.join(r['error'] for r in runs.values())} | | | |")
            continue
        band = ok[0]["floor_band"]
        lines.append(f"| {name} | {ok[0]['headline']} | [{band[0]:.3g}, {band[1]:.3g}] | "
                     + ", ".join(f"{r['value']:.3g}" for r in ok)
                     + f" | {sum(r['verdict'] == 'at floor' for r in ok)}/{len(runs)} | "
                     + ", ".join("-" if r["c2st"] is None else f"{r['c2st']:.3f}" for r in ok) + " | "
                     + ", ".join(f"{r['cpu_s']:.0f}" for r in ok) + " |")
    path.write_text("\n".join(lines) + "\n")


def figure(results: dict, path: Path) -> None:
    """Per preset two panels, fresh data (grey) and seed 0's samples (blue), 4 presets per row."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [n for n, runs in results.items() if "0" in runs and "error" not in runs["0"]]
    cols = 4
    rows = (len(names) + cols // 2 - 1) // (cols // 2)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i, name in enumerate(names):
        r = results[name]["0"]
        z = np.load(Path(r["run_dir"]) / "samples.npz")
        a, b = axes.flat[2 * i], axes.flat[2 * i + 1]
        lim = np.quantile(np.abs(z["reference"]), 0.999) * 1.15
        for ax, x, colour, title in ((a, z["reference"], "0.4", f"{name}: data"),
                                     (b, z["samples"], "C0", f"samples ({r['headline']} {r['value']:.2g}, {r['verdict']})")):
            ax.set_axis_on()
            ax.scatter(x[:, 0], x[:, 1], s=0.5, c=colour, alpha=0.5, rasterized=True)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--names", nargs="*", default=PRESETS)
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--workdir", default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--figure-only", action="store_true")
    p.add_argument("--json", default=str(RESULTS / "presets.json"))
    p.add_argument("--figure", default=str(ROOT.parent / "docs" / "presets.png"))
    p.add_argument("--merge", nargs="*", default=[],
                   help="result JSONs of other runs of this script (e.g. run in parallel) merged into --json")
    a = p.parse_args(argv)
    out_json = Path(a.json)
    results = json.loads(out_json.read_text()) if (a.resume or a.figure_only or a.merge) and out_json.exists() else {}
    for other in a.merge:
        for name, runs in json.loads(Path(other).read_text()).items():
            results.setdefault(name, {}).update(runs)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="presets-"))
    if not a.figure_only:
        for name in a.names:
            runs = results.setdefault(name, {})
            for s in a.seeds:
                if str(s) in runs and "error" not in runs[str(s)]:
                    continue
                runs[str(s)] = r = run_one(name, s, work / name / str(s))
                print(f"{name:20s} seed {s}: " + (r.get("error") or f"{r['headline']} {r['value']:.3g} "
                      f"{r['verdict']}, c2st {r['c2st']}, cpu {r['cpu_s']:.0f} s"), flush=True)
                out_json.parent.mkdir(parents=True, exist_ok=True)
                out_json.write_text(json.dumps(results, indent=1))
                write_markdown(results, out_json.with_suffix(".md"), a.seeds)
    # the table and the figure in the order of PRESETS (the four mixtures first), others after
    results = {n: results[n] for n in sorted(results, key=lambda n: (PRESETS + [n]).index(n))}
    out_json.write_text(json.dumps(results, indent=1))
    write_markdown(results, out_json.with_suffix(".md"), a.seeds)
    figure(results, Path(a.figure))


if __name__ == "__main__":
    main()
