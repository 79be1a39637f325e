"""Time-shift sampling against exposure bias (Li et al. 2024, TS-DDIM).

During sampling the network meets states whose noise level differs from the nominal one
(exposure bias). Time-shift sampling measures each sample's variance and, within a window of
candidate times around the nominal ``t_i``, evaluates the network (and takes the DDIM step) from
the candidate whose expected marginal variance ``alpha^2 data_var + sigma^2`` is closest to it.
``data_var = 0`` is the paper's rule (match ``sigma^2 = 1 - alpha_bar``); pass the data's
per-element variance to match the full marginal. The shift applies while ``t_i > cutoff``.

Candidates and their DDIM coefficients are tables computed at ``init``; the choice (a variance,
an ``argmin`` and a gather per sample) happens on the device, without a host sync.

Example:
    >>> solver = TimeShiftDDIM(window=0.05, candidates=9, cutoff=0.2)
"""

from __future__ import annotations

import torch

from ..schedules import Schedule
from ..tree import leaves
from .base import SolverState, combine
from .first_order import DDIM

Tensor = torch.Tensor


class TimeShiftDDIM(DDIM):
    """DDIM (``eta``) with per-sample shifted evaluation times (TS-DDIM).

    Args:
        window: width (in ``t``) of the candidate window centred on each grid time; candidates
            never reach the next grid time or beyond ``t_max``.
        candidates: number of candidate times in the window (odd keeps the nominal time).
        cutoff: no shift once ``t <= cutoff``.
        data_var: assumed per-element variance of the data (0: the paper's ``1 - alpha_bar``).
        eta: DDIM's stochasticity.

    Example:
        >>> solver = TimeShiftDDIM(window=0.1, candidates=11)
    """

    name = "time_shift"
    default_spacing = "time"

    def __init__(self, window: float = 0.05, candidates: int = 11, cutoff: float = 0.0,
                 data_var: float = 0.0, eta: float = 0.0, noise: str = "gaussian"):
        if window < 0 or candidates < 1 or data_var < 0:
            raise ValueError(f"need window >= 0, candidates >= 1, data_var >= 0; got "
                             f"window={window}, candidates={candidates}, data_var={data_var}")
        self.window, self.candidates, self.cutoff = float(window), int(candidates), float(cutoff)
        self.data_var = float(data_var)
        super().__init__(eta=eta, noise=noise)

    def coefficients(self, schedule: Schedule, grid, alpha, sigma):
        if grid.dim() != 1:
            raise ValueError("time-shift sampling needs one grid for the batch (shape "
                             f"[steps + 1]), got {tuple(grid.shape)}")
        t, t_next = grid[:-1], grid[1:]
        u = torch.linspace(-0.5, 0.5, self.candidates, dtype=grid.dtype, device=grid.device)
        cand = t[:, None] + self.window * u[None, :]  # [N, K]
        lo = t_next[:, None] + 0.25 * (t - t_next)[:, None]  # stay clear of the next level
        cand = torch.minimum(torch.maximum(cand, lo), torch.full_like(cand, schedule.t_max))
        cand = torch.where((t > self.cutoff)[:, None], cand, t[:, None].expand_as(cand))
        a_c, s_c = schedule.alpha(cand), schedule.sigma(cand)
        a_s, s_s = alpha[1:, None].expand_as(cand), sigma[1:, None].expand_as(cand)
        # DDIM from each candidate (as the current level) to the next grid time
        g = torch.stack([cand, torch.zeros_like(cand)])  # grid placeholder, unused by DDIM
        ddim = super().coefficients(schedule, g, torch.stack([a_c, a_s]), torch.stack([s_c, s_s]))
        return {"t": cand, "var": a_c**2 * self.data_var + s_c**2,
                **{k: v[0] for k, v in ddim.items()}}

    def step(self, state: SolverState, model) -> SolverState:
        c = state.coef
        x = leaves(state.x)[0]
        var = x.reshape(x.shape[0], -1).double().var(dim=1)  # [B], on the device
        idx = (var[:, None] - c["var"][None, :]).abs().argmin(dim=1)
        t_shift = c["t"][idx]  # per-sample times [B]
        d = self.evaluate(model, state, at=t_shift)
        coef = [c["x"][idx], c["x0"][idx]]
        if self.eta == 0:
            return self.advance(state, combine([state.x, d], coef))
        return self.advance(state, combine([state.x, d], coef, self.noise(state), c["z"][idx]))
