"""The whole sampling loop: ``pydiff.sample(model, x_T, solver=..., steps=...)``.

Example:
    >>> import torch, pydiff
    >>> sched = pydiff.schedules.VPSchedule()
    >>> model = pydiff.Denoiser(lambda x, t: torch.zeros_like(x), sched)
    >>> g = torch.Generator().manual_seed(0)
    >>> x_T = pydiff.prior(sched, (8, 2), generator=g)
    >>> x = pydiff.sample(model, x_T, solver="dpmpp_2m", steps=10)
    >>> x.shape
    torch.Size([8, 2])
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import ops
from .errors import InputError
from .grids import timesteps
from .hooks import Hook
from .model import Model
from .noise import Generators, noised, randn
from .schedules import Schedule, as_time
from .solvers import Solver, SolverState, get_solver
from .tree import State, leaves, per_sample, tree_map

Tensor = torch.Tensor


def _default_grid(schedule: Schedule, solver: Solver, steps: int, spacing: str,
                  t_start: Any, t_end: Any, final_zero: bool, device: torch.device) -> Tensor:
    """The grid of ``sample(..., steps=, spacing=)``, kept on the schedule for scalar ends.

    A control loop samples the same grid at every call: handing back the same tensor lets the
    Denoiser and the wrappers reuse what they computed for it (their per-grid caches), which
    at one network call per chunk cost as much as the call. A grid changed in place is rebuilt.
    """
    drop_eps = solver.jumps_to_data and final_zero and t_end is None
    scalar = all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
                 for v in (t_start, t_end))
    key = (steps, spacing, t_start, t_end, final_zero, drop_eps, str(device))
    # an inference-mode grid could not be saved for a later run's backward: not kept
    keep = scalar and not torch.is_inference_mode_enabled()
    cache = schedule.__dict__.setdefault("_default_grids", {}) if keep else None
    if cache is not None:
        hit = cache.get(key)
        if hit is not None and hit[0]._version == hit[1]:
            return hit[0]
    grid = timesteps(schedule, steps + int(drop_eps), spacing, t_start=t_start, t_end=t_end,
                     final_zero=final_zero, device=device)
    if drop_eps:  # see Solver.jumps_to_data
        grid = torch.cat([grid[:-2], grid[-1:]])
    if cache is not None:
        if len(cache) >= 32:
            cache.clear()
        cache[key] = (grid, grid._version)
    return grid


def prior(
    schedule: Schedule,
    shape: Sequence[int] | Tensor,
    *,
    generator: Generators = None,
    t: float | Tensor | None = None,
    mean: State | None = None,
    noise: Tensor | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """A sample of the marginal at ``t`` (default ``t_max``) given the data is ``mean`` (or 0).

    ``x_t = alpha(t) mean + sigma(t) z``. For mean-reverting schedules pass the observation (or
    any estimate of the clean data, as StoRM does) as ``mean``; this returns ``mean + sigma(t) z``,
    the unshifted start of SGMSE+ and StoRM (the process mean ``alpha (x0 - y)`` is unknown and
    left out). ``noise`` is the standard normal ``z`` itself (shape ``shape``), for noise drawn
    elsewhere (e.g. keyed by position so that chunks of a long signal agree); otherwise ``z``
    is drawn from ``generator``.

    Example:
        >>> import torch, pydiff
        >>> sched = pydiff.MeanRevertingSchedule()
        >>> y, z = torch.ones(1, 4), torch.zeros(1, 4)
        >>> pydiff.prior(sched, y.shape, mean=y, noise=z).tolist()  # y + sigma(T) * 0
        [[1.0, 1.0, 1.0, 1.0]]
    """
    given = tuple(shape.shape) if torch.is_tensor(shape) else tuple(shape)
    try:
        shape = tuple(operator.index(n) for n in given)
    except TypeError:
        shape = ()
    if not shape or min(shape) < 0:
        raise InputError(f"shape must be a non-empty sequence of integers >= 0, got {given}")
    if device is not None:
        check_device(device, "device")
    t = schedule.t_max if t is None else t
    if not torch.is_tensor(t) or t.device.type == "cpu":
        schedule.check_time(as_time(t), "t")  # (a device tensor is not checked: no sync)
    if noise is None:
        z = randn(shape, generator, device=device)
    elif not torch.is_tensor(noise) or tuple(noise.shape) != shape:
        got = tuple(noise.shape) if torch.is_tensor(noise) else type(noise).__name__
        raise InputError(f"noise must be a tensor of the prior's shape {shape}, got {got}")
    else:
        z = noise if device is None else noise.to(device)
    tt = as_time(t, z.device)
    sigma = schedule.sigma(tt)
    if mean is None:
        return ops.lincomb([z], [sigma])
    alpha = 1.0 if schedule.mean_reverting else schedule.alpha(tt)
    return noised(mean, alpha, sigma, z)


def sample(
    model: Model,
    x: State,
    solver: str | Solver = "dpmpp_2m",
    steps: int = 10,
    *,
    spacing: str | None = None,
    grid: Tensor | None = None,
    t_start: float | Tensor | None = None,
    t_end: float | Tensor | None = None,
    final_zero: bool = True,
    generator: Generators = None,
    hooks: Sequence[Hook] = (),
    progress: bool = False,
    callback: Callable[[SolverState], Any] | None = None,
    check_finite: bool = True,
    return_state: bool = False,
    **solver_options: Any,
) -> State | SolverState:
    """Run ``solver`` from ``x`` (a sample at ``t_start``) to clean data.

    Args:
        model: a :class:`pydiff.Model`: a :class:`pydiff.Denoiser`, a guidance wrapper, or a
            model of your own.
        x: the start sample: noise from :func:`prior`, or a partly noised sample for warm starts.
        solver: a name from :func:`pydiff.solvers.available_solvers` or a solver instance.
        steps: number of solver steps (network evaluations are ``steps`` times the stages).
        spacing: grid spacing; see :func:`pydiff.timesteps`. Default: the schedule's where it
            has one (Karras for EDM and VE, where uniform steps in ``t`` = sigma would all land
            at high noise; uniform time for flow matching), else the solver's.
        grid: an explicit float64 grid ``[steps + 1, ...]`` (overrides steps/spacing/t_*).
        t_start: the noise level of ``x`` (default ``t_max``); scalar or ``[B]``.
        t_end, final_zero: where the grid ends (see :func:`pydiff.timesteps`).
        generator: a ``torch.Generator`` or a list, one per sample (stochastic solvers).
        hooks: post-step projections (see :mod:`pydiff.hooks`).
        progress: show a progress bar.
        callback: called with the state after every step. For a mean-reverting model (bound to
            its mean ``y``) hooks, callbacks and ``return_state`` see the solver's state in the
            shifted coordinate ``x - y``; only the returned sample is shifted back.
        check_finite: raise if the state becomes NaN/inf, naming the first bad step (one device
            sync at the end of the run, none per step).
        return_state: return the final :class:`SolverState` instead of the sample.
        **solver_options: passed to the solver's constructor when ``solver`` is a name.
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be a pydiff.Model (a Denoiser, a guidance wrapper or your "
                        f"own, see pydiff.model), got {type(model).__name__}; wrap a network: "
                        "pydiff.Denoiser(net, schedule, prediction=...)")
    if not (torch.is_tensor(x) or (isinstance(x, dict) and x
                                   and all(torch.is_tensor(v) for v in x.values()))):
        raise TypeError(f"x must be a tensor or a non-empty dict of tensors, got "
                        f"{type(x).__name__}")
    solver = get_solver(solver, **solver_options)
    schedule = model.schedule
    ref = leaves(x)[0]
    if ref.is_meta:
        raise InputError("x is a meta tensor (a shape without data); expected a tensor on a "
                         "real device such as 'cpu' or 'cuda'")
    if grid is None:
        if spacing is None:
            spacing = schedule.default_spacing or solver.default_spacing
        grid = _default_grid(schedule, solver, steps, spacing, t_start, t_end, final_zero,
                             ref.device)
        name = "t_start" if torch.is_tensor(t_start) and t_start.dim() else "t_end"
    else:
        name = "grid"
    _check_time_shape(grid[0] if torch.is_tensor(grid) and grid.dim() else grid, x, name)
    shift = model.shift
    if shift is not None:
        x = tree_map(torch.sub, x, shift)
    state = solver.init(x, schedule, grid, generator=generator, hooks=hooks)

    first_bad = torch.full((), -1, dtype=torch.long, device=ref.device) if check_finite else None
    bar = _progress(state.steps, solver.name) if progress else None
    while not state.done:
        state = solver.step(state, model)
        if first_bad is not None:
            # a sum is NaN/inf iff an element is (or the state is near float overflow): one
            # reduction without the bool temporary of isfinite(x).all()
            finite = torch.isfinite(torch.stack([v.sum() for v in leaves(state.x)])).all()
            first_bad = torch.where((~finite) & (first_bad < 0), state.i - 1, first_bad)
        if bar is not None:
            bar.update(1)
        if callback is not None:
            callback(state)
    if bar is not None:
        bar.close()
    if first_bad is not None and int(first_bad) >= 0:
        k = int(first_bad)
        t_bad = state.grid[k].flatten()[:4].tolist()
        raise FloatingPointError(
            f"non-finite values (NaN/inf) appeared at step {k} of {state.steps} "
            f"(t={t_bad}, solver {solver.name}): the model output or the solver update "
            "overflowed; check the network, its prediction type and the grid")
    if return_state:
        return state
    out = state.x
    if shift is not None:
        out = tree_map(torch.add, out, shift)
    return out


def check_device(device: torch.device | str, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` if it exists here, else an InputError naming it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"{name}={device!r} is not a torch device; expected e.g. 'cpu', 'cuda' "
                         "or 'cuda:0'") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index is not None and dev.index >= count):
            raise InputError(f"{name}={device!r} is not available: this machine has {count} "
                             f"CUDA device(s) (torch {torch.__version__})")
    return dev


def _check_time_shape(t: Tensor, x: State, name: str) -> None:
    """Per-sample times must fit the state before a solver broadcasts them deep inside."""
    if not torch.is_tensor(t):
        return
    for leaf in leaves(x):
        try:
            per_sample(t, leaf)
        except ValueError:
            batch = leaf.shape[0] if leaf.dim() else "?"
            raise InputError(
                f"{name} has shape {tuple(t.shape)}, which does not broadcast to the state x of "
                f"shape {tuple(leaf.shape)} (batch size {batch}): expected a scalar, one value "
                f"per sample [{batch}], or a shape broadcastable to x") from None


def _progress(total: int, name: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"sampling ({name})", leave=False)
