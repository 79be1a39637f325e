"""Multistep consistency sampling (Song et al. 2023, Algorithm 1).

A consistency model maps any noisy ``x_t`` straight to clean data; the Denoiser's ``x0`` is that
map (a network trained with ``prediction="x0"``, usually with EDM preconditioning). Multistep
sampling alternates the map with re-noising to the next, lower level:
``x_{i+1} = alpha_{i+1} f(x_i, t_i) + sigma_{i+1} z``; the last step (to ``t = 0``) returns
``f(x, t)`` itself. With the exact consistency function every step count samples exactly.

Example:
    >>> import torch, pydiff
    >>> sched = pydiff.schedules.EDMSchedule()
    >>> model = pydiff.Denoiser(lambda x, t: torch.zeros_like(x), sched, prediction="x0")
    >>> grid = pydiff.timesteps(sched, 2, "custom", values=[80.0, 0.8, 0.0])
    >>> pydiff.sample(model, torch.randn(3, 2) * 80, "consistency", grid=grid).abs().max()
    tensor(0.)
"""

from __future__ import annotations

from ..schedules import Schedule
from .base import Solver, SolverState, check_noise, combine


class MultistepConsistency(Solver):
    """Multistep consistency sampling (re-noise the one-step prediction to the next level).

    Example:
        >>> solver = MultistepConsistency()
    """

    name = "consistency"
    stochastic = True
    default_spacing = "karras"

    def __init__(self, noise: str = "gaussian"):
        self.brownian = check_noise(noise)
        self._freeze()

    def coefficients(self, schedule: Schedule, grid, alpha, sigma):
        return {"x0": alpha[1:], "z": sigma[1:]}

    def step(self, state: SolverState, model) -> SolverState:
        c = state.coef
        d = self.evaluate(model, state)
        return self.advance(state, combine([d], [c["x0"]], self.noise(state), c["z"]))
