"""The guidance wrapper protocol: a :class:`pydiff.Model` built from another Model.

A guidance wrapper is a :class:`pydiff.Model` whose :meth:`evaluate` evaluates the wrapped
model (:meth:`Guided.inner`) and changes the answer. Every parameterization (``x0``, ``eps``,
``score``, ``v``, ``velocity``, ``predict``) derives from ``evaluate``, and solvers only call
``evaluate``, so a wrapper works with :func:`pydiff.sample`, every solver and every other
wrapper, and guidance composes by nesting::

    model = MeasurementGuidance(
        ClassifierFreeGuidance(DynamicThresholding(base), 5.0, uncond), A, y)

Wrappers keep ``x = alpha x0 + sigma eps`` true for what they return: a wrapper that changes
one prediction recomputes the other with :meth:`pydiff.Prediction.with_x0` /
:meth:`~pydiff.Prediction.with_eps` (the one conversion, shared with the Denoiser). A wrapper
holds the wrapped ``model`` and its own bound conditioning (``bind``); nothing else is
forwarded: read the network's attributes from the base Denoiser.

Example:
    >>> import torch, pydiff
    >>> from pydiff.guidance import ProjectX0
    >>> sched = pydiff.schedules.VPSchedule()
    >>> base = pydiff.Denoiser(lambda x, t: torch.zeros_like(x), sched)
    >>> clipped = ProjectX0(base, lambda x0, t: x0.clamp(-1, 1))
    >>> bool(clipped.x0(torch.full((2, 3), 5.0), 0.5).abs().max() <= 1)
    True
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from ..model import Model, Prediction
from ..schedules import as_time
from ..tree import State, batch_size, leaves

Tensor = torch.Tensor
Scale = float | Tensor | Callable[[Tensor], Tensor]


class Guided(Model):
    """Base class of guidance wrappers: holds the wrapped ``model`` (any :class:`pydiff.Model`).

    Subclasses define :meth:`evaluate` and call :meth:`inner` for the wrapped prediction.
    ``bind(**cond)`` fixes this wrapper's conditioning, which reaches the wrapped model on every
    call (merged over the wrapped model's own bound conditioning).
    """

    def __init__(self, model: Model):
        if not isinstance(model, Model):
            raise TypeError("model must be a pydiff.Model (a Denoiser or a guidance wrapper), "
                            f"got {type(model).__name__}")
        self.model = model
        super().__init__(model.schedule)

    @property
    def mean_key(self) -> str:  # type: ignore[override]
        return self.model.mean_key

    @property
    def cond(self) -> dict[str, Any]:  # type: ignore[override]
        """All bound conditioning: the wrapped model's, then this wrapper's."""
        return {**self.model.cond, **self._own_cond}

    @cond.setter
    def cond(self, value: dict[str, Any]) -> None:
        self._own_cond = dict(value)

    def bind(self, **cond: Any) -> Guided:
        """A copy with conditioning fixed (it reaches the wrapped model on every call)."""
        new = copy.copy(self)
        new._own_cond = {**self._own_cond, **cond}
        return new

    def inner(self, x: State, t: Tensor, **cond: Any) -> Prediction:
        """The wrapped model's prediction with this wrapper's bound conditioning."""
        return self.model.evaluate(x, t, **{**self._own_cond, **cond})

    def coefficients(self, x: State, t: float | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(t, alpha, sigma)`` as float64 tensors on the state's device."""
        tt = as_time(t, leaves(x)[0].device)
        return (tt, *self.schedule.alpha_sigma(tt))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model!r})"


# -- helpers shared by the wrappers ---------------------------------------------------------

def resolve_scale(scale: Scale, t: Tensor, batch: int, name: str = "scale") -> Tensor:
    """A guidance scale as a float64 tensor: scalar, ``[B]``, or ``scale(t)`` for callables."""
    value = scale(t) if callable(scale) else scale
    value = torch.as_tensor(value, dtype=torch.float64, device=t.device)
    if value.dim() == 1 and value.shape[0] not in (1, batch):
        raise ValueError(f"{name} has {value.shape[0]} values for a batch of {batch}; expected a "
                         "scalar or one value per sample")
    return value


def check_batch(x: State, value: Tensor, name: str) -> None:
    """Fail early when a per-sample input does not match the state's batch."""
    if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] not in (1, batch_size(x)):
        raise ValueError(f"{name} has batch size {value.shape[0]} but the state has "
                         f"{batch_size(x)}; put gradient guidance outside classifier-free "
                         "guidance (which doubles the batch), or pass one row per sample")


def per_sample_sum(v: Tensor) -> Tensor:
    """Sum over all but the batch dimension: ``[B, ...] -> [B]``."""
    return v.reshape(v.shape[0], -1).sum(1) if v.dim() > 1 else v


__all__ = ["Guided", "resolve_scale", "check_batch", "per_sample_sum", "Scale"]
