"""Gradient guidance: add ``grad_{x_t}`` of an objective of x0-hat to the model's score.

All of these wrappers compute ``g = scale(t) * w * grad_{x_t} J(x0_hat(x_t), x_t, t)`` per
sample (``J`` a per-sample objective, ``w`` an optional per-sample step normalisation that is not
differentiated) and return the model whose score is ``score + g``::

    eps <- eps - sigma g,    x0 <- x0 + (sigma^2 / alpha) g      (Tweedie)

(where ``alpha = 0``, pure noise, x0 is left alone: it carries no information about the data).
If ``J = log p(y | x_t)`` exactly, the guided model is the exact posterior model.

- :class:`GradientGuidance`: any objective ``J(x0, x, t)``.
- :class:`MeasurementGuidance`: ``y ~ A(x0) + noise`` (DPS, Chung et al. 2023) with step rules
  ``"dps"`` (``w = zeta / ||y - A(x0_hat)||`` per sample, ``J = -||y - A(x0_hat)||^2``),
  ``"fixed"`` (``J = -||y - A(x0_hat)||^2``) and ``"likelihood"``
  (``J = -||y - A(x0_hat)||^2 / (2 var(t))``, a Gaussian likelihood; ``var(t) = noise_std^2`` or
  a callable such as :func:`gaussian_posterior_variance` for PiGDM-style variances).
- :class:`RewardGuidance`: ``J = reward(x0_hat)`` (value guidance of diffusion planners), or
  ``reward(x_t, t)`` on the noisy state (``on="xt"``, Diffuser-style, no backprop through the net).
- :class:`SelfGuidance`: TSDiff's observation self-guidance (Kollovieh et al. 2023):
  ``J = -sum_obs (y - x0_hat)^2`` (``"mse"``) or minus the pinball loss at per-sample quantile
  levels (``"quantile"``); TSDiff's DDIM rule ``eps <- eps - sigma s grad J`` is this with
  ``scale = s``.

Gradients: the wrapper enables autograd where it needs it, so it works under ``torch.no_grad()``
(and ``torch.inference_mode()``) callers, and returns detached tensors, so no graph outlives a
step. When the caller itself differentiates through the wrapper (an outer gradient guidance, or a
state that requires grad), the prediction stays attached to the caller's graph and the
correction ``g`` is treated as a constant (no second derivatives).

Example:
    >>> import torch, pydiff
    >>> from pydiff.guidance import MeasurementGuidance
    >>> sched = pydiff.schedules.VPSchedule()
    >>> base = pydiff.Denoiser(lambda x, t: torch.zeros_like(x), sched, prediction="eps")
    >>> y = torch.ones(2, 1)
    >>> model = MeasurementGuidance(base, lambda x0: x0[:, :1], y, step="dps", scale=0.5)
    >>> with torch.no_grad():
    ...     x = pydiff.sample(model, torch.randn(2, 3, generator=torch.Generator().manual_seed(0)),
    ...                       "ddim", steps=20)
    >>> x.shape
    torch.Size([2, 3])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..model import Model, Prediction
from ..schedules import Schedule, as_time
from ..tree import State, batch_size, leaves, per_sample, tree_map
from .base import Guided, Scale, check_batch, per_sample_sum, resolve_scale

Tensor = torch.Tensor
Objective = Callable[[State, State, Tensor], Tensor]


class GradientGuidance(Guided):
    """Add ``scale(t) * grad_{x_t} objective(x0_hat, x_t, t)`` to the score.

    Args:
        model: the Denoiser (or wrapper) to guide.
        objective: ``objective(x0_hat, x_t, t) -> [B]`` (or a scalar: a sum of per-sample terms),
            e.g. a log-likelihood ``log p(y | x_t)`` or a reward; maximised.
        scale: float, ``[B]`` per-sample, or ``scale(t)`` (float64 ``t``).
        on: ``"x0"`` differentiates through the network (x0-hat); ``"xt"`` evaluates the
            objective with ``x0_hat = None`` and needs no network gradient.
    """

    def __init__(self, model: Model, objective: Objective | None = None, scale: Scale = 1.0,
                 on: str = "x0"):
        super().__init__(model)
        if objective is not None and not callable(objective):
            raise TypeError(f"objective must be callable as objective(x0, x, t), got "
                            f"{type(objective).__name__}")
        if on not in ("x0", "xt"):
            raise ValueError(f"on must be 'x0' or 'xt', got {on!r}")
        self._objective, self.scale, self.on = objective, scale, on

    # -- what subclasses define ----------------------------------------------------------------
    def objective(self, x0: State | None, x: State, t: Tensor) -> Tensor:
        """Per-sample objective ``[B]`` to maximise (default: the ``objective`` argument)."""
        if self._objective is None:
            raise NotImplementedError(f"{type(self).__name__} needs an objective")
        return self._objective(x0, x, t)

    def step_weight(self, x0: State | None, x: State, t: Tensor) -> Tensor | None:
        """Optional per-sample normalisation ``w`` (not differentiated); default none."""
        return None

    def terms(self, x0: State | None, x: State, t: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(objective, weight)``; override to share work between the two."""
        return self.objective(x0, x, t), self.step_weight(x0, x, t)

    # -- the guided prediction -----------------------------------------------------------------
    def evaluate(self, x: State, t: float | Tensor, **cond: Any) -> Prediction:
        tt, alpha, sigma = self.coefficients(x, t)
        if torch.is_inference_mode_enabled():
            # inference tensors cannot enter autograd: leave inference mode, use plain copies
            with torch.inference_mode(False):
                x = tree_map(torch.clone, x)
                cond = {k: v.clone() if torch.is_tensor(v) else v for k, v in cond.items()}
                return self._guided(x, tt, alpha, sigma, cond)
        return self._guided(x, tt, alpha, sigma, cond)

    def _guided(self, x, tt, alpha, sigma, cond):
        # an outer caller differentiating through us keeps its graph; otherwise cut it here
        outer = torch.is_grad_enabled() and any(v.requires_grad for v in leaves(x))
        with torch.enable_grad():
            xg = x if outer else tree_map(lambda v: v.detach().requires_grad_(True), x)
            if self.on == "x0":
                x0, eps = self.inner(xg, tt, **cond).predictions()
                obj_x0 = x0
            else:
                with torch.set_grad_enabled(outer):
                    x0, eps = self.inner(x, tt, **cond).predictions()
                obj_x0 = None
            objective, weight = self.terms(obj_x0, xg, tt)
            if weight is not None:
                objective = objective * weight.detach()
            grads = torch.autograd.grad(objective.sum(), leaves(xg), retain_graph=outer,
                                        allow_unused=True)
        grads = [torch.zeros_like(v) if g is None else g.detach() for g, v in zip(grads, leaves(x))]
        grad = dict(zip(x.keys(), grads)) if isinstance(x, dict) else grads[0]
        if not outer:
            x0, eps = tree_map(torch.detach, x0), tree_map(torch.detach, eps)
        scale = resolve_scale(self.scale, tt, batch_size(x))
        return add_to_score(x0, eps, grad, alpha, sigma, scale)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model!r}, scale={self.scale!r}, on={self.on!r})"


