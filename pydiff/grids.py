"""Timestep grids: decreasing float64 times from a start noise level to clean data.

``timesteps(schedule, steps, spacing=...)`` returns ``steps + 1`` times ``t_0 > t_1 > ... > t_N``.
By default the grid spaces ``steps`` points between ``t_start`` and the schedule's ``t_eps`` and
then takes a final step to ``t = 0`` (clean data), as diffusers' ``final_sigmas_type="zero"`` and
EDM's last step do; ``final_zero=False`` ends at ``t_end`` instead.

``t_start`` may be any noise level (warm starts, SDEdit, real-time iteration), and may be a tensor
(for instance ``[B]``): the grid then has shape ``[steps + 1, *t_start.shape]`` and each sample
follows its own grid.

Spacings:

- ``"time"``: uniform in ``t``;
- ``"logsnr"``: uniform in ``lambda = log(alpha / sigma)`` (DPM-Solver's default);
- ``"karras"``: uniform in ``(sigma/alpha)^(1/rho)`` (EDM, ``rho=7``);
- ``"quadratic"``: uniform in ``sqrt(t)`` (DDIM's quadratic), denser near the data;
- ``"custom"``: pass ``values`` (any decreasing times in range).

Example:
    >>> import pydiff
    >>> s = pydiff.schedules.EDMSchedule()
    >>> g = pydiff.timesteps(s, 4, spacing="karras")
    >>> g.shape, float(g[0]), float(g[-1])
    (torch.Size([5]), 80.0, 0.0)
"""

from __future__ import annotations

import torch

from .errors import InputError
from .schedules import F64, Schedule, as_time

Tensor = torch.Tensor
SPACINGS = ("time", "logsnr", "karras", "quadratic", "custom")


