"""Variational posterior sampling: RED-diff (Mardani et al., 2023).

RED-diff fits the mean ``mu`` of a Gaussian ``q(x0 | y) = N(mu, 0)`` to the measurement by
stochastic optimisation instead of sampling: for each time ``t`` of a decreasing grid it draws
``eps``, forms ``x_t = alpha(t) mu + sigma(t) eps`` and takes one Adam step on

    ``||A mu - y||^2 / 2  +  weight * sigma(t)/alpha(t) * <stopgrad(eps_hat(x_t, t) - eps), mu>``

(both terms summed over the elements: scale ``A`` and ``y`` so that ``||A|| ~ 1`` and ``weight``
means the same for every operator). The second term is the score-distillation
regulariser: its gradient is the denoiser's noise residual, so the network is evaluated without
building a graph (no backpropagation through the denoiser, one NFE per step). The data term's
gradient ``A^T (A mu - y)`` comes from autograd through the (linear) operator.

Example:
    >>> import torch, pydiff
    >>> from pydiff.guidance.analytic import Gaussian
    >>> prior = Gaussian(torch.zeros(2), torch.eye(2))
    >>> model = prior.denoiser(pydiff.schedules.VPSchedule())
    >>> A = lambda x: x[:, :1]
    >>> mu = red_diff(model, A, torch.tensor([[1.5]]), torch.zeros(1, 2), steps=100,
    ...               generator=torch.Generator().manual_seed(0))
    >>> round(float(mu[0, 0]), 1)
    1.5
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import InputError
from ..grids import timesteps
from ..model import Model
from ..noise import randn_like
from ..tree import per_sample

Tensor = torch.Tensor


def red_diff(model: Model, operator: Callable[[Tensor], Tensor], measurement: Tensor,
             x_init: Tensor, steps: int = 50, *, lr: float = 0.1, weight: float = 0.25,
             spacing: str = "logsnr", t_start: float | None = None,
             generator: torch.Generator | None = None) -> Tensor:
    """RED-diff: the variational mean ``mu`` after one Adam step per time of the grid.

    Args:
        model: the prior (any :class:`pydiff.Model`); only its ``eps`` is used, under
            ``torch.no_grad``.
        operator: the linear forward model ``A`` (batch first, differentiable by autograd).
        measurement: ``y``, shaped like ``operator(x_init)``.
        x_init: the start of ``mu`` (e.g. a classical reconstruction), in the prior's units.
        steps: grid times (NFE).
        lr: Adam's learning rate.
        weight: the regulariser's weight ``lambda``.
        spacing / t_start: the grid (:func:`pydiff.grids.timesteps`, without the final 0).
        generator: the noise stream.

    Returns:
        ``mu``, shaped like ``x_init``.
    """
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive int, got {steps!r}")
    if not (lr > 0 and weight >= 0):
        raise InputError(f"lr must be > 0 and weight >= 0, got lr={lr}, weight={weight}")
    schedule = model.schedule
    grid = timesteps(schedule, steps, spacing, t_start=t_start, final_zero=False)[:steps]
    grid = grid.to(x_init.device)
    y = measurement.detach()
    mu = x_init.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([mu], lr=lr)
    batch = x_init.shape[0]
    for t in grid:
        alpha, sigma = schedule.alpha(t), schedule.sigma(t)
        eps = randn_like(x_init, generator)
        with torch.no_grad():
            x_t = (alpha * mu + sigma * eps).to(x_init.dtype)
            residual = model.eps(x_t, t.expand(batch)) - eps
        lam = (weight * sigma / alpha).to(x_init.dtype)
        with torch.enable_grad():  # the data term only: A is linear and cheap to differentiate
            data = (operator(mu) - y).pow(2).sum() / 2
            prior = (per_sample(lam, mu) * residual * mu).sum()
            optimizer.zero_grad(set_to_none=True)
            (data + prior).backward()
        optimizer.step()
    return mu.detach()


__all__ = ["red_diff"]
