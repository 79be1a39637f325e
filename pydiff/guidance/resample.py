"""RePaint's resampling (Lugmayr et al. 2022) as a solver wrapper.

Replacement hooks (:class:`pydiff.hooks.InpaintReplace`, :class:`DataConsistency`) paste the
known region but the generated region only learns about it through later network calls; RePaint
harmonizes the two by going back and forth: step ``t_i -> t_{i+1}`` (hooks applied), re-noise
``t_{i+1} -> t_i`` with the forward transition, and step again, ``jumps`` times per step.

This cannot be a hook (a hook only sees the state after a step and cannot re-run the model) nor a
Denoiser wrapper (it changes which times the model is evaluated at), so it is a solver wrapper:
``Resampling("ddpm", jumps=10)`` runs any solver's step ``jumps`` times per grid interval. The
forward transition ``x_t = (alpha_t / alpha_s) x_s + sqrt(sigma_t^2 - (alpha_t / alpha_s)^2
sigma_s^2) z`` is precomputed with the base solver's table; the last step is not resampled.
Multistep solvers keep the history from before the step, which stays valid (it belongs to earlier
times). RePaint's jump length ``j > 1`` (going back several steps at once) is not provided: one
back-step per interval (``j = 1``) is the variant that fits an explicit per-step state.

Example:
    >>> import torch, pydiff
    >>> from pydiff.guidance import Resampling
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
from ..solvers import Solver, SolverState, combine, get_solver

Tensor = torch.Tensor


class Resampling(Solver):
    """Run ``solver``'s step ``jumps`` times per interval, re-noising in between (RePaint).

    Args:
        solver: the base solver (a name or an instance).
        jumps: ``r`` in RePaint: model evaluations of the base step per interval (1 = no
            resampling).
        **options: the base solver's options when ``solver`` is a name.
    """

    name = "resampling"
    stochastic = True

    def __init__(self, solver: str | Solver = "ddpm", jumps: int = 10, **options: Any):
        if isinstance(jumps, bool) or not isinstance(jumps, int) or jumps < 1:
            raise ValueError(f"jumps must be an integer >= 1, got {jumps!r}")
        self.base = get_solver(solver, **options)
        self.jumps = jumps
        self.order = self.base.order
        self.default_spacing = self.base.default_spacing
        self._freeze()

    def coefficients(self, schedule: Schedule, grid: Tensor, alpha: Tensor,
                     sigma: Tensor) -> dict[str, Tensor]:
        table = dict(self.base.coefficients(schedule, grid, alpha, sigma))
        if any(k.startswith("renoise_") for k in table):
            raise RuntimeError(f"{self.base!r} uses table names starting with 'renoise_'")
        a_t, s_t, a_s, s_s = alpha[:-1], sigma[:-1], alpha[1:], sigma[1:]
        ratio = a_t / a_s
        table["renoise_x"] = ratio
        table["renoise_z"] = torch.sqrt(torch.clamp(s_t**2 - ratio**2 * s_s**2, min=0))
        return table

    def step_flags(self, schedule: Schedule, grid: Tensor, sigma: Tensor) -> dict[str, tuple]:
        return self.base.step_flags(schedule, grid, sigma)

    def step(self, state: SolverState, model: Any) -> SolverState:
        extra = 0
        if state.i < state.steps - 1:
            c = state.coef
            for _ in range(self.jumps - 1):
                moved = self.base.step(state, model)
                extra += moved.nfe - state.nfe
                back = combine([moved.x], [c["renoise_x"]], self.noise(state), c["renoise_z"])
                state = state.replace(x=back)
        out = self.base.step(state, model)
        return out.replace(nfe=out.nfe + extra)

    def __repr__(self) -> str:
        return f"Resampling({self.base!r}, jumps={self.jumps})"


__all__ = ["Resampling"]
