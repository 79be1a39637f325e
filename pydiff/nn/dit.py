"""DiT: transformer blocks with adaLN-Zero conditioning (Peebles & Xie 2023), for sequences.

Example:
    >>> import torch
    >>> from pydiff.nn import DiT, DiTBlock
    >>> blk = DiTBlock(64, num_heads=4, cond_dim=32)
    >>> blk(torch.randn(2, 10, 64), torch.randn(2, 32)).shape
    torch.Size([2, 10, 64])
    >>> net = DiT(in_channels=3, hidden_dim=64, depth=2, num_heads=4)
    >>> net(torch.randn(2, 3, 17), torch.rand(2)).shape          # x is [B, C, L]
    torch.Size([2, 3, 17])
    >>> net(torch.randn(2, 3, 17), torch.rand(2, 17)).shape      # per-position t
    torch.Size([2, 3, 17])
    >>> ImageDiT(1, patch=4, hidden_dim=32, depth=1)(torch.randn(2, 1, 16, 8), 0.5).shape
    torch.Size([2, 1, 16, 8])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .attention import MultiHeadAttention
from .embeddings import SinusoidalEmbedding, TimeEmbedding, normalize_time

__all__ = ["DiT", "DiTBlock", "ImageDiT"]


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


def _per_token(p: Tensor) -> Tensor:
    """Modulation params ``[B, D]`` become ``[B, 1, D]``; per-token ``[B, L, D]`` stay."""
    return p.unsqueeze(1) if p.dim() == 2 else p


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero: ``x += gate * f(LN(x) * (1 + scale) + shift)``.

    shift, scale and gate for both the attention and the MLP come from one linear map of the
    condition; that map starts at zero, so every block starts as the identity (the "Zero" in
    adaLN-Zero, which the DiT paper found clearly better than other initializations).

    Args:
        dim: token size.
        num_heads: attention heads (attention runs through ``pydiff.ops.attention``).
        mlp_ratio: MLP hidden size / ``dim``.
        cond_dim: size of the condition vector (default ``dim``).

    ``forward(x [B, L, dim], c, mask=None)``: ``c [B, cond_dim]`` (one condition per sample)
    or ``[B, L, cond_dim]`` (one per token, e.g. per-position time); ``mask [B, L]`` boolean
    key-padding mask (``True`` = real token).
    """

    def __init__(
        self, dim: int, num_heads: int = 4, mlp_ratio: float = 4.0, cond_dim: int | None = None
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = MultiHeadAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)
        )
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim or dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, c: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.forward_with(x, c, lambda a: self.attn(a, mask=mask))

    def forward_with(self, x: Tensor, c: Tensor, attend: Callable[[Tensor], Tensor]) -> Tensor:
        """The block with ``attend(tokens) -> [B, L, dim]`` in place of its self-attention
        (the projections in ``self.attn`` included): a wrapper that holds only some of the
        tokens (pydiff.parallel.PatchParallel) attends over the others' keys and values."""
        params = (_per_token(p) for p in self.ada(c).chunk(6, dim=-1))
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = params
        x = x + gate_a * attend(_modulate(self.norm1(x), shift_a, scale_a))
        x = x + gate_m * self.mlp(_modulate(self.norm2(x), shift_m, scale_m))
        return x


