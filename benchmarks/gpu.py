"""GPU throughput of the CIFAR-10 DDPM++ config (conf/model/ddpmpp_cifar10.yaml, 53.6 M parameters), for whoever has a GPU.

    python benchmarks/gpu.py                                   # 1 GPU: training fp32 and bf16, sampling
    torchrun --nproc_per_node=8 benchmarks/gpu.py              # all GPUs of the node: DDP training, split sampling

Training images per second at global batch ``--batch-size`` (128, as score_sde / EDM train CIFAR-10)
with ``train.precision`` fp32 and bf16, timed over ``--steps`` steps after ``--warmup`` untimed ones
(CUDA synchronised at both ends); sampling images per second with EDM Heun (``--sample-steps``
steps, 2 NFE each) in batches of ``--sample-batch``, per-sample seeds, split across the ranks.
Random tensors stand in for CIFAR-10 (throughput does not depend on the pixels).  Rank 0 writes
``results/gpu.{json,md}``, with the card named; a table of earlier runs (other cards, other
numbers of GPUs) is kept.  On a machine without CUDA it writes nothing and says so: no number in
the results was measured elsewhere than on the card it names.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, command_line, log, md_table, write_results  # noqa: E402

import torch  # noqa: E402

from scoresde import VPSDE  # noqa: E402
from scoresde.models.precond import Preconditioned  # noqa: E402
from scoresde.models.unet import UNet  # noqa: E402
from scoresde.samplers import EDMHeun  # noqa: E402
from scoresde.training import TrainConfig, train  # noqa: E402
from scoresde.training.distributed import gather_batches, init_from_environment, rank_batches  # noqa: E402

DDPMPP = dict(layout="ddpm", channels=128, channel_mult=(2, 2, 2), num_res_blocks=4, attn_resolutions=(16,), emb_mult=4,
              embedding="positional", embedding_dim=128, dropout=0.13, skip_rescale=True, norm_groups=32)


def _model(device) -> Preconditioned:
    from functools import partial

    return Preconditioned(VPSDE(), (3, 32, 32), parameterization="denoiser", sigma_data=0.5,
                          backbone=partial(UNet, **DDPMPP), generator=torch.Generator().manual_seed(0)).to(device)


def _timed(fn, device) -> float:
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=1024)
    parser.add_argument("--sample-batch", type=int, default=256)
    parser.add_argument("--sample-steps", type=int, default=18)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        log("benchmarks/gpu.py: no CUDA device here; nothing measured, results/gpu.* left as they are "
            "(run it on a GPU machine: python benchmarks/gpu.py, torchrun --nproc_per_node=N benchmarks/gpu.py)")
        return
    distributed = init_from_environment("cuda")
    world = torch.distributed.get_world_size() if distributed else 1
    rank = torch.distributed.get_rank() if distributed else 0
    device = torch.device("cuda", torch.cuda.current_device())
    torch.backends.cudnn.benchmark = True
    data = torch.randn(50_000, 3, 32, 32, generator=torch.Generator().manual_seed(0)).clamp(-1, 1).to(device)
    rows = []
    for precision in ("fp32", "bf16"):
        config = TrainConfig(num_steps=args.warmup, batch_size=args.batch_size, lr=2e-4, warmup_steps=0,
                             check_every=10, precision=precision, device="cuda")
        train(_model(device), data, config)  # warm-up: allocations, cuDNN autotuning, DDP buckets
        model = _model(device)  # a fresh model (and DDP wrapper) for the timed run
        seconds = _timed(lambda: train(model, data, TrainConfig(
            num_steps=args.steps, batch_size=args.batch_size, lr=2e-4, warmup_steps=0, check_every=10,
            precision=precision, device="cuda")), device)
        rows.append({"what": f"train {precision}", "gpus": world, "images_per_s": args.steps * args.batch_size / seconds,
                     "seconds": seconds, "batch_size": args.batch_size, "steps": args.steps})
    model = _model(device).eval().requires_grad_(False)
    sampler = EDMHeun(num_steps=args.sample_steps)

    def sample():
        parts = [sampler.run(model.score_fn, model.sde, (hi - lo, 3, 32, 32), seeds=range(lo, hi), device=device).x
                 for lo, hi in rank_batches(args.num_samples, args.sample_batch)]
        gather_batches(torch.cat(parts).cpu(), args.num_samples, args.sample_batch)

    sample()  # warm-up
    seconds = _timed(sample, device)
    rows.append({"what": f"sample EDM Heun {args.sample_steps} steps", "gpus": world,
                 "images_per_s": args.num_samples / seconds, "seconds": seconds, "num_samples": args.num_samples})
    if rank == 0:
        card = torch.cuda.get_device_name(device)
        for row in rows:
            row["card"] = card
        previous = RESULTS / "gpu.json"
        kept = json.loads(previous.read_text()).get("rows", []) if previous.is_file() else []
        kept = [r for r in kept if (r.get("card"), r.get("gpus")) != (card, world)] + rows
        table = md_table(["card", "GPUs", "what", "images/s", "seconds"],
                         [[r["card"], r["gpus"], r["what"], f"{r['images_per_s']:.1f}", f"{r['seconds']:.2f}"]
                          for r in kept])
        md = (f"# CIFAR-10 DDPM++ throughput on GPUs (benchmarks/gpu.py)\n\nLatest: `{command_line()}`\n\n"
              f"Global training batch {args.batch_size}; 53.6 M parameters (conf/model/ddpmpp_cifar10.yaml).\n\n{table}\n")
        write_results("gpu", {"rows": kept, "torch": torch.__version__}, md)
        print(md)
    if distributed:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
