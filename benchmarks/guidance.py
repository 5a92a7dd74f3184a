"""Guidance-scale sweep: precision rises and per-class diversity falls with the scale S.

Target: ``toy.eight_gaussians(std=--std)`` (8 components = 8 classes; default std 1.0, so that the
components overlap and exact conditional sampling, S = 1, is *not* 100 % precise) under the VP SDE; ``--n-per-class`` samples
per class (labels i mod 8), DDIM with ``--steps`` steps, for S in ``--scales`` and four guided scores:

* ``cfg (trained)``: ``guidance.ClassifierFreeGuidance`` of a label-conditioned ``ScoreMLP``
  (``num_classes=8``) trained by ``training.train`` with label dropout 0.1 to the null label;
* ``cfg (exact)``: the same wrapper around the exact ``guidance.MixtureConditionalScore``;
* ``classifier (exact)``: ``guidance.ClassifierGuidance`` of the exact score with the exact
  ``MixtureClassifier`` (equal to ``cfg (exact)`` by Bayes' rule: a consistency check);
* ``classifier (trained)``: the exact unconditional score guided by a ``NoisyClassifier`` trained
  by ``guidance.train_classifier``.

Per run: precision = fraction of samples whose most responsible component (``GaussianMixture.assign``)
is the requested class; spread = per class rms distance to the class mean, averaged over classes
(exact component: sqrt(2) std); sliced W2 of each class's samples to its exact component
(``metrics.sliced_w2_to_mixture``), averaged over classes.  S = 1 with the exact score is exact
conditional sampling; S = 0 is unconditional.

Writes ``benchmarks/results/guidance[_quick].{json,md,png}`` and ``guidance[_quick]_samples.png``.

    OMP_NUM_THREADS=1 python benchmarks/guidance.py            # full
    OMP_NUM_THREADS=1 python benchmarks/guidance.py --quick    # smoke
"""
from __future__ import annotations

import argparse
import time

from _common import RESULTS, Timer, command_line, log, machine, machine_line, md_table, set_threads, write_results

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from scoresde import guidance, metrics, samplers, sdes, toy  # noqa: E402
from scoresde.data import datasets  # noqa: E402
from scoresde.models.mlp import ScoreMLP  # noqa: E402
from scoresde.training import TrainConfig, train  # noqa: E402


def detach_parameters(model):
    """training.train's EMA parameters carry the autograd history of every EMA update; cut it (else every
    backward pass through the model traverses it)."""
    with torch.no_grad():
        for p in model.parameters():
            p.detach_()
    return model.requires_grad_(False)


