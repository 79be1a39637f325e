"""Derivative-free guidance: soft value-based decoding (SVDD, Li et al. 2024) as a solver wrapper.

At every step each sample's stochastic step is taken ``M`` times (``candidates``: M copies of
the sample, each with its own noise, in one batched call of the base solver); each candidate
``x_s`` is scored by a reward of its clean estimate, ``r(x0-hat(x_s, s))`` (SVDD-PM: the
reward needs no gradient, so it may be any black box: an RDKit property, a docking score, a
simulator), and one candidate per sample is kept: the best one (``temperature=0``, the
paper's practical choice) or a draw with probabilities ``softmax(r / temperature)``.

With ``temperature = alpha > 0`` and the exact soft value ``v_s(x) = alpha log E[exp(r(x0) /
alpha) | x_s]`` this is importance resampling of each reverse step towards
``p(x0) exp(r(x0) / alpha)``, exactly as ``M`` grows; ``r(x0-hat)`` is that value where the
reward is linear and the data Gaussian (the analytic test), and an approximation elsewhere.
The final step's candidates are scored on themselves (at ``t = 0`` they are the clean data).

It is a solver wrapper, not a model wrapper: it chooses among next states, which a model
(asked for predictions at given states) cannot. The base solver must be stochastic (the
candidates of a deterministic step coincide) and use Gaussian noise (a Brownian-tree source
would hand every candidate the same increment). Its state, history and auxiliary tensors
are gathered per candidate (tensors whose first dimension is the batch); hooks holding
per-sample tensors define ``take(index)`` (as :class:`pydiff.hooks.ZeroCenterOfMass` does), and
per-sample grids are not supported. Cost per step: the base step on ``B M`` samples plus one
model evaluation of the candidates' clean estimates, plus the reward on ``B M`` estimates.

Example:
    >>> import torch, pydiff
    >>> from pydiff.guidance import SVDD
    >>> sched = pydiff.schedules.VPSchedule()
    >>> model = pydiff.Denoiser(lambda x, t: torch.zeros_like(x), sched)
    >>> solver = SVDD("ddpm", reward=lambda x0: x0.sum(1), candidates=4)
    >>> g = torch.Generator().manual_seed(0)
    >>> x = pydiff.sample(model, torch.randn(3, 2, generator=g), solver, steps=5, generator=g)
    >>> x.shape
    torch.Size([3, 2])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import InputError
from ..model import Linear
from ..schedules import F64
from ..solvers.base import Solver, SolverState
from ..tree import State, batch_size

Tensor = torch.Tensor
Reward = Callable[[State], Tensor]


class SVDD(Solver):
    """Soft value-based decoding around a stochastic solver (see the module docstring).

    Args:
        solver: the base solver (a name or an instance; stochastic, Gaussian noise).
        reward: ``reward(x0_hat) -> [K]`` for a batch of ``K`` clean estimates (the state's
            structure: a tensor or a dict); higher is better. Evaluated without gradients.
        candidates: ``M``, candidate next states per sample and step (1 = the base solver).
        temperature: 0 keeps the best candidate; ``alpha > 0`` draws one with probabilities
            ``softmax(r / alpha)`` (targets ``p(x0) exp(r(x0) / alpha)``).
        estimate: ``estimate(model, x, t) -> x0_hat`` of a batch of states at time ``t``;
            default ``model.denoised`` where the model has it (joint models: x0-hat and the
            most likely classes), else ``model.x0``.
        **options: the base solver's options when ``solver`` is a name.
    """

    name = "svdd"
    stochastic = True

    def __init__(self, solver: str | Solver = "ddpm", reward: Reward | None = None,
                 candidates: int = 8, temperature: float = 0.0,
                 estimate: Callable[[Any, State, Tensor], State] | None = None, **options: Any):
        from ..solvers import get_solver  # the registry imports the solvers

        if reward is None or not callable(reward):
            raise InputError(f"reward must be a callable reward(x0_hat) -> [K], got {reward!r}")
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise InputError(f"candidates must be an integer >= 1, got {candidates!r}")
        if not temperature >= 0:
            raise InputError(f"temperature must be >= 0, got {temperature!r}")
        self.base = get_solver(solver, **options)
        if not self.base.stochastic or self.base.brownian:
            raise InputError(f"SVDD needs a stochastic solver with Gaussian noise (its candidates "
                             f"must differ), got {self.base.name!r} ({self.base!r}); e.g. 'ddpm', "
                             "'euler_ancestral'")
        self.reward, self.candidates, self.temperature = reward, candidates, float(temperature)
        self.estimate = estimate
        self.order = self.base.order
        self.default_spacing = self.base.default_spacing
        self._freeze()

    def init(self, x, schedule, grid, *, generator=None, hooks=()):
        if grid.dim() > 1:
            raise InputError("SVDD runs on one grid for the whole batch; per-sample or "
                             f"per-position grids (shape {tuple(grid.shape)}) are not supported")
        return self.base.init(x, schedule, grid, generator=generator, hooks=hooks)

    def step(self, state: SolverState, model: Any) -> SolverState:
        b, m = batch_size(state.x), self.candidates
        ref = _first_tensor(state.x)
        copies = torch.arange(b, device=ref.device).repeat_interleave(m)
        gens = state.generator
        rep_gens = gens if gens is None or isinstance(gens, torch.Generator) else \
            [list(gens)[i] for i in copies.tolist()]
        moved = self.base.step(_take(state, copies, b, rep_gens), model)
        with torch.no_grad():
            if moved.done:
                x0 = moved.x  # at t = 0 a candidate is its own clean estimate
            else:
                x0 = self._estimate(model, moved.x, moved.t)
            r = torch.as_tensor(self.reward(x0), device=ref.device).to(F64).reshape(-1)
        if r.shape[0] != b * m:
            raise ValueError(f"the reward returned {r.shape[0]} values for {b * m} candidates")
        r = torch.nan_to_num(r.reshape(b, m), nan=-torch.inf)
        if self.temperature == 0 or m == 1:
            pick = r.argmax(1)
        else:
            from ..categorical import sample_categorical

            probs = torch.softmax(r / self.temperature, dim=1)
            pick = sample_categorical(torch.nan_to_num(probs, nan=1.0 / m), gens)
        chosen = torch.arange(b, device=ref.device) * m + pick
        out = _take(moved, chosen, b * m, gens)
        extra = 0 if moved.done else 1
        return out.replace(hooks=state.hooks, nfe=state.nfe + (moved.nfe - state.nfe) + extra)

    def _estimate(self, model: Any, x: State, t: Tensor) -> State:
        if self.estimate is not None:
            return self.estimate(model, x, t)
        denoised = getattr(model, "denoised", None)
        return denoised(x, t) if denoised is not None else model.x0(x, t)

    def __repr__(self) -> str:
        return (f"SVDD({self.base!r}, candidates={self.candidates}, "
                f"temperature={self.temperature})")


def _first_tensor(x: State) -> Tensor:
    return x if torch.is_tensor(x) else next(iter(x.values()))


def _take(obj: Any, index: Tensor, batch: int, generator: Any = None) -> Any:
    """Rows ``index`` of every per-sample tensor (first dimension ``batch``) of a state."""
    if isinstance(obj, SolverState):
        return obj.replace(x=_take(obj.x, index, batch), history=_take(obj.history, index, batch),
                           aux=_take(obj.aux, index, batch, generator),
                           generator=generator,
                           hooks=tuple(h.take(index) if hasattr(h, "take") else h
                                       for h in obj.hooks))
    if torch.is_tensor(obj):
        return obj[index] if obj.dim() >= 1 and obj.shape[0] == batch else obj
    if isinstance(obj, Linear):
        return _take(obj.value(), index, batch)
    if isinstance(obj, dict):
        return {k: _take(v, index, batch, generator) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_take(v, index, batch, generator) for v in obj)
    return obj


__all__ = ["SVDD"]
