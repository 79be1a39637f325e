"""UniPC (Zhao et al. 2023): unified predictor (UniP) and corrector (UniC), B(h) variants.

Both are exponential integrators in log-SNR like DPM-Solver (see :mod:`pydiff.solvers.dpm`):
with ``hh = -h`` (data prediction) or ``h`` (noise prediction), ``B(h) = hh`` ("bh1") or
``e^{hh} - 1`` ("bh2"), the update of order ``p`` from ``s0`` to ``t`` is

``x_t = base x_s0 - S (e^{hh} - 1) m_s0 - S B(h) sum_k rho_k D1_k``,  ``D1_k = (m_k - m_s0) / r_k``

with ``r_k`` the log-SNR offsets of stored outputs relative to ``h`` and ``rho`` solving the
order conditions ``R rho = b`` (``R_jk = r_k^j``; ``b_j = j! phi_{j+1}(hh) / B(h)``). The
predictor uses the stored outputs; the corrector reuses the model output at the new point
(the evaluation the next predictor needs anyway) to raise the order by one at no extra cost.
Coefficients follow diffusers' ``UniPCMultistepScheduler`` (order-2 predictor ``rho = 1/2``,
order-1 corrector ``rho = 1/2``); all ``rho`` are solved once at ``init`` in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..schedules import Schedule
from .base import Solver, SolverState, combine

Tensor = torch.Tensor


def _phis(h: Tensor, p: int, data: bool, variant: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(e^{hh} - 1, B(h), b[..., p])`` for the order conditions."""
    hh = -h if data else h
    h_phi_1 = torch.expm1(hh)
    big_b = hh if variant == "bh1" else torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    fact, bs = 1.0, []
    for j in range(1, p + 1):
        bs.append(h_phi_k * fact / big_b)
        fact *= j + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    return h_phi_1, big_b, torch.stack(bs, -1)


