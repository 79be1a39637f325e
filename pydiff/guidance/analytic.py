"""Closed forms for guidance: full-covariance Gaussian data and linear-Gaussian measurements.

With data ``x0 ~ N(m, C)`` and a measurement ``y = A x0 + n``, ``n ~ N(0, s^2 I)``, every quantity
guidance approximates is exact and Gaussian:

- the denoiser ``E[x0 | x_t] = m + alpha C (alpha^2 C + sigma^2 I)^{-1} (x_t - alpha m)`` and the
  covariance ``Cov[x0 | x_t] = C - alpha^2 C (alpha^2 C + sigma^2 I)^{-1} C``;
- the likelihood ``p(y | x_t) = N(y; A E[x0 | x_t], A Cov[x0 | x_t] A^T + s^2 I)``, whose score
  added to the prior's makes the exact posterior model;
- the posterior ``x0 | y ~ N(m_post, C_post)`` (a Kalman update).

Use them to test measurement guidance (DPS and relatives against the exact likelihood), or as a
reference in benchmarks. Float64 throughout; ``t`` is a scalar or one time per sample.

Example:
    >>> import torch, pydiff
    >>> from pydiff.guidance import GradientGuidance
    >>> from pydiff.guidance.analytic import Gaussian, LinearGaussianMeasurement
    >>> prior = Gaussian([0.0, 1.0], [[1.0, 0.5], [0.5, 2.0]])
    >>> problem = LinearGaussianMeasurement(prior, A=[[1.0, 1.0]], noise_std=0.1, y=[[2.0]])
    >>> sched = pydiff.VPSchedule()
    >>> guided = GradientGuidance(prior.denoiser(sched), problem.log_likelihood(sched))
    >>> x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> exact = problem.posterior().posterior_mean(sched, x, 0.5)
    >>> bool(torch.allclose(guided.x0(x, 0.5), exact))
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..denoiser import Denoiser
from ..noise import Generators, add_noise, randn
from ..schedules import F64, Schedule, as_time

Tensor = torch.Tensor


class Gaussian:
    """``N(mean, cov)`` in ``D`` dimensions with a full covariance (float64).

    Args:
        mean: ``[D]``.
        cov: ``[D, D]`` symmetric positive definite.
    """

    def __init__(self, mean: Sequence[float] | Tensor, cov: Sequence | Tensor):
        self.mean = torch.as_tensor(mean, dtype=F64).flatten()
        self.cov = torch.as_tensor(cov, dtype=F64)
        d = self.mean.shape[0]
        if self.cov.shape != (d, d):
            raise ValueError(f"cov must be [{d}, {d}] for a mean of {d} values, got "
                             f"{tuple(self.cov.shape)}")
        self.dim = d
        self._chol = torch.linalg.cholesky(self.cov)  # fails early if not positive definite

    def _gain(self, schedule: Schedule, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # per-sample (or scalar) alpha, sigma and K = alpha C (alpha^2 C + sigma^2 I)^{-1}
        a, s = schedule.alpha(t), schedule.sigma(t)
        a3, s3 = a.reshape(-1, 1, 1), s.reshape(-1, 1, 1)
        eye = torch.eye(self.dim, dtype=F64)
        gain = a3 * self.cov @ torch.linalg.inv(a3**2 * self.cov + s3**2 * eye)
        return a.reshape(-1, 1), s.reshape(-1, 1), gain

    def posterior_mean(self, schedule: Schedule, x: Tensor, t: float | Tensor) -> Tensor:
        """``E[x0 | x_t = x]`` for ``x`` ``[B, D]``; ``t`` scalar or ``[B]``."""
        x = x.to(F64)
        a, _, gain = self._gain(schedule, as_time(t))
        diff = (x - a * self.mean).unsqueeze(-1)
        return self.mean + (gain @ diff).squeeze(-1)

    def posterior_cov(self, schedule: Schedule, t: float | Tensor) -> Tensor:
        """``Cov[x0 | x_t]`` (the same for every ``x_t``): ``[D, D]`` or ``[B, D, D]``."""
        tt = as_time(t)
        a, _, gain = self._gain(schedule, tt)
        cov = self.cov - a.reshape(-1, 1, 1) * gain @ self.cov
        return cov[0] if tt.dim() == 0 else cov

    def sample(self, n: int, generator: Generators = None) -> Tensor:
        """``n`` samples ``[n, D]``."""
        return self.mean + randn((n, self.dim), generator, dtype=F64) @ self._chol.T

    def marginal_sample(self, schedule: Schedule, t: float | Tensor, n: int,
                        generator: Generators = None) -> Tensor:
        """``n`` samples of ``x_t = alpha x0 + sigma eps``."""
        x0 = self.sample(n, generator)
        return add_noise(schedule, x0, t, randn((n, self.dim), generator, dtype=F64))

    def denoiser(self, schedule: Schedule) -> Denoiser:
        """The exact denoiser as a :class:`pydiff.Denoiser` (eps output, raw time input)."""

        def net(x: Tensor, t: Tensor) -> Tensor:
            tt = t.to(F64)
            x0 = self.posterior_mean(schedule, x, tt)
            a, s = schedule.alpha(tt).reshape(-1, 1), schedule.sigma(tt).reshape(-1, 1)
            return ((x.to(F64) - a * x0) / s).to(x.dtype)

        return Denoiser(net, schedule, prediction="eps", time_input="t")


class LinearGaussianMeasurement:
    """``y = A x0 + n``, ``n ~ N(0, noise_std^2 I)``, with a :class:`Gaussian` prior.

    Args:
        prior: the data distribution.
        A: ``[M, D]``.
        noise_std: the measurement noise standard deviation (> 0).
        y: the measurement ``[M]`` or ``[1, M]`` (the same for every sample) or ``[B, M]``.
    """

    def __init__(self, prior: Gaussian, A: Sequence | Tensor, noise_std: float,
                 y: Sequence | Tensor):
        self.prior = prior
        self.A = torch.as_tensor(A, dtype=F64)
        if self.A.dim() != 2 or self.A.shape[1] != prior.dim:
            raise ValueError(f"A must be [M, {prior.dim}], got {tuple(self.A.shape)}")
        if not noise_std > 0:
            raise ValueError(f"noise_std must be > 0, got {noise_std}")
        self.noise_std = float(noise_std)
        self.y = torch.as_tensor(y, dtype=F64).reshape(-1, self.A.shape[0])

    def operator(self, x0: Tensor) -> Tensor:
        """``A x0`` for ``x0`` ``[B, D]``."""
        return x0 @ self.A.to(x0.dtype).T

    def log_likelihood(self, schedule: Schedule) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        """The exact ``log p(y | x_t)`` (up to a constant) as a
        :class:`pydiff.guidance.GradientGuidance` objective ``(x0_hat, x_t, t) -> [B]``."""
        eye = torch.eye(self.A.shape[0], dtype=F64)

        def objective(x0: Tensor, x: Tensor, t: Tensor) -> Tensor:
            r = self.y.to(x0.dtype) - self.operator(x0)
            cov = self.A @ self.prior.posterior_cov(schedule, t) @ self.A.T
            prec = torch.linalg.inv(cov + self.noise_std**2 * eye).to(x0.dtype)
            if prec.dim() == 3:  # one time per sample
                return -0.5 * (r.unsqueeze(1) @ prec @ r.unsqueeze(-1)).reshape(-1)
            return -0.5 * ((r @ prec) * r).sum(1)

        return objective

    def posterior(self) -> Gaussian:
        """``x0 | y`` for a single measurement (``y`` with one row): a Kalman update."""
        if self.y.shape[0] != 1:
            raise ValueError(f"posterior() needs one measurement row, got {self.y.shape[0]}")
        c, a = self.prior.cov, self.A
        s = a @ c @ a.T + self.noise_std**2 * torch.eye(a.shape[0], dtype=F64)
        k = c @ a.T @ torch.linalg.inv(s)
        mean = self.prior.mean + k @ (self.y[0] - a @ self.prior.mean)
        cov = c - k @ a @ c
        return Gaussian(mean, 0.5 * (cov + cov.T))


__all__ = ["Gaussian", "LinearGaussianMeasurement"]