def timesteps(
    schedule: Schedule,
    steps: int,
    spacing: str = "logsnr",
    *,
    t_start: float | Tensor | None = None,
    t_end: float | Tensor | None = None,
    final_zero: bool = True,
    rho: float = 7.0,
    values: Tensor | list[float] | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """A decreasing grid of ``steps + 1`` float64 times (see the module docstring).

    Args:
        schedule: the forward process.
        steps: number of solver steps (intervals), at least 1.
        spacing: one of ``"time"``, ``"logsnr"``, ``"karras"``, ``"quadratic"``, ``"custom"``.
        t_start: first (noisiest) time; defaults to ``schedule.t_max``. Scalar or tensor.
        t_end: last time before the optional final step to 0; defaults to ``schedule.t_eps``.
        final_zero: make the last step go to ``t = 0`` (clean data).
        rho: Karras exponent.
        values: the times for ``spacing="custom"`` (``steps`` is then ignored).
        device: where the grid lives (the solver moves it to the sample's device anyway).
    """
    if spacing == "custom":
        if values is None:
            raise InputError("spacing='custom' needs values=[t_0, t_1, ...] (decreasing)")
        grid = as_time(values, device)
        if grid.dim() < 1 or grid.shape[0] < 2:
            raise InputError(f"values must hold at least 2 times, got shape {tuple(grid.shape)}")
        _validate(schedule, grid, "values")
        return grid
    if spacing not in SPACINGS:
        raise InputError(f"unknown spacing={spacing!r}; expected one of {SPACINGS}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be an integer >= 1, got {steps!r}")

    t0 = as_time(schedule.t_max if t_start is None else t_start, device)
    t1 = as_time(schedule.t_eps if t_end is None else t_end, device)
    schedule.check_time(t0, "t_start")
    schedule.check_time(t1, "t_end")
    if bool((t1 <= 0).any()) and (final_zero or spacing in ("logsnr", "karras")):
        raise InputError(f"t_end must be > 0 with spacing={spacing!r} and final_zero={final_zero}"
                         f", got {t1.tolist()}")
    if bool((t0 <= t1).any()):
        raise InputError(f"t_start={t0.tolist()} must be larger than t_end={t1.tolist()}")

    n = steps if final_zero else steps + 1  # points before the optional final 0
    t0, t1 = torch.broadcast_tensors(t0, t1)
    u = torch.linspace(0, 1, n, dtype=F64, device=t0.device).reshape(-1, *([1] * t0.dim()))
    if n == 1:
        u = torch.zeros_like(u)  # a single step: start point only, then 0

    # where alpha(t_start) = 0 (flow matching at t = 1) the log-SNR is -inf: space the interior
    # from just below t_start; the first point is pinned back to t_start below
    t0_in = torch.where(schedule.alpha(t0) > 0, t0, t0 * (1 - 1e-3))
    if spacing == "time":
        grid = t0 + (t1 - t0) * u
    elif spacing == "quadratic":
        grid = (t0.sqrt() + (t1.sqrt() - t0.sqrt()) * u) ** 2
    elif spacing == "logsnr":
        l0, l1 = schedule.log_snr(t0_in), schedule.log_snr(t1)
        grid = schedule.t_from_log_snr(l0 + (l1 - l0) * u)
    else:  # karras
        grid = schedule.t_from_sigma_tilde(
            karras_sigmas(schedule.sigma_tilde(t0_in), schedule.sigma_tilde(t1), u, rho))
    # inverse maps round; pin the endpoints exactly
    grid = grid.clone()
    grid[0] = t0
    if n > 1:
        grid[-1] = t1
    if final_zero:
        grid = torch.cat([grid, torch.zeros_like(grid[:1])])
    grid = _apply_shift(schedule, grid)
    return grid


def karras_sigmas(sigma_start: float | Tensor, sigma_end: float | Tensor, u: Tensor,
                  rho: float = 7.0) -> Tensor:
    """Karras et al.'s (EDM) spacing: uniform in ``sigma^(1/rho)``, ``sigma_start`` at ``u = 0``
    to ``sigma_end`` at ``u = 1`` (the grids' ``"karras"``; diffusers' ``use_karras_sigmas``).

    Example:
        >>> import torch
        >>> [round(float(s), 3) for s in karras_sigmas(80.0, 0.002, torch.linspace(0, 1, 3))]
        [80.0, 2.515, 0.002]
    """
    s0, s1 = sigma_start ** (1 / rho), sigma_end ** (1 / rho)
    return (s0 + (s1 - s0) * u) ** rho


def flow_shift(t: Tensor, shift: float) -> Tensor:
    """The resolution shift of SD3 / Flux: ``t -> shift t / (1 + (shift - 1) t)``.

    ``shift > 1`` moves the steps towards noise (larger images keep more noise at a given t).
    Flux's dynamic shifting is ``shift = exp(mu)``.

    Example:
        >>> import torch
        >>> flow_shift(torch.tensor([0.0, 0.5, 1.0]), 3.0).tolist()
        [0.0, 0.75, 1.0]
    """
    return shift * t / (1 + (shift - 1) * t)


def _apply_shift(schedule: Schedule, grid: Tensor) -> Tensor:
    shift = getattr(schedule, "shift", 1.0)
    return grid if shift == 1.0 else flow_shift(grid, shift)


def _validate(schedule: Schedule, grid: Tensor, name: str) -> None:
    schedule.check_time(grid, name)
    if not bool((grid[1:] < grid[:-1]).all()):
        raise InputError(f"{name} must be strictly decreasing, got {grid.tolist()}")


def check_grid(schedule: Schedule, grid: Tensor) -> Tensor:
    """Validate a user grid (float64, decreasing along dim 0, inside the schedule's range)."""
    grid = as_time(grid)
    if grid.dim() < 1 or grid.shape[0] < 2:
        raise InputError(f"grid must have shape [steps + 1, ...] with steps >= 1, got "
                         f"{tuple(grid.shape)}")
    _validate(schedule, grid, "grid")
    return grid
