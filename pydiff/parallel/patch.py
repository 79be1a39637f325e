"""PatchParallel: a UNet2D (rows of the image) or a DiT (runs of tokens) evaluated in bands, one
band per rank (see the package doc)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..distributed import (
    collective_errors,
    dist_info,
    side_group,
    track_in_flight,
    untrack_in_flight,
)
from ..errors import InputError
from ..nn.dit import DiT, DiTBlock, ImageDiT, _modulate, _per_token
from ..nn.embeddings import normalize_time
from ..nn.unet2d import AttnBlock2D, ColumnGroupNorm, ResBlock2D, UNet2D, _Down, _Up

MODES = ("sync", "displaced", "partial")
GN_CORRECTIONS = ("corrected", "shifted", "sync")

_Stats = tuple[Tensor, Tensor, Tensor]  # (count, mean, M2), float64, count broadcast to mean


def _merge(parts: list[_Stats]) -> _Stats:
    """Welford's parallel merge of (count, mean, M2) triples."""
    count = sum(p[0] for p in parts)
    mean = sum(p[0] * p[1] for p in parts) / count
    m2 = sum(p[2] + p[0] * (p[1] - mean) ** 2 for p in parts)
    return count, mean, m2


def _stats_map(stats: _Stats) -> Tensor:
    """(count, mean, M2) as a ``[1, 3, 1, N]`` float32 map, so it packs with the activations."""
    count, mean, m2 = stats
    return torch.stack([count.expand_as(mean), mean, m2]).reshape(1, 3, 1, -1).float()


def _map_stats(m: Tensor, like: Tensor) -> _Stats:
    parts = m.double().reshape(3, *like.shape)
    return parts[0], parts[1], parts[2]


def _merge_parts(parts: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Attention over keys split in parts, from each part's ``(out, lse)`` (``pydiff.ops.
    attention(..., return_lse=True)``): exact, ``sum_i exp(lse_i - lse) out_i`` with
    ``lse = logsumexp_i lse_i``; a query whose keys are all masked gets 0, as in one call."""
    if len(parts) == 1:
        return parts[0][0]
    lse = torch.logsumexp(torch.stack([p[1] for p in parts]), dim=0)
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    out = None
    for o, part_lse in parts:
        term = (part_lse - lse).exp().to(o.dtype)[..., None] * o
        out = term if out is None else out + term
    return out


def _quantize(m: Tensor) -> Tensor:
    """A map ``[B, C, n, 1]`` of tokens as int8 ``[B, C + 4, n, 1]``: each token (column of
    C numbers) scaled to [-127, 127] by its largest magnitude, its float32 scale's 4 bytes
    appended as 4 more channels (one dtype, so it packs with the other maps)."""
    scale = m.abs().amax(1, keepdim=True).float().clamp_min(1e-30) / 127.0  # [B, 1, n, 1]
    q = torch.round(m.float() / scale).clamp(-127, 127).to(torch.int8)
    b, _, n, _ = m.shape
    scale_bytes = scale.reshape(b, n, 1).contiguous().view(torch.int8)  # [B, n, 4]
    return torch.cat([q, scale_bytes.transpose(1, 2).unsqueeze(-1)], dim=1).contiguous()


def _dequantize(m: Tensor) -> Tensor:
    """The float32 tokens ``[B, C, n, 1]`` of a :func:`_quantize` map."""
    b, _, n, _ = m.shape
    scale = m[:, -4:, :, 0].transpose(1, 2).contiguous().view(torch.float32)  # [B, n, 1]
    return m[:, :-4].float() * scale.reshape(b, 1, n, 1)


def _extrapolated(new: dict[str, Any], old: dict[str, Any], ratio: float) -> dict[str, Any]:
    """The stale halos and K/V moved on along the line through the last two received:
    ``new + ratio (new - old)`` (GroupNorm statistics as received)."""

    def line(a: Tensor, b: Tensor | None) -> Tensor:
        return a if b is None or b.shape != a.shape else torch.lerp(a, b, -ratio)

    out = dict(new)
    for key in ("up", "down"):
        out[key] = {site: line(m, old.get(key, {}).get(site)) for site, m in new[key].items()}
    older_ranks = old.get("ranks", [])
    out["ranks"] = [{site: line(m, older_ranks[r].get(site) if r < len(older_ranks) else None)
                     for site, m in maps.items()} for r, maps in enumerate(new["ranks"])]
    return out


@dataclass
class PatchState:
    """The stale-activation state of one sampling run (modes ``displaced`` and ``partial``).

    ``step`` counts the network calls since the last :meth:`PatchParallel.reset`; ``stale``
    holds what the other ranks sent after the previous call (per layer site), ``pending``
    the exchanges still in flight. Nothing of it lives in the network's modules, so a reset
    between samplings makes every sampling reproducible.
    """

    step: int = 0
    signature: tuple | None = None
    stale: dict[str, Any] | None = None
    pending: dict[str, Any] | None = None
    raw: dict[str, Any] | None = None  # extrapolate: the stale state as received
    older: dict[str, Any] | None = None  # extrapolate: the one received the call before
    times: list[float] = field(default_factory=list)  # extrapolate: the calls' time inputs


@dataclass
class _Step:
    """What one network call records for the next call's stale exchange."""

    stale: bool
    record: bool
    site: int = 0
    up: list[tuple[int, Tensor, int]] = field(default_factory=list)  # (site, map, rows)
    down: list[tuple[int, Tensor, int]] = field(default_factory=list)
    gather: list[tuple[int, Tensor]] = field(default_factory=list)
    own: dict[int, Tensor] = field(default_factory=dict)  # partial: this band's statistics

    def next_site(self) -> int:
        self.site += 1
        return self.site


