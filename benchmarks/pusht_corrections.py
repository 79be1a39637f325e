"""DAgger for the Push-T policy: the expert's corrections from the states a policy visits.

Rolls a policy out on seeds it is not evaluated on (default 3000..3049; `pydiff policy eval`
uses 1000..1049), lets the planning expert continue from every ``--every``-th step of each
episode (:func:`pydiff.domains.policy.pusht.collect_corrections`), and writes the
demonstrations of ``--demos`` plus the successful corrections as one LeRobot folder for
``pydiff policy train --demos``.

Usage:
    python benchmarks/pusht_corrections.py --demos pusht-demos --checkpoint \
        pydiff/domains/policy/checkpoints/pusht --seeds 50 --out pusht-dagger
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from pydiff.domains.policy import load
from pydiff.domains.policy.lerobot import export_lerobot, read_lerobot
from pydiff.domains.policy.pusht import collect_corrections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demos", required=True)
    parser.add_argument("--checkpoint", default="pusht")
    parser.add_argument("--preset", default="ddim10")
    parser.add_argument("--n-action-steps", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--seed0", type=int, default=3000)
    parser.add_argument("--every", type=int, default=40)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = {} if args.n_action_steps is None else {"n_action_steps": args.n_action_steps}
    policy = load(args.checkpoint, preset=args.preset, **overrides)
    start, cpu = time.perf_counter(), time.process_time()
    fixes = collect_corrections(policy, range(args.seed0, args.seed0 + args.seeds),
                                every=args.every)
    demos = read_lerobot(args.demos)  # after the rollouts: the folder may still be written
    summary = {"demonstrations": len(demos), "corrections": len(fixes),
               "correction_frames": int(sum(len(f.actions) for f in fixes)),
               "demo_frames": int(sum(len(d.actions) for d in demos)),
               "minutes": (time.perf_counter() - start) / 60,
               "cpu_minutes": (time.process_time() - cpu) / 60,
               "mean_correction_steps": float(np.mean([len(f.actions) for f in fixes]))
               if fixes else 0.0}
    export_lerobot(demos + fixes, args.out, env="pusht")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
