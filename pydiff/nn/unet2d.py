"""A small 2D UNet with NCSN++ / DDPM++-style options (Song et al. 2021; Ho et al. 2020).

Residual blocks (GroupNorm, SiLU, dropout, additive time embedding), configurable channel
multipliers, self-attention at chosen (low) resolutions and in the middle, Gaussian Fourier or
sinusoidal time embedding, skip rescaling by 1/sqrt(2), and an optional conditioning image
concatenated on channels (e.g. the noisy spectrogram in SGMSE+ speech enhancement, or a
measurement-domain image in medical reconstruction).

Example:
    >>> import torch
    >>> from pydiff.nn import UNet2D
    >>> net = UNet2D(in_channels=2, cond_channels=2, base_channels=16, channel_mult=(1, 2))
    >>> x, y = torch.randn(1, 2, 30, 21), torch.randn(1, 2, 30, 21)   # any H, W
    >>> net(x, torch.rand(1), cond=y).shape
    torch.Size([1, 2, 30, 21])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import attention
from .embeddings import TimeEmbedding, normalize_time

__all__ = ["UNet2D", "ResBlock2D", "AttnBlock2D", "ColumnGroupNorm"]


def _groups(channels: int) -> int:
    """GroupNorm groups as NCSN++ picks them (``min(C // 4, 32)``), made to divide ``C``."""
    g = max(1, min(channels // 4, 32))
    while channels % g:
        g -= 1
    return g


class ColumnGroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics never mix columns: each ``W`` position is normalized over its
    channel group and ``H`` alone (same parameters as ``nn.GroupNorm``).

    With it a convolutional network stays local along ``W`` (time in a spectrogram), so a
    signal processed in overlapping chunks matches the signal processed whole.
    """

    def forward(self, x: Tensor) -> Tensor:
        b, c, hh, ww = x.shape
        cols = x.permute(0, 3, 1, 2).reshape(b * ww, c, hh)
        out = F.group_norm(cols, self.num_groups, self.weight, self.bias, self.eps)
        return out.reshape(b, ww, c, hh).permute(0, 2, 3, 1)


NORM_AXES = ("hw", "h")


def _norm(channels: int, norm_axes: str) -> nn.GroupNorm:
    if norm_axes not in NORM_AXES:
        raise ValueError(f"norm_axes={norm_axes!r}; expected one of {NORM_AXES}")
    cls = nn.GroupNorm if norm_axes == "hw" else ColumnGroupNorm
    return cls(_groups(channels), channels)


class ResBlock2D(nn.Module):
    """``GN-SiLU-Conv -> + Dense(temb) -> GN-SiLU-Dropout-Conv`` plus a (1x1) skip.

    The second conv starts at zero (DDPM / NCSN++ ``init_scale=0``) so every block starts as
    the identity on its skip path, which keeps deep UNets well conditioned at initialization.
    With ``skip_rescale`` the sum is divided by sqrt(2) (NCSN++) to keep the variance constant.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        temb_dim: int,
        dropout: float = 0.0,
        skip_rescale: bool = True,
        norm_axes: str = "hw",
    ) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch, norm_axes)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb = nn.Linear(temb_dim, out_ch)
        self.norm2 = _norm(out_ch, norm_axes)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.skip_rescale = skip_rescale

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        out = self.skip(x) + h
        return out / math.sqrt(2.0) if self.skip_rescale else out


class AttnBlock2D(nn.Module):
    """Multi-head self-attention over all ``H * W`` positions, residual, via :func:`attention`."""

    def __init__(self, channels: int, num_heads: int = 1, skip_rescale: bool = True,
                 norm_axes: str = "hw") -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(
                f"attention channels {channels} must be divisible by num_heads={num_heads}"
            )
        self.num_heads = num_heads
        self.norm = _norm(channels, norm_axes)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.skip_rescale = skip_rescale

    def forward(self, x: Tensor) -> Tensor:
        b, c, hh, ww = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, hh * ww)
        # [B, H, L, D] layout for pydiff.ops.attention.
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))
        out = attention(q, k, v).transpose(-1, -2).reshape(b, c, hh, ww)
        out = x + self.proj(out)
        return out / math.sqrt(2.0) if self.skip_rescale else out


