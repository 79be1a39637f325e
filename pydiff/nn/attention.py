"""Attention for pydiff networks, through ``pydiff.ops.attention``.

All networks in ``pydiff.nn`` call :func:`attention`; the choice between torch's SDPA and
pydiff's kernels is made in one place, ``pydiff.ops.attention`` (see
:func:`pydiff.ops.attention_backend` for the rules and BENCHMARKS.md for the measurements).

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

    This is ``pydiff.ops.attention`` with its default choice of implementation (torch's SDPA
    or pydiff's kernel, whichever was measured faster for the inputs' device, dtype and use).

    Example:
        >>> import torch
        >>> q = k = v = torch.randn(1, 2, 5, 8)
        >>> attention(q, k, v).shape
        torch.Size([1, 2, 5, 8])
    """
    # looked up at call time (not imported by name) so the op can be swapped or wrapped
    return _ops.attention(q, k, v, scale=scale, mask=mask)


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
