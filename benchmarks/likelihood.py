"""PF-ODE negative log-likelihood of a trained score model and of the exact score vs the exact entropy.

For each exact Gaussian-mixture target p (``scoresde.data.toy``) under the VP SDE:

* train a ``ScoreMLP`` (eps-parameterised, ``training.train``, EMA weights);
* draw ``--n`` held-out points x ~ p and compute, with ``likelihood.log_likelihood`` (RK45,
  rtol = atol = 1e-5, exact divergence in 2-D), the NLL -log q(x) of the model's probability flow and
  of the exact score's (the latter is -log p_{t_min}(x), i.e. the exact density up to
  sigma(t_min)^2 = 1e-10 and the solver error: a check of the likelihood code);
* the exact entropy H(p) = E[-log p(x)] by Monte Carlo over ``--entropy-n`` exact samples, and on the
  same held-out points the paired estimate KL(p || q) = mean_x [NLL_q(x) - (-log p(x))] with its
  standard error.  "mean NLL - H" is the same estimate with the independent entropy.

Writes ``benchmarks/results/likelihood[_quick].{json,md,png}``.

    OMP_NUM_THREADS=1 python benchmarks/likelihood.py            # full: 2 targets, 6000 steps, n = 1000
    OMP_NUM_THREADS=1 python benchmarks/likelihood.py --quick    # smoke: 1500 steps, n = 200
"""
from __future__ import annotations

import argparse
import math
import time

from _common import RESULTS, Timer, command_line, log, machine, machine_line, md_table, set_threads, write_results

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from scoresde import sdes, toy  # noqa: E402
from scoresde.data import datasets  # noqa: E402
from scoresde.likelihood import log_likelihood  # noqa: E402
from scoresde.models.mlp import ScoreMLP  # noqa: E402
from scoresde.training import TrainConfig, train  # noqa: E402


def detach_parameters(model):
    """training.train's EMA parameters carry the autograd history of every EMA update; cut it (else every
    backward pass through the model, e.g. the likelihood's divergence, traverses it: ~40x slower)."""
    with torch.no_grad():
        for p in model.parameters():
            p.detach_()
    return model.requires_grad_(False)


def stderr(v: torch.Tensor) -> float:
    return float(v.std(unbiased=True) / math.sqrt(v.numel()))


def run_target(name: str, args) -> dict:
    mixture = toy.TARGETS[name]()
    data = datasets.MixtureDataset(mixture)
    sde = sdes.VPSDE()
    g = torch.Generator().manual_seed(args.seed)
    x = mixture.sample(args.n, g, dtype=torch.float64)
    exact_nll = -mixture.log_prob(x)
    big = mixture.sample(args.entropy_n, torch.Generator().manual_seed(args.seed + 1), dtype=torch.float64)
    entropy_samples = -mixture.log_prob(big)
    entropy, entropy_se = float(entropy_samples.mean()), stderr(entropy_samples)
    out = {"target": name, "n": args.n, "entropy": entropy, "entropy_stderr": entropy_se,
           "heldout_exact_nll": float(exact_nll.mean()), "heldout_exact_nll_stderr": stderr(exact_nll), "rows": []}

    model = ScoreMLP(sde, (2,), width=64, generator=torch.Generator().manual_seed(args.seed))
    with Timer() as t_train:
        result = train(model, data, TrainConfig(num_steps=args.train_steps, batch_size=256, lr=2e-3, ema_decay=0.995,
                                                seed=args.seed))
    ema = detach_parameters(result.ema_model.eval())
    log(f"{name}: trained {args.train_steps} steps in {t_train.seconds:.1f} s")
    scores = {"exact score": mixture.score_fn(sde), f"ScoreMLP ({args.train_steps} steps)": ema.score_fn}
    for label, score in scores.items():
        with Timer() as t:
            res = log_likelihood(score, sde, x, method="RK45", rtol=args.tol, atol=args.tol)
        gap = res.nll - exact_nll
        row = {"score": label, "nll": res.mean, "nll_stderr": res.stderr, "nfe": res.nfe, "time_s": t.seconds,
               "kl_paired": float(gap.mean()), "kl_paired_stderr": stderr(gap),
               "kl_vs_entropy": res.mean - entropy, "kl_vs_entropy_stderr": math.hypot(res.stderr, entropy_se)}
        if "ScoreMLP" in label:
            row["train_s"] = t_train.seconds
        out["rows"].append(row)
        out.setdefault("_gaps", {})[label] = gap
        log(f"  {label}: NLL {res.mean:.4f} +- {res.stderr:.4f}, H {entropy:.4f}, KL (paired) {row['kl_paired']:.4f} "
            f"+- {row['kl_paired_stderr']:.4f}, NFE {res.nfe}, {t.seconds:.1f} s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer steps and points (writes likelihood_quick.*)")
    parser.add_argument("--targets", nargs="+", default=["eight_gaussians", "anisotropic_mixture"])
    parser.add_argument("--n", type=int, default=None, help="held-out points (1000; quick 200)")
    parser.add_argument("--train-steps", type=int, default=None, help="training steps (6000; quick 1500)")
    parser.add_argument("--entropy-n", type=int, default=200_000)
    parser.add_argument("--tol", type=float, default=1e-5, help="RK45 rtol = atol")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    args.n = args.n or (200 if args.quick else 1000)
    args.train_steps = args.train_steps or (1500 if args.quick else 6000)
    name = "likelihood_quick" if args.quick else "likelihood"
    info = machine()
    start = time.perf_counter()
    results = [run_target(t, args) for t in args.targets]
    gaps = [r.pop("_gaps") for r in results]

    rows = []
    for r in results:
        for row in r["rows"]:
            rows.append([r["target"], row["score"], f"{row['nll']:.4f} ± {row['nll_stderr']:.4f}",
                         f"{r['entropy']:.4f} ± {r['entropy_stderr']:.4f}",
                         f"{row['kl_vs_entropy']:.4f} ± {row['kl_vs_entropy_stderr']:.4f}",
                         f"{row['kl_paired']:.4f} ± {row['kl_paired_stderr']:.4f}", row["nfe"], f"{row['time_s']:.1f}"])
    table = md_table(["target", "score", "mean NLL (nats)", "exact entropy H", "NLL - H", "KL (paired)", "NFE",
                      "time (s)"], rows)
    md = (f"# PF-ODE likelihood vs exact entropy{' (quick)' if args.quick else ''}\n\n"
          f"`{command_line()}`\n\n{machine_line(info)}; total {time.perf_counter() - start:.0f} s.\n\n"
          f"VP SDE; NLL = -log q_{{t_min}}(x) of {args.n} held-out exact samples by `likelihood.log_likelihood` "
          f"(RK45, rtol = atol = {args.tol:g}, exact divergence). H = E[-log p] over {args.entropy_n} exact samples. "
          "NLL - H and the paired mean of NLL(x) - (-log p(x)) over the same points both estimate KL(p || q) "
          "(the paired one with far less noise); for the exact score it checks the likelihood code (should be 0).\n\n"
          + table + "\n")
    write_results(name, {"command": command_line(), "machine": info, "args": vars(args), "results": results}, md)

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    for ax, r, gap in zip(axes[0], results, gaps):
        for label, g in gap.items():
            ax.hist(g.numpy(), bins=40, alpha=0.6, label=f"{label}: mean {float(g.mean()):.3f}")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(f"{r['target']}: NLL(x) - (-log p(x)), H = {r['entropy']:.3f}")
        ax.set_xlabel("nats")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=110)
    print(md)


if __name__ == "__main__":
    main()