class _Down(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class _Up(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet2D(nn.Module):
    """Small NCSN++ / DDPM++-style 2D UNet for images and spectrograms.

    Args:
        in_channels: channels of the noisy sample ``x``.
        out_channels: output channels (default ``in_channels``).
        cond_channels: channels of the optional conditioning image, concatenated to ``x`` on
            the channel axis (0 = no conditioning input).
        base_channels: channels at the finest resolution.
        channel_mult: multiplier of ``base_channels`` per resolution level; the image is
            downsampled ``len(channel_mult) - 1`` times.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attn_levels: level indices (0 = full resolution) with self-attention after each
            residual block; default: the coarsest level only. The middle always has one.
        num_heads: attention heads.
        dropout: dropout inside the residual blocks.
        time_embedding: ``"fourier"`` (NCSN++; feed it e.g. ``log sigma``) or ``"sinusoidal"``
            (DDPM; feed it e.g. ``999 * t``).
        fourier_scale: frequency scale of the Fourier features (NCSN++: 16).
        skip_rescale: divide residual sums by sqrt(2) (NCSN++).
        norm_axes: ``"hw"`` GroupNorm statistics over the whole image (default); ``"h"``
            per column (:class:`ColumnGroupNorm`), so nothing but the convolutions' receptive
            field couples distant columns (chunked spectrogram processing).
        mid_attention: the self-attention block in the middle (global over all positions).

    ``forward(x, t, cond=None)``: ``x [B, in_channels, H, W]``; ``t``: ``[]``, ``[B]`` or any
    shape whose non-batch axes are 1 (one noise level per sample); ``cond
    [B, cond_channels, H, W]``. Any ``H, W >= 1`` work: the input is zero-padded to a multiple
    of ``2 ** (len(channel_mult) - 1)`` and the output cropped back. Returns
    ``[B, out_channels, H, W]``.

    ``config`` holds the constructor kwargs (JSON-serializable).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        cond_channels: int = 0,
        base_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attn_levels: Sequence[int] | None = None,
        num_heads: int = 1,
        dropout: float = 0.0,
        time_embedding: str = "fourier",
        fourier_scale: float = 16.0,
        skip_rescale: bool = True,
        norm_axes: str = "hw",
        mid_attention: bool = True,
    ) -> None:
        super().__init__()
        channel_mult = [int(m) for m in channel_mult]
        n_levels = len(channel_mult)
        if n_levels == 0:
            raise ValueError("channel_mult must have at least one entry")
        if attn_levels is None:
            attn_levels = [n_levels - 1]
        attn_levels = [int(a) for a in attn_levels]
        if any(not 0 <= a < n_levels for a in attn_levels):
            raise ValueError(
                f"attn_levels={attn_levels}: each must be a level index in [0, {n_levels})"
            )
        self.config: dict[str, Any] = dict(
            in_channels=in_channels,
            out_channels=out_channels,
            cond_channels=cond_channels,
            base_channels=base_channels,
            channel_mult=channel_mult,
            num_res_blocks=num_res_blocks,
            attn_levels=attn_levels,
            num_heads=num_heads,
            dropout=dropout,
            time_embedding=time_embedding,
            fourier_scale=fourier_scale,
            skip_rescale=skip_rescale,
            norm_axes=norm_axes,
            mid_attention=mid_attention,
        )
        out_channels = out_channels or in_channels
        self.in_channels, self.cond_channels = in_channels, cond_channels
        self.n_down = n_levels - 1
        temb_dim = 4 * base_channels
        self.time_embed = TimeEmbedding(
            base_channels, temb_dim, kind=time_embedding, act="silu", fourier_scale=fourier_scale
        )

        def res(cin: int, cout: int) -> ResBlock2D:
            return ResBlock2D(cin, cout, temb_dim, dropout, skip_rescale, norm_axes)

        def attn(ch: int) -> AttnBlock2D:
            return AttnBlock2D(ch, num_heads, skip_rescale, norm_axes)

        self.conv_in = nn.Conv2d(in_channels + cond_channels, base_channels, 3, padding=1)
        # Down path: a flat list of (block, attention-or-None) and downsamplers; hs_ch records
        # the channel count of every saved skip, so the up path can be built to match.
        self.down = nn.ModuleList()
        ch, hs_ch = base_channels, [base_channels]
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(nn.ModuleList([res(ch, base_channels * mult)]))
                ch = base_channels * mult
                if level in attn_levels:
                    self.down[-1].append(attn(ch))
                hs_ch.append(ch)
            if level != n_levels - 1:
                self.down.append(nn.ModuleList([_Down(ch)]))
                hs_ch.append(ch)
        self.mid = nn.ModuleList([res(ch, ch), attn(ch) if mid_attention else nn.Identity(),
                                  res(ch, ch)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(nn.ModuleList([res(ch + hs_ch.pop(), base_channels * mult)]))
                ch = base_channels * mult
                if level in attn_levels:
                    self.up[-1].append(attn(ch))
            if level != 0:
                self.up.append(nn.ModuleList([_Up(ch)]))
        self.norm_out = _norm(ch, norm_axes)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)
        # Zero output at init (DDPM/NCSN++): the untrained model predicts "no change".
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        height, width = x.shape[-2:]
        x, temb = self._inputs(x, t, cond)
        h = self.conv_in(x)
        hs = [h]
        for blocks in self.down:
            h = self._run_level(blocks, h, temb)
            hs.append(h)
        h = self.mid[0](h, temb)
        h = self.mid[1](h)
        h = self.mid[2](h, temb)
        for blocks in self.up:
            if isinstance(blocks[0], ResBlock2D):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run_level(blocks, h, temb)
        return self._output(h, height, width)

    def _inputs(self, x: Tensor, t: Tensor | float, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        """The checked input with the conditioning concatenated, zero-padded to a multiple of
        ``2 ** n_down``, and the time embedding (shared with the feature-caching forward of
        :mod:`pydiff.accel`, which runs the same blocks in another order)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; expected [B, in_channels={self.in_channels}, H, W]"
            )
        b, _, height, width = x.shape
        if self.cond_channels:
            want = (b, self.cond_channels, height, width)
            if cond is None or tuple(cond.shape) != want:
                got = None if cond is None else tuple(cond.shape)
                raise ValueError(
                    f"cond has shape {got}; expected {want} (cond_channels={self.cond_channels})"
                )
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        elif cond is not None:
            raise ValueError("cond was given but the network was built with cond_channels=0")
        t = normalize_time(t, b, owner="UNet2D").to(x.device)
        temb = self.time_embed(t).to(x.dtype)

        mult = 2**self.n_down
        pad_h, pad_w = (-height) % mult, (-width) % mult
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return x, temb

    def _output(self, h: Tensor, height: int, width: int) -> Tensor:
        """The output head on the last features, cropped back to the input size."""
        h = self.conv_out(F.silu(self.norm_out(h)))
        return h[:, :, :height, :width]

    @staticmethod
    def _run_level(blocks: nn.ModuleList, h: Tensor, temb: Tensor) -> Tensor:
        for m in blocks:
            h = m(h, temb) if isinstance(m, ResBlock2D) else m(h)
        return h