def add_to_score(x0: State, eps: State, grad: State, alpha: Tensor, sigma: Tensor,
                 scale: Tensor) -> Prediction:
    """The prediction whose score is the given one's plus ``scale * grad`` (per sample):
    ``eps - sigma scale grad`` and ``x0 + (sigma^2 / alpha) scale grad`` (x0 unchanged where
    ``alpha = 0``); ``grad`` has the structure of ``x0`` and ``eps``."""
    def eps_new(e: Tensor, g: Tensor) -> Tensor:
        s = per_sample(sigma, e).to(e.dtype)
        return e - s * per_sample(scale, e).to(e.dtype) * g

    def x0_new(u: Tensor, g: Tensor) -> Tensor:
        a, s = per_sample(alpha, u).to(u.dtype), per_sample(sigma, u).to(u.dtype)
        factor = torch.where(a > 0, s * s / torch.where(a > 0, a, torch.ones_like(a)), 0)
        return u + factor * per_sample(scale, u).to(u.dtype) * g

    return Prediction.of(tree_map(x0_new, x0, grad), tree_map(eps_new, eps, grad))


STEPS = ("dps", "fixed", "likelihood")


class MeasurementGuidance(GradientGuidance):
    """Measurement guidance for ``y = A(x0) + noise`` through x0-hat (DPS and relatives).

    Args:
        model: the Denoiser (or wrapper) of the prior.
        operator: the forward model ``A(x0) -> y_hat`` (differentiable; any shape with batch
            first).
        measurement: ``y``, shaped like ``A(x0)``.
        step: ``"dps"`` (``zeta / ||residual||`` per sample; ``scale`` is ``zeta``), ``"fixed"``
            (``scale`` times the gradient of ``-||residual||^2``), or ``"likelihood"`` (the
            Gaussian log-likelihood with variance ``noise_std(t)^2``; ``scale`` tempers it).
        scale: ``zeta`` / the fixed step / the temperature; float, ``[B]`` or ``scale(t)``.
        noise_std: for ``"likelihood"``: a float or ``noise_std(t) -> std`` (broadcastable to y),
            e.g. ``sqrt(sigma_y^2 + r_t^2)``.

    Example: ``MeasurementGuidance(model, lambda x0: mask * x0, y, step="dps", scale=1.0)``.
    """

    def __init__(self, model: Model, operator: Callable[[State], Tensor], measurement: Tensor,
                 step: str = "dps", scale: Scale = 1.0,
                 noise_std: float | Callable[[Tensor], Tensor] | None = None):
        super().__init__(model, scale=scale)
        if not callable(operator):
            raise TypeError(f"operator must be callable as A(x0), got {type(operator).__name__}")
        if step not in STEPS:
            raise ValueError(f"step must be one of {STEPS}, got {step!r}")
        if step == "likelihood" and noise_std is None:
            raise ValueError("step='likelihood' needs noise_std (a float or noise_std(t))")
        self.operator, self.measurement, self.step, self.noise_std = (
            operator, measurement, step, noise_std)

    def residual(self, x0: State) -> Tensor:
        """``y - A(x0)``."""
        y_hat = self.operator(x0)
        y = self.measurement.to(device=y_hat.device, dtype=y_hat.dtype)
        if y.shape != y_hat.shape:
            check_batch(x0, y, "measurement")
            if torch.broadcast_shapes(y.shape, y_hat.shape) != y_hat.shape:
                raise ValueError(f"measurement has shape {tuple(y.shape)} but A(x0) has "
                                 f"{tuple(y_hat.shape)}")
        return y - y_hat

    def terms(self, x0: State | None, x: State, t: Tensor) -> tuple[Tensor, Tensor | None]:
        r = self.residual(x0)  # one operator application per evaluation
        if self.step == "likelihood":
            std = self.noise_std(t) if callable(self.noise_std) else self.noise_std
            var = torch.as_tensor(std, dtype=r.dtype, device=r.device) ** 2
            return -0.5 * per_sample_sum(r**2 / per_sample(var, r)), None
        sq = per_sample_sum(r**2)
        if self.step == "fixed":
            return -sq, None
        return -sq, 1 / sq.detach().sqrt().clamp_min(torch.finfo(sq.dtype).eps)

    def objective(self, x0: State | None, x: State, t: Tensor) -> Tensor:
        return self.terms(x0, x, t)[0]

    def __repr__(self) -> str:
        return f"MeasurementGuidance({self.model!r}, step={self.step!r}, scale={self.scale!r})"


