"""The guidance wrapper protocol: a Denoiser built from another Denoiser.

A guidance wrapper is a :class:`pydiff.Denoiser` whose :meth:`predict` calls the wrapped model's
``predict`` and changes the answer. Because every parameterization of a Denoiser (``x0``, ``eps``,
``score``, ``v``, ``velocity``) goes through ``predict``, and solvers only ever call the model's
``x0``, a wrapper works with :func:`pydiff.sample`, every solver and every other wrapper, so
guidance composes by nesting::

    model = MeasurementGuidance(
        ClassifierFreeGuidance(DynamicThresholding(base), 5.0, uncond), A, y)

Wrappers keep ``x = alpha x0 + sigma eps`` true for what they return, so solvers that use either
prediction see the same guided model. Attributes a wrapper does not define (``net``,
``prediction``, ``time_input``, ...) are read from the wrapped model.

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

from ..denoiser import Denoiser
from ..schedules import as_time
from ..tree import State, batch_size, leaves, per_sample, tree_map

Tensor = torch.Tensor
Scale = float | Tensor | Callable[[Tensor], Tensor]


class Guided(Denoiser):
    """Base class of guidance wrappers: holds the wrapped ``model`` and forwards to it.

    Subclasses override :meth:`predict` and call :meth:`inner` for the wrapped prediction.
    ``bind(**cond)`` works as on a Denoiser; ``cond`` is the wrapped model's bound conditioning
    merged with this wrapper's.
    """

    def __init__(self, model: Denoiser):
        # Denoiser.__init__ is deliberately not called: a wrapper has no network of its own.
        if not (hasattr(model, "predict") and hasattr(model, "schedule")):
            raise TypeError("model must be a pydiff.Denoiser (or a wrapper with .predict(x, t, "
                            f"**cond) and .schedule), got {type(model).__name__}")
        self.model = model
        self.schedule = model.schedule
        self._own_cond: dict[str, Any] = {}

    # -- plumbing ----------------------------------------------------------------------------
    @property
    def cond(self) -> dict[str, Any]:  # type: ignore[override]
        return {**getattr(self.model, "cond", {}), **self._own_cond}

    def bind(self, **cond: Any) -> Guided:
        """A copy with conditioning fixed (it reaches the wrapped model on every call)."""
        new = copy.copy(self)
        new._own_cond = {**self._own_cond, **cond}
        return new

    def __getattr__(self, name: str) -> Any:
        # only reached when normal lookup fails: read the wrapped model's attributes
        model = self.__dict__.get("model")
        if model is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(model, name)

    def inner(self, x: State, t: Tensor, **cond: Any) -> tuple[State, State]:
        """The wrapped model's ``(x0, eps)`` with this wrapper's bound conditioning."""
        return self.model.predict(x, t, **{**self._own_cond, **cond})

    def predict(self, x: State, t: float | Tensor, **cond: Any) -> tuple[State, State]:
        raise NotImplementedError

    def coefficients(self, x: State, t: float | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(t, alpha, sigma)`` as float64 tensors on the state's device."""
        tt = as_time(t, leaves(x)[0].device)
        return tt, self.schedule.alpha(tt), self.schedule.sigma(tt)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model!r})"


# -- helpers shared by the wrappers ---------------------------------------------------------

def eps_from_x0(x: State, x0: State, eps_old: State, alpha: Tensor, sigma: Tensor) -> State:
    """``(x - alpha x0) / sigma``; where ``sigma = 0`` (clean data) the old eps is kept."""

    def one(xv: Tensor, u: Tensor, e: Tensor) -> Tensor:
        a, s = per_sample(alpha, xv).to(xv.dtype), per_sample(sigma, xv).to(xv.dtype)
        safe = torch.where(s > 0, s, torch.ones_like(s))
        return torch.where(s > 0, (xv - a * u) / safe, e)

    return tree_map(one, x, x0, eps_old)


def x0_from_eps(x: State, eps: State, x0_old: State, alpha: Tensor, sigma: Tensor) -> State:
    """``(x - sigma eps) / alpha``; where ``alpha = 0`` (pure noise) the old x0 is kept."""

    def one(xv: Tensor, e: Tensor, u: Tensor) -> Tensor:
        a, s = per_sample(alpha, xv).to(xv.dtype), per_sample(sigma, xv).to(xv.dtype)
        safe = torch.where(a > 0, a, torch.ones_like(a))
        return torch.where(a > 0, (xv - s * e) / safe, u)

    return tree_map(one, x, eps, x0_old)


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


__all__ = ["Guided", "eps_from_x0", "x0_from_eps", "resolve_scale", "check_batch",
           "per_sample_sum", "Scale"]
