"""Flow-matching solvers: Euler and midpoint on the probability-flow velocity, in ``t``.

The model's velocity ``v = alpha' x0 + sigma' eps`` (what flow-matching networks predict; the
Denoiser converts any other parameterization) written in data prediction is
``v(x, t) = (sigma'/sigma) x + (alpha' - sigma' alpha / sigma) D``, so each stage is one fused
combination of the state and model outputs. For rectified flow (``alpha = 1 - t, sigma = t``)
Euler in ``t`` coincides with DDIM; for curved schedules it does not.

Example:
    >>> import torch, pydiff
    >>> sched = pydiff.schedules.FlowSchedule()
    >>> model = pydiff.Denoiser(lambda x, t: -x, sched, prediction="velocity")
    >>> pydiff.sample(model, torch.randn(4, 2), "flow_midpoint", steps=8).shape
    torch.Size([4, 2])
"""

from __future__ import annotations

import torch

from ..schedules import Schedule
from .base import Solver, SolverState, combine

Tensor = torch.Tensor


def _velocity_terms(schedule: Schedule, t: Tensor) -> tuple[Tensor, Tensor]:
    """``(c_x, c_D)`` with ``v(x, t) = c_x x + c_D D``."""
    da, ds = schedule.derivatives(t)
    a, s = schedule.alpha(t), schedule.sigma(t)
    return ds / s, da - ds * a / s


class FlowEuler(Solver):
    """Euler's method on ``dx/dt = v(x, t)``.

    Example:
        >>> solver = FlowEuler()
    """

    name = "flow_euler"
    default_spacing = "time"

    def __init__(self):
        self._freeze()

    def coefficients(self, schedule: Schedule, grid, alpha, sigma):
        dt = grid[1:] - grid[:-1]
        vx, vd = _velocity_terms(schedule, grid[:-1])
        return {"x": 1 + dt * vx, "d": dt * vd}

    def step(self, state: SolverState, model) -> SolverState:
        c = state.coef
        d = self.evaluate(model, state)
        return self.advance(state, combine([state.x, d], [c["x"], c["d"]]))


class FlowMidpoint(Solver):
    """The explicit midpoint method on ``dx/dt = v(x, t)`` (2 evaluations per step).

    Example:
        >>> solver = FlowMidpoint()
    """

    name = "flow_midpoint"
    order = 2
    default_spacing = "time"

    def __init__(self):
        self._freeze()

    def coefficients(self, schedule: Schedule, grid, alpha, sigma):
        t, dt = grid[:-1], grid[1:] - grid[:-1]
        t_mid = t + dt / 2
        vx, vd = _velocity_terms(schedule, t)
        mx, md = _velocity_terms(schedule, t_mid)
        return {"t_mid": t_mid, "m_x": 1 + dt / 2 * vx, "m_d": dt / 2 * vd,
                "x": torch.ones_like(dt), "x_mid": dt * mx, "d_mid": dt * md}

    def step(self, state: SolverState, model) -> SolverState:
        c = state.coef
        d = self.evaluate(model, state)
        x_mid = combine([state.x, d], [c["m_x"], c["m_d"]])
        d_mid = self.evaluate(model, state, x_mid, c["t_mid"])
        x = combine([state.x, x_mid, d_mid], [c["x"], c["x_mid"], c["d_mid"]])
        return self.advance(state, x, nfe=2)
