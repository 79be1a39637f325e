"""Linear multistep solvers in noise prediction: PLMS (PNDM) and heavy-ball momentum variants.

All three integrate ``d(x / alpha) = eps d(sigma / alpha)`` (DDIM's ODE in EDM coordinates) with
the transfer ``x_s = (alpha_s / alpha_t) x_t + alpha_s (sigma~_s - sigma~_t) e`` (``sigma~ =
sigma / alpha``), where ``e`` combines stored noise predictions with fixed Adams-Bashforth
weights, as PNDM's pseudo linear multistep method does (Liu et al. 2022). The weights assume
equally spaced steps in the variable that ``eps`` is smooth in; on other grids the scheme stays
convergent but its order drops to 2 (see docs/solvers.md).

- :class:`PLMS`: PNDM with ``skip_prk_steps`` (diffusers, CompVis): a pseudo-improved-Euler first
  step (two evaluations; only the first is kept), then Adams-Bashforth 2, 3 and 4.
- :class:`HeavyBall`: Polyak's heavy ball on the Adams-Bashforth direction (Wizadwongsa et al.
  2023): ``v <- (1 - beta) v + beta AB_k(eps)``, ``x`` steps along ``v``; first order.
- :class:`GHVB`: generalized heavy ball: ``v <- (1 - beta) v + beta eps`` and Adams-Bashforth-like
  weights over the stored velocities that keep order ``k`` for any ``beta``.

Momentum solvers update two tensors (``x`` and ``v``): two fused stages per step.
"""

from __future__ import annotations

import torch

from ..schedules import Schedule
from .base import Solver, SolverState, combine

Tensor = torch.Tensor

ADAMS_BASHFORTH = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12),
                   4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def ghvb_weights(order: int, beta: float) -> tuple[float, ...]:
    """Weights of the generalized heavy ball over the newest ``order`` velocities."""
    b = beta
    num = {1: (b,), 2: ((2 + b) / 2, -(2 - b) / 2),
           3: ((18 + 5 * b) / 12, -(24 - 8 * b) / 12, (6 - b) / 12),
           4: ((46 + 9 * b) / 24, -(78 - 19 * b) / 24, (42 - 5 * b) / 24, -(10 - b) / 24)}[order]
    return tuple(w / b for w in num)


