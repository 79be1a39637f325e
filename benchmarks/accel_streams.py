"""Stream batching throughput: K concurrent streams advanced by one batched network call per
tick (pydiff.accel.StreamBatch) against sampling the same streams one by one.

StreamDiffusion's steady state: one new stream arrives every tick and every stream takes
``--steps`` steps, so with ``--streams`` = steps the batch holds that many streams, each at its
own noise level. Networks: a shipped diffusion policy's UNet1D (batch 1 per stream: one robot,
its own observation) and the shipped medical anatomy prior (UNet2D) at ``--size`` pixels.
Throughput is finished samples per second of process CPU time (single-threaded), best of
``--repeats`` interleaved rounds; the outputs of both ways are compared (max abs difference).

Every solver stage is batched across the streams (Heun: two batched calls a tick).

Usage:
    python benchmarks/accel_streams.py --streams 8
Writes benchmarks/results/accel_streams.json.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import pydiff
from pydiff.accel import StreamBatch


def _policy_case(env: str, total: int):
    from pydiff.domains.policy import load

    policy = load(env)
    cfg = policy.config
    model = policy.inference_model()
    g = torch.Generator().manual_seed(0)
    xs = [pydiff.prior(policy.schedule, (1, cfg.action_dim, cfg.horizon), generator=g)
          for _ in range(total)]
    conds = [{"global_cond": torch.randn(1, cfg.obs_dim * cfg.n_obs_steps, generator=g)}
             for _ in range(total)]
    return f"{env} policy UNet1D", model, xs, conds, "ddim"


def _prior_case(size: int, total: int):
    from pydiff.domains.medical.reconstructor import PRETRAINED

    model = pydiff.from_pretrained(PRETRAINED / "anatomy")
    g = torch.Generator().manual_seed(0)
    xs = [pydiff.prior(model.schedule, (1, 1, size, size), generator=g) for _ in range(total)]
    return f"anatomy prior UNet2D {size}x{size}", model, xs, [{}] * total, "dpmpp_2m"


class _NoTemplates(dict):
    """StreamBatch's per-shape start states, never kept: every push runs ``Solver.init``
    (the way before ``SolverState.restart``), for ``--ab-restart``."""

    def __setitem__(self, key, value) -> None:
        pass


def measure(case, streams: int, steps: int, repeats: int, ab_restart: bool = False) -> dict:
    name, model, xs, conds, solver = case

    def sequential() -> list[torch.Tensor]:
        return [pydiff.sample(model.bind(**c) if c else model, x, solver, steps=steps)
                for x, c in zip(xs, conds)]

    calls = 0

    def batched(init_each: bool = False) -> list[torch.Tensor]:
        nonlocal calls
        batch = StreamBatch(model, solver, steps=steps, max_streams=streams)
        if init_each:
            batch._templates = _NoTemplates()
        for x, c in zip(xs, conds):  # one arrival per tick
            batch.push(x, **c)
            batch.tick()
        out = batch.drain()
        calls = batch.network_calls
        return out

    ways = [("sequential", sequential), ("batched", batched)]
    if ab_restart:
        ways.append(("batched_init_each", lambda: batched(init_each=True)))
    best = {way: float("inf") for way, _ in ways}
    outs = {}
    with torch.no_grad():
        sequential(), batched()  # warm-up
        for _ in range(repeats):
            for way, fn in ways:
                t0 = time.process_time()
                outs[way] = fn()
                best[way] = min(best[way], time.process_time() - t0)
    diff = max((a - b).abs().max().item() for a, b in zip(outs["sequential"], outs["batched"]))
    n = len(xs)
    row = {"network": name, "solver": solver, "steps": steps, "streams": streams,
           "samples": n, "batched_network_calls": calls,
           "sequential_per_s": n / best["sequential"],
           "batched_per_s": n / best["batched"],
           "speedup": best["sequential"] / best["batched"], "max_abs_diff": diff}
    if ab_restart:
        assert all(torch.equal(a, b) for a, b in zip(outs["batched"],
                                                     outs["batched_init_each"]))
        row["batched_init_each_per_s"] = n / best["batched_init_each"]
        row["restart_gain"] = best["batched_init_each"] / best["batched"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--samples", type=int, default=48, help="streams pushed per round")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--envs", default="pendulum,pointmass")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--policy-solvers", default="ddim,heun",
                    help="the policies' solvers (heun: two network calls a step, both batched "
                         "across the streams)")
    ap.add_argument("--skip-prior", action="store_true")
    ap.add_argument("--ab-restart", action="store_true",
                    help="also the batched run with Solver.init per pushed stream (no "
                         "SolverState.restart), interleaved: what restarting one start state "
                         "saves")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "accel_streams.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"1 thread, CPU time; load average {os.getloadavg()[0]:.1f}", flush=True)
    cases = [(*_policy_case(env, args.samples)[:4], solver) for env in args.envs.split(",")
             for solver in args.policy_solvers.split(",")]
    if not args.skip_prior:
        cases.append(_prior_case(args.size, args.samples))
    rows = []
    print(f"{'network':<30} {'solver':<9} {'seq/s':>8} {'batched/s':>10} {'speed-up':>9} "
          f"{'max diff':>9}")
    for case in cases:
        r = measure(case, args.streams, args.steps, args.repeats, args.ab_restart)
        rows.append(r)
        extra = (f"   init per stream {r['batched_init_each_per_s']:.1f}/s, restart "
                 f"{r['restart_gain']:.2f}x" if args.ab_restart else "")
        print(f"{r['network']:<30} {r['solver']:<9} {r['sequential_per_s']:>8.1f} "
              f"{r['batched_per_s']:>10.1f} {r['speedup']:>8.2f}x {r['max_abs_diff']:>9.1e}"
              + extra, flush=True)
    report = {"args": vars(args), "load_average_at_start": os.getloadavg(), "rows": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    pydiff.files.write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
