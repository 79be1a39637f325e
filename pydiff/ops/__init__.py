"""Python face of pydiff's kernels: argument handling, dispatch, pure-torch fallback.

Every op here checks and normalizes its arguments once, then runs either the compiled
extension ``pydiff._C`` (C++/CUDA kernels registered as ``torch.ops.pydiff.*``) or the
pure-torch reference in :mod:`pydiff.ops._reference`, which defines the semantics.
``backend()`` tells which one is in use; ``PYDIFF_NO_EXT=1`` forces the reference.

Example:
    >>> import torch, pydiff.ops as ops
    >>> x, eps = torch.zeros(2, 3), torch.ones(2, 3)
    >>> ops.lincomb([x, eps], [1.0, torch.tensor([0.5, 2.0])]).tolist()
    [[0.5, 0.5, 0.5], [2.0, 2.0, 2.0]]
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _reference, _sdpa

__all__ = [
    "attention",
    "attention_backend",
    "backend",
    "cpu_capability",
    "empty_cache",
    "halo_pack",
    "halo_unpack",
    "lincomb",
    "lincomb_multi",
    "linear_attention",
]

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _load_extension():
    """The compiled module, or None (not built, or PYDIFF_NO_EXT=1)."""
    if os.environ.get("PYDIFF_NO_EXT", "") not in ("", "0"):
        return None
    try:
        from pydiff import _C  # loading it registers torch.ops.pydiff.*
    except ImportError:
        return None
    from . import _register  # fake kernels and autograd for the compiled ops

    _register.register()
    return _C


_C = _load_extension()
_EXT = _C is not None
# Eager fast path (C++ argument parsing, see csrc/python.cpp): returns None when this module's
# Python path has to handle the call (autograd, modes, odd arguments, error messages).
_lincomb_fast = getattr(_C, "lincomb_fast", None)
_lincomb_multi_fast = getattr(_C, "lincomb_multi_fast", None)
# pydiff.solvers.combine's eager fast path for Linear terms (the same lincomb_multi call)
_fold_fast = getattr(_C, "fold_fast", None)


def _kernel_table() -> dict[tuple[str, str], bool]:
    """{(op, device type): has a compiled kernel}, built once at import: a CPU-only build has no
    CUDA kernels (CUDA tensors then run the reference). Looked up, never queried, per call:
    torch.compile cannot trace the dispatcher query, and a first call under
    ``torch.compile(fullgraph=True)`` must not be the one that asks."""
    table: dict[tuple[str, str], bool] = {}
    if not _EXT:
        return table
    for op in ("pydiff::lincomb", "pydiff::lincomb_multi", "pydiff::attention",
               "pydiff::linear_attention", "pydiff::halo_pack", "pydiff::halo_unpack"):
        for device_type, dispatch_key in (("cpu", "CPU"), ("cuda", "CUDA")):
            table[op, device_type] = torch._C._dispatch_has_kernel_for_dispatch_key(
                op, dispatch_key
            )
        table[op, "meta"] = True  # the fake kernels
    return table


_KERNELS = _kernel_table()


def _has_kernel(device: torch.device, op: str = "pydiff::lincomb") -> bool:
    """Whether the compiled extension is in use and has a kernel for this op on this device
    type (``_EXT`` read per call: tests switch it off to run the reference)."""
    return _EXT and _KERNELS.get((op, device.type), False)


def backend() -> str:
    """``"extension"`` when the compiled ``pydiff._C`` ops are in use, else ``"reference"``.

    Example:
        >>> import pydiff.ops
        >>> pydiff.ops.backend() in ("extension", "reference")
        True
    """
    return "extension" if _EXT else "reference"


def cpu_capability() -> str | None:
    """Instruction set the CPU kernels were compiled for: ``"AVX512"``, ``"AVX2"`` or
    ``"DEFAULT"`` (scalar code, vectorized only by the compiler), or None without the extension.

    ``pip install`` picks the widest set the build machine has; ``PYDIFF_CPU_ISA`` overrides it.

    Example:
        >>> import pydiff.ops
        >>> pydiff.ops.cpu_capability() in ("AVX512", "AVX2", "DEFAULT", None)
        True
    """
    return getattr(_C, "cpu_capability", None) if _EXT else None


def empty_cache() -> int:
    """Release the CPU blocks kept for reuse by ``lincomb``'s results; returns the bytes
    released (0 without the extension).

    A sampler frees one result of the state's size per step and allocates the next: the
    compiled CPU kernels keep freed results (up to ``PYDIFF_CPU_CACHE_MB``, default 256 MiB;
    ``0`` turns the cache off) and hand them to the next step, so a step writes memory that is
    already mapped instead of page-faulting a fresh block in. Call this after a large run to
    give that memory back, as ``torch.cuda.empty_cache()`` does on the GPU.

    Example:
        >>> import pydiff.ops
        >>> pydiff.ops.empty_cache() >= 0
        True
    """
    clear = getattr(_C, "output_cache_clear", None)
    return int(clear()) if clear is not None else 0


# --------------------------------------------------------------------------------------------
# lincomb


def _split_coeff(c: object, x: Tensor, name: str) -> tuple[Tensor | None, float]:
    """A coefficient -> (tensor broadcastable to x or None, float scale)."""
    if isinstance(c, Tensor):
        if not (c.is_floating_point() or c.dtype in (torch.int64, torch.int32, torch.bool)):
            raise TypeError(f"lincomb: {name} has dtype {c.dtype}; expected a real number tensor")
        if not c.is_floating_point():
            c = c.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
        elif c.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"lincomb: {name} has dtype {c.dtype}; expected a real float dtype")
        if c.dim() == 1 and x.dim() > 1 and c.shape[0] == x.shape[0]:
            # [B] means one coefficient per sample
            c = c.reshape((c.shape[0],) + (1,) * (x.dim() - 1))
        elif c.dim() > x.dim() or any(
            cs != 1 and cs != xs for cs, xs in zip(reversed(c.shape), reversed(x.shape))
        ):
            raise ValueError(
                f"lincomb: {name} has shape {tuple(c.shape)}; expected a scalar, a [B] tensor "
                f"with B={x.shape[0] if x.dim() else 1}, or a tensor broadcastable to the term "
                f"shape {tuple(x.shape)}"
            )
        if c.device != x.device and not (c.dim() == 0 and c.device.type == "cpu"):
            raise ValueError(f"lincomb: {name} is on {c.device}, the terms on {x.device}")
        return c, 1.0
    if isinstance(c, numbers.Real) and not isinstance(c, bool):
        return None, float(c)
    raise TypeError(f"lincomb: {name} is {type(c).__name__}; expected a Python number or a tensor")


def _check_terms(terms: Sequence[Tensor], op: str, last_is_noise: bool = False) -> None:
    x = terms[0]
    for i, t in enumerate(terms):
        name = "noise" if last_is_noise and i == len(terms) - 1 else f"terms[{i}]"
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} is {type(t).__name__}; expected a tensor")
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(
                f"{op}: {name} has dtype {t.dtype}; expected float32, float64, float16 or "
                "bfloat16 (complex states travel as view_as_real)"
            )
        if t.shape != x.shape:
            raise ValueError(
                f"{op}: {name} has shape {tuple(t.shape)}; expected {tuple(x.shape)} "
                "(the shape of terms[0])"
            )
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device}, terms[0] on {x.device}")


def lincomb(
    terms: Sequence[Tensor],
    coeffs: Sequence[float | Tensor],
    noise: Tensor | None = None,
    noise_coeff: float | Tensor | None = None,
    *,
    out: Tensor | None = None,
) -> Tensor:
    """Fused linear combination ``sum_k coeffs[k] * terms[k] + noise_coeff * noise``.

    One pass over memory for a whole solver stage. Terms share one shape (their dtypes may
    differ: a float32 state with half-precision model outputs); the result has terms[0]'s dtype
    (or out's) and is accumulated in float32 (float64 for float64 results).

    Each coefficient is a Python number, a 0-dim tensor, a ``[B]`` tensor (one value per
    sample, B = terms[0].shape[0]) or a tensor broadcastable to the term shape (per position).
    Coefficient tensors may be float64 (solver tables); they are cast to the accumulation dtype.
    ``out`` may be terms[0] itself (in-place state update). Differentiable in terms, noise and
    coefficient tensors.

    Example:
        >>> import torch
        >>> x, d = torch.ones(4, 2), torch.full((4, 2), 2.0)
        >>> h = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
        >>> lincomb([x, d], [1.0, h], out=x)[:, 0].tolist()  # x += h * d, in place
        [1.2000000476837158, 1.399999976158142, 1.600000023841858, 1.7999999523162842]
    """
    if _EXT and _lincomb_fast is not None and not torch.compiler.is_compiling():
        res = _lincomb_fast(terms, coeffs, noise, noise_coeff, out)
        if res is not None:
            return res
    if isinstance(terms, Tensor) or len(terms) == 0:
        raise TypeError("lincomb: terms must be a non-empty sequence of tensors")
    if len(coeffs) != len(terms):
        raise ValueError(f"lincomb: got {len(terms)} terms but {len(coeffs)} coeffs")
    terms = list(terms)
    coeffs = list(coeffs)
    if noise is not None:
        if noise_coeff is None:
            raise ValueError("lincomb: noise was given without noise_coeff")
        terms.append(noise)
        coeffs.append(noise_coeff)
    elif noise_coeff is not None:
        raise ValueError("lincomb: noise_coeff was given without noise")
    x = terms[0]
    _check_terms(terms, "lincomb", noise is not None)
    tens: list[Tensor] = []
    index: list[int] = []
    scales: list[float] = []
    for i, c in enumerate(coeffs):
        name = f"coeffs[{i}]" if i < len(coeffs) - (noise is not None) else "noise_coeff"
        ct, s = _split_coeff(c, x, name)
        index.append(-1 if ct is None else len(tens))
        if ct is not None:
            tens.append(ct)
        scales.append(s)
    if out is not None:
        if not isinstance(out, Tensor) or out.shape != x.shape or out.dtype not in _FLOAT_DTYPES:
            raise ValueError(
                f"lincomb: out must be a float tensor of shape {tuple(x.shape)}; got "
                f"{getattr(out, 'dtype', type(out).__name__)} {tuple(getattr(out, 'shape', ()))}"
            )
        if out.device != x.device:
            raise ValueError(f"lincomb: out is on {out.device}, the terms on {x.device}")

    if _has_kernel(x.device):
        if out is None:
            return torch.ops.pydiff.lincomb.default(terms, tens, index, scales)
        if torch.is_grad_enabled() and (
            any(t.requires_grad for t in terms) or any(c.requires_grad for c in tens)
        ):
            # The out= op is a mutation without a derivative: go through the functional op
            # and let copy_ record the in-place update for autograd.
            return out.copy_(torch.ops.pydiff.lincomb.default(terms, tens, index, scales))
        torch.ops.pydiff.lincomb_out.default(terms, tens, index, scales, out)
        return out
    res = _reference.lincomb(terms, tens, index, scales, out.dtype if out is not None else None)
    if out is None:
        return res
    return out.copy_(res)


_MAX_OUTPUTS = 4  # kMaxOutputs and kMaxEntries in csrc/lincomb_plan.h
_MAX_ENTRIES = 32


def lincomb_multi(
    terms: Sequence[Tensor],
    rows: Sequence[Sequence[float | Tensor | None]],
    keep: Sequence[bool] | None = None,
) -> list[Tensor]:
    """Several fused combinations of the same terms, in one pass over memory.

    Output ``j`` is ``sum_k rows[j][k] * S[k]``, where ``S`` is the terms followed by the outputs
    before ``j`` (``rows[j]`` has at most ``len(terms) + j`` entries; ``None`` adds nothing).
    Every term is read from memory once and every kept output written once; an output that a
    later one reads is summed in registers (or L1), never re-read. Returns the outputs with
    ``keep[j]`` (default: all), each with terms[0]'s shape and dtype, accumulated as in
    :func:`lincomb`; coefficients as in :func:`lincomb`. At most 4 outputs and 32 entries.
    Differentiable (through the pure-torch reference when something requires grad).

    This is how a solver step folds the model's parameterization in: with an eps network,
    ``x0 = (x - sigma eps) / alpha`` (kept for a multistep history) and the next state, from
    one read of ``x``, ``eps`` and the stored ``x0_prev``.

    Example:
        >>> import torch
        >>> x, eps, x0_prev = torch.ones(2, 3), torch.full((2, 3), 0.5), torch.zeros(2, 3)
        >>> x0, x_next = lincomb_multi([x, eps, x0_prev],
        ...                            [[2.0, -1.0],              # x0 = 2 x - eps
        ...                             [0.5, None, 0.1, 0.25]])  # 0.5 x + 0.1 x0_prev + x0 / 4
        >>> x0[0, 0].item(), x_next[0, 0].item()
        (1.5, 0.875)
    """
    if _EXT and _lincomb_multi_fast is not None and not torch.compiler.is_compiling():
        res = _lincomb_multi_fast(terms, rows, keep)
        if res is not None:
            return res
    if isinstance(terms, Tensor) or len(terms) == 0:
        raise TypeError("lincomb_multi: terms must be a non-empty sequence of tensors")
    terms = list(terms)
    _check_terms(terms, "lincomb_multi")
    x, n_terms = terms[0], len(terms)
    if isinstance(rows, Tensor) or not 1 <= len(rows) <= _MAX_OUTPUTS:
        raise ValueError(f"lincomb_multi: rows must be a sequence of 1 to {_MAX_OUTPUTS} "
                         "coefficient rows, one per output")
    keep = [True] * len(rows) if keep is None else [bool(k) for k in keep]
    if len(keep) != len(rows):
        raise ValueError(f"lincomb_multi: keep has {len(keep)} entries for {len(rows)} rows")
    tens: list[Tensor] = []
    index: list[int] = []
    scales: list[float] = []
    sources: list[int] = []
    counts: list[int] = []
    for j, row in enumerate(rows):
        if len(row) > n_terms + j:
            raise ValueError(
                f"lincomb_multi: rows[{j}] has {len(row)} entries; output {j} combines at most "
                f"{n_terms + j} sources (the {n_terms} terms and the {j} outputs before it)")
        count = 0
        for k, c in enumerate(row):
            if c is None:
                continue
            ct, s = _split_coeff(c, x, f"rows[{j}][{k}]")
            index.append(-1 if ct is None else len(tens))
            if ct is not None:
                tens.append(ct)
            scales.append(s)
            sources.append(k)
            count += 1
        counts.append(count)
    if len(sources) > _MAX_ENTRIES:
        raise ValueError(f"lincomb_multi: {len(sources)} coefficients; at most {_MAX_ENTRIES}")
    args = (terms, tens, index, scales, sources, counts, [int(k) for k in keep])
    needs_grad = torch.is_grad_enabled() and (
        any(t.requires_grad for t in terms) or any(c.requires_grad for c in tens))
    if not needs_grad and _has_kernel(x.device, "pydiff::lincomb_multi"):
        return list(torch.ops.pydiff.lincomb_multi.default(*args))
    return _reference.lincomb_multi(*args)


# --------------------------------------------------------------------------------------------
# attention


ATTENTION_IMPLS = ("auto", "kernel", "sdpa")


def _default_attention_impl() -> str:
    impl = os.environ.get("PYDIFF_ATTENTION", "auto") or "auto"
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"PYDIFF_ATTENTION={impl!r}: expected one of {ATTENTION_IMPLS}")
    return impl


# Read once: a per-call environment lookup would be traced (and guarded on) by torch.compile.
_ATTENTION_IMPL = _default_attention_impl()


def attention_backend(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, *, return_lse: bool = False
) -> str:
    """Which implementation ``attention(..., impl="auto")`` runs for these inputs:
    ``"kernel"`` (pydiff's own op: the compiled kernel, or the reference without one) or
    ``"sdpa"`` (torch's ``scaled_dot_product_attention`` backends, with pydiff's semantics).

    The rules follow the measurements in BENCHMARKS.md ("Kernels", "Kernels on a GPU"):

    - CUDA: SDPA (flash / memory-efficient / cuDNN) for float16, bfloat16 and float32, masked
      or not, also with ``return_lse`` (head dims up to 256): our kernel is far slower there.
      float64, which no fused SDPA backend takes, goes to SDPA's math backend too while its
      ``[B, H, Lq, Lk]`` scores take at most 2 GiB (faster there), else to our O(L)-memory
      kernel, which also serves float64 ``return_lse``.
    - CPU: SDPA for inference. float32 training runs our kernel (forward+backward measured
      faster), except for what only SDPA does: broadcast batch/head dims, autocast, torch.func
      transforms, and traced graphs under torch.compile. Key-padding masks and ``return_lse``
      run our kernel (SDPA's CPU path returns NaN for fully masked queries and no lse).

    Example:
        >>> import torch
        >>> q = torch.randn(1, 2, 5, 8)
        >>> attention_backend(q, q, q)
        'sdpa'
        >>> attention_backend(q, q, q, return_lse=True)
        'kernel'
    """
    if not (q.dim() == k.dim() == v.dim() == 4):
        return "kernel"  # whose argument check says what is wrong
    if q.device.type == "cuda":
        if q.dtype == torch.float64:
            return "sdpa" if not return_lse and _sdpa.math_fits(q, k) else "kernel"
        if return_lse and not _sdpa.supports_lse(q, k, v):
            return "kernel"
        return "sdpa"
    if mask is not None or return_lse:
        return "kernel"
    return "kernel" if _kernel_trains_faster(q, k, v) else "sdpa"


def _kernel_trains_faster(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """The measured CPU case where the compiled kernel beats SDPA (see attention_backend)."""
    if torch.compiler.is_compiling():  # not measured under torch.compile: traced graphs keep SDPA
        return False
    return (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
            and q.device.type == "cpu" and q.dtype == torch.float32
            and _has_kernel(q.device, "pydiff::attention")
            # what SDPA does and the kernel does not: broadcast batch/head dims, autocast to
            # bfloat16, functorch transforms (vmap/grad). Double backward neither does on the
            # CPU (SDPA's flash backward raises; the kernel's too, see pydiff.ops._register)
            and q.shape[:2] == k.shape[:2] == v.shape[:2]
            and not torch.is_autocast_enabled("cpu")
            and not torch._C._are_functorch_transforms_active())


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float | None = None,
    mask: Tensor | None = None,
    *,
    return_lse: bool = False,
    impl: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Softmax attention ``softmax(q k^T * scale) v`` over ``[B, H, L, D]`` tensors.

    ``k``/``v`` may have another length than ``q`` (cross-attention). ``mask`` is a bool
    key-padding mask ``[B, Lk]`` (True = attend). ``scale`` defaults to ``1/sqrt(D)``. A query
    whose keys are all masked returns 0. Differentiable in q, k, v.

    With ``return_lse=True`` it also returns the log-sum-exp of each query's scaled scores,
    ``[B, H, Lq]`` (float32; float64 for float64 inputs; ``-inf`` where all keys are masked),
    differentiable too. Attention over keys split in parts (sequence or patch parallelism)
    is then merged exactly: ``out = sum_i exp(lse_i - lse) out_i`` with ``lse = logsumexp_i
    lse_i``.

    ``impl`` picks the implementation: ``"auto"`` (the default, or the ``PYDIFF_ATTENTION``
    environment variable) takes the faster one measured for these inputs
    (:func:`attention_backend` says which); ``"kernel"`` forces pydiff's own op (the compiled
    kernel, or the pure-torch reference without one) and ``"sdpa"`` torch's SDPA backends.
    All give the semantics above.

    Example:
        >>> import torch
        >>> q = torch.randn(1, 2, 5, 8); kv = torch.randn(1, 2, 6, 8)
        >>> attention(q, kv, kv).shape
        torch.Size([1, 2, 5, 8])
        >>> (o1, l1), (o2, l2) = (attention(q, p, p, return_lse=True) for p in kv.split(3, 2))
        >>> lse = torch.logaddexp(l1, l2)
        >>> merged = (l1 - lse).exp()[..., None] * o1 + (l2 - lse).exp()[..., None] * o2
        >>> torch.allclose(merged, attention(q, kv, kv), atol=1e-6)
        True
    """
    impl = _ATTENTION_IMPL if impl is None else impl
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention: impl={impl!r}; expected one of {ATTENTION_IMPLS}")
    if impl == "auto":
        impl = attention_backend(q, k, v, mask, return_lse=return_lse)
    if impl == "sdpa" and mask is None and not return_lse:
        # SDPA checks its own arguments (and broadcasts batch/head dims, which it alone does)
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    _reference.check_attention(q, k, v, mask)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] > 0 else 1.0
    if impl == "sdpa":
        if return_lse and not _sdpa.supports_lse(q, k, v):
            raise ValueError(
                "attention: impl='sdpa' with return_lse=True needs CUDA tensors of float16, "
                f"bfloat16 or float32 with head dims up to {_sdpa.LSE_MAX_HEAD_DIM}; got "
                f"{q.dtype} on {q.device} with D={q.shape[-1]}, Dv={v.shape[-1]}"
            )
        return _sdpa.attention(q, k, v, float(scale), mask, return_lse)
    if _has_kernel(q.device, "pydiff::attention"):
        out, lse = torch.ops.pydiff.attention.default(q, k, v, float(scale), mask)
    else:
        out, lse = _reference.attention_with_lse(q, k, v, float(scale), mask)
    return (out, lse) if return_lse else out


def linear_attention(q: Tensor, k: Tensor, v: Tensor, eps: float = 1e-6) -> Tensor:
    """Normalized non-causal linear attention (LinFusion): ``q (k^T v) / (q . sum k + eps)``.

    q and k must already be non-negative features (the module applies its feature map, e.g.
    ``elu + 1``). Shapes ``[B, H, L, D]``; Lq may differ from Lk. O(L * D * Dv) time and memory.

    Example:
        >>> import torch
        >>> q = torch.rand(1, 2, 16, 8); k = torch.rand(1, 2, 16, 8); v = torch.randn(1, 2, 16, 4)
        >>> linear_attention(q, k, v).shape
        torch.Size([1, 2, 16, 4])
    """
    _reference.check_linear_attention(q, k, v)
    if _has_kernel(q.device, "pydiff::linear_attention"):
        return torch.ops.pydiff.linear_attention.default(q, k, v, float(eps))
    return _reference.linear_attention(q, k, v, float(eps))


# --------------------------------------------------------------------------------------------
# halo exchange (patch parallelism)


def _halo_rows_list(rows: int | Sequence[int], n: int) -> list[int]:
    if isinstance(rows, numbers.Integral):
        return [int(rows)] * n
    return [int(r) for r in rows]


def _halo_side(side: str, op: str) -> bool:
    if side not in ("top", "bottom"):
        raise ValueError(f"{op}: side={side!r}; expected 'top' or 'bottom'")
    return side == "top"


def halo_pack(maps: Sequence[Tensor], rows: int | Sequence[int], side: str) -> Tensor:
    """The halo rows of several feature maps in one contiguous buffer (one message per neighbour).

    Takes the first (``side="top"``) or last (``"bottom"``) ``rows`` rows of each
    ``[B, C, H, W]`` map (``rows``: one count for all maps or one per map; 0 is allowed) and
    returns them as one 1-D tensor in the maps' dtype, map after map, each slab
    ``[B, C, rows, W]`` row-major. Maps may be strided (slices of larger tensors); they share
    one dtype and device. Not differentiable (an inference-time exchange).

    Example:
        >>> import torch
        >>> a, b = torch.arange(8.).view(1, 1, 4, 2), torch.arange(3.).view(1, 1, 3, 1)
        >>> halo_pack([a, b], [1, 2], "bottom").tolist()
        [6.0, 7.0, 1.0, 2.0]
    """
    top = _halo_side(side, "halo_pack")
    rows = _halo_rows_list(rows, len(maps) if not isinstance(maps, Tensor) else 1)
    _reference.check_halo("halo_pack", maps, rows)
    if _has_kernel(maps[0].device, "pydiff::halo_pack"):
        return torch.ops.pydiff.halo_pack.default(list(maps), rows, top)
    return _reference.halo_pack(maps, rows, top)


def halo_unpack(
    buffer: Tensor, dests: Sequence[Tensor], rows: int | Sequence[int], side: str
) -> None:
    """Scatter a :func:`halo_pack` buffer into the first (``"top"``) or last (``"bottom"``)
    ``rows`` rows of each ``[B, C, H, W]`` destination, in place (e.g. the halo rows of a band
    padded for its neighbours' rows). Not differentiable.

    Example:
        >>> import torch
        >>> band = torch.zeros(1, 1, 4, 2)        # 2 own rows + 1 halo row above and below
        >>> halo_unpack(torch.tensor([5.0, 6.0]), [band], 1, "top")
        >>> band[0, 0, 0].tolist()
        [5.0, 6.0]
    """
    top = _halo_side(side, "halo_unpack")
    rows = _halo_rows_list(rows, len(dests) if not isinstance(dests, Tensor) else 1)
    total = _reference.check_halo("halo_unpack", dests, rows, what="dests")
    if not isinstance(buffer, Tensor) or buffer.dim() != 1 or buffer.numel() != total:
        got = tuple(buffer.shape) if isinstance(buffer, Tensor) else type(buffer).__name__
        raise ValueError(f"halo_unpack: buffer is {got}; expected a 1-D tensor of {total} "
                         "elements (the destinations' halo rows)")
    if buffer.dtype != dests[0].dtype or buffer.device != dests[0].device:
        raise ValueError(f"halo_unpack: buffer is {buffer.dtype} on {buffer.device}, dests "
                         f"{dests[0].dtype} on {dests[0].device}")
    if _has_kernel(buffer.device, "pydiff::halo_unpack"):
        torch.ops.pydiff.halo_unpack.default(buffer.contiguous(), list(dests), rows, top)
    else:
        _reference.halo_unpack(buffer, dests, rows, top)