def evaluate(x: torch.Tensor, labels: torch.Tensor, mixture, seed: int) -> dict:
    x = x.to(torch.float64)
    assigned = mixture.assign(x)
    spreads, sw2 = [], []
    for c in range(mixture.num_components):
        xc = x[labels == c]
        spreads.append(float(((xc - xc.mean(0)) ** 2).sum(1).mean().sqrt()))
        sw2.append(metrics.sliced_w2_to_mixture(xc, mixture.component(c), 128,
                                                generator=torch.Generator().manual_seed(seed + c)))
    per_class = [float((assigned[labels == c] == c).double().mean()) for c in range(mixture.num_components)]
    return {"precision": float((assigned == labels).double().mean()), "precision_per_class": per_class,
            "spread": sum(spreads) / len(spreads), "sliced_w2": sum(sw2) / len(sw2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (writes guidance_quick.*)")
    parser.add_argument("--scales", type=float, nargs="+", default=[0, 0.5, 1, 2, 4, 8])
    parser.add_argument("--std", type=float, default=1.0, help="component std of eight_gaussians (library: 0.354)")
    parser.add_argument("--n-per-class", type=int, default=None, help="samples per class (500; quick 100)")
    parser.add_argument("--steps", type=int, default=100, help="DDIM steps")
    parser.add_argument("--train-steps", type=int, default=None, help="conditional ScoreMLP steps (6000; quick 2000)")
    parser.add_argument("--classifier-steps", type=int, default=None, help="NoisyClassifier steps (2000; quick 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    args.n_per_class = args.n_per_class or (100 if args.quick else 500)
    args.train_steps = args.train_steps or (2000 if args.quick else 6000)
    args.classifier_steps = args.classifier_steps or (500 if args.quick else 2000)
    name = "guidance_quick" if args.quick else "guidance"
    info, start = machine(), time.perf_counter()

    mixture = toy.eight_gaussians(std=args.std)
    k = mixture.num_components
    sde = sdes.VPSDE()
    n = k * args.n_per_class
    labels = torch.arange(n) % k

    model = ScoreMLP(sde, (2,), width=64, num_classes=k, generator=torch.Generator().manual_seed(args.seed))
    with Timer() as t_train:
        result = train(model, datasets.MixtureDataset(mixture),
                       TrainConfig(num_steps=args.train_steps, batch_size=256, lr=2e-3, ema_decay=0.995,
                                   label_dropout=0.1, seed=args.seed))
    cond_model = detach_parameters(result.ema_model.eval())
    log(f"trained the conditional ScoreMLP: {args.train_steps} steps, {t_train.seconds:.1f} s")
    classifier = guidance.NoisyClassifier(sde, 2, k, generator=torch.Generator().manual_seed(args.seed))
    with Timer() as t_clf:
        losses = guidance.train_classifier(classifier, mixture, sde, num_steps=args.classifier_steps,
                                           generator=torch.Generator().manual_seed(args.seed + 1))
    classifier.requires_grad_(False)
    log(f"trained the NoisyClassifier: {args.classifier_steps} steps, final loss {float(losses[-50:].mean()):.3f}, "
        f"{t_clf.seconds:.1f} s")

    exact_cond = guidance.MixtureConditionalScore(mixture, sde)
    exact_uncond, exact_clf = mixture.score_fn(sde), guidance.MixtureClassifier(mixture, sde)
    methods = {
        "cfg (trained)": lambda s: guidance.ClassifierFreeGuidance(cond_model.score_fn, labels, s,
                                                                   null_label=cond_model.null_label),
        "cfg (exact)": lambda s: guidance.ClassifierFreeGuidance(exact_cond, labels, s, null_label=k),
        "classifier (exact)": lambda s: guidance.ClassifierGuidance(exact_uncond, exact_clf, labels, s),
        "classifier (trained)": lambda s: guidance.ClassifierGuidance(exact_uncond, classifier, labels, s),
    }
    sampler = samplers.DDIM(num_steps=args.steps)
    runs, samples = [], {}
    for method, make in methods.items():
        for s in args.scales:
            with Timer() as t:
                res = sampler.run(make(float(s)), sde, (n, 2), generator=torch.Generator().manual_seed(args.seed + 7))
            ev = evaluate(res.x, labels, mixture, args.seed)
            runs.append({"method": method, "scale": s, "nfe": res.nfe, "time_s": t.seconds, **ev})
            samples[method, s] = res.x.to(torch.float64)
            log(f"{method:22s} S={s:g}: precision {ev['precision']:.3f}, spread {ev['spread']:.3f}, "
                f"sliced W2 to component {ev['sliced_w2']:.3f}, NFE {res.nfe}, {t.seconds:.1f} s")

    exact_spread = float(torch.diagonal(mixture.covs[0]).sum().sqrt())
    rows = [[r["method"], f"{r['scale']:g}", f"{r['precision']:.3f}", f"{min(r['precision_per_class']):.3f}",
             f"{r['spread']:.3f}", f"{r['sliced_w2']:.3f}", r["nfe"], f"{r['time_s']:.1f}"] for r in runs]
    table = md_table(["guidance", "S", "precision", "worst class", "spread", "sliced W2 to component", "NFE",
                      "time (s)"], rows)
    md = (f"# Guidance-scale sweep on eight_gaussians(std={args.std:g}){' (quick)' if args.quick else ''}\n\n`{command_line()}`\n\n"
          f"{machine_line(info)}; total {time.perf_counter() - start:.0f} s.\n\n"
          f"VP SDE, DDIM {args.steps} steps, {args.n_per_class} samples per class x {k} classes. Precision: samples "
          f"whose most responsible component is the requested class. Spread: rms distance to the class mean "
          f"(exact component: {exact_spread:.3f}). Conditional ScoreMLP: {args.train_steps} steps with label dropout "
          f"0.1 ({t_train.seconds:.0f} s); NoisyClassifier: {args.classifier_steps} steps.\n\n" + table + "\n")
    write_results(name, {"command": command_line(), "machine": info, "args": vars(args),
                         "exact_spread": exact_spread, "runs": runs}, md)

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for method in methods:
        rs = [r for r in runs if r["method"] == method]
        for ax, key in zip(axes, ("precision", "spread", "sliced_w2")):
            ax.plot([r["scale"] for r in rs], [r[key] for r in rs], "o-", label=method)
    axes[1].axhline(exact_spread, color="k", ls="--", lw=0.8, label="exact component")
    for ax, title in zip(axes, ("precision", "per-class spread (diversity)", "sliced W2 to the class's component")):
        ax.set_title(title)
        ax.set_xlabel("guidance scale S")
        ax.set_xscale("symlog", linthresh=1)
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=110)

    lim = float(mixture.means.abs().max()) + 3 * args.std
    fig, axes = plt.subplots(len(methods), len(args.scales), figsize=(2.6 * len(args.scales), 2.6 * len(methods)),
                             squeeze=False)
    for i, method in enumerate(methods):
        for j, s in enumerate(args.scales):
            ax, x = axes[i, j], samples[method, s]
            ax.scatter(x[:, 0], x[:, 1], c=labels, cmap="tab10", s=2, vmin=0, vmax=9)
            far = max(lim, float(x.abs().max(1).values.quantile(0.995)))  # high S pushes samples outwards
            ax.set_xlim(-far, far)
            ax.set_ylim(-far, far)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"S = {s:g}")
            if far > lim:
                ax.text(0.02, 0.02, f"axes ±{far:.0f}", transform=ax.transAxes, fontsize=7)
            if j == 0:
                ax.set_ylabel(method)
    fig.suptitle("samples coloured by requested class")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}_samples.png", dpi=100)
    print(md)


if __name__ == "__main__":
    main()
