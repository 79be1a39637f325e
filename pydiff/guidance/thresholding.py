"""Projections of the x0 prediction: static clipping, dynamic thresholding (Imagen), any map.

The wrapped model's ``x0`` is replaced by ``fn(x0, t)`` and ``eps`` is recomputed from
``x = alpha x0 + sigma eps`` (:meth:`pydiff.Prediction.with_x0`), so every solver sees a
consistent, projected prediction.

- :class:`ProjectX0`: any ``fn(x0, t) -> x0`` (DDNM/DDS-style data consistency on x0-hat, ...).
- :class:`ClipX0`: ``clamp(x0, -bound, bound)`` (diffusers' ``clip_sample``).
- :class:`DynamicThresholding`: per sample, ``s = max(quantile(|x0|, p), bound)`` (optionally
  capped at ``max_value``), then ``x0 <- clamp(x0, -s, s) * bound / s`` (Saharia et al. 2022;
  diffusers' ``thresholding=True`` with ``dynamic_thresholding_ratio=p`` and
  ``sample_max_value=max_value``).

Example:
    >>> import torch, pydiff
    >>> from pydiff.guidance import DynamicThresholding
    >>> sched = pydiff.schedules.VPSchedule()
    >>> base = pydiff.Denoiser(lambda x, t: torch.zeros_like(x), sched, prediction="eps")
    >>> model = DynamicThresholding(base, percentile=0.9)
    >>> x0 = model.x0(torch.linspace(-4, 4, 20).reshape(2, 10), 0.1)
    >>> bool(x0.abs().max() <= 1)
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..model import Model, Prediction
from ..tree import State, tree_map
from .base import Guided

Tensor = torch.Tensor


class ProjectX0(Guided):
    """Replace the x0 prediction by ``fn(x0, t)`` (``t`` float64); eps follows.

    Args:
        model: the Denoiser (or wrapper) to project.
        fn: the projection, ``fn(x0, t) -> x0`` on the state structure.
    """

    def __init__(self, model: Model, fn: Callable[[State, Tensor], State]):
        super().__init__(model)
        if not callable(fn):
            raise TypeError(f"fn must be callable as fn(x0, t), got {type(fn).__name__}")
        self.fn = fn

    def project(self, x0: State, t: Tensor) -> State:
        return self.fn(x0, t)

    def evaluate(self, x: State, t: float | Tensor, **cond: Any) -> Prediction:
        tt, alpha, sigma = self.coefficients(x, t)
        p = self.inner(x, tt, **cond)
        return p.with_x0(x, self.project(p.x0(), tt), alpha, sigma)


class ClipX0(ProjectX0):
    """Static thresholding: ``x0 <- clamp(x0, -bound, bound)``.

    Example: ``ClipX0(model, bound=1.0)`` for data scaled to ``[-1, 1]``.
    """

    def __init__(self, model: Model, bound: float = 1.0):
        if not bound > 0:
            raise ValueError(f"bound must be > 0, got {bound}")
        self.bound = float(bound)
        super().__init__(model, self._clip)

    def _clip(self, x0: State, t: Tensor) -> State:
        return tree_map(lambda v: v.clamp(-self.bound, self.bound), x0)

    def __repr__(self) -> str:
        return f"ClipX0({self.model!r}, bound={self.bound})"


class DynamicThresholding(ProjectX0):
    """Imagen's dynamic thresholding with a per-sample quantile of ``|x0|``.

    Args:
        model: the Denoiser to wrap.
        percentile: the quantile ``p`` of ``|x0|`` taken per sample (Imagen: 0.995).
        bound: the data range ``[-bound, bound]``; ``s`` is never below it.
        max_value: optional upper cap on ``s`` (diffusers' ``sample_max_value``).
    """

    def __init__(self, model: Model, percentile: float = 0.995, bound: float = 1.0,
                 max_value: float | None = None):
        if not 0 < percentile <= 1:
            raise ValueError(f"percentile must lie in (0, 1], got {percentile}")
        if not bound > 0:
            raise ValueError(f"bound must be > 0, got {bound}")
        if max_value is not None and max_value < bound:
            raise ValueError(f"max_value={max_value} must be >= bound={bound}")
        self.percentile, self.bound, self.max_value = float(percentile), float(bound), max_value
        super().__init__(model, self._threshold)

    def _threshold(self, x0: State, t: Tensor) -> State:
        def one(v: Tensor) -> Tensor:
            flat = v.reshape(v.shape[0], -1).abs()
            # quantile needs float32/64; half-precision states are upcast for this statistic
            s = torch.quantile(flat.float(), self.percentile, dim=1).to(v.dtype)
            s = s.clamp(min=self.bound, max=self.max_value)
            s = s.reshape(-1, *([1] * (v.dim() - 1)))
            return torch.maximum(torch.minimum(v, s), -s) * (self.bound / s)

        return tree_map(one, x0)

    def __repr__(self) -> str:
        return (f"DynamicThresholding({self.model!r}, percentile={self.percentile}, "
                f"bound={self.bound}, max_value={self.max_value})")


__all__ = ["ProjectX0", "ClipX0", "DynamicThresholding"]
