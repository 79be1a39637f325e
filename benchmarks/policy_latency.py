"""Chunk-inference latency of the shipped policies at batch 1: wall time and process CPU time.

On a shared machine the wall time includes waiting for a core; the CPU time (``time.process_time``
of this single-threaded process) is what one chunk costs on this CPU when it has a core to
itself. Each preset runs ``--calls`` chunk inferences on observations of a real episode (steady
state: RTI warm-started, streaming buffer initialized), after ``--warmup`` calls.

``--cold`` also times, interleaved call by call in the same process, each chunk with the
schedule's per-grid caches emptied first (``pydiff.sample``'s default grids and the
``alpha_sigma`` rows), as every call was before those caches: the rows ``<preset>-cold``.

Usage:
    python benchmarks/policy_latency.py --calls 300
Writes benchmarks/results/policy_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from pydiff.domains.policy import load
from pydiff.domains.policy.data import rollout_expert


def _summary(wall: list[float], cpu: list[float]) -> dict[str, float]:
    wall_a, cpu_a = np.asarray(wall), np.asarray(cpu)
    return {"wall_p50": float(np.percentile(wall_a, 50)),
            "wall_p99": float(np.percentile(wall_a, 99)),
            "cpu_p50": float(np.percentile(cpu_a, 50)), "cpu_p99": float(np.percentile(cpu_a, 99)),
            "cpu_mean": float(cpu_a.mean()), "calls": len(wall)}


def measure(env: str, preset: str, calls: int, warmup: int, cold: bool = False
            ) -> dict[str, dict[str, float]]:
    policy = load(env, preset=preset)
    ep = rollout_expert(env, 1000)
    obs = torch.from_numpy(ep.observations)
    to = policy.config.n_obs_steps
    g = torch.Generator().manual_seed(0)
    kinds = ("warm", "cold") if cold else ("warm",)
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in kinds}
    for k in range(warmup + calls):
        i = k % (len(obs) - to)
        history = obs[i:i + to].unsqueeze(0)
        for kind in kinds:
            if kind == "cold":  # what every call computed before the per-grid caches
                policy.schedule.__dict__.pop("_default_grids", None)
                policy.schedule.__dict__.pop("_grid_levels", None)
            w0, c0 = time.perf_counter(), time.process_time()
            policy.predict_action_chunk(history, generator=g)
            w1, c1 = time.perf_counter(), time.process_time()
            if k >= warmup:
                times[kind][0].append(1e3 * (w1 - w0))
                times[kind][1].append(1e3 * (c1 - c0))
    return {kind: _summary(*times[kind]) for kind in kinds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--envs", default="pointmass,pendulum")
    ap.add_argument("--presets", default="rti,rti2,stream,ddim10,dpmpp2m5,cp1,cp2")
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--cold", action="store_true",
                    help="also time each chunk with the per-grid caches emptied (interleaved)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "policy_latency.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    report: dict = {"load_average_at_start": os.getloadavg(), "envs": {}}
    print(f"batch 1, 1 thread, {args.calls} chunks; load average {os.getloadavg()[0]:.1f}")
    print(f"{'env':<10} {'preset':<9} {'wall p50':>9} {'wall p99':>9} {'cpu p50':>8} "
          f"{'cpu p99':>8} (ms)")
    for env in args.envs.split(","):
        report["envs"][env] = {}
        for preset in args.presets.split(","):
            for kind, r in measure(env, preset, args.calls, args.warmup, args.cold).items():
                name = preset if kind == "warm" else f"{preset}-cold"
                report["envs"][env][name] = r
                print(f"{env:<10} {name:<9} {r['wall_p50']:>9.2f} {r['wall_p99']:>9.2f} "
                      f"{r['cpu_p50']:>8.2f} {r['cpu_p99']:>8.2f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
