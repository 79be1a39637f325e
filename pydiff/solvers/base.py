"""The solver protocol: immutable solver objects, explicit state, coefficient tables.

A solver is configuration plus math. ``state = solver.init(x_T, schedule, grid)`` computes every
coefficient the run will need, in float64, as tensors on the sample's device (a table with one
row per step); ``state = solver.step(state, model)`` then does no host-side math and no device
sync: it evaluates the model and calls :func:`pydiff.ops.lincomb` once per stage. The same solver
object serves any number of concurrent states (threads, streams), each with its own grid, step
count and generator.

Writing a solver means writing two methods:

- ``coefficients(schedule, grid, alpha, sigma) -> dict[str, Tensor]``: float64 tables ``[N, ...]``
  (``alpha``/``sigma`` are ``[N + 1, ...]`` at the grid points);
- ``step(state, model) -> SolverState``: ``x0 = self.evaluate(model, state)``, then
  ``self.advance(state, combine([...], [c["a"], c["b"]]), history=...)`` with ``c = state.coef``.

Example:
    >>> import torch, pydiff
    >>> sched = pydiff.schedules.VPSchedule()
    >>> model = pydiff.Denoiser(lambda x, t: torch.zeros_like(x), sched)
    >>> solver = pydiff.solvers.get_solver("ddim")
    >>> state = solver.init(torch.randn(3, 2), sched, pydiff.timesteps(sched, 5, "time"))
    >>> while not state.done:
    ...     state = solver.step(state, model)
    >>> state.x.shape, state.nfe
    (torch.Size([3, 2]), 5)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .. import ops
from ..grids import check_grid
from ..hooks import Hook, StepContext, apply_hooks
from ..noise import Generators, check_generator, randn_like
from ..schedules import F64, Schedule
from ..tree import State, batch_size, leaves, per_sample, tree_map

Tensor = torch.Tensor
Coef = Any  # float or Tensor


class Coefficients:
    """Row ``i`` of a solver's table: ``c["x"]`` is ``table["x"][i]`` (a device tensor)."""

    __slots__ = ("_table", "_i")

    def __init__(self, table: dict[str, Tensor] | dict[str, tuple[Tensor, ...]], i: int):
        self._table, self._i = table, i

    def __getitem__(self, name: str) -> Tensor:
        return self._table[name][self._i]


@dataclass(frozen=True)
class SolverState:
    """Everything a run carries between steps (immutable: ``step`` returns a new one).

    Attributes:
        x: the current sample (a tensor or a dict of tensors), float32 (or float64).
        i: steps taken so far.
        grid: float64 times ``[N + 1, ...]`` on the sample's device.
        alpha, sigma: float64 marginal coefficients at the grid points.
        table: float64 coefficient tables ``[N, ...]``.
        generator: a ``torch.Generator``, a list (one per sample) or None.
        hooks: post-step projections.
        history: model outputs kept by multistep solvers, newest first.
        nfe: network evaluations so far.
        flags: host-side, per-step facts decided at ``init`` (e.g. which steps skip a stage).
        aux: other tensors carried between steps (momentum velocities, UniPC's last sample,
            BDIA's previous state).
        noise_source: a Brownian-tree noise source (see :mod:`pydiff.solvers.brownian`) or None.
    """

    x: State
    i: int
    grid: Tensor
    alpha: Tensor
    sigma: Tensor
    table: dict[str, Tensor]
    generator: Generators = None
    hooks: tuple[Hook, ...] = ()
    history: tuple[State, ...] = ()
    nfe: int = 0
    flags: dict[str, tuple] = field(default_factory=dict)
    aux: tuple[State, ...] = ()
    noise_source: Any = None
    # per-step views of ``table`` and ``grid`` (``unbind`` once at init: a step then indexes a
    # Python tuple instead of slicing tensors, which dominates small-state steps on CPU)
    rows: dict[str, tuple[Tensor, ...]] = field(default_factory=dict, repr=False)
    times: tuple[Tensor, ...] = field(default=(), repr=False)

    @property
    def steps(self) -> int:
        """Total number of steps of this run."""
        return self.grid.shape[0] - 1

    @property
    def done(self) -> bool:
        return self.i >= self.steps

    @property
    def t(self) -> Tensor:
        """Current time (float64, scalar / ``[B]`` / per-position)."""
        return self.times[self.i] if self.times else self.grid[self.i]

    @property
    def coef(self) -> Coefficients:
        """This step's row of the coefficient table."""
        return Coefficients(self.rows or self.table, self.i)

    def replace(self, **changes: Any) -> SolverState:
        return dataclasses.replace(self, **changes)


