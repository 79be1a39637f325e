"""A/B of lincomb's non-temporal (streaming) stores against normal stores, in one process.

Results of >= 32 MB are written with non-temporal stores by the CPU kernel; the environment
variable ``PYDIFF_LINCOMB_STREAM_STORES=0`` turns that off (read by the kernel per call). The
two paths and the eager sequence are timed in interleaved rounds, so drift of the machine (other
jobs, memory placement) hits all three alike; separate builds or separate runs cannot tell a
15% difference apart on a shared machine.

    python -P benchmarks/ops_lincomb_stores.py
    python -P benchmarks/ops_lincomb_stores.py --sizes 64M --dtypes float32 --rounds 12
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

SIZES = {"8M": 8 << 20, "16M": 16 << 20, "64M": 64 << 20}
RESULTS = Path(__file__).parent / "results" / "ops_lincomb_stores.json"
ENV = "PYDIFF_LINCOMB_STREAM_STORES"


def best_ms(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def bench_case(n: int, dtype: torch.dtype, rounds: int, reps: int) -> dict:
    g = torch.Generator().manual_seed(0)
    x, d1, d2, z = (torch.randn(n, generator=g).to(dtype) for _ in range(4))
    buf = torch.empty_like(x)
    coef = [0.9, 0.1, -0.2, 0.05]
    c = torch.tensor(coef, dtype=torch.float64)

    def run_lincomb() -> None:
        ops.lincomb([x, d1, d2], c[:3], z, c[3], out=buf)

    def run_eager() -> None:
        torch.mul(x, coef[0], out=buf)
        buf.add_(d1, alpha=coef[1])
        buf.add_(d2, alpha=coef[2])
        buf.add_(z, alpha=coef[3])

    times: dict[str, list[float]] = {"stream": [], "normal": [], "eager": []}
    previous = os.environ.get(ENV)
    try:
        for _ in range(rounds):
            os.environ[ENV] = "1"
            times["stream"].append(best_ms(run_lincomb, reps))
            streamed = buf.clone()
            os.environ[ENV] = "0"
            times["normal"].append(best_ms(run_lincomb, reps))
            if not torch.equal(streamed, buf):
                raise AssertionError("streaming and normal stores wrote different results")
            times["eager"].append(best_ms(run_eager, reps))
    finally:
        if previous is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = previous
    res: dict = {k: {"min_ms": min(v), "median_ms": sorted(v)[len(v) // 2]}
                 for k, v in times.items()}
    res["stream_gain"] = res["normal"]["min_ms"] / res["stream"]["min_ms"]
    res["x_eager_stream"] = res["eager"]["min_ms"] / res["stream"]["min_ms"]
    res["x_eager_normal"] = res["eager"]["min_ms"] / res["normal"]["min_ms"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--dtypes", nargs="+", default=["float32"],
                    help="results of other dtypes are never streamed")
    ap.add_argument("--rounds", type=int, default=8, help="interleaved A/B/eager rounds")
    ap.add_argument("--reps", type=int, default=5, help="calls per round (best is kept)")
    ap.add_argument("--json", default=str(RESULTS))
    args = ap.parse_args()
    if ops.backend() != "extension":
        raise SystemExit("needs the compiled extension (pip install .): "
                         "the reference implementation has no stores to A/B")

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.rounds} rounds")
    hdr = (f"{'size':>5} {'dtype':>8} | {'stream':>9} {'normal':>9} {'eager':>9} | "
           f"{'gain':>5} {'x eager':>7} {'(normal)':>8}")
    print(hdr)
    print("-" * len(hdr))
    rows = []
    for size in args.sizes:
        for dt in args.dtypes:
            r = bench_case(SIZES[size], getattr(torch, dt), args.rounds, args.reps)
            r.update(size=size, dtype=dt)
            rows.append(r)
            print(f"{size:>5} {dt:>8} | {r['stream']['min_ms']:7.1f}ms "
                  f"{r['normal']['min_ms']:7.1f}ms "
                  f"{r['eager']['min_ms']:7.1f}ms | {r['stream_gain']:5.2f} "
                  f"{r['x_eager_stream']:7.2f} {r['x_eager_normal']:8.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "benchmark": "ops_lincomb_stores", "torch": torch.__version__,
            "threads": torch.get_num_threads(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "rounds": args.rounds, "results": rows}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
