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

The model is a :class:`pydiff.Model`: ``model.evaluate(x, t)`` returns a
:class:`pydiff.Prediction`, whose x0 (or eps) reaches the solver as a lazy
:class:`pydiff.Linear` term when the network predicts something else (eps, v, score): ``combine``
folds that map into the stage's one pass (``keep=`` writes the x0 a multistep history stores in
the same pass), so an eps network costs the step no extra pass over memory.

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
from ..model import Linear, Prediction
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

    def restart(self, x: State, *, generator: Generators = None,
                hooks: Sequence[Hook] = ()) -> SolverState:
        """A new run from ``x`` over this state's grid and coefficient tables, without
        computing them again (what :meth:`Solver.init` spends its time on): for many runs over
        one grid, e.g. one per stream (:class:`pydiff.accel.StreamBatch`). ``x`` must have the
        shape, dtype and device of this state's ``x``; a Brownian-tree run cannot restart.

        Example:
            >>> import torch, pydiff
            >>> from pydiff.solvers import get_solver
            >>> sched = pydiff.VPSchedule()
            >>> first = get_solver("ddim").init(torch.zeros(1, 2), sched, torch.tensor([1.0, 0.0]))
            >>> first.restart(torch.ones(1, 2)).x.tolist(), first.restart(torch.ones(1, 2)).i
            ([[1.0, 1.0]], 0)
        """
        if self.noise_source is not None:
            raise ValueError("SolverState.restart: a Brownian-tree run draws its path from its "
                             "x and generator; start it with Solver.init")
        old, new = leaves(self.x), leaves(x)
        if len(old) != len(new) or any(
                not torch.is_tensor(b) or a.shape != b.shape or a.device != b.device
                or a.dtype != _state_dtype(b).dtype for a, b in zip(old, new)):
            got = [tuple(b.shape) if torch.is_tensor(b) else type(b).__name__ for b in new]
            raise ValueError(f"SolverState.restart: x is {got}; expected the shape, dtype and "
                             f"device of this run's x {[tuple(a.shape) for a in old]}")
        check_generator(generator, batch_size(x))
        return self.replace(x=tree_map(_state_dtype, x), i=0, generator=generator,
                            hooks=tuple(hooks), history=(), nfe=0, aux=())

    def replace(self, **changes: Any) -> SolverState:
        """A copy with ``changes`` (as ``dataclasses.replace``, which costs a solver step on a
        small state more than its kernel: every step makes one)."""
        unknown = changes.keys() - _STATE_FIELDS
        if unknown:
            raise TypeError(f"SolverState has no field(s) {sorted(unknown)}")
        new = object.__new__(SolverState)
        fields = new.__dict__
        fields.update(self.__dict__)
        fields.update(changes)
        return new


_STATE_FIELDS = frozenset(f.name for f in dataclasses.fields(SolverState))


def combine(terms: Sequence[State | Linear], coeffs: Sequence[Coef], noise: State | None = None,
            noise_coeff: Coef | None = None, *, keep: State | Linear | None = None
            ) -> State | tuple[State, State]:
    """One fused solver stage ``sum c_k T_k + c_z z`` on tensor or dict states.

    A term may be a :class:`pydiff.Linear` (a model's x0 or eps not yet in memory, from
    :meth:`Solver.evaluate`): its map folds into the same pass, which reads the network output
    and the state once. ``keep`` (one of the terms) is the model output a multistep solver
    stores: ``combine`` then returns ``(result, kept)``. A kept :class:`pydiff.Linear` over at
    most two tensors (the state and the network output) stays a Linear, which the next step
    folds into its own pass (see :func:`keeps_lazily`); a wider one is written in this pass.
    """
    written = keep if type(keep) is Linear and not keeps_lazily(keep) else None
    if ops._EXT and ops._fold_fast is not None and not torch.compiler.is_compiling():
        # one C++ call for tensor states (plain tensors and Linear terms alike)
        folded = ops._fold_fast(terms, coeffs, noise, noise_coeff, written, Linear)
        if folded is not None:
            if keep is None:
                return folded[0]
            return folded if written is not None else (folded[0], keep)
    if type(keep) is Linear and written is None:
        # the history keeps the map itself: the next step folds it into its own pass
        return combine(terms, coeffs, noise, noise_coeff), keep
    if Linear not in map(type, terms):
        if isinstance(terms[0], dict):
            res = {k: ops.lincomb([t[k] for t in terms], coeffs,
                                  None if noise is None else noise[k], noise_coeff)
                   for k in terms[0]}
        else:
            res = ops.lincomb(list(terms), list(coeffs), noise, noise_coeff)
        return res if keep is None else (res, keep)
    first = terms[0].basis[0] if type(terms[0]) is Linear else terms[0]
    if isinstance(first, dict):
        parts = {k: _fused(terms, coeffs, noise, noise_coeff, keep, k) for k in first}
        res = {k: v[0] for k, v in parts.items()}
        return res if keep is None else (res, {k: v[1] for k, v in parts.items()})
    res, kept = _fused(terms, coeffs, noise, noise_coeff, keep, None)
    return res if keep is None else (res, kept)


