"""Benchmark pydiff.ops.attention and pydiff.ops.linear_attention against torch on the CPU.

Softmax attention: B=1, H=8 (--heads), L in {1024, 4096}, D in {40, 64, 80, 160}, float32;
forward and forward+backward; pydiff's flash-style kernel against torch's
scaled_dot_product_attention (SDPA); time (minimum over repeats) and peak memory (growth of the
peak resident set while the call runs, measured with /proc/self/clear_refs + VmHWM).

Linear attention: B=1, H=8, D=64 at L=16384 (and 4096): the fused kernel against the same
formula in eager torch (``q @ (k^T v) / (q @ k.sum + eps)``), and SDPA on the same shape for
scale (``--with-sdpa-16k``, 5+ s per call).

Example:
    python benchmarks/ops_attention.py --json benchmarks/results/ops_attention.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

import pydiff.ops as ops


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def peak_bytes(fn) -> int:
    """Peak RSS growth while fn() runs (Linux); -1 where /proc does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        return -1
    base = _status("VmRSS:")
    res = fn()
    peak = _status("VmHWM:") - base
    del res
    return peak


def timeit(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def time_pair(fa, fb, reps: int, warmup: int = 3) -> tuple[float, float]:
    """Minimum times of fa and fb, alternating calls so both see the same machine load.

    A few untimed calls first: until the allocator reuses freed blocks, every call's fresh
    output pages fault in, and the first case of a process read several times slower than
    the same case run again (BENCHMARKS.md)."""
    for _ in range(warmup):
        fa()
        fb()
    ta = tb = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fa()
        t1 = time.perf_counter()
        fb()
        t2 = time.perf_counter()
        ta, tb = min(ta, t1 - t0), min(tb, t2 - t1)
    return ta, tb


def fwd_bwd(f, inputs, gout):
    """A call of f on fresh leaves of inputs and its backward with gout; returns the grads."""

    def run():
        leaves = [t.detach().requires_grad_() for t in inputs]
        f(*leaves).backward(gout)
        return [t.grad for t in leaves]

    return run


def softmax_case(L: int, D: int, reps: int, heads: int = 8, batch: int = 1) -> dict:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, L, D, generator=g) for _ in range(3))
    gout = torch.randn(batch, heads, L, D, generator=g)

    def fwd_ours():
        return ops.attention(q, k, v)

    def fwd_sdpa():
        return F.scaled_dot_product_attention(q, k, v)

    fb_ours = fwd_bwd(lambda a, b, c: ops.attention(a, b, c), (q, k, v), gout)
    fb_sdpa = fwd_bwd(lambda a, b, c: F.scaled_dot_product_attention(a, b, c), (q, k, v), gout)
    diff = float((fwd_ours() - fwd_sdpa()).abs().max())
    r = {"B": batch, "L": L, "D": D, "H": heads, "max_abs_diff_vs_sdpa": diff}
    r["fwd_ours_s"], r["fwd_sdpa_s"] = time_pair(fwd_ours, fwd_sdpa, reps)
    r["fwdbwd_ours_s"], r["fwdbwd_sdpa_s"] = time_pair(fb_ours, fb_sdpa, reps)
    for name, fn in [
        ("fwd_ours", fwd_ours),
        ("fwd_sdpa", fwd_sdpa),
        ("fwdbwd_ours", fb_ours),
        ("fwdbwd_sdpa", fb_sdpa),
    ]:
        r[name + "_peak_MB"] = peak_bytes(fn) / 2**20
    r["fwd_ratio"] = r["fwd_ours_s"] / r["fwd_sdpa_s"]
    r["fwdbwd_ratio"] = r["fwdbwd_ours_s"] / r["fwdbwd_sdpa_s"]
    print(
        f"{L:>5} {D:>4} | fwd {r['fwd_ours_s'] * 1e3:8.1f} {r['fwd_sdpa_s'] * 1e3:8.1f} "
        f"{r['fwd_ratio']:5.2f} | fwd+bwd {r['fwdbwd_ours_s'] * 1e3:8.1f} "
        f"{r['fwdbwd_sdpa_s'] * 1e3:8.1f} {r['fwdbwd_ratio']:5.2f} | peak MB fwd "
        f"{r['fwd_ours_peak_MB']:6.1f} {r['fwd_sdpa_peak_MB']:6.1f} fwd+bwd "
        f"{r['fwdbwd_ours_peak_MB']:6.1f} {r['fwdbwd_sdpa_peak_MB']:6.1f}",
        flush=True,
    )
    return r


