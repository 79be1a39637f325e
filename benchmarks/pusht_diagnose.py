"""Push-T policy diagnosis: coverage against the executed chunk length, and how episodes fail.

For each ``--n-action-steps`` value (Ta: actions executed per predicted chunk) the policy runs
the seeds in lockstep (``pydiff.domains.policy.evaluate``) and, per episode, the T's pose error
(mean distance of its 8 corners from the goal's, pixels) is followed over time. Reported: mean
max coverage and success, the share of episodes that came within ``--close`` px of the goal,
and of those the share that then lost it (ended more than ``--lost`` px away): the policy
reaching the goal region and knocking the T away again.

Usage:
    python benchmarks/pusht_diagnose.py --checkpoint pusht --preset ddim10 --ta 8,4 \
        --seeds 50 --seed0 1000 --out benchmarks/results/pusht_diagnose.json
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
from pydiff.domains.policy import evaluate, load
from pydiff.domains.policy.pusht import pose_error


def diagnose(checkpoint: str, preset: str, ta: int, seeds: list[int], close: float,
             lost: float) -> dict:
    policy = load(checkpoint, preset=preset, n_action_steps=ta)
    run = evaluate(policy, "pusht", seeds)
    rows = []
    for episode in run.episodes:
        error = np.array([pose_error(o[2:5]) for o in episode.observations])
        rows.append({"seed": episode.seed, "coverage": episode.coverage,
                     "success": bool(episode.success), "min_error": float(error.min()),
                     "final_error": float(error[-1]), "steps": episode.steps})
    near = [r for r in rows if r["min_error"] < close]
    return {"checkpoint": checkpoint, "preset": preset, "n_action_steps": ta,
            "coverage": run.summary["coverage"], "success": run.summary["success"],
            "came_close": len(near) / len(rows),
            "lost_after_close": (sum(r["final_error"] > lost and not r["success"]
                                     for r in near) / len(near)) if near else 0.0,
            "episodes": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="pusht")
    parser.add_argument("--preset", default="ddim10")
    parser.add_argument("--ta", default="8,4")
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--seed0", type=int, default=1000)
    parser.add_argument("--close", type=float, default=15.0)
    parser.add_argument("--lost", type=float, default=40.0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "pusht_diagnose.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = list(range(args.seed0, args.seed0 + args.seeds))
    results = [diagnose(args.checkpoint, args.preset, int(ta), seeds, args.close, args.lost)
               for ta in args.ta.split(",")]
    print(f"| Ta | max coverage | success | came within {args.close:g} px | of those, lost it "
          f"(ended > {args.lost:g} px) |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['n_action_steps']} | {r['coverage']:.3f} | {r['success']:.2f} | "
              f"{r['came_close']:.2f} | {r['lost_after_close']:.2f} |")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
