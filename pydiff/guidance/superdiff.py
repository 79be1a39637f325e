"""Model superposition (SuperDiff, Skreta et al. 2024): AND / OR of pretrained models' densities.

Several models of the same data space and schedule, each with its marginals ``q^k_t``, are
combined at sampling time by weighting their scores per sample and step,
``score = sum_k kappa_k score_k``, with weights computed from each model's log density along
the trajectory. The log densities come from the Itô density estimator, which needs neither the
divergence of the network nor any extra evaluation: for the forward SDE
``dx = f(x, t) dt + g(t) dW`` with ``f = (d log alpha / dt) x`` and ``g^2 = d sigma^2 / dt -
2 (d log alpha / dt) sigma^2``, and any reverse-time process ``x_t`` (Itô, time running
backwards), the Fokker-Planck equation and Itô's lemma give

    d log q_t(x_t) = <dx_t, score(x_t)> + [div f + <f(x_t), score> - g^2 / 2 |score|^2] dt

(the Laplacians of the two terms cancel). Over one solver step from ``t`` to ``s < t`` with
the scores at the step's start this is, per model ``k``,

    log q^k_s(x_s) - log q^k_t(x_t) ~ <x_s - x_t, s_k> + A <x_t, s_k> - G / 2 |s_k|^2 + D A

with ``A = log(alpha_t / alpha_s)`` (the integral of d log alpha / dt) and ``G = sigma_t^2 -
(alpha_t / alpha_s)^2 sigma_s^2`` (the integral of g^2, the forward transition's variance).
``D A`` (the divergence of the drift, D the state's dimension) is the same for every model and
cancels in the weights below, so the tracked log densities leave it out, and all models start
at 0 (they share the prior at ``t_max``).

- OR (``mode="or"``): ``kappa = softmax(temperature * log q + bias)``. With temperature 1 the
  combined score is exactly the score of the mixture ``sum_k exp(bias_k) q^k`` (normalized), so
  samples follow the mixture of the models' distributions.
- AND (``mode="and"``, two models): ``kappa_1 = kappa``, ``kappa_2 = 1 - kappa`` solved at
  every step so that both log densities change alike, ``log q^1 = log q^2`` after the step (any
  gap left is closed at the next one). The step's new state is affine in ``kappa`` at fixed
  noise (true of every solver that evaluates the model once per step: ``ddpm``, ``ddim``,
  ``dpmpp_2m``, ``euler_maruyama``, ...), so the step is taken with model 1 alone and model 2
  alone on the same noise, ``kappa`` solves the (linear) equation and the step is taken with it:
  no extra network evaluation. This samples where the models' densities are equal, weighted by
  their geometric mean: not the normalized product of the densities (for two Gaussians
  ``N(+-m e_1, c^2 I)`` AND gives ``x_1 = 0`` exactly and ``x_2 ~ N(0, c^2)``, the product
  ``N(0, c^2 / 2)`` in both), which no combination of the models' scores at ``t > 0`` samples.

Joint models (continuous and categorical entries, :class:`pydiff.categorical.JointModel`): the
weights come from the continuous entries' densities alone (the estimator is for the SDE); the
class probabilities ``p(x_0 | x_t)`` of the models are combined with the same weights, as a
mixture for OR and as a normalized geometric pool ``p_1^k p_2^(1-k)`` (``k`` clipped to
``[0, 1]``) for AND.

Usage: the models in a :class:`Superposition` (the model :func:`pydiff.sample` gets) and the
:class:`SuperDiff` solver wrapper (which keeps the log densities in the solver state and sets
the weights step by step)::

    x = pydiff.sample(Superposition(model_a, model_b), x_T, SuperDiff("ddpm", "and"), steps=50,
                      generator=g)

Example:
    >>> import torch, pydiff
    >>> from pydiff.guidance import SuperDiff, Superposition
    >>> sched = pydiff.VPSchedule()
    >>> a = pydiff.Denoiser(lambda x, t: torch.zeros_like(x), sched)   # N(0, I) data (eps)
    >>> b = pydiff.Denoiser(lambda x, t: 0.5 * x, sched)
    >>> g = torch.Generator().manual_seed(0)
    >>> x = pydiff.sample(Superposition(a, b), torch.randn(4, 2, generator=g),
    ...                   SuperDiff("ddpm", "or"), steps=10, generator=g)
    >>> x.shape
    torch.Size([4, 2])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..categorical import JointModel
from ..errors import InputError
from ..model import Model, Prediction
from ..schedules import F64, as_time
from ..solvers.base import Solver, SolverState
from ..tree import State, per_sample
from .base import per_sample_sum

Tensor = torch.Tensor
MODES = ("and", "or")


class Superposition(JointModel):
    """Several models of one data space and schedule, to be combined by :class:`SuperDiff`.

    Args:
        *models: two or more :class:`pydiff.Model` s (all :class:`pydiff.categorical.JointModel`
            with the same categorical entries, or none), sharing the schedule.

    Evaluated on its own (outside :class:`SuperDiff`) it is the models' equal-weight average.
    """

    def __init__(self, *models: Model):
        if len(models) < 2 or not all(isinstance(m, Model) for m in models):
            raise InputError(f"Superposition needs two or more pydiff.Model s, got "
                             f"{[type(m).__name__ for m in models]}")
        joint = [isinstance(m, JointModel) for m in models]
        if any(joint) and not all(joint):
            raise InputError("Superposition: either all models are joint models (continuous and "
                             "categorical entries) or none is")
        super().__init__(models[0].schedule)
        probe = torch.linspace(0.05, 0.95, 7, dtype=F64)
        for m in models[1:]:
            same = all(torch.allclose(f(m.schedule)(probe), f(self.schedule)(probe), atol=1e-9)
                       for f in (lambda s: s.alpha, lambda s: s.sigma))
            if not same:
                raise InputError("Superposition: the models' schedules differ (alpha/sigma); "
                                 "superposed models must share the forward process")
        self.models, self.is_joint = tuple(models), all(joint)
        self.processes = dict(models[0].processes) if self.is_joint else {}
        self.fixed = models[0].fixed if self.is_joint else ()
        if self.is_joint and any(set(m.processes) != set(self.processes) for m in models):
            raise InputError("Superposition: the joint models have different categorical entries")

    def predictions(self, x: State, t: float | Tensor, **cond: Any
                    ) -> list[tuple[Prediction, dict[str, Tensor]]]:
        """Each model's ``(prediction, class probabilities)`` at ``(x, t)`` (one evaluation
        each; the probabilities are empty for plain models)."""
        cond = {**self.cond, **cond}
        if self.is_joint:
            return [m.evaluate_joint(x, t, **cond) for m in self.models]
        return [(m.evaluate(x, t, **cond), {}) for m in self.models]

    def evaluate_joint(self, x, t, **cond):
        preds = self.predictions(x, t, **cond)
        k = len(self.models)
        ref = _continuous(x)[0]
        weights = torch.full((ref.shape[0], k), 1.0 / k, dtype=F64, device=ref.device)
        return combine(preds, weights, "mixture")

    def __repr__(self) -> str:
        return f"Superposition({', '.join(repr(m) for m in self.models)})"


def combine(preds: Sequence[tuple[Prediction, dict[str, Tensor]]], weights: Tensor,
            pool: str = "mixture") -> tuple[Prediction, dict[str, Tensor]]:
    """The predictions weighted per sample (``weights [B, K]``, float64): x0 and eps (so the
    score) as ``sum_k w_k (.)_k``; class probabilities as a mixture (``pool="mixture"``) or as
    a normalized geometric pool with the weights clipped to ``[0, 1]`` (``"geometric"``)."""
    x0s = [p.x0() for p, _ in preds]
    epss = [p.eps() for p, _ in preds]

    def weighted(values: list[State]) -> State:
        def leaf(*vs: Tensor) -> Tensor:
            out = sum(per_sample(weights[:, k], v) * v.to(F64) for k, v in enumerate(vs))
            return out.to(vs[0].dtype)
        if isinstance(values[0], dict):
            return {key: leaf(*(v[key] for v in values)) for key in values[0]}
        return leaf(*values)

    probs: dict[str, Tensor] = {}
    for key in preds[0][1]:
        ps = [p[key].to(F64) for _, p in preds]
        if pool == "mixture":
            out = sum(per_sample(weights[:, k], p) * p for k, p in enumerate(ps))
        else:
            w = weights.clamp(0.0, 1.0)
            w = w / w.sum(1, keepdim=True).clamp_min(torch.finfo(F64).tiny)
            logp = sum(per_sample(w[:, k], p) * p.clamp_min(torch.finfo(F64).tiny).log()
                       for k, p in enumerate(ps))
            out = torch.softmax(logp, dim=-1)
        probs[key] = out / out.sum(-1, keepdim=True)
    return Prediction.of(weighted(x0s), weighted(epss)), probs


class _Weighted(JointModel):
    """The superposition with this step's weights: what the base solver evaluates. At the
    step's start (same tensors, same time) it reuses the predictions SuperDiff already made."""

    def __init__(self, sup: Superposition, x: State, t: Tensor,
                 preds: list[tuple[Prediction, dict[str, Tensor]]], weights: Tensor, pool: str):
        super().__init__(sup.schedule)
        self.sup, self.x, self.t, self.preds = sup, x, t, preds
        self.weights, self.pool = weights, pool
        self.processes, self.fixed = sup.processes, sup.fixed
        self.extra = 0  # evaluations away from the step's start (multi-stage solvers)

    def evaluate_joint(self, x, t, **cond):
        tt = as_time(t, _continuous(x)[0].device)
        if _same(x, self.x) and tt.shape == self.t.shape and torch.equal(tt, self.t):
            preds = self.preds
        else:
            preds = self.sup.predictions(x, tt, **cond)
            self.extra += 1
        return combine(preds, self.weights, self.pool)


