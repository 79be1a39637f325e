"""Loss weightings ``w(t)``: the multiplier of the squared error in the loss's target space.

The error of every target (eps, x0, v, score, velocity) at a fixed noisy sample ``x_t`` is a
multiple of the x0 error, since ``x_t = alpha x0 + sigma eps`` holds for the prediction and the
truth alike: ``|target_hat - target|^2 = factor(t) |x0_hat - x0|^2`` with (:func:`x0_factor`)

- x0: ``1``; eps: ``SNR = alpha^2 / sigma^2``; v: ``((alpha^2 + sigma^2) / sigma)^2``
  (``SNR + 1`` for variance preserving schedules); score: ``alpha^2 / sigma^4``;
  velocity: ``(alpha' - sigma' alpha / sigma)^2``.

Weightings that are defined on the x0 error (min-SNR-gamma, EDM's lambda) divide by this factor,
so they mean the same thing whatever the target:

- ``"none"``: plain MSE in the target space.
- ``"snr"``: ``SNR(t)`` (with target x0 this is the eps loss).
- ``"sigma2"``: ``sigma^2`` (Song et al.'s weighting for score targets: the eps loss).
- ``"min_snr"``: effective x0 weight ``min(SNR, gamma)`` (Hang et al. 2023; ``MinSNR(gamma)``).
- ``"edm"``: effective x0 weight ``(s^2 + sd^2) / (s sd)^2`` with ``s = sigma / alpha``
  (Karras et al.; with EDM preconditioning this is the unit-weight loss on the raw network
  output).
- any callable ``w(schedule, t, target) -> Tensor`` of ``t``'s shape.

Example:
    >>> import torch, pydiff
    >>> from pydiff.training import get_weighting
    >>> sched = pydiff.VPSchedule()
    >>> t = torch.tensor([0.1, 0.9], dtype=torch.float64)
    >>> w = get_weighting("min_snr")(sched, t, "eps")      # min(SNR, 5) / SNR
    >>> snr = sched.log_snr(t).exp() ** 2
    >>> bool(torch.allclose(w, snr.clamp(max=5) / snr))
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..schedules import Schedule

Tensor = torch.Tensor
TARGETS = ("eps", "x0", "v", "score", "velocity")
WeightFn = Callable[[Schedule, Tensor, str], Tensor]


def x0_factor(schedule: Schedule, t: Tensor, target: str) -> Tensor:
    """``|target_hat - target|^2 / |x0_hat - x0|^2`` at time ``t`` (float64, ``t``'s shape)."""
    a, s = schedule.alpha(t), schedule.sigma(t)
    if target == "x0":
        return torch.ones_like(t)
    if target == "eps":
        return (a / s) ** 2
    if target == "v":
        return ((a**2 + s**2) / s) ** 2
    if target == "score":
        return (a / s**2) ** 2
    if target == "velocity":
        da, ds = schedule.derivatives(t)
        return (da - ds * a / s) ** 2
    raise ValueError(f"unknown target={target!r}; expected one of {TARGETS}")


def _snr(schedule: Schedule, t: Tensor) -> Tensor:
    return (schedule.alpha(t) / schedule.sigma(t)) ** 2


class MinSNR:
    """Min-SNR-gamma (Hang et al. 2023): effective x0 weight ``min(SNR(t), gamma)``."""

    def __init__(self, gamma: float = 5.0):
        if gamma <= 0:
            raise ValueError(f"MinSNR gamma must be > 0, got {gamma}")
        self.gamma = float(gamma)

    def __call__(self, schedule: Schedule, t: Tensor, target: str) -> Tensor:
        return _snr(schedule, t).clamp(max=self.gamma) / x0_factor(schedule, t, target)


class EDMWeight:
    """EDM's ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2`` on the x0 error."""

    def __init__(self, sigma_data: float = 0.5):
        if sigma_data <= 0:
            raise ValueError(f"EDMWeight sigma_data must be > 0, got {sigma_data}")
        self.sigma_data = float(sigma_data)

    def __call__(self, schedule: Schedule, t: Tensor, target: str) -> Tensor:
        s = schedule.sigma_tilde(t)
        sd = self.sigma_data
        return (s**2 + sd**2) / (s * sd) ** 2 / x0_factor(schedule, t, target)


def _none(schedule: Schedule, t: Tensor, target: str) -> Tensor:
    return torch.ones_like(t)


def _snr_weight(schedule: Schedule, t: Tensor, target: str) -> Tensor:
    return _snr(schedule, t)


def _sigma2(schedule: Schedule, t: Tensor, target: str) -> Tensor:
    return schedule.sigma(t) ** 2


WEIGHTINGS = ("none", "snr", "sigma2", "min_snr", "edm")


def get_weighting(weighting: str | WeightFn | None, *, sigma_data: float = 0.5,
                  gamma: float = 5.0) -> WeightFn:
    """Resolve a weighting name from ``WEIGHTINGS`` (or pass a callable through)."""
    if weighting is None or weighting == "none":
        return _none
    if callable(weighting):
        return weighting
    if weighting == "snr":
        return _snr_weight
    if weighting == "sigma2":
        return _sigma2
    if weighting == "min_snr":
        return MinSNR(gamma)
    if weighting == "edm":
        return EDMWeight(sigma_data)
    raise ValueError(f"unknown weighting={weighting!r}; expected one of {WEIGHTINGS} or a "
                     "callable w(schedule, t, target)")


__all__ = ["x0_factor", "MinSNR", "EDMWeight", "get_weighting", "WEIGHTINGS", "TARGETS"]
