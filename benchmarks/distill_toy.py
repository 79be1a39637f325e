"""Distillation on the 2D ring: quality against network evaluations down to one, per recipe.

The shipped ring teacher (``pydiff.training.toy.ring_flow_teacher``, a rectified flow) sampled by
Euler, Heun, DDIM and DPM-Solver++ 2M at ``--teacher-steps``, beside the students of every
recipe of ``pydiff.training.distill`` (``pydiff.training.toy_distill.distill_ring``: consistency
distillation, consistency training, progressive distillation, reflow and reflow + one-step
distillation) at their NFEs, with each recipe's distillation cost in minutes on this machine.
Quality is the energy distance to fresh data (``--samples`` each; the line "data vs data" is
two independent data samples of that size, the floor).

Usage:
    python benchmarks/distill_toy.py --steps 600
Writes benchmarks/results/distill_toy.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

import pydiff
from pydiff.testing import GaussianMixture, energy_distance
from pydiff.training.toy import ring_flow_teacher
from pydiff.training.toy_distill import RECIPE_NAMES, TOY_RECIPES, distill_ring


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps per recipe")
    ap.add_argument("--recipes", default=",".join(TOY_RECIPES))
    ap.add_argument("--nfes", default="1,2,4")
    ap.add_argument("--teacher-steps", default="1,2,4,8,10,20,50")
    ap.add_argument("--teacher-solvers", default="euler,heun,ddim,dpmpp_2m")
    ap.add_argument("--samples", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "distill_toy.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    ring = GaussianMixture.ring()
    reference = ring.sample(args.samples, torch.Generator().manual_seed(args.seed + 5)).float()
    floor = energy_distance(
        ring.sample(args.samples, torch.Generator().manual_seed(args.seed + 6)).float(), reference)
    teacher = ring_flow_teacher()

    def quality(sample_fn, schedule) -> float:
        g = torch.Generator().manual_seed(args.seed + 1)
        x_T = pydiff.prior(schedule, (args.samples, 2), generator=g)
        with torch.no_grad():
            return energy_distance(sample_fn(x_T, g), reference)

    rows = []
    for solver in args.teacher_solvers.split(","):
        for steps in (int(s) for s in args.teacher_steps.split(",")):
            with torch.no_grad():
                g = torch.Generator().manual_seed(args.seed + 1)
                x_T = pydiff.prior(teacher.schedule, (args.samples, 2), generator=g)
                state = pydiff.sample(teacher, x_T, solver, steps, generator=g,
                                      return_state=True)
            rows.append({"model": "teacher", "method": solver, "steps": steps,
                         "nfe": state.nfe, "energy_distance": energy_distance(state.x,
                                                                             reference),
                         "distill_minutes": 0.0, "optimizer_steps": 0})
    print(f"load average {os.getloadavg()[0]:.1f}; distilling "
          f"{args.recipes} ({args.steps} steps each) ...", flush=True)
    start = time.perf_counter()
    students = distill_ring(teacher, recipes=args.recipes.split(","), steps=args.steps,
                            nfes=[int(n) for n in args.nfes.split(",")], seed=args.seed)
    print(f"distilled in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    for s in students:
        rows.append({"model": s.recipe, "method": RECIPE_NAMES[s.recipe] + f" ({s.solver})",
                     "steps": s.nfe, "nfe": s.nfe,
                     "energy_distance": quality(s.sample, s.model.schedule),
                     "distill_minutes": s.minutes, "optimizer_steps": s.optimizer_steps})

    print(f"\n{'model':9} {'method':48} {'NFE':>4} {'energy dist':>11} {'distill min':>11}")
    for r in rows:
        print(f"{r['model']:9} {r['method']:48} {r['nfe']:>4} {r['energy_distance']:>11.4f} "
              f"{r['distill_minutes']:>11.2f}")
    print(f"(data vs data: {floor:.4f})")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "data_vs_data": floor, "torch": torch.__version__,
                   "load_average_at_start": os.getloadavg(), "rows": rows}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
