"""Training on the 2D ring: sample quality and step time per loss configuration.

Trains :class:`pydiff.training.toy.ToyMLP` Denoisers with the Trainer on
``GaussianMixture.ring()`` for each parameterization / time sampler / weighting, samples 2000
points with ``pydiff.sample`` (20 steps of dpmpp_2m; DDIM for the flow schedule, where dpmpp_2m's
and Heun's coefficient tables are NaN at t = 1, a core solver issue) and reports the energy
distance to fresh data (the sample-vs-sample floor and the untrained model for scale), the
training time per step, and fp32 vs bf16-autocast step time.

    PYDIFF_NO_EXT=1 python benchmarks/training_toy.py [--steps 1000] [--threads 1]

Writes benchmarks/results/training_toy.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import pydiff
from pydiff.testing import GaussianMixture, energy_distance
from pydiff.training import DiffusionLoss
from pydiff.training.toy import train_toy

CONFIGS = [
    # name, schedule, prediction, precond, loss options
    ("vp-eps", pydiff.VPSchedule(), "eps", None, {}),
    ("vp-v-minsnr", pydiff.VPSchedule(), "v", None, {"weighting": "min_snr"}),
    ("ddpm-eps", pydiff.DiscreteSchedule.linear(), "eps", None, {}),
    ("flow-velocity-logitnormal", pydiff.FlowSchedule(), "velocity", None,
     {"t_sampler": "logit_normal"}),
    ("edm-precond-lognormal", pydiff.EDMSchedule(), "x0", "edm", {}),
]


def evaluate(model: pydiff.Denoiser, ring: GaussianMixture, n: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    solver = "ddim" if isinstance(model.schedule, pydiff.FlowSchedule) else "dpmpp_2m"
    x = pydiff.sample(model, pydiff.prior(model.schedule, (n, 2), generator=g), solver, steps=20)
    return energy_distance(x, ring.sample(n, g))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "training_toy.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ring = GaussianMixture.ring()
    g = torch.Generator().manual_seed(123)
    floor = energy_distance(ring.sample(args.samples, g), ring.sample(args.samples, g))
    rows = []
    for name, schedule, prediction, precond, loss_opts in CONFIGS:
        common = dict(schedule=schedule, prediction=prediction, precond=precond, hidden=64,
                      loss_fn=DiffusionLoss(**loss_opts))
        untrained = train_toy(steps=0, generator=torch.Generator().manual_seed(0),
                              **common)
        for precision in ("fp32", "bf16"):
            t0 = time.perf_counter()
            model = train_toy(steps=args.steps, generator=torch.Generator().manual_seed(0),
                              precision=precision, **common)
            ms = (time.perf_counter() - t0) / args.steps * 1e3
            rows.append({"config": name, "precision": precision, "steps": args.steps,
                         "ms_per_step": ms,
                         "energy": evaluate(model, ring, args.samples, 1),
                         "energy_untrained": evaluate(untrained, ring, args.samples, 1)})
            r = rows[-1]
            print(f"{name:28s} {precision:5s} {r['ms_per_step']:7.2f} ms/step  energy "
                  f"{r['energy']:.5f}  (untrained {r['energy_untrained']:.3g})", flush=True)
    print(f"sample-vs-sample floor at n={args.samples}: {floor:.4f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "floor": floor, "threads": args.threads,
                                          "samples": args.samples}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