def keeps_lazily(term: State | Linear) -> bool:
    """Whether a model output kept for later steps (a multistep history) stays a lazy
    :class:`pydiff.Linear` instead of being written to memory now.

    For a network predicting eps, v or score the map to x0 reads two tensors (the state and the
    network output). Keeping both and folding the map into the next step reads one tensor more
    there, whereas writing x0 now costs a store to fresh memory (a read of the line, the write,
    first-touch page faults for large states) plus the read later, so the lazy history is the
    cheaper one. Maps over more tensors (classifier-free guidance: two network outputs) are
    written. As with an x0 network's output, the history holds the network's tensors, so a
    network must not overwrite its previous output in place.
    """
    return type(term) is Linear and len(term.basis) <= 2


def _fused(terms: Sequence[State | Linear], coeffs: Sequence[Coef], noise: State | None,
           noise_coeff: Coef | None, keep: State | Linear | None, key: str | None
           ) -> tuple[Tensor, Tensor | None]:
    """:func:`combine` with Linear terms, on one leaf (``key`` of dict states): one plain
    ``ops.lincomb`` when every Linear composes into the stage (:func:`compose_linears`), else
    one ``ops.lincomb_multi`` whose first outputs are the remaining Linear terms (kept or not)
    and whose last is the stage. (Written for speed: a solver step on a small state costs
    microseconds.)"""
    inputs: list[Tensor] = []
    slots: dict[int, int] = {}  # id(tensor) -> position in inputs
    linears: list[Linear] = []
    for t in terms:
        if type(t) is Linear:
            if t not in linears:  # identity: Linear defines no __eq__
                linears.append(t)
            for b in t.basis:
                v = b if key is None else b[key]
                if id(v) not in slots:
                    slots[id(v)] = len(inputs)
                    inputs.append(v)
        else:
            v = t if key is None else t[key]
            if id(v) not in slots:
                slots[id(v)] = len(inputs)
                inputs.append(v)
    if noise is not None:
        v = noise if key is None else noise[key]
        if id(v) not in slots:
            slots[id(v)] = len(inputs)
            inputs.append(v)
    n = len(inputs)
    rows: list[list] = []
    for lin in linears:
        row: list = [None] * n
        for b, c in zip(lin.basis, lin.coefs):
            if c is not None:
                _add(row, slots[id(b if key is None else b[key])], c)
        rows.append(row)
    last: list = [None] * (n + len(linears))
    for t, c in zip(terms, coeffs):
        if type(t) is Linear:
            _add(last, n + linears.index(t), c)
        else:
            _add(last, slots[id(t if key is None else t[key])], c)
    if noise is not None:
        _add(last, slots[id(noise if key is None else noise[key])], noise_coeff)
    keep_at = linears.index(keep) if type(keep) is Linear else -1
    remaining = compose_linears(rows, last, n, keep_at)
    if len(remaining) > 3:  # the kernel's 4 outputs: materialize the rest first
        values = {id(linears[j]): linears[j].value() for j in remaining[3:]}
        terms = [values.get(id(t), t) for t in terms]
        return _fused(terms, coeffs, noise, noise_coeff, values.get(id(keep), keep), key)
    kept = None if keep is None else (keep if key is None else keep[key])
    if not remaining:
        used = [i for i in range(n) if last[i] is not None]
        sources, weights = [inputs[i] for i in used], [last[i] for i in used]
        if sources[0].dtype != inputs[0].dtype:  # the result takes the state's dtype
            sources, weights = [inputs[0], *sources], [0.0, *weights]
        return ops.lincomb(sources, weights), kept
    rows = [rows[j] for j in remaining]
    rows.append(last[:n] + [last[n + j] for j in remaining])
    flags = [j == keep_at for j in remaining]
    flags.append(True)
    outs = ops.lincomb_multi(inputs, rows, flags)
    if keep_at >= 0:
        return outs[1], outs[0]
    return outs[0], kept


