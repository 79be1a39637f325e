"""First-order solvers: DDIM (eta), DDPM ancestral, Euler (EDM), Euler-Maruyama.

All are written in data prediction ``D = x0_hat``; ``eps_hat = (x - alpha D) / sigma`` is folded
into the coefficients. With ``alpha_{t|s} = alpha_t / alpha_s`` and
``sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2`` (the forward transition from s to t):

- DDIM: ``x_s = alpha_s D + sqrt(sigma_s^2 - s_eta^2) eps_hat + s_eta z``,
  ``s_eta = eta * sigma_{t|s} sigma_s / sigma_t`` (eta = 1 is DDPM's posterior sample).
- Euler in EDM's coordinates (``x / alpha`` against ``sigma / alpha``) is the same update as
  DDIM(eta=0); it is exact for linear interpolants, so it is also flow matching's Euler step.
"""

from __future__ import annotations

import torch

from ..schedules import Schedule
from .base import Solver, SolverState, combine

Tensor = torch.Tensor


def _posterior_std(a_t: Tensor, s_t: Tensor, a_s: Tensor, s_s: Tensor) -> Tensor:
    """Std of q(x_s | x_t, x0): ``sigma_{t|s} sigma_s / sigma_t``."""
    var_ts = torch.clamp(s_t**2 - (a_t / a_s) ** 2 * s_s**2, min=0)
    return torch.sqrt(var_ts) * s_s / s_t


class DDIM(Solver):
    """DDIM (Song et al. 2021) with stochasticity ``eta`` (0: deterministic, 1: DDPM).

    Example:
        >>> solver = DDIM(eta=0.0)
    """

    name = "ddim"
    default_spacing = "time"

    def __init__(self, eta: float = 0.0):
        if not 0 <= eta:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.eta = float(eta)
        self._freeze()

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.eta > 0

    def coefficients(self, schedule: Schedule, grid, alpha, sigma):
        a_t, s_t, a_s, s_s = alpha[:-1], sigma[:-1], alpha[1:], sigma[1:]
        s_eta = self.eta * _posterior_std(a_t, s_t, a_s, s_s)
        c_eps = torch.sqrt(torch.clamp(s_s**2 - s_eta**2, min=0))
        c_x = c_eps / s_t
        return {"x": c_x, "x0": a_s - c_x * a_t, "z": s_eta}

    def step(self, state: SolverState, model) -> SolverState:
        c = state.coef
        d = self.evaluate(model, state)
        if self.eta == 0:
            return self.advance(state, combine([state.x, d], [c["x"], c["x0"]]))
        return self.advance(state, combine([state.x, d], [c["x"], c["x0"]],
                                           self.noise(state), c["z"]))


class DDPM(DDIM):
    """Ancestral sampling from DDPM's posterior ``q(x_s | x_t, x0_hat)`` ("fixed_small")."""

    name = "ddpm"

    def __init__(self):
        super().__init__(eta=1.0)


class Euler(DDIM):
    """Euler's method on the probability-flow ODE in EDM coordinates (Karras et al., Alg. 1).

    The update equals DDIM(eta=0); the default grid is Karras' (rho = 7).
    """

    name = "euler"
    default_spacing = "karras"

    def __init__(self):
        super().__init__(eta=0.0)


class Heun(Solver):
    """Heun's second-order method in EDM coordinates (Karras et al., Alg. 1); a step to
    ``sigma = 0`` is an Euler step. 2 network evaluations per step (1 for the last)."""

    name = "heun"
    order = 2
    default_spacing = "karras"

    def __init__(self):
        self._freeze()

    def coefficients(self, schedule, grid, alpha, sigma):
        a_t, s_t, a_s, s_s = alpha[:-1], sigma[:-1], alpha[1:], sigma[1:]
        st_t, st_s = s_t / a_t, s_s / a_s
        h = st_s - st_t
        half_t, half_s = h / (2 * st_t), h / (2 * st_s)
        return {
            "x": s_s / s_t, "x0": a_s * (1 - st_s / st_t),           # Euler stage
            "h_x": a_s / a_t * (1 + half_t), "h_x0": -a_s * half_t,  # Heun correction
            "h_xp": half_s, "h_x0p": -a_s * half_s,
        }

    def step_flags(self, schedule, grid, sigma):
        s_next = sigma[1:].reshape(sigma.shape[0] - 1, -1)
        return {"second_stage": tuple(bool(v) for v in (s_next > 0).all(dim=1).tolist())}

    def step(self, state: SolverState, model) -> SolverState:
        c = state.coef
        d = self.evaluate(model, state)
        x_euler = combine([state.x, d], [c["x"], c["x0"]])
        if not state.flags["second_stage"][state.i]:
            return self.advance(state, x_euler)
        d_next = self.evaluate(model, state, x_euler, at=state.i + 1)
        x = combine([state.x, d, x_euler, d_next], [c["h_x"], c["h_x0"], c["h_xp"], c["h_x0p"]])
        return self.advance(state, x, nfe=2)


class EulerMaruyama(Solver):
    """Euler-Maruyama on the reverse SDE ``dx = [f x - g^2 score] dt + g dw`` (in ``t``).

    A step to ``sigma = 0`` returns the denoised estimate (no noise), as Song et al. do.
    """

    name = "euler_maruyama"
    stochastic = True
    default_spacing = "time"

    def __init__(self):
        self._freeze()

    def coefficients(self, schedule, grid, alpha, sigma):
        t, s = grid[:-1], grid[1:]
        a_t, s_t = alpha[:-1], sigma[:-1]
        f, g2 = schedule.sde(t)
        dt = s - t  # negative: integrating backwards
        c_x = 1 + f * dt + g2 * dt / s_t**2
        c_x0 = -g2 * a_t * dt / s_t**2
        c_z = torch.sqrt(torch.clamp(-g2 * dt, min=0))
        final = sigma[1:] == 0
        return {"x": torch.where(final, 0.0, c_x), "x0": torch.where(final, 1.0, c_x0),
                "z": torch.where(final, 0.0, c_z)}

    def step(self, state: SolverState, model) -> SolverState:
        c = state.coef
        d = self.evaluate(model, state)
        return self.advance(state, combine([state.x, d], [c["x"], c["x0"]],
                                           self.noise(state), c["z"]))
