"""First-order solvers and EDM's samplers: DDIM (eta), DDPM ancestral, Euler-ancestral, Euler and
Heun (EDM, with churn), Euler-Maruyama.

All are written in data prediction ``D = x0_hat``; ``eps_hat = (x - alpha D) / sigma`` is folded
into the coefficients. With ``alpha_{t|s} = alpha_t / alpha_s`` and
``sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2`` (the forward transition from s to t):

- DDIM: ``x_s = alpha_s D + sqrt(sigma_s^2 - s_eta^2) eps_hat + s_eta z``,
  ``s_eta = eta * sigma_{t|s} sigma_s / sigma_t`` (eta = 1 is DDPM's posterior sample).
- Euler in EDM's coordinates (``x / alpha`` against ``sigma / alpha``) is the same update as
  DDIM(eta=0); it is exact for linear interpolants, so it is also flow matching's Euler step.
  Euler-ancestral (k-diffusion, diffusers) is DDIM(eta=1) in the same coordinates.
- EDM churn (Karras et al., Alg. 2): before a step, raise the noise level from ``sigma~_i`` to
  ``sigma~_i (1 + gamma)`` (``sigma~ = sigma / alpha``) by adding fresh noise, then take the
  Euler/Heun step from there; ``gamma = min(S_churn / N, sqrt(2) - 1)`` inside
  ``[S_tmin, S_tmax]`` and 0 outside.
"""

from __future__ import annotations

import math

import torch

from ..schedules import Schedule
from ..tree import State
from .base import Solver, SolverState, check_noise, combine

Tensor = torch.Tensor


def _posterior_std(a_t: Tensor, s_t: Tensor, a_s: Tensor, s_s: Tensor) -> Tensor:
    """Std of q(x_s | x_t, x0): ``sigma_{t|s} sigma_s / sigma_t``."""
    var_ts = torch.clamp(s_t**2 - (a_t / a_s) ** 2 * s_s**2, min=0)
    return torch.sqrt(var_ts) * s_s / s_t


class DDIM(Solver):
    """DDIM (Song et al. 2021) with stochasticity ``eta`` (0: deterministic, 1: DDPM).

    ``s_noise`` scales the injected noise only (k-diffusion's ``s_noise``); ``noise="brownian"``
    draws it from a Brownian tree.

    Example:
        >>> solver = DDIM(eta=0.0)
    """

    name = "ddim"
    default_spacing = "time"

    def __init__(self, eta: float = 0.0, s_noise: float = 1.0, noise: str = "gaussian"):
        if not 0 <= eta:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.eta = float(eta)
        self.s_noise = float(s_noise)
        self.brownian = check_noise(noise) and self.eta > 0
        self._freeze()

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.eta > 0

    def coefficients(self, schedule: Schedule, grid, alpha, sigma):
        a_t, s_t, a_s, s_s = alpha[:-1], sigma[:-1], alpha[1:], sigma[1:]
        s_eta = self.eta * _posterior_std(a_t, s_t, a_s, s_s)
        c_eps = torch.sqrt(torch.clamp(s_s**2 - s_eta**2, min=0))
        c_x = c_eps / s_t
        return {"x": c_x, "x0": a_s - c_x * a_t, "z": self.s_noise * s_eta}

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

    def __init__(self, noise: str = "gaussian"):
        super().__init__(eta=1.0, noise=noise)


class EulerAncestral(DDIM):
    """Euler-ancestral (k-diffusion ``sample_euler_ancestral``, diffusers'
    ``EulerAncestralDiscreteScheduler``): step down to ``sigma_down``, add ``sigma_up`` noise.

    In EDM coordinates this is DDIM with the same ``eta``; the default grid is Karras'.

    Example:
        >>> solver = EulerAncestral(eta=1.0, s_noise=1.0)
    """

    name = "euler_ancestral"
    default_spacing = "karras"

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, noise: str = "gaussian"):
        super().__init__(eta=eta, s_noise=s_noise, noise=noise)


class _Churn(Solver):
    """EDM's churn stage shared by :class:`Euler` and :class:`Heun`."""

    def _init_churn(self, S_churn: float, S_tmin: float, S_tmax: float, S_noise: float) -> None:
        if S_churn < 0 or S_tmin < 0 or S_tmax < S_tmin:
            raise ValueError(f"need S_churn >= 0 and 0 <= S_tmin <= S_tmax, got S_churn={S_churn}"
                             f", S_tmin={S_tmin}, S_tmax={S_tmax}")
        self.S_churn, self.S_tmin, self.S_tmax = float(S_churn), float(S_tmin), float(S_tmax)
        self.S_noise = float(S_noise)

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.S_churn > 0

    def churn(self, schedule: Schedule, grid, alpha, sigma):
        """``(table, a_hat, s_hat)``: the raised level of every step and the stage coefficients."""
        a_t, s_t, t = alpha[:-1], sigma[:-1], grid[:-1]
        st = s_t / a_t
        n = grid.shape[0] - 1
        inside = (st >= self.S_tmin) & (st <= self.S_tmax)
        gamma = torch.where(inside, min(self.S_churn / n, math.sqrt(2) - 1), 0.0)
        t_hat = torch.where(gamma > 0, schedule.t_from_sigma_tilde(st * (1 + gamma)), t)
        t_hat = torch.clamp(t_hat, max=schedule.t_max)  # never beyond the prior
        a_hat, s_hat = schedule.alpha(t_hat), schedule.sigma(t_hat)
        extra = torch.sqrt(torch.clamp((s_hat / a_hat) ** 2 - st**2, min=0))
        table = {"t_hat": t_hat, "hat_x": a_hat / a_t, "hat_z": a_hat * extra * self.S_noise}
        return table, a_hat, s_hat

    def step_flags(self, schedule, grid, sigma):
        n = grid.shape[0] - 1
        gamma = min(self.S_churn / n, math.sqrt(2) - 1)
        if gamma == 0:
            return {"churn": (False,) * n}
        st = (sigma / schedule.alpha(grid))[:-1].reshape(n, -1)
        inside = ((st >= self.S_tmin) & (st <= self.S_tmax)).any(dim=1)
        return {"churn": tuple(bool(v) for v in inside.tolist())}

    def raise_noise(self, state: SolverState) -> tuple[State, object]:
        """The churned sample and its time (or the state and the grid point without churn)."""
        if not state.flags["churn"][state.i]:
            return state.x, None
        c = state.coef
        return combine([state.x], [c["hat_x"]], self.noise(state), c["hat_z"]), c["t_hat"]


