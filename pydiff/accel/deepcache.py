"""DeepCache (Ma et al. 2024): reuse a UNet's deep features across neighbouring steps.

Adjacent denoising steps change a UNet's high-level features little. A *full* call runs the
whole network and keeps the features that enter the up-path block consuming one shallow skip
connection (the *branch*); the next ``interval - 1`` calls run only the shallow part (the
input convolution and down blocks that produce that skip, then the rest of the up path and the
output head) on the cached deep features.

The cache is an explicit :class:`DeepCacheState`, not a module attribute: it reaches the
network as conditioning (``model.bind(deep_cache=state)``), so one network and one
:class:`pydiff.Denoiser` serve any number of concurrent samplers, each with its own state, and
every core solver, guidance wrapper and :func:`pydiff.sample` works unchanged.

Example:
    >>> import torch, pydiff
    >>> from pydiff.nn import UNet2D
    >>> from pydiff.accel import DeepCache, DeepCacheState
    >>> net = DeepCache(UNet2D(1, base_channels=8, channel_mult=(1, 2)))
    >>> model = pydiff.Denoiser(net, pydiff.VPSchedule(), prediction="eps")
    >>> cache = DeepCacheState(interval=3)
    >>> x_T = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> with torch.no_grad():
    ...     x = pydiff.sample(model.bind(deep_cache=cache), x_T, "ddim", steps=7)
    >>> x.shape, cache.full_calls, cache.cached_calls     # full at calls 0, 3, 6
    (torch.Size([2, 1, 16, 16]), 3, 4)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..nn.unet1d import UNet1D
from ..nn.unet2d import ResBlock2D, UNet2D

__all__ = ["DeepCache", "DeepCacheState"]


@dataclass
class DeepCacheState:
    """The feature cache of one sampling run (one per concurrent sampler).

    Args:
        interval: a full network call every ``interval`` calls (1 = no reuse: every call is
            full and equals the plain network exactly); the calls between reuse the deep
            features of the last full call. Every network evaluation counts as a call, so a
            two-stage solver (Heun) uses ``interval`` evaluations, not steps.
        refresh: instead of ``interval``, the indices of the calls that run in full (a
            non-uniform schedule, e.g. :meth:`front_loaded`); call 0 always does.
        extrapolate: a cached call uses the deep features extrapolated in the network's time
            input, through the last ``extrapolate + 1`` full calls (``True`` or 1: the line
            through the last two; 2: the parabola through the last three; a few multiply-adds
            on the cached maps) instead of the last full call's as they are.

    Attributes:
        calls, full_calls, cached_calls: network calls so far, and how they were served.
        features: the cached deep features (detached: they are constants of later calls), or
            None before the first call. A call whose input differs in shape, dtype or device
            from the one that filled the cache recomputes it.

    Reuse a state for a new run only after :meth:`reset`.
    """

    interval: int = 3
    refresh: tuple[int, ...] | None = None
    extrapolate: bool | int = False
    calls: int = 0
    full_calls: int = 0
    cached_calls: int = 0
    features: Tensor | None = field(default=None, repr=False)
    key: tuple | None = field(default=None, repr=False)
    _history: list = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.interval, bool) or not isinstance(self.interval, int) \
                or self.interval < 1:
            raise InputError(f"DeepCacheState: interval={self.interval!r}; expected an integer "
                             ">= 1 (a full network call every `interval` calls)")
        if self.extrapolate not in (False, True, 0, 1, 2):
            raise InputError(f"DeepCacheState: extrapolate={self.extrapolate!r}; expected "
                             "False, True (linear) or 2 (quadratic)")
        if self.refresh is not None:
            calls = tuple(self.refresh)
            if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                       for c in calls):
                raise InputError(f"DeepCacheState: refresh={self.refresh!r}; expected call "
                                 "indices >= 0")
            self.refresh = tuple(sorted(set(calls) | {0}))

    @classmethod
    def power_schedule(cls, calls: int, full: int, power: float = 0.5,
                       extrapolate: bool | int = False) -> DeepCacheState:
        """A non-uniform schedule of ``full`` full calls out of ``calls``: full call k at
        ``round(calls * (k / full) ** power)``. ``power < 1`` makes full calls sparse at the
        start of sampling (high noise, where a cached call's error is washed out by the steps
        after it) and dense at its end (low noise, where the sample's detail is decided and
        an error stays); ``power = 1`` spreads them evenly, ``power > 1`` packs them at the
        start. BENCHMARKS.md ("DeepCache") compares them at equal numbers of full calls.

        Example:
            >>> DeepCacheState.power_schedule(20, 7).refresh
            (0, 8, 11, 13, 15, 17, 19)
        """
        if not 1 <= full <= calls:
            raise InputError(f"DeepCacheState.power_schedule: full={full}; expected 1 .. "
                             f"calls={calls}")
        if not power > 0:
            raise InputError(f"DeepCacheState.power_schedule: power={power}; expected > 0")
        picks: list[int] = []
        for k in range(full):
            c = max(round(calls * (k / full) ** power), picks[-1] + 1 if picks else 0)
            picks.append(c)
        # a schedule crowded at one end can run out of room: pull the overflow back
        for k in range(full - 1, -1, -1):
            picks[k] = min(picks[k], calls - full + k)
        return cls(refresh=tuple(picks), extrapolate=extrapolate)

    def reset(self) -> None:
        """Forget the features and counters (start of a new run)."""
        self.calls = self.full_calls = self.cached_calls = 0
        self.features = self.key = None
        self._history = []

    def _full_due(self, key: tuple) -> bool:
        if self.refresh is not None:
            scheduled = self.calls in self.refresh
        else:
            scheduled = self.calls % self.interval == 0
        due = self.features is None or self.key != key or scheduled
        self.calls += 1
        if due:
            self.full_calls += 1
        else:
            self.cached_calls += 1
        return due

    def _store(self, key: tuple, features: Tensor, t: Tensor | float) -> None:
        if self.key != key:
            self._history = []
        self.key, self.features = key, features.detach()
        order = int(self.extrapolate)
        if order:
            self._history = [*self._history[len(self._history) - order:],
                             (_time_column(t, features), self.features)]

    def _cached(self, t: Tensor | float) -> Tensor:
        """The deep features for a cached call at time input ``t``: the Lagrange polynomial
        through the last full calls (as many as there are, up to ``extrapolate + 1``)."""
        nodes = self._history[-(int(self.extrapolate) + 1):]
        if len(nodes) < 2:
            return self.features
        t = _time_column(t, self.features)
        times = [tn for tn, _ in nodes]
        # per sample: one whose full calls share a time keeps its last features
        distinct = torch.ones_like(t, dtype=torch.bool)
        for a in range(len(times)):
            for b in range(a + 1, len(times)):
                distinct &= times[a] != times[b]
        out = None
        for a, (ta, fa) in enumerate(nodes):
            weight = torch.ones_like(t)
            for b, tb in enumerate(times):
                if b != a:
                    weight = weight * (t - tb) / torch.where(distinct, ta - tb, 1.0)
            weight = torch.where(distinct, weight, 1.0 if a == len(nodes) - 1 else 0.0)
            term = fa * weight.to(fa.dtype)
            out = term if out is None else out + term
        return out


def _time_column(t: Tensor | float, like: Tensor) -> Tensor:
    """A network's per-sample time input as ``[B, 1, ...]`` float64 (for extrapolation)."""
    t = torch.as_tensor(t, dtype=torch.float64, device=like.device)
    if t.dim() > 1:  # per-position times: their mean per sample
        t = t.reshape(t.shape[0], -1).mean(dim=1)
    return t.reshape(-1, *([1] * (like.dim() - 1))).expand(like.shape[0], *([1] * (like.dim() - 1)))


