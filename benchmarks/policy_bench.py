"""Policy benchmark: success, return, chunk-boundary jumps and chunk-inference latency per
inference preset (scripted expert, DDPM 100, DDIM 10, DPM-Solver++ 2M 5, RTI, streaming, the
consistency students cp1 and cp2) for
each env, with the shipped checkpoints; plus the planner (left/right share with and without
value guidance).

Success, return, jumps and sides come from ``--seeds`` episodes run in lockstep (batched, in
simulated time); latency from single-env episodes (batch 1, as on a robot) until
``--latency-chunks`` chunks were timed, on one torch thread.

Usage:
    python benchmarks/policy_bench.py --seeds 50 --latency-chunks 200
Writes benchmarks/results/policy.json and prints a table per env.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
from pydiff.domains.policy import PRESETS, evaluate, load, run_episode
from pydiff.domains.policy.metrics import latency_summary

ALL_PRESETS = ["expert", "ddpm100", "ddim10", "dpmpp2m5", "rti", "rti2", "stream", "cp1", "cp2"]


def latency(env: str, preset: str, chunks: int, seed0: int) -> dict[str, dict[str, float]]:
    """Batch-1 latencies over episodes until ``chunks`` steady-state chunks (at most 40)."""
    policy = load(env, preset=preset)
    chunk, steady, select = [], [], []
    for k in range(40):
        if len(steady) >= chunks:
            break
        r = run_episode(policy, env, seed0 + k)
        chunk += r.chunk_latency_ms
        steady += r.chunk_latency_ms[1:]  # RTI/streaming: the first chunk is a full solve
        select += r.select_latency_ms
    return {"chunk_ms": latency_summary(chunk), "steady_chunk_ms": latency_summary(steady),
            "select_ms": latency_summary(select)}


def planner_rows(seeds: list[int]) -> dict[str, dict]:
    from pydiff.domains.policy.planner import pointmass_tracker, side_value

    goal = torch.tensor([0.0, 0.75])
    rows = {}
    # "once": one plan per 48 steps, its states followed by the tracking controller;
    # "open8": replan every 8 steps and execute the planned actions open loop
    for name, value, scale, every, track in [
            ("planner-once", None, 0.0, 48, pointmass_tracker),
            ("planner-once+left", side_value(-1), 2.0, 48, pointmass_tracker),
            ("planner-once+right", side_value(1), 2.0, 48, pointmass_tracker),
            ("planner-open8", None, 0.0, 8, None)]:
        planner = load("pointmass_planner", replan_every=every)
        policy = planner.as_policy(goal, value=value, guidance_scale=scale, track=track)
        rows[name] = evaluate(policy, "pointmass", seeds).summary
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--envs", default="pointmass,pendulum")
    ap.add_argument("--presets", default=",".join(ALL_PRESETS))
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--seed0", type=int, default=1000)
    ap.add_argument("--latency-chunks", type=int, default=200)
    ap.add_argument("--skip-planner", action="store_true", help="no planner rows (point mass)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "policy.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = list(range(args.seed0, args.seed0 + args.seeds))
    presets = args.presets.split(",")
    report: dict = {"machine": platform.processor() or platform.machine(),
                    "load_average_at_start": os.getloadavg(),
                    "torch": torch.__version__, "seeds": [seeds[0], seeds[-1]], "envs": {}}
    for env in args.envs.split(","):
        start = time.time()
        rows = {}
        for name in presets:
            s = evaluate(name, env, seeds).summary
            lat = (latency(env, name, args.latency_chunks, args.seed0) if name in PRESETS
                   else None)
            rows[name] = {"success": s["success"], "return": s["return"],
                          "jump_mean": s["boundary_jump"]["mean"],
                          "jump_max": s["boundary_jump"]["max"], "sides": s["sides"],
                          "clipped_actions": s["clipped_actions"],
                          "latency_batch1": lat}
        if env == "pointmass" and not args.skip_planner:
            for name, s in planner_rows(seeds).items():
                rows[name] = {"success": s["success"], "return": s["return"],
                              "jump_mean": s["boundary_jump"]["mean"],
                              "jump_max": s["boundary_jump"]["max"], "sides": s["sides"],
                              "clipped_actions": s["clipped_actions"],
                              "latency_batch1": None,
                              "plan_ms_batched": s["chunk_latency_ms"]}
        report["envs"][env] = rows
        print(f"\n{env}: {len(seeds)} seeds ({time.time() - start:.0f} s)")
        print("(chunk latency: batch 1, ms, without each episode's first chunk)")
        print(f"{'preset':<18} {'success':>7} {'return':>8} {'jump mean':>9} {'jump max':>8} "
              f"{'chunk p50':>9} {'chunk p99':>9} {'left':>5} {'right':>5}")
        for name, r in rows.items():
            lat = r["latency_batch1"]
            p50 = f"{lat['steady_chunk_ms']['p50']:.2f}" if lat else "-"
            p99 = f"{lat['steady_chunk_ms']['p99']:.2f}" if lat else "-"
            print(f"{name:<18} {r['success']:>7.2f} {r['return']:>8.1f} {r['jump_mean']:>9.3f} "
                  f"{r['jump_max']:>8.3f} {p50:>9} {p99:>9} {r['sides']['left']:>5.2f} "
                  f"{r['sides']['right']:>5.2f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
