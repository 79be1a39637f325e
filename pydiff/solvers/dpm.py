"""DPM-Solver++ (Lu et al. 2022): exponential integrators in log-SNR with data prediction.

With ``lambda = log(alpha / sigma)``, ``h = lambda_s - lambda_t`` and ``phi = 1 - e^{-h}``
(computed as ``-expm1(-h)``, exact for small h), the first-order update is DDIM:
``x_s = (sigma_s / sigma_t) x_t + alpha_s phi D_t``. The multistep second-order update adds
``0.5 alpha_s phi (D_t - D_prev) / r`` with ``r = h_prev / h`` (the "midpoint" form of
diffusers' ``DPMSolverMultistepScheduler``).
"""

from __future__ import annotations

import torch

from .base import Solver, SolverState, combine, step_index


class DPMSolverPP2M(Solver):
    """DPM-Solver++(2M).

    Step 0 is first order (no history yet); a step to ``sigma = 0``, and the last step of runs
    shorter than 15 steps when ``lower_order_final`` (diffusers' default), are first order too.

    Example:
        >>> solver = DPMSolverPP2M()
    """

    name = "dpmpp_2m"
    order = 2
    default_spacing = "logsnr"

    def __init__(self, lower_order_final: bool = True):
        self.lower_order_final = bool(lower_order_final)
        self._freeze()

    def coefficients(self, schedule, grid, alpha, sigma):
        lam = torch.log(alpha) - torch.log(sigma)
        h = lam[1:] - lam[:-1]
        n = h.shape[0]
        h_prev = torch.cat([torch.full_like(h[:1], float("nan")), h[:-1]])
        phi = -torch.expm1(-h)
        first = alpha[1:] * phi
        i = step_index(h)
        low = (i == 0) | (sigma[1:] == 0)
        if self.lower_order_final and n < 15:
            low = low | (i == n - 1)
        half_over_r = 0.5 * h / h_prev
        return {
            "x": sigma[1:] / sigma[:-1],
            "d": torch.where(low, first, first * (1 + half_over_r)),
            "d_prev": torch.where(low, 0.0, -first * half_over_r),
        }

    def step(self, state: SolverState, model) -> SolverState:
        c = state.coef
        d = self.evaluate(model, state)
        prev = state.history[0] if state.history else d  # its coefficient is 0 at step 0
        x = combine([state.x, d, prev], [c["x"], c["d"], c["d_prev"]])
        return self.advance(state, x, history=(d,))
