"""The model protocol: what a solver asks of a model, and what the model answers.

Everything a solver samples from (a :class:`pydiff.Denoiser`, a guidance wrapper, a model of
your own) is a :class:`Model`: it has a ``schedule``, bound conditioning (``cond``, ``bind``)
and one method, ``evaluate(x, t, **cond) -> Prediction``. Everything else (``x0``, ``eps``,
``predict``, ``score``, ``v``, ``velocity``, calling the model) is derived from it here, once.

A :class:`Prediction` holds the clean-data and noise predictions at ``(x, t)`` as linear maps
of a few tensors, its ``basis``: ``x0 = sum_k x0_coefs[k] basis[k]`` and likewise for eps.
For a Denoiser the basis is ``(x, network output)`` and the maps are its parameterization
(eps, v, score, ... -> x0 is linear in the state and the output), so a solver can fold the map
into its own fused step (:func:`pydiff.solvers.combine`) instead of materializing x0 first.
``Prediction.x0()`` / ``.eps()`` materialize them when a caller needs tensors.

Both predictions satisfy ``x = alpha x0 + sigma eps``; :meth:`Prediction.with_x0` and
:meth:`Prediction.with_eps` replace one of them and recompute the other from that identity
(the one x0 <-> eps conversion; guidance wrappers use it).

Example (a model of your own: the exact denoiser of Gaussian data with std ``c``):
    >>> import torch, pydiff
    >>> class GaussianData(pydiff.Model):
    ...     def __init__(self, schedule, c=0.5):
    ...         super().__init__(schedule)
    ...         self.c = c
    ...     def evaluate(self, x, t, **cond):
    ...         t = pydiff.schedules.as_time(t, x.device)
    ...         a, s = self.schedule.alpha(t), self.schedule.sigma(t)
    ...         gain = a * self.c**2 / (a**2 * self.c**2 + s**2)  # E[x0 | x] = gain x
    ...         return pydiff.Prediction.from_x0(x, pydiff.Prediction.linear((x,), (gain,)),
    ...                                          a, s)
    >>> model = GaussianData(pydiff.schedules.VPSchedule())
    >>> x = pydiff.sample(model, torch.randn(4, 3), "dpmpp_2m", steps=10)
    >>> x.shape
    torch.Size([4, 3])
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from . import ops
from .errors import InputError
from .schedules import Schedule, as_time
from .tree import State, leaves, per_sample, tree_map

Tensor = torch.Tensor
Coef = Any  # None (no term), a Python number, or a float64 tensor: scalar, [B] or per position


class Linear:
    """A solver term not yet in memory: ``sum_k coefs[k] * basis[k]`` (``None``: no term).

    :func:`pydiff.solvers.combine` folds it into the fused step; :meth:`value` materializes it.
    """

    __slots__ = ("basis", "coefs")

    def __init__(self, basis: Sequence[State], coefs: Sequence[Coef]):
        if len(basis) != len(coefs):
            raise ValueError(f"Linear: {len(basis)} basis tensors but {len(coefs)} coefficients")
        self.basis, self.coefs = tuple(basis), tuple(coefs)

    @classmethod
    def _trusted(cls, basis: tuple, coefs: tuple) -> Linear:
        # a solver step's hot path: tuples of matching lengths (a Prediction's), unchecked
        lin = object.__new__(cls)
        lin.basis, lin.coefs = basis, coefs
        return lin

    def value(self) -> State:
        """The combination as a tensor (or dict) of the dtype of ``basis[0]``."""
        return _materialize(self.basis, self.coefs)

    def __repr__(self) -> str:
        return f"Linear({len(self.basis)} terms)"


def _materialize(basis: tuple[State, ...], coefs: tuple[Coef, ...]) -> State:
    used = [k for k, c in enumerate(coefs) if c is not None]
    if isinstance(basis[0], dict):
        return {key: _materialize(tuple(b[key] for b in basis), coefs) for key in basis[0]}
    x = basis[0]
    if len(used) == 1 and isinstance(coefs[used[0]], float) and coefs[used[0]] == 1.0:
        return basis[used[0]].to(x.dtype)  # the identity: no pass over memory
    if not used:
        return torch.zeros_like(x)
    if coefs[0] is not None:
        return ops.lincomb([basis[k] for k in used], [coefs[k] for k in used])
    # basis[0] fixes the result dtype (the state's) without being read
    return ops.lincomb_multi(basis, [list(coefs)])[0]


class Prediction:
    """x0 and eps at one ``(x, t)``, as linear maps of ``basis`` (see the module docstring).

    Args:
        basis: tensors (or dict states) of the state's shape; ``basis[0]`` sets the dtype of
            materialized predictions (the state's dtype, also when the network ran in half).
        x0: one coefficient per basis tensor (None, a number or a float64 tensor).
        eps: likewise.

    Example:
        >>> import torch
        >>> x, out = torch.ones(2, 3), torch.full((2, 3), 0.5)  # an eps network's output
        >>> p = Prediction((x, out), x0=(2.0, -1.0), eps=(None, 1.0))
        >>> p.x0()[0, 0].item(), p.eps()[0, 0].item()
        (1.5, 0.5)
    """

    __slots__ = ("basis", "x0_coefs", "eps_coefs")

    def __init__(self, basis: Sequence[State], x0: Sequence[Coef], eps: Sequence[Coef]):
        if not (len(basis) == len(x0) == len(eps)):
            raise ValueError(f"Prediction: {len(basis)} basis tensors but {len(x0)} x0 and "
                             f"{len(eps)} eps coefficients")
        self.basis, self.x0_coefs, self.eps_coefs = tuple(basis), tuple(x0), tuple(eps)

    @classmethod
    def _trusted(cls, basis: tuple, x0: tuple, eps: tuple) -> Prediction:
        # a solver step's hot path (Denoiser.evaluate): tuples of matching lengths, unchecked
        p = object.__new__(cls)
        p.basis, p.x0_coefs, p.eps_coefs = basis, x0, eps
        return p

    # -- construction ------------------------------------------------------------------------
    @staticmethod
    def linear(basis: Sequence[State], coefs: Sequence[Coef]) -> Linear:
        """A lazy linear term (for :meth:`from_x0` / :meth:`from_eps` of linear models)."""
        return Linear(basis, coefs)

    @classmethod
    def of(cls, x0: State, eps: State) -> Prediction:
        """Both predictions given as tensors (or dicts)."""
        return cls((x0, eps), (1.0, None), (None, 1.0))

    @classmethod
    def from_x0(cls, x: State, x0: State | Linear, alpha: Tensor, sigma: Tensor) -> Prediction:
        """x0 given (a tensor or a :class:`Linear`); ``eps = (x - alpha x0) / sigma``."""
        basis, coefs = _as_linear(x0)
        c_x, c_x0 = eps_from_x0_coefs(alpha, sigma)
        return cls((x, *basis), (None, *coefs), (c_x, *_scaled(coefs, c_x0)))

    @classmethod
    def from_eps(cls, x: State, eps: State | Linear, alpha: Tensor, sigma: Tensor) -> Prediction:
        """eps given (a tensor or a :class:`Linear`); ``x0 = (x - sigma eps) / alpha``."""
        basis, coefs = _as_linear(eps)
        c_x, c_eps = x0_from_eps_coefs(alpha, sigma)
        return cls((x, *basis), (c_x, *_scaled(coefs, c_eps)), (None, *coefs))

    # -- what solvers use --------------------------------------------------------------------
    @property
    def x0_term(self) -> State | Linear:
        """x0 as a solver term: the tensor itself when it is one, else a :class:`Linear`."""
        return _term(self.basis, self.x0_coefs)

    @property
    def eps_term(self) -> State | Linear:
        """eps as a solver term (see :attr:`x0_term`)."""
        return _term(self.basis, self.eps_coefs)

    def x0(self) -> State:
        """The clean-data prediction, materialized."""
        return _materialize(self.basis, self.x0_coefs)

    def eps(self) -> State:
        """The noise prediction, materialized."""
        return _materialize(self.basis, self.eps_coefs)

    def predictions(self) -> tuple[State, State]:
        """``(x0, eps)``, materialized."""
        return self.x0(), self.eps()

    # -- the one x0 <-> eps conversion -------------------------------------------------------
    def with_x0(self, x: State, x0: State, alpha: Tensor, sigma: Tensor) -> Prediction:
        """x0 replaced; eps recomputed from ``x = alpha x0 + sigma eps``, kept where
        ``sigma = 0`` (clean data: eps carries no information there)."""
        return self._replaced(x, x0, self.eps(), *eps_from_x0_coefs(alpha, sigma, safe=True),
                              x0_given=True)

    def with_eps(self, x: State, eps: State, alpha: Tensor, sigma: Tensor) -> Prediction:
        """eps replaced; x0 recomputed, kept where ``alpha = 0`` (pure noise)."""
        return self._replaced(x, eps, self.x0(), *x0_from_eps_coefs(alpha, sigma, safe=True),
                              x0_given=False)

    @staticmethod
    def _replaced(x: State, new: State, old: State, c_x: Tensor, c_new: Tensor, c_old: Tensor,
                  x0_given: bool) -> Prediction:
        other = tree_map(lambda xv, n, o: ops.lincomb([xv, n, o], [c_x, c_new, c_old]),
                         x, new, old)
        return Prediction.of(new, other) if x0_given else Prediction.of(other, new)


def _as_linear(v: State | Linear) -> tuple[tuple[State, ...], tuple[Coef, ...]]:
    return (v.basis, v.coefs) if isinstance(v, Linear) else ((v,), (1.0,))


def _scaled(coefs: tuple[Coef, ...], factor: Tensor) -> tuple[Coef, ...]:
    return tuple(None if c is None else c * factor for c in coefs)


def _term(basis: tuple[State, ...], coefs: tuple[Coef, ...]) -> State | Linear:
    used = -1
    for k, c in enumerate(coefs):
        if c is not None:
            if used >= 0:  # two or more tensors: a map (a solver step's hot path)
                return Linear._trusted(basis, coefs)
            used = k
    if used >= 0 and type(coefs[used]) is float and coefs[used] == 1.0:
        v = basis[used]
        ref = basis[0]
        same = (v.dtype == ref.dtype if torch.is_tensor(v)
                else all(v[k].dtype == ref[k].dtype for k in v))
        if same:
            return v  # a ready tensor: the solver's plain lincomb, nothing to fold
    return Linear(basis, coefs)


def eps_from_x0_coefs(alpha: Tensor, sigma: Tensor, safe: bool = False):
    """Coefficients of ``eps = (x - alpha x0) / sigma`` on ``(x, x0)``.

    With ``safe=True`` also a third coefficient, on the previous eps, which is kept where
    ``sigma = 0`` (there the formula divides by zero).
    """
    if not safe:
        return 1 / sigma, -alpha / sigma
    pos = sigma > 0
    inv = 1 / torch.where(pos, sigma, torch.ones_like(sigma))
    zero = torch.zeros_like(sigma)
    return (torch.where(pos, inv, zero), torch.where(pos, -alpha * inv, zero),
            torch.where(pos, zero, torch.ones_like(sigma)))


def x0_from_eps_coefs(alpha: Tensor, sigma: Tensor, safe: bool = False):
    """Coefficients of ``x0 = (x - sigma eps) / alpha`` on ``(x, eps)`` (``safe``: see
    :func:`eps_from_x0_coefs`, with the previous x0 kept where ``alpha = 0``)."""
    if not safe:
        return 1 / alpha, -sigma / alpha
    return eps_from_x0_coefs(sigma, alpha, safe=True)


class Model:
    """Base of everything a solver samples from (see the module docstring).

    Subclasses set ``schedule`` (``super().__init__(schedule)``) and define
    :meth:`evaluate`. ``cond`` is the bound conditioning that reaches every call.
    """

    schedule: Schedule
    mean_key: str = "y"  # the conditioning key of a mean-reverting process's mean

    def __init__(self, schedule: Schedule, cond: dict[str, Any] | None = None):
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a pydiff Schedule, got {type(schedule).__name__}")
        self.schedule = schedule
        self.cond: dict[str, Any] = dict(cond or {})

    def evaluate(self, x: State, t: float | Tensor, **cond: Any) -> Prediction:
        """x0 and eps at state ``x`` and time ``t`` (one model evaluation)."""
        raise NotImplementedError(f"{type(self).__name__} must define evaluate(x, t, **cond)")

    def bind(self, **cond: Any) -> Model:
        """A copy with conditioning fixed (solvers call the model without extra arguments)."""
        new = copy.copy(self)
        new.cond = {**self.cond, **cond}
        return new

    @property
    def shift(self) -> Tensor | None:
        """The mean ``y`` of a mean-reverting process (state = x - y), else None."""
        if not self.schedule.mean_reverting:
            return None
        cond = self.cond
        if self.mean_key not in cond:
            raise InputError(f"a mean-reverting schedule needs its mean: call with "
                             f"{self.mean_key}=... or bind({self.mean_key}=...)")
        return cond[self.mean_key]

    # -- derived answers ---------------------------------------------------------------------
    def predict(self, x: State, t: float | Tensor, **cond: Any) -> tuple[State, State]:
        """``(x0, eps)`` as tensors (one model evaluation)."""
        return self.evaluate(x, t, **cond).predictions()

    def x0(self, x: State, t: float | Tensor, **cond: Any) -> State:
        """Predicted clean data (in the shifted coordinate for mean-reverting schedules)."""
        return self.evaluate(x, t, **cond).x0()

    def eps(self, x: State, t: float | Tensor, **cond: Any) -> State:
        """Predicted noise."""
        return self.evaluate(x, t, **cond).eps()

    def score(self, x: State, t: float | Tensor, **cond: Any) -> State:
        """Predicted score ``-eps / sigma``."""
        eps = self.eps(x, t, **cond)
        sigma = self.schedule.sigma(as_time(t, leaves(x)[0].device))
        return tree_map(lambda e: -e / per_sample(sigma, e).to(e.dtype), eps)

    def v(self, x: State, t: float | Tensor, **cond: Any) -> State:
        """Predicted ``v = alpha eps - sigma x0``."""
        x0, eps = self.predict(x, t, **cond)
        tt = as_time(t, leaves(x)[0].device)
        a, s = self.schedule.alpha(tt), self.schedule.sigma(tt)
        return tree_map(lambda u, e: per_sample(a, e).to(e.dtype) * e
                        - per_sample(s, u).to(u.dtype) * u, x0, eps)

    def velocity(self, x: State, t: float | Tensor, **cond: Any) -> State:
        """Predicted probability-flow velocity ``alpha' x0 + sigma' eps`` of the marginals."""
        x0, eps = self.predict(x, t, **cond)
        da, ds = self.schedule.derivatives(as_time(t, leaves(x)[0].device))
        return tree_map(lambda u, e: per_sample(da, u).to(u.dtype) * u
                        + per_sample(ds, e).to(e.dtype) * e, x0, eps)

    def __call__(self, x: State, t: float | Tensor, **cond: Any) -> State:
        """Same as :meth:`x0`."""
        return self.x0(x, t, **cond)


__all__ = ["Model", "Prediction", "Linear", "eps_from_x0_coefs", "x0_from_eps_coefs"]
