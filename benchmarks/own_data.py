"""A user's own 2-D data (issue 21): the old default run against the new adaptive default.

Eight 2-D data sets that are not among the built-in ten, 10 000 points each, written to a ``.npy``
file and trained on exactly as a user would, with ``scoresde-train data=file data.path=<file>``:

* ``old``: ``auto=false data.validation=0`` (the run of before issue 21: 6000 steps, no split, no checks);
* ``new``: the defaults (``auto`` is on for a data file: 10 % held out, a pilot run chooses the input
  features, checks every 1000 steps, after 3 consecutive checks at floor at step s a cool-down of ceil(0.2 s)
  steps with the learning rate going to 0 and the finish (``quality.cooldown``; rows run before it finished at
  s), or the 20 000-step budget, samples from ``best.pt`` with auto's ``quality.sampler``).

Both sample 2000 points with 400 NFE: ``old`` with the default sampler (PC-200), ``new`` with auto's
final sampler (Euler-Maruyama, 400 steps; rows run before it have ``sampler`` PC-200 in the JSON's
``final_sampler``).  Both are measured against the same
yardstick: 2000 **fresh** points of the generator (never in any file), with

* ``scoresde.evaluation.assess`` against the generator as a data set (KDE of a fresh reference,
  eval seed 0): the headline ``outlier_z``, its verdict and the overall verdict;
* the exact W2 (optimal assignment, ``scipy.optimize.linear_sum_assignment``) between the samples
  and fresh points, divided by the W2 between two independent fresh samples of the same size; both
  are means over ``W2_PAIRS`` = 5 fresh samples (one pair of fresh samples alone varies by a factor of
  two at n = 2000 on the S-curve: 0.068 to 0.168);
* the CPU time of the job (user + sys of the child process, ``os.wait4``), under ``OMP_NUM_THREADS=1``.

Reproduce (the full grid of the issue: 8 data sets x 3 seeds x 2 recipes, about 8 CPU-hours)::

    python benchmarks/own_data.py --seeds 0 1 2 --jobs 2
    python benchmarks/own_data.py --datasets s_curve spiral_gap --recipes new --seeds 0 --merge

``--merge`` keeps the rows already in ``benchmarks/results/own_data.json`` (others are replaced when rerun);
``--rescore`` recomputes the measures of the stored rows from their run directories (no training);
``--add other.json`` merges the rows of parallel invocations.  Writes ``own_data.{json,md,png}``.
``--tails label=<run dir> ...`` draws heavy_tailed runs' samples against fresh data
(``own_data_heavy_tailed.png``: where their W2 comes from; no training).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
N_TRAIN = 10_000
N_EVAL = 2000
W2_PAIRS = 5
RECIPES = {"old": ["auto=false", "data.validation=0"], "new": []}


# -- the data sets: point generators rng -> [n, 2] -------------------------------------------------
def s_curve(n, rng):
    t = 3 * np.pi * (rng.uniform(size=n) - 0.5)
    return np.stack([np.sin(t), np.sign(t) * (np.cos(t) - 1)], 1) + 0.05 * rng.normal(size=(n, 2))


def _moons(n, rng, noise):
    k = rng.uniform(size=n) < 0.5
    a = np.pi * rng.uniform(size=n)
    x = np.where(k, np.cos(a), 1 - np.cos(a))
    y = np.where(k, np.sin(a), 0.5 - np.sin(a))
    return np.stack([x, y], 1) + noise * rng.normal(size=(n, 2))


def moons_noise_005(n, rng):
    return _moons(n, rng, 0.05)


def moons_noise_020(n, rng):
    return _moons(n, rng, 0.2)


def rings_unequal(n, rng):
    """Two concentric rings, radius 1 (width 0.03) and 2.5 (width 0.2), half the points each."""
    k = rng.uniform(size=n) < 0.5
    r = np.where(k, 1 + 0.03 * rng.normal(size=n), 2.5 + 0.2 * rng.normal(size=n))
    a = 2 * np.pi * rng.uniform(size=n)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def spiral_gap(n, rng):
    """One arm of an Archimedean spiral, 2.5 turns, with the angles of a quarter turn in the middle left out."""
    lo, hi = 0.5 * np.pi, 5.5 * np.pi
    gap = (2.75 * np.pi, 3.25 * np.pi)
    out = []
    while sum(len(o) for o in out) < n:
        a = np.sqrt(rng.uniform(lo**2, hi**2, size=2 * n))  # uniform along the arm's length (approximately)
        out.append(a[(a < gap[0]) | (a > gap[1])])
    a = np.concatenate(out)[:n]
    r = a / (2 * np.pi)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1) + 0.04 * rng.normal(size=(n, 2))


def letter_e(n, rng):
    """The letter E: four strokes (spine, top, middle, bottom), uniform along them, noise 0.03."""
    segments = np.array([[0, 0, 0, 2], [0, 2, 1.2, 2], [0, 1, 0.9, 1], [0, 0, 1.2, 0]], dtype=float)
    lengths = np.hypot(segments[:, 2] - segments[:, 0], segments[:, 3] - segments[:, 1])
    k = rng.choice(4, size=n, p=lengths / lengths.sum())
    u = rng.uniform(size=(n, 1))
    s = segments[k]
    return s[:, :2] + u * (s[:, 2:] - s[:, :2]) + 0.03 * rng.normal(size=(n, 2))


def heavy_tailed(n, rng):
    """A Student-t cloud with 3 degrees of freedom (correlation 0.5)."""
    z = rng.normal(size=(n, 2)) @ np.linalg.cholesky(np.array([[1, 0.5], [0.5, 1]])).T
    return z / np.sqrt(rng.chisquare(3, size=(n, 1)) / 3)


def rare_mode(n, rng):
    """99 % in a Gaussian blob, 1 % in a small mode 4 units away (std 0.15)."""
    k = rng.uniform(size=n) < 0.01
    return np.where(k[:, None], np.array([4.0, 0.0]) + 0.15 * rng.normal(size=(n, 2)), rng.normal(size=(n, 2)))


DATASETS = {f.__name__: f for f in (s_curve, moons_noise_005, moons_noise_020, rings_unequal, spiral_gap, letter_e,
                                     heavy_tailed, rare_mode)}


class Fresh:
    """A generator of fresh points as a data set for ``assess``: ``sample(k, generator, dtype=)``."""

    def __init__(self, name: str):
        self.name, self.fn, self.event_shape = name, DATASETS[name], (2,)

    def sample(self, k, generator=None, *, dtype=torch.float32):
        seed = int(torch.randint(2**62, (1,), generator=generator))
        return torch.as_tensor(self.fn(k, np.random.default_rng(seed)), dtype=dtype)

    def __repr__(self):
        return f"own_data.{self.name}"


def exact_w2(x: np.ndarray, y: np.ndarray) -> float:
    """Exact W2 between two equal-size point clouds: the optimal assignment of squared distances."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    cost = cdist(x, y, "sqeuclidean")
    rows, cols = linear_sum_assignment(cost)
    return float(math.sqrt(cost[rows, cols].mean()))


