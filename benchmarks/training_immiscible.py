"""Immiscible noise assignment on the 2D ring: sample quality after the same training budget.

Trains :class:`pydiff.training.toy.ToyMLP` Denoisers with ``DiffusionLoss(immiscible=...)`` off
and on (same seeds, same batches, same steps), samples with ``pydiff.sample`` (20 steps of
dpmpp_2m; DDIM for the flow schedule) and reports the energy distance to fresh ring data (mean
and spread over seeds; the sample-vs-sample floor for scale), the plain denoising loss on a
fixed held-out set (independent noise: the objective of ordinary training) and the training
time per step (the assignment is a host-side ``linear_sum_assignment`` on the B x B distances).

    PYDIFF_NO_EXT=1 python benchmarks/training_immiscible.py [--budgets 300 1000] [--seeds 3]

Writes benchmarks/results/training_immiscible.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import pydiff
from pydiff.testing import GaussianMixture, energy_distance
from pydiff.training import DiffusionLoss, diffusion_loss
from pydiff.training.toy import train_toy

CONFIGS = [
    # name, schedule, prediction, solver for the evaluation samples
    ("vp-eps", pydiff.VPSchedule(), "eps", "dpmpp_2m"),
    ("flow-velocity", pydiff.FlowSchedule(), "velocity", "ddim"),
]


def quality(model, ring, solver, n, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = pydiff.sample(model, pydiff.prior(model.schedule, (n, 2), generator=g), solver,
                          steps=20)
    return energy_distance(x, ring.sample(n, g))


def held_out_loss(model, ring, n=8192, seed=7):
    g = torch.Generator().manual_seed(seed)
    x0 = ring.sample(n, g).float()
    with torch.no_grad():  # the schedule's default times and independent noise, from g
        return float(diffusion_loss(model, x0, generator=g).loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "training_immiscible.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ring = GaussianMixture.ring()
    g = torch.Generator().manual_seed(123)
    floor = energy_distance(ring.sample(args.samples, g), ring.sample(args.samples, g))
    rows = []
    print(f"{'config':14s} {'steps':>5s} {'immiscible':>10s} {'energy (mean +- sd)':>22s} "
          f"{'held-out loss':>13s} {'ms/step':>8s}")
    for name, schedule, prediction, solver in CONFIGS:
        for steps in args.budgets:
            for immiscible in (False, True):
                energies, losses, times = [], [], []
                for seed in range(args.seeds):
                    t0 = time.perf_counter()
                    model = train_toy(steps=steps, batch_size=args.batch, schedule=schedule,
                                      prediction=prediction, hidden=64,
                                      generator=torch.Generator().manual_seed(seed),
                                      loss_fn=DiffusionLoss(immiscible=immiscible))
                    times.append((time.perf_counter() - t0) / steps * 1e3)
                    energies.append(quality(model, ring, solver, args.samples, 1000 + seed))
                    losses.append(held_out_loss(model, ring))
                row = {"config": name, "steps": steps, "immiscible": immiscible,
                       "batch": args.batch, "energy": energies, "held_out_loss": losses,
                       "ms_per_step": times}
                rows.append(row)
                sd = statistics.stdev(energies) if len(energies) > 1 else 0.0
                print(f"{name:14s} {steps:5d} {str(immiscible):>10s} "
                      f"{statistics.mean(energies):12.5f} +- {sd:.5f} "
                      f"{statistics.mean(losses):13.4f} {statistics.mean(times):8.2f}",
                      flush=True)
    print(f"sample-vs-sample floor at n={args.samples}: {floor:.5f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "floor": floor, "threads": args.threads,
                                          "samples": args.samples, "seeds": args.seeds},
                                         indent=2))


if __name__ == "__main__":
    main()
