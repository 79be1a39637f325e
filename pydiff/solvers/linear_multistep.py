"""Linear multistep solvers in noise prediction: PLMS (PNDM), LMS, DEIS and heavy-ball momentum.

All of them integrate ``d(x / alpha) = eps d(sigma / alpha)`` (DDIM's ODE in EDM coordinates) with
the transfer ``x_s = (alpha_s / alpha_t) x_t + alpha_s (sigma~_s - sigma~_t) e`` (``sigma~ =
sigma / alpha``), where ``e`` combines stored noise predictions with fixed Adams-Bashforth
weights, as PNDM's pseudo linear multistep method does (Liu et al. 2022). The weights assume
equally spaced steps in the variable that ``eps`` is smooth in; on other grids the scheme stays
convergent but its order drops to 2 (see docs/solvers.md).

- :class:`PLMS`: PNDM (diffusers, CompVis): a pseudo-improved-Euler first step (two evaluations;
  only the first is kept; ``skip_prk_steps``), or PNDM's three pseudo Runge-Kutta steps, then
  Adams-Bashforth up to order 4.
- :class:`LMS`: k-diffusion's ``sample_lms`` (diffusers' ``LMSDiscreteScheduler``): the
  polynomial through the newest ``order`` outputs in ``sigma~`` integrated exactly over the step
  (variable-step Adams-Bashforth), started with lower orders.
- :class:`DEIS`: DEIS' ``logrho`` multistep (Zhang & Chen 2023, diffusers'
  ``DEISMultistepScheduler``): the polynomial is taken in ``log sigma~`` instead.
- :class:`HeavyBall`: Polyak's heavy ball on the Adams-Bashforth direction (Wizadwongsa et al.
  2023): ``v <- (1 - beta) v + beta AB_k(eps)``, ``x`` steps along ``v``; first order.
- :class:`GHVB`: generalized heavy ball: ``v <- (1 - beta) v + beta eps`` and Adams-Bashforth-like
  weights over the stored velocities that keep order ``k`` for any ``beta``.

Momentum solvers update two tensors (``x`` and ``v``): two fused stages per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..schedules import Schedule
from .base import Solver, SolverState, combine, warmup_orders

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


def deis_weights(st: Tensor, orders: Sequence[int]) -> list[Tensor]:
    """DEIS' ``logrho`` weights: the Lagrange basis in ``log st`` integrated in ``st``.

    Step ``i`` of order ``k = orders[i]`` integrates the polynomial in ``u = log st`` through the
    newest ``k`` nodes over ``[st_i, st_{i+1}]``: ``w_j = int L_j(u) e^u du``. With
    ``v = u - u_i`` and ``H = u_{i+1} - u_i`` the weights solve ``sum_j w_j v_j^p = st_i J_p``,
    ``J_p = int_0^H v^p e^v dv = H^p e^H - p J_{p-1}``, ``J_0 = e^H - 1``. A step to ``st = 0``
    (``H = -inf``) is first order, ``w_0 = -st_i`` (DDIM). Returns ``max(orders)`` columns.
    """
    n = st.shape[0] - 1
    flat = st.reshape(n + 1, -1)
    u = torch.log(flat)
    cols = [torch.zeros_like(flat[:-1]) for _ in range(max(orders))]
    for i, k in enumerate(orders):
        ratio, h = flat[i + 1] / flat[i], u[i + 1] - u[i]  # e^H, H
        moments = [torch.expm1(h)]
        for p in range(1, k):
            edge = torch.where(ratio == 0, 0.0, h**p * ratio)
            moments.append(edge - p * moments[-1])
        v = torch.stack([u[i - j] - u[i] for j in range(k)], -1)  # [M, k]
        vander = torch.stack([v**p for p in range(k)], -2)  # [M, p, j]
        w = torch.linalg.solve(vander, torch.stack(moments, -1).unsqueeze(-1)).squeeze(-1)
        final = (ratio == 0).unsqueeze(-1)
        w = torch.where(final, -torch.eye(k, dtype=w.dtype, device=w.device)[0], w)
        for j in range(k):
            cols[j][i] = flat[i] * w[:, j]
    return [c.reshape(n, *st.shape[1:]) for c in cols]


def _check(order: int, beta: float) -> None:
    if order not in ADAMS_BASHFORTH:
        raise ValueError(f"order must be 1..4, got {order!r}")
    if not 0 < beta <= 1:
        raise ValueError(f"beta must be in (0, 1], got {beta!r}")


class PLMS(Solver):
    """PNDM / PLMS (diffusers' ``PNDMScheduler``, CompVis' PLMS).

    Args:
        variable_step: use Adams-Bashforth weights for the actual grid (in ``sigma / alpha``)
            instead of PNDM's fixed equal-step weights; keeps fourth order on any grid
            (False reproduces diffusers).
        warmup: how the history is started. ``"pseudo_heun"`` (``skip_prk_steps=True``, CompVis'
            PLMS): a pseudo-improved-Euler first step (two evaluations; only the first is kept),
            then Adams-Bashforth 2 and 3. ``"prk"`` (PNDM's pseudo Runge-Kutta, diffusers'
            ``skip_prk_steps=False``): the first three steps are classical fourth-order
            Runge-Kutta steps of the same transfer, with stages at the step's midpoint in ``t``
            (four evaluations each; the first of each is kept), so Adams-Bashforth 4 runs from
            the fourth step on. In runs of three steps or fewer, a step to ``sigma = 0`` takes
            the Adams-Bashforth update instead (diffusers needs more steps for its warm-up).

    Example:
        >>> solver = PLMS(warmup="prk")
    """

    name = "plms"
    order = 4
    default_spacing = "time"

    def __init__(self, variable_step: bool = False, warmup: str = "pseudo_heun"):
        if warmup not in ("pseudo_heun", "prk"):
            raise ValueError(f"warmup must be 'pseudo_heun' or 'prk', got {warmup!r}")
        self.variable_step = bool(variable_step)
        self.warmup = warmup
        self._freeze()

    def coefficients(self, schedule: Schedule, grid, alpha, sigma):
        c_x, c_e = _transfer(alpha, sigma)
        n = c_x.shape[0]
        if self.variable_step:
            w = variable_step_weights(sigma / alpha, 4)
        else:
            w = _weight_table(lambda i: ADAMS_BASHFORTH[min(i + 1, 4)] if i else (1.0,), n, c_x)
        out = {"x": c_x, **{f"e{k}": c_e * w[k] for k in range(4)}, "half": 0.5 * c_e}
        if self.warmup == "prk":
            t_mid = (grid[:-1] + grid[1:]) / 2
            a_m, s_m = schedule.alpha(t_mid), schedule.sigma(t_mid)
            a_t, st_t = alpha[:-1], sigma[:-1] / alpha[:-1]
            out.update(t_mid=t_mid, mid_x=a_m / a_t, mid_e=a_m * (s_m / a_m - st_t), rk_e=c_e,
                       rk_e6=c_e / 6, rk_e3=c_e / 3)
        return out

    def step_flags(self, schedule, grid, sigma):
        n = sigma.shape[0] - 1
        if self.warmup == "prk":
            # a step to clean data takes the multistep update: its midpoint would sit inside the
            # table's first interval (sigma near 0), where eps = (x - alpha x0) / sigma blows up
            has_next = (sigma[1:].reshape(n, -1) > 0).all(dim=1).tolist()
            return {"pseudo_heun": (False,) * n,
                    "prk": tuple(i < 3 and bool(has_next[i]) for i in range(n))}
        first_has_next = bool((sigma[1] > 0).all())
        return {"pseudo_heun": (first_has_next,) + (False,) * (n - 1), "prk": (False,) * n}

    def step(self, state: SolverState, model) -> SolverState:
        c = state.coef
        e = self.predict(model, state)[1]
        if state.flags["prk"][state.i]:
            return self._runge_kutta(state, model, e)
        if state.flags["pseudo_heun"][state.i]:
            x_pred = combine([state.x, e], [c["x"], c["e0"]])
            e_next = self.predict(model, state, x_pred, state.i + 1)[1]
            x = combine([state.x, e, e_next], [c["x"], c["half"], c["half"]])
            return self.advance(state, x, history=(e,), nfe=2)
        hist = (e, *state.history)[:4]
        terms = [state.x, *hist]
        coeffs = [c["x"], *(c[f"e{k}"] for k in range(len(hist)))]
        x, e = combine(terms, coeffs, keep=e)
        return self.advance(state, x, history=(e, *hist[1:3]))

    def _runge_kutta(self, state: SolverState, model, e1) -> SolverState:
        # RK4 on the transfer: two half-step stages, one full-step stage, weights 1/6, 1/3, 1/3, 1/6
        c, x = state.coef, state.x
        e2 = self.predict(model, state, combine([x, e1], [c["mid_x"], c["mid_e"]]), c["t_mid"])[1]
        e3 = self.predict(model, state, combine([x, e2], [c["mid_x"], c["mid_e"]]), c["t_mid"])[1]
        e4 = self.predict(model, state, combine([x, e3], [c["x"], c["rk_e"]]), state.i + 1)[1]
        x = combine([x, e1, e2, e3, e4], [c["x"], c["rk_e6"], c["rk_e3"], c["rk_e3"], c["rk_e6"]])
        return self.advance(state, x, history=(e1, *state.history)[:3], nfe=4)


class LMS(Solver):
    """Linear multistep in ``sigma~`` (k-diffusion's ``sample_lms``, diffusers'
    ``LMSDiscreteScheduler``): Adams-Bashforth weights for the actual grid, of order
    ``min(i + 1, order)`` at step ``i`` (one evaluation per step, no warm-up stages).

    Args:
        order: 1..4 (diffusers' and k-diffusion's default 4).

    Example:
        >>> solver = LMS(order=4)
    """

    name = "lms"
    order = 4
    default_spacing = "karras"

    def __init__(self, order: int = 4):
        _check(order, 1.0)
        self.order = int(order)  # type: ignore[misc]
        self._freeze()

    def coefficients(self, schedule: Schedule, grid, alpha, sigma):
        c_x, c_e = _transfer(alpha, sigma)
        w = variable_step_weights(sigma / alpha, self.order)
        return {"x": c_x, **{f"e{k}": c_e * w[k] for k in range(self.order)}}

    def step(self, state: SolverState, model) -> SolverState:
        c = state.coef
        hist = (self.predict(model, state)[1], *state.history)[: self.order]
        x = combine([state.x, *hist], [c["x"], *(c[f"e{k}"] for k in range(len(hist)))])
        return self.advance(state, x, history=hist[: self.order - 1])


class DEIS(LMS):
    """DEIS multistep, ``logrho`` variant (Zhang & Chen 2023, diffusers' DEISMultistepScheduler).

    Noise predictions are interpolated by a polynomial in ``log sigma~`` through the newest
    ``order`` outputs and integrated exactly in ``sigma~`` (see :func:`deis_weights`); the step is
    LMS's with these weights. Order
    ``min(i + 1, order)`` at step ``i``; ``lower_order_final`` as in diffusers (first order on the
    last step and at most second on the one before, in runs shorter than 15 steps); a step to
    ``sigma = 0`` is first order (DDIM).

    Args:
        order: 1, 2 or 3 (diffusers' ``solver_order``; default 2).
        lower_order_final: see above.

    Example:
        >>> solver = DEIS(order=3)
    """

    name = "deis"
    order = 2
    default_spacing = "logsnr"

    def __init__(self, order: int = 2, lower_order_final: bool = True):
        if order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
        self.order = int(order)  # type: ignore[misc]
        self.lower_order_final = bool(lower_order_final)
        self._freeze()

    def coefficients(self, schedule: Schedule, grid, alpha, sigma):
        c_x, c_e = _transfer(alpha, sigma)
        a_s = alpha[1:]
        orders = warmup_orders(sigma.shape[0] - 1, self.order, self.lower_order_final)
        w = deis_weights(sigma / alpha, orders)
        return {"x": c_x, **{f"e{k}": a_s * w[k] for k in range(len(w))}}


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
        v, e = combine([v, *hist], [1 - self.beta, *(c[f"v_e{k}"] for k in range(len(hist)))],
                       keep=e)
        hist = (e, *hist[1:])
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
