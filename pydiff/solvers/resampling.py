"""RePaint's resampling (Lugmayr et al. 2022) as a solver wrapper.

Replacement hooks (:class:`pydiff.hooks.InpaintReplace`, :class:`DataConsistency`) paste the
known region but the generated region only learns about it through later network calls; RePaint
harmonizes the two by going back and forth: step ``t_i -> t_{i+j}`` (``j`` = ``jump_length``
steps, hooks applied), re-noise ``t_{i+j} -> t_i`` with the forward transition, and go again,
``jumps`` passes in all, every ``j`` steps.

This cannot be a hook (a hook only sees the state after a step and cannot re-run the model) nor a
Denoiser wrapper (it changes which times the model is evaluated at), so it is a solver wrapper:
``Resampling("ddpm", jumps=10, jump_length=10)`` is RePaint's schedule (``jump_n_sample=10``,
``jump_length=10``) on any solver and grid. The forward transition
``x_t = (alpha_t / alpha_s) x_s + sqrt(sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2) z`` is
precomputed with the base solver's table; the final step is never inside a resampled span. Each
pass restarts from the state saved before the span, so multistep solvers keep the history that
belongs to the earlier times. The cost is about ``jumps`` times the base run's evaluations. Use
Gaussian noise in stochastic base solvers (a Brownian-tree source replays the same increments
in every pass).

Example:
    >>> import torch, pydiff
    >>> from pydiff.solvers import Resampling
    >>> sched = pydiff.schedules.VPSchedule()
    >>> model = pydiff.Denoiser(lambda x, t: torch.zeros_like(x), sched)
    >>> known, mask = torch.ones(2, 4), torch.tensor([1.0, 1.0, 0.0, 0.0])
    >>> x_T = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    >>> state = pydiff.sample(model, x_T, Resampling("ddim", jumps=3), steps=5,
    ...                       hooks=[pydiff.hooks.InpaintReplace(known, mask)], return_state=True)
    >>> state.nfe, bool((state.x[:, :2] == 1).all())
    (13, True)
"""

from __future__ import annotations

from typing import Any

import torch

from ..schedules import Schedule
from .base import Solver, SolverState, combine

Tensor = torch.Tensor


class Resampling(Solver):
    """RePaint resampling around any solver (see the module docstring).

    Args:
        solver: the base solver (a name or an instance).
        jumps: passes over each resampled span (RePaint's ``jump_n_sample``; 1 = no resampling).
        jump_length: steps per span before jumping back (RePaint's ``jump_length``).
        **options: the base solver's options when ``solver`` is a name.
    """

    name = "resampling"
    stochastic = True

    def __init__(self, solver: str | Solver = "ddpm", jumps: int = 10, jump_length: int = 1,
                 **options: Any):
        for arg, value in (("jumps", jumps), ("jump_length", jump_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be an integer >= 1, got {value!r}")
        from . import get_solver  # the registry imports this module

        self.base = get_solver(solver, **options)
        self.jumps, self.jump_length = jumps, jump_length
        self.order = self.base.order
        self.default_spacing = self.base.default_spacing
        self._freeze()

    def _spans(self, steps: int) -> list[int]:
        # steps taken forward before jumping back, per step index (0: no resampling there)
        return [min(self.jump_length, steps - 1 - i) if i % self.jump_length == 0 else 0
                for i in range(steps)]

    def coefficients(self, schedule: Schedule, grid: Tensor, alpha: Tensor,
                     sigma: Tensor) -> dict[str, Tensor]:
        table = dict(self.base.coefficients(schedule, grid, alpha, sigma))
        if any(k.startswith("renoise_") for k in table):
            raise RuntimeError(f"{self.base!r} uses table names starting with 'renoise_'")
        n = grid.shape[0] - 1
        spans = self._spans(n)
        far = torch.tensor([i + k for i, k in enumerate(spans)], device=grid.device)
        a_t, s_t, a_s, s_s = alpha[:-1], sigma[:-1], alpha[far], sigma[far]
        ratio = a_t / a_s
        table["renoise_x"] = ratio
        table["renoise_z"] = torch.sqrt(torch.clamp(s_t**2 - ratio**2 * s_s**2, min=0))
        return table

    def step_flags(self, schedule: Schedule, grid: Tensor, sigma: Tensor) -> dict[str, tuple]:
        flags = dict(self.base.step_flags(schedule, grid, sigma))
        flags["resample_span"] = tuple(self._spans(grid.shape[0] - 1))
        return flags

    def step(self, state: SolverState, model: Any) -> SolverState:
        extra = 0
        span = state.flags["resample_span"][state.i]
        if span:
            c = state.coef
            for _ in range(self.jumps - 1):
                moved = state
                for _ in range(span):
                    moved = self.base.step(moved, model)
                extra += moved.nfe - state.nfe
                # fresh noise: a Brownian-tree source would hand every pass the same increments
                back = combine([moved.x], [c["renoise_x"]], self.noise(state, path=False),
                               c["renoise_z"])
                state = state.replace(x=back)
        out = self.base.step(state, model)
        return out.replace(nfe=out.nfe + extra)

    def __repr__(self) -> str:
        return f"Resampling({self.base!r}, jumps={self.jumps}, jump_length={self.jump_length})"


__all__ = ["Resampling"]
