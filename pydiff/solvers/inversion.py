"""Inversion (data to noise) and the exactly invertible BDIA sampler.

Inversion solvers take the same decreasing grid as sampling and walk it backwards
(``Solver.inverse``): ``pydiff.sample(model, x0, "ddim_inversion", steps, final_zero=False)``
returns the latent that DDIM maps back to ``x0``.

- :class:`DDIMInversion`: ``x_{j+1} = (sigma_{j+1}/sigma_j) x_j + (alpha_{j+1} -
  (sigma_{j+1}/sigma_j) alpha_j) D``. The classic form evaluates ``D`` at ``x_j``
  (approximate); with ``fixed_point_iters = k`` it evaluates ``D`` at the new point and
  iterates, solving the DDIM step's equation exactly where the iteration contracts (small
  steps; Pan et al. 2023's AIDI).
- :class:`BDIA` (Zhang et al. 2023): ``x_{i+1} = gamma x_{i-1} + (c_i - gamma b_i) x_i +
  (d_i - gamma e_i) D(x_i)``, where ``(c_i, d_i)`` is DDIM's step from ``t_i`` forward to
  ``t_{i+1}`` and ``(b_i, e_i)`` its step from ``t_i`` back to ``t_{i-1}``; the first step is
  DDIM. Given ``(x_i, x_{i+1})`` the previous state solves linearly, so
- :class:`BDIAInversion` reconstructs the noise side exactly: its first step (from the data)
  is a DDIM inversion step (it only defines the pair), every later step inverts BDIA in closed
  form. BDIA's state is a pair, so an exact reconstruction starts sampling from the pair the
  inversion ends with (:meth:`BDIA.init_pair`), not from the last latent alone.

A clean start (``sigma = 0``) takes the data itself as the denoised value (no network call
at ``t = 0``).
"""

from __future__ import annotations

import torch

from ..schedules import Schedule
from ..tree import State
from .base import Solver, SolverState, combine

Tensor = torch.Tensor


def _ddim_step(a_t: Tensor, s_t: Tensor, a_s: Tensor, s_s: Tensor) -> tuple[Tensor, Tensor]:
    """``(c_x, c_D)`` of DDIM(eta=0) from level ``t`` to level ``s`` (either direction)."""
    c_x = s_s / s_t
    return c_x, a_s - c_x * a_t


def _check_gamma(gamma: float) -> float:
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    return float(gamma)


def _clean_start(sigma: Tensor) -> tuple[bool, ...]:
    n = sigma.shape[0] - 1
    return tuple(bool(v) for v in (sigma[:-1].reshape(n, -1) == 0).all(dim=1).tolist())


class DDIMInversion(Solver):
    """DDIM inversion, classic or exact by fixed-point iteration (``fixed_point_iters``).

    Example:
        >>> solver = DDIMInversion(fixed_point_iters=5)
    """

    name = "ddim_inversion"
    default_spacing = "time"
    inverse = True

    def __init__(self, fixed_point_iters: int = 0):
        if fixed_point_iters < 0:
            raise ValueError(f"fixed_point_iters must be >= 0, got {fixed_point_iters}")
        self.fixed_point_iters = int(fixed_point_iters)
        self._freeze()

    def coefficients(self, schedule: Schedule, grid, alpha, sigma):
        # from a clean start (sigma = 0) the step is the forward mean alpha_{j+1} x_0
        s_t = torch.where(sigma[:-1] == 0, 1.0, sigma[:-1])
        c_x, c_d = _ddim_step(alpha[:-1], s_t, alpha[1:], sigma[1:])
        c_x = torch.where(sigma[:-1] == 0, 0.0, c_x)
        c_d = torch.where(sigma[:-1] == 0, alpha[1:], c_d)
        return {"x": c_x, "d": c_d}

    def step_flags(self, schedule, grid, sigma):
        return {"clean": _clean_start(sigma)}

    def step(self, state: SolverState, model) -> SolverState:
        c = state.coef
        d = state.x if state.flags["clean"][state.i] else self.evaluate(model, state)
        x = combine([state.x, d], [c["x"], c["d"]])
        for _ in range(self.fixed_point_iters):
            d = self.evaluate(model, state, x, at=state.i + 1)
            x = combine([state.x, d], [c["x"], c["d"]])
        return self.advance(state, x, nfe=1 + self.fixed_point_iters)


