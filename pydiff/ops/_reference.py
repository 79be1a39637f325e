"""Pure-torch reference implementations of pydiff's ops.

These define the semantics: the compiled kernels in ``pydiff._C`` must agree with them (tests
compare the two), and they run wherever the extension is missing or ``PYDIFF_NO_EXT=1``. They
take the *normalized* arguments of the op schemas (see ``csrc/ops.cpp``), the same ones the
compiled ops get, so the argument handling in ``pydiff.ops`` is shared by both backends.

Example:
    >>> import torch
    >>> from pydiff.ops import _reference as ref
    >>> x = torch.ones(2, 3)
    >>> ref.lincomb([x, x], [torch.tensor(2.0)], [-1, 0], [0.5, 1.0])[0, 0].item()
    2.5
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the kernels: float64 for float64, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def lincomb(
    terms: Sequence[Tensor],
    coeffs: Sequence[Tensor],
    coeff_index: Sequence[int],
    scales: Sequence[float],
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """``sum_k scales[k] * coeffs[coeff_index[k]] * terms[k]``, accumulated in float32 (float64
    for float64 results).

    ``coeff_index[k] == -1`` means the coefficient of term k is the number ``scales[k]``; the
    coefficient tensors broadcast to the term shape. The result has terms[0]'s shape and
    ``out_dtype`` (default terms[0].dtype), contiguous.
    """
    dtype = out_dtype or terms[0].dtype
    acc = acc_dtype(dtype)
    res = None
    for t, i, s in zip(terms, coeff_index, scales):
        c = coeffs[i] if i >= 0 else None
        if c is None:
            part = t.to(acc) * s
        else:
            # The kernel multiplies scale*coeff first (in acc), then the term: keep that order
            # so both round the same way.
            part = (c.to(device=t.device, dtype=acc) * s) * t.to(acc)
        res = part if res is None else res + part
    return res.to(dtype).contiguous()


def lincomb_multi(
    terms: Sequence[Tensor],
    coeffs: Sequence[Tensor],
    coeff_index: Sequence[int],
    scales: Sequence[float],
    sources: Sequence[int],
    counts: Sequence[int],
    keep: Sequence[int],
) -> list[Tensor]:
    """Several combinations of the same terms, computed in order (see ``csrc/ops.cpp``).

    Output j sums its ``counts[j]`` entries; entry e adds ``scales[e] * coeffs[coeff_index[e]]
    * S[sources[e]]`` where ``S`` is the terms followed by the outputs so far (kept in the
    accumulation dtype, as the kernels keep them in registers). Returns the outputs with
    ``keep[j]``, in terms[0]'s dtype, contiguous.
    """
    dtype = terms[0].dtype
    acc = acc_dtype(dtype)
    values: list[Tensor] = []
    kept: list[Tensor] = []
    e = 0
    for j, count in enumerate(counts):
        res = torch.zeros(terms[0].shape, dtype=acc, device=terms[0].device)
        for _ in range(count):
            src, i, s = sources[e], coeff_index[e], scales[e]
            t = terms[src].to(acc) if src < len(terms) else values[src - len(terms)]
            if i < 0:
                res = res + t * s
            else:
                res = res + (coeffs[i].to(device=t.device, dtype=acc) * s) * t
            e += 1
        values.append(res)
        if keep[j]:
            kept.append(res.to(dtype).contiguous())
    return kept


def check_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> None:
    """Raise a ValueError naming the argument when q, k, v, mask do not fit together."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ValueError(f"attention: {name} must be a floating-point tensor")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(
            f"attention: q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"attention: q, k, v must be [B, H, L, D]; got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    B, H, _, D = q.shape
    if k.shape[:2] != (B, H) or v.shape[:2] != (B, H) or k.shape[3] != D:
        raise ValueError(
            f"attention: k {tuple(k.shape)} must be [B={B}, H={H}, Lk, D={D}] and v "
            f"{tuple(v.shape)} must be [B={B}, H={H}, Lk, Dv]"
        )
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"attention: k has Lk={k.shape[2]} keys but v has {v.shape[2]} values")
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (B, k.shape[2])):
        raise ValueError(
            f"attention: mask must be a bool key-padding mask [B={B}, Lk={k.shape[2]}] "
            f"(True = keep); got {mask.dtype} {tuple(mask.shape)}"
        )
    if mask is not None and mask.device != q.device:
        raise ValueError(f"attention: mask is on {mask.device}, q on {q.device}")