class DeepCache(nn.Module):
    """A :class:`~pydiff.nn.UNet2D` or :class:`~pydiff.nn.UNet1D` that reuses its deep
    features when called with a :class:`DeepCacheState` (see the module docstring).

    Args:
        net: the UNet (its weights are shared, not copied).
        branch: which skip connection separates shallow from deep, 0 being the shallowest the
            up path consumes. A cached call recomputes the down path up to that skip and the
            up path from the block that consumes it; larger branches recompute more (slower,
            closer to the full network). UNet2D: ``0 .. len(net.down)``; UNet1D (whose finest
            skip is never consumed): ``0 .. len(down_dims) - 2``.

    ``forward(x, t, ..., deep_cache=None)`` takes the wrapped network's arguments (``cond``
    for UNet2D, ``global_cond`` for UNet1D); without ``deep_cache`` it is the plain network.
    """

    def __init__(self, net: UNet2D | UNet1D, branch: int = 0) -> None:
        super().__init__()
        if not isinstance(net, (UNet2D, UNet1D)):
            raise TypeError(f"DeepCache: net is {type(net).__name__}; expected a "
                            "pydiff.nn.UNet2D or pydiff.nn.UNet1D")
        # the up-path index of the block that consumes skip `branch`
        if isinstance(net, UNet2D):
            n_skips = len(net.down) + 1
            consumers = [j for j, blocks in enumerate(net.up)
                         if isinstance(blocks[0], ResBlock2D)]  # k-th pops skip n_skips-1-k
            limit = n_skips - 1
        else:
            limit = len(net.down) - 2
        if isinstance(branch, bool) or not isinstance(branch, int) or not 0 <= branch <= limit:
            raise InputError(f"DeepCache: branch={branch!r}; this {type(net).__name__} has "
                             f"branches 0 .. {limit}")
        self.net, self.branch = net, branch
        if isinstance(net, UNet2D):
            self._start = consumers[n_skips - 1 - branch]
        else:  # up[j] consumes skips[n - 1 - j]; branch b is skips[b + 1]
            self._start = len(net.down) - 2 - branch

    @property
    def config(self) -> dict[str, Any]:
        """The wrapped network's constructor kwargs."""
        return self.net.config

    def forward(self, x: Tensor, t: Tensor | float, *args: Any,
                deep_cache: DeepCacheState | None = None, **kwargs: Any) -> Tensor:
        if deep_cache is None:
            return self.net(x, t, *args, **kwargs)
        if not isinstance(deep_cache, DeepCacheState):
            raise TypeError(f"deep_cache is {type(deep_cache).__name__}; expected a "
                            "pydiff.accel.DeepCacheState")
        key = (tuple(x.shape), x.dtype, x.device)
        full = deep_cache._full_due(key)
        run = self._unet2d if isinstance(self.net, UNet2D) else self._unet1d
        out, features = run(x, t, *args, deep=None if full else deep_cache._cached(t), **kwargs)
        if full:
            deep_cache._store(key, features, t)
        return out

    def _unet2d(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None, *,
                deep: Tensor | None) -> tuple[Tensor, Tensor | None]:
        net = self.net
        height, width = x.shape[-2:]
        h, temb = net._inputs(x, t, cond)
        h = net.conv_in(h)
        hs = [h]
        # a cached call needs the skips 0 .. branch only
        down = net.down if deep is None else net.down[:self.branch]
        for blocks in down:
            h = net._run_level(blocks, h, temb)
            hs.append(h)
        features = None
        if deep is None:
            h = net.mid[0](h, temb)
            h = net.mid[1](h)
            h = net.mid[2](h, temb)
            for blocks in net.up[:self._start]:
                if isinstance(blocks[0], ResBlock2D):
                    h = torch.cat([h, hs.pop()], dim=1)
                h = net._run_level(blocks, h, temb)
            features = h
        else:
            h = deep
        for blocks in net.up[self._start:]:
            if isinstance(blocks[0], ResBlock2D):
                h = torch.cat([h, hs.pop()], dim=1)
            h = net._run_level(blocks, h, temb)
        return net._output(h, height, width), features

    def _unet1d(self, x: Tensor, t: Tensor | float, global_cond: Tensor | None = None, *,
                deep: Tensor | None) -> tuple[Tensor, Tensor | None]:
        net = self.net
        length = x.shape[-1]
        h, cond, per_position = net._inputs(x, t, global_cond)
        skips: list[tuple[Tensor, Tensor]] = []
        # a cached call runs the down levels up to skip branch + 1, without its downsampling
        levels = len(net.down) if deep is None else self.branch + 2
        for level, (res1, res2, downsample) in enumerate(net.down[:levels]):
            h = res2(res1(h, cond), cond)
            skips.append((h, cond))
            if deep is not None and level == levels - 1:
                break
            h = downsample(h)
            if per_position and not isinstance(downsample, nn.Identity):
                cond = F.avg_pool1d(cond, 2)  # as UNet1D.forward: follow the coarser grid
        features = None
        if deep is None:
            for res in net.mid:
                h = res(h, cond)
            for res1, res2, upsample in net.up[:self._start]:
                skip, cond = skips.pop()
                h = upsample(res2(res1(torch.cat([h, skip], dim=1), cond), cond))
            features = h
        else:
            h = deep
        for res1, res2, upsample in net.up[self._start:]:
            skip, cond = skips.pop()
            h = upsample(res2(res1(torch.cat([h, skip], dim=1), cond), cond))
        return net.final(h)[..., :length], features