# -- one run ---------------------------------------------------------------------------------------
def run_one(name: str, seed: int, recipe: str, workdir: Path) -> dict:
    rng = np.random.default_rng([seed, 2026])
    path = workdir / f"{name}_seed{seed}.npy"
    if not path.exists():
        np.save(path, DATASETS[name](N_TRAIN, rng).astype(np.float64))
    out = workdir / f"{name}_seed{seed}_{recipe}"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    args = [sys.executable, "-m", "scoresde.apps.train", "data=file", f"data.path={path}", f"seed={seed}",
            f"num_samples={N_EVAL}", f"hydra.run.dir={out}", *RECIPES[recipe]]
    wall = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read()
    cpu, wall = usage.ru_utime + usage.ru_stime, time.perf_counter() - wall
    row = {"dataset": name, "seed": seed, "recipe": recipe, "cpu_s": cpu, "wall_s": wall, "run_dir": str(out)}
    if proc.returncode != 0:
        return {**row, "error": (stderr.strip().splitlines() or [f"rc {proc.returncode}"])[-1]}
    return {**row, **measure(name, seed, out)}


def measure(name: str, seed: int, out: Path) -> dict:
    """The measures of the module docstring for the run directory ``out``."""
    from scoresde.evaluation import assess

    m = json.loads((out / "metrics.json").read_text())
    x = np.load(out / "samples.npz")["samples"].astype(np.float64)
    fresh_rng = np.random.default_rng([seed, 7, 2026])
    fresh = [DATASETS[name](len(x), fresh_rng) for _ in range(2 * W2_PAIRS)]
    torch.set_num_threads(1)
    q = assess(torch.as_tensor(x), Fresh(name), seed=0)
    head = q["metrics"][q["headline"]]
    train = m["train"]
    auto = train.get("auto", {})
    return {"headline": q["headline"], "value": head["value"], "floor_band": head["floor_band"],
            "verdict": head["verdict"], "overall": q["overall"]["verdict"], "driven_by": q["overall"]["driven_by"],
            "w2": float(np.mean([exact_w2(x, f) for f in fresh[:W2_PAIRS]])),
            "w2_iid": float(np.mean([exact_w2(a, b) for a, b in zip(fresh[W2_PAIRS:], fresh[:W2_PAIRS])])),
            "steps": train["num_steps"], "input_features": auto.get("input_features", 0),
            "final_sampler": m.get("sampler"),
            "finished_early": auto.get("finished_early"), "sampled": train.get("sampled"),
            "checks_cpu_s": train.get("quality_checks", {}).get("cpu_s"), "pilots_cpu_s": auto.get("pilots_cpu_s"),
            "train_s": m["time"].get("train_s"),
            "app_headline": m["quality"]["metrics"][m["quality"]["headline"]]["value"],
            "app_verdict": m["quality"]["metrics"][m["quality"]["headline"]]["verdict"]}


