"""Speed and memory of the library around the score network.

(a) Sampler overhead.  For each fixed-step sampler at ``--nfe`` (default 50), the time of a run
    divided by the time of the same score evaluations alone: ``model.score_fn(x, t)`` of a default
    ``nets.ScoreMLP`` (VP, 75k parameters, untrained) on the same batch (``--batch``, 10 000 x 2),
    under ``torch.no_grad``, replayed on exactly the (x, t) inputs recorded from a run of that
    sampler (the untrained network drives x to |x| ~ 10^3, where its calls are ~15 % slower than
    on N(0, I) inputs, so a bare loop on fixed inputs would not be the same work).  Target <= 1.10.  Times are the process's CPU time (one thread: the
    work done, little disturbed by other load on a shared machine; wall-clock ratios are reported
    too); the ratio is the median over ``--repeats`` back-to-back pairs.  Also reported: the "in-run" ratio,
    a run's CPU time over the CPU time spent inside its own score calls (a timing wrapper), which
    needs no second loop and is the least disturbed by load.  RK45 is listed for information: its
    step-size control and numpy round trips are overhead by design.
(b) Training throughput.  ``training.train`` for ``--train-steps`` steps (default ``TrainConfig``:
    batch 512, Adam, grad clipping, warm-up, EMA) against a bare hand-written loop doing the same
    forward/backward/Adam step (same model, data set, DSM loss written out: t ~ U(t_min, 1), z ~ N(0, I),
    loss = mean ||sigma s(x_t, t) + z||^2), and against the bare loop plus clipping and EMA (what the
    library step does).  Target: library / bare >= 0.9 in steps per second.
(c) Peak memory of sampling at NFE 100 vs 1000.  Each (sampler, NFE) runs in a fresh subprocess that
    builds the problem, warms the score up, then records the growth of the peak resident set during
    ``sampler.run`` (Linux: VmHWM after resetting it through ``/proc/self/clear_refs``, minus VmRSS
    before; elsewhere ``resource.getrusage`` ``ru_maxrss`` deltas) and the Python-side peak
    (``tracemalloc``, which also sees numpy arrays but not torch tensors).  The score is the exact ``grid_gaussians`` score (``--memory-score exact``, fast; its
    [B, 25, 2] temporaries are of the size of a small network's activations) or the ScoreMLP
    (``--memory-score mlp``).  Target: flat in NFE.

Outputs ``benchmarks/results/speed.{json,md,png}``; ``--quick`` writes ``speed_quick.*``.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _common import RESULTS, Timer, command_line, log, machine, machine_line, md_table, set_threads, write_results

import torch  # noqa: E402

from scoresde import samplers  # noqa: E402
from scoresde.data.datasets import MixtureDataset  # noqa: E402
from scoresde.models.mlp import ScoreMLP  # noqa: E402
from scoresde.samplers import (  # noqa: E402
    DDIM, DDPM, AnnealedLangevin, Langevin, PredictorCorrector, ProbabilityFlowODE, ReverseSDE,
)
from scoresde.sdes import VPSDE  # noqa: E402
from scoresde.data.toy import TARGETS  # noqa: E402
from scoresde.training import TrainConfig, train  # noqa: E402

NAME = "speed"
SAMPLERS = {  # name -> nominal NFE -> sampler (actual NFE comes from the run)
    "Langevin": lambda n: Langevin(num_steps=n),
    "AnnealedLangevin": lambda n: AnnealedLangevin(num_levels=10, steps_per_level=max(1, n // 10), denoise=False),
    "ReverseSDE-EM": lambda n: ReverseSDE(num_steps=n),
    "PC": lambda n: PredictorCorrector(num_steps=max(1, n // 2)),
    "DDPM": lambda n: DDPM(num_steps=n),
    "DDIM": lambda n: DDIM(num_steps=n),
    "ODE-Euler": lambda n: ProbabilityFlowODE(method="euler", num_steps=n),
    "ODE-Heun": lambda n: ProbabilityFlowODE(method="heun", num_steps=(n + 1) // 2),
}
_ISSUE8 = {  # the samplers of issue 8, included once scoresde.samplers exports them
    "ODE-RK4": ("ProbabilityFlowODE", lambda c, n: c(method="rk4", num_steps=max(2, (n - 1) // 4 + 1))),
    "EDMHeun": ("EDMHeun", lambda c, n: c(num_steps=max(2, (n + 1) // 2))),
    "DPM++2M": ("DPMSolverPP", lambda c, n: c(num_steps=n, order=2)),
    "DPM++3M": ("DPMSolverPP", lambda c, n: c(num_steps=n, order=3)),
    "DPM++2M-SDE": ("DPMSolverPP", lambda c, n: c(num_steps=n, order=2, eta=1.0)),
    "UniPC": ("UniPC", lambda c, n: c(num_steps=n)),
}
for _name, (_cls, _make) in _ISSUE8.items():
    if hasattr(samplers, _cls):
        SAMPLERS[_name] = functools.partial(_make, getattr(samplers, _cls))
RK45_TOLS = {100: 1e-4, 1000: 1e-9}  # RK45 has no NFE knob: tolerances giving roughly these NFE


def make_model(seed: int = 0) -> ScoreMLP:
    return ScoreMLP(VPSDE(), (2,), generator=torch.Generator().manual_seed(seed)).eval()


# -- (a) sampler overhead -------------------------------------------------------------------------------
def score_calls_time(score, x, nfe: int) -> tuple[float, float]:
    """(wall, CPU) seconds of ``nfe`` score calls on ``x`` at the times of a sampling grid."""
    ts = torch.linspace(1.0, 1e-5, nfe).tolist()
    with torch.no_grad(), Timer() as tm:
        for t in ts:
            score(x, torch.full((x.shape[0],), t))
    return tm.seconds, tm.cpu_seconds


class TimedScore:
    """Wraps a score function; accumulates the (wall, CPU) time spent inside its calls and, with
    ``record``, keeps a copy of every input ``(x, t)`` for replay."""

    def __init__(self, score, record: bool = False):
        self.score, self.wall, self.cpu = score, 0.0, 0.0
        self.calls: list | None = [] if record else None

    def __call__(self, x, t):
        if self.calls is not None:
            self.calls.append((x.clone(), t.clone()))
        with Timer() as tm:
            out = self.score(x, t)
        self.wall += tm.seconds
        self.cpu += tm.cpu_seconds
        return out


def replay(score, calls) -> Timer:
    """Time the bare score calls on exactly the inputs a sampler run produced."""
    with torch.no_grad(), Timer() as tm:
        for x, t in calls:
            score(x, t)
    return tm


def overhead(args, log_rows: list) -> list[dict]:
    model = make_model()
    score, sde = model.score_fn, model.sde
    x = torch.randn(args.batch, 2, generator=torch.Generator().manual_seed(1))
    score_calls_time(score, x, 5)  # warm-up
    chosen = dict(SAMPLERS, **{"ODE-RK45": lambda n: ProbabilityFlowODE(method="RK45", rtol=1e-3, atol=1e-3)})
    chosen = {k: v for k, v in chosen.items() if not args.samplers or k in args.samplers}
    rows = []
    for name, make in chosen.items():
        sampler = make(args.nfe)
        recorder = TimedScore(score, record=True)  # one run records the inputs the score sees
        nfe = sampler.run(recorder, sde, x_init=x, generator=torch.Generator().manual_seed(2)).nfe
        runs = []
        for r in range(args.repeats):  # sampler run and replay back to back, alternating which goes first
            def run_sampler():
                timed = TimedScore(score)
                with Timer() as tm:
                    sampler.run(timed, sde, x_init=x, generator=torch.Generator().manual_seed(2))
                return tm, timed

            if r % 2:
                base = replay(score, recorder.calls)
                tm, timed = run_sampler()
            else:
                tm, timed = run_sampler()
                base = replay(score, recorder.calls)
            runs.append({"sampler_cpu_s": tm.cpu_seconds, "replay_cpu_s": base.cpu_seconds,
                         "sampler_wall_s": tm.seconds, "replay_wall_s": base.seconds,
                         "inside_cpu_s": timed.cpu})
        med = lambda key: statistics.median(key(u) for u in runs)  # noqa: E731
        rows.append({"sampler": name, "nfe": nfe, "target": 1.10,
                     "sampler_cpu_s": min(u["sampler_cpu_s"] for u in runs),
                     "score_calls_cpu_s": min(u["replay_cpu_s"] for u in runs),
                     "ratio_cpu": med(lambda u: u["sampler_cpu_s"] / u["replay_cpu_s"]),
                     "ratio_wall": med(lambda u: u["sampler_wall_s"] / u["replay_wall_s"]),
                     "ratio_in_run_cpu": med(lambda u: u["sampler_cpu_s"] / u["inside_cpu_s"]),
                     "cpu_ms_per_nfe": 1e3 * min(u["sampler_cpu_s"] for u in runs) / nfe, "runs": runs})
        r = rows[-1]
        log_rows.append(f"(a) {name:16s} NFE {nfe:4d}: CPU ratio {r['ratio_cpu']:.3f}, in-run {r['ratio_in_run_cpu']:.3f}, "
                        f"wall ratio {r['ratio_wall']:.3f} ({r['cpu_ms_per_nfe']:.1f} CPU-ms per NFE)")
        log(log_rows[-1])
    return rows


# -- (b) training throughput ---------------------------------------------------------------------------
def bare_loop(model, data, steps: int, batch_size: int, lr: float, clip_and_ema: bool, seed: int = 0) -> Timer:
    """The DSM step by hand: sample, perturb, forward, loss, backward, (clip,) Adam (, EMA).  Returns the timer."""
    sde = model.sde
    params = [p for p in model.parameters() if p.requires_grad]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=lr)
    g_data, g_noise = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    model.train()
    with Timer() as tm:
        for step in range(steps):
            x0 = data.sample(batch_size, g_data)
            t = sde.t_min + (sde.T - sde.t_min) * torch.rand(batch_size, generator=g_noise)
            z = torch.randn(x0.shape, generator=g_noise)
            alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
            s = model.score_fn(alpha * x0 + sigma * z, t)
            loss = ((sigma * s + z) ** 2).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip_and_ema:
                torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
            opt.step()
            if clip_and_ema:
                torch._foreach_lerp_(ema, params, 1.0 - min(0.999, (1 + step) / (10 + step)))
    return tm


def training(args, log_rows: list) -> list[dict]:
    data = MixtureDataset(TARGETS["eight_gaussians"]())
    config = TrainConfig(num_steps=args.train_steps)
    lib, loops = "library train()", ("library train()", "bare loop", "bare loop + clip + EMA")

    def run(name: str) -> Timer:
        if name == lib:
            with Timer() as tm:
                train(make_model(), data, config)
            return tm
        return bare_loop(make_model(), data, args.train_steps, config.batch_size, config.lr, name != "bare loop")

    bare_loop(make_model(), data, 20, config.batch_size, config.lr, True)  # warm-up
    runs = {name: [] for name in loops}
    for r in range(args.repeats):  # the three loops back to back, order rotated every repeat
        for name in loops[r % 3:] + loops[:r % 3]:
            runs[name].append(run(name))
    rows = []
    for name in loops:
        # paired: library / this loop within the same repeat (both measured within a few seconds)
        paired_cpu = statistics.median(t.cpu_seconds / l.cpu_seconds for t, l in zip(runs[name], runs[lib]))
        paired_wall = statistics.median(t.seconds / l.seconds for t, l in zip(runs[name], runs[lib]))
        cpu, wall = min(t.cpu_seconds for t in runs[name]), min(t.seconds for t in runs[name])
        rows.append({"loop": name, "steps": args.train_steps, "batch_size": config.batch_size,
                     "cpu_s": cpu, "steps_per_cpu_s": args.train_steps / cpu,
                     "wall_s": wall, "steps_per_wall_s": args.train_steps / wall,
                     "library_over_this_cpu": paired_cpu, "library_over_this_wall": paired_wall,
                     "cpu_runs": [t.cpu_seconds for t in runs[name]]})
        log_rows.append(f"(b) {name:24s}: {rows[-1]['steps_per_cpu_s']:7.1f} steps per CPU-s, library/this "
                        f"{paired_cpu:.3f} (CPU), {paired_wall:.3f} (wall)")
        log(log_rows[-1])
    return rows


# -- (c) peak memory -------------------------------------------------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_child(sampler_name: str, nfe: int, batch: int, score_kind: str) -> dict:
    """Runs in a fresh process: growth of the peak RSS and the tracemalloc peak during one sampler run.

    Linux: RSS before the run, then the peak mark is reset (``/proc/self/clear_refs``) and read back
    after the run (VmHWM), so import-time peaks do not mask the run.  Elsewhere: ``ru_maxrss`` deltas.
    """
    import resource
    import tracemalloc

    sde = VPSDE()
    if score_kind == "mlp":
        score = make_model().score_fn
    else:
        score = TARGETS["grid_gaussians"]().score_fn(sde)
    x = torch.randn(batch, 2, generator=torch.Generator().manual_seed(1))
    if sampler_name == "ODE-RK45":
        sampler = ProbabilityFlowODE(method="RK45", rtol=RK45_TOLS[nfe], atol=RK45_TOLS[nfe])
    else:
        sampler = SAMPLERS[sampler_name](nfe)
    with torch.no_grad():  # warm-up: one score call and one short run allocate what every step needs
        score(x, torch.full((batch,), 0.5))
        SAMPLERS["DDPM"](3).run(score, sde, x_init=x, generator=torch.Generator().manual_seed(0))
    rss_before = _status_kb("VmRSS")
    use_hwm = rss_before is not None and _reset_peak()
    max_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    result = sampler.run(score, sde, x_init=x, generator=torch.Generator().manual_seed(2))
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    if use_hwm:
        growth_kb, method = _status_kb("VmHWM") - rss_before, "VmHWM after reset - VmRSS before"
    else:
        growth_kb, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - max_before, "ru_maxrss delta"
    return {"sampler": sampler_name, "nominal_nfe": nfe, "nfe": result.nfe, "rss_before_mb": (rss_before or 0) / 1024,
            "peak_rss_growth_mb": growth_kb / 1024, "python_peak_mb": py_peak / 2**20, "method": method}


def memory(args, log_rows: list) -> list[dict]:
    rows = []
    names = [k for k in list(SAMPLERS) + ["ODE-RK45"] if not args.samplers or k in args.samplers]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    for name in names:
        for nfe in (100, 1000):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", name, str(nfe),
                   "--memory-batch", str(args.memory_batch), "--memory-score", args.memory_score]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            log_rows.append(f"(c) {name:16s} NFE {row['nfe']:5d}: peak RSS +{row['peak_rss_growth_mb']:.1f} MB, "
                            f"python peak {row['python_peak_mb']:.2f} MB")
            log(log_rows[-1])
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small smoke run")
    p.add_argument("--parts", nargs="+", default=["overhead", "training", "memory"],
                   choices=["overhead", "training", "memory"])
    p.add_argument("--nfe", type=int, default=50, help="NFE of the overhead runs")
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--memory-batch", type=int, default=10_000)
    p.add_argument("--memory-score", choices=["exact", "mlp"], default="exact")
    p.add_argument("--memory-child", nargs=2, metavar=("SAMPLER", "NFE"), help=argparse.SUPPRESS)
    p.add_argument("--samplers", nargs="+", default=None, help="subset of the sampler names (default: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    set_threads(args.threads)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child[0], int(args.memory_child[1]), args.memory_batch,
                                      args.memory_score)))
        return
    if args.quick:
        args.nfe, args.batch, args.repeats, args.train_steps, args.memory_batch = 20, 2000, 1, 30, 2000
    info, out = machine(), Path(args.out)
    name = NAME + ("_quick" if args.quick else "")
    log_rows: list[str] = []
    results: dict = {}
    with Timer() as total:
        if "overhead" in args.parts:
            results["overhead"] = overhead(args, log_rows)
        if "training" in args.parts:
            results["training"] = training(args, log_rows)
        if "memory" in args.parts:
            results["memory"] = memory(args, log_rows)

    md = [f"# Speed and memory ({'quick' if args.quick else 'full'} run)", "", f"Command: `{command_line()}`  ",
          f"Machine: {machine_line(info)}  ", f"Total run time: {total.seconds:.0f} s.", ""]
    if "overhead" in results:
        md += [f"## (a) Sampler overhead: sampler time / time of the same NFE of ScoreMLP score calls alone "
               f"(batch {args.batch}, best of {args.repeats} interleaved runs; target <= 1.10)", "",
               "Measure: CPU time of the process (1 thread) of a sampler run over that of replaying, in a bare loop, "
               "the score calls on exactly the (x, t) inputs the run produced (median of the paired ratios over "
               "runs; back to back, alternating order).  'in-run' divides a run's CPU time by the CPU time spent "
               "inside its own score calls.  Wall-clock ratios for reference (disturbed by other load).  "
               "'sampler CPU' and 'score calls CPU' are the minima over runs.", "",
               md_table(["sampler", "NFE", "sampler CPU (s)", "score calls CPU (s)", "ratio (CPU)", "ratio (in-run CPU)",
                         "ratio (wall)", "CPU ms / NFE", "meets target"],
                        [[r["sampler"], r["nfe"], f"{r['sampler_cpu_s']:.3f}", f"{r['score_calls_cpu_s']:.3f}",
                          f"{r['ratio_cpu']:.3f}", f"{r['ratio_in_run_cpu']:.3f}", f"{r['ratio_wall']:.3f}",
                          f"{r['cpu_ms_per_nfe']:.1f}", "yes" if max(r["ratio_cpu"], r["ratio_in_run_cpu"]) <= 1.10 else
                          ("in-run only" if r["ratio_in_run_cpu"] <= 1.10 else "no")] for r in results["overhead"]]), ""]
    if "training" in results:
        md += [f"## (b) Training throughput: {args.train_steps} steps, batch 512, default ScoreMLP "
               f"({args.repeats} repeats of the three loops back to back, order rotated; target: library / bare >= 0.9)", "",
               "steps / s from the fastest run of each loop; 'library / this' is the median over repeats of the "
               "throughput ratio within a repeat (paired, so slow drifts of the machine's load cancel).", "",
               md_table(["loop", "steps / CPU-s", "steps / wall-s", "library / this (CPU)", "library / this (wall)"],
                        [[r["loop"], f"{r['steps_per_cpu_s']:.1f}", f"{r['steps_per_wall_s']:.1f}",
                          f"{r['library_over_this_cpu']:.3f}", f"{r['library_over_this_wall']:.3f}"]
                         for r in results["training"]]), ""]
    if "memory" in results:
        table = []
        for sampler in dict.fromkeys(r["sampler"] for r in results["memory"]):
            a, b = [r for r in results["memory"] if r["sampler"] == sampler]
            table.append([sampler, f"{a['nfe']} / {b['nfe']}", f"{a['peak_rss_growth_mb']:.1f}", f"{b['peak_rss_growth_mb']:.1f}",
                          f"{a['python_peak_mb']:.2f}", f"{b['python_peak_mb']:.2f}"])
        md += [f"## (c) Peak memory growth during sampling, NFE 100 vs 1000 (batch {args.memory_batch}, "
               f"{args.memory_score} score, fresh process each; target: flat)", "",
               md_table(["sampler", "NFE", "peak RSS growth (MB) @100", "@1000", "Python peak (MB) @100", "@1000"], table), "",
               f"RK45 has no NFE knob: rtol = atol = {RK45_TOLS[100]:g} and {RK45_TOLS[1000]:g} stand in for 100 and 1000.", ""]
    markdown = "\n".join(md)
    payload = {"benchmark": name, "command": command_line(), "machine": info, "args": vars(args),
               "total_seconds": total.seconds, **results}
    paths = write_results(name, payload, markdown, out)
    plot(results, out / f"{name}.png")
    print(markdown)
    log(f"wrote {paths[0]} and {paths[1]} in {total.seconds:.0f} s")


def plot(results: dict, path: Path) -> None:
    """Bar charts of the three parts (matplotlib Figure, no pyplot)."""
    from matplotlib.figure import Figure

    parts = [k for k in ("overhead", "training", "memory") if k in results]
    if not parts:
        return
    fig = Figure(figsize=(5 * len(parts), 3.8), layout="constrained")
    for i, part in enumerate(parts):
        ax = fig.add_subplot(1, len(parts), i + 1)
        rows = results[part]
        if part == "overhead":
            ax.barh([r["sampler"] for r in rows], [r["ratio_cpu"] for r in rows], color="C0")
            ax.axvline(1.10, color="k", ls="--", lw=0.8)
            ax.set_xlabel("sampler CPU time / score-call CPU time")
            ax.set_title("(a) sampler overhead (target <= 1.10)", fontsize=10)
        elif part == "training":
            ax.barh([r["loop"] for r in rows], [r["steps_per_cpu_s"] for r in rows], color="C1")
            ax.set_xlabel("training steps per CPU-second")
            ax.set_title("(b) training throughput", fontsize=10)
        else:
            names = list(dict.fromkeys(r["sampler"] for r in rows))
            y = range(len(names))
            for k, (nfe, colour) in enumerate(((100, "C2"), (1000, "C3"))):
                vals = [next(r["peak_rss_growth_mb"] for r in rows if r["sampler"] == s and r["nominal_nfe"] == nfe)
                        for s in names]
                ax.barh([v + 0.4 * k for v in y], vals, height=0.4, color=colour, label=f"NFE {nfe}")
            ax.set_yticks([v + 0.2 for v in y], names)
            ax.set_xlabel("peak RSS growth during sampling (MB)")
            ax.set_title("(c) memory (target: flat in NFE)", fontsize=10)
            ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
