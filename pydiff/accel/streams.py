"""Stream batching (StreamDiffusion, Kodaira et al. 2023): many concurrent sampling streams,
each at its own noise level, advanced by one batched network call per tick.

A :class:`StreamBatch` holds up to ``max_streams`` streams. :meth:`StreamBatch.push` queues a
start sample (noise from :func:`pydiff.prior`, or a partly noised input for warm starts); every
:meth:`StreamBatch.tick` admits queued streams into free slots, evaluates the model once on the
concatenation of every active stream's state at that stream's own time (per-sample times: the
core's Denoiser takes ``t [B]`` and per-position times), and hands each stream's solver its
slice of the prediction; :meth:`StreamBatch.pop` returns finished samples in push order.

Each stream keeps its own :class:`pydiff.SolverState`: its grid, its step, its generator and a
multistep solver's history, so a stream's output equals sampling it alone (up to the float
rounding of a batched network call and of per-stream coefficients). The solver is unchanged:
a tick makes one batched call at every stream's own ``(x, t)`` and runs each stream's step
answered from it, which is all that single-evaluation solvers (DDIM, DDPM, Euler,
DPM-Solver++ 2M/3M, UniPC, PLMS, ...) ask for. The first step that asks for another
evaluation (a second stage, a corrector, churn's raised noise level, a time-shifted point)
gets it per stream (counted in ``unbatched_calls``), and from the next tick on every stream's
step runs as a coroutine (on its own thread, one running at a time, in stream order, so even
draws from the global generator keep a fixed order) whose model parks each evaluation until
every stream of the tick has asked for its own; one batched call then answers them all. So
every stage of a multi-stage solver is batched across streams: Heun costs two batched calls a
tick (one on a stream's last step). Only an evaluation carrying its own extra conditioning
stays per stream. The solver's arithmetic (a few fused element-wise passes per stream) stays
per stream: every stream has its own step index (it is a few per cent of a tick; the
network is most of it). Streams on the default grid share one grid and coefficient table: a push
restarts the first such stream's start state (:meth:`pydiff.SolverState.restart`) instead of
building them again.

Example:
    >>> import torch, pydiff
    >>> from pydiff.accel import StreamBatch
    >>> sched = pydiff.VPSchedule()
    >>> model = pydiff.Denoiser(lambda x, t: 0.1 * x, sched, prediction="eps")
    >>> streams = StreamBatch(model, "dpmpp_2m", steps=3, max_streams=4)
    >>> g = torch.Generator().manual_seed(0)
    >>> for _ in range(6):                 # a new frame arrives every tick
    ...     _ = streams.push(pydiff.prior(sched, (1, 2), generator=g))
    ...     _ = streams.tick()
    >>> outs = streams.drain()             # tick until every pushed stream is done
    >>> len(outs), streams.network_calls, streams.unbatched_calls
    (6, 8, 0)
    >>> heun = StreamBatch(model, "heun", steps=3, max_streams=4)   # two stages a step
    >>> _ = [heun.push(pydiff.prior(sched, (1, 2), generator=g)) for _ in range(4)]
    >>> len(heun.drain()), heun.network_calls, heun.unbatched_calls   # 1 + 2 + 1 batched
    (4, 4, 4)
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import InputError
from ..grids import timesteps
from ..hooks import Hook
from ..model import Model, Prediction
from ..noise import Generators
from ..sampling import _check_time_shape
from ..solvers import Solver, SolverState, get_solver

Tensor = torch.Tensor

__all__ = ["StreamBatch"]


class _Stream:
    __slots__ = ("ticket", "state", "cond", "model")

    def __init__(self, ticket: int, state: SolverState, cond: dict[str, Any], model: Model):
        self.ticket, self.state, self.cond, self.model = ticket, state, cond, model


class _Answered(Model):
    """The stream's model for one step of :meth:`StreamBatch._tick_once`: the evaluation at
    the step's own ``(x, t)`` comes from the batched call; any other is made per stream (and
    counted), and switches the batch to coroutine ticks."""

    def __init__(self, model: Model, x: Tensor, t: Tensor, prediction: Prediction,
                 owner: StreamBatch):
        super().__init__(model.schedule, model.cond)
        self._model, self._x, self._t, self._prediction, self._owner = (
            model, x, t, prediction, owner)

    def evaluate(self, x: Any, t: Any, **cond: Any) -> Prediction:
        if x is self._x and t is self._t and not cond:
            return self._prediction
        self._owner.unbatched_calls += 1
        if not cond:
            self._owner._coroutines = True
        return self._model.evaluate(x, t, **cond)

    def __getattr__(self, name: str) -> Any:  # e.g. supports_jump
        return getattr(self.__dict__["_model"], name)


class _Coroutine:
    """One stream's solver step run as a coroutine on its own thread. The step's model
    evaluations park it (:meth:`ask`) until the coordinator answers them (:meth:`answer`); the
    coordinator and the step never run at the same time (each hands over and waits), so the
    streams' steps run one at a time in the order the coordinator resumes them."""

    def __init__(self, step, state: SolverState, model: Model) -> None:
        self._go, self._back = threading.Semaphore(0), threading.Semaphore(0)
        self.request: tuple[Tensor, Tensor] | None = None
        self.result: SolverState | None = None
        self.error: BaseException | None = None
        self.done = False
        self._answer: Any = None
        self.unbatched = 0
        # grad and inference modes are per thread: the step runs under the caller's
        modes = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        self._thread = threading.Thread(target=self._run, args=(step, state, model, modes),
                                        daemon=True)
        self._thread.start()
        self._back.acquire()  # the step runs until its first evaluation (or its end)

    def _run(self, step, state: SolverState, model: Model, modes: tuple[bool, bool]) -> None:
        try:
            with torch.inference_mode(modes[1]), torch.set_grad_enabled(modes[0]):
                self.result = step(state, _Parked(model, self))
        except BaseException as err:  # handed to the coordinator, which raises it
            self.error = err
        finally:
            self.done, self.request = True, None
            self._back.release()

    def ask(self, x: Tensor, t: Tensor) -> Prediction:
        """On the step's thread: park until the coordinator answers ``(x, t)``."""
        self.request = (x, t)
        self._back.release()
        self._go.acquire()
        answer, self._answer = self._answer, None
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def answer(self, value: Prediction | BaseException) -> None:
        """On the coordinator's thread: resume the step with ``value`` and wait until it asks
        again or ends."""
        self._answer, self.request = value, None
        self._go.release()
        self._back.acquire()
        if self.done:
            self._thread.join()


