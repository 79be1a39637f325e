"""Categorical diffusion: discrete states (atom types, charges, bond types) beside continuous ones.

A :class:`CategoricalProcess` corrupts class indices with the transition family of D3PM
(Austin et al. 2021) whose cumulative matrix is ``Qbar_t = keep(t) I + (1 - keep(t)) 1 pi^T``:

- ``"uniform"``: ``pi`` uniform over the ``K`` classes;
- ``"marginal"``: ``pi`` the data's class frequencies (DiGress's marginal prior);
- ``"absorbing"``: ``pi`` all mass on an extra mask state ``K`` (masked diffusion).

So ``q(x_t | x_0) = keep(t) onehot(x_0) + (1 - keep(t)) pi`` in closed form, and the one-step
posterior ``q(x_s | x_t, x_0)`` too. The noise level comes from the continuous schedule, so one
time drives both parts of a joint state: ``keep(t) = alpha^2 / (alpha^2 + sigma^2)`` (the
signal fraction, 1 at ``t = 0`` and about 0 at ``t_max``).

Categories are drawn by Gumbel-max in float64 (:func:`sample_categorical`): in float32 or
lower the Gumbel noise is truncated and rare classes are undersampled (the precision bug
reported for masked diffusion models).

Joint states: :class:`JointDenoiser` wraps a network over a dict state holding continuous
entries (positions), categorical entries (class indices ``[B, N]``, long) and fixed entries (a
node mask); :class:`JointSolver` runs any continuous solver on the continuous entries and the
ancestral categorical step on the categorical ones, with one network evaluation feeding both,
so one :func:`pydiff.sample` call advances the whole state.

Example:
    >>> import torch, pydiff
    >>> from pydiff.categorical import CategoricalProcess
    >>> proc = CategoricalProcess(3, "uniform")
    >>> proc.marginal(torch.tensor([0]), torch.tensor(0.5)).tolist()
    [[0.6666666666666666, 0.16666666666666666, 0.16666666666666666]]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .denoiser import Denoiser
from .errors import InputError
from .hooks import StepContext, apply_hooks
from .model import Model, Prediction
from .noise import Generators, check_generator
from .schedules import F64, Schedule, as_time
from .solvers import Solver, SolverState, get_solver
from .tree import State

Tensor = torch.Tensor
KINDS = ("uniform", "marginal", "absorbing")


def _rand(shape: Sequence[int], generator: Generators, device: torch.device) -> Tensor:
    """Uniform [0, 1) float64 draws; with a list of generators, row ``b`` from ``generator[b]``."""
    if generator is None or isinstance(generator, torch.Generator):
        gdev = generator.device if generator is not None else device
        return torch.rand(tuple(shape), generator=generator, dtype=F64, device=gdev).to(device)
    gens = list(generator)
    check_generator(gens, shape[0])
    return torch.stack([torch.rand(tuple(shape[1:]), generator=g, dtype=F64, device=g.device)
                        for g in gens]).to(device)


def sample_categorical(probs: Tensor, generator: Generators = None) -> Tensor:
    """Class indices drawn from ``probs [..., K]`` by Gumbel-max in float64.

    ``argmax(log p + g)`` with ``g = -log(-log u)``; classes of probability 0 are never drawn.
    ``generator`` is one generator or a list, one per row of the leading (batch) dimension.

    Example:
        >>> import torch
        >>> p = torch.tensor([[0.0, 1.0, 0.0]])
        >>> sample_categorical(p, torch.Generator().manual_seed(0)).tolist()
        [1]
    """
    p = probs.to(F64)
    u = _rand(p.shape, generator, p.device).clamp_min(torch.finfo(F64).tiny)
    gumbel = -torch.log(-torch.log(u))
    return torch.argmax(torch.log(p) + gumbel, dim=-1)


def _expand(c: Tensor | float, like: Tensor) -> Tensor:
    """A float64 coefficient (scalar, ``[B]`` or broadcastable) shaped like the indices."""
    c = torch.as_tensor(c, dtype=F64, device=like.device)
    if c.dim() == 1 and like.dim() >= 1 and c.shape[0] == like.shape[0]:
        c = c.reshape(-1, *([1] * (like.dim() - 1)))
    return c.expand(like.shape)


class CategoricalProcess:
    """Forward corruption, prior and ancestral posterior of one categorical entry.

    Args:
        num_classes: ``K``, the number of real classes (indices ``0..K-1``).
        kind: ``"uniform"``, ``"marginal"`` or ``"absorbing"`` (see the module docstring).
        prior: class frequencies ``[K]`` for ``kind="marginal"`` (normalized here).

    States are long indices; an absorbing process has ``K + 1`` states, the last the mask.

    Example:
        >>> import torch
        >>> proc = CategoricalProcess(2, "absorbing")
        >>> proc.num_states, proc.stationary.tolist()
        (3, [0.0, 0.0, 1.0])
    """

    def __init__(self, num_classes: int, kind: str = "uniform",
                 prior: Sequence[float] | Tensor | None = None):
        if not isinstance(num_classes, int) or num_classes < 1:
            raise InputError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if kind not in KINDS:
            raise InputError(f"unknown kind={kind!r}; expected one of {KINDS}")
        self.num_classes, self.kind = num_classes, kind
        if kind == "marginal":
            if prior is None:
                raise InputError("kind='marginal' needs prior=[class frequencies]")
            pi = torch.as_tensor(prior, dtype=F64).flatten()
            if pi.shape[0] != num_classes or (pi < 0).any() or not pi.sum() > 0:
                raise InputError(f"prior must be {num_classes} non-negative frequencies with a "
                                 f"positive sum, got {pi.tolist()}")
            pi = pi / pi.sum()
        elif prior is not None:
            raise InputError(f"prior is only used with kind='marginal', not kind={kind!r}")
        elif kind == "uniform":
            pi = torch.full((num_classes,), 1.0 / num_classes, dtype=F64)
        else:
            pi = torch.zeros(num_classes + 1, dtype=F64)
            pi[-1] = 1.0
        self.stationary = pi

    @property
    def num_states(self) -> int:
        """States a corrupted entry can take (``K + 1`` with the absorbing mask state)."""
        return self.num_classes + (self.kind == "absorbing")

    @staticmethod
    def keep(schedule: Schedule, t: float | Tensor) -> Tensor:
        """Probability that an entry is still its clean class at ``t``: ``alpha^2 / (alpha^2 +
        sigma^2)`` of the continuous ``schedule`` (float64)."""
        tt = as_time(t)
        a2, s2 = schedule.alpha(tt) ** 2, schedule.sigma(tt) ** 2
        return a2 / (a2 + s2)

    def one_hot(self, x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """``[..., num_states]`` one-hot encoding of state indices (the network's input)."""
        return torch.nn.functional.one_hot(x.long(), self.num_states).to(dtype)

    def marginal(self, x0: Tensor, keep: Tensor | float) -> Tensor:
        """``q(x_t | x_0) = keep onehot(x_0) + (1 - keep) pi`` as float64 ``[..., num_states]``;
        ``keep`` is a scalar, ``[B]`` or broadcastable to ``x0``."""
        k = _expand(keep, x0)[..., None]
        pi = self.stationary.to(x0.device)
        return k * self.one_hot(x0, F64) + (1 - k) * pi

    def corrupt(self, x0: Tensor, keep: Tensor | float, generator: Generators = None) -> Tensor:
        """A draw of ``x_t ~ q(x_t | x_0)`` (long indices)."""
        return sample_categorical(self.marginal(x0, keep), generator)

    def prior(self, shape: Sequence[int], generator: Generators = None,
              device: torch.device | str | None = None) -> Tensor:
        """Indices drawn from the stationary distribution ``pi`` (the start of sampling)."""
        pi = self.stationary.to(device).expand(*tuple(shape), -1)
        return sample_categorical(pi, generator)

    def posterior(self, x_t: Tensor, probs0: Tensor, keep_t: Tensor | float,
                  keep_s: Tensor | float) -> Tensor:
        """``p(x_s | x_t) = sum_x0 q(x_s | x_t, x_0) p(x_0 | x_t)`` for ``s < t`` (float64).

        Args:
            x_t: current indices ``[B, ...]``.
            probs0: the model's ``p(x_0 | x_t)`` over the ``K`` real classes ``[B, ..., K]``.
            keep_t, keep_s: :meth:`keep` at ``t`` and ``s`` (scalar or ``[B]``).
        """
        if probs0.shape[-1] != self.num_classes or probs0.shape[:-1] != x_t.shape:
            raise InputError(f"probs0 has shape {tuple(probs0.shape)}; expected "
                             f"{(*x_t.shape, self.num_classes)} for x_t of shape "
                             f"{tuple(x_t.shape)}")
        kt, ks = _expand(keep_t, x_t), _expand(keep_s, x_t)
        kts = torch.where(ks > 0, kt / ks.clamp_min(torch.finfo(F64).tiny), torch.zeros_like(kt))
        pi = self.stationary.to(x_t.device)
        # q(x_t | x_s = j) for every j: [B, ..., S]
        to_t = kts[..., None] * self.one_hot(x_t, F64) + ((1 - kts) * pi[x_t])[..., None]
        # q(x_s = j | x_0 = k) for the real classes k: [B, ..., K, S]
        eye = torch.eye(self.num_classes, self.num_states, dtype=F64, device=x_t.device)
        from0 = ks[..., None, None] * eye + (1 - ks)[..., None, None] * pi
        joint = to_t[..., None, :] * from0  # q(x_t | x_s) q(x_s | x_0)
        norm = joint.sum(-1, keepdim=True)  # q(x_t | x_0): 0 for x_0 that cannot reach x_t
        post = torch.where(norm > 0, joint / norm.clamp_min(torch.finfo(F64).tiny), 0.0)
        out = (probs0.to(F64)[..., None] * post).sum(-2)
        total = out.sum(-1, keepdim=True)
        # a model that puts all its mass on unreachable x_0 (absorbing: an unmasked entry whose
        # class it rejects) gets the posterior of x_0 = x_t: the entry stays as it is
        stay = self.one_hot(x_t, F64)
        return torch.where(total > 0, out / total.clamp_min(torch.finfo(F64).tiny), stay)

    def __repr__(self) -> str:
        return f"CategoricalProcess(num_classes={self.num_classes}, kind={self.kind!r})"


class JointModel(Model):
    """A model of a dict state with continuous and categorical entries.

    Subclasses define :meth:`evaluate_joint`; ``evaluate`` (the continuous part alone) follows.
    Attributes: ``processes`` (categorical entries) and ``fixed`` (entries carried unchanged,
    such as a node mask).
    """

    processes: Mapping[str, CategoricalProcess]
    fixed: tuple[str, ...] = ()

    def evaluate_joint(self, x: dict[str, Tensor], t: float | Tensor, **cond: Any
                       ) -> tuple[Prediction, dict[str, Tensor]]:
        """``(prediction of the continuous entries, {key: p(x_0 | x_t) [..., K] float64})``."""
        raise NotImplementedError

    def evaluate(self, x: State, t: float | Tensor, **cond: Any) -> Prediction:
        return self.evaluate_joint(x, t, **cond)[0]

    def denoised(self, x: dict[str, Tensor], t: float | Tensor, **cond: Any
                 ) -> dict[str, Tensor]:
        """The whole state's clean estimate at ``t``: x0-hat of the continuous entries, the most
        likely clean class of each categorical entry, the fixed entries as they are (what a
        reward of the clean data is evaluated on, e.g. by :class:`pydiff.guidance.SVDD`)."""
        pred, probs = self.evaluate_joint(x, t, **cond)
        return {**x, **pred.x0(), **{k: p.argmax(-1) for k, p in probs.items()}}

    def split(self, x: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``(continuous entries, categorical and fixed entries)`` of a full state."""
        if not isinstance(x, dict):
            raise TypeError(f"a joint model's state is a dict, got {type(x).__name__}")
        missing = [k for k in (*self.processes, *self.fixed) if k not in x]
        if missing:
            raise InputError(f"the state lacks the entries {missing} (keys: {sorted(x)})")
        other = set(self.processes) | set(self.fixed)
        return ({k: v for k, v in x.items() if k not in other},
                {k: v for k, v in x.items() if k in other})


class JointDenoiser(JointModel):
    """A network over a joint state: continuous entries through a :class:`pydiff.Denoiser`.

    ``net(x, t_net, **cond) -> dict``: ``x`` holds the continuous entries as the Denoiser
    preconditions them, each categorical entry one-hot ``[..., num_states]`` and the fixed
    entries as they are; the output holds, per continuous entry, the network output of the
    Denoiser's ``prediction`` and, per categorical entry, logits of ``p(x_0 | x_t)`` over the
    ``K`` real classes.

    Args:
        net: the network.
        schedule: the continuous schedule (it also sets the categorical noise level).
        processes: ``{key: CategoricalProcess}``.
        fixed: keys carried unchanged (a node mask).
        **denoiser_kwargs: ``prediction``, ``precond``, ``time_input``, ... of the Denoiser.

    Example:
        >>> import torch, pydiff
        >>> from pydiff.categorical import CategoricalProcess, JointDenoiser
        >>> def net(x, t):
        ...     logits = torch.zeros(*x["type"].shape[:-1], 3)
        ...     return {"pos": torch.zeros_like(x["pos"]), "type": logits}
        >>> model = JointDenoiser(net, pydiff.VPSchedule(), {"type": CategoricalProcess(3)})
        >>> pred, probs = model.evaluate_joint({"pos": torch.randn(2, 4, 3),
        ...                                     "type": torch.zeros(2, 4, dtype=torch.long)}, 0.5)
        >>> probs["type"][0, 0].tolist()
        [0.3333333333333333, 0.3333333333333333, 0.3333333333333333]
    """

    def __init__(self, net: Any, schedule: Schedule, processes: Mapping[str, CategoricalProcess],
                 *, fixed: Sequence[str] = (), cond: dict[str, Any] | None = None,
                 **denoiser_kwargs: Any):
        super().__init__(schedule, cond)
        if not processes or not all(isinstance(p, CategoricalProcess)
                                    for p in processes.values()):
            raise InputError("processes must be a non-empty {key: CategoricalProcess}")
        self.net, self.processes, self.fixed = net, dict(processes), tuple(fixed)
        # the inner net takes the joint net as an argument (not a bound method), so a copy of
        # this model with other weights (EMA) shares the Denoiser and runs its own net
        self.denoiser = Denoiser(_continuous_net, schedule, **denoiser_kwargs)

    def network_inputs(self, rest: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
        """Categorical entries one-hot (``dtype``), fixed entries as they are."""
        return {k: (self.processes[k].one_hot(v, dtype) if k in self.processes else v)
                for k, v in rest.items()}

    def logits(self, x: dict[str, Tensor], t: float | Tensor, **cond: Any
               ) -> tuple[Prediction, dict[str, Tensor]]:
        """``(continuous prediction, raw logits per categorical entry)`` (training uses it)."""
        xc, rest = self.split(x)
        dtype = next(iter(xc.values())).dtype
        sink: dict[str, Tensor] = {}
        pred = self.denoiser.evaluate(xc, t, _net=self.net, _keys=tuple(self.processes),
                                      _rest=self.network_inputs(rest, dtype), _sink=sink,
                                      **{**self.cond, **cond})
        for k, p in self.processes.items():
            want = (*x[k].shape, p.num_classes)
            if tuple(sink[k].shape) != want:
                raise TypeError(f"the network returned logits of shape {tuple(sink[k].shape)} "
                                f"for {k!r}; expected {want} (one per real class)")
        return pred, sink

    def evaluate_joint(self, x, t, **cond):
        pred, logits = self.logits(x, t, **cond)
        return pred, {k: torch.softmax(v.to(F64), dim=-1) for k, v in logits.items()}


def _continuous_net(x: dict[str, Tensor], t_net: Tensor, *, _net: Any, _keys: tuple[str, ...],
                    _rest: dict[str, Tensor], _sink: dict[str, Tensor], **cond: Any
                    ) -> dict[str, Tensor]:
    """The joint net as the continuous Denoiser sees it: categorical logits go to ``_sink``."""
    out = _net({**x, **_rest}, t_net, **cond)
    missing = [k for k in (*x, *_keys) if k not in out]
    if missing:
        raise TypeError(f"the network's output lacks the entries {missing}")
    _sink.update({k: out[k] for k in _keys})
    return {k: out[k] for k in x}


def joint_diffusion_loss(model: JointDenoiser, x0: dict[str, Tensor], *,
                         generator: torch.Generator | None = None, mask: Tensor | None = None,
                         noise_projection: Any = None, categorical_weight: float = 1.0,
                         **loss_options: Any):
    """Training loss of a :class:`JointDenoiser` on clean joint states ``x0``.

    One time per sample drives both parts: the continuous entries get
    :func:`pydiff.training.diffusion_loss` (explicit noise, optionally projected, e.g. onto the
    zero centre-of-mass subspace) and each categorical entry, corrupted by its process to the
    same level, the cross-entropy of the network's logits against the clean classes (EDM and
    DiGress train the same pair).

    Args:
        model: the joint model.
        x0: clean state (categorical entries as long indices).
        generator: draws the times, the noise and the corruption.
        mask: node mask ``[B, N]`` (1 = real): padding counts in neither term.
        noise_projection: ``fn(noise_dict, mask) -> noise_dict`` applied to the drawn noise.
        categorical_weight: weight of the cross-entropy terms.
        **loss_options: passed to :func:`pydiff.training.diffusion_loss` (``t``, ``weighting``...).

    Returns a :class:`pydiff.training.LossOutput`.

    Example:
        >>> import torch, pydiff
        >>> from pydiff.categorical import CategoricalProcess, JointDenoiser, joint_diffusion_loss
        >>> def net(x, t):
        ...     logits = torch.zeros(*x["type"].shape[:-1], 3)
        ...     return {"pos": torch.zeros_like(x["pos"]), "type": logits}
        >>> model = JointDenoiser(net, pydiff.VPSchedule(), {"type": CategoricalProcess(3)})
        >>> x0 = {"pos": torch.randn(2, 4, 3), "type": torch.zeros(2, 4, dtype=torch.long)}
        >>> out = joint_diffusion_loss(model, x0, generator=torch.Generator().manual_seed(0))
        >>> out.per_sample.shape
        torch.Size([2])
    """
    from .noise import randn_like
    from .training.losses import LossOutput, diffusion_loss
    from .training.time_samplers import default_time_sampler

    if not isinstance(model, JointDenoiser):
        raise TypeError(f"model must be a JointDenoiser, got {type(model).__name__}")
    xc, rest = model.split(x0)
    ref = next(iter(xc.values()))
    schedule = model.schedule
    t = loss_options.pop("t", None)
    if t is None:
        t = default_time_sampler(schedule, model.denoiser.precond)(schedule, ref.shape,
                                                                    generator, device=ref.device)
    t = as_time(t, ref.device)
    if t.dim() == 0:
        t = t.expand(ref.shape[0])
    keep = CategoricalProcess.keep(schedule, t)
    noisy = {k: (model.processes[k].corrupt(v, keep, generator) if k in model.processes else v)
             for k, v in rest.items()}
    noise = randn_like(xc, generator)
    if noise_projection is not None:
        noise = noise_projection(noise, mask)
    leaf_mask = None
    if mask is not None:
        m = mask.to(ref.dtype)
        leaf_mask = {k: m.reshape(*m.shape, *([1] * (v.dim() - m.dim()))) for k, v in xc.items()}
    sink: dict[str, Tensor] = {}
    cond = {"_net": model.net, "_keys": tuple(model.processes),
            "_rest": model.network_inputs(noisy, ref.dtype), "_sink": sink, **model.cond}
    out = diffusion_loss(model.denoiser, xc, t=t, noise=noise, mask=leaf_mask, cond=cond,
                         generator=generator, **loss_options)
    per_sample = out.per_sample
    for k in model.processes:
        ce = torch.nn.functional.cross_entropy(sink[k].float().movedim(-1, 1), x0[k].long(),
                                               reduction="none")
        w = torch.ones_like(ce) if mask is None else mask.to(ce.dtype)
        dims = tuple(range(1, ce.dim()))
        per_sample = per_sample + categorical_weight * (ce * w).sum(dims) / w.sum(dims).clamp_min(1)
    return LossOutput(per_sample.mean(), per_sample, t)


class _ContinuousPart(Model):
    """The continuous entries' view of a joint model during one step of :class:`JointSolver`:
    the categorical and fixed entries are those of the step's start, and the first evaluation's
    categorical probabilities are kept for the categorical update."""

    def __init__(self, model: JointModel, rest: dict[str, Tensor], sink: dict[str, Tensor]):
        super().__init__(model.schedule)
        self.model, self.rest, self.sink = model, rest, sink

    def evaluate(self, x, t, **cond):
        pred, probs = self.model.evaluate_joint({**x, **self.rest}, t, **cond)
        if not self.sink:
            self.sink.update(probs)
        return pred


class JointSolver(Solver):
    """A continuous solver on the continuous entries, ancestral categorical steps on the rest.

    Each step evaluates the joint model once at the step's start for both parts (a solver with
    several stages evaluates again with the categorical entries held at the start); the
    categorical entries then move from ``t_i`` to ``t_{i+1}`` by :meth:`CategoricalProcess.
    posterior` and a float64 Gumbel-max draw. Hooks act on the whole state after both parts
    moved: :class:`pydiff.hooks.ZeroCenterOfMass` and :class:`pydiff.hooks.InpaintReplace`
    with ``key=`` on continuous entries, :class:`pydiff.hooks.InpaintClasses` on categorical
    ones (a fixed fragment keeps its positions and its classes).

    Args:
        solver: the continuous solver (a name or an instance).
        final: ``"sample"`` draws the last step from the model's ``p(x_0 | x_t)`` (the exact
            ancestral sampler); ``"argmax"`` takes its most likely class.
        **solver_options: options of a named solver.

    Example:
        >>> import torch, pydiff
        >>> from pydiff.categorical import CategoricalProcess, JointDenoiser, JointSolver
        >>> proc = CategoricalProcess(3)
        >>> def net(x, t):
        ...     logits = torch.zeros(*x["type"].shape[:-1], 3)
        ...     return {"pos": torch.zeros_like(x["pos"]), "type": logits}
        >>> model = JointDenoiser(net, pydiff.VPSchedule(), {"type": proc})
        >>> x = {"pos": torch.randn(2, 4, 3), "type": proc.prior((2, 4))}
        >>> out = pydiff.sample(model, x, JointSolver("dpmpp_2m"), steps=5)
        >>> out["pos"].shape, out["type"].dtype
        (torch.Size([2, 4, 3]), torch.int64)
    """

    name = "joint"

    def __init__(self, solver: str | Solver = "dpmpp_2m", final: str = "sample",
                 **solver_options: Any):
        if final not in ("sample", "argmax"):
            raise InputError(f"final must be 'sample' or 'argmax', got {final!r}")
        self.solver = get_solver(solver, **solver_options)
        self.final = final
        self.default_spacing = self.solver.default_spacing
        self.stochastic = True
        self._freeze()

    def init(self, x, schedule, grid, *, generator=None, hooks=()):
        if not isinstance(x, dict):
            raise TypeError(f"JointSolver samples dict states, got {type(x).__name__}")
        cont = {k: v for k, v in x.items() if v.is_floating_point()}
        if not cont:
            raise InputError("a joint state needs at least one continuous (floating) entry")
        # the hooks run here on the whole state after both parts moved (a fixed fragment
        # keeps its positions and its atom types), not in the continuous solver
        inner = self.solver.init(cont, schedule, grid, generator=generator)
        keep = CategoricalProcess.keep(schedule, inner.grid)
        # the keep levels are a table (per step, not per sample): aux holds only the inner
        # run, whose tensors are all per sample (SVDD gathers candidates through them)
        table = {"keep_t": keep[:-1], "keep_s": keep[1:]}
        return SolverState(x={**x, **inner.x}, i=0, grid=inner.grid, alpha=inner.alpha,
                           sigma=inner.sigma, table=table, generator=generator, aux=(inner,),
                           hooks=tuple(hooks), times=inner.times,
                           rows={k: v.unbind(0) for k, v in table.items()})

    def step(self, state, model):
        if not isinstance(model, JointModel):
            raise TypeError(f"JointSolver needs a JointModel (e.g. JointDenoiser), got "
                            f"{type(model).__name__}")
        (inner,) = state.aux
        c = state.coef
        rest = {k: v for k, v in state.x.items() if k not in inner.x}
        probs: dict[str, Tensor] = {}
        inner = self.solver.step(inner, _ContinuousPart(model, rest, probs))
        i = state.i
        moved = {}
        for k, proc in model.processes.items():
            if i + 1 == state.steps and self.final == "argmax":
                moved[k] = probs[k].argmax(-1)
            else:
                p = proc.posterior(rest[k], probs[k], c["keep_t"], c["keep_s"])
                moved[k] = sample_categorical(p, state.generator)
        x = {**rest, **inner.x, **moved}
        if state.hooks:
            ctx = StepContext(step=i, t=state.grid[i + 1], alpha=state.alpha[i + 1],
                              sigma=state.sigma[i + 1], generator=state.generator,
                              final=i + 1 == state.steps)
            x = apply_hooks(state.hooks, x, ctx)
            inner = inner.replace(x={k: x[k] for k in inner.x})
        return state.replace(x=x, i=i + 1, aux=(inner,), nfe=inner.nfe)


__all__ = ["CategoricalProcess", "JointModel", "JointDenoiser", "JointSolver",
           "joint_diffusion_loss",
           "sample_categorical", "KINDS"]