class RewardGuidance(GradientGuidance):
    """Value / reward guidance: climb ``reward(x0_hat)`` (or ``reward(x_t, t)`` with ``on="xt"``).

    Args:
        model: the Denoiser to guide.
        reward: ``reward(x0) -> [B]`` (``on="x0"``) or ``reward(x_t, t) -> [B]`` (``on="xt"``).
        scale: float, ``[B]`` or ``scale(t)``.
        on: ``"x0"`` (through the network) or ``"xt"`` (a value function of the noisy state).

    Example: ``RewardGuidance(model, lambda x0: -(x0[:, -1] - goal).pow(2).sum(-1), scale=0.1)``.
    """

    def __init__(self, model: Model, reward: Callable[..., Tensor], scale: Scale = 1.0,
                 on: str = "x0"):
        super().__init__(model, scale=scale, on=on)
        if not callable(reward):
            raise TypeError(f"reward must be callable, got {type(reward).__name__}")
        self.reward = reward

    def objective(self, x0: State | None, x: State, t: Tensor) -> Tensor:
        value = self.reward(x0) if self.on == "x0" else self.reward(x, t)
        return per_sample_sum(value) if value.dim() > 1 else value


LOSSES = ("mse", "quantile")


class SelfGuidance(GradientGuidance):
    """TSDiff observation self-guidance for forecasting/imputation with an unconditional model.

    Args:
        model: the unconditional Denoiser.
        observed: the observed values, shaped like the state (ignored where ``mask`` is 0).
        mask: 1 at observed positions (broadcastable to the state).
        loss: ``"mse"`` or ``"quantile"``.
        scale: TSDiff's ``s``; float, ``[B]`` or ``scale(t)``.
        quantiles: for ``"quantile"``: ``[B]`` levels in (0, 1), or an int ``K``: the batch holds
            ``K`` samples per series (``repeat_interleave``) with levels ``k / (K + 1)``,
            ``k = 1..K``, as in TSDiff; default ``0.5`` for every sample.
    """

    def __init__(self, model: Model, observed: Tensor, mask: Tensor, loss: str = "quantile",
                 scale: Scale = 1.0, quantiles: Tensor | int | None = None):
        super().__init__(model, scale=scale)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if isinstance(quantiles, int) and quantiles < 1:
            raise ValueError(f"quantiles must be >= 1 samples per series, got {quantiles}")
        self.observed, self.mask, self.loss, self.quantiles = observed, mask, loss, quantiles

    def levels(self, bsz: int, device: torch.device) -> Tensor:
        """Per-sample quantile levels ``[B]``."""
        q = self.quantiles
        if q is None:
            return torch.full((bsz,), 0.5, dtype=torch.float64, device=device)
        if isinstance(q, int):
            if bsz % q:
                raise ValueError(f"quantiles={q} samples per series does not divide the batch "
                                 f"size {bsz}")
            k = torch.arange(1, q + 1, dtype=torch.float64, device=device) / (q + 1)
            return k.repeat(bsz // q)
        q = as_time(q, device)
        if q.shape != (bsz,) or bool(((q <= 0) | (q >= 1)).any()):
            raise ValueError(f"quantiles must be [B]=[{bsz}] levels in (0, 1), got "
                             f"{tuple(q.shape)}")
        return q

    def objective(self, x0: State | None, x: State, t: Tensor) -> Tensor:
        check_batch(x0, self.observed, "observed")
        obs = self.observed.to(device=x0.device, dtype=x0.dtype)
        m = self.mask.to(device=x0.device, dtype=x0.dtype)
        err = obs - x0
        if self.loss == "mse":
            return -per_sample_sum(m * err**2)
        q = per_sample(self.levels(x0.shape[0], x0.device), err).to(err.dtype)
        pinball = torch.maximum(q * err, (q - 1) * err)
        return -per_sample_sum(m * pinball)

    def __repr__(self) -> str:
        return f"SelfGuidance({self.model!r}, loss={self.loss!r}, scale={self.scale!r})"


def gaussian_posterior_variance(schedule: Schedule, data_std: float | Tensor = 1.0
                                ) -> Callable[[Tensor], Tensor]:
    """``t -> Var[x0 | x_t]`` for Gaussian data of std ``c``: ``c^2 sigma^2 / (alpha^2 c^2 +
    sigma^2)`` (PiGDM's ``r_t^2`` for ``c = 1``).

    Adding it to the measurement noise variance makes :class:`MeasurementGuidance` with
    ``step="likelihood"`` the exact likelihood score for Gaussian data and ``A`` that selects
    coordinates: ``noise_std=lambda t: (sigma_y**2 + post_var(t)).sqrt()``.
    """
    c2 = torch.as_tensor(data_std, dtype=torch.float64) ** 2

    def variance(t: Tensor) -> Tensor:
        a, s = schedule.alpha(t), schedule.sigma(t)
        return c2.to(a.device) * s**2 / (a**2 * c2.to(a.device) + s**2)

    return variance


__all__ = ["GradientGuidance", "MeasurementGuidance", "RewardGuidance", "SelfGuidance",
           "add_to_score", "gaussian_posterior_variance"]