def _continuous(x: State) -> list[Tensor]:
    if torch.is_tensor(x):
        return [x]
    return [v for v in x.values() if v.is_floating_point()]


def _continuous_dict(x: State) -> State:
    return x if torch.is_tensor(x) else {k: v for k, v in x.items() if v.is_floating_point()}


def _same(a: State, b: State) -> bool:
    ca, cb = _continuous_dict(a), _continuous_dict(b)
    if torch.is_tensor(ca) or torch.is_tensor(cb):
        return ca is cb
    return ca.keys() == cb.keys() and all(ca[k] is cb[k] for k in ca)


def _dot(a: dict[str, Tensor], b: dict[str, Tensor]) -> Tensor:
    """Per-sample inner product over the entries of ``a`` (float64 ``[B]``)."""
    return sum(per_sample_sum(a[k].to(F64) * b[k].to(F64)) for k in a)


def _diff(a: State, b: State) -> State:
    ca, cb = _continuous_dict(a), _continuous_dict(b)
    if torch.is_tensor(ca):
        return ca.to(F64) - cb.to(F64)
    return {k: ca[k].to(F64) - cb[k].to(F64) for k in ca}


def _fork(generator: Any) -> Any:
    """A copy of a generator (or of each of a list) at the same state: the trial steps of AND
    draw the same noise as the real one without consuming it."""
    def one(g: torch.Generator) -> torch.Generator:
        copy = torch.Generator(device=g.device)
        copy.set_state(g.get_state())
        return copy
    if generator is None or isinstance(generator, torch.Generator):
        return None if generator is None else one(generator)
    return [one(g) for g in generator]


