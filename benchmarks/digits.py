"""The digits benchmark (issue 19): the MNIST-size U-Net on scikit-learn's digits, three samplers at 10-50 NFE, domain FID / KID.

    python benchmarks/digits.py                  # 750 steps (~10 min of CPU), 512 samples per sampler and NFE (~8 min)
    python benchmarks/digits.py --quick          # smoke run (results/quick/)
    python benchmarks/digits.py --model /tmp/digits_ema.pt   # keep the trained EMA there (a rerun samples it)

Public API only: ``scoresde.data.digits.Digits`` (1797 images, 16x16, resized), the
``conf/model/unet_mnist.yaml`` network (``UNet(layout="ddpm", channels=32, channel_mult=(1, 2, 2),
num_res_blocks=2, dropout=0.1)`` in EDM preconditioning, 1.5 M parameters) on the VP SDE, trained by
``scoresde.training.train`` (batch 64, lr 2e-3 with cosine decay via ``recipes.WarmupCosine``); the EMA
sampled with PC (reverse diffusion + Langevin), EDM Heun and DPM-Solver++(2M) at each NFE of ``--nfe``
(the sampler's steps chosen for that NFE: PC nfe/2 predictor + nfe/2 corrector steps, Heun nfe/2 + 1 steps
= nfe + 1 evaluations, DPM-Solver++ nfe steps); each assessed by ``scoresde.evaluation.fid.assess_images``
with ``DomainFeatures`` (a classifier trained on the digits, cached) against the held-out floor: FID and
KID between two disjoint halves of real digits at the same n, and FID on raw pixels (which sees pixel noise
that the domain features ignore).  Writes ``results/digits.{json,md,png}`` (data | one row of samples
per sampler and NFE).
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
    parser.add_argument("--steps", type=int, default=750)
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--model", type=Path, default=None, help="file of the trained EMA weights (read if present)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.num_samples, args.nfe = 3, 32, [6]
    data = Digits()
    sde = VPSDE()
    model = Preconditioned(sde, (1, 16, 16), parameterization="denoiser", sigma_data=0.5,
                           backbone=partial(UNet, layout="ddpm", channels=32, channel_mult=(1, 2, 2), num_res_blocks=2,
                                            dropout=0.1),
                           generator=torch.Generator().manual_seed(0))
    parameters = sum(p.numel() for p in model.parameters())
    start = _cpu()
    read = args.model is not None and args.model.is_file()
    if read:
        saved = torch.load(args.model, weights_only=True)
        model.load_state_dict(saved["ema"])
        ema, train_cpu, losses_tail = model, saved["train_cpu_s"], saved["losses_tail"]
        log(f"{parameters} parameters; EMA weights of {saved['steps']} steps read from {args.model}")
        assert saved["steps"] == args.steps, f"{args.model} holds {saved['steps']} steps, not --steps {args.steps}"
    else:
        log(f"{parameters} parameters; training {args.steps} steps")
        result = train(model, data, TrainConfig(num_steps=args.steps, batch_size=64, lr=2e-3, warmup_steps=20,
                                                ema_decay=0.99, check_every=25),
                       lr_schedule=WarmupCosine(warmup_steps=20))
        ema, train_cpu, losses_tail = result.ema_model, _cpu() - start, result.losses[-25:].tolist()
        log(f"trained in {train_cpu:.0f} s of CPU, final loss {sum(losses_tail) / len(losses_tail):.2f}")
        if args.model is not None:
            torch.save({"ema": ema.state_dict(), "steps": args.steps, "train_cpu_s": train_cpu,
                        "losses_tail": losses_tail}, args.model)
    score = ema.eval().requires_grad_(False).score_fn
    extractor = DomainFeatures(data)
    samplers = {"PC (reverse diffusion + Langevin)": lambda nfe: PredictorCorrector(num_steps=nfe // 2),
                "EDM Heun": lambda nfe: EDMHeun(num_steps=nfe // 2 + 1),
                "DPM-Solver++(2M)": lambda nfe: DPMSolverPP(num_steps=nfe)}
    rows, grids = [], []
    for name, make in samplers.items():
        for nfe in args.nfe:
            start = _cpu()
            out = make(nfe).run(score, sde, (args.num_samples, 1, 16, 16), generator=torch.Generator().manual_seed(1))
            seconds = _cpu() - start
            x = out.x.clamp(-1, 1)
            quality = assess_images(x, data.data, extractor, repeats=20, generator=torch.Generator().manual_seed(2))
            pixels = assess_images(x, data.data, lambda v: v.flatten(1), repeats=20,
                                   generator=torch.Generator().manual_seed(2))
            rows.append({"sampler": name, "nfe": out.nfe, "cpu_s": seconds, **quality, "pixel_fid": pixels["fid"]})
            grids.append((f"{name}, NFE {out.nfe}", image_grid(data.to_user_units(x[:24]), nrow=24)))
            log(f"{name}: NFE {out.nfe}, {seconds:.0f} s CPU, domain FID {quality['fid']['value']:.2f} "
                f"(floor {quality['fid']['floor_band'][0]:.2f}-{quality['fid']['floor_band'][1]:.2f}), "
                f"KID {quality['kid']['value']:.3f}, pixel FID {pixels['fid']['value']:.2f}")
    real = image_grid(data.to_user_units(data.data[:24]), nrow=24)
    fig, axes = plt.subplots(len(grids) + 1, 1, figsize=(8, 0.62 * (len(grids) + 1) + 0.3))
    for ax, (title, grid) in zip(axes, [("data", real), *grids]):
        ax.imshow(grid.squeeze(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=8, pad=2)
        ax.axis("off")
    fig.tight_layout(h_pad=0.3)
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / "digits.png", dpi=110)
    trained_by = f"; trained by an earlier run that wrote {args.model}" if read else ""
    band = lambda b, f: f"{b[0]:{f}}-{b[1]:{f}}"  # noqa: E731
    table = md_table(["sampler", "NFE", "CPU s", "domain FID", "FID floor band", "KID", "KID floor band",
                      "pixel FID", "pixel floor band", "verdict (domain FID)"],
                     [[r["sampler"], r["nfe"], f"{r['cpu_s']:.0f}", f"{r['fid']['value']:.2f}",
                       band(r["fid"]["floor_band"], ".2f"), f"{r['kid']['value']:.4f}", band(r["kid"]["floor_band"], ".4f"),
                       f"{r['pixel_fid']['value']:.2f}", band(r["pixel_fid"]["floor_band"], ".2f"), r["fid"]["verdict"]]
                      for r in rows])
    md = f"""# Digits benchmark (issue 19)

`{command_line()}`

{machine_line(machine())}

{args.steps} training steps of batch 64 ({train_cpu:.0f} s of CPU: the issue's ~10 CPU-minute budget{trained_by}).  The
MNIST-size U-Net (conf/model/unet_mnist.yaml, {parameters} parameters), VP SDE, EDM preconditioning, EMA 0.99;
{args.num_samples} samples per sampler and NFE (the count whose sampling fits the CPU budget of this shared
machine), domain features (`DomainFeatures`, a classifier trained on the digits) and raw pixels, each
against the held-out floor (two disjoint halves of real digits at the same n, 20 repeats).
Figure: results/digits.png (data, then 24 samples per sampler and NFE).

{table}
"""
    write_results("digits", {"command": command_line(), "settings": {k: str(v) if isinstance(v, Path) else v
                                                                       for k, v in vars(args).items()},
                             "parameters": parameters, "train_cpu_s": train_cpu, "losses_tail": losses_tail,
                             "rows": rows}, md)
    print(md)


if __name__ == "__main__":
    main()