class UniPC(Solver):
    """UniPC multistep (UniP predictor, UniC corrector).

    Args:
        order: predictor order 1..3 (the corrector adds one).
        variant: ``"bh1"`` or ``"bh2"`` (diffusers' ``solver_type``).
        predict_x0: data prediction (True, UniPC's default) or noise prediction.
        corrector: apply UniC after every step (False: UniP only).
        disable_corrector: steps whose *result* is not corrected (diffusers' indices).
        lower_order_final: lower the order over the last steps (``order <= steps left``).

    Example:
        >>> solver = UniPC(order=2, variant="bh2")
    """

    name = "unipc"
    order = 2
    default_spacing = "logsnr"

    def __init__(self, order: int = 2, variant: str = "bh2", predict_x0: bool = True,
                 corrector: bool = True, disable_corrector: Sequence[int] = (),
                 lower_order_final: bool = True):
        if order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
        if variant not in ("bh1", "bh2"):
            raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
        self.order = int(order)  # type: ignore[misc]
        self.variant, self.predict_x0 = variant, bool(predict_x0)
        self.corrector = bool(corrector)
        self.disable_corrector = tuple(int(i) for i in disable_corrector)
        self.lower_order_final = bool(lower_order_final)
        self._freeze()

    def step_orders(self, n: int) -> list[int]:
        orders = []
        for i in range(n):
            o = min(self.order, n - i) if self.lower_order_final else self.order
            orders.append(min(o, i + 1))  # warm-up
        return orders

    def _update(self, lam: Tensor, s0: int, t: int, p: int, alpha: Tensor, sigma: Tensor,
                corrector: bool) -> tuple[Tensor, list[Tensor], Tensor | None]:
        """Coefficients of one UniP (or UniC) update from grid point ``s0`` to ``t``: the one on
        ``x_s0``, those on ``m_s0, m_{s0-1}, ...`` and (corrector) the one on ``m_t``."""
        data = self.predict_x0
        h = lam[t] - lam[s0]
        base = sigma[t] / sigma[s0] if data else alpha[t] / alpha[s0]
        scale = alpha[t] if data else sigma[t]
        if sigma[t].eq(0).all():  # a step to clean data: x_t = m_s0 (data) / DDIM (noise)
            return (torch.zeros_like(h) if data else base,
                    [alpha[t] if data else -alpha[t] * sigma[s0] / alpha[s0]], None)
        rks = [(lam[s0 - k] - lam[s0]) / h for k in range(1, p)]
        rks_all = torch.stack(rks + [torch.ones_like(h)], -1)  # [M, p]
        h_phi_1, big_b, b = _phis(h, p, data, self.variant)
        r_mat = torch.stack([rks_all**j for j in range(p)], -2)  # [M, p, p]
        if corrector:
            rho = (torch.full_like(b, 0.5) if p == 1
                   else torch.linalg.solve(r_mat, b.unsqueeze(-1)).squeeze(-1))
        elif p == 1:
            rho = b[..., :0]
        elif p == 2:
            rho = torch.full_like(b[..., :1], 0.5)
        else:
            rho = torch.linalg.solve(r_mat[..., :-1, :-1], b[..., :-1].unsqueeze(-1)).squeeze(-1)
        sb = scale * big_b
        c_s0 = -scale * h_phi_1
        c_prev = []
        for k, r in enumerate(rks):
            c_prev.append(-sb * rho[..., k] / r)
            c_s0 = c_s0 + sb * rho[..., k] / r
        c_new = None
        if corrector:
            c_new = -sb * rho[..., p - 1]
            c_s0 = c_s0 + sb * rho[..., p - 1]
        return base, [c_s0, *c_prev], c_new

    def coefficients(self, schedule: Schedule, grid, alpha, sigma):
        n = grid.shape[0] - 1
        shape = grid.shape[1:]
        lam = (torch.log(alpha) - torch.log(sigma)).reshape(n + 1, -1)
        al, si = alpha.reshape(n + 1, -1), sigma.reshape(n + 1, -1)
        zero = torch.zeros_like(lam[0])
        cols: dict[str, list[Tensor]] = {k: [] for k in
                                         ("p_x", "p_m0", "p_m1", "p_m2",
                                          "c_x", "c_new", "c_m0", "c_m1", "c_m2")}
        orders = self.step_orders(n)
        for i in range(n):
            base, ms, _ = self._update(lam, i, i + 1, orders[i], al, si, False)
            cols["p_x"].append(base)
            for k in range(3):
                cols[f"p_m{k}"].append(ms[k] if k < len(ms) else zero)
            if i > 0:  # UniC for the point x_i reached by step i - 1 (that step's order)
                base, ms, new = self._update(lam, i - 1, i, orders[i - 1], al, si, True)
            else:
                base, ms, new = zero, [], zero
            cols["c_x"].append(base)
            cols["c_new"].append(new)
            for k in range(3):
                cols[f"c_m{k}"].append(ms[k] if k < len(ms) else zero)
        return {k: torch.stack(v).reshape(n, *shape) for k, v in cols.items()}

    def step_flags(self, schedule, grid, sigma):
        n = grid.shape[0] - 1
        correct = tuple(self.corrector and i > 0 and (i - 1) not in self.disable_corrector
                        for i in range(n))
        return {"correct": correct}

    def output(self, model, state: SolverState):
        if self.predict_x0:
            return self.evaluate(model, state)
        return self.predict(model, state)[1]

    def step(self, state: SolverState, model) -> SolverState:
        c = state.coef
        m = self.output(model, state)
        x = state.x
        if state.flags["correct"][state.i]:
            prev = state.history
            x, m = combine([state.aux[0], m, *prev],
                           [c["c_x"], c["c_new"], *(c[f"c_m{k}"] for k in range(len(prev)))],
                           keep=m)
        hist = (m, *state.history)[: self.order]
        x_next, m = combine([x, *hist], [c["p_x"], *(c[f"p_m{k}"] for k in range(len(hist)))],
                            keep=m)
        return self.advance(state, x_next, history=(m, *hist[1:]), aux=(x,))