class DiT(nn.Module):
    """A small DiT-style transformer over sequences (actions, time series, tokens).

    Tokens are the positions of a channel-first sequence ``x [B, C, L]``: a linear map embeds
    each position's C channels, fixed sinusoidal position embeddings are added (so any ``L``
    works, no maximum length), :class:`DiTBlock` layers are conditioned on the time embedding
    plus a projected global condition, and a final adaLN-modulated linear layer (zero at init)
    maps back to ``out_channels``.

    Args:
        in_channels: channels per position.
        out_channels: output channels (default ``in_channels``).
        hidden_dim: token size.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden size / ``hidden_dim``.
        global_cond_dim: size of an optional global condition vector (0 = none); it is
            projected and added to the time embedding, as DiT does with class embeddings.
        time_embedding: ``"sinusoidal"`` or ``"fourier"``.

    ``forward(x, t, global_cond=None, mask=None)``: ``x [B, in_channels, L]``; ``t``: ``[]``,
    ``[B]``, ``[B, 1, 1]``, or per position ``[B, L]`` / ``[B, 1, L]`` (per-token adaLN then);
    ``global_cond [B, global_cond_dim]``; ``mask [B, L]`` boolean, ``True`` = real position
    (padded positions are not attended to; their outputs are meaningless). Returns
    ``[B, out_channels, L]``.

    ``config`` holds the constructor kwargs (JSON-serializable).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        hidden_dim: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        global_cond_dim: int = 0,
        time_embedding: str = "sinusoidal",
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = dict(
            in_channels=in_channels,
            out_channels=out_channels,
            hidden_dim=hidden_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            global_cond_dim=global_cond_dim,
            time_embedding=time_embedding,
        )
        out_channels = out_channels or in_channels
        self.in_channels, self.global_cond_dim = in_channels, global_cond_dim
        self.embed = nn.Linear(in_channels, hidden_dim)
        self.pos_embed = SinusoidalEmbedding(hidden_dim)
        self.time_embed = TimeEmbedding(hidden_dim, hidden_dim, kind=time_embedding, act="silu")
        self.cond_embed = nn.Linear(global_cond_dim, hidden_dim) if global_cond_dim else None
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_dim, num_heads, mlp_ratio) for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(hidden_dim, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden_dim, 2 * hidden_dim))
        self.out = nn.Linear(hidden_dim, out_channels)
        for layer in (self.ada_out[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self,
        x: Tensor,
        t: Tensor | float,
        global_cond: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; expected [B, in_channels={self.in_channels}, L]"
            )
        b, _, length = x.shape
        c = self.condition(t, b, length, global_cond, x.device)
        h = self.tokens(x, torch.arange(length, device=x.device))
        for blk in self.blocks:
            h = blk(h, c, mask=mask)
        return self.head(h, c)

    # The pieces of ``forward``, public so that a wrapper evaluating a contiguous range of the
    # tokens (pydiff.parallel.PatchParallel: one band of tokens per rank) computes exactly what
    # ``forward`` computes for them.

    def condition(self, t: Tensor | float, batch: int, length: int,
                  global_cond: Tensor | None = None, device: torch.device | None = None) -> Tensor:
        """The blocks' condition: the time embedding plus the projected global condition,
        ``[B, hidden_dim]`` or, for per-position ``t``, ``[B, length, hidden_dim]``."""
        t = normalize_time(t, batch, length, owner="DiT")
        t = t if device is None else t.to(device)
        c = self.time_embed(t).to(self.embed.weight.dtype)  # [B, D] or [B, L, D]
        if self.cond_embed is not None:
            if global_cond is None or global_cond.shape != (batch, self.global_cond_dim):
                got = None if global_cond is None else tuple(global_cond.shape)
                raise ValueError(
                    f"global_cond has shape {got}; expected [B, {self.global_cond_dim}]"
                )
            g = self.cond_embed(global_cond.to(c.dtype))
            c = c + (g.unsqueeze(1) if c.dim() == 3 else g)
        elif global_cond is not None:
            raise ValueError(
                "global_cond was given but the network was built with global_cond_dim=0"
            )
        return c

    def tokens(self, x: Tensor, positions: Tensor) -> Tensor:
        """``x [B, in_channels, n]`` (the positions ``positions [n]`` of the sequence) as
        embedded tokens ``[B, n, hidden_dim]``."""
        h = self.embed(x.transpose(1, 2))
        return h + self.pos_embed(positions.to(torch.float32)).to(h.dtype)

    def head(self, h: Tensor, c: Tensor) -> Tensor:
        """The final adaLN-modulated layer: tokens ``[B, n, hidden_dim]`` (and their condition)
        to the output ``[B, out_channels, n]``."""
        shift, scale = (_per_token(p) for p in self.ada_out(c).chunk(2, dim=-1))
        h = self.out(_modulate(self.norm_out(h), shift, scale))
        return h.transpose(1, 2)


class ImageDiT(nn.Module):
    """A :class:`DiT` over an image's non-overlapping ``patch`` x ``patch`` patches in
    row-major order (ViT-style patchify): ``x [B, C, H, W]`` to ``[B, C, H, W]``.

    The tokens are a sequence for the inner ``dit`` (``in_channels = C * patch^2``), so its
    fixed 1D position embeddings see a vertical neighbour at a fixed offset (the patch columns,
    ``W / patch``): train and sample at one width. A band of tokens is a band of patch rows,
    which is how :class:`pydiff.parallel.PatchParallel` splits it.

    Args:
        in_channels: image channels.
        patch: patch side; ``H`` and ``W`` must be multiples of it.
        hidden_dim, depth, num_heads, mlp_ratio, time_embedding: the inner :class:`DiT`'s.

    Example:
        >>> net = ImageDiT(1, patch=2, hidden_dim=32, depth=1)
        >>> net.to_tokens(torch.randn(1, 1, 4, 6)).shape      # 2 x 3 patches of 1 x 2 x 2
        torch.Size([1, 4, 6])
    """

    def __init__(self, in_channels: int = 1, patch: int = 4, hidden_dim: int = 96,
                 depth: int = 4, num_heads: int = 4, mlp_ratio: float = 4.0,
                 time_embedding: str = "sinusoidal") -> None:
        super().__init__()
        if patch < 1:
            raise ValueError(f"patch={patch}; expected >= 1")
        self.config: dict[str, Any] = dict(in_channels=in_channels, patch=patch,
                                           hidden_dim=hidden_dim, depth=depth,
                                           num_heads=num_heads, mlp_ratio=mlp_ratio,
                                           time_embedding=time_embedding)
        self.in_channels, self.patch = in_channels, patch
        self.dit = DiT(in_channels * patch * patch, hidden_dim=hidden_dim, depth=depth,
                       num_heads=num_heads, mlp_ratio=mlp_ratio, time_embedding=time_embedding)

    def to_tokens(self, x: Tensor) -> Tensor:
        """``x [B, C, H, W]`` as ``[B, C * patch^2, (H / patch) * (W / patch)]``."""
        b, c, height, width = x.shape
        p = self.patch
        if c != self.in_channels or height % p or width % p:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected [B, {self.in_channels}, "
                             f"H, W] with H and W multiples of patch={p}")
        x = x.reshape(b, c, height // p, p, width // p, p).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(b, c * p * p, (height // p) * (width // p))

    def to_image(self, tokens: Tensor, height: int, width: int) -> Tensor:
        """The inverse of :meth:`to_tokens` for an ``height`` x ``width`` image."""
        b, p = tokens.shape[0], self.patch
        x = tokens.reshape(b, self.in_channels, p, p, height // p, width // p)
        return x.permute(0, 1, 4, 2, 5, 3).reshape(b, self.in_channels, height, width)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        return self.to_image(self.dit(self.to_tokens(x), t), x.shape[-2], x.shape[-1])
