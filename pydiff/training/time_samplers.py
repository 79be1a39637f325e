"""Training-time samplers: which noise levels ``t`` a training step sees.

Every sampler maps uniform variates ``u ~ U(0, 1)`` through its inverse CDF
(:meth:`TimeSampler.from_uniform`), so one mechanism serves one time per sample (``[B]``) and
per-position times (``[B, 1, L]``, streaming diffusion policies): :class:`PerPosition` draws
either an independent ``u`` per position or a rising ramp ``u_l = (l + u) / L``.

Samplers:

- :class:`Uniform`: ``t ~ U(t_lo, t_max)`` (``t_lo`` defaults to the schedule's ``t_eps``).
- :class:`LogitNormal`: ``t = t_max * sigmoid(m + s n)`` (SD3 / rectified flow).
- :class:`LogNormal`: EDM's ``ln(sigma / alpha) ~ N(P_mean, P_std^2)``, mapped to ``t`` through
  the schedule (for :class:`pydiff.EDMSchedule`, ``t = sigma``).
- :class:`DiscreteUniform`: a uniform DDPM index ``n`` in ``{0..N-1}``, ``t = (n + 1) / N``.

:func:`default_time_sampler` picks the usual one for a schedule, :func:`get_time_sampler`
resolves names.

Example:
    >>> import torch, pydiff
    >>> from pydiff.training import LogNormal, PerPosition
    >>> sched = pydiff.EDMSchedule()
    >>> g = torch.Generator().manual_seed(0)
    >>> LogNormal()(sched, (4, 3), g).shape           # one t per sample
    torch.Size([4])
    >>> PerPosition(LogNormal(), mode="ramp")(sched, (4, 3, 16), g).shape
    torch.Size([4, 1, 16])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..schedules import F64, DiscreteSchedule, EDMSchedule, Schedule

Tensor = torch.Tensor


def _normal_icdf(u: Tensor) -> Tensor:
    return math.sqrt(2.0) * torch.erfinv(2 * u - 1)


class TimeSampler:
    """Base: ``sampler(schedule, x_shape, generator) -> t`` (float64, one per sample).

    Subclasses define :meth:`from_uniform`; :meth:`t_shape` says which shape of ``t`` a state
    of ``x_shape`` gets (``[B]`` here; per position in :class:`PerPosition`).
    """

    def from_uniform(self, schedule: Schedule, u: Tensor) -> Tensor:
        """Map ``u ~ U(0, 1)`` (float64) to times in ``(0, t_max]``."""
        raise NotImplementedError

    def t_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        return (int(x_shape[0]),)

    def __call__(self, schedule: Schedule, x_shape: Sequence[int],
                 generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> Tensor:
        if len(x_shape) == 0:
            raise ValueError("x_shape must be batch-first with at least one dimension, got ()")
        u = _uniform(self.t_shape(x_shape), generator)
        t = self.from_uniform(schedule, u)
        return t.to(device) if device is not None else t

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def _uniform(shape: Sequence[int], generator: torch.Generator | None) -> Tensor:
    gdev = generator.device if generator is not None else None
    # open interval: u = 0 would give t = 0 (clean data, zero noise) and u = 1 an infinite sigma
    u = torch.rand(tuple(shape), generator=generator, dtype=F64, device=gdev)
    return u.clamp(1e-12, 1 - 1e-12)


class Uniform(TimeSampler):
    """``t ~ U(t_min, t_max)``; ``t_min`` defaults to the schedule's ``t_eps``."""

    def __init__(self, t_min: float | None = None, t_max: float | None = None):
        self.t_min, self.t_max = t_min, t_max

    def from_uniform(self, schedule, u):
        lo = schedule.t_eps if self.t_min is None else self.t_min
        hi = schedule.t_max if self.t_max is None else self.t_max
        if not 0 <= lo < hi <= schedule.t_max * (1 + 1e-12):
            raise ValueError(f"Uniform time range [{lo}, {hi}] must lie in [0, t_max="
                             f"{schedule.t_max}] with t_min < t_max")
        return lo + u * (hi - lo)


class LogitNormal(TimeSampler):
    """``t = t_max * sigmoid(mean + std * n)``, ``n ~ N(0, 1)`` (Esser et al., SD3)."""

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        if std <= 0:
            raise ValueError(f"LogitNormal std must be > 0, got {std}")
        self.mean, self.std = float(mean), float(std)

    def from_uniform(self, schedule, u):
        return schedule.t_max * torch.sigmoid(self.mean + self.std * _normal_icdf(u))


