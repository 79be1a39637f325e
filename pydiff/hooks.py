"""Post-step projections, run by the solver after every step.

A hook is any callable ``hook(x, ctx) -> x`` where ``ctx`` is a :class:`StepContext` describing the
level the step just reached. Hooks are not Denoiser wrappers: they act on the solver's state.

Example:
    >>> import torch, pydiff
    >>> hook = pydiff.hooks.ZeroCenterOfMass()
    >>> x = torch.randn(2, 5, 3)
    >>> ctx = pydiff.hooks.StepContext(0, torch.tensor(0.5), torch.tensor(1.0), torch.tensor(0.5))
    >>> hook(x, ctx).mean(dim=1).abs().max() < 1e-6
    tensor(True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .errors import InputError
from .noise import Generators, noised, randn_like
from .tree import State

Tensor = torch.Tensor


@dataclass(frozen=True)
class StepContext:
    """The level a step has just reached.

    Attributes:
        step: index of the step just taken (0-based).
        t: the new time (float64, scalar / ``[B]`` / per-position).
        alpha, sigma: marginal coefficients at ``t`` (float64, same shape as ``t``).
        generator: the solver's generator(s), for hooks that need noise.
        final: True after the last step.
    """

    step: int
    t: Tensor
    alpha: Tensor
    sigma: Tensor
    generator: Generators = None
    final: bool = False


Hook = Callable[[State, StepContext], State]


class ZeroCenterOfMass:
    """Project positions onto the zero centre-of-mass subspace (E(3)-equivariant diffusion).

    Args:
        key: for dict states, the entry holding positions ``[B, N, 3]``.
        mask: optional node mask ``[B, N]`` (1 = real atom); padding nodes are set to 0.
    """

    def __init__(self, key: str | None = None, mask: Tensor | None = None):
        self.key, self.mask = key, mask

    def __call__(self, x: State, ctx: StepContext) -> State:
        pos = x[self.key] if self.key is not None else x
        if self.mask is None:
            pos = pos - pos.mean(dim=1, keepdim=True)
        else:
            m = self.mask.to(pos.dtype).unsqueeze(-1)
            com = (pos * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)
            pos = (pos - com) * m
        if self.key is None:
            return pos
        return {**x, self.key: pos}

    def take(self, index: Tensor) -> ZeroCenterOfMass:
        """The hook for the samples ``index`` of the batch (solvers that copy samples, such as
        :class:`pydiff.guidance.SVDD`, call it)."""
        return ZeroCenterOfMass(self.key, None if self.mask is None else self.mask[index])


class InpaintReplace:
    """Replace the known region by the known values noised to the current level.

    ``x <- mask * (alpha known + sigma z) + (1 - mask) * x`` (RePaint's replacement; at the final
    step ``sigma = 0`` and the known values are pasted exactly).

    Args:
        known: the known values (same shape as the state, or as its entry ``key``; values
            outside the mask are ignored).
        mask: 1 where known, 0 where generated; broadcastable to the state (or entry).
        noise: "fresh" draws new noise each step (default); "none" pastes ``alpha * known``.
        key: for dict states, the entry replaced (e.g. ``"positions"``); the other entries
            pass unchanged. Categorical entries use :class:`InpaintClasses`.

    Example (a fixed fragment of a dict state):
        >>> import torch, pydiff
        >>> known = torch.ones(1, 3, 3)
        >>> mask = torch.tensor([[1.0, 0.0, 0.0]])[..., None]
        >>> hook = pydiff.hooks.InpaintReplace(known, mask, key="pos")
        >>> ctx = pydiff.hooks.StepContext(0, torch.tensor(0.0), torch.tensor(1.0),
        ...                                torch.tensor(0.0), final=True)
        >>> hook({"pos": torch.zeros(1, 3, 3), "mask": torch.ones(1, 3)}, ctx)["pos"][0, :, 0]
        tensor([1., 0., 0.])
    """

    def __init__(self, known: Tensor, mask: Tensor, noise: str = "fresh", key: str | None = None):
        if noise not in ("fresh", "none"):
            raise ValueError(f"noise must be 'fresh' or 'none', got {noise!r}")
        self.known, self.mask, self.noise, self.key = known, mask, noise, key

    def __call__(self, x: State, ctx: StepContext) -> State:
        target = _entry(x, self.key, "InpaintReplace")
        fresh = self.noise == "fresh" and not ctx.final
        z = randn_like(target, ctx.generator) if fresh else None
        out = noised(self.known.to(target.dtype), ctx.alpha, ctx.sigma, z, mask=self.mask,
                     x=target)
        return out if self.key is None else {**x, self.key: out}

    def take(self, index: Tensor) -> InpaintReplace:
        """The hook for the samples ``index`` of the batch (for solvers that copy samples, such
        as :class:`pydiff.guidance.SVDD`); a known region shared by the batch stays shared."""
        return InpaintReplace(_rows(self.known, index), _rows(self.mask, index), self.noise,
                              self.key)


class InpaintClasses:
    """Keep known classes of a categorical entry (atom types of a fixed fragment).

    After every step, where ``mask`` is true the entry ``key`` becomes the known class
    corrupted to the level just reached (``q(x_t | x_0 = known)`` of ``process``: the
    categorical counterpart of :class:`InpaintReplace`'s fresh noise), or the known class
    itself when ``process`` is None; at the final step always the known class. Joint states
    only (:class:`pydiff.categorical.JointSolver` runs hooks on the whole state).

    Args:
        known: class indices, shaped like the entry ``[B, ...]`` (ignored outside ``mask``).
        mask: bool, where the classes are known (broadcastable to the entry).
        key: the categorical entry.
        process: the entry's :class:`pydiff.categorical.CategoricalProcess` (corrupts the
            known classes to each level), or None to paste them clean at every step.

    Example:
        >>> import torch, pydiff
        >>> hook = pydiff.hooks.InpaintClasses(torch.tensor([[2, 2]]),
        ...                                    torch.tensor([[True, False]]), key="type")
        >>> ctx = pydiff.hooks.StepContext(0, torch.tensor(0.5), torch.tensor(0.7),
        ...                                torch.tensor(0.7))
        >>> hook({"type": torch.tensor([[0, 0]])}, ctx)["type"].tolist()
        [[2, 0]]
    """

    def __init__(self, known: Tensor, mask: Tensor, key: str, process: Any = None):
        if known.is_floating_point():
            raise InputError("InpaintClasses: known must hold class indices (an integer "
                             f"tensor), got {known.dtype}")
        self.known, self.mask, self.key, self.process = known, mask.bool(), key, process

    def __call__(self, x: State, ctx: StepContext) -> State:
        target = _entry(x, self.key, "InpaintClasses")
        known = self.known.to(target.device).expand_as(target)
        if self.process is not None and not ctx.final:
            a2, s2 = ctx.alpha.to(torch.float64) ** 2, ctx.sigma.to(torch.float64) ** 2
            keep = a2 / (a2 + s2)
            known = self.process.corrupt(known, keep, ctx.generator)
        return {**x, self.key: torch.where(self.mask.to(target.device), known, target)}

    def take(self, index: Tensor) -> InpaintClasses:
        """The hook for the samples ``index`` of the batch (see :meth:`InpaintReplace.take`)."""
        return InpaintClasses(_rows(self.known, index), _rows(self.mask, index), self.key,
                              self.process)


def _entry(x: State, key: str | None, name: str) -> Tensor:
    if key is None:
        if isinstance(x, dict):
            raise InputError(f"{name}: the state is a dict (entries {sorted(x)}); pass key= "
                             "to name the entry to replace")
        return x
    if not isinstance(x, dict) or key not in x:
        keys = sorted(x) if isinstance(x, dict) else "a tensor state"
        raise InputError(f"{name}: key={key!r} is not an entry of the state ({keys})")
    return x[key]


def _rows(v: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` of a per-sample tensor (batch first); one row is repeated."""
    if v.dim() == 0:
        return v
    if v.shape[0] == 1:
        return v.expand(index.shape[0], *v.shape[1:])
    return v[index.to(v.device)]


class Projection:
    """Any projection ``fn(x, ctx) -> x`` (hard data consistency, clamping, ...), named.

    Example: ``Projection(lambda x, ctx: x.clamp(-1, 1), name="clamp")``.
    """

    def __init__(self, fn: Callable[[State, StepContext], State], name: str = "projection"):
        self.fn, self.name = fn, name

    def __call__(self, x: State, ctx: StepContext) -> State:
        return self.fn(x, ctx)

    def __repr__(self) -> str:
        return f"Projection({self.name})"


def apply_hooks(hooks: tuple[Hook, ...], x: State, ctx: StepContext) -> State:
    for hook in hooks:
        x = hook(x, ctx)
    return x


__all__ = ["StepContext", "Hook", "ZeroCenterOfMass", "InpaintReplace", "InpaintClasses",
           "Projection", "apply_hooks"]
