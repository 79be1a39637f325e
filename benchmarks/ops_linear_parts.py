"""Where linear attention's time goes at L=16384 (B=1, H=8, D=64, float32), at torch level.

The pieces behind the fused kernel's design (BENCHMARKS.md, "linear attention"): the two GEMMs,
a numerator GEMM with the denominator as a 65th column, and the cost of first-touch page faults
on a fresh 32 MB output (torch allocates each output anew; this machine's THP mode decides
whether those faults are 4 KB or 2 MB).

    python -P benchmarks/ops_linear_parts.py [--threads 1]

Writes benchmarks/results/ops_linear_parts.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "ops_linear_parts.json"


def best_ms(fn, reps: int = 7) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--length", type=int, default=16384)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.rand(1, 8, args.length, 64, generator=g) for _ in range(3))
    kv = k.transpose(-1, -2) @ v
    kva = torch.cat([kv, k.sum(-2, keepdim=True).transpose(-1, -2)], -1)  # [KV | ks], 65 cols
    out = torch.empty_like(q)
    out65 = torch.empty(*q.shape[:-1], 65)
    rows = {
        "K^T V": best_ms(lambda: k.transpose(-1, -2) @ v),
        "ks = sum_j k_j": best_ms(lambda: k.sum(-2)),
        "Q KV into a preallocated out": best_ms(lambda: torch.matmul(q, kv, out=out)),
        "Q KV into a fresh out": best_ms(lambda: q @ kv),
        "Q [KV | ks] (65 cols), prealloc": best_ms(lambda: torch.matmul(q, kva, out=out65)),
        "Q [KV | ks] (65 cols), fresh": best_ms(lambda: q @ kva),
        "fill a preallocated 32 MB": best_ms(lambda: out.fill_(1)),
        "fill a fresh 32 MB": best_ms(lambda: torch.empty_like(q).fill_(1)),
    }
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    mode = thp.read_text().strip() if thp.exists() else "unknown"
    print(f"threads {args.threads}, L={args.length}, THP: {mode}")
    for name, ms in rows.items():
        print(f"{name:32s} {ms:8.1f} ms")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"threads": args.threads, "length": args.length,
                                   "thp": mode, "ms": rows}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
