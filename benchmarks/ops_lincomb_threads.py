"""lincomb on one thread against two, by size: where the CPU kernel's thread pool pays off.

The kernel runs calls below ``kParallelMinElems`` (csrc/cpu/lincomb.cpp) on the calling thread
whatever ``torch.get_num_threads()`` says, so below that size both columns time the same path;
to re-decide the threshold, build with it lowered and run this. 3 terms + noise, float32,
``out=``; the two thread counts alternate in interleaved rounds. Prints a table, writes JSON.

    python -P benchmarks/ops_lincomb_threads.py
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from pydiff import ops

RESULTS = Path(__file__).parent / "results" / "ops_lincomb_threads.json"


def per_call_us(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def bench_size(n: int, rounds: int, calls: int) -> dict:
    x, d1, d2, z = (torch.randn(n) for _ in range(4))
    buf = torch.empty_like(x)
    table = torch.tensor([0.9, 0.3, -0.2, 0.1], dtype=torch.float64)
    c = list(table)  # 0-dim tensors, as a solver's table rows give them

    def run() -> None:
        ops.lincomb([x, d1, d2], c[:3], z, c[3], out=buf)

    best = {1: float("inf"), 2: float("inf")}
    before = torch.get_num_threads()
    try:
        for _ in range(rounds):
            for threads in best:
                torch.set_num_threads(threads)
                run()
                best[threads] = min(best[threads], per_call_us(run, calls))
    finally:
        torch.set_num_threads(before)
    return {"elements": n, "one_thread_us": best[1], "two_threads_us": best[2],
            "speedup": best[1] / best[2]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+",
                    default=[1 << 14, 1 << 15, 1 << 16, 1 << 17, 1 << 18, 1 << 19])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=500, help="calls per timing")
    ap.add_argument("--json", default=str(RESULTS))
    args = ap.parse_args()
    if ops.backend() != "extension":
        raise SystemExit("needs the compiled extension (pip install .)")
    print(f"torch {torch.__version__}, {ops.cpu_capability()} build, {args.rounds} rounds")
    print(f"{'elements':>9} | {'1 thread':>9} {'2 threads':>9} | {'speedup':>7}")
    rows = []
    for n in args.sizes:
        r = bench_size(n, args.rounds, args.calls)
        rows.append(r)
        print(f"{n:>9} | {r['one_thread_us']:7.1f}us {r['two_threads_us']:7.1f}us | "
              f"{r['speedup']:7.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "benchmark": "ops_lincomb_threads", "torch": torch.__version__,
            "cpu_capability": ops.cpu_capability(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "rounds": args.rounds, "results": rows}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
