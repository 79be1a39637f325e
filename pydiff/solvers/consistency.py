"""Multistep consistency sampling (Song et al. 2023, Algorithm 1).

A consistency model maps any noisy ``x_t`` straight to clean data; the Denoiser's ``x0`` is that
map (a network trained with ``prediction="x0"``, usually with EDM preconditioning). Multistep
sampling alternates the map with re-noising to the next, lower level:
``x_{i+1} = alpha_{i+1} f(x_i, t_i) + sigma_{i+1} z``; the last step (to ``t = 0``) returns
``f(x, t)`` itself. With the exact consistency function every step count samples exactly.

``gamma`` < 1 is the gamma-sampling of Consistency Trajectory Models (Kim et al. 2024) for a
model that jumps to any target time (:class:`pydiff.JumpDenoiser`): each step jumps
deterministically to the level ``sqrt(1 - gamma^2) sigma_next`` (in the variance-exploding
coordinate ``sigma / alpha``) and re-noises to ``sigma_next``, so
``x_next = alpha_next x0 + sqrt(1 - gamma^2) sigma_next eps + gamma sigma_next z`` with the
jump's x0 and eps. ``gamma = 0`` is deterministic (a learned ODE step), ``gamma = 1`` the
consistency sampling above.

Example:
    >>> import torch, pydiff
    >>> sched = pydiff.schedules.EDMSchedule()
    >>> model = pydiff.Denoiser(lambda x, t: torch.zeros_like(x), sched, prediction="x0")
    >>> grid = pydiff.timesteps(sched, 2, "custom", values=[80.0, 0.8, 0.0])
    >>> pydiff.sample(model, torch.randn(3, 2) * 80, "consistency", grid=grid).abs().max()
    tensor(0.)
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..schedules import Schedule
from .base import Solver, SolverState, check_noise, combine


class MultistepConsistency(Solver):
    """Multistep consistency sampling (re-noise the one-step prediction to the next level).

    Args:
        noise: ``"gaussian"`` or ``"brownian"``.
        gamma: the fraction of the next level reached by fresh noise (CTM's gamma-sampling);
            values below 1 need a model with ``supports_jump`` (:class:`pydiff.JumpDenoiser`).

    Example:
        >>> MultistepConsistency(gamma=0.5).gamma
        0.5
    """

    name = "consistency"
    stochastic = True
    jumps_to_data = True
    default_spacing = "karras"

    def __init__(self, noise: str = "gaussian", gamma: float = 1.0):
        if not 0.0 <= float(gamma) <= 1.0:
            raise InputError(f"gamma={gamma!r}: expected a number in [0, 1] (1: consistency "
                             "sampling, 0: deterministic jumps)")
        self.brownian = check_noise(noise)
        self.gamma = float(gamma)
        self._freeze()

    def coefficients(self, schedule: Schedule, grid, alpha, sigma):
        if self.gamma == 1.0:
            return {"x0": alpha[1:], "z": sigma[1:]}
        keep = (1 - self.gamma**2) ** 0.5
        # the jump's target: sigma_tilde(target) = keep * sigma_tilde(next) (0 at clean data)
        nxt = sigma[1:] / alpha[1:]
        target = torch.where(nxt > 0, schedule.t_from_sigma_tilde(
            torch.where(nxt > 0, keep * nxt, torch.ones_like(nxt))), torch.zeros_like(nxt))
        return {"x0": alpha[1:], "eps": keep * sigma[1:], "z": self.gamma * sigma[1:],
                "target": target}

    def step(self, state: SolverState, model) -> SolverState:
        c = state.coef
        if self.gamma == 1.0:
            d = self.evaluate(model, state)
            return self.advance(state, combine([d], [c["x0"]], self.noise(state), c["z"]))
        if not getattr(model, "supports_jump", False):
            raise InputError(f"consistency sampling with gamma={self.gamma} jumps to a target "
                             f"time: it needs a model that takes one (pydiff.JumpDenoiser), got "
                             f"{type(model).__name__}")
        p = model.evaluate(state.x, state.t, t_target=c["target"])
        return self.advance(state, combine([p.x0_term, p.eps_term], [c["x0"], c["eps"]],
                                           self.noise(state), c["z"]))
