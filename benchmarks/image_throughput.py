"""Image training and sampling throughput on the CPU, on 1 and 2 gloo processes (issue 19).

    python benchmarks/image_throughput.py              # a few minutes of CPU
    python benchmarks/image_throughput.py --quick      # smoke run (results/quick/)

Public API only: the tiny U-Net of ``conf/model/unet.yaml`` (``UNet(channels=16)`` in EDM
preconditioning, 97k parameters) on the 16x16 procedural shapes (``scoresde.data.images.Shapes``),
trained with ``scoresde.training.train`` (``process_group``: 2 ranks of one torch.distributed gloo
group, DDP, the global batch split) and sampled with DDIM in per-sample-seeded batches split across
ranks (``scoresde.training.distributed.rank_batches`` / ``gather_batches``, what ``scoresde-sample``
does under torchrun).  Each rank runs one thread.  Reported per setting: images per second of wall
time (what a user waits), images per CPU-second (summed over ranks: the work, which the other
programs on a shared machine do not distort), and the scaling efficiency of 2 processes =
throughput(2) / (2 throughput(1)) for both.  Writes ``results/image_throughput.{json,md}``.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, machine, machine_line, md_table, write_results, log  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from scoresde import VPSDE  # noqa: E402
from scoresde.data.images import Shapes  # noqa: E402
from scoresde.models.precond import Preconditioned  # noqa: E402
from scoresde.models.unet import UNet  # noqa: E402
from scoresde.samplers import DDIM  # noqa: E402
from scoresde.training import TrainConfig, train  # noqa: E402
from scoresde.training.distributed import gather_batches, rank_batches  # noqa: E402


def _model() -> Preconditioned:
    return Preconditioned(VPSDE(), (1, 16, 16), parameterization="denoiser",
                          backbone=partial(UNet, channels=16, channel_mult=(1, 2)),
                          generator=torch.Generator().manual_seed(0))


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _work(rank: int, world: int, args, rendezvous: str, out: str) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    data = Shapes()
    config = TrainConfig(num_steps=args.warmup, batch_size=args.batch_size, lr=1e-3, warmup_steps=10, check_every=10)
    model = _model()
    train(model, data, config)  # warm-up (allocations, first DDP buckets), not timed
    cpu, wall = _cpu(), time.perf_counter()
    result = train(_model(), data, TrainConfig(num_steps=args.steps, batch_size=args.batch_size, lr=1e-3,
                                               warmup_steps=10, check_every=10))
    train_cpu, train_wall = _cpu() - cpu, time.perf_counter() - wall
    score = result.ema_model.eval().requires_grad_(False).score_fn
    sampler = DDIM(num_steps=args.sample_steps)
    cpu, wall = _cpu(), time.perf_counter()
    parts = [sampler.run(score, VPSDE(), (hi - lo, 1, 16, 16), seeds=range(lo, hi)).x
             for lo, hi in rank_batches(args.num_samples, args.sample_batch)]
    x = gather_batches(torch.cat(parts), args.num_samples, args.sample_batch)
    sample_cpu, sample_wall = _cpu() - cpu, time.perf_counter() - wall
    torch.save({"train_cpu": train_cpu, "train_wall": train_wall, "sample_cpu": sample_cpu,
                "sample_wall": sample_wall, "samples": x.shape[0]}, f"{out}/rank{rank}.pt")
    if world > 1:
        dist.destroy_process_group()


def measure(world: int, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        if world == 1:
            _work(0, 1, args, f"{tmp}/rdv", tmp)
        else:
            mp.start_processes(_work, args=(world, args, f"{tmp}/rdv", tmp), nprocs=world, start_method="fork")
        ranks = [torch.load(f"{tmp}/rank{r}.pt") for r in range(world)]
    train_images, sample_images = args.steps * args.batch_size, args.num_samples
    train_wall = max(r["train_wall"] for r in ranks)
    sample_wall = max(r["sample_wall"] for r in ranks)
    train_cpu, sample_cpu = sum(r["train_cpu"] for r in ranks), sum(r["sample_cpu"] for r in ranks)
    assert all(r["samples"] == args.num_samples for r in ranks)
    return {"processes": world, "train_images": train_images, "train_wall_s": train_wall, "train_cpu_s": train_cpu,
            "train_per_s": train_images / train_wall, "train_per_cpu_s": train_images / train_cpu,
            "sample_images": sample_images, "sample_wall_s": sample_wall, "sample_cpu_s": sample_cpu,
            "sample_per_s": sample_images / sample_wall, "sample_per_cpu_s": sample_images / sample_cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--sample-batch", type=int, default=64)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.num_samples, args.sample_batch, args.sample_steps = 6, 2, 64, 32, 4
    rows = []
    for world in (1, 2):
        log(f"{world} process(es)...")
        rows.append(measure(world, args))
    one, two = rows
    efficiency = {k: two[k] / (2 * one[k]) for k in ("train_per_s", "sample_per_s")}
    efficiency.update({k: two[k] / one[k] for k in ("train_per_cpu_s", "sample_per_cpu_s")})
    info = machine()
    table = md_table(
        ["processes", "train img/s (wall)", "train img/CPU-s", "sample img/s (wall)", "sample img/CPU-s"],
        [[r["processes"], f"{r['train_per_s']:.1f}", f"{r['train_per_cpu_s']:.1f}", f"{r['sample_per_s']:.1f}",
          f"{r['sample_per_cpu_s']:.1f}"] for r in rows])
    md = f"""# Image throughput on the CPU: 1 and 2 gloo processes (issue 19)

`{command_line()}`

{machine_line(info)}

Tiny U-Net (conf/model/unet.yaml, 97k parameters) on 16x16 shapes; training: {args.steps} steps of global batch
{args.batch_size} (2 processes: {args.batch_size // 2} rows each, DDP); sampling: {args.num_samples} images, DDIM
{args.sample_steps} steps, batches of {args.sample_batch} split across the ranks by per-sample seeds.  One thread
per process.  Wall time is distorted by the other programs on this shared machine (load average at the start:
{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores); images per CPU-second measure the work itself.

{table}

Scaling efficiency of 2 processes: wall {efficiency['train_per_s']:.2f} (train), {efficiency['sample_per_s']:.2f}
(sample) = throughput(2) / (2 throughput(1)); work {efficiency['train_per_cpu_s']:.2f} (train),
{efficiency['sample_per_cpu_s']:.2f} (sample) = images per CPU-second(2) / (1) (below 1: the cost of DDP's
gradient all-reduce, of every rank drawing the global batch's noise, and of the smaller per-rank batches).
"""
    payload = {"command": command_line(), "machine": info, "settings": vars(args), "rows": rows,
               "scaling_efficiency": efficiency, "load_average": os.getloadavg()}
    json_path, md_path = write_results("image_throughput", payload, md)
    print(md)
    log(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
