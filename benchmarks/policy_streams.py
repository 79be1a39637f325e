"""Policy success over several noise streams: how much of a gap between presets is noise.

``pydiff policy eval`` seeds each episode's noise generator with its env seed, so every preset
sees one fixed noise stream per seed; over 50 seeds a success rate moves by up to ~0.1 from one
stream to another. This runs each preset on the same env seeds with ``--streams`` noise
streams (``evaluate(..., noise_seed=k)``, k = 0 is the eval's own) and prints each stream's
success (Push-T: mean max coverage too) and the mean over streams.

Usage:
    python benchmarks/policy_streams.py --env pendulum --presets cp1,cp2 --streams 3 \
        --out benchmarks/results/policy_streams_pendulum.json
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
from pydiff.domains.policy import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", required=True)
    parser.add_argument("--presets", default="cp1,cp2")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--streams", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--seed0", type=int, default=1000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = list(range(args.seed0, args.seed0 + args.seeds))
    table = {}
    for preset in args.presets.split(","):
        rows = []
        for stream in range(args.streams):
            s = evaluate(preset, args.env, seeds, checkpoint=args.checkpoint,
                         noise_seed=stream).summary
            rows.append({"noise_seed": stream, "success": s["success"], "return": s["return"],
                         **({"coverage": s["coverage"]} if "coverage" in s else {})})
            print(f"  {preset} stream {stream}: success {s['success']:.2f}"
                  + (f" coverage {s['coverage']:.3f}" if "coverage" in s else ""), flush=True)
        table[preset] = {"streams": rows,
                         "success_mean": float(np.mean([r["success"] for r in rows]))}
        if "coverage" in rows[0]:
            table[preset]["coverage_mean"] = float(np.mean([r["coverage"] for r in rows]))
    print(f"| preset | {' | '.join(f'stream {k}' for k in range(args.streams))} | mean |")
    print(f"|---|{'---|' * (args.streams + 1)}")
    for preset, entry in table.items():
        key = "coverage" if "coverage_mean" in entry else "success"
        cells = " | ".join(f"{r[key]:.2f}" for r in entry["streams"])
        print(f"| {preset} ({key}) | {cells} | {entry[key + '_mean']:.3f} |")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"env": args.env, "seeds": [seeds[0], seeds[-1]], "table": table}, f,
                      indent=1)


if __name__ == "__main__":
    main()
