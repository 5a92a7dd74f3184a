"""Energy vs score parameterisation on three toy data sets, and MALA-corrected PC with the energy model (issue 18).

    python benchmarks/energy.py --jobs 6    # 3 data sets x 2 models x 2 seeds, 3000 steps: ~16 CPU-min
    python benchmarks/energy.py --quick     # smoke run (300 steps, 1 seed; results/quick/)

Public API only.  Part 1: the same residual MLP (width 128, depth 3, Fourier noise embedding, the
library's initialisation) as ``ScoreMLP(parameterization="eps")`` (the default model) and as
``EnergyMLP`` (``model=mlp_energy``: a scalar energy, score = -grad_x E by autograd), trained with
``training.train`` for the same budget (``--steps`` Adam steps, batch 512, lr 2e-3, EMA 0.995; the
"sigma2" DSM loss, t ~ U) under ``VPSDE()`` on eight_gaussians, two_moons and swiss_roll, each
sampled with the default ``PredictorCorrector()`` (200 steps, 400 NFE) and judged by
``evaluation.assess`` against the data set (headline metric, its floor band and the overall verdict,
n = 2000).  Cost: CPU seconds per training step (batch 512) and per score evaluation while sampling
(batch 2000), one thread, from ``time.process_time``.

Part 2: with each trained energy model (EMA weights), PC with the MALA corrector
(``AnnealedLangevinCorrector(metropolis=True)``; log-density = -E from ``score_fn.log_prob``) against
the unadjusted corrector at equal NFE: a MALA corrector step costs 4 evaluations (2 scores, 2
log-densities), so MALA-PC with 80 steps (80 + 4 x 80 = 400 NFE) meets unadjusted PC with 200 steps
(400 NFE); unadjusted PC with 80 steps (160 NFE) isolates the accept/reject at the same grid.  At
the default snr 0.1, at 0.3 and at 1.0 (a step where the unadjusted corrector is far off; a run whose
score turns non-finite is recorded as diverged).  Acceptance rate and CPU per run reported (a
log-density is one forward pass, a score a forward and a backward pass, so NFE understates MALA's
advantage in CPU).  ``--jobs N`` runs the (data set, seed) pairs in N processes of one thread each.

Writes ``benchmarks/results/energy.{json,md,png}``.
"""
from __future__ import annotations

import argparse
import multiprocessing

from _common import RESULTS, Timer, command_line, log, machine, machine_line, md_table, set_threads, write_results

import torch  # noqa: E402

from scoresde.data import make_dataset  # noqa: E402
from scoresde.evaluation import assess  # noqa: E402
from scoresde.models import EnergyMLP, ScoreMLP  # noqa: E402
from scoresde.samplers import AnnealedLangevinCorrector, NonFiniteScoreError, PredictorCorrector  # noqa: E402
from scoresde.sdes import VPSDE  # noqa: E402
from scoresde.training import TrainConfig, train  # noqa: E402

DATASETS = ("eight_gaussians", "two_moons", "swiss_roll")
MODELS = {"score (eps)": ScoreMLP, "energy": EnergyMLP}


def pc_runs() -> dict:
    """Part 2's samplers: name -> PredictorCorrector (NFE in the name)."""
    runs = {}
    for snr in (0.1, 0.3, 1.0):
        runs[f"unadjusted snr {snr}, 200 steps"] = PredictorCorrector(corrector=AnnealedLangevinCorrector(snr=snr))
        runs[f"MALA snr {snr}, 80 steps"] = PredictorCorrector(
            num_steps=80, corrector=AnnealedLangevinCorrector(snr=snr, metropolis=True))
        runs[f"unadjusted snr {snr}, 80 steps"] = PredictorCorrector(
            num_steps=80, corrector=AnnealedLangevinCorrector(snr=snr))
    return runs