class BDIA(Solver):
    """BDIA-DDIM sampler (exactly invertible with :class:`BDIAInversion`).

    Args:
        gamma: weight of the backward integration term (1: fully reversible leapfrog,
            0: DDIM).

    Example:
        >>> solver = BDIA(gamma=1.0)
    """

    name = "bdia"
    default_spacing = "time"

    def __init__(self, gamma: float = 1.0):
        self.gamma = _check_gamma(gamma)
        self._freeze()

    def coefficients(self, schedule: Schedule, grid, alpha, sigma):
        g = self.gamma
        c_x, c_d = _ddim_step(alpha[:-1], sigma[:-1], alpha[1:], sigma[1:])
        prev_a = torch.cat([alpha[:1], alpha[:-2]])  # row 0: unused (DDIM first step)
        prev_s = torch.cat([sigma[:1], sigma[:-2]])
        b_x, b_d = _ddim_step(alpha[:-1], sigma[:-1], prev_a, prev_s)
        first = torch.zeros_like(c_x)
        first[0] = 1
        return {"prev": torch.where(first > 0, 0.0, torch.full_like(c_x, g)),
                "x": torch.where(first > 0, c_x, c_x - g * b_x),
                "d": torch.where(first > 0, c_d, c_d - g * b_d)}

    def init_pair(self, x_start: State, x_next: State, schedule: Schedule, grid: Tensor,
                  **kwargs) -> SolverState:
        """A run that starts from the pair ``(x at grid[0], x at grid[1])`` (e.g. the end of
        :class:`BDIAInversion`: ``x = state.x, x_next = state.aux[0]``); it continues at step 1,
        which makes the reconstruction exact."""
        state = self.init(x_start, schedule, grid, **kwargs)
        return state.replace(x=x_next, i=1, aux=(state.x,), nfe=0)

    def step(self, state: SolverState, model) -> SolverState:
        c = state.coef
        d = self.evaluate(model, state)
        prev = state.aux[0] if state.aux else state.x  # weight 0 on the first step
        x = combine([prev, state.x, d], [c["prev"], c["x"], c["d"]])
        return self.advance(state, x, aux=(state.x,))


class BDIAInversion(Solver):
    """Exact inversion of :class:`BDIA` (same ``gamma``, same grid).

    ``init`` takes the data-side sample; the first step defines the partner state by DDIM
    inversion. The final state holds the latent (``state.x``) and its partner one grid point
    cleaner (``state.aux[0]``); :meth:`BDIA.init_pair` samples back exactly from them.

    Example:
        >>> solver = BDIAInversion(gamma=1.0)
    """

    name = "bdia_inversion"
    default_spacing = "time"
    inverse = True

    def __init__(self, gamma: float = 1.0):
        self.gamma = _check_gamma(gamma)
        self._freeze()

    def coefficients(self, schedule: Schedule, grid, alpha, sigma):
        # the grid is increasing here: point j - 1 is cleaner, j + 1 noisier
        g = self.gamma
        a_j, s_j, a_up, s_up = alpha[:-1], sigma[:-1], alpha[1:], sigma[1:]
        a_dn = torch.cat([alpha[:1], alpha[:-2]])
        s_dn = torch.cat([sigma[:1], sigma[:-2]])
        s_j_safe = torch.where(s_j == 0, 1.0, s_j)
        # sampling at point j: x_dn = g x_up + (c_x - g b_x) x_j + (c_d - g b_d) D_j
        c_x, c_d = _ddim_step(a_j, s_j_safe, a_dn, s_dn)
        b_x, b_d = _ddim_step(a_j, s_j_safe, a_up, s_up)
        out = {"dn": torch.full_like(c_x, 1 / g), "x": -(c_x - g * b_x) / g,
               "d": -(c_d - g * b_d) / g}
        # step 0: DDIM inversion (from a clean start: the forward mean)
        f_x, f_d = _ddim_step(a_j, s_j_safe, a_up, s_up)
        out["dn"][0] = 0.0
        out["x"][0] = torch.where(s_j[0] == 0, 0.0, f_x[0])
        out["d"][0] = torch.where(s_j[0] == 0, a_up[0], f_d[0])
        return out

    def step_flags(self, schedule, grid, sigma):
        return {"clean": _clean_start(sigma)}

    def step(self, state: SolverState, model) -> SolverState:
        c = state.coef
        d = state.x if state.flags["clean"][state.i] else self.evaluate(model, state)
        dn = state.aux[0] if state.aux else state.x  # weight 0 on the first step
        x = combine([dn, state.x, d], [c["dn"], c["x"], c["d"]])
        return self.advance(state, x, aux=(state.x,))
