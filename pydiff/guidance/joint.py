"""Gradient guidance of a joint model (continuous and categorical entries, e.g. molecules).

:class:`JointGradientGuidance` is :class:`pydiff.guidance.GradientGuidance` for a
:class:`pydiff.categorical.JointModel`: the objective sees the clean estimate of the whole state
(x0-hat of the continuous entries, the model's class probabilities ``p(x_0 | x_t)`` of each
categorical entry, the fixed entries as they are) and its gradient with respect to the
continuous entries of ``x_t`` (through the network, so through the class probabilities too)
is added to their score, as :func:`pydiff.guidance.gradient.add_to_score` does for plain
models. Categorical entries are not moved by a gradient (they have none); their probabilities
pass through unchanged. The result is a JointModel again, so :class:`pydiff.categorical.
JointSolver` and :class:`pydiff.guidance.SVDD` accept it.

With ``objective = log p(y | x0-hat)`` this is DPS-style conditioning; with a trained property
regressor it is the gradient-based counterpart of derivative-free (SVDD) steering.

Example:
    >>> import torch, pydiff
    >>> from pydiff.categorical import CategoricalProcess, JointDenoiser, JointSolver
    >>> from pydiff.guidance import JointGradientGuidance
    >>> def net(x, t):
    ...     return {"pos": 0.1 * x["pos"], "type": torch.zeros(*x["type"].shape[:-1], 2)}
    >>> model = JointDenoiser(net, pydiff.VPSchedule(), {"type": CategoricalProcess(2)})
    >>> guided = JointGradientGuidance(model, lambda x0, t: x0["pos"].sum((1, 2)), scale=0.5)
    >>> x = {"pos": torch.randn(3, 4, 2), "type": torch.zeros(3, 4, dtype=torch.long)}
    >>> out = pydiff.sample(guided, x, JointSolver("ddpm"), steps=5,
    ...                     generator=torch.Generator().manual_seed(0))
    >>> out["pos"].shape, out["type"].shape
    (torch.Size([3, 4, 2]), torch.Size([3, 4]))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..categorical import JointModel
from ..model import Prediction
from ..schedules import as_time
from ..tree import batch_size
from .base import Scale, resolve_scale
from .gradient import add_to_score

Tensor = torch.Tensor
JointObjective = Callable[[dict[str, Tensor], Tensor], Tensor]


class JointGradientGuidance(JointModel):
    """Add ``scale(t) * grad_{x_t} objective(clean estimate, t)`` to a joint model's score.

    Args:
        model: the :class:`pydiff.categorical.JointModel` to guide.
        objective: ``objective(x0, t) -> [B]``, maximised; ``x0`` holds x0-hat of each
            continuous entry, ``p(x_0 | x_t)`` ``[..., K]`` (float64) of each categorical entry
            and the fixed entries.
        scale: float, ``[B]`` per sample, or ``scale(t)`` (float64 ``t``).
    """

    def __init__(self, model: JointModel, objective: JointObjective, scale: Scale = 1.0):
        if not isinstance(model, JointModel):
            raise TypeError(f"model must be a pydiff.categorical.JointModel, got "
                            f"{type(model).__name__}")
        if not callable(objective):
            raise TypeError(f"objective must be callable as objective(x0, t), got "
                            f"{type(objective).__name__}")
        super().__init__(model.schedule)
        self.model, self.objective, self.scale = model, objective, scale
        self.processes, self.fixed = model.processes, model.fixed

    def evaluate_joint(self, x: dict[str, Tensor], t: float | Tensor, **cond: Any
                       ) -> tuple[Prediction, dict[str, Tensor]]:
        cond = {**self.cond, **cond}
        if torch.is_inference_mode_enabled():
            # inference tensors cannot enter autograd: leave inference mode, use plain copies
            with torch.inference_mode(False):
                return self._guided({k: v.clone() for k, v in x.items()}, t, cond)
        return self._guided(x, t, cond)

    def _guided(self, x: dict[str, Tensor], t: float | Tensor, cond: dict[str, Any]
                ) -> tuple[Prediction, dict[str, Tensor]]:
        xc, rest = self.model.split(x)
        tt = as_time(t, next(iter(xc.values())).device)
        with torch.enable_grad():
            xg = {k: v.detach().requires_grad_(True) for k, v in xc.items()}
            pred, probs = self.model.evaluate_joint({**xg, **rest}, tt, **cond)
            x0, eps = pred.predictions()
            value = self.objective({**rest, **x0, **probs}, tt)
            grads = torch.autograd.grad(value.sum(), list(xg.values()), allow_unused=True)
        grad = {k: torch.zeros_like(v) if g is None else g.detach()
                for (k, v), g in zip(xg.items(), grads)}
        x0 = {k: v.detach() for k, v in x0.items()}
        eps = {k: v.detach() for k, v in eps.items()}
        scale = resolve_scale(self.scale, tt, batch_size(xc))
        guided = add_to_score(x0, eps, grad, self.schedule.alpha(tt), self.schedule.sigma(tt),
                              scale)
        return guided, {k: p.detach() for k, p in probs.items()}

    def __repr__(self) -> str:
        return f"JointGradientGuidance({self.model!r}, scale={self.scale!r})"


__all__ = ["JointGradientGuidance"]