def judge(x: torch.Tensor, data) -> dict:
    q = assess(x.detach().double(), data, seed=0)
    h = q["headline"]
    m = q["metrics"][h]
    return {"headline": h, "value": m["value"], "floor_band": m["floor_band"], "verdict": m["verdict"],
            "overall": q["overall"]["verdict"], "driven_by": q["overall"].get("driven_by", [])}


def sample(sampler, score_fn, sde, n: int, seed: int, data) -> tuple[dict, torch.Tensor | None]:
    """Run and judge one sampler; a run that diverges (non-finite score) is recorded as such."""
    with Timer() as t:
        try:
            result = sampler.run(score_fn, sde, (n, 2), generator=torch.Generator().manual_seed(seed))
        except NonFiniteScoreError as err:
            result = err
    if isinstance(result, NonFiniteScoreError):
        return {"diverged": str(result), "cpu_s": t.cpu_seconds, "quality": None}, None
    row = {"nfe": result.nfe, "cpu_s": t.cpu_seconds, "cpu_ms_per_eval": 1e3 * t.cpu_seconds / result.nfe}
    if hasattr(result, "acceptance_rate"):
        row.update(acceptance_rate=result.acceptance_rate, log_prob_evals=result.log_prob_evals)
    row["quality"] = judge(result.x, data)
    return row, result.x


def job(name: str, seed: int, steps: int, n: int):
    """One data set and seed: both models trained and sampled, then part 2 with the energy model (one process)."""
    set_threads(1)
    sde, data = VPSDE(), make_dataset(name)
    rows, mala_rows, figure = [], [], {}
    with Timer() as total:
        energy_model = None
        for label, cls in MODELS.items():
            model = cls(sde, (2,), generator=torch.Generator().manual_seed(100 + seed))
            config = TrainConfig(num_steps=steps, batch_size=512, lr=2e-3, ema_decay=0.995, seed=seed)
            with Timer() as t:
                result = train(model, data, config)
            ema = result.ema_model.eval().requires_grad_(False)
            srow, x = sample(PredictorCorrector(), ema.score_fn, sde, n, 7 + seed, data)
            rows.append({"data": name, "model": label, "seed": seed, "train_cpu_s": t.cpu_seconds,
                         "train_cpu_ms_per_step": 1e3 * t.cpu_seconds / steps,
                         "final_loss": float(result.losses[-300:].mean()), "pc": srow, "quality": srow["quality"]})
            if seed == 0 and x is not None:
                figure[name, label] = (x, srow["quality"])
            if cls is EnergyMLP:
                energy_model = ema
        for run, sampler in pc_runs().items():
            srow, x = sample(sampler, energy_model.score_fn, sde, n, 7 + seed, data)
            mala_rows.append({"data": name, "seed": seed, "run": run, **srow})
            if seed == 0 and run in ("MALA snr 1.0, 80 steps", "unadjusted snr 1.0, 200 steps"):
                figure[name, f"energy, {run.split(',')[0]}"] = (x, srow["quality"])
    return rows, mala_rows, figure, total.cpu_seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--num-samples", type=int, default=2000)
    ap.add_argument("--jobs", type=int, default=1, help="processes, one (data set, seed) each (one thread each)")
    ap.add_argument("--quick", action="store_true", help="300 steps, 1 seed, results/quick/")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.seeds = 300, 1
    set_threads(1)
    info = machine()
    tasks = [(name, seed, args.steps, args.num_samples) for name in DATASETS for seed in range(args.seeds)]
    rows, mala_rows, figure, cpu_s = [], [], {}, 0.0
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        for r, m, f, c in pool.imap_unordered(_job, tasks):
            rows += r
            mala_rows += m
            figure.update(f)
            cpu_s += c
            log(f"done {r[0]['data']} seed {r[0]['seed']} ({c / 60:.1f} CPU-min)")
            order = {name: i for i, name in enumerate(DATASETS)}
            rows.sort(key=lambda r: (order[r["data"]], r["seed"]))
            mala_rows.sort(key=lambda r: (order[r["data"]], r["seed"]))
            payload = {"command": command_line(), "machine": info, "args": vars(args), "total_cpu_s": cpu_s,
                       "done": len({(r["data"], r["seed"]) for r in rows}), "of": len(tasks),
                       "parameterisations": rows, "mala_pc": mala_rows}
            write_results("energy", payload, markdown(args, info, rows, mala_rows, cpu_s))
            plot(figure, RESULTS / "energy.png", args)
    log(f"total {cpu_s / 60:.1f} CPU-min")


