"""PatchParallel: a UNet2D evaluated in row bands, one band per rank (see the package doc)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..distributed import collective_errors, dist_info
from ..errors import InputError
from ..nn.embeddings import normalize_time
from ..nn.unet2d import AttnBlock2D, ColumnGroupNorm, ResBlock2D, UNet2D, _Down, _Up

MODES = ("sync",)


class PatchParallel(nn.Module):
    """Evaluate a :class:`~pydiff.nn.UNet2D` split into row bands across the process group.

    Args:
        model: the UNet2D (the same weights on every rank; it is put in eval mode).
        mode: ``"sync"``: every exchange happens when the layer needs it (the result equals
            the single-process model to float32 rounding).
        group: the process group (default: the whole world of :mod:`torch.distributed`;
            without an initialized group the wrapper is the plain model).

    ``forward(x, t, cond=None)`` takes and returns full-size tensors, like the model, on every
    rank. The image height must be a multiple of ``world_size * 2 ** (levels - 1)`` so every
    rank holds the same number of rows at every resolution. ``bytes_sent`` counts the bytes
    this rank sent since construction (point-to-point messages count once; a rank's share of
    an all-gather counts once per other rank), ``calls`` the forward calls.

    Example:
        >>> import torch
        >>> from pydiff.nn import UNet2D
        >>> net = UNet2D(1, base_channels=8, channel_mult=(1, 2))
        >>> PatchParallel(net)(torch.randn(1, 1, 8, 8), torch.rand(1)).shape
        torch.Size([1, 1, 8, 8])
    """

    def __init__(self, model: UNet2D, mode: str = "sync", group=None) -> None:
        super().__init__()
        if not isinstance(model, UNet2D):
            raise TypeError(f"PatchParallel: model is {type(model).__name__}; expected a "
                            "pydiff.nn.UNet2D")
        if mode not in MODES:
            raise InputError(f"PatchParallel: mode={mode!r}; expected one of {MODES}")
        self.model = model.eval()
        self.mode = mode
        self.group = group
        self.bytes_sent = 0
        self.calls = 0

    # -- topology ------------------------------------------------------------------------------

    def _world(self) -> tuple[int, int]:
        if self.group is not None:
            return dist.get_rank(self.group), dist.get_world_size(self.group)
        info = dist_info()
        return info.rank, info.world_size

    def _count(self, t: Tensor, times: int = 1) -> None:
        self.bytes_sent += t.numel() * t.element_size() * times

    # -- exchanges -----------------------------------------------------------------------------

    def _halo(self, h: Tensor, top: int, bottom: int) -> Tensor:
        """``h`` with ``top`` rows of the band above and ``bottom`` rows of the band below
        added (zeros at the image's edges), exchanged as one packed message per neighbour."""
        rank, world = self._world()
        padded = F.pad(h, (0, 0, top, bottom))
        if world == 1:
            return padded
        ops_list, recv = [], {}
        # the band above needs my first `bottom` rows; the band below my last `top` rows
        if rank > 0:
            if bottom:
                msg = ops.halo_pack([h], bottom, "top")
                ops_list.append(dist.P2POp(dist.isend, msg, rank - 1, self.group))
                self._count(msg)
            if top:
                recv["top"] = h.new_empty(h.shape[0] * h.shape[1] * top * h.shape[3])
                ops_list.append(dist.P2POp(dist.irecv, recv["top"], rank - 1, self.group))
        if rank < world - 1:
            if top:
                msg = ops.halo_pack([h], top, "bottom")
                ops_list.append(dist.P2POp(dist.isend, msg, rank + 1, self.group))
                self._count(msg)
            if bottom:
                recv["bottom"] = h.new_empty(h.shape[0] * h.shape[1] * bottom * h.shape[3])
                ops_list.append(dist.P2POp(dist.irecv, recv["bottom"], rank + 1, self.group))
        if ops_list:
            with collective_errors("halo rows"):
                for work in dist.batch_isend_irecv(ops_list):
                    work.wait()
        if "top" in recv:
            ops.halo_unpack(recv["top"], [padded], top, "top")
        if "bottom" in recv:
            ops.halo_unpack(recv["bottom"], [padded], bottom, "bottom")
        return padded

    def _all_gather(self, t: Tensor, what: str) -> list[Tensor]:
        _, world = self._world()
        if world == 1:
            return [t]
        t = t.contiguous()
        out = [torch.empty_like(t) for _ in range(world)]
        with collective_errors(what):
            dist.all_gather(out, t, group=self.group)
        self._count(t, world - 1)
        return out

    # -- layers --------------------------------------------------------------------------------

    def _conv(self, conv: nn.Conv2d, h: Tensor) -> Tensor:
        kh, kw = conv.kernel_size
        if (kh, kw) == (1, 1):
            return conv(h)
        ph, pw = conv.padding
        if conv.stride == (1, 1) and kh == 2 * ph + 1:
            top = bottom = ph
        elif conv.stride == (2, 2) and (kh, ph) == (3, 1):
            # a band starts at an even row: output row j reads rows 2j-1 .. 2j+1
            top, bottom = 1, 0
        else:
            raise NotImplementedError(f"PatchParallel: no halo rule for {conv}")
        padded = self._halo(h, top, bottom)
        return F.conv2d(padded, conv.weight, conv.bias, conv.stride, (0, pw), conv.dilation,
                        conv.groups)

    def _norm(self, norm: nn.GroupNorm, x: Tensor) -> Tensor:
        """GroupNorm with statistics merged over all bands: each rank's (count, mean, M2) per
        group (per group and column for ColumnGroupNorm), merged by Welford's parallel rule in
        float64."""
        b, c, hh, ww = x.shape
        g = norm.num_groups
        xg = x.reshape(b, g, c // g, hh, ww).double()
        dims = (2, 3) if isinstance(norm, ColumnGroupNorm) else (2, 3, 4)
        count = float(math.prod(xg.shape[d] for d in dims))
        mean = xg.mean(dims, keepdim=True)
        m2 = ((xg - mean) ** 2).sum(dims, keepdim=True)
        parts = self._all_gather(torch.stack([mean, m2]), "GroupNorm statistics")
        if len(parts) > 1:
            means = torch.stack([p[0] for p in parts])
            m2s = torch.stack([p[1] for p in parts])
            mean = means.mean(0)  # equal counts on every rank
            m2 = m2s.sum(0) + count * ((means - mean) ** 2).sum(0)
            count *= len(parts)
        var = m2 / count
        y = ((xg - mean) / torch.sqrt(var + norm.eps)).reshape(b, c, hh, ww).to(x.dtype)
        if norm.affine:
            y = y * norm.weight[:, None, None] + norm.bias[:, None, None]
        return y

    def _res(self, block: ResBlock2D, x: Tensor, temb: Tensor) -> Tensor:
        h = self._conv(block.conv1, F.silu(self._norm(block.norm1, x)))
        h = h + block.temb(F.silu(temb))[:, :, None, None]
        h = self._conv(block.conv2, block.dropout(F.silu(self._norm(block.norm2, h))))
        out = block.skip(x) + h
        return out / math.sqrt(2.0) if block.skip_rescale else out

    def _attn(self, block: AttnBlock2D, x: Tensor) -> Tensor:
        b, c, hh, ww = x.shape
        heads = block.num_heads
        qkv = block.qkv(self._norm(block.norm, x)).reshape(b, 3, heads, c // heads, hh * ww)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))
        # every band's K/V, in band order = the single-process row-major position order
        kv = self._all_gather(torch.stack([k, v]), "attention K/V")
        k_all = torch.cat([p[0] for p in kv], dim=2)
        v_all = torch.cat([p[1] for p in kv], dim=2)
        out = ops.attention(q, k_all, v_all).transpose(-1, -2).reshape(b, c, hh, ww)
        out = x + block.proj(out)
        return out / math.sqrt(2.0) if block.skip_rescale else out

    def _level(self, blocks: nn.ModuleList, h: Tensor, temb: Tensor) -> Tensor:
        for m in blocks:
            if isinstance(m, ResBlock2D):
                h = self._res(m, h, temb)
            elif isinstance(m, AttnBlock2D):
                h = self._attn(m, h)
            elif isinstance(m, _Down):
                h = self._conv(m.conv, h)
            elif isinstance(m, _Up):
                h = self._conv(m.conv, F.interpolate(h, scale_factor=2.0, mode="nearest"))
            elif not isinstance(m, nn.Identity):
                raise NotImplementedError(f"PatchParallel: no band rule for {type(m).__name__}")
        return h

    # -- forward -------------------------------------------------------------------------------

    def check_size(self, height: int) -> None:
        """Raise :class:`~pydiff.InputError` unless ``height`` splits into equal bands at every
        resolution of the model."""
        _, world = self._world()
        unit = world * 2 ** self.model.n_down
        if height % unit:
            raise InputError(
                f"image height {height} does not split across {world} ranks: expected a "
                f"multiple of {unit} (world size {world} x 2^{self.model.n_down} for the "
                "model's downsamplings)")

    @torch.no_grad()
    def forward(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        rank, world = self._world()
        net = self.model
        if world == 1:
            return net(x, t, cond=cond)
        if x.dim() != 4 or x.shape[1] != net.in_channels:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; expected [B, in_channels={net.in_channels}, H, W]")
        b, _, height, width = x.shape
        self.check_size(height)
        self.calls += 1
        if net.cond_channels:
            if cond is None or tuple(cond.shape) != (b, net.cond_channels, height, width):
                raise ValueError(f"cond must be [B, {net.cond_channels}, H, W] like x")
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        elif cond is not None:
            raise ValueError("cond was given but the network was built with cond_channels=0")
        temb = net.time_embed(normalize_time(t, b, owner="UNet2D").to(x.device)).to(x.dtype)
        rows = height // world
        h = x[:, :, rank * rows:(rank + 1) * rows]
        pad_w = (-width) % (2 ** net.n_down)
        if pad_w:
            h = F.pad(h, (0, pad_w))

        h = self._conv(net.conv_in, h)
        hs = [h]
        for blocks in net.down:
            h = self._level(blocks, h, temb)
            hs.append(h)
        h = self._res(net.mid[0], h, temb)
        if isinstance(net.mid[1], AttnBlock2D):
            h = self._attn(net.mid[1], h)
        h = self._res(net.mid[2], h, temb)
        for blocks in net.up:
            if isinstance(blocks[0], ResBlock2D):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._level(blocks, h, temb)
        h = self._conv(net.conv_out, F.silu(self._norm(net.norm_out, h)))
        bands = self._all_gather(h, "output bands")
        return torch.cat(bands, dim=2)[:, :, :, :width]
