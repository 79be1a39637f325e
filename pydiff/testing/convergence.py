"""Convergence measurements on the analytic harness (exact flows of Gaussian data).

``flow_error`` runs a solver from ``t_start`` to ``t_end`` (no final jump to 0) on samples of a
Gaussian's marginal and compares with the exact probability-flow map;
``measured_order`` fits the global order ``p`` in ``error ~ steps^-p``. The solver tests use
them; they are handy for checking a new solver too. A measurement harness on top of
:func:`pydiff.sample`, so it lives with the testing utilities, not with the solvers.

Example:
    >>> import pydiff
    >>> from pydiff.testing.convergence import measured_order
    >>> sched = pydiff.schedules.VPSchedule()
    >>> round(measured_order("ddim", sched, (20, 40)), 1)
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..grids import timesteps
from ..sampling import sample
from ..schedules import Schedule
from ..solvers import Solver, get_solver
from . import GaussianMixture

DEFAULT_DATA = GaussianMixture.gaussian(mean=[1.0, -0.5], std=[0.3, 1.5])


def flow_error(solver: str | Solver, schedule: Schedule, steps: int, *,
               data: GaussianMixture = DEFAULT_DATA, prediction: str = "eps",
               spacing: str | None = None, t_start: float | None = None, t_end: float = 0.05,
               n: int = 8, seed: int = 0, **options: Any) -> tuple[float, int]:
    """``(max abs error against the exact flow, network evaluations)`` of one run (float64)."""
    solver = get_solver(solver, **options)
    model = data.denoiser(schedule, prediction)
    t0 = schedule.t_max if t_start is None else t_start
    x = data.marginal_sample(schedule, t0, n, torch.Generator().manual_seed(seed))
    grid = timesteps(schedule, steps, spacing or solver.default_spacing, t_start=t0,
                     t_end=t_end, final_zero=False)
    exact = data.flow(schedule, x, t0, t_end)
    if schedule.mean_reverting:  # the state is x - y: run on the unshifted x with a bound y
        y = torch.full_like(x, 0.3)
        model, x, exact = model.bind(y=y), x + y, exact + y
    nfe = []
    out = sample(model, x, solver, grid=grid, callback=lambda st: nfe.append(st.nfe))
    return float((out - exact).abs().max()), nfe[-1]


def measured_order(solver: str | Solver, schedule: Schedule, steps: Sequence[int] = (10, 20, 40),
                   **kwargs: Any) -> float:
    """Least-squares slope ``p`` of ``log error = c - p log steps`` over ``steps``."""
    xs = [math.log(s) for s in steps]
    ys = [math.log(flow_error(solver, schedule, s, **kwargs)[0]) for s in steps]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)
    return -slope


__all__ = ["flow_error", "measured_order", "DEFAULT_DATA"]