class LogNormal(TimeSampler):
    """EDM's training noise levels: ``ln(sigma / alpha) ~ N(p_mean, p_std^2)`` (Karras et al.).

    The noise level is mapped to the schedule's time with ``t_from_sigma_tilde`` and clamped to
    ``(0, t_max]``.
    """

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2):
        if p_std <= 0:
            raise ValueError(f"LogNormal p_std must be > 0, got {p_std}")
        self.p_mean, self.p_std = float(p_mean), float(p_std)

    def from_uniform(self, schedule, u):
        sigma = torch.exp(self.p_mean + self.p_std * _normal_icdf(u))
        if isinstance(schedule, EDMSchedule):
            t = sigma
        else:
            t = schedule.t_from_sigma_tilde(sigma)
        return t.clamp(1e-12 * schedule.t_max, schedule.t_max)


class DiscreteUniform(TimeSampler):
    """A uniform DDPM table index ``n`` in ``{0, ..., N-1}``, returned as ``t = (n + 1) / N``."""

    def from_uniform(self, schedule, u):
        if not isinstance(schedule, DiscreteSchedule):
            raise ValueError("DiscreteUniform needs a DiscreteSchedule, got "
                             f"{type(schedule).__name__}; use Uniform() for continuous schedules")
        n = schedule.num_train_timesteps
        idx = torch.clamp(torch.floor(u * n), 0, n - 1)
        return (idx + 1) / n


class PerPosition(TimeSampler):
    """Per-position noise levels along one axis of the state (``t`` of shape ``[B, 1, ..., L]``).

    Args:
        base: the sampler whose inverse CDF maps the uniforms to times.
        mode: ``"independent"`` (an independent level per position, Diffusion Forcing) or
            ``"ramp"`` (``u_l = (l + u) / L`` with one ``u ~ U(0, 1)`` per sample: the noise level
            rises along the axis, as in streaming diffusion policies).
        axis: the position axis of the state (default the last).
    """

    MODES = ("independent", "ramp")

    def __init__(self, base: TimeSampler | str | None = None, mode: str = "independent",
                 axis: int = -1):
        if mode not in self.MODES:
            raise ValueError(f"PerPosition mode={mode!r}; expected one of {self.MODES}")
        self.base = Uniform() if base is None else get_time_sampler(base)
        self.mode, self.axis = mode, int(axis)

    def t_shape(self, x_shape):
        nd = len(x_shape)
        axis = self.axis % nd
        if axis == 0 or nd < 2:
            raise ValueError(f"PerPosition axis={self.axis} must name a non-batch axis of a state "
                             f"of shape {tuple(x_shape)}")
        return tuple(int(x_shape[0]) if d == 0 else int(x_shape[d]) if d == axis else 1
                     for d in range(nd))

    def __call__(self, schedule, x_shape, generator=None, device=None):
        shape = self.t_shape(x_shape)
        if self.mode == "independent":
            u = _uniform(shape, generator)
        else:
            axis = self.axis % len(shape)
            length = shape[axis]
            offset = _uniform((shape[0],) + (1,) * (len(shape) - 1), generator)
            pos = torch.arange(length, dtype=F64, device=offset.device).reshape(
                [length if d == axis else 1 for d in range(len(shape))])
            u = (pos + offset) / length
        t = self.base.from_uniform(schedule, u)
        return t.to(device) if device is not None else t

    def from_uniform(self, schedule, u):
        return self.base.from_uniform(schedule, u)


SAMPLERS = {"uniform": Uniform, "logit_normal": LogitNormal, "lognormal": LogNormal,
            "discrete": DiscreteUniform}


def get_time_sampler(sampler: TimeSampler | str) -> TimeSampler:
    """A sampler from a name in ``SAMPLERS`` (default arguments) or an instance."""
    if isinstance(sampler, TimeSampler):
        return sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown time sampler {sampler!r}; expected one of {sorted(SAMPLERS)} "
                         "or a TimeSampler instance")
    return SAMPLERS[sampler]()


def default_time_sampler(schedule: Schedule, precond: str | None = None) -> TimeSampler:
    """Table indices for DDPM tables, EDM's log-normal for EDM, else uniform in ``[t_eps, T]``."""
    if isinstance(schedule, DiscreteSchedule):
        return DiscreteUniform()
    if isinstance(schedule, EDMSchedule) or precond == "edm":
        return LogNormal()
    return Uniform()


__all__ = ["TimeSampler", "Uniform", "LogitNormal", "LogNormal", "DiscreteUniform",
           "PerPosition", "get_time_sampler", "default_time_sampler", "SAMPLERS"]
