"""Energy-based refinement: improve given samples under a diffusion prior (TSDiff, Kollovieh et al.
2023, section 4.2).

An unconditional diffusion model defines an energy on clean states through its denoising loss
at one noise level ``t``:

    ``E_prior(x) = sum ||eps_hat(alpha(t) x + sigma(t) eps, t) - eps||^2``,  ``eps ~ N(0, I)``

(drawn afresh at every evaluation: a stochastic estimate whose gradient in ``x`` points, on
average, to more likely states). :func:`refine` starts from given states (another model's
samples, e.g. a forecaster's paths pasted after the observed context) and runs overdamped
Langevin dynamics on ``E_prior(x) + E_obs(x)``:

    ``x <- x - step_size * grad E(x) + sqrt(2 step_size) * noise_scale * xi``

(``noise_scale = 0``: plain gradient descent to the nearest likely state, TSDiff's
"most likely" refiner). ``E_obs`` is the caller's per-sample energy, e.g. the pinball or squared
loss to what was observed; :func:`pinball_energy` is TSDiff's quantile energy. ``mask`` confines
the moves (1: may change), so observed values can stay fixed.

Energies are sums over elements (not means), as in TSDiff: step sizes then mean the same for
states of any size.

Example:
    >>> import torch, pydiff
    >>> from pydiff.guidance.analytic import Gaussian
    >>> prior = Gaussian(torch.zeros(2), torch.eye(2))
    >>> model = prior.denoiser(pydiff.schedules.VPSchedule())
    >>> x = torch.full((256, 2), 4.0)  # far in the tail of N(0, I)
    >>> y = refine(model, x, steps=50, step_size=0.05, t=0.3,
    ...            generator=torch.Generator().manual_seed(0))
    >>> bool(y.abs().mean() < 1.5)
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import InputError
from ..model import Model
from ..noise import randn_like
from ..schedules import as_time
from ..tree import per_sample

Tensor = torch.Tensor
Energy = Callable[[Tensor], Tensor]


def diffusion_energy(model: Model, x: Tensor, t: float | Tensor,
                     generator: torch.Generator | None = None) -> Tensor:
    """``[B]``: the denoising loss of ``model`` on ``x`` at level ``t`` with fresh noise, summed
    over the elements (differentiable in ``x``; module docs)."""
    schedule = model.schedule
    tt = as_time(t, x.device)
    tt = tt.expand(x.shape[0]) if tt.dim() == 0 else tt
    alpha, sigma = schedule.alpha(tt), schedule.sigma(tt)
    eps = randn_like(x, generator)
    x_t = per_sample(alpha, x).to(x.dtype) * x + per_sample(sigma, x).to(x.dtype) * eps
    err = model.eps(x_t, tt) - eps
    return err.pow(2).flatten(1).sum(1)


def pinball_energy(target: Tensor, levels: Tensor, mask: Tensor | None = None) -> Energy:
    """``x -> [B]``: the pinball (quantile) loss of ``x`` against ``target`` at per-sample
    ``levels`` ``[B]`` in (0, 1), summed over the elements (where ``mask`` is 1)."""
    levels = torch.as_tensor(levels)
    if levels.dim() != 1 or levels.shape[0] != target.shape[0] \
            or bool(((levels <= 0) | (levels >= 1)).any()):
        raise ValueError(f"levels must be [B]=[{target.shape[0]}] values in (0, 1), got "
                         f"{tuple(levels.shape)}")

    def energy(x: Tensor) -> Tensor:
        err = target.to(x) - x
        q = per_sample(levels, err).to(err.dtype)
        loss = torch.maximum(q * err, (q - 1) * err)
        if mask is not None:
            loss = loss * mask.to(loss)
        return loss.flatten(1).sum(1)

    return energy


def refine(model: Model, x: Tensor, energy: Energy | None = None, *, steps: int = 20,
           step_size: float = 0.1, noise_scale: float = 0.1, t: float | Tensor = 0.2,
           scale: float = 1.0, mask: Tensor | None = None,
           generator: torch.Generator | None = None) -> Tensor:
    """Langevin refinement of states ``x`` under the diffusion prior of ``model`` (module docs).

    Args:
        model: the (unconditional) Denoiser or any :class:`pydiff.Model` with ``eps``.
        x: the starting states (clean, in the model's units), batch first.
        energy: optional observation energy ``x -> [B]`` (added with weight ``scale``).
        steps: Langevin iterations.
        step_size: the step ``eta`` (per unit of the summed energy).
        noise_scale: the Langevin noise (0: gradient descent, the most likely state).
        t: the noise level of the prior energy (float or ``[B]``).
        scale: the weight of ``energy``.
        mask: 1 where ``x`` may move (broadcastable to ``x``); default everywhere.
        generator: the stream of the energy's noise and of the Langevin noise.

    Returns:
        The refined states, shaped like ``x`` (detached).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise InputError(f"steps must be an int >= 0, got {steps!r}")
    if not step_size > 0 or not noise_scale >= 0 or not scale >= 0:
        raise InputError(f"step_size must be > 0, noise_scale and scale >= 0; got {step_size}, "
                         f"{noise_scale}, {scale}")
    if energy is not None and not callable(energy):
        raise TypeError(f"energy must be callable as energy(x) -> [B], got "
                        f"{type(energy).__name__}")
    move = None if mask is None else torch.broadcast_to(mask.to(x), x.shape)
    noise_std = (2 * step_size) ** 0.5 * noise_scale
    x = x.detach().clone()
    for _ in range(steps):
        with torch.inference_mode(False), torch.enable_grad():
            xg = x.clone().requires_grad_(True)
            total = diffusion_energy(model, xg, t, generator)
            if energy is not None:
                total = total + scale * energy(xg)
            grad, = torch.autograd.grad(total.sum(), xg)
        step = -step_size * grad
        if noise_std > 0:
            step = step + noise_std * randn_like(x, generator)
        x = x + (step if move is None else move * step)
    return x.detach()


__all__ = ["refine", "diffusion_energy", "pinball_energy"]
