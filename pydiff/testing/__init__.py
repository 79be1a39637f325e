"""Analytic harness: data distributions whose denoisers and flows are known exactly.

For Gaussian-mixture data ``sum_k w_k N(mu_k, diag(c_k^2))`` every marginal of every schedule is
a Gaussian mixture, so the exact denoiser ``E[x0 | x_t]`` (and with it eps, v, score and
velocity) is closed form, for scalar, per-sample and per-position times. For a single Gaussian the
probability-flow ODE is solved exactly too: it keeps the standardized value
``(x - alpha mu) / sqrt(alpha^2 c^2 + sigma^2)``. Solver tests and the accuracy benchmarks use it;
:mod:`pydiff.testing.convergence` measures solvers' global orders on it.

Example:
    >>> import torch, pydiff
    >>> from pydiff.testing import GaussianMixture
    >>> data = GaussianMixture.gaussian(mean=[1.0, -1.0], std=[0.5, 2.0])
    >>> sched = pydiff.schedules.VPSchedule()
    >>> model = data.denoiser(sched)           # exact, float64
    >>> x1 = data.marginal_sample(sched, 1.0, 4, torch.Generator().manual_seed(0))
    >>> x = pydiff.sample(model, x1, "dpmpp_2m", steps=50, final_zero=False)
    >>> bool((x - data.flow(sched, x1, 1.0, 1e-3)).abs().max() < 1e-2)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..denoiser import Denoiser
from ..noise import Generators, add_noise, randn
from ..schedules import F64, Schedule, as_time
from ..tree import per_sample

Tensor = torch.Tensor


class GaussianMixture:
    """``sum_k w_k N(mu_k, diag(c_k^2))`` in ``D`` dimensions, float64.

    Args:
        means: ``[K, D]``.
        stds: ``[K]`` (isotropic) or ``[K, D]``.
        weights: ``[K]`` (normalized here); default uniform.
    """

    def __init__(self, means: Sequence | Tensor, stds: Sequence | Tensor,
                 weights: Sequence | Tensor | None = None):
        self.means = torch.as_tensor(means, dtype=F64)
        if self.means.dim() != 2:
            raise ValueError(f"means must be [K, D], got shape {tuple(self.means.shape)}")
        k, d = self.means.shape
        stds = torch.as_tensor(stds, dtype=F64)
        self.stds = stds.reshape(k, 1).expand(k, d).clone() if stds.dim() == 1 else stds
        w = torch.ones(k, dtype=F64) if weights is None else torch.as_tensor(weights, dtype=F64)
        self.weights = w / w.sum()
        self.dim = d

    @classmethod
    def gaussian(cls, mean: Sequence[float], std: Sequence[float]) -> GaussianMixture:
        """A single Gaussian (the case with an exact probability-flow solution)."""
        return cls([list(mean)], [list(std)])

    @classmethod
    def ring(cls, k: int = 8, radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
        """``k`` modes on a circle: the 2D toy distribution of demos and benchmarks."""
        ang = torch.arange(k, dtype=F64) * 2 * math.pi / k
        return cls(torch.stack([radius * ang.cos(), radius * ang.sin()], 1), [std] * k)

    # -- sampling ---------------------------------------------------------------------------
    def sample(self, n: int, generator: Generators = None) -> Tensor:
        """``n`` data samples ``[n, D]`` (float64)."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = randn((n, self.dim), generator, dtype=F64)
        return self.means[comp] + self.stds[comp] * z

    def marginal_sample(self, schedule: Schedule, t: float | Tensor, n: int,
                        generator: Generators = None) -> Tensor:
        """``n`` samples of ``x_t = alpha x0 + sigma eps``."""
        x0 = self.sample(n, generator)
        return add_noise(schedule, x0, t, randn(x0.shape, generator, dtype=F64))

    # -- exact quantities -------------------------------------------------------------------
    def posterior_mean(self, schedule: Schedule, x: Tensor, t: float | Tensor) -> Tensor:
        """``E[x0 | x_t = x]`` for ``x`` ``[B, D]``; ``t`` scalar, ``[B]`` or ``[B, D]``."""
        x = x.to(F64)
        tt = as_time(t, x.device)
        a = _as_2d(per_sample(schedule.alpha(tt), x)).unsqueeze(1)  # [B or 1, 1, D or 1]
        s = _as_2d(per_sample(schedule.sigma(tt), x)).unsqueeze(1)
        mu, c = self.means.to(x.device)[None], self.stds.to(x.device)[None]  # [1, K, D]
        var = a**2 * c**2 + s**2
        diff = x[:, None, :] - a * mu
        logp = -0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).sum(-1)
        r = torch.softmax(logp + torch.log(self.weights.to(x.device)), dim=1)  # [B, K]
        comp_mean = mu + a * c**2 / var * diff
        return (r.unsqueeze(-1) * comp_mean).sum(1)

    def flow(self, schedule: Schedule, x: Tensor, t: float | Tensor, s: float | Tensor) -> Tensor:
        """Exact probability-flow map from time ``t`` to ``s`` (single Gaussian only)."""
        if self.means.shape[0] != 1:
            raise ValueError("the exact flow is known for a single Gaussian only")
        x = x.to(F64)
        mu, c = self.means[0].to(x.device), self.stds[0].to(x.device)
        tt, ss = as_time(t, x.device), as_time(s, x.device)

        def std(u):
            return torch.sqrt(per_sample(schedule.alpha(u), x) ** 2 * c**2
                              + per_sample(schedule.sigma(u), x) ** 2)

        z = (x - per_sample(schedule.alpha(tt), x) * mu) / std(tt)
        return per_sample(schedule.alpha(ss), x) * mu + std(ss) * z

    def mean(self) -> Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> Tensor:
        m = self.mean()
        second = (self.weights[:, None, None] * (torch.diag_embed(self.stds**2)
                  + self.means[:, :, None] * self.means[:, None, :])).sum(0)
        return second - m[:, None] * m[None, :]

    # -- as a model ---------------------------------------------------------------------------
    def net(self, schedule: Schedule, prediction: str = "eps") -> ExactNet:
        """A network ``net(x, t)`` (``t`` raw float64 time) giving the exact ``prediction``."""
        return ExactNet(self, schedule, prediction)

    def denoiser(self, schedule: Schedule, prediction: str = "eps") -> Denoiser:
        """The exact denoiser as a :class:`pydiff.Denoiser` (through the ``prediction`` output)."""
        return Denoiser(self.net(schedule, prediction), schedule, prediction=prediction,
                        time_input="t")