class _Parked(Model):
    """The stream's model inside its coroutine: an evaluation parks the step until the tick's
    batched call answers it; one with extra conditioning goes to the stream's model alone."""

    def __init__(self, model: Model, coroutine: _Coroutine):
        super().__init__(model.schedule, model.cond)
        self._model, self._coroutine = model, coroutine

    def evaluate(self, x: Any, t: Any, **cond: Any) -> Prediction:
        if cond or not torch.is_tensor(x):
            self._coroutine.unbatched += 1
            return self._model.evaluate(x, t, **cond)
        return self._coroutine.ask(x, torch.as_tensor(t, dtype=torch.float64, device=x.device))

    def __getattr__(self, name: str) -> Any:  # e.g. supports_jump
        return getattr(self.__dict__["_model"], name)


class StreamBatch:
    """Concurrent sampling streams, one batched network call per tick (see the module doc).

    Args:
        model: a :class:`pydiff.Model` (a Denoiser, a guidance wrapper, ...) that accepts
            per-sample times; conditioning given to :meth:`push` is concatenated on the batch
            axis.
        solver: a solver name or instance (shared: solvers are stateless).
        steps, spacing, t_start, t_end, final_zero: every stream's grid, as in
            :func:`pydiff.sample` (``push`` may give a stream its own ``grid``).
        max_streams: streams advanced together; further pushes wait in the input queue.
        **solver_options: the solver's constructor options when ``solver`` is a name.

    Attributes:
        ticks: ticks that advanced at least one stream.
        network_calls: batched model evaluations (one per solver stage per tick).
        unbatched_calls: evaluations made per stream (those with their own conditioning).
    """

    def __init__(self, model: Model, solver: str | Solver = "ddim", steps: int = 4, *,
                 max_streams: int = 8, spacing: str | None = None,
                 t_start: float | None = None, t_end: float | None = None,
                 final_zero: bool = True, **solver_options: Any) -> None:
        if not isinstance(model, Model):
            raise TypeError(f"StreamBatch: model must be a pydiff.Model (e.g. a Denoiser), got "
                            f"{type(model).__name__}")
        if model.schedule.mean_reverting:
            raise InputError("StreamBatch: mean-reverting schedules are not supported (their "
                             "state is shifted by a per-stream mean); use pydiff.sample")
        if isinstance(max_streams, bool) or not isinstance(max_streams, int) or max_streams < 1:
            raise InputError(f"StreamBatch: max_streams={max_streams!r}; expected an integer "
                             ">= 1")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InputError(f"StreamBatch: steps={steps!r}; expected an integer >= 1")
        self.model, self.solver = model, get_solver(solver, **solver_options)
        self.steps, self.max_streams = steps, max_streams
        self.spacing = spacing or model.schedule.default_spacing or self.solver.default_spacing
        self.t_start, self.t_end, self.final_zero = t_start, t_end, final_zero
        self._waiting: collections.deque[_Stream] = collections.deque()
        self._active: list[_Stream] = []
        self._done: dict[int, Tensor] = {}
        self._next_ticket = 0
        self._next_out = 0
        self.ticks = self.network_calls = self.unbatched_calls = 0
        # single-evaluation solvers tick on this thread; the first step that evaluates more
        # or elsewhere switches to coroutine ticks (threads: too dear for the common case)
        self._coroutines = False
        self._templates: dict[tuple, SolverState] = {}  # per x shape, dtype, device

    # -- the queue API ---------------------------------------------------------------------
    def push(self, x: Tensor, *, generator: Generators = None, hooks: Sequence[Hook] = (),
             grid: Tensor | None = None, **cond: Any) -> int:
        """Queue a stream starting at ``x`` (a sample at the grid's first time); returns its
        ticket (outputs come back from :meth:`pop` in ticket order).

        ``generator``: the stream's noise (stochastic solvers), as in :func:`pydiff.sample`;
        ``grid``: this stream's own float64 grid; ``cond``: this stream's conditioning
        (tensors with this stream's batch size, e.g. ``global_cond=obs``).
        """
        if not torch.is_tensor(x) or x.dim() < 1 or not x.is_floating_point():
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise InputError(f"StreamBatch.push: x must be a floating-point tensor [B, ...], "
                             f"got {got}")
        for key, value in cond.items():
            if torch.is_tensor(value) and (value.dim() == 0 or value.shape[0] != x.shape[0]):
                raise InputError(f"StreamBatch.push: {key} has shape {tuple(value.shape)}; "
                                 f"expected a batch axis of {x.shape[0]} (the stream's x)")
        # every stream on the default grid restarts one state's grid and coefficient tables:
        # building them (the grid, alpha, sigma, the solver's table) cost more per stream than
        # its solver steps
        like = (tuple(x.shape), x.dtype, x.device)
        template = self._templates.get(like) if grid is None else None
        if template is not None:
            state = template.restart(x, generator=generator, hooks=hooks)
        else:
            schedule = self.model.schedule
            default = grid is None
            if default:
                grid = timesteps(schedule, self.steps, self.spacing, t_start=self.t_start,
                                 t_end=self.t_end, final_zero=self.final_zero, device=x.device)
            _check_time_shape(grid[0] if grid.dim() else grid, x, "grid")
            state = self.solver.init(x, schedule, grid, generator=generator, hooks=hooks)
            if default and state.noise_source is None:
                self._templates[like] = state
        model = self.model.bind(**cond) if cond else self.model
        ticket = self._next_ticket
        self._next_ticket += 1
        self._waiting.append(_Stream(ticket, state, cond, model))
        return ticket

    def tick(self) -> int:
        """Admit queued streams into free slots and advance every active stream by one solver
        step with one batched model call; returns how many streams were advanced."""
        while self._waiting and len(self._active) < self.max_streams:
            self._active.append(self._waiting.popleft())
        active = self._active
        if not active:
            return 0
        self.ticks += 1
        if self._coroutines:
            results = self._tick_stages(active)
        else:
            results = self._tick_once(active)
        still = []
        for stream, state in zip(active, results):
            stream.state = state
            if state.done:
                self._done[stream.ticket] = state.x
            else:
                still.append(stream)
        self._active = still
        return len(active)

    def _tick_once(self, active: list[_Stream]) -> list[SolverState]:
        """One batched call at every stream's own ``(x, t)``, then each stream's step on this
        thread, answered from it (single-evaluation solvers). A step that asks for another
        evaluation gets it per stream, and later ticks run as coroutines
        (:meth:`_tick_stages`)."""
        states = [s.state for s in active]
        xs = [st.x for st in states]
        ts = [st.t for st in states]
        x_all = xs[0] if len(xs) == 1 else torch.cat(xs)
        prediction = self.model.evaluate(x_all, _stack_times(ts, xs),
                                         **_stack_cond([s.cond for s in active]))
        self.network_calls += 1
        return [self.solver.step(st, _Answered(stream.model, st.x, t, part, self))
                for stream, st, t, part in zip(active, states, ts,
                                               _split(prediction, x_all, xs))]

    def _tick_stages(self, active: list[_Stream]) -> list[SolverState]:
        """Every stream's step as a coroutine; each round of evaluations they ask for is one
        batched call."""
        runs = [_Coroutine(self.solver.step, s.state, s.model) for s in active]
        try:
            while asking := [(s, r) for s, r in zip(active, runs) if not r.done]:
                failed = next((r.error for r in runs if r.error is not None), None)
                if failed is not None:
                    raise failed
                xs = [r.request[0] for _, r in asking]
                x_all = xs[0] if len(xs) == 1 else torch.cat(xs)
                t_all = _stack_times([r.request[1] for _, r in asking], xs)
                cond = _stack_cond([s.cond for s, _ in asking])
                prediction = self.model.evaluate(x_all, t_all, **cond)
                self.network_calls += 1
                for (_, r), part in zip(asking, _split(prediction, x_all, xs)):
                    r.answer(part)
        finally:
            for r in runs:  # after an error: end the parked steps (they raise and exit)
                while not r.done:
                    r.answer(RuntimeError("StreamBatch: the tick was abandoned"))
        failed = next((r.error for r in runs if r.error is not None), None)
        if failed is not None:
            raise failed
        self.unbatched_calls += sum(r.unbatched for r in runs)
        return [r.result for r in runs]

    def pop(self) -> Tensor | None:
        """The next finished sample in push order, or None if it is not finished yet."""
        out = self._done.pop(self._next_out, None)
        if out is not None:
            self._next_out += 1
        return out

    def drain(self) -> list[Tensor]:
        """Tick until every pushed stream has finished; all unpopped outputs in push order."""
        while self._waiting or self._active:
            self.tick()
        outs = []
        while (out := self.pop()) is not None:
            outs.append(out)
        return outs

    @property
    def waiting(self) -> int:
        """Streams queued for a free slot."""
        return len(self._waiting)

    @property
    def active(self) -> int:
        """Streams being advanced."""
        return len(self._active)

    @property
    def ready(self) -> int:
        """Finished samples not yet popped."""
        return len(self._done)

    def __repr__(self) -> str:
        return (f"StreamBatch(solver={self.solver.name}, steps={self.steps}, "
                f"max_streams={self.max_streams}, waiting={self.waiting}, active={self.active}, "
                f"ready={self.ready})")