# -- reports ---------------------------------------------------------------------------------------
def write_markdown(rows: list[dict], path: Path) -> None:
    lines = ["# A user's own 2-D data: the old default run against the new adaptive default (issue 21)", "",
             "Generated by `benchmarks/own_data.py` (see its docstring for the data sets and the measures).  "
             "Each row is one `scoresde-train data=file data.path=<10 000 points>` job: `old` = `auto=false "
             "data.validation=0`, `new` = the defaults.  Measured against 2000 fresh points of the generator: "
             "`outlier_z` (KDE of a fresh reference; floor band p95 ~2.1 at n = 2000) with its verdict and the "
             "overall verdict (Holm over outlier_z, C2ST, precision, recall), the exact W2 over the W2 of two "
             "i.i.d. fresh samples (1.0 = as close as fresh data), CPU time of the job (user + sys, "
             "OMP_NUM_THREADS=1, on a 2-core machine shared with other jobs).  `steps`: steps trained; "
             "`feat`: input Fourier features chosen; `early`: finished before the budget.", "",
             "| data set | seed | recipe | final sampler | outlier_z | verdict | overall | W2 / iid | steps | feat | "
             "early | sampled step | checks CPU s | CPU s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["dataset"], r["seed"], r["recipe"] != "old")):
        if "error" in r:
            lines.append(f"| {r['dataset']} | {r['seed']} | {r['recipe']} | | error: {r['error']} |||||||||| "
                         f"{r['cpu_s']:.0f} |")
            continue
        sampled = (r.get("sampled") or {}).get("step", r["steps"])
        checks = "" if r.get("checks_cpu_s") is None else f"{r['checks_cpu_s']:.1f}"
        lines.append(f"| {r['dataset']} | {r['seed']} | {r['recipe']} | {sampler_name(r.get('final_sampler'))} | "
                     f"{r['value']:.2f} | {r['verdict']} | "
                     f"{r['overall']} | {r['w2'] / r['w2_iid']:.2f} | {r['steps']} | {r['input_features']} | "
                     f"{'' if r.get('finished_early') is None else ('yes' if r['finished_early'] else 'no')} | "
                     f"{sampled} | {checks} | {r['cpu_s']:.0f} |")
    done = [r for r in rows if "error" not in r]
    for recipe in ("old", "new"):
        rs = [r for r in done if r["recipe"] == recipe]
        if rs:
            lines += ["", f"**{recipe}**: {sum(r['verdict'] == 'at floor' for r in rs)} of {len(rs)} runs with the "
                          f"headline at floor, {sum(r['overall'] == 'at floor' for r in rs)} at floor overall, "
                          f"{sum(r['w2'] / r['w2_iid'] <= 1.2 for r in rs)} with W2 <= 1.2 x i.i.d., "
                          f"{sum(r['cpu_s'] <= 300 for r in rs)} within 5 CPU-minutes; median CPU "
                          f"{np.median([r['cpu_s'] for r in rs]):.0f} s."]
    path.write_text("\n".join(lines) + "\n")


def sampler_name(text: str | None) -> str:
    """``EM-400`` / ``PC-200`` from the sampler's repr in metrics.json ("" if unknown)."""
    import re

    steps = re.search(r"num_steps=(\d+)", text or "")
    kind = {"ReverseSDE": "EM", "PredictorCorrector": "PC"}.get((text or "").split("(")[0])
    return f"{kind}-{steps.group(1)}" if kind and steps else ""


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    done = [r for r in rows if "error" not in r and r["seed"] == min(x["seed"] for x in rows)]
    names = sorted({r["dataset"] for r in done})
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    width = 0.38
    for i, recipe in enumerate(("old", "new")):
        vals = {r["dataset"]: r for r in done if r["recipe"] == recipe}
        pos = [j + (i - 0.5) * width for j, n in enumerate(names) if n in vals]
        left.bar(pos, [max(vals[n]["value"], 0.1) for n in names if n in vals], width, label=recipe, color=f"C{i}")
        right.bar(pos, [vals[n]["w2"] / vals[n]["w2_iid"] for n in names if n in vals], width, label=recipe,
                  color=f"C{i}")
    left.axhline(2.1, color="k", ls="--", lw=1, label="floor band p95 (~2.1)")
    left.set_yscale("log")
    left.set_ylim(0.08, 300)  # room for the legend above the bars
    right.set_ylim(0, 1.45)
    left.set_ylabel("outlier_z against fresh data (clipped at 0.1)")
    right.axhline(1.2, color="k", ls="--", lw=1, label="goal: 1.2 x i.i.d.")
    right.set_ylabel("W2 to fresh data / i.i.d. W2")
    for ax, where in ((left, "upper left"), (right, "upper left")):
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
        ax.legend(fontsize=8, loc=where)
    fig.suptitle(f"own 2-D data, seed {min(r['seed'] for r in done)}: old default vs new adaptive default", fontsize=10)
    fig.savefig(path, dpi=110)


def tails(run_dirs: list[str], path: Path) -> None:
    """heavy_tailed: where a large W2 / iid comes from (``--tails``; own_data.md, "heavy_tailed seed 2").

    For each run directory (label=dir): the samples' radii against fresh data (a scatter on symlog axes and
    a log-radius histogram), the number beyond radius 70 (exact rate 1.65e-5 per sample) and W2 / iid with
    the k largest-radius samples left out.  Writes ``path`` (PNG) and prints the numbers.
    """
    from matplotlib.figure import Figure

    fresh = heavy_tailed(N_EVAL, np.random.default_rng([2, 7, 2026]))
    pairs = [heavy_tailed(N_EVAL, np.random.default_rng([2, 8, 2026, i])) for i in range(2 * W2_PAIRS)]
    iid = np.mean([exact_w2(a, b) for a, b in zip(pairs[:W2_PAIRS], pairs[W2_PAIRS:])])
    runs = dict(a.split("=", 1) for a in run_dirs)
    fig = Figure(figsize=(3.6 * (len(runs) + 1), 3.8), layout="constrained")
    axes = fig.subplots(1, len(runs) + 1)
    bins = np.linspace(-3, 3.2, 50)
    for ax, (label, run) in zip(axes, runs.items()):
        x = np.load(Path(run) / "samples.npz")["samples"].astype(np.float64)
        r = np.linalg.norm(x, axis=1)
        order = np.argsort(r)
        ratios = [np.mean([exact_w2(x[order[:len(x) - k]], p[:len(x) - k]) for p in pairs[:W2_PAIRS]]) / iid
                  for k in (0, 2, 4, 8)]
        far = r > 70
        print(f"{label}: {far.sum()} of {len(x)} samples beyond radius 70 (exact 1.65e-5 each, "
              f"{len(x) * 1.65e-5:.2f} expected), max radius {r.max():.0f}; W2/iid {ratios[0]:.2f}, without the "
              f"2 / 4 / 8 largest-radius samples {ratios[1]:.2f} / {ratios[2]:.2f} / {ratios[3]:.2f}")
        ax.scatter(fresh[:, 0], fresh[:, 1], s=2, c="k", alpha=0.4, label="fresh data")
        ax.scatter(x[:, 0], x[:, 1], s=2, c="C3", alpha=0.5, label="samples")
        ax.scatter(x[far, 0], x[far, 1], s=40, facecolors="none", edgecolors="C3", label=f"{far.sum()} beyond r = 70")
        ax.set_xscale("symlog", linthresh=5)
        ax.set_yscale("symlog", linthresh=5)
        lim = max(1000.0, 1.2 * np.abs(x).max())
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_title(f"{label}: W2/iid {ratios[0]:.2f}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        axes[-1].hist(np.log10(r), bins=bins, histtype="step", lw=1.5, label=label)
    axes[-1].hist(np.log10(np.linalg.norm(fresh, axis=1)), bins=bins, histtype="step", color="k", lw=1.5,
                  label="fresh data")
    axes[-1].set_yscale("log")
    axes[-1].set_xlabel("log10 radius")
    axes[-1].set_ylabel(f"count of {N_EVAL}")
    axes[-1].legend(fontsize=7)
    fig.suptitle(f"heavy_tailed (Student t, 3 dof): {N_EVAL} samples against {N_EVAL} fresh points (symlog axes)",
                 fontsize=10)
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", default=["old", "new"], choices=list(RECIPES))
    parser.add_argument("--jobs", type=int, default=1, help="jobs run at once (one core each)")
    parser.add_argument("--merge", action="store_true", help="keep the rows already in the JSON that are not rerun")
    parser.add_argument("--workdir", default=None, help="where the data files and run directories go (default: a temp dir)")
    parser.add_argument("--json", default=str(RESULTS / "own_data.json"))
    parser.add_argument("--rescore", action="store_true", help="recompute the measures of the stored rows, no training")
    parser.add_argument("--add", nargs="*", default=[], help="JSON files of other invocations whose rows to merge in")
    parser.add_argument("--tails", nargs="+", metavar="LABEL=RUN_DIR",
                        help="heavy_tailed runs: the tail figure own_data_heavy_tailed.png (no training)")
    args = parser.parse_args()
    if args.tails:
        tails(args.tails, RESULTS / "own_data_heavy_tailed.png")
        return

    json_path = Path(args.json)
    rows = json.loads(json_path.read_text())["rows"] if (args.merge or args.rescore or args.add) and json_path.exists() else []
    for other in args.add:
        for row in json.loads(Path(other).read_text())["rows"]:
            key = (row["dataset"], row["seed"], row["recipe"])
            rows[:] = [r for r in rows if (r["dataset"], r["seed"], r["recipe"]) != key] + [row]
    if args.rescore or args.add:
        if args.rescore:
            rows[:] = [r if "error" in r else {**r, **measure(r["dataset"], r["seed"], Path(r["run_dir"]))} for r in rows]
        save(rows, json_path)
        return
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="own_data_"))
    workdir.mkdir(parents=True, exist_ok=True)
    jobs = [(d, s, r) for s in args.seeds for d in args.datasets for r in args.recipes]
    lock = threading.Lock()

    def one(job):
        row = run_one(*job, workdir)
        with lock:
            rows[:] = [r for r in rows if (r["dataset"], r["seed"], r["recipe"]) != job] + [row]
            save(rows, json_path)
        msg = row.get("error") or (f"outlier_z {row['value']:.2f} {row['verdict']}, overall {row['overall']}, "
                                   f"W2/iid {row['w2'] / row['w2_iid']:.2f}, steps {row['steps']}")
        print(f"{job[0]:16s} seed {job[1]} {job[2]:3s}: {msg}; CPU {row['cpu_s']:.0f} s", flush=True)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(one, jobs))
    save(rows, json_path)


def save(rows: list[dict], json_path: Path) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"rows": rows}, indent=1))
    write_markdown(rows, json_path.with_suffix(".md"))
    if any("error" not in r for r in rows):
        plot(rows, json_path.with_suffix(".png"))


if __name__ == "__main__":
    main()