def _with_generator(state: SolverState, generator: Any) -> SolverState:
    aux = tuple(_with_generator(a, generator) if isinstance(a, SolverState) else a
                for a in state.aux)
    return state.replace(generator=generator, aux=aux)


class SuperDiff(Solver):
    """Superposition of the models of a :class:`Superposition` around a base solver (see the
    module docstring).

    Args:
        solver: the base solver (a name or an instance; one model evaluation per step for
            AND, e.g. ``"ddpm"``, ``"ddim"``, ``"dpmpp_2m"``; a
            :class:`pydiff.categorical.JointSolver` for joint states). Stochastic solvers draw
            their noise from Gaussian draws (not a Brownian tree).
        mode: ``"or"`` (mixture) or ``"and"`` (equal densities; two models).
        temperature: OR's ``T`` in ``softmax(T log q + bias)`` (1: the exact mixture).
        bias: OR's log mixture weights ``[K]`` (default equal weights).
        kappa_range: AND only: clip ``kappa`` to ``(low, high)``. The exact AND weight cancels
            the step's noise along the models' score difference, so with a few dozen steps it
            swings far outside ``[0, 1]`` (the combination then extrapolates the models'
            predictions); clipped, the densities are not kept equal within a step, and the
            gap left is closed by the next steps' weights as far as the range allows. None
            (default): the exact weight.
        **options: the base solver's options when ``solver`` is a name.

    The final state's ``aux[1]`` holds the tracked log densities ``[B, K]`` (without the
    common divergence term) and ``aux[2]`` the last step's weights ``[B, K]``
    (``pydiff.sample(..., return_state=True)``).
    """

    name = "superdiff"

    def __init__(self, solver: str | Solver = "ddpm", mode: str = "or", temperature: float = 1.0,
                 bias: Sequence[float] | Tensor | None = None,
                 kappa_range: tuple[float, float] | None = None, **options: Any):
        from ..solvers import get_solver  # the registry imports the solvers

        if mode not in MODES:
            raise InputError(f"mode={mode!r} is not known; expected one of {MODES}")
        if not temperature >= 0:
            raise InputError(f"temperature must be >= 0, got {temperature!r}")
        self.base = get_solver(solver, **options)
        if self.base.brownian:
            raise InputError(f"SuperDiff needs Gaussian step noise, not a Brownian tree "
                             f"({self.base!r})")
        if kappa_range is not None and not (len(kappa_range) == 2
                                            and kappa_range[0] <= kappa_range[1]):
            raise InputError(f"kappa_range must be (low, high) with low <= high, got "
                             f"{kappa_range!r}")
        self.mode, self.temperature = mode, float(temperature)
        self.kappa_range = None if kappa_range is None else tuple(map(float, kappa_range))
        self.bias = None if bias is None else torch.as_tensor(bias, dtype=F64)
        self.stochastic, self.order = self.base.stochastic, self.base.order
        self.default_spacing = self.base.default_spacing
        self._freeze()

    def init(self, x, schedule, grid, *, generator=None, hooks=()):
        if grid.dim() > 1:
            raise InputError("SuperDiff runs on one grid for the whole batch; per-sample or "
                             f"per-position grids (shape {tuple(grid.shape)}) are not supported")
        inner = self.base.init(x, schedule, grid, generator=generator, hooks=hooks)
        return SolverState(x=inner.x, i=0, grid=inner.grid, alpha=inner.alpha,
                           sigma=inner.sigma, table={}, generator=generator,
                           aux=(inner, None, None), times=inner.times)

    def step(self, state: SolverState, model: Any) -> SolverState:
        if not isinstance(model, Superposition):
            raise TypeError(f"SuperDiff samples a pydiff.guidance.Superposition of models, got "
                            f"{type(model).__name__}")
        k = len(model.models)
        if self.mode == "and" and k != 2:
            raise InputError(f"SuperDiff AND combines two models, got {k}")
        inner, logq, _ = state.aux
        i, x = state.i, inner.x
        t = inner.t
        ref = _continuous(x)[0]
        b = ref.shape[0]
        if logq is None:
            logq = torch.zeros(b, k, dtype=F64, device=ref.device)
        preds = model.predictions(x, t)
        a_t, s_t = state.alpha[i], state.sigma[i]
        a_s, s_s = state.alpha[i + 1], state.sigma[i + 1]
        scores = [{key: -v.to(F64) / s_t for key, v in _as_dict(p.eps()).items()}
                  for p, _ in preds]
        drift = torch.log(a_t / a_s)  # A: the integral of d log alpha / dt over the step
        var = s_t ** 2 - (a_t / a_s) ** 2 * s_s ** 2  # G: the integral of g^2
        xd = _as_dict(_continuous_dict(x))
        fixed = torch.stack([drift * _dot(xd, sc) - var / 2 * _dot(sc, sc) for sc in scores], 1)
        if self.mode == "or":
            bias = 0.0 if self.bias is None else self.bias.to(ref.device)
            weights = torch.softmax(self.temperature * logq + bias, dim=1)
            pool = "mixture"
        else:
            weights = self._and_weights(inner, model, x, t, preds, scores, logq, fixed)
            pool = "geometric"
        view = _Weighted(model, x, t, preds, weights, pool)
        moved = self.base.step(inner, view)
        dx = _as_dict(_diff(moved.x, x))
        logq = logq + torch.stack([_dot(dx, sc) for sc in scores], 1) + fixed
        nfe = state.nfe + k * (1 + view.extra)
        return state.replace(x=moved.x, i=i + 1, aux=(moved, logq, weights), nfe=nfe)

    def _and_weights(self, inner: SolverState, model: Superposition, x: State, t: Tensor,
                     preds: list, scores: list[dict[str, Tensor]], logq: Tensor,
                     fixed: Tensor) -> Tensor:
        """kappa of the step such that both log densities end equal (the step's new state is
        affine in kappa at fixed noise: two trial steps on forked generators give it)."""
        b = logq.shape[0]
        ends = []
        for w in (0.0, 1.0):  # model 2 alone, model 1 alone
            weights = torch.tensor([w, 1.0 - w], dtype=F64, device=logq.device).expand(b, 2)
            trial = _with_generator(inner, _fork(inner.generator))
            if inner.generator is None and self.stochastic:
                with torch.random.fork_rng(devices=[] if logq.device.type == "cpu"
                                           else [logq.device]):
                    ends.append(self.base.step(trial, _Weighted(model, x, t, preds, weights,
                                                                "geometric")).x)
            else:
                ends.append(self.base.step(trial, _Weighted(model, x, t, preds, weights,
                                                            "geometric")).x)
        start = _as_dict(_diff(ends[0], x))
        slope = _as_dict(_diff(ends[1], ends[0]))
        s1, s2 = scores
        gap = {key: s1[key] - s2[key] for key in s1}
        num = logq[:, 1] - logq[:, 0] - _dot(start, gap) + fixed[:, 1] - fixed[:, 0]
        den = _dot(slope, gap)
        ok = den.abs() > 1e-12 * (1 + num.abs())
        kappa = torch.where(ok, num / torch.where(ok, den, 1.0), torch.full_like(num, 0.5))
        if self.kappa_range is not None:
            kappa = kappa.clamp(*self.kappa_range)
        return torch.stack([kappa, 1 - kappa], 1)

    def __repr__(self) -> str:
        return f"SuperDiff({self.base!r}, mode={self.mode!r}, temperature={self.temperature})"


def _as_dict(x: State) -> dict[str, Tensor]:
    return {"": x} if torch.is_tensor(x) else x


__all__ = ["Superposition", "SuperDiff", "combine", "MODES"]
