"""Push-T benchmark: the planning expert (and, with ``--presets``, the trained policy) on
gym-pusht with state observations: mean max coverage (the mean over episodes of each
episode's maximum target coverage, as Diffusion Policy reports Push-T), success (coverage
above 0.95, gym-pusht's criterion) and CPU seconds per episode, one episode at a time on one
torch thread.

Targets (issue 20): expert >= 0.8 mean max coverage, >= 60% success, <= 10 s CPU per episode;
policy >= 0.7 mean max coverage and at least half the expert's success.

Usage:
    python benchmarks/pusht_bench.py --seeds 50 --seed0 1000 --presets expert,ddim10
Writes benchmarks/results/pusht.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch
from pydiff.domains.policy import evaluate

HERE = os.path.dirname(os.path.abspath(__file__))


def bench(preset: str, seeds: list[int], checkpoint: str | None) -> dict:
    """One preset over ``seeds``, each episode timed alone (process CPU and wall)."""
    rows, cpu, wall = [], [], []
    for seed in seeds:
        start, cpu_start = time.perf_counter(), time.process_time()
        run = evaluate(preset, "pusht", [seed], checkpoint=checkpoint)
        cpu.append(time.process_time() - cpu_start)
        wall.append(time.perf_counter() - start)
        episode = run.episodes[0]
        rows.append({"seed": seed, "coverage": episode.coverage, "success": episode.success,
                     "steps": episode.steps, "cpu_s": cpu[-1]})
        print(f"  {preset} seed {seed}: coverage {episode.coverage:.3f} "
              f"success {episode.success} steps {episode.steps} cpu {cpu[-1]:.2f} s",
              flush=True)
    return {
        "coverage": float(np.mean([r["coverage"] for r in rows])),
        "success": float(np.mean([r["success"] for r in rows])),
        "steps": float(np.mean([r["steps"] for r in rows])),
        "cpu_s_per_episode": {"mean": float(np.mean(cpu)), "max": float(np.max(cpu))},
        "wall_s_per_episode": {"mean": float(np.mean(wall)), "max": float(np.max(wall))},
        "episodes": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--seed0", type=int, default=1000)
    parser.add_argument("--presets", default="expert")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "pusht.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = list(range(args.seed0, args.seed0 + args.seeds))
    results = {name: bench(name, seeds, args.checkpoint)
               for name in args.presets.split(",") if name}
    print(f"\nPush-T, {len(seeds)} seeds ({seeds[0]}..{seeds[-1]}), state observations")
    print(f"{'preset':<10} {'max coverage':>13} {'success':>8} {'steps':>6} "
          f"{'CPU s/ep mean':>14} {'max':>6}")
    for name, r in results.items():
        c = r["cpu_s_per_episode"]
        print(f"{name:<10} {r['coverage']:>13.3f} {r['success']:>8.2f} {r['steps']:>6.0f} "
              f"{c['mean']:>14.2f} {c['max']:>6.2f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": platform.processor() or platform.machine(),
                   "seeds": seeds, "results": results}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