class Euler(_Churn, DDIM):
    """Euler's method on the probability-flow ODE in EDM coordinates (Karras et al., Alg. 1/2).

    Without churn the update equals DDIM(eta=0); the default grid is Karras' (rho = 7).

    Example:
        >>> solver = Euler(S_churn=40, S_tmin=0.05, S_tmax=50, S_noise=1.003)
    """

    name = "euler"
    default_spacing = "karras"

    def __init__(self, S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float = float("inf"),
                 S_noise: float = 1.0):
        self.eta, self.s_noise, self.brownian = 0.0, 1.0, False
        self._init_churn(S_churn, S_tmin, S_tmax, S_noise)
        self._freeze()

    def coefficients(self, schedule: Schedule, grid, alpha, sigma):
        table, a_hat, s_hat = self.churn(schedule, grid, alpha, sigma)
        c_x = sigma[1:] / s_hat
        return {**table, "x": c_x, "x0": alpha[1:] - c_x * a_hat}

    def step(self, state: SolverState, model) -> SolverState:
        c = state.coef
        x, t_hat = self.raise_noise(state)
        d = self.evaluate(model, state, x, t_hat)
        return self.advance(state, combine([x, d], [c["x"], c["x0"]]))


class Heun(_Churn):
    """Heun's second-order method in EDM coordinates (Karras et al., Alg. 1/2), with churn.

    A step to ``sigma = 0`` is an Euler step. 2 network evaluations per step (1 for the last).

    Example:
        >>> solver = Heun(S_churn=40, S_tmin=0.05, S_tmax=50, S_noise=1.003)
    """

    name = "heun"
    order = 2
    default_spacing = "karras"

    def __init__(self, S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float = float("inf"),
                 S_noise: float = 1.0):
        self._init_churn(S_churn, S_tmin, S_tmax, S_noise)
        self._freeze()

    def coefficients(self, schedule, grid, alpha, sigma):
        table, a_t, s_t = self.churn(schedule, grid, alpha, sigma)
        a_s, s_s = alpha[1:], sigma[1:]
        st_t, st_s = s_t / a_t, s_s / a_s
        h = st_s - st_t
        half_t, half_s = h / (2 * st_t), h / (2 * st_s)
        return {
            **table,
            "x": s_s / s_t, "x0": a_s * (1 - st_s / st_t),           # Euler stage
            "h_x": a_s / a_t * (1 + half_t), "h_x0": -a_s * half_t,  # Heun correction
            "h_xp": half_s, "h_x0p": -a_s * half_s,
        }

    def step_flags(self, schedule, grid, sigma):
        n = sigma.shape[0] - 1
        s_next = sigma[1:].reshape(n, -1)
        # EDM's coordinates x/alpha blow up where alpha = 0 (flow matching at t = 1): the
        # correction's h (d_s - d_t) / 2 is unbounded there, so that step is a plain Euler step
        a_now = schedule.alpha(grid[:-1]).reshape(n, -1)
        second = (s_next > 0).all(dim=1) & (a_now > 0).all(dim=1)
        return {**super().step_flags(schedule, grid, sigma),
                "second_stage": tuple(bool(v) for v in second.tolist())}

    def step(self, state: SolverState, model) -> SolverState:
        c = state.coef
        x, t_hat = self.raise_noise(state)
        d = self.evaluate(model, state, x, t_hat)
        x_euler = combine([x, d], [c["x"], c["x0"]])
        if not state.flags["second_stage"][state.i]:
            return self.advance(state, x_euler)
        d_next = self.evaluate(model, state, x_euler, at=state.i + 1)
        x = combine([x, d, x_euler, d_next], [c["h_x"], c["h_x0"], c["h_xp"], c["h_x0p"]])
        return self.advance(state, x, nfe=2)


class EulerMaruyama(Solver):
    """Euler-Maruyama on the reverse SDE ``dx = [f x - g^2 score] dt + g dw`` (in ``t``).

    A step to ``sigma = 0`` returns the denoised estimate (no noise), as Song et al. do.

    Example:
        >>> solver = EulerMaruyama(noise="brownian")
    """

    name = "euler_maruyama"
    stochastic = True
    default_spacing = "time"

    def __init__(self, noise: str = "gaussian"):
        self.brownian = check_noise(noise)
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