def combine(terms: Sequence[State], coeffs: Sequence[Coef], noise: State | None = None,
            noise_coeff: Coef | None = None) -> State:
    """One fused solver stage ``sum c_k T_k + c_z z`` on tensor or dict states."""
    if isinstance(terms[0], dict):
        return {k: ops.lincomb([t[k] for t in terms], coeffs,
                               None if noise is None else noise[k], noise_coeff)
                for k in terms[0]}
    return ops.lincomb(list(terms), list(coeffs), noise, noise_coeff)


class Solver:
    """Base class of all solvers (see the module docstring).

    Class attributes:
        name: registry name.
        order: the scheme's global order on smooth problems (ODE solvers).
        stochastic: True for samplers that inject noise.
        default_spacing: the grid spacing used when the caller names none.
        inverse: True for inversion solvers (data to noise): they take the same decreasing grid
            as sampling and walk it backwards (``state.grid`` is then increasing).
        brownian: draw the step noise from a Brownian tree (``noise="brownian"`` in the
            constructors of SDE solvers), so a sample depends on the path, not the step count.
    """

    name: ClassVar[str] = ""
    order: ClassVar[int] = 1
    stochastic: ClassVar[bool] = False
    default_spacing: ClassVar[str] = "logsnr"
    inverse: ClassVar[bool] = False
    brownian: bool = False

    def __setattr__(self, key: str, value: Any) -> None:
        if getattr(self, "_frozen", False):
            raise AttributeError(f"{type(self).__name__} is immutable; make a new solver instead")
        object.__setattr__(self, key, value)

    def _freeze(self) -> None:
        object.__setattr__(self, "_frozen", True)

    # -- to be defined by each solver --------------------------------------------------------
    def coefficients(self, schedule: Schedule, grid: Tensor, alpha: Tensor,
                     sigma: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def step(self, state: SolverState, model: Any) -> SolverState:
        raise NotImplementedError

    def step_flags(self, schedule: Schedule, grid: Tensor, sigma: Tensor) -> dict[str, tuple]:
        """Host-side per-step facts (decided once at init; default none)."""
        return {}

    # -- shared machinery --------------------------------------------------------------------
    def init(
        self,
        x: State,
        schedule: Schedule,
        grid: Tensor,
        *,
        generator: Generators = None,
        hooks: Sequence[Hook] = (),
    ) -> SolverState:
        """Start a run at ``x`` (a sample at time ``grid[0]``) over ``grid``.

        ``grid`` is ``[N + 1]`` or ``[N + 1, *S]`` with ``S`` = ``[B]`` (per-sample grids) or a
        shape broadcastable to ``x`` (per-position noise levels).
        """
        ref = leaves(x)[0]
        grid = check_grid(schedule, grid).to(ref.device)
        if self.inverse:
            grid = grid.flip(0)
        if grid.dim() > 1:
            tree_map(lambda leaf: per_sample(grid[0], leaf), x)  # validates the shape
        check_generator(generator, batch_size(x))
        x = tree_map(_state_dtype, x)
        alpha, sigma = schedule.alpha(grid), schedule.sigma(grid)
        table = {k: v.to(F64) for k, v in self.coefficients(schedule, grid, alpha, sigma).items()}
        for k, v in table.items():
            if v.shape[0] != grid.shape[0] - 1:
                raise RuntimeError(f"{type(self).__name__}: table {k!r} has {v.shape[0]} rows "
                                   f"for {grid.shape[0] - 1} steps")
        source = None
        if self.brownian:
            from .brownian import BrownianNoise

            source = BrownianNoise(x, grid, generator)
        return SolverState(x=x, i=0, grid=grid, alpha=alpha, sigma=sigma, table=table,
                           generator=generator, hooks=tuple(hooks),
                           flags=self.step_flags(schedule, grid, sigma), noise_source=source,
                           rows={k: v.unbind(0) for k, v in table.items()},
                           times=grid.unbind(0))

    def evaluate(self, model: Any, state: SolverState, x: State | None = None,
                 at: int | Tensor | None = None) -> State:
        """The model's x0 prediction at ``x`` (default: the state) and grid point ``at``.

        ``at`` is a grid index or a float64 time tensor (intermediate stage times).
        """
        return model.x0(state.x if x is None else x, _time(state, at))

    def predict(self, model: Any, state: SolverState, x: State | None = None,
                at: int | Tensor | None = None) -> tuple[State, State]:
        """``(x0, eps)`` at ``x`` (default: the state) and grid point ``at`` (or a time tensor).

        Solvers written in noise prediction use this instead of :meth:`evaluate`.
        """
        return model.predict(state.x if x is None else x, _time(state, at))

    def noise(self, state: SolverState, *, path: bool = True) -> State:
        """Standard normal noise shaped like the state, from the state's generator(s).

        With a Brownian-tree source, ``path=True`` returns the normalized Brownian increment
        over this step; ``path=False`` always draws fresh noise (e.g. Langevin corrector noise).
        """
        if path and state.noise_source is not None:
            return state.noise_source.increment(state.i)
        return randn_like(state.x, state.generator)

    def advance(self, state: SolverState, x: State, *, history: tuple[State, ...] = (),
                nfe: int = 1, aux: tuple[State, ...] = ()) -> SolverState:
        """Finish a step: run the hooks at the new level, move to the next grid point."""
        i = state.i + 1
        if state.hooks:
            ctx = StepContext(step=state.i, t=state.grid[i], alpha=state.alpha[i],
                              sigma=state.sigma[i], generator=state.generator,
                              final=i == state.steps)
            x = apply_hooks(state.hooks, x, ctx)
        return state.replace(x=x, i=i, history=history, nfe=state.nfe + nfe, aux=aux)

    def __repr__(self) -> str:
        args = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in args.items())})"