def _as_2d(c: Tensor) -> Tensor:
    return c.reshape(1, 1) if c.dim() == 0 else c


class ExactNet:
    """The exact network output for a :class:`GaussianMixture` (float64 internally)."""

    def __init__(self, data: GaussianMixture, schedule: Schedule, prediction: str):
        self.data, self.schedule, self.prediction = data, schedule, prediction

    def __call__(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        sch, p = self.schedule, self.prediction
        tt = as_time(t, x.device)
        x64 = x.to(F64)
        if sch.mean_reverting:  # the mixture is the law of x0 - y; the state is shifted by y
            x64 = x64 - y.to(F64)
        x0 = self.data.posterior_mean(sch, x64, tt)
        a, s = per_sample(sch.alpha(tt), x64), per_sample(sch.sigma(tt), x64)
        eps = (x64 - a * x0) / s
        if p == "x0":
            out = x0 if y is None else x0 + y.to(F64)
        elif p == "eps":
            out = eps
        elif p == "score":
            out = -eps / s
        elif p == "v":
            out = a * eps - s * x0
        elif p == "velocity":
            da, ds = sch.derivatives(tt)
            out = per_sample(da, x64) * x0 + per_sample(ds, x64) * eps
        else:
            raise ValueError(f"unknown prediction {p!r}")
        return out.to(x.dtype)


def energy_distance(x: Tensor, y: Tensor) -> float:
    """Energy distance ``2 E|x-y| - E|x-x'| - E|y-y'|`` between two samples ``[N, D]``."""
    x, y = x.to(F64), y.to(F64)
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


__all__ = ["GaussianMixture", "ExactNet", "energy_distance"]