def _transfer(alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    a_t, a_s = alpha[:-1], alpha[1:]
    return a_s / a_t, a_s * (sigma[1:] / a_s - sigma[:-1] / a_t)


def _weight_table(weights_of_step, n: int, like: Tensor, slots: int = 4) -> list[Tensor]:
    """``slots`` columns ``[N, 1...]``: weight of the k-th newest stored vector at each step."""
    rows = [list(weights_of_step(i)) + [0.0] * (slots - len(weights_of_step(i)))
            for i in range(n)]
    tab = torch.tensor(rows, dtype=like.dtype, device=like.device)
    shape = (n,) + (1,) * (like.dim() - 1)
    return [tab[:, k].reshape(shape) for k in range(slots)]


def variable_step_weights(st: Tensor, order: int) -> list[Tensor]:
    """Adams-Bashforth weights for the actual (non-uniform) nodes ``st = sigma / alpha``.

    Step ``i`` integrates the polynomial through the newest ``k = min(i + 1, order)`` nodes
    ``st_i, st_{i-1}, ...`` over ``[st_i, st_{i+1}]``, divided by the step: with
    ``u_j = (st_{i-j} - st_i) / (st_{i+1} - st_i)`` the weights solve ``sum_j w_j u_j^p =
    1 / (p + 1)``. On equal steps they are the classic weights. Returns ``order`` columns
    ``[N, ...]`` (weight of the j-th newest stored output).
    """
    n = st.shape[0] - 1
    flat = st.reshape(n + 1, -1)
    cols = [torch.zeros_like(flat[:-1]) for _ in range(order)]
    for i in range(n):
        k = min(i + 1, order)
        delta = flat[i + 1] - flat[i]
        u = torch.stack([(flat[i - j] - flat[i]) / delta for j in range(k)], -1)  # [M, k]
        vander = torch.stack([u**p for p in range(k)], -2)  # [M, p, j]
        rhs = torch.tensor([1 / (p + 1) for p in range(k)], dtype=st.dtype, device=st.device)
        w = torch.linalg.solve(vander, rhs.expand(u.shape[0], k).unsqueeze(-1)).squeeze(-1)
        for j in range(k):
            cols[j][i] = w[:, j]
    return [c.reshape(n, *st.shape[1:]) for c in cols]


def _check(order: int, beta: float) -> None:
    if order not in ADAMS_BASHFORTH:
        raise ValueError(f"order must be 1..4, got {order!r}")
    if not 0 < beta <= 1:
        raise ValueError(f"beta must be in (0, 1], got {beta!r}")


class PLMS(Solver):
    """PNDM / PLMS with ``skip_prk_steps`` (diffusers' ``PNDMScheduler``, CompVis' PLMS).

    Args:
        variable_step: use Adams-Bashforth weights for the actual grid (in ``sigma / alpha``)
            instead of PNDM's fixed equal-step weights; keeps fourth order on any grid
            (False reproduces diffusers).

    Example:
        >>> solver = PLMS(variable_step=True)
    """

    name = "plms"
    order = 4
    default_spacing = "time"

    def __init__(self, variable_step: bool = False):
        self.variable_step = bool(variable_step)
        self._freeze()

    def coefficients(self, schedule: Schedule, grid, alpha, sigma):
        c_x, c_e = _transfer(alpha, sigma)
        n = c_x.shape[0]
        if self.variable_step:
            w = variable_step_weights(sigma / alpha, 4)
        else:
            w = _weight_table(lambda i: ADAMS_BASHFORTH[min(i + 1, 4)] if i else (1.0,), n, c_x)
        return {"x": c_x, **{f"e{k}": c_e * w[k] for k in range(4)}, "half": 0.5 * c_e}

    def step_flags(self, schedule, grid, sigma):
        n = sigma.shape[0] - 1
        first_has_next = bool((sigma[1] > 0).all())
        return {"pseudo_heun": (first_has_next,) + (False,) * (n - 1)}

    def step(self, state: SolverState, model) -> SolverState:
        c = state.coef
        e = self.predict(model, state)[1]
        if state.flags["pseudo_heun"][state.i]:
            x_pred = combine([state.x, e], [c["x"], c["e0"]])
            e_next = self.predict(model, state, x_pred, state.i + 1)[1]
            x = combine([state.x, e, e_next], [c["x"], c["half"], c["half"]])
            return self.advance(state, x, history=(e,), nfe=2)
        hist = (e, *state.history)[:4]
        terms = [state.x, *hist]
        coeffs = [c["x"], *(c[f"e{k}"] for k in range(len(hist)))]
        return self.advance(state, combine(terms, coeffs), history=hist[:3])


class HeavyBall(Solver):
    """PLMS with Polyak's heavy-ball momentum (HB), ``beta = 1`` being plain Adams-Bashforth.

    Args:
        order: Adams-Bashforth order of the direction (1 = DDIM's eps), 1..4.
        beta: momentum coefficient in (0, 1]; smaller damps more.

    Example:
        >>> solver = HeavyBall(order=2, beta=0.8)
    """

    name = "heavy_ball"
    order = 1
    default_spacing = "time"

    def __init__(self, order: int = 1, beta: float = 0.8):
        _check(order, beta)
        self.ab_order, self.beta = int(order), float(beta)
        self._freeze()

    def coefficients(self, schedule: Schedule, grid, alpha, sigma):
        c_x, c_e = _transfer(alpha, sigma)
        w = _weight_table(lambda i: ADAMS_BASHFORTH[min(i + 1, self.ab_order)], c_x.shape[0], c_x)
        return {"x": c_x, "e": c_e, **{f"v_e{k}": self.beta * w[k] for k in range(4)}}

    def step(self, state: SolverState, model) -> SolverState:
        c = state.coef
        e = self.predict(model, state)[1]
        hist = (e, *state.history)[: self.ab_order]
        v = state.aux[0] if state.aux else e  # v starts at the first eps
        v = combine([v, *hist], [1 - self.beta, *(c[f"v_e{k}"] for k in range(len(hist)))])
        x = combine([state.x, v], [c["x"], c["e"]])
        return self.advance(state, x, history=hist[: self.ab_order - 1], aux=(v,))


class GHVB(Solver):
    """Generalized heavy ball (GHVB) of ``order`` k with momentum ``beta`` (``beta = 1``: PLMS
    without the pseudo-Heun start).

    Example:
        >>> solver = GHVB(order=2, beta=0.5)  # the paper's "GHVB 1.5"
    """

    name = "ghvb"
    order = 2
    default_spacing = "time"

    def __init__(self, order: int = 2, beta: float = 0.5):
        _check(order, beta)
        self.order, self.beta = int(order), float(beta)  # type: ignore[misc]
        self._freeze()

    def coefficients(self, schedule: Schedule, grid, alpha, sigma):
        c_x, c_e = _transfer(alpha, sigma)
        w = _weight_table(lambda i: ghvb_weights(min(i + 1, self.order), self.beta),
                          c_x.shape[0], c_x)
        return {"x": c_x, **{f"v{k}": c_e * w[k] for k in range(4)}}

    def step(self, state: SolverState, model) -> SolverState:
        c = state.coef
        e = self.predict(model, state)[1]
        v_prev = state.history[0] if state.history else e
        v = combine([v_prev, e], [1 - self.beta, self.beta])
        hist = (v, *state.history)[: self.order]
        x = combine([state.x, *hist], [c["x"], *(c[f"v{k}"] for k in range(len(hist)))])
        return self.advance(state, x, history=hist)
