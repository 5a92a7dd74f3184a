"""The digits benchmark (issue 19), reduced: the MNIST-size U-Net on scikit-learn's digits, three samplers, domain FID / KID.

    python benchmarks/digits.py                  # the reduced run: --steps 150, ~5 min of CPU
    python benchmarks/digits.py --steps 600      # the issue's ~10 min CPU budget (not run on the shared machine)
    python benchmarks/digits.py --quick          # smoke run (results/quick/)

Public API only: ``scoresde.data.digits.Digits`` (1797 images, 16x16, resized), the
``conf/model/unet_mnist.yaml`` network (``UNet(layout="ddpm", channels=32, channel_mult=(1, 2, 2),
num_res_blocks=2, dropout=0.1)`` in EDM preconditioning, 1.5 M parameters) on the VP SDE, trained by
``scoresde.training.train`` (batch 64, lr 2e-3 with cosine decay via ``recipes.WarmupCosine``); the EMA
sampled with PC (reverse diffusion + Langevin), EDM Heun and DPM-Solver++(2M) at the given NFE; each
assessed by ``scoresde.evaluation.fid.assess_images`` with ``DomainFeatures`` (a classifier trained on the
digits, cached) against the held-out floor: FID and KID between two disjoint halves of real digits at the
same n.  Writes ``results/digits.{json,md,png}`` (data | one row of samples per sampler).
"""
from __future__ import annotations

import argparse
import resource
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, command_line, log, machine, machine_line, md_table, write_results  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from scoresde import VPSDE  # noqa: E402
from scoresde.data.digits import Digits  # noqa: E402
from scoresde.data.images import image_grid  # noqa: E402
from scoresde.evaluation import DomainFeatures  # noqa: E402
from scoresde.evaluation.fid import assess_images  # noqa: E402
from scoresde.models.precond import Preconditioned  # noqa: E402
from scoresde.models.unet import UNet  # noqa: E402
from scoresde.samplers import DPMSolverPP, EDMHeun, PredictorCorrector  # noqa: E402
from scoresde.training import TrainConfig, train  # noqa: E402
from scoresde.training.recipes import WarmupCosine  # noqa: E402


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--nfe", type=int, default=30)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.num_samples, args.nfe = 3, 32, 6
    data = Digits()
    sde = VPSDE()
    model = Preconditioned(sde, (1, 16, 16), parameterization="denoiser", sigma_data=0.5,
                           backbone=partial(UNet, layout="ddpm", channels=32, channel_mult=(1, 2, 2), num_res_blocks=2,
                                            dropout=0.1),
                           generator=torch.Generator().manual_seed(0))
    parameters = sum(p.numel() for p in model.parameters())
    log(f"{parameters} parameters; training {args.steps} steps")
    start = _cpu()
    result = train(model, data, TrainConfig(num_steps=args.steps, batch_size=64, lr=2e-3, warmup_steps=20,
                                            ema_decay=0.99, check_every=25),
                   lr_schedule=WarmupCosine(warmup_steps=20))
    train_cpu = _cpu() - start
    score = result.ema_model.eval().requires_grad_(False).score_fn
    extractor = DomainFeatures(data)
    samplers = {"PC (reverse diffusion + Langevin)": PredictorCorrector(num_steps=args.nfe // 2),
                "EDM Heun": EDMHeun(num_steps=args.nfe // 2 + 1), "DPM-Solver++(2M)": DPMSolverPP(num_steps=args.nfe)}
    rows, grids = [], []
    for name, sampler in samplers.items():
        start = _cpu()
        out = sampler.run(score, sde, (args.num_samples, 1, 16, 16), generator=torch.Generator().manual_seed(1))
        seconds = _cpu() - start
        x = out.x.clamp(-1, 1)
        quality = assess_images(x, data.data, extractor, repeats=20, generator=torch.Generator().manual_seed(2))
        rows.append({"sampler": name, "nfe": out.nfe, "cpu_s": seconds, **quality})
        grids.append((name, image_grid(data.to_user_units(x[:32]), nrow=16)))
        log(f"{name}: NFE {out.nfe}, FID {quality['fid']['value']:.2f} (floor {quality['fid']['floor_band']})")
    real = image_grid(data.to_user_units(data.data[:32]), nrow=16)
    fig, axes = plt.subplots(len(grids) + 1, 1, figsize=(8, 1.4 * (len(grids) + 1)))
    for ax, (title, grid) in zip(axes, [("data", real), *grids]):
        ax.imshow(grid.squeeze(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / "digits.png", dpi=110)
    table = md_table(["sampler", "NFE", "CPU s", "domain FID", "FID floor band", "KID", "KID floor band", "verdict"],
                     [[r["sampler"], r["nfe"], f"{r['cpu_s']:.0f}", f"{r['fid']['value']:.2f}",
                       f"{r['fid']['floor_band'][0]:.2f}-{r['fid']['floor_band'][1]:.2f}", f"{r['kid']['value']:.4f}",
                       f"{r['kid']['floor_band'][0]:.4f}-{r['kid']['floor_band'][1]:.4f}", r["fid"]["verdict"]]
                      for r in rows])
    md = f"""# Digits benchmark, reduced (issue 19)

`{command_line()}`

{machine_line(machine())}

**Reduced:** {args.steps} training steps of batch 64 ({train_cpu:.0f} s of CPU) instead of the issue's ~10 CPU
minutes (~600 steps at 0.9 s of CPU per step), because the machine is shared by several agents.  The MNIST-size
U-Net (conf/model/unet_mnist.yaml, {parameters} parameters), VP SDE, EDM preconditioning; {args.num_samples}
samples per sampler, domain features (`DomainFeatures`, a classifier trained on the digits) against the
held-out floor (two disjoint halves of real digits at the same n, 20 repeats).  Figure: results/digits.png.

{table}
"""
    write_results("digits", {"command": command_line(), "settings": vars(args), "parameters": parameters,
                             "train_cpu_s": train_cpu, "losses_tail": result.losses[-25:].tolist(), "rows": rows}, md)
    print(md)


if __name__ == "__main__":
    main()