def _stack_times(ts: list[Tensor], xs: list[Tensor]) -> Tensor:
    """Each stream's time as per-sample (``[B_k]``) or per-position (``[B_k, ...]``) times,
    concatenated on the batch axis."""
    if all(t.dim() <= 1 for t in ts):
        parts = [t.expand(x.shape[0]) if t.dim() == 0 else t for t, x in zip(ts, xs)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)
    nd = xs[0].dim()
    full = [t.reshape(-1, *([1] * (nd - 1))) if t.dim() <= 1 else t for t in ts]
    trailing = torch.broadcast_shapes(*(t.shape[1:] for t in full))
    parts = [t.expand(x.shape[0], *trailing) for t, x in zip(full, xs)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _stack_cond(conds: list[dict[str, Any]]) -> dict[str, Any]:
    keys = set(conds[0])
    if any(set(c) != keys for c in conds):
        raise InputError("StreamBatch: every stream must be pushed with the same conditioning "
                         f"keys; got {sorted(keys)} and {[sorted(c) for c in conds]}")
    out = {}
    for key in keys:
        values = [c[key] for c in conds]
        if all(torch.is_tensor(v) for v in values):
            out[key] = values[0] if len(values) == 1 else torch.cat(values)
        elif all(v is values[0] for v in values):
            out[key] = values[0]
        else:
            raise InputError(f"StreamBatch: conditioning {key!r} is not a tensor and differs "
                             "between streams; bind it to the model instead")
    return out


def _split(prediction: Prediction, x_all: Tensor, xs: list[Tensor]) -> list[Prediction]:
    """The batched prediction as one prediction per stream (basis tensors and per-sample
    coefficients sliced on the batch axis; the stream's own state tensor put back in place of
    its slice, so the solver's fused step reads it once)."""
    if len(xs) == 1:
        return [prediction]
    sizes = [x.shape[0] for x in xs]
    total = sum(sizes)

    def pieces(v: Any) -> Sequence[Any]:
        if torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == total:
            return v.split(sizes)
        return [v] * len(sizes)

    basis = [list(xs) if b is x_all else pieces(b) for b in prediction.basis]
    x0 = [pieces(c) for c in prediction.x0_coefs]
    eps = [pieces(c) for c in prediction.eps_coefs]
    return [Prediction([b[k] for b in basis], [c[k] for c in x0], [c[k] for c in eps])
            for k in range(len(xs))]
