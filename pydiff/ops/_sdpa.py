"""``pydiff.ops.attention``'s semantics on torch's scaled-dot-product attention backends.

torch's SDPA (flash, memory-efficient, cuDNN on CUDA; a fused kernel on the CPU) is far faster
than a simple kernel on GPUs, but differs from ``pydiff.ops.attention`` in two ways handled here:

- a query whose keys are all masked gives NaN in SDPA and 0 here. Such a batch entry is run
  with every key allowed and its output set to 0 afterwards, so neither the values nor the
  gradients see a NaN;
- SDPA returns no log-sum-exp. Where one is asked for (CUDA, float16/bfloat16/float32), the
  memory-efficient backend's private op computes it. That op's autograd formula ignores a
  gradient flowing into the lse, and its lse is padded to a multiple of 32 queries; both are
  handled by :class:`_EfficientWithLse`, whose backward adds the lse term itself.

Example:
    >>> import torch
    >>> from pydiff.ops import _sdpa
    >>> q = torch.randn(2, 1, 3, 8); keep = torch.tensor([[True] * 3, [False] * 3])
    >>> out = _sdpa.attention(q, q, q, 8**-0.5, keep, return_lse=False)
    >>> bool(out[1].eq(0).all()), bool(out.isfinite().all())
    (True, True)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

_aten = torch.ops.aten

# dtypes and head dims for which the memory-efficient backend provides the log-sum-exp
LSE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LSE_MAX_HEAD_DIM = 256
# float64 has no fused SDPA backend: SDPA's math backend materializes the [B, H, Lq, Lk] scores.
# It was still measured faster than pydiff's O(L)-memory kernel with 2 GiB of scores (BENCHMARKS.md,
# "Kernels on a GPU"); beyond that the kernel keeps memory bounded.
MATH_MAX_SCORE_BYTES = 1 << 31


def supports_lse(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether :func:`attention` can return the log-sum-exp for these inputs."""
    return (
        q.device.type == "cuda"
        and q.dtype in LSE_DTYPES
        and q.dtype == k.dtype == v.dtype
        and max(q.shape[-1], v.shape[-1]) <= LSE_MAX_HEAD_DIM
    )


def math_fits(q: Tensor, k: Tensor) -> bool:
    """Whether SDPA's math backend (the only one for float64) may hold these scores."""
    B, H, Lq, _ = q.shape
    return B * H * Lq * k.shape[2] * q.element_size() <= MATH_MAX_SCORE_BYTES


def attention(
    q: Tensor, k: Tensor, v: Tensor, scale: float, mask: Tensor | None, return_lse: bool
) -> Tensor | tuple[Tensor, Tensor]:
    """Softmax attention through SDPA with ``pydiff.ops.attention``'s semantics (see the
    module docstring); ``return_lse`` needs :func:`supports_lse`."""
    has_keys = None
    if mask is not None:
        # [B, 1]: batch entries with a key to attend; the others attend to every key and are
        # set to 0 afterwards (few extra launches: they count at small sizes)
        has_keys = mask.any(dim=-1, keepdim=True)
        mask = torch.where(has_keys, mask, True)
    if return_lse:
        out, lse = _attention_with_lse(q, k, v, scale, mask)
    else:
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    if has_keys is not None:
        out = torch.where(has_keys[..., None, None], out, 0.0)
        if return_lse:
            lse = torch.where(has_keys[..., None], lse, float("-inf"))
    return (out, lse) if return_lse else out


def _attention_with_lse(
    q: Tensor, k: Tensor, v: Tensor, scale: float, mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    D, Dv = q.shape[-1], v.shape[-1]
    # The kernel wants head dims that are multiples of 8; zero columns change no score and
    # no output, and are sliced off again (differentiably).
    pad, pad_v = -D % 8, -Dv % 8
    if pad:
        q, k = F.pad(q, (0, pad)), F.pad(k, (0, pad))
    if pad_v:
        v = F.pad(v, (0, pad_v))
    bias = None if mask is None else _key_padding_bias(mask, q)
    out, lse = _EfficientWithLse.apply(q, k, v, bias, scale)
    return (out[..., :Dv] if pad_v else out), lse


def _key_padding_bias(mask: Tensor, q: Tensor) -> Tensor:
    """A boolean ``[B, Lk]`` key-padding mask as the additive bias the memory-efficient kernel
    takes: 0 / -inf, broadcast over heads and queries. Its storage rows are padded to a multiple
    of 16 keys, the alignment the kernel requires (as SDPA itself pads it)."""
    B, Lk = mask.shape
    rows = torch.zeros(B, 1, 1, Lk + (-Lk % 16), dtype=q.dtype, device=q.device)
    rows[..., :Lk].masked_fill_(~mask[:, None, None, :], float("-inf"))
    return rows[..., :Lk].expand(B, q.shape[1], q.shape[2], Lk)


class _EfficientWithLse(torch.autograd.Function):
    """The memory-efficient SDPA kernel returning (out, lse [B, H, Lq]), differentiable in both.

    With ``g`` the gradient of the lse, ``d lse_i = scale * sum_j P_ij (dq_i . k_j + q_i . dk_j)``
    adds ``scale * g_i * (P K)_i`` to dq and ``scale * (P^T (g q))_j`` to dk: ``P K`` is one more
    forward with K as the values, ``P^T (g q)`` the value gradient of one more backward.
    """

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float):
        out, lse, seed, offset = _aten._scaled_dot_product_efficient_attention(
            q, k, v, bias, True, 0.0, False, scale=scale
        )
        ctx.scale = scale
        ctx.save_for_backward(q, k, v, bias, out, lse, seed, offset)
        return out, lse[..., : q.shape[2]]

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor | None, grad_lse: Tensor | None) -> tuple:
        q, k, v, bias, out, lse, seed, offset = ctx.saved_tensors
        scale = ctx.scale
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        dq = dk = dv = None
        if grad_out is not None:
            dq, dk, dv, _ = _aten._scaled_dot_product_efficient_attention_backward(
                grad_out.contiguous(), q, k, v, bias, out, lse, seed, offset, 0.0,
                [need_q, need_k, need_v, False], False, scale=scale,
            )
        if grad_lse is not None and (need_q or need_k):
            g = (grad_lse * scale).to(q.dtype)[..., None]  # [B, H, Lq, 1]
            pk, _, _, _ = _aten._scaled_dot_product_efficient_attention(
                q, k, k, bias, True, 0.0, False, scale=scale
            )
            if need_q:
                dq = g * pk if dq is None else dq + g * pk
            if need_k:
                _, _, dk_lse, _ = _aten._scaled_dot_product_efficient_attention_backward(
                    (g * q).contiguous(), q, k, k, bias, pk, lse, seed, offset, 0.0,
                    [False, False, True, False], False, scale=scale,
                )
                dk = dk_lse if dk is None else dk + dk_lse
        return dq, dk, dv, None, None
