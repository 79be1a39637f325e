"""Predictor-corrector sampling (Song et al. 2021; SGMSE+'s default sampler).

Each step first corrects at the current level with Langevin MCMC on ``p_t``, then predicts the
next level with a reverse-diffusion (or ancestral) step:

- corrector ``"ald"`` (annealed Langevin dynamics, SGMSE+): step size
  ``e = 2 (snr sigma_t)^2``, a table entry;
- corrector ``"langevin"`` (Song et al.'s Langevin corrector): ``e = 2 (snr |z| / |score|)^2``
  per sample, computed on the device from the current score and noise (no host sync);

then ``x <- x + e score + sqrt(2 e) z`` with ``score = (alpha D - x) / sigma^2``, repeated
``corrector_steps`` times. The predictor is Euler-Maruyama on the reverse SDE
(``"reverse_diffusion"``: Song's and SGMSE+'s reverse-diffusion predictor for SDEs discretized
by Euler) or DDPM's ancestral step (``"ancestral"``). A step to ``sigma = 0`` returns the
denoised mean without noise.

Example:
    >>> solver = PredictorCorrector(corrector="ald", snr=0.5, corrector_steps=1)
"""

from __future__ import annotations

import torch

from ..schedules import Schedule
from ..tree import State, leaves
from .base import Solver, SolverState, check_noise, combine
from .first_order import DDPM, EulerMaruyama

Tensor = torch.Tensor


def _per_sample_sq_norm(x: State) -> Tensor:
    """``[B]`` squared norms over all non-batch dimensions (and all leaves of dict states)."""
    return sum(v.reshape(v.shape[0], -1).double().pow(2).sum(1) for v in leaves(x))


class PredictorCorrector(Solver):
    """Reverse-diffusion (or ancestral) predictor + Langevin corrector.

    Args:
        predictor: ``"reverse_diffusion"`` or ``"ancestral"``.
        corrector: ``"ald"``, ``"langevin"`` or ``"none"``.
        snr: the corrector's signal-to-noise ratio (SGMSE+: 0.5 with ALD; Song: 0.16).
        corrector_steps: Langevin steps per level.
        noise: ``"gaussian"`` or ``"brownian"`` (the predictor's noise; corrector noise is
            always fresh).

    Example:
        >>> solver = PredictorCorrector(corrector="langevin", snr=0.16)
    """

    name = "pc"
    stochastic = True
    default_spacing = "time"

    def __init__(self, predictor: str = "reverse_diffusion", corrector: str = "ald",
                 snr: float = 0.5, corrector_steps: int = 1, noise: str = "gaussian"):
        if predictor not in ("reverse_diffusion", "ancestral"):
            raise ValueError(f"predictor must be 'reverse_diffusion' or 'ancestral', got "
                             f"{predictor!r}")
        if corrector not in ("ald", "langevin", "none"):
            raise ValueError(f"corrector must be 'ald', 'langevin' or 'none', got {corrector!r}")
        if snr <= 0 or corrector_steps < 0:
            raise ValueError(f"need snr > 0 and corrector_steps >= 0, got snr={snr}, "
                             f"corrector_steps={corrector_steps}")
        self.predictor, self.corrector = predictor, corrector
        self.snr, self.corrector_steps = float(snr), int(corrector_steps)
        self.brownian = check_noise(noise)
        self._predict = EulerMaruyama() if predictor == "reverse_diffusion" else DDPM()
        self._freeze()

    def coefficients(self, schedule: Schedule, grid, alpha, sigma):
        pred = self._predict.coefficients(schedule, grid, alpha, sigma)
        a_t, s_t = alpha[:-1], sigma[:-1]
        e = 2 * (self.snr * s_t) ** 2
        return {**{f"p_{k}": v for k, v in pred.items()},
                "ald_x": 1 - e / s_t**2, "ald_d": e * a_t / s_t**2, "ald_z": torch.sqrt(2 * e),
                "score_x": -1 / s_t**2, "score_d": a_t / s_t**2}

    def correct(self, state: SolverState, model, x: State) -> State:
        c = state.coef
        d = self.evaluate(model, state, x)
        z = self.noise(state, path=False)
        if self.corrector == "ald":
            return combine([x, d], [c["ald_x"], c["ald_d"]], z, c["ald_z"])
        score = combine([x, d], [c["score_x"], c["score_d"]])
        ratio = _per_sample_sq_norm(z) / _per_sample_sq_norm(score).clamp_min(1e-300)
        e = 2 * self.snr**2 * ratio  # [B] float64, on the device
        return combine([x, score], [1.0, e], z, torch.sqrt(2 * e))

    def step(self, state: SolverState, model) -> SolverState:
        x = state.x
        n_corr = self.corrector_steps if self.corrector != "none" else 0
        for _ in range(n_corr):
            x = self.correct(state, model, x)
        c = state.coef
        d = self.evaluate(model, state, x)
        x = combine([x, d], [c["p_x"], c["p_x0"]], self.noise(state), c["p_z"])
        return self.advance(state, x, nfe=n_corr + 1)