class PatchParallel(nn.Module):
    """Evaluate a :class:`~pydiff.nn.UNet2D` split into row bands across the process group.

    Args:
        model: the UNet2D (the same weights on every rank; it is put in eval mode).
        mode: ``"sync"``: every exchange happens when the layer needs it (the result equals
            the single-process model to float32 rounding). ``"displaced"`` (DistriFusion,
            Li et al. 2024): after ``warmup`` synchronous calls, every call uses the other
            bands' activations from the previous call: the halo rows of every convolution
            (one packed message per neighbour), the GroupNorm statistics of the other bands
            merged with this band's fresh ones (DistriFusion's corrected asynchronous
            GroupNorm) and the other bands' attention K/V beside the fresh local K/V (one
            packed all-gather); the messages leave at the end of a call, asynchronously, and
            are waited for only where the next call first needs them. ``"partial"`` (Partially
            Conditioned Patch Parallelism, Zhang et al. 2024): as displaced, but only
            neighbours talk: attention sees the fresh local K/V and the ``fraction`` of each
            neighbouring band's K/V rows nearest to it; GroupNorm statistics travel along the
            chain (each rank passes on the merged statistics of the bands beyond it, one call
            staler per hop). One packed message per neighbour per call; nothing else is
            all-gathered but the output (and the GroupNorm statistics with ``gn="sync"``).
            On a DiT, whose every layer attends over all tokens (the neighbours' nearest rows
            alone leave it no better than naive tiling), ``partial`` sends a compressed
            summary of every band's stale K/V instead: each block's normalized attention input
            (``norm1(x)``, half the numbers of K and V) in ``wire`` precision, one packed
            all-gather per call; the receiver rebuilds the other bands' K/V from it with this
            call's time modulation (adaLN shift and scale) and the block's K/V projection, so
            only the tokens are stale, not the noise level. A quarter of displaced's float32
            K/V bytes with ``wire=torch.float16``.
        group: the process group (default: the whole world of :mod:`torch.distributed`;
            without an initialized group the wrapper is the plain model).
        warmup: synchronous calls after each :meth:`reset` before the stale modes start.
        fraction: the share of a neighbouring band's rows whose K/V ``partial`` receives.
        gn: how stale calls treat the other bands' GroupNorm statistics: ``"corrected"``
            (DistriFusion: the previous call's, with this band's replaced by its fresh ones)
            or ``"shifted"`` (as corrected, and the others moved by this band's own change
            since the previous call; closer for samplers with few, large steps, see
            docs/parallel.md), or ``"sync"`` (DistriFusion's ``sync_gn``: the statistics, a
            few bytes per layer, exchanged synchronously by every GroupNorm, all else stale).
        extrapolate: stale calls use the other bands' halo rows and K/V moved on along the
            line through the last two received, ``new + r (new - old)`` with ``r`` the ratio
            of the time input's last two changes (no extra bytes: the previous message is
            kept). Worth most where every layer reads stale context (a DiT's attention).
        wire: the dtype of a DiT's ``partial`` tokens on the wire (default ``torch.float16``;
            ``torch.int8``: each token scaled by its largest magnitude, 8 bits a number and a
            float32 scale, which keeps partial under a third of displaced's bytes for a model
            run in half precision too; ``None``: the model's dtype, which makes a repeated
            input exact).

    ``forward(x, t, cond=None)`` takes and returns full-size tensors, like the model, on every
    rank. The image height must be a multiple of ``world_size * 2 ** (levels - 1)`` so every
    rank holds the same number of rows at every resolution. ``bytes_sent`` counts the bytes
    this rank sent since construction (point-to-point messages count once; a rank's share of
    an all-gather counts once per other rank), ``calls`` the forward calls, ``wait_seconds``
    the time spent in exchanges (blocking ones, and waiting for the stale messages).

    Example:
        >>> import torch
        >>> from pydiff.nn import UNet2D
        >>> net = UNet2D(1, base_channels=8, channel_mult=(1, 2))
        >>> PatchParallel(net)(torch.randn(1, 1, 8, 8), torch.rand(1)).shape
        torch.Size([1, 1, 8, 8])
    """

    def __init__(self, model: UNet2D | DiT | ImageDiT, mode: str = "sync", group=None, *,
                 warmup: int = 2, fraction: float = 0.125, gn: str = "sync",
                 extrapolate: bool = False, wire: torch.dtype | None = torch.float16) -> None:
        super().__init__()
        if not isinstance(model, (UNet2D, DiT, ImageDiT)):
            raise TypeError(f"PatchParallel: model is {type(model).__name__}; expected a "
                            "pydiff.nn.UNet2D, a pydiff.nn.DiT or a pydiff.nn.ImageDiT")
        if mode not in MODES:
            raise InputError(f"PatchParallel: mode={mode!r}; expected one of {MODES}")
        if int(warmup) < 1:
            raise InputError(f"PatchParallel: warmup={warmup}; expected at least 1 synchronous "
                             "call (the stale modes need a previous call's activations)")
        if not 0.0 < float(fraction) <= 1.0:
            raise InputError(f"PatchParallel: fraction={fraction}; expected 0 < fraction <= 1")
        self.model = model.eval()
        self.mode = mode
        self.group = group
        if gn not in GN_CORRECTIONS:
            raise InputError(f"PatchParallel: gn={gn!r}; expected one of {GN_CORRECTIONS}")
        self.warmup = int(warmup)
        self.gn = gn
        self.fraction = float(fraction)
        self.extrapolate = bool(extrapolate)
        if wire is not None and not (isinstance(wire, torch.dtype) and (
                wire.is_floating_point or wire == torch.int8)):
            raise InputError(f"PatchParallel: wire={wire!r}; expected a floating torch dtype, "
                             "torch.int8 "
                             "or None")
        self.wire = wire
        self.bytes_sent = 0
        self.calls = 0
        self.wait_seconds = 0.0
        self.state = PatchState()
        self._side = None
        self._step = _Step(stale=False, record=False)

    # -- topology ------------------------------------------------------------------------------

    def _world(self) -> tuple[int, int]:
        if self.group is not None:
            return dist.get_rank(self.group), dist.get_world_size(self.group)
        info = dist_info()
        return info.rank, info.world_size

    def _peer(self, rank: int) -> int:
        """The global rank of the group's ``rank``: point-to-point operations name their peer
        by its global rank, whatever group they run on."""
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

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
                ops_list.append(dist.P2POp(dist.isend, msg, self._peer(rank - 1), self.group))
                self._count(msg)
            if top:
                recv["top"] = h.new_empty(h.shape[0] * h.shape[1] * top * h.shape[3])
                ops_list.append(dist.P2POp(dist.irecv, recv["top"], self._peer(rank - 1),
                                           self.group))
        if rank < world - 1:
            if top:
                msg = ops.halo_pack([h], top, "bottom")
                ops_list.append(dist.P2POp(dist.isend, msg, self._peer(rank + 1), self.group))
                self._count(msg)
            if bottom:
                recv["bottom"] = h.new_empty(h.shape[0] * h.shape[1] * bottom * h.shape[3])
                ops_list.append(dist.P2POp(dist.irecv, recv["bottom"], self._peer(rank + 1),
                                          self.group))
        if ops_list:
            start = time.perf_counter()
            with collective_errors("halo rows"):
                for work in dist.batch_isend_irecv(ops_list):
                    work.wait()
            self.wait_seconds += time.perf_counter() - start
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
        start = time.perf_counter()
        with collective_errors(what):
            dist.all_gather(out, t, group=self.group)
        self.wait_seconds += time.perf_counter() - start
        self._count(t, world - 1)
        return out

    # -- the stale exchange (displaced, partial) ------------------------------------------------

    def reset(self) -> None:
        """Start a new sampling: wait for messages still in flight, forget the stale state.

        Example:
            >>> from pydiff.nn import UNet2D
            >>> PatchParallel(UNet2D(1, base_channels=8), mode="displaced").reset()
        """
        self._wait()
        self.state = PatchState()

    def _wait(self) -> None:
        """Complete the exchange started by the previous call; unpack it into ``state.stale``."""
        pending = self.state.pending
        if pending is None:
            return
        self.state.pending = None
        start = time.perf_counter()
        with collective_errors("stale activations"):
            for work in pending["works"]:
                work.wait()
        untrack_in_flight(pending["works"])
        self.wait_seconds += time.perf_counter() - start
        stale: dict[str, Any] = {"up": {}, "down": {}, "ranks": []}
        # the neighbour above sent its "down" list, the one below its "up" list: same shapes
        # as ours (equal bands)
        for key, spec, side in (("up", pending["down_spec"], "top"),
                                ("down", pending["up_spec"], "top")):
            buf = pending.get("recv_" + key)
            if buf is None:
                continue
            dests = [torch.empty(shape, dtype=buf.dtype, device=buf.device) for _, shape, _ in spec]
            ops.halo_unpack(buf, dests, [rows for _, _, rows in spec], side)
            stale[key] = {site: d for (site, _, _), d in zip(spec, dests)}
        for buf in pending.get("gathered", []):
            spec = pending["gather_spec"]
            if buf.is_floating_point() and buf.element_size() < 4:
                buf = buf.float()  # a DiT's partial tokens: extrapolate in float32
            dests = [torch.empty(shape, dtype=buf.dtype, device=buf.device) for _, shape in spec]
            ops.halo_unpack(buf, dests, [shape[2] for _, shape in spec], "top")
            stale["ranks"].append({site: _dequantize(d) if d.dtype == torch.int8 else d
                                   for (site, _), d in zip(spec, dests)})
        stale["own"] = pending["own"]
        self.state.older, self.state.raw = self.state.raw, stale
        self.state.stale = stale

    def _launch(self, step: _Step) -> None:
        """Send this call's messages for the next call, asynchronously: one packed message per
        neighbour (halo_pack), and for ``displaced`` one packed all-gather."""
        rank, world = self._world()
        if self._side is None:
            ranks = None if self.group is None else dist.get_process_group_ranks(self.group)
            self._side = side_group(ranks)
        up = [(m, r) for _, m, r in step.up]
        down = [(m, r) for _, m, r in step.down]
        pending: dict[str, Any] = {
            "works": [],
            "up_spec": [(site, (*m.shape[:2], r, m.shape[3]), r) for site, m, r in step.up],
            "down_spec": [(site, (*m.shape[:2], r, m.shape[3]), r) for site, m, r in step.down],
            "gather_spec": [(site, tuple(m.shape)) for site, m in step.gather],
            "own": step.own,
        }
        p2p = []
        with collective_errors("stale activations"):
            if rank > 0 and up:
                msg = ops.halo_pack([m for m, _ in up], [r for _, r in up], "top")
                p2p.append(dist.P2POp(dist.isend, msg, self._peer(rank - 1), self._side))
                self._count(msg)
                pending["recv_up"] = msg.new_empty(sum(math.prod(shape) for _, shape, _ in
                                                       pending["down_spec"]))
                p2p.append(dist.P2POp(dist.irecv, pending["recv_up"], self._peer(rank - 1),
                                       self._side))
            if rank < world - 1 and down:
                msg = ops.halo_pack([m for m, _ in down], [r for _, r in down], "bottom")
                p2p.append(dist.P2POp(dist.isend, msg, self._peer(rank + 1), self._side))
                self._count(msg)
                pending["recv_down"] = msg.new_empty(sum(math.prod(shape) for _, shape, _ in
                                                         pending["up_spec"]))
                p2p.append(dist.P2POp(dist.irecv, pending["recv_down"], self._peer(rank + 1),
                                       self._side))
            if p2p:
                pending["works"] += dist.batch_isend_irecv(p2p)
            if step.gather:
                maps = [m for _, m in step.gather]
                flat = ops.halo_pack(maps, [m.shape[2] for m in maps], "top")
                pending["gathered"] = [torch.empty_like(flat) for _ in range(world)]
                pending["works"].append(dist.all_gather(pending["gathered"], flat,
                                                        group=self._side, async_op=True))
                self._count(flat, world - 1)
        self.state.pending = pending
        # destroying the group waits for them, if no later call or reset() does
        track_in_flight(pending["works"])

    # -- layers --------------------------------------------------------------------------------

    def _conv(self, conv: nn.Conv2d, h: Tensor) -> Tensor:
        top, bottom = self._halo_rows(conv)
        if (top, bottom) == (0, 0):
            return conv(h)
        step = self._step
        site = step.next_site()
        if step.record:  # the band above needs my first rows, the band below my last ones
            step.up.append((site, h[:, :, :bottom], bottom))
            step.down.append((site, h[:, :, h.shape[2] - top:], top))
        if step.stale:
            rank, world = self._world()
            padded = F.pad(h, (0, 0, top, bottom))
            stale = self.state.stale
            if rank > 0 and top:
                padded[:, :, :top] = stale["up"][site]
            if rank < world - 1 and bottom:
                padded[:, :, padded.shape[2] - bottom:] = stale["down"][site]
        else:
            padded = self._halo(h, top, bottom)
        return self._conv_padded(conv, padded)

    @staticmethod
    def _halo_rows(conv: nn.Conv2d) -> tuple[int, int]:
        """Rows a band of ``conv``'s input needs from above and below its own."""
        kh, kw = conv.kernel_size
        if (kh, kw) == (1, 1):
            return 0, 0
        ph, _ = conv.padding
        if conv.stride == (1, 1) and kh == 2 * ph + 1:
            return ph, ph
        if conv.stride == (2, 2) and (kh, ph) == (3, 1):
            # a band starts at an even row: output row j reads rows 2j-1 .. 2j+1
            return 1, 0
        raise NotImplementedError(f"PatchParallel: no halo rule for {conv}")

    @staticmethod
    def _conv_padded(conv: nn.Conv2d, padded: Tensor) -> Tensor:
        return F.conv2d(padded, conv.weight, conv.bias, conv.stride, (0, conv.padding[1]),
                        conv.dilation, conv.groups)

    def _norm(self, norm: nn.GroupNorm, x: Tensor) -> Tensor:
        """GroupNorm with statistics merged over all bands: each rank's (count, mean, M2) per
        group (per group and column for ColumnGroupNorm), merged by Welford's parallel rule in
        float64. Stale calls merge this band's fresh statistics with the others' previous ones
        (DistriFusion's correction: the stale copy of one's own band is replaced by the fresh)."""
        b, c, hh, ww = x.shape
        g = norm.num_groups
        xg = x.reshape(b, g, c // g, hh, ww).double()
        dims = (2, 3) if isinstance(norm, ColumnGroupNorm) else (2, 3, 4)
        mean = xg.mean(dims, keepdim=True)
        m2 = ((xg - mean) ** 2).sum(dims, keepdim=True)
        own = (torch.full_like(mean, float(math.prod(xg.shape[d] for d in dims))), mean, m2)
        rank, world = self._world()
        step = self._step
        site = step.next_site()
        above: list[_Stats] = []  # the bands above this one, merged or one by one
        below: list[_Stats] = []
        if step.stale and self.gn != "sync":
            stale = self.state.stale
            if self.mode == "displaced":
                # equal bands: every rank's count is this rank's
                ranks = [(own[0], *r[site].double().reshape(2, *mean.shape))
                         for r in stale["ranks"]]
                above, below = ranks[:rank], ranks[rank + 1:]
                mine = ranks[rank]
            else:
                above = [_map_stats(stale["up"][site], mean)] if rank > 0 else []
                below = [_map_stats(stale["down"][site], mean)] if rank < world - 1 else []
                mine = _map_stats(stale["own"][site], mean)
            if self.gn == "shifted":
                above, below = self._shift(above, own, mine), self._shift(below, own, mine)
        elif world > 1:
            parts = self._all_gather(torch.stack([mean, m2]), "GroupNorm statistics")
            ranks = [(own[0], p[0], p[1]) for p in parts]
            above, below = ranks[:rank], ranks[rank + 1:]
        if step.record and self.gn != "sync":
            if self.mode == "displaced":
                step.gather.append((site, torch.stack([mean, m2]).reshape(1, 2, 1, -1).float()))
            else:  # the chain: each neighbour gets everything on this side of it
                step.up.append((site, _stats_map(_merge([own] + below)), 1))
                step.down.append((site, _stats_map(_merge(above + [own])), 1))
                step.own[site] = _stats_map(own)
        count, mean, m2 = _merge(above + [own] + below)
        var = m2 / count
        y = ((xg - mean) / torch.sqrt(var + norm.eps)).reshape(b, c, hh, ww).to(x.dtype)
        if norm.affine:
            y = y * norm.weight[:, None, None] + norm.bias[:, None, None]
        return y

    @staticmethod
    def _shift(parts: list[_Stats], own: _Stats, previous: _Stats) -> list[_Stats]:
        """Other bands' previous statistics moved by this band's change since the previous
        call (mean by the mean's change, M2 by the per-element M2 change times their count):
        between diffusion steps the statistics move mostly together (the noise level changes
        everywhere), which the previous call's values miss."""
        d_mean = own[1] - previous[1]
        d_m2 = (own[2] - previous[2]) / own[0]
        return [(c, m + d_mean, (m2 + d_m2 * c).clamp_min(0.0)) for c, m, m2 in parts]

    def _res(self, block: ResBlock2D, x: Tensor, temb: Tensor) -> Tensor:
        h = self._conv(block.conv1, F.silu(self._norm(block.norm1, x)))
        h = h + block.temb(F.silu(temb))[:, :, None, None]
        h = self._conv(block.conv2, block.dropout(F.silu(self._norm(block.norm2, h))))
        out = block.skip(x) + h
        return out / math.sqrt(2.0) if block.skip_rescale else out

    def _attn(self, block: AttnBlock2D, x: Tensor) -> Tensor:
        b, c, hh, ww = x.shape
        heads = block.num_heads
        qkv = block.qkv(self._norm(block.norm, x))
        q = qkv[:, :c].reshape(b, heads, c // heads, hh * ww).transpose(-1, -2)
        # K and V as maps [B, 2C, h, w], so their rows pack like activations
        out = self._attend(q, qkv[:, c:], heads).transpose(-1, -2).reshape(b, c, hh, ww)
        out = x + block.proj(out)
        return out / math.sqrt(2.0) if block.skip_rescale else out

    def _attend(self, q: Tensor, kv: Tensor, heads: int, mask: Tensor | None = None,
                compressed: tuple[Tensor | None, Any] | None = None) -> Tensor:
        """This band's queries ``q [B, H, n, D]`` attending over the keys and values of every
        band. ``kv [B, 2 H D, rows, W]`` is this band's K and V as a map (rows of the image or,
        with ``W = 1``, tokens of a sequence), ``mask [B, L]`` an optional key mask over the
        whole row-major sequence. Each band's K/V part is attended separately and the parts
        are merged exactly through their log-sum-exps (:func:`_merge_parts`): in sync calls the
        local part is computed while the other bands' K/V are being all-gathered; stale calls
        take the others' (displaced: every band's; partial: the neighbours' nearest rows) from
        the previous call. ``compressed`` (a DiT's partial mode): ``(map, rebuild)``, the
        map this band sends for the next call (None when not recording) and
        ``rebuild(received_map, rank)``, a band's K/V map from the map it sent."""
        rank, world = self._world()
        step = self._step
        site = step.next_site()
        rows, width = kv.shape[2], kv.shape[3]
        start = rank * rows  # this band's first row in the image

        def part(m: Tensor, first_row: int) -> tuple[Tensor, Tensor]:
            k, v = (z.transpose(-1, -2) for z in m.reshape(m.shape[0], 2, heads, -1,
                                                             m.shape[2] * width).unbind(1))
            keep = None if mask is None else \
                mask[:, first_row * width:(first_row + m.shape[2]) * width]
            return ops.attention(q, k, v, mask=keep, return_lse=True)

        if step.stale:
            stale = self.state.stale
            if self.mode == "displaced":  # every band's previous K/V, this band's fresh
                parts = [part(kv if r == rank else stale["ranks"][r][site], r * rows)
                         for r in range(world)]
            elif compressed is not None:  # every band's K/V rebuilt from its sent summary
                parts = [part(kv if r == rank else compressed[1](stale["ranks"][r][site], r),
                              r * rows) for r in range(world)]
            else:  # fresh local K/V and the nearest rows of the neighbours' previous K/V
                parts = [part(kv, start)]
                if rank > 0:
                    above = stale["up"][site]
                    parts.append(part(above, start - above.shape[2]))
                if rank < world - 1:
                    parts.append(part(stale["down"][site], start + rows))
        else:
            parts = self._attend_sync(kv, part, rank, world)
        if step.record:
            if self.mode == "displaced":
                step.gather.append((site, kv))
            elif compressed is not None:
                step.gather.append((site, compressed[0]))
            else:
                n = self._partial_rows(rows)
                step.up.append((site, kv[:, :, :n], n))
                step.down.append((site, kv[:, :, rows - n:], n))
        return _merge_parts(parts)

    def _attend_sync(self, kv: Tensor, part, rank: int, world: int) -> list[tuple[Tensor, Tensor]]:
        """Every band's K/V part now: the all-gather runs while the local part is computed."""
        if world == 1:
            return [part(kv, 0)]
        flat = kv.contiguous()
        gathered = [torch.empty_like(flat) for _ in range(world)]
        with collective_errors("attention K/V"):
            work = dist.all_gather(gathered, flat, group=self.group, async_op=True)
        self._count(flat, world - 1)
        rows = kv.shape[2]
        parts = [part(kv, rank * rows)]
        begin = time.perf_counter()
        with collective_errors("attention K/V"):
            work.wait()
        self.wait_seconds += time.perf_counter() - begin
        return parts + [part(gathered[r], r * rows) for r in range(world) if r != rank]

    def _partial_rows(self, rows: int) -> int:
        """Rows of a neighbour's band whose K/V ``partial`` exchanges (at least one)."""
        return min(rows, max(1, math.ceil(self.fraction * rows)))

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
        """Raise :class:`~pydiff.InputError` unless ``height`` (a UNet2D's image rows, a DiT's
        sequence length) splits into equal bands at every resolution of the model."""
        _, world = self._world()
        if isinstance(self.model, ImageDiT):
            unit = world * self.model.patch
            if height % unit:
                raise InputError(
                    f"image height {height} does not split across {world} ranks: expected a "
                    f"multiple of {unit} (world size {world} x patch {self.model.patch})")
            return
        if isinstance(self.model, DiT):
            if height % world:
                raise InputError(f"sequence length {height} does not split across {world} "
                                 f"ranks: expected a multiple of {world}")
            return
        unit = world * 2 ** self.model.n_down
        if height % unit:
            raise InputError(
                f"image height {height} does not split across {world} ranks: expected a "
                f"multiple of {unit} (world size {world} x 2^{self.model.n_down} for the "
                "model's downsamplings)")

    @torch.no_grad()
    def forward(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None,
                **dit_inputs: Tensor | None) -> Tensor:
        """The model's output for full-size inputs, on every rank: ``(x, t, cond=None)`` for a
        UNet2D, ``(x, t, global_cond=None, mask=None)`` for a DiT, ``(x, t)`` for an
        ImageDiT (bands of patch rows)."""
        if isinstance(self.model, ImageDiT):
            if cond is not None or dit_inputs:
                raise TypeError("PatchParallel: an ImageDiT takes (x, t) only")
            image = self.model
            _, world = self._world()
            if world == 1:
                return image(x, t)
            self.check_size(x.shape[-2])
            out = self._forward_dit(image.to_tokens(x), t, net=image.dit)
            return image.to_image(out, x.shape[-2], x.shape[-1])
        if isinstance(self.model, DiT):
            if cond is not None:
                raise TypeError("PatchParallel: a DiT takes global_cond= and mask=, not cond=")
            return self._forward_dit(x, t, **dit_inputs)
        if dit_inputs:
            raise TypeError(f"PatchParallel: unexpected inputs {sorted(dit_inputs)} for a UNet2D")
        return self._forward_unet(x, t, cond)

    def _forward_unet(self, x: Tensor, t: Tensor | float, cond: Tensor | None) -> Tensor:
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
        pad_w = (-width) % (2 ** net.n_down)
        if pad_w:
            x = F.pad(x, (0, pad_w))
        h = self._run(x, lambda: self._bands(net, x, temb, rank, world), t)
        bands = self._all_gather(h, "output bands")
        return torch.cat(bands, dim=2)[:, :, :, :width]

    def _forward_dit(self, x: Tensor, t: Tensor | float, global_cond: Tensor | None = None,
                     mask: Tensor | None = None, net: DiT | None = None) -> Tensor:
        """A DiT over a sequence ``x [B, C, L]`` (an image's pixels or patches in row-major
        order: bands of tokens are bands of rows): each rank embeds and transforms its run of
        ``L / world`` tokens; only self-attention needs the others (their K/V). ``net``: the
        DiT (default the wrapped model; an ImageDiT's inner one)."""
        rank, world = self._world()
        net = self.model if net is None else net
        if world == 1:
            return net(x, t, global_cond=global_cond, mask=mask)
        if x.dim() != 3 or x.shape[1] != net.in_channels:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; expected [B, in_channels={net.in_channels}, L]")
        b, _, length = x.shape
        self.check_size(length)
        if mask is not None and tuple(mask.shape) != (b, length):
            raise ValueError(f"mask has shape {tuple(mask.shape)}; expected [B, L] = {(b, length)}")
        self.calls += 1
        rows = length // world
        lo, hi = rank * rows, (rank + 1) * rows
        c_all = net.condition(t, b, length, global_cond, x.device)
        c = c_all[:, lo:hi] if c_all.dim() == 3 else c_all  # per-position time: this band's
        h = net.tokens(x[:, :, lo:hi], torch.arange(lo, hi, device=x.device))

        def blocks() -> Tensor:
            out = h
            for blk in net.blocks:
                out = blk.forward_with(out, c, lambda a, blk=blk, inp=out: self._dit_attn(
                    blk, a, inp, c_all, mask))
            return out

        out = net.head(self._run(x, blocks, t), c).contiguous()
        return torch.cat(self._all_gather(out, "output bands"), dim=2)

    def _dit_attn(self, blk: DiTBlock, a: Tensor, x: Tensor, c_all: Tensor,
                  mask: Tensor | None) -> Tensor:
        """A DiT block's self-attention for this band: ``a`` its modulated input, ``x`` the
        block's input, ``c_all`` the condition of every token (``[B, D]`` or ``[B, L, D]``)."""
        attn = blk.attn
        b, n, _ = a.shape
        q = attn._heads(attn.to_q(a))
        kv = attn.to_kv(a).transpose(1, 2).unsqueeze(-1)  # [B, 2D, n, 1]: tokens as map rows
        compressed = None
        if self.mode == "partial":
            step = self._step
            send = None
            if step.record:  # the normalized block input, before this call's modulation
                send = blk.norm1(x).transpose(1, 2).unsqueeze(-1)
                send = _quantize(send) if self.wire == torch.int8 else \
                    send.to(self.wire or send.dtype).contiguous()
            modulation: list[Tensor] = []

            def rebuild(m: Tensor, r: int) -> Tensor:
                if not modulation:  # this call's adaLN shift and scale, once per block
                    modulation.extend(_per_token(p) for p in blk.ada(c_all).chunk(6, -1)[:2])
                shift, scale = modulation
                if shift.shape[1] > 1:  # per-position time: band r's tokens
                    shift, scale = shift[:, r * n:(r + 1) * n], scale[:, r * n:(r + 1) * n]
                tokens = m.squeeze(-1).transpose(1, 2).to(a.dtype)
                return attn.to_kv(_modulate(tokens, shift, scale)).transpose(1, 2).unsqueeze(-1)

            compressed = (send, rebuild)
        out = self._attend(q, kv, attn.num_heads, mask, compressed)
        return attn.proj(out.transpose(1, 2).reshape(b, n, -1))

    def _run(self, x: Tensor, body, t: Tensor | float = 0.0) -> Tensor:
        """``body()`` (the band's layers) as one call: stale or synchronous (:meth:`_begin`),
        its stale messages launched at the end, in flight during the output gather."""
        self._step = self._begin(x, t)
        try:
            h = body()
            if self._step.record:
                self._launch(self._step)
        finally:
            self._step = _Step(stale=False, record=False)
        return h

    def _begin(self, x: Tensor, t: Tensor | float = 0.0) -> _Step:
        """This call's plan: stale (the previous call's activations) or synchronous, and
        whether it records activations for the next call."""
        if self.mode == "sync":
            return _Step(stale=False, record=False)
        state = self.state
        signature = (tuple(x.shape), x.dtype, x.device)
        self._wait()
        if signature != state.signature:  # a new shape (e.g. a CFG batch): warm up again
            state.step, state.stale, state.signature = 0, None, signature
        stale = state.step >= self.warmup and state.stale is not None
        state.step += 1
        if self.extrapolate:
            state.times.append(float(torch.as_tensor(t, dtype=torch.float64).mean()))
            if stale and state.older is not None and len(state.times) >= 3:
                t0, t1, t2 = state.times[-3:]
                if t1 != t0:
                    state.stale = _extrapolated(state.raw, state.older, (t2 - t1) / (t1 - t0))
        return _Step(stale=stale, record=state.step >= self.warmup)

    def _bands(self, net: UNet2D, x: Tensor, temb: Tensor, rank: int, world: int) -> Tensor:
        rows = x.shape[2] // world
        # the input is replicated on every rank: conv_in's halo rows come from it, not a message
        top, bottom = self._halo_rows(net.conv_in)
        padded = F.pad(x, (0, 0, top, bottom))[:, :, rank * rows:(rank + 1) * rows + top + bottom]
        h = self._conv_padded(net.conv_in, padded)
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
        return self._conv(net.conv_out, F.silu(self._norm(net.norm_out, h)))
