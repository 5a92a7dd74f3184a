"""Bit-identity check for refactors: every ``conf/sampler`` option x {VP, VE, discrete VP} x
{float32, float64}, exact mixture score, fixed generators.

    python benchmarks/bit_identity.py --record /tmp/ref.pt    # before the change
    python benchmarks/bit_identity.py --check /tmp/ref.pt     # after: exits 1 on any difference

Compares the samples bit for bit (``torch.equal``) and the NFE.  Uses only the public API and
``tests/sampler_registry.py`` (the yaml options with their fast settings), so it runs unchanged
across a move of the package's modules.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import scoresde  # noqa: E402
from scoresde import sdes, toy  # noqa: E402
from sampler_registry import fast_yaml_samplers  # noqa: E402

SDES = {"vp": lambda: sdes.VPSDE(), "ve": lambda: sdes.VESDE(), "ddpm": lambda: sdes.DiscreteVPSDE.linear(1000)}


def runs() -> dict:
    out = {}
    target = toy.eight_gaussians()
    for name, sampler in fast_yaml_samplers().items():
        for sde_name, make in SDES.items():
            for dtype in (torch.float32, torch.float64):
                sde = make()
                score = target.score_fn(sde)
                x_init = None
                g = torch.Generator().manual_seed(1234)
                key = f"{name}/{sde_name}/{str(dtype)[6:]}"
                try:
                    result = sampler.run(score, sde, (64, 2), generator=g, dtype=dtype)
                    out[key] = {"x": result.x.detach().clone(), "nfe": int(result.nfe)}
                except Exception as e:  # a combination a sampler rejects is recorded as its error text
                    out[key] = {"error": f"{type(e).__name__}: {e}"}
    out.update(training_runs())
    return out


def training_runs() -> dict:
    """Two short training runs (default ``ScoreMLP`` on eight Gaussians; a conditional model), their
    per-step losses and final raw and EMA weights."""
    from scoresde.data.datasets import MixtureDataset
    from scoresde.models import ScoreMLP
    from scoresde.training import TrainConfig, train

    out = {}
    for name, num_classes in (("train/default", 0), ("train/conditional", 8)):
        data = MixtureDataset(toy.eight_gaussians())
        model = ScoreMLP(sdes.VPSDE(), width=64, num_classes=num_classes, generator=torch.Generator().manual_seed(0))
        result = train(model, data, TrainConfig(num_steps=150, batch_size=64, check_every=50))
        flat = torch.cat([p.detach().flatten() for p in result.model.parameters()]
                         + [p.detach().flatten() for p in result.ema_model.parameters()])
        out[name] = {"x": torch.cat([result.losses.double(), flat.double()]), "nfe": 150}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--record", type=Path)
    group.add_argument("--check", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    current = runs()
    if args.record:
        torch.save(current, args.record)
        print(f"recorded {len(current)} runs ({sum('x' in v for v in current.values())} sampled) to {args.record}")
        return 0
    reference = torch.load(args.check, weights_only=False)
    bad = []
    for key, ref in reference.items():
        cur = current.get(key)
        if cur is None:
            bad.append(f"{key}: missing")
        elif "x" in ref:
            if "x" not in cur or not torch.equal(ref["x"], cur["x"]) or ref["nfe"] != cur["nfe"]:
                diff = (ref["x"] - cur["x"]).abs().max().item() if "x" in cur else cur.get("error")
                bad.append(f"{key}: differs (max |dx| {diff}, nfe {ref['nfe']} vs {cur.get('nfe')})")
        elif cur != ref:
            bad.append(f"{key}: error changed: {ref['error']} -> {cur}")
    sampled = sum("x" in v for v in reference.values())
    print(f"{len(reference)} runs ({sampled} sampled): {len(reference) - len(bad)} identical, {len(bad)} differ")
    for line in bad:
        print("  " + line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
