"""Benchmark pydiff.ops.lincomb (one fused solver stage) against the bandwidth floor and eager.

Measures, for 3 terms + noise (``out = c0*x + c1*d1 + c2*d2 + cz*z``, coefficients as 0-dim
float64 tensors as the solvers keep them) in float32 and bfloat16:

- ``lincomb``: ``pydiff.ops.lincomb(..., out=buf)``; moves 5 tensors' worth of bytes;
- ``copy``: ``buf.copy_(x)``, the bandwidth floor (2 tensors' worth of bytes);
- ``eager``: the best eager sequence ``torch.mul(x, c0, out=buf); buf.add_(d, alpha=c)...``
  (Python-float coefficients, the fastest eager form; it moves 2 + 3*3 = 11 tensors' worth);
- ``add``: a single ``torch.add(x, d1)``, the latency yardstick at 16K elements;
- ``lincomb_new``: the functional call (allocates its result, as ``torch.add`` does), reported
  as ``new_vs_add`` so the 16K comparison holds either way.

The four are timed in interleaved rounds (each round times every one of them in turn), so drift
of a shared machine (other jobs, what the 260 MB L3 happens to hold) hits all of them alike
rather than whichever ran during a quiet second. Times are the minimum and median over all
calls (the minimum is the least disturbed). Prints a table and writes JSON.

Example:
    python benchmarks/ops_lincomb.py --json benchmarks/results/ops_lincomb.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

import pydiff.ops as ops

SIZES = {"16K": 1 << 14, "16M": 1 << 24, "64M": 1 << 26}


def time_interleaved(
    fns: dict, min_time: float, rounds: int, max_reps: int = 2000
) -> dict[str, tuple[float, float]]:
    """{name: (min, median) seconds per call}, each fn timed for min_time/rounds per round."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            n = 0
            while (time.perf_counter() - start < min_time / rounds or n < 2) and n < max_reps:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
                n += 1
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def bench_case(n: int, dtype: torch.dtype, min_time: float, rounds: int) -> dict:
    g = torch.Generator().manual_seed(0)
    x, d1, d2, z = (torch.randn(n, generator=g).to(dtype) for _ in range(4))
    buf = torch.empty_like(x)
    coef = torch.tensor([0.9, 0.3, -0.2, 0.1], dtype=torch.float64)
    c = [coef[i] for i in range(4)]  # 0-dim tensors, as a solver's table rows give them
    cf = [float(v) for v in coef]
    es = x.element_size()

    def run_lincomb():
        ops.lincomb([x, d1, d2], c[:3], z, c[3], out=buf)

    def run_copy():
        buf.copy_(x)

    def run_eager():
        torch.mul(x, cf[0], out=buf)
        buf.add_(d1, alpha=cf[1])
        buf.add_(d2, alpha=cf[2])
        buf.add_(z, alpha=cf[3])

    def run_add():
        torch.add(x, d1)

    def run_lincomb_new():
        ops.lincomb([x, d1, d2], c[:3], z, c[3])

    res = {"elements": n, "dtype": str(dtype).replace("torch.", "")}
    fns = {"lincomb": run_lincomb, "copy": run_copy, "eager": run_eager, "add": run_add}
    nbytes = {"lincomb": 5 * n * es, "copy": 2 * n * es, "eager": 11 * n * es, "add": 3 * n * es}
    if n <= SIZES["16K"]:
        fns["lincomb_new"], nbytes["lincomb_new"] = run_lincomb_new, 5 * n * es
    for name, (tmin, tmed) in time_interleaved(fns, min_time, rounds).items():
        res[name] = {"min_s": tmin, "median_s": tmed, "GBps": nbytes[name] / tmin / 1e9}
    # correctness of what was timed
    want = (
        coef[0] * x.double() + coef[1] * d1.double() + coef[2] * d2.double() + coef[3] * z.double()
    )
    ops.lincomb([x, d1, d2], c[:3], z, c[3], out=buf)
    res["max_abs_err"] = float((buf.double() - want).abs().max())
    res["bw_vs_copy"] = res["lincomb"]["GBps"] / res["copy"]["GBps"]
    res["speedup_vs_eager"] = res["eager"]["min_s"] / res["lincomb"]["min_s"]
    res["time_vs_add"] = res["lincomb"]["min_s"] / res["add"]["min_s"]
    if "lincomb_new" in res:
        res["new_vs_add"] = res["lincomb_new"]["min_s"] / res["add"]["min_s"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per size and dtype")
    ap.add_argument("--json", default="benchmarks/results/ops_lincomb.json")
    args = ap.parse_args()

    rows = []
    hdr = (
        f"{'size':>5} {'dtype':>8} | {'lincomb':>9} {'copy_':>9} {'eager':>9} {'add':>9} | "
        f"{'GB/s':>6} {'floor':>6} {'bw/floor':>8} {'x eager':>7} {'t/add':>6} {'new/add':>7}"
    )
    print(
        f"pydiff.ops backend: {ops.backend()}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}"
    )
    print(hdr)
    print("-" * len(hdr))
    for size in args.sizes:
        for dt in args.dtypes:
            r = bench_case(SIZES[size], getattr(torch, dt), args.min_time, args.rounds)
            r["size"] = size
            rows.append(r)

            def us(k, r=r):
                return f"{r[k]['min_s'] * 1e6:8.1f}u"

            print(
                f"{size:>5} {dt:>8} | {us('lincomb')} {us('copy')} {us('eager')} {us('add')} | "
                f"{r['lincomb']['GBps']:6.1f} {r['copy']['GBps']:6.1f} {r['bw_vs_copy']:8.2f} "
                f"{r['speedup_vs_eager']:7.2f} {r['time_vs_add']:6.2f}"
                + (f" {r['new_vs_add']:7.2f}" if "new_vs_add" in r else "")
            )
    out = {
        "benchmark": "ops_lincomb",
        "backend": ops.backend(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": ops.cpu_capability(),
        "rounds": args.rounds,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "results": rows,
    }
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
