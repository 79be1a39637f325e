"""DPM-Solver-2 in EDM coordinates (k-diffusion's ``sample_dpm_2`` and ``sample_dpm_2_ancestral``,
diffusers' ``KDPM2DiscreteScheduler`` and ``KDPM2AncestralDiscreteScheduler``).

In ``y = x / alpha`` against ``sigma~ = sigma / alpha`` the probability-flow ODE is
``dy = eps d sigma~``. A step from ``sigma~_t`` to a target ``sigma~_d`` takes an Euler stage to
the midpoint in log sigma~, ``sigma~_m = sqrt(sigma~_t sigma~_d)``, evaluates the model there and
steps the whole way with that slope: ``y_d = y_t + eps(y_m, sigma~_m) (sigma~_d - sigma~_t)``
(second order, two evaluations). The ancestral variant aims at k-diffusion's
``sigma_down = sqrt(sigma~_s^2 - sigma_up^2)`` and adds ``sigma_up`` fresh noise, with
``sigma_up = min(sigma~_s, eta sqrt(sigma~_s^2 (sigma~_t^2 - sigma~_s^2) / sigma~_t^2))``.
A step whose target is ``sigma~ = 0`` is an Euler step without noise, as in both references.
In ``x`` each stage is ``x_d = (alpha_d / alpha_t) x_t + alpha_d (sigma~_d - sigma~_t) eps``.
"""

from __future__ import annotations

import torch

from ..schedules import Schedule
from .base import Solver, SolverState, check_noise, combine


class DPM2(Solver):
    """DPM-Solver-2 (KDPM2): midpoint in log sigma~, 2 evaluations per step (1 for the last).

    Args:
        eta: ancestral noise (0: the ODE solver; 1: ``dpm2_ancestral``'s default).
        s_noise: scale of the injected noise (k-diffusion's ``s_noise``).
        noise: ``"gaussian"`` or ``"brownian"`` (see :mod:`pydiff.solvers.brownian`).

    Example:
        >>> solver = DPM2()
    """

    name = "dpm2"
    order = 2
    default_spacing = "karras"

    def __init__(self, eta: float = 0.0, s_noise: float = 1.0, noise: str = "gaussian"):
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.eta, self.s_noise = float(eta), float(s_noise)
        self.brownian = check_noise(noise) and self.eta > 0
        self._freeze()

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.eta > 0

    def coefficients(self, schedule: Schedule, grid, alpha, sigma):
        a_t, a_s = alpha[:-1], alpha[1:]
        st_t, st_s = sigma[:-1] / a_t, sigma[1:] / a_s
        up = torch.minimum(st_s, self.eta * torch.sqrt(
            torch.clamp(st_s**2 * (st_t**2 - st_s**2) / st_t**2, min=0)))
        down = torch.sqrt(torch.clamp(st_s**2 - up**2, min=0))
        midpoint = down > 0
        st_m = torch.sqrt(st_t * torch.where(midpoint, down, st_t))  # unused without midpoint
        t_m = schedule.t_from_sigma_tilde(st_m)
        a_m = schedule.alpha(t_m)
        return {"t_mid": t_m, "mid_x": a_m / a_t, "mid_e": a_m * (st_m - st_t),
                "x": a_s / a_t, "e": a_s * (down - st_t),
                "z": torch.where(midpoint, self.s_noise * a_s * up, 0.0)}

    def step_flags(self, schedule, grid, sigma):
        n = sigma.shape[0] - 1
        st = (sigma / schedule.alpha(grid)).reshape(n + 1, -1)
        st_t, st_s = st[:-1], st[1:]
        # the ancestral target sigma_down is 0 only where sigma_up takes all of sigma~_s
        full_up = self.eta**2 * (st_t**2 - st_s**2) >= st_t**2
        midpoint = (st_s > 0).all(dim=1) & ~full_up.any(dim=1)
        return {"midpoint": tuple(bool(v) for v in midpoint.tolist())}

    def step(self, state: SolverState, model) -> SolverState:
        c = state.coef
        e = self.predict(model, state)[1]
        if not state.flags["midpoint"][state.i]:  # a step to sigma = 0: Euler, no noise
            return self.advance(state, combine([state.x, e], [c["x"], c["e"]]))
        x_mid = combine([state.x, e], [c["mid_x"], c["mid_e"]])
        e_mid = self.predict(model, state, x_mid, c["t_mid"])[1]
        if self.eta == 0:
            return self.advance(state, combine([state.x, e_mid], [c["x"], c["e"]]), nfe=2)
        x = combine([state.x, e_mid], [c["x"], c["e"]], self.noise(state), c["z"])
        return self.advance(state, x, nfe=2)


class DPM2Ancestral(DPM2):
    """Ancestral DPM-Solver-2 (KDPM2-ancestral): ``eta = 1`` by default.

    Example:
        >>> solver = DPM2Ancestral(eta=1.0, s_noise=1.0)
    """

    name = "dpm2_ancestral"

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, noise: str = "gaussian"):
        super().__init__(eta=eta, s_noise=s_noise, noise=noise)