def _time(state: SolverState, at: int | Tensor | None) -> Tensor:
    if torch.is_tensor(at):
        return at
    i = state.i if at is None else at
    return state.times[i] if state.times else state.grid[i]


def _state_dtype(v: Tensor) -> Tensor:
    # the solver state stays float32 even when the model runs in half precision
    return v.float() if v.dtype in (torch.float16, torch.bfloat16) else v


def check_noise(noise: str) -> bool:
    """Validate a ``noise=`` option of an SDE solver; True for the Brownian tree."""
    if noise not in ("gaussian", "brownian"):
        raise ValueError(f"noise must be 'gaussian' or 'brownian', got {noise!r}")
    return noise == "brownian"


def warmup_orders(steps: int, order: int, lower_order_final: bool) -> list[int]:
    """Per-step orders of a multistep solver: ``min(i + 1, order)`` while history builds up and,
    with ``lower_order_final`` in runs shorter than 15 steps (diffusers' rule), first order on
    the last step and at most second order on the one before."""
    orders = [min(i + 1, order) for i in range(steps)]
    if lower_order_final and steps < 15:
        orders[-1] = 1
        if steps > 1:
            orders[-2] = min(orders[-2], 2)
    return orders


def step_index(table_like: Tensor) -> Tensor:
    """``[N, 1, ...]`` float64 step indices that broadcast against a table."""
    n = table_like.shape[0]
    return torch.arange(n, dtype=F64, device=table_like.device).reshape(
        -1, *([1] * (table_like.dim() - 1)))
