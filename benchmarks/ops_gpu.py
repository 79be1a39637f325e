"""Benchmark pydiff's ops on a CUDA GPU against what a user would call instead.

- ceilings: a large ``copy_`` (bytes read + written per second) and a bfloat16 GEMM;
- ``lincomb`` (3 terms + noise, coefficients as device float64 tensors, as solvers keep them)
  against ``copy_`` and the eager torch sequence, float32 and bfloat16;
- attention against ``torch.nn.functional.scaled_dot_product_attention``: forward and
  forward+backward, float16 / bfloat16 / float32, unmasked and with a key-padding mask, for
  ``pydiff.ops.attention`` as dispatched (``impl="auto"``), pydiff's own CUDA kernel
  (``impl="kernel"``, timed on fewer repetitions: it is the slow exact path) and SDPA;
  ``return_lse=True`` with a gradient through the lse; float64 (our kernel vs SDPA's math
  backend), which decides the float64 rule of ``pydiff.ops.attention_backend``;
- linear attention against the eager formula at L = 16K, float32 and bfloat16.

Times are per call of calls issued back to back (CUDA events around groups of calls, the median
group), after warm-up; inputs are random (never zeros). Prints a table
and writes JSON with the GPU's name and the torch and CUDA versions.

Example:
    python benchmarks/ops_gpu.py --json benchmarks/results/ops_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import pydiff.ops as ops

DEV = "cuda"
DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
               torch.float64: "fp64"}


def cuda_time(fn, *args, budget_s: float = 0.25, max_reps: int = 100,
              min_reps: int = 3) -> float:
    """Seconds per call of ``fn(*args)``: calls issued back to back (as a network issues its
    layers, so host-side overhead overlaps the device's work) in 5 groups timed with CUDA
    events, the median group's time per call; after two warm-up calls, as many calls as fit the
    budget (at least min_reps, in fewer groups when that is all)."""
    fn(*args)
    fn(*args)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn(*args)
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    reps = int(max(min_reps, min(max_reps, budget_s / max(first, 1e-6))))
    groups = min(5, reps)
    per_group = max(1, reps // groups)
    times = []
    for _ in range(groups):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(per_group):
            fn(*args)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / per_group)
    return statistics.median(times)


def ceilings() -> dict:
    n = 1 << 28  # 1 GiB of float32 each way
    src = torch.randn(n, device=DEV)
    dst = torch.empty_like(src)
    t_copy = cuda_time(dst.copy_, src)
    a = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    t_mm = cuda_time(torch.matmul, a, b)
    return {"copy_bytes_per_s": 2 * n * 4 / t_copy, "bf16_gemm_flops": 2 * 8192**3 / t_mm}


FS = (0.9, 0.3, -0.2, 0.1)


def _lincomb(x, d1, d2, z, cs, buf):
    ops.lincomb([x, d1, d2], cs[:3], z, cs[3], out=buf)


def _eager_lincomb(x, d1, d2, z, buf):
    torch.mul(x, FS[0], out=buf)
    buf.add_(d1, alpha=FS[1])
    buf.add_(d2, alpha=FS[2])
    buf.add_(z, alpha=FS[3])


def bench_lincomb() -> list[dict]:
    rows = []
    for n in (1 << 24, 1 << 26):
        for dtype in (torch.float32, torch.bfloat16):
            x, d1, d2, z = (torch.randn(n, device=DEV).to(dtype) for _ in range(4))
            buf = torch.empty_like(x)
            cs = [torch.tensor(v, device=DEV, dtype=torch.float64) for v in FS]
            t_l = cuda_time(_lincomb, x, d1, d2, z, cs, buf)
            t_c = cuda_time(buf.copy_, x)
            t_e = cuda_time(_eager_lincomb, x, d1, d2, z, buf)
            el = x.element_size()
            rows.append({
                "elements": n, "dtype": DTYPE_NAMES[dtype], "lincomb_ms": t_l * 1e3,
                "copy_ms": t_c * 1e3, "eager_ms": t_e * 1e3,
                "lincomb_bytes_per_s": 5 * n * el / t_l, "copy_bytes_per_s": 2 * n * el / t_c,
                "lincomb_vs_copy_bandwidth": (5 * n * el / t_l) / (2 * n * el / t_c),
                "speedup_vs_eager": t_e / t_l,
            })
    return rows


def _qkv(B, H, Lq, Lk, D, dtype, grad=False):
    q = torch.randn(B, H, Lq, D, device=DEV, dtype=dtype, requires_grad=grad)
    k = torch.randn(B, H, Lk, D, device=DEV, dtype=dtype, requires_grad=grad)
    v = torch.randn(B, H, Lk, D, device=DEV, dtype=dtype, requires_grad=grad)
    return q, k, v


def _fwd_bwd(f, q, k, v, *rest):
    out = f(q, k, v, *rest)
    out = out[0] if isinstance(out, tuple) else out
    out.backward(torch.ones_like(out))


ATTN_SHAPES = [  # (B, H, Lq, Lk, D)
    (4, 16, 4096, 4096, 64),
    (2, 8, 4096, 4096, 128),
    (8, 8, 1024, 1024, 64),
    (2, 8, 4096, 77, 64),  # cross-attention to a short context
]


def _sdpa(q, k, v, mask=None):
    am = None if mask is None else mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=am)


def _auto(q, k, v, mask=None):
    return ops.attention(q, k, v, mask=mask)


def _kernel(q, k, v, mask=None):
    return ops.attention(q, k, v, mask=mask, impl="kernel")


def _no_grad(f, *args):
    with torch.no_grad():
        return f(*args)


def bench_attention(kernel_shapes: int) -> list[dict]:
    rows = []
    for si, (B, H, Lq, Lk, D) in enumerate(ATTN_SHAPES):
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            for masked in (False, True):
                g = torch.Generator(device=DEV).manual_seed(si)
                mask = torch.rand(B, Lk, device=DEV, generator=g) > 0.1 if masked else None
                flops = 4 * B * H * Lq * Lk * D
                fns = {"sdpa": _sdpa, "auto": _auto}
                if si < kernel_shapes:
                    fns["kernel"] = _kernel
                q, k, v = _qkv(B, H, Lq, Lk, D, dtype)
                row = {"B": B, "H": H, "Lq": Lq, "Lk": Lk, "D": D, "dtype": DTYPE_NAMES[dtype],
                       "masked": masked, "auto_backend": ops.attention_backend(q, k, v, mask)}
                for name, f in fns.items():
                    slow = dict(budget_s=0.1, min_reps=1) if name == "kernel" else {}
                    t = cuda_time(_no_grad, f, q, k, v, mask, **slow)
                    row[f"{name}_fwd_ms"] = t * 1e3
                    row[f"{name}_fwd_tflops"] = flops / t / 1e12
                qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
                for name, f in fns.items():
                    slow = dict(budget_s=0.1, min_reps=1) if name == "kernel" else {}
                    t = cuda_time(_fwd_bwd, f, qg, kg, vg, mask, **slow)
                    row[f"{name}_fwdbwd_ms"] = t * 1e3
                    row[f"{name}_fwdbwd_tflops"] = 3.5 * flops / t / 1e12
                row["auto_vs_sdpa_fwd"] = row["sdpa_fwd_ms"] / row["auto_fwd_ms"]
                row["auto_vs_sdpa_fwdbwd"] = row["sdpa_fwdbwd_ms"] / row["auto_fwdbwd_ms"]
                rows.append(row)
    return rows


def _lse_fwd_bwd(q, k, v, impl):
    out, lse = ops.attention(q, k, v, return_lse=True, impl=impl)
    (out.float().sum() + lse.sum()).backward()


def bench_attention_lse() -> list[dict]:
    """return_lse=True (sequence/patch parallelism): the dispatched path vs our kernel, with a
    gradient flowing through both outputs."""
    rows = []
    B, H, L, D = 2, 8, 2048, 64
    for dtype in (torch.bfloat16, torch.float32):
        q, k, v = _qkv(B, H, L, L, D, dtype, grad=True)
        row = {"B": B, "H": H, "L": L, "D": D, "dtype": DTYPE_NAMES[dtype],
               "auto_backend": ops.attention_backend(q, k, v, return_lse=True)}
        row["auto_fwdbwd_ms"] = cuda_time(_lse_fwd_bwd, q, k, v, "auto") * 1e3
        row["kernel_fwdbwd_ms"] = cuda_time(_lse_fwd_bwd, q, k, v, "kernel", budget_s=0.1,
                                            min_reps=1) * 1e3
        rows.append(row)
    return rows


def bench_attention_fp64() -> list[dict]:
    rows = []
    for B, H, L, D in ((1, 8, 1024, 64), (2, 8, 4096, 64)):
        q, k, v = _qkv(B, H, L, L, D, torch.float64)
        t_k = cuda_time(_no_grad, _kernel, q, k, v, budget_s=0.1, min_reps=1)
        t_s = cuda_time(_no_grad, _sdpa, q, k, v, budget_s=0.1, min_reps=1)
        rows.append({"B": B, "H": H, "L": L, "D": D, "kernel_fwd_ms": t_k * 1e3,
                     "sdpa_math_fwd_ms": t_s * 1e3, "sdpa_score_bytes": B * H * L * L * 8})
    return rows


def _linear_eager(q, k, v, eps=1e-6):
    kv = k.transpose(-1, -2) @ v
    den = q @ k.sum(-2, keepdim=True).transpose(-1, -2) + eps
    return (q @ kv) / den


LINEAR_PATHS = [("kernel", "gemm"), ("gemm", "gemm"), ("kernel", "fused"), ("gemm", "fused")]


def bench_linear_attention() -> list[dict]:
    """Each implementation of the two steps (PYDIFF_LINEAR_KV: K^T V by our reduction kernel or
    by cuBLAS; PYDIFF_LINEAR_APPLY: q [K^T V | K^T 1] by cuBLAS + a normalization kernel, or
    fused on tensor cores for half types) against the eager formula."""
    rows = []
    B, H, L, D = 2, 8, 16384, 64
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        q, k, v = (t.abs() for t in _qkv(B, H, L, L, D, dtype))
        q, k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
        want = _linear_eager(q.double(), k.double(), v.double())
        t_e = cuda_time(_no_grad, _linear_eager, q, k, v)
        qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
        t_eb = cuda_time(_fwd_bwd, _linear_eager, qg, kg, vg)
        for kv_path, apply_path in LINEAR_PATHS:
            if apply_path == "fused" and dtype == torch.float32:
                continue  # tensor-core apply is for half types
            os.environ["PYDIFF_LINEAR_KV"], os.environ["PYDIFF_LINEAR_APPLY"] = kv_path, apply_path
            rel = ((ops.linear_attention(q, k, v).double() - want).norm() / want.norm()).item()
            t_o = cuda_time(_no_grad, ops.linear_attention, q, k, v)
            t_ob = cuda_time(_fwd_bwd, ops.linear_attention, qg, kg, vg)
            moved = 4 * q.numel() * q.element_size()  # q, k, v read once, out written once
            rows.append({
                "B": B, "H": H, "L": L, "D": D, "dtype": DTYPE_NAMES[dtype], "kv": kv_path,
                "apply": apply_path, "ours_fwd_ms": t_o * 1e3, "eager_fwd_ms": t_e * 1e3,
                "speedup_fwd": t_e / t_o, "ours_fwd_bytes_per_s": moved / t_o,
                "ours_fwdbwd_ms": t_ob * 1e3, "eager_fwdbwd_ms": t_eb * 1e3,
                "speedup_fwdbwd": t_eb / t_ob, "rel_error_vs_fp64": rel,
            })
        os.environ.pop("PYDIFF_LINEAR_KV")
        os.environ.pop("PYDIFF_LINEAR_APPLY")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default="benchmarks/results/ops_gpu.json")
    ap.add_argument("--kernel-shapes", type=int, default=len(ATTN_SHAPES),
                    help="time our own attention kernel on the first N shapes only")
    ap.add_argument("--skip", default="", help="comma list of sections to skip")
    ap.add_argument("--markdown", metavar="JSON",
                    help="print the tables of an earlier run's JSON as markdown (no GPU needed)")
    args = ap.parse_args()
    if args.markdown:
        with open(args.markdown) as f:
            print_markdown(json.load(f))
        return
    if not torch.cuda.is_available():
        raise SystemExit("ops_gpu.py: no CUDA device")
    skip = set(filter(None, args.skip.split(",")))
    props = torch.cuda.get_device_properties(0)
    res = {
        "benchmark": "ops_gpu", "gpu": props.name,
        "capability": f"{props.major}.{props.minor}", "torch": torch.__version__,
        "cuda": torch.version.cuda, "backend": ops.backend(), "python": platform.python_version(),
    }
    sections = [("ceilings", ceilings), ("lincomb", bench_lincomb),
                ("linear_attention", bench_linear_attention),
                ("attention", lambda: bench_attention(args.kernel_shapes)),
                ("attention_lse", bench_attention_lse), ("attention_fp64", bench_attention_fp64)]
    for name, fn in sections:
        if name in skip:
            continue
        t0 = time.perf_counter()
        try:
            res[name] = fn()
        except Exception as e:  # keep the other sections' figures; the error is reported
            res[name] = {"error": f"{type(e).__name__}: {e}"}
        print(f"[{name}: {time.perf_counter() - t0:.1f} s]", flush=True)
        torch.cuda.empty_cache()
    with open(args.json, "w") as f:
        json.dump(res, f, indent=1)
    print_tables(res)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


def print_tables(res: dict) -> None:
    print(f"\n{res['gpu']} (sm {res['capability']}), torch {res['torch']}, CUDA {res['cuda']}")
    for name in ("ceilings", "lincomb", "linear_attention", "attention", "attention_lse",
                 "attention_fp64"):
        rows = res.get(name)
        if rows is None:
            continue
        print(f"\n== {name}")
        if isinstance(rows, dict):
            print("  " + "  ".join(f"{k}={_fmt(v)}" for k, v in rows.items()))
            continue
        cols = list(rows[0])
        print(" | ".join(cols))
        for r in rows:
            print(" | ".join(_fmt(r.get(c)) for c in cols))


MARKDOWN_COLUMNS = {
    "lincomb": [("elements", "elements"), ("dtype", "dtype"), ("lincomb_ms", "lincomb ms"),
                ("copy_ms", "copy_ ms"), ("eager_ms", "eager ms"),
                ("lincomb_bytes_per_s", "lincomb B/s"),
                ("lincomb_vs_copy_bandwidth", "bandwidth / copy_'s"),
                ("speedup_vs_eager", "vs eager")],
    "linear_attention": [("dtype", "dtype"), ("kv", "K^T V"), ("apply", "apply"),
                         ("ours_fwd_ms", "fwd ms"), ("eager_fwd_ms", "eager fwd ms"),
                         ("speedup_fwd", "fwd vs eager"), ("ours_fwd_bytes_per_s", "fwd B/s"),
                         ("ours_fwdbwd_ms", "fwd+bwd ms"), ("eager_fwdbwd_ms", "eager fwd+bwd ms"),
                         ("speedup_fwdbwd", "fwd+bwd vs eager"),
                         ("rel_error_vs_fp64", "rel. error")],
    "attention": [("B", "B"), ("H", "H"), ("Lq", "Lq"), ("Lk", "Lk"), ("D", "D"),
                  ("dtype", "dtype"), ("masked", "mask"), ("sdpa_fwd_ms", "SDPA fwd ms"),
                  ("auto_fwd_ms", "dispatched fwd ms"), ("kernel_fwd_ms", "kernel fwd ms"),
                  ("sdpa_fwd_tflops", "SDPA TFLOP/s"), ("kernel_fwd_tflops", "kernel TFLOP/s"),
                  ("sdpa_fwdbwd_ms", "SDPA f+b ms"), ("auto_fwdbwd_ms", "dispatched f+b ms"),
                  ("kernel_fwdbwd_ms", "kernel f+b ms"), ("auto_vs_sdpa_fwd", "disp./SDPA fwd"),
                  ("auto_vs_sdpa_fwdbwd", "disp./SDPA f+b")],
    "attention_lse": [("B", "B"), ("H", "H"), ("L", "L"), ("D", "D"), ("dtype", "dtype"),
                      ("auto_backend", "dispatched to"), ("auto_fwdbwd_ms", "dispatched f+b ms"),
                      ("kernel_fwdbwd_ms", "kernel f+b ms")],
    "attention_fp64": [("B", "B"), ("H", "H"), ("L", "L"), ("D", "D"),
                       ("kernel_fwd_ms", "kernel fwd ms"), ("sdpa_math_fwd_ms", "SDPA math fwd ms"),
                       ("sdpa_score_bytes", "score bytes")],
}


def print_markdown(res: dict) -> None:
    print(f"{res['gpu']} (sm {res['capability']}), torch {res['torch']}, CUDA {res['cuda']}")
    c = res.get("ceilings", {})
    if c and "error" not in c:
        print(f"\nceilings: copy_ {c['copy_bytes_per_s'] / 1e12:.2f} TB/s (read + write), "
              f"bf16 GEMM {c['bf16_gemm_flops'] / 1e12:.0f} TFLOP/s")
    for name, cols in MARKDOWN_COLUMNS.items():
        rows = res.get(name)
        if not isinstance(rows, list):
            continue
        print(f"\n{name}:\n")
        print("| " + " | ".join(h for _, h in cols) + " |")
        print("|" + "---|" * len(cols))
        for r in rows:
            print("| " + " | ".join(_md(r.get(k)) for k, _ in cols) + " |")


def _md(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if abs(v) >= 1e9:
            return f"{v / 1e12:.2f} T"
        return f"{v:.3g}"
    return "" if v is None else str(v)


if __name__ == "__main__":
    main()