def compose_linears(rows: list[list], last: list, n: int, keep_at: int) -> list[int]:
    """Fold the Linear terms of a fused stage into its last row where their coefficients are
    known on the host; returns the Linears that keep a row of their own (the one written for
    the history, and those with device or per-sample coefficients).

    ``rows[j]`` is Linear ``j``'s dense row over the ``n`` inputs and ``last`` the stage's row
    over the inputs and then the Linears. A composed Linear's weight in ``last`` times its row
    is added into ``last``, so the kernel reads its basis directly instead of forming it: one
    plain ``lincomb`` when every Linear composes. The compiled fast path
    (``pydiff._C.fold_fast``) does the same double arithmetic in the same order, so both paths
    give the same bits.
    """
    remaining = []
    for j, row in enumerate(rows):
        w = last[n + j]
        if (j == keep_at or not (w is None or _host(w))
                or any(c is not None and not (_host(c) and (last[i] is None or _host(last[i])))
                       for i, c in enumerate(row))):
            remaining.append(j)
            continue
        if w is not None:
            wv = float(w)
            for i, c in enumerate(row):
                if c is not None:
                    term = wv * float(c)
                    last[i] = term if last[i] is None else float(last[i]) + term
        last[n + j] = None
    return remaining


def _host(c: Coef) -> bool:
    # a coefficient known on the host: a Python number or a 0-dim CPU tensor without grad (the
    # compiled fast path's host_value admits the same)
    if type(c) is float or type(c) is int:
        return True
    return (isinstance(c, torch.Tensor) and c.dim() == 0 and c.device.type == "cpu"
            and not c.requires_grad and c.dtype in _HOST_DTYPES)


_HOST_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def _add(row: list, i: int, c: Coef) -> None:
    # a source met twice (a history slot that repeats the newest output) sums its coefficients
    # (in double when both are host values, as the compiled fast path does)
    if row[i] is None:
        row[i] = c
    elif _host(row[i]) and _host(c):
        row[i] = float(row[i]) + float(c)
    else:
        row[i] = row[i] + c


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
        jumps_to_data: every step's network evaluation already estimates clean data
            (consistency sampling), so a grid made from ``steps`` spends no evaluation at
            ``t_eps``: ``pydiff.sample`` drops that point (``steps=2`` on a uniform grid is
            ``1, ~0.5, 0``, not ``1, t_eps, 0``, whose second evaluation would return its input).
    """

    name: ClassVar[str] = ""
    order: ClassVar[int] = 1
    stochastic: ClassVar[bool] = False
    default_spacing: ClassVar[str] = "logsnr"
    inverse: ClassVar[bool] = False
    jumps_to_data: ClassVar[bool] = False
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
                 at: int | Tensor | None = None) -> State | Linear:
        """The model's x0 prediction at ``x`` (default: the state) and grid point ``at``.

        ``at`` is a grid index or a float64 time tensor (intermediate stage times). The result
        is a solver term: a tensor, or a :class:`pydiff.Linear` (the network output and the
        parameterization's map) that :func:`combine` folds into the step's fused pass; call
        ``.value()`` where a tensor is needed.
        """
        return _evaluate(model, state.x if x is None else x, _time(state, at)).x0_term

    def predict(self, model: Any, state: SolverState, x: State | None = None,
                at: int | Tensor | None = None) -> tuple[State | Linear, State | Linear]:
        """``(x0, eps)`` terms at ``x`` (default: the state) and grid point ``at`` (or a time
        tensor), as :meth:`evaluate` gives x0. Solvers written in noise prediction use this.
        """
        p = _evaluate(model, state.x if x is None else x, _time(state, at))
        return p.x0_term, p.eps_term

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
        # a model output stored without combine(keep=...) is materialized here unless it
        # stays lazy (see keeps_lazily)
        # (a plain loop first: this runs on every step, and usually nothing is to be written)
        for h in history:
            if type(h) is Linear and not keeps_lazily(h):
                history = tuple(h.value() if type(h) is Linear and not keeps_lazily(h) else h
                                for h in history)
                break
        if type(history) is not tuple:
            history = tuple(history)
        aux = tuple(a.value() if isinstance(a, Linear) else a for a in aux) if aux else ()
        if state.hooks:
            ctx = StepContext(step=state.i, t=state.grid[i], alpha=state.alpha[i],
                              sigma=state.sigma[i], generator=state.generator,
                              final=i == state.steps)
            x = apply_hooks(state.hooks, x, ctx)
        return state.replace(x=x, i=i, history=history, nfe=state.nfe + nfe, aux=aux)

    def __repr__(self) -> str:
        args = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in args.items())})"


def _evaluate(model: Any, x: State, t: Tensor) -> Prediction:
    evaluate = getattr(model, "evaluate", None)
    if evaluate is None:
        raise TypeError(f"model must implement pydiff.Model (evaluate(x, t) -> Prediction), got "
                        f"{type(model).__name__}; wrap a network in pydiff.Denoiser")
    return evaluate(x, t)


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