def attention_with_lse(
    q: Tensor, k: Tensor, v: Tensor, scale: float, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Softmax attention and its row log-sum-exp (float32 math, float64 for float64 inputs).

    Returns ``out [B, H, Lq, Dv]`` in q's dtype and ``lse [B, H, Lq]`` in the accumulation
    dtype. A query whose keys are all masked gets an output of 0 and an lse of -inf (SDPA would
    give NaN there; a padded batch entry should not poison the rest of the computation).
    """
    check_attention(q, k, v, mask)
    acc = acc_dtype(q.dtype)
    s = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale
    if mask is not None:
        s = s.masked_fill(~mask[:, None, None, :], -math.inf)
    lse = torch.logsumexp(s, dim=-1)
    finite = torch.isfinite(lse)
    p = torch.exp(s - torch.where(finite, lse, torch.zeros_like(lse))[..., None])
    p = torch.where(finite[..., None], p, torch.zeros_like(p))
    out = torch.matmul(p, v.to(acc))
    return out.to(q.dtype), lse


def attention(
    q: Tensor, k: Tensor, v: Tensor, scale: float | None = None, mask: Tensor | None = None
) -> Tensor:
    """Reference softmax attention over ``[B, H, L, D]`` (see :func:`attention_with_lse`)."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    return attention_with_lse(q, k, v, scale, mask)[0]


def linear_attention(q: Tensor, k: Tensor, v: Tensor, eps: float = 1e-6) -> Tensor:
    """Normalized non-causal linear attention (LinFusion's form), O(L * D * Dv).

    ``out_i = q_i (sum_j k_j^T v_j) / (q_i . sum_j k_j + eps)`` with q, k already mapped by a
    non-negative feature map (the caller's module owns the feature map). Shapes: q ``[B, H, Lq,
    D]``, k ``[B, H, Lk, D]``, v ``[B, H, Lk, Dv]``.
    """
    check_linear_attention(q, k, v)
    acc = acc_dtype(q.dtype)
    qa, ka, va = q.to(acc), k.to(acc), v.to(acc)
    kv = torch.matmul(ka.transpose(-1, -2), va)  # [B, H, D, Dv]
    ksum = ka.sum(dim=-2)  # [B, H, D]
    num = torch.matmul(qa, kv)
    den = torch.matmul(qa, ksum[..., None]) + eps  # [B, H, Lq, 1]
    return (num / den).to(q.dtype)


def check_linear_attention(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Raise a ValueError naming the argument when q, k, v do not fit together."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ValueError(f"linear_attention: {name} must be a floating-point tensor")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(
            f"linear_attention: q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"linear_attention: q, k, v must be [B, H, L, D]; got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if k.shape[:2] != q.shape[:2] or v.shape[:3] != k.shape[:3] or k.shape[3] != q.shape[3]:
        raise ValueError(
            f"linear_attention: shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, "
            f"v {tuple(v.shape)}"
        )


def _halo_rows(m: Tensor, r: int, top: bool) -> Tensor:
    return m[:, :, :r] if top else m[:, :, m.shape[2] - r:]


def halo_pack(maps: Sequence[Tensor], rows: Sequence[int], top: bool) -> Tensor:
    """The first (``top``) or last ``rows[i]`` rows of each ``[B, C, H, W]`` map, flattened
    map after map into one contiguous 1-D buffer (each slab ``[B, C, rows[i], W]`` row-major)."""
    return torch.cat([_halo_rows(m, r, top).reshape(-1) for m, r in zip(maps, rows)])


def halo_unpack(buffer: Tensor, dests: Sequence[Tensor], rows: Sequence[int], top: bool) -> None:
    """Write a :func:`halo_pack` buffer into the first (``top``) or last ``rows[i]`` rows of
    each destination ``[B, C, H, W]``, in place."""
    offset = 0
    for d, r in zip(dests, rows):
        slab = _halo_rows(d, r, top)
        n = slab.numel()
        slab.copy_(buffer[offset:offset + n].view(slab.shape))
        offset += n


def check_halo(op: str, maps: Sequence[Tensor], rows: Sequence[int], what: str = "maps") -> int:
    """Check the maps (or destinations) of the halo ops; returns the packed element count."""
    if isinstance(maps, Tensor) or len(maps) == 0:
        raise ValueError(f"{op}: {what} must be a non-empty list of [B, C, H, W] tensors")
    if len(rows) != len(maps):
        raise ValueError(f"{op}: {len(maps)} {what} but {len(rows)} row counts")
    total = 0
    for i, (m, r) in enumerate(zip(maps, rows)):
        if not isinstance(m, Tensor) or m.dim() != 4:
            shape = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
            raise ValueError(f"{op}: {what}[{i}] is {shape}; expected a [B, C, H, W] tensor")
        if m.dtype != maps[0].dtype or m.device != maps[0].device:
            raise ValueError(f"{op}: {what}[{i}] is {m.dtype} on {m.device}, {what}[0] "
                             f"{maps[0].dtype} on {maps[0].device}; expected one dtype and device")
        if not 0 <= r <= m.shape[2]:
            raise ValueError(f"{op}: rows[{i}] = {r}; expected 0 <= rows <= H = {m.shape[2]}")
        total += m.shape[0] * m.shape[1] * r * m.shape[3]
    return total