def _job(task):
    return job(*task)


def _q(q: dict | None) -> str:
    return "diverged (non-finite score)" if q is None else f"{q['value']:.2f} ({q['overall']})"


def markdown(args, info, rows, mala_rows, cpu_s) -> str:
    lines = [f"# Energy vs score parameterisation; MALA-corrected PC ({args.steps} training steps, n = {args.num_samples})",
             "", f"Command: `{command_line()}`  ", f"Machine: {machine_line(info)}; total {cpu_s / 60:.1f} CPU-min.", "",
             "## 1. Same MLP, same budget: score (eps) vs energy (score = -grad E)", "",
             "Headline metric (`outlier_z`, floor band about [-0.5, 2.3] for n = 2000) of default PC (400 NFE) "
             "samples, with the overall verdict of `evaluation.assess`; CPU per training step (batch 512) and per "
             "score evaluation while sampling (batch 2000), one thread.", ""]
    table = []
    for r in rows:
        driven = ", ".join(r["quality"]["driven_by"]) if r["quality"] else ""
        table.append([r["data"], r["seed"], r["model"], _q(r["quality"]), driven or "-", f"{r['final_loss']:.3f}",
                      f"{r['train_cpu_ms_per_step']:.1f}", f"{r['pc'].get('cpu_ms_per_eval', float('nan')):.1f}"])
    lines.append(md_table(["data", "seed", "model", "headline (overall)", "driven by", "final loss",
                           "train ms/step", "sample ms/eval"], table))
    lines += ["", "## 2. Trained energy model: PC with the MALA corrector vs the unadjusted corrector", "",
              "NFE counts score and log-density evaluations (a MALA corrector step = 4).", ""]
    table = []
    for r in mala_rows:
        table.append([r["data"], r["seed"], r["run"], r.get("nfe", "-"),
                      f"{r['acceptance_rate']:.3f}" if "acceptance_rate" in r else "-", _q(r["quality"]), f"{r['cpu_s']:.1f}"])
    lines.append(md_table(["data", "seed", "sampler", "NFE", "acceptance", "headline (overall)", "CPU s"], table))
    return "\n".join(lines)


def plot(figure: dict, path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["score (eps)", "energy", "energy, unadjusted snr 1.0", "energy, MALA snr 1.0"]
    fig, axes = plt.subplots(len(DATASETS), len(columns), figsize=(3.2 * len(columns), 3.2 * len(DATASETS)))
    for i, name in enumerate(DATASETS):
        for j, col in enumerate(columns):
            ax = axes[i, j]
            if (name, col) in figure and figure[name, col][0] is not None:
                x, q = figure[name, col]
                ax.scatter(*x.double().T.numpy(), s=1, alpha=0.4)
                ax.set_title(f"{name}: {col}\n{q['headline']} {q['value']:.2f} ({q['overall']})", fontsize=8)
            elif (name, col) in figure:
                ax.set_title(f"{name}: {col}\ndiverged (non-finite score)", fontsize=8)
            ax.set_aspect("equal")
            ax.set_xlim(-4.5, 4.5)
            ax.set_ylim(-4.5, 4.5)
            ax.tick_params(labelsize=6)
    fig.suptitle(f"{args.steps} training steps, seed 0, n = {args.num_samples}; PC at 400 NFE (MALA: 80 steps)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
