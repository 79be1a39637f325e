"""Attention for pydiff networks: SDPA or ``pydiff.ops.attention``, whichever is faster.

All networks in ``pydiff.nn`` call :func:`attention` so that the kernel choice is made in one
place (see its docstring for the measurements behind it).

Example:
    >>> import torch
    >>> from pydiff.nn import MultiHeadAttention
    >>> mha = MultiHeadAttention(64, num_heads=4)
    >>> x = torch.randn(2, 10, 64)
    >>> mha(x).shape
    torch.Size([2, 10, 64])
    >>> keep = torch.ones(2, 10, dtype=torch.bool); keep[1, 7:] = False   # key padding
    >>> mha(x, mask=keep).shape
    torch.Size([2, 10, 64])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import pydiff.ops as _ops

__all__ = ["attention", "MultiHeadAttention"]


def attention(
    q: Tensor, k: Tensor, v: Tensor, scale: float | None = None, mask: Tensor | None = None
) -> Tensor:
    """Softmax attention ``softmax(q k^T * scale) v``; ``q [B, H, Lq, D]``, ``k, v [B, H, Lk, D]``.

    Args:
        scale: logit scale, default ``1 / sqrt(D)``.
        mask: optional boolean key-padding mask ``[B, Lk]``, ``True`` where a key may be
            attended to. A query whose keys are all masked gets 0 (SDPA would give NaN).

    Every network in ``pydiff.nn`` calls this, so the kernel choice is made here, from
    measurements (``benchmarks/ops_attention.py``, BENCHMARKS.md "Kernels"; CPU, 2 threads):

    - inference (no gradient needed): torch's SDPA. The fused kernel's forward takes 0.91-1.14x
      SDPA's time, 1.0-1.14x on all but one shape (B=1, H=8, L 1024/4096, D 40-160; B=32,
      H=4, L 16-256, D 32/64).
    - float32 CPU training: ``pydiff.ops.attention``. Forward+backward takes 0.74-0.87x SDPA's
      time on the small shapes, 0.72-0.75x at B=1, H=1 (its backward splits key blocks over
      the threads when there are few (batch, head) pairs), 0.86-1.05x at B=1, H=8 (within
      run-to-run spread there); the one loss measured is B=1, H=1 on a single thread, 1.04x.
      SDPA still serves what only it supports: broadcast batch/head dims, CPU autocast,
      torch.func transforms.
    - key-padding masks: ``pydiff.ops.attention``, which gives fully masked queries 0 instead
      of NaN (padded molecules, padded sequences) and checks its arguments.

    Example:
        >>> import torch
        >>> q = k = v = torch.randn(1, 2, 5, 8)
        >>> attention(q, k, v).shape
        torch.Size([1, 2, 5, 8])
    """
    if mask is None and q.dim() == k.dim() == v.dim() == 4 and not _kernel_trains_faster(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    # looked up at call time (not imported by name) so the op can be swapped or wrapped
    return _ops.attention(q, k, v, scale=scale, mask=mask)


def _kernel_trains_faster(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """The measured case where the compiled kernel beats SDPA (see :func:`attention`)."""
    if torch.compiler.is_compiling():  # not measured under torch.compile: traced graphs keep SDPA
        return False
    return (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
            and q.device.type == "cpu" and q.dtype == torch.float32
            and _ops.backend() == "extension"
            # what SDPA does and the kernel does not: broadcast batch/head dims, autocast to
            # bfloat16, functorch transforms (vmap/grad). Double backward neither does on the
            # CPU (SDPA's flash backward raises; the kernel's too, see pydiff.ops._register)
            and q.shape[:2] == k.shape[:2] == v.shape[:2]
            and not torch.is_autocast_enabled("cpu")
            and not torch._C._are_functorch_transforms_active())


class MultiHeadAttention(nn.Module):
    """Multi-head self- or cross-attention on token sequences ``[B, L, dim]``.

    Args:
        dim: token size (the output size too).
        num_heads: number of heads; ``dim`` must be divisible by it.
        context_dim: size of the context tokens for cross-attention (default: ``dim``).
        qkv_bias: biases on the q/k/v projections.

    ``forward(x, context=None, mask=None)``: ``x [B, L, dim]``; ``context [B, Lk, context_dim]``
    (self-attention when ``None``); ``mask [B, Lk]`` boolean, ``True`` = keep that key.
    """

    def __init__(
        self, dim: int, num_heads: int = 4, context_dim: int | None = None, qkv_bias: bool = True
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.to_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_kv = nn.Linear(context_dim or dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        context = x if context is None else context
        q = self._heads(self.to_q(x))
        k, v = (self._heads(z) for z in self.to_kv(context).chunk(2, dim=-1))
        out = attention(q, k, v, mask=mask)
        b, _, n, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))