def linear_case(L: int, reps: int, with_sdpa: bool, heads: int = 8) -> dict:
    g = torch.Generator().manual_seed(1)
    q, k = (torch.rand(1, heads, L, 64, generator=g) for _ in range(2))
    v = torch.randn(1, heads, L, 64, generator=g)

    def formula(q, k, v):
        kv = k.transpose(-1, -2) @ v
        return (q @ kv) / (q @ k.sum(-2, keepdim=True).transpose(-1, -2) + 1e-6)

    def eager():
        return formula(q, k, v)

    def ours():
        return ops.linear_attention(q, k, v)

    gout = torch.randn_like(v)
    err = float(((ours() - eager()).abs() / eager().abs().clamp_min(1e-3)).max())
    r = {"L": L, "D": 64, "H": heads, "max_rel_diff_vs_eager": err}
    r["ours_s"], r["eager_s"] = time_pair(ours, eager, reps)
    r["fwdbwd_ours_s"], r["fwdbwd_eager_s"] = time_pair(
        fwd_bwd(ops.linear_attention, (q, k, v), gout), fwd_bwd(formula, (q, k, v), gout), reps)
    for name, fn in [("ours", ours), ("eager", eager)]:
        r[name + "_peak_MB"] = peak_bytes(fn) / 2**20
    if with_sdpa:
        r["sdpa_s"] = timeit(lambda: F.scaled_dot_product_attention(q, k, v), 1)
    r["speedup_vs_eager"] = r["eager_s"] / r["ours_s"]
    r["fwdbwd_speedup_vs_eager"] = r["fwdbwd_eager_s"] / r["fwdbwd_ours_s"]
    sd = f" | softmax SDPA {r['sdpa_s'] * 1e3:.0f} ms" if with_sdpa else ""
    print(
        f"linear L={L:>6} | ours {r['ours_s'] * 1e3:7.1f} ms  eager {r['eager_s'] * 1e3:7.1f}"
        f" ms  x{r['speedup_vs_eager']:.2f} | fwd+bwd {r['fwdbwd_ours_s'] * 1e3:7.1f} "
        f"{r['fwdbwd_eager_s'] * 1e3:7.1f} x{r['fwdbwd_speedup_vs_eager']:.2f}"
        f" | peak MB {r['ours_peak_MB']:.1f} "
        f"{r['eager_peak_MB']:.1f}{sd}",
        flush=True,
    )
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="*", default=[1024, 4096])
    ap.add_argument("--dims", type=int, nargs="+", default=[40, 64, 80, 160])
    ap.add_argument("--linear-lengths", type=int, nargs="*", default=[4096, 16384])
    ap.add_argument("--heads", type=int, default=8,
                    help="heads (fewer than threads: see csrc/cpu/attention.cpp, blas.h)")
    ap.add_argument("--batch", type=int, default=1, help="batch size of the softmax cases")
    ap.add_argument("--reps", type=int, default=8, help="repeats at L <= 1024")
    ap.add_argument("--reps-long", type=int, default=6, help="repeats at longer L")
    ap.add_argument("--with-sdpa-16k", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", default="benchmarks/results/ops_attention.json")
    args = ap.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        # Re-run with every allocation >= 64 KB mmapped (and unmapped when freed), so that the
        # peak-RSS measurement sees each call's buffers instead of reused heap memory.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"pydiff.ops backend: {ops.backend()}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}; times in ms (ours, SDPA, ratio)"
    )
    soft = [
        softmax_case(L, D, args.reps if L <= 1024 else args.reps_long, args.heads, args.batch)
        for L in args.lengths
        for D in args.dims
    ]
    lin = [linear_case(L, args.reps_long + 1, args.with_sdpa_16k, args.heads)
           for L in args.linear_lengths]
    out = {
        "benchmark": "ops_attention",
        "backend": ops.backend(),
        "cpu_capability": ops.cpu_capability(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "softmax": soft,
        "linear": lin,
    }
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
