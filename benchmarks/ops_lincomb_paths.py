"""A/B of the CPU lincomb kernel's memory paths (streaming stores, prefetch) in one process.

For large results the kernel writes with non-temporal (streaming) stores (results >= 32 MB) and
prefetches every term 1 KB ahead (results >= 1 MB). The environment variables
``PYDIFF_LINCOMB_STREAM_STORES=0`` and ``PYDIFF_LINCOMB_PREFETCH=0`` switch them off, read by
the kernel per call, so this script times the default path, each path with one of them off,
and the eager sequence in interleaved rounds of one process: drift of the machine (other jobs,
memory placement) hits all alike; separate builds or separate runs cannot tell a 15%
difference apart on a shared machine.

``--inplace`` times the update as solvers make it, ``out`` being the state term itself
(``lincomb([x, d1, d2], ..., out=x)``; eager: ``x.mul_(c0); x.add_(d, alpha=c)`` x3): every
line of ``out`` has just been read, so a normal store reads nothing extra either.

    python -P benchmarks/ops_lincomb_paths.py
    python -P benchmarks/ops_lincomb_paths.py --inplace
    python -P benchmarks/ops_lincomb_paths.py --sizes 64M --dtypes float32 --rounds 12
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
RESULTS = Path(__file__).parent / "results"
STREAM, PREFETCH = "PYDIFF_LINCOMB_STREAM_STORES", "PYDIFF_LINCOMB_PREFETCH"
# path name -> environment it runs under
PATHS = {
    "default": {STREAM: "1", PREFETCH: "1"},
    "no_stream": {STREAM: "0", PREFETCH: "1"},
    "no_prefetch": {STREAM: "1", PREFETCH: "0"},
}


def best_ms(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def bench_case(n: int, dtype: torch.dtype, rounds: int, reps: int, inplace: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    x, d1, d2, z = (torch.randn(n, generator=g).to(dtype) for _ in range(4))
    buf = x.clone() if inplace else torch.empty_like(x)
    first = buf if inplace else x
    coef = [0.9, 0.1, -0.2, 0.05]
    c = list(torch.tensor(coef, dtype=torch.float64))

    def run_lincomb() -> None:
        ops.lincomb([first, d1, d2], c[:3], z, c[3], out=buf)

    def run_eager() -> None:
        if inplace:
            buf.mul_(coef[0])
        else:
            torch.mul(x, coef[0], out=buf)
        buf.add_(d1, alpha=coef[1])
        buf.add_(d2, alpha=coef[2])
        buf.add_(z, alpha=coef[3])

    times: dict[str, list[float]] = {name: [] for name in [*PATHS, "eager"]}
    previous = {k: os.environ.get(k) for k in (STREAM, PREFETCH)}
    reference = None
    try:
        for _ in range(rounds):
            for name, env in PATHS.items():
                os.environ.update(env)
                times[name].append(best_ms(run_lincomb, reps))
                if inplace:  # the state moves on with every call: nothing to compare
                    continue
                if reference is None:
                    reference = buf.clone()
                elif not torch.equal(reference, buf):
                    raise AssertionError(f"path {name} wrote a different result")
            times["eager"].append(best_ms(run_eager, reps))
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    res: dict = {k: {"min_ms": min(v), "median_ms": sorted(v)[len(v) // 2]}
                 for k, v in times.items()}
    best = res["default"]["min_ms"]
    res["stream_gain"] = res["no_stream"]["min_ms"] / best
    res["prefetch_gain"] = res["no_prefetch"]["min_ms"] / best
    res["x_eager"] = res["eager"]["min_ms"] / best
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "float16"])
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds")
    ap.add_argument("--reps", type=int, default=5, help="calls per round (best is kept)")
    ap.add_argument("--inplace", action="store_true", help="out is the first term (solvers)")
    ap.add_argument("--json", default=None, help="default: results/ops_lincomb_paths[_inplace]")
    args = ap.parse_args()
    if args.json is None:
        args.json = str(RESULTS / f"ops_lincomb_paths{'_inplace' if args.inplace else ''}.json")
    if ops.backend() != "extension":
        raise SystemExit("needs the compiled extension (pip install .): "
                         "the reference implementation has no memory paths to A/B")

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.rounds} rounds"
          f"{', out = first term' if args.inplace else ''}")
    hdr = (f"{'size':>5} {'dtype':>8} | {'default':>9} {'no strm':>9} {'no pref':>9} "
           f"{'eager':>9} | {'strm gain':>9} {'pref gain':>9} {'x eager':>7}")
    print(hdr)
    print("-" * len(hdr))
    rows = []
    for size in args.sizes:
        for dt in args.dtypes:
            r = bench_case(SIZES[size], getattr(torch, dt), args.rounds, args.reps, args.inplace)
            r.update(size=size, dtype=dt)
            rows.append(r)
            cols = " ".join(f"{r[k]['min_ms']:7.1f}ms" for k in [*PATHS, "eager"])
            print(f"{size:>5} {dt:>8} | {cols} | {r['stream_gain']:9.2f} "
                  f"{r['prefetch_gain']:9.2f} {r['x_eager']:7.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "benchmark": "ops_lincomb_paths", "torch": torch.__version__,
            "threads": torch.get_num_threads(), "machine": platform.machine(),
            "cpu_capability": ops.cpu_capability(),
            "cpu_count": os.cpu_count(), "rounds": args.rounds, "inplace": args.inplace,
            "results": rows}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
