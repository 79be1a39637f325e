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

import torch

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
        known: the known values (same shape as the state, values outside the mask are ignored).
        mask: 1 where known, 0 where generated; broadcastable to the state.
        noise: "fresh" draws new noise each step (default); "none" pastes ``alpha * known``.
    """

    def __init__(self, known: Tensor, mask: Tensor, noise: str = "fresh"):
        if noise not in ("fresh", "none"):
            raise ValueError(f"noise must be 'fresh' or 'none', got {noise!r}")
        self.known, self.mask, self.noise = known, mask, noise

    def __call__(self, x: Tensor, ctx: StepContext) -> Tensor:
        fresh = self.noise == "fresh" and not ctx.final
        z = randn_like(x, ctx.generator) if fresh else None
        return noised(self.known.to(x.dtype), ctx.alpha, ctx.sigma, z, mask=self.mask, x=x)


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


__all__ = ["StepContext", "Hook", "ZeroCenterOfMass", "InpaintReplace", "Projection",
           "apply_hooks"]
