"""Few-step and one-step distillation recipes, as ``loss_fn`` objects for the :class:`Trainer`.

Every recipe trains a *student* :class:`pydiff.Denoiser` (usually a copy of the teacher: see
:func:`student_from`) with the ordinary :class:`~pydiff.training.Trainer`, so LR schedules,
EMA, bf16, torchrun and exact resume come with it. The teacher is any :class:`pydiff.Model`
(a Denoiser, a guidance wrapper, a policy's denoiser) and any core solver is its ODE stepper;
conditioning in the batch (``(x0, cond)`` tuples or dicts, as :class:`DiffusionLoss` reads
them) reaches the teacher, the student and the target network alike. Recipes that keep a
target network (an EMA of the student) update it in ``after_step`` and checkpoint it with
``state_dict``, which the Trainer calls.

- :class:`ConsistencyDistillation` (Song et al. 2023): the student's clean-data map at
  ``t_{n+1}`` matches the target network's at ``t_n``, where ``x_{t_n}`` is one teacher solver
  step from ``x_{t_{n+1}}``. ``jump=True`` trains a :class:`pydiff.JumpDenoiser` with the
  any-to-any jump of Consistency Trajectory Models (Kim et al. 2024). Sample with
  ``pydiff.sample(student, x_T, "consistency", steps=k)`` (``gamma=`` for jump models).
- :class:`ConsistencyTraining` (no teacher): the teacher's step is replaced by the data's own
  noising (``x_{t_n} = alpha_n x0 + sigma_n z`` with the same ``z``), with the improved
  techniques' defaults (Song & Dhariwal 2023: pseudo-Huber distance, a doubling curriculum of
  discretization steps, log-normal level sampling, 1 / delta-sigma weighting, no target EMA).
- :class:`ProgressiveDistillation` (Salimans & Ho 2022): one DDIM step of the student matches
  two steps of the teacher; each round halves the steps (:func:`progressive_distillation`).
- Rectified-flow reflow (Liu et al. 2023; InstaFlow): :func:`reflow_pairs` draws
  (noise, teacher sample) pairs, :class:`ReflowLoss` retrains a flow on that coupling (which
  straightens its paths), :class:`OneStepDistillation` regresses the one-step output on the
  pairs; :func:`reflow` runs all three.

Example (consistency distillation of a toy teacher, sampled in 2 steps):
    >>> import torch, pydiff
    >>> from pydiff.testing import GaussianMixture
    >>> from pydiff.training import SampledBatches, Trainer
    >>> from pydiff.training.distill import ConsistencyDistillation, student_from
    >>> from pydiff.training.toy import train_toy
    >>> ring = GaussianMixture.ring()
    >>> teacher = train_toy(steps=50, hidden=32, generator=torch.Generator().manual_seed(0))
    >>> student = student_from(teacher)
    >>> data = SampledBatches(lambda n, g: ring.sample(n, g).float(), 64)
    >>> recipe = ConsistencyDistillation(teacher, steps=18, solver="heun")
    >>> trainer = Trainer(student, data, loss_fn=recipe, max_steps=5, progress=False).fit()
    >>> x_T = pydiff.prior(student.schedule, (8, 2), generator=torch.Generator().manual_seed(1))
    >>> pydiff.sample(student, x_T, "consistency", steps=2).shape
    torch.Size([8, 2])
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..denoiser import Denoiser
from ..errors import InputError
from ..grids import timesteps
from ..model import Model
from ..noise import add_noise, randn, randn_like
from ..sampling import prior, sample
from ..schedules import F64, Schedule
from ..solvers import Solver, get_solver
from ..tree import State, batch_size, leaves, per_sample, tree_map
from .ema import EMA
from .losses import DiffusionLoss, diffusion_loss

Tensor = torch.Tensor
DISTANCES = ("l2", "pseudo_huber")


# -- shared pieces --------------------------------------------------------------------------------
def student_from(teacher: Denoiser, *, jump: bool = False, net: torch.nn.Module | None = None,
                 schedule: Schedule | None = None, **denoiser_options: Any) -> Denoiser:
    """A student Denoiser: a copy of the teacher's network (or ``net``) with its configuration.

    Args:
        teacher: the Denoiser to copy (its network is deep-copied, its weights shared by no one).
        jump: make a :class:`pydiff.JumpDenoiser` (for ``ConsistencyDistillation(jump=True)``);
            its ``net`` must accept the target time ``s`` (e.g. ``ToyMLP(target_time=True)``),
            so pass ``net=`` unless the teacher's network already takes one.
        net: the student's network instead of a copy of the teacher's.
        schedule: another schedule (e.g. :class:`pydiff.FlowSchedule` for reflow).
        **denoiser_options: override ``prediction``, ``precond``, ``time_input``, ...

    Example:
        >>> import torch, pydiff
        >>> teacher = pydiff.Denoiser(torch.nn.Linear(2, 2), pydiff.VPSchedule())
        >>> student_from(teacher).net is teacher.net
        False
    """
    if not isinstance(teacher, Denoiser):
        raise TypeError(f"student_from copies a pydiff.Denoiser, got {type(teacher).__name__}; "
                        "build the student Denoiser yourself")
    options: dict[str, Any] = {"prediction": teacher.prediction, "precond": teacher.precond,
                               "time_input": teacher.time_input, "time_scale": teacher.time_scale,
                               "sigma_data": teacher.sigma_data, "mean_key": teacher.mean_key}
    options.update(denoiser_options)
    module = copy.deepcopy(teacher.net) if net is None else net
    if isinstance(module, torch.nn.Module):
        module.train().requires_grad_(True)
    cls = _jump_class() if jump else Denoiser
    return cls(module, schedule or teacher.schedule, **options)


def _jump_class():
    from ..denoiser import JumpDenoiser
    return JumpDenoiser


def _with_net(model: Denoiser, net: torch.nn.Module) -> Denoiser:
    """``model`` with another network (the target network shares the student's config)."""
    new = object.__new__(type(model))
    new.__dict__.update(model.__dict__)
    new.net = net
    return new


def _distance(a: State, b: State, kind: str, huber_c: float | None) -> Tensor:
    """Per-sample distance ``[B]``: mean squared error, or the pseudo-Huber
    ``sqrt(|a - b|^2 + c^2) - c`` on the whole sample (default ``c = 0.00054 sqrt(dim)``)."""
    total: Tensor | None = None
    size = 0
    for u, v in zip(leaves(a), leaves(b)):
        sq = (u.float() - v.float()).pow(2).flatten(1)
        part = sq.sum(1) if kind == "pseudo_huber" else sq.mean(1)
        total = part if total is None else total + part
        size += sq.shape[1]
    if kind == "l2":
        return total
    c = 0.00054 * math.sqrt(size) if huber_c is None else huber_c
    return torch.sqrt(total + c * c) - c


def _check_distance(distance: str) -> str:
    if distance not in DISTANCES:
        raise InputError(f"unknown distance={distance!r}; expected one of {DISTANCES}")
    return distance


def _teacher_steps(teacher: Model, x: State, t_hi: Tensor, t_lo: Tensor, solver: Solver,
                   substeps: int, cond: dict[str, Any], generator: torch.Generator | None
                   ) -> State:
    """The teacher's ODE solution from per-sample times ``t_hi`` to ``t_lo`` (``[B]``), in
    ``substeps`` steps of ``solver`` on a per-sample grid uniform in time."""
    frac = torch.linspace(1.0, 0.0, substeps + 1, dtype=F64, device=t_hi.device)[:, None]
    grid = t_lo + (t_hi - t_lo) * frac
    bound = teacher.bind(**cond) if cond else teacher
    return sample(bound, x, solver, grid=grid, generator=generator, check_finite=False)


def _time_draw(generator: torch.Generator | None, n: int, device: torch.device) -> Tensor:
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(n, generator=generator, device=gen_device, dtype=F64).to(device)


class _Recipe:
    """Batch splitting (as :class:`DiffusionLoss`), an optional EMA target network of the
    student, and the state a checkpoint needs (see the module docstring)."""

    def __init__(self, target_decay: float | None, data_key: str | None,
                 cond_keys: tuple[str, ...] | None):
        if target_decay is not None and not 0.0 <= target_decay < 1.0:
            raise InputError(f"target_decay={target_decay!r}: expected a number in [0, 1) "
                             "(0: the target is the student itself, without gradients)")
        self.target_decay = target_decay
        self._splitter = DiffusionLoss(data_key, cond_keys)
        self.target: EMA | None = None
        self._pending: dict[str, Any] | None = None
        self.updates = 0  # optimizer steps taken (the clock of curricula)

    def split(self, batch: Any) -> tuple[State, dict[str, Any]]:
        """``(x0, cond)`` of a batch."""
        return self._splitter.split(batch)

    def target_model(self, model: Denoiser) -> Denoiser:
        """The student with the target network's weights (made on first use)."""
        if self.target is None:
            self.target = EMA(model.net, decay=self.target_decay)
            if self._pending is not None:
                self.target.load_state_dict(self._pending)
                self._pending = None
        return _with_net(model, self.target.module)

    def after_step(self, trainer: Any) -> None:
        """Called by the Trainer after each optimizer step: the target follows the student."""
        self.updates += 1
        if self.target is not None:
            self.target.update(trainer.module)

    def state_dict(self) -> dict[str, Any]:
        target = self.target.state_dict() if self.target is not None else self._pending
        return {"updates": self.updates, "target": target}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        if state["target"] is None:
            return
        if self.target is None:
            self._pending = state["target"]  # loaded when the target is made
        else:
            self.target.load_state_dict(state["target"])


# -- consistency models ---------------------------------------------------------------------------
class ConsistencyDistillation(_Recipe):
    """Consistency distillation (and, with ``teacher=None``, consistency training).

    Per sample: a level pair ``t_hi = grid[n] > t_lo = grid[n + 1]`` of a discretization grid
    (``timesteps(schedule, N, spacing, final_zero=False)``), ``x_hi = alpha x0 + sigma z``,
    ``x_lo`` the teacher's solver step from ``x_hi`` (or ``alpha_lo x0 + sigma_lo z``
    without a teacher), and the loss ``w * d(f_student(x_hi, t_hi), f_target(x_lo, t_lo))``
    with ``f`` the Denoiser's x0 (the consistency map; parameterizations whose x0 becomes
    ``x`` as ``sigma -> 0`` -- eps, v, velocity, EDM -- meet the boundary condition).

    With ``jump=True`` (the student a :class:`pydiff.JumpDenoiser`) a third level ``s <= t_lo``
    is drawn (a grid point or 0) and the student's jump ``G(x_hi, t_hi, s)`` matches the
    target's ``G(x_lo, t_lo, s)``, both mapped on to clean data by the target network before
    comparing (CTM's loss in data space); ``dsm_weight`` adds CTM's denoising loss on the
    jump to 0.

    With ``target="solve"`` the target is the consistency function by its definition: the
    teacher's own ODE solution from ``(x_hi, t_hi)`` to clean data (``solver_steps`` steps of
    ``solver`` on ``timesteps(schedule, solver_steps, spacing, t_start=t_hi)``), with no target
    network and no bootstrapping through the discretization. Each training step then costs
    ``solver_steps`` teacher evaluations, so it suits small teachers (policies, toys), where it
    converges in a fraction of the steps the bootstrapped target needs: the bootstrapped map
    reaches the noisiest level only after the error has travelled through all ``N`` intervals.

    Args:
        teacher: a :class:`pydiff.Model` (None: consistency training).
        steps: discretization steps ``N``, or ``(N_start, N_end)`` for the doubling curriculum
            of improved consistency training (needs ``total_steps``).
        total_steps: the training length the curriculum spans.
        spacing: grid spacing (default: the schedule's, else ``"karras"``).
        solver: the teacher's ODE stepper (any core solver name or instance).
        solver_steps: solver steps per grid interval (``target="solve"``: steps of the whole
            solve from ``t_hi`` to clean data).
        target: ``"step"`` (one teacher step to ``t_lo``, then the target network) or
            ``"solve"`` (the teacher's ODE solution to clean data; needs a teacher).
        target_decay: EMA decay of the target network (0: the student without gradients).
        distance: ``"l2"`` (mean squared error) or ``"pseudo_huber"``.
        huber_c: the pseudo-Huber ``c`` (default ``0.00054 sqrt(dim)``).
        weighting: ``"uniform"`` or ``"ict"`` (``1 / (sigma~_hi - sigma~_lo)``, sigma~ =
            sigma / alpha).
        level_sampler: ``"uniform"`` over the grid's intervals, or ``"lognormal"`` (iCT's
            discretized log-normal over sigma~ with ``p_mean``, ``p_std``).
        jump: train the any-to-any jump (CTM).
        dsm_weight: weight of the denoising loss (``jump=True`` only).
        data_key, cond_keys: how batches split into data and conditioning.
        **solver_options: options of a solver given by name.
    """

    def __init__(self, teacher: Model | None = None, *, steps: int | tuple[int, int] = 18,
                 total_steps: int | None = None, spacing: str | None = None,
                 solver: str | Solver = "heun", solver_steps: int = 1, target: str = "step",
                 target_decay: float | None = 0.95, distance: str = "l2",
                 huber_c: float | None = None, weighting: str = "uniform",
                 level_sampler: str = "uniform", p_mean: float = -1.1, p_std: float = 2.0,
                 jump: bool = False, dsm_weight: float = 0.0, data_key: str | None = None,
                 cond_keys: tuple[str, ...] | None = None, **solver_options: Any):
        super().__init__(0.0 if target_decay is None else target_decay, data_key, cond_keys)
        if teacher is not None and not isinstance(teacher, Model):
            raise TypeError(f"teacher must be a pydiff.Model (a Denoiser, a guidance wrapper), "
                            f"got {type(teacher).__name__}")
        if isinstance(steps, int):
            if steps < 1:
                raise InputError(f"steps={steps}: expected an integer >= 1")
        elif (len(steps) != 2 or not 1 <= steps[0] <= steps[1]) or total_steps is None:
            raise InputError(f"steps={steps!r}: expected an integer or a pair (start, end) with "
                             "1 <= start <= end, together with total_steps")
        if solver_steps < 1:
            raise InputError(f"solver_steps={solver_steps}: expected an integer >= 1")
        if weighting not in ("uniform", "ict"):
            raise InputError(f"unknown weighting={weighting!r}; expected 'uniform' or 'ict'")
        if level_sampler not in ("uniform", "lognormal"):
            raise InputError(f"unknown level_sampler={level_sampler!r}; expected 'uniform' or "
                             "'lognormal'")
        if target not in ("step", "solve"):
            raise InputError(f"unknown target={target!r}; expected 'step' (teacher step and "
                             "target network) or 'solve' (the teacher's ODE solution)")
        if target == "solve" and (teacher is None or jump):
            raise InputError("target='solve' regresses the map to clean data on the teacher's ODE "
                             "solution: it needs a teacher and jump=False")
        if dsm_weight and not jump:
            raise InputError("dsm_weight is CTM's denoising loss on the jump to 0: it needs "
                             "jump=True")
        self.teacher = teacher
        if teacher is not None and isinstance(getattr(teacher, "net", None), torch.nn.Module):
            teacher.net.eval()
        self.steps, self.total_steps, self.spacing = steps, total_steps, spacing
        self.solver = get_solver(solver, **solver_options)
        self.solver_steps, self.target_kind = int(solver_steps), target
        self.distance, self.huber_c = _check_distance(distance), huber_c
        self.weighting, self.level_sampler = weighting, level_sampler
        self.p_mean, self.p_std = float(p_mean), float(p_std)
        self.jump, self.dsm_weight = bool(jump), float(dsm_weight)

    def current_steps(self) -> int:
        """The discretization ``N`` at this point of training (the curriculum's)."""
        if isinstance(self.steps, int):
            return self.steps
        start, end = self.steps
        doublings = int(math.floor(math.log2(end / start))) + 1
        period = max(1, self.total_steps // doublings)
        return int(min(start * 2 ** (self.updates // period), end))

    def grid(self, schedule: Schedule, device: torch.device | str | None = None) -> Tensor:
        """The current discretization, ``[N + 1]`` decreasing from ``t_max`` to ``t_eps``."""
        spacing = self.spacing or schedule.default_spacing or "karras"
        return timesteps(schedule, self.current_steps(), spacing, final_zero=False,
                         device=device)

    def _levels(self, schedule: Schedule, grid: Tensor, n: int,
                generator: torch.Generator | None) -> Tensor:
        """Interval indices ``[n]`` (pair ``grid[i] > grid[i + 1]``)."""
        count = grid.shape[0] - 1
        if self.level_sampler == "uniform":
            u = _time_draw(generator, n, grid.device)
            return (u * count).long().clamp(max=count - 1)
        log_sig = torch.log(schedule.sigma_tilde(grid))
        cdf = torch.erf((log_sig - self.p_mean) / (math.sqrt(2) * self.p_std))
        probs = (cdf[:-1] - cdf[1:]).clamp(min=0).cpu()
        gen_ok = generator is None or generator.device.type == "cpu"
        idx = torch.multinomial(probs + 1e-12, n, replacement=True,
                                generator=generator if gen_ok else None)
        return idx.to(grid.device)

    def __call__(self, model: Denoiser, batch: Any, generator: torch.Generator | None
                 ) -> tuple[Tensor, dict[str, Any]]:
        x0, cond = self.split(batch)
        sched = model.schedule
        if sched.mean_reverting:
            raise InputError("consistency distillation of mean-reverting schedules is not "
                             "supported (their state is shifted by the observation)")
        if self.jump and not getattr(model, "supports_jump", False):
            raise InputError("jump=True trains the any-to-any jump: the student must be a "
                             f"pydiff.JumpDenoiser, got {type(model).__name__}")
        ref = leaves(x0)[0]
        grid = self.grid(sched, ref.device)
        count = grid.shape[0] - 1
        b = batch_size(x0)
        n = self._levels(sched, grid, b, generator)
        t_hi, t_lo = grid[n], grid[n + 1]
        z = randn_like(x0, generator)
        x_hi = add_noise(sched, x0, t_hi, z)
        if self.jump:  # the jump's end: a grid point at or below t_lo, or clean data
            ext = torch.cat([grid, grid.new_zeros(1)])
            room = (count + 1 - n).to(F64)
            m = n + 1 + (_time_draw(generator, b, ref.device) * room).long()
            m = torch.minimum(m, torch.full_like(m, count + 1))
            s = ext[m]
        if self.target_kind == "solve":
            with torch.no_grad():
                target = self._solve(x_hi, t_hi, sched, cond, generator)
            per = _distance(model.x0(x_hi, t_hi, **cond), target, self.distance, self.huber_c)
            return per.mean(), {"consistency_steps": float(count)}
        target_model = self.target_model(model)
        with torch.no_grad():
            if self.teacher is None:
                x_lo = add_noise(sched, x0, t_lo, z)
            else:
                x_lo = _teacher_steps(self.teacher, x_hi, t_hi, t_lo, self.solver,
                                      self.solver_steps, cond, generator)
            if self.jump:
                target = _to_data(target_model, target_model.jump(x_lo, t_lo, s, **cond), s,
                                  cond)
            else:
                target = target_model.x0(x_lo, t_lo, **cond)
        info: dict[str, Any] = {"consistency_steps": float(count)}
        if self.jump:
            pred = _to_data(target_model, model.jump(x_hi, t_hi, s, **cond), s, cond)
        else:
            pred = model.x0(x_hi, t_hi, **cond)
        per = _distance(pred, target, self.distance, self.huber_c)
        if self.weighting == "ict":
            gap = sched.sigma_tilde(t_hi) - sched.sigma_tilde(t_lo)
            per = per * (1 / gap).to(per.dtype)
        loss = per.mean()
        if self.dsm_weight:
            dsm = _distance(model.x0(x_hi, t_hi, **cond), x0, "l2", None).mean()
            info["dsm"] = dsm.detach()
            loss = loss + self.dsm_weight * dsm
        return loss, info

    def _solve(self, x: State, t: Tensor, schedule: Schedule, cond: dict[str, Any],
               generator: torch.Generator | None) -> State:
        """The teacher's ODE solution from per-sample times ``t`` (``[B]``) to clean data."""
        spacing = self.spacing or schedule.default_spacing or self.solver.default_spacing
        grid = timesteps(schedule, self.solver_steps, spacing, t_start=t, device=t.device)
        bound = self.teacher.bind(**cond) if cond else self.teacher
        return sample(bound, x, self.solver, grid=grid, generator=generator, check_finite=False)

    def __repr__(self) -> str:
        kind = "training" if self.teacher is None else f"teacher solver={self.solver!r}"
        if self.target_kind == "solve":
            kind += f", target='solve' in {self.solver_steps} steps"
        return (f"{type(self).__name__}({kind}, steps={self.steps}, jump={self.jump}, "
                f"distance={self.distance!r}, target_decay={self.target_decay})")


def _to_data(target_model: Denoiser, x_s: State, s: Tensor, cond: dict[str, Any]) -> State:
    """The target network's jump from level ``s`` (``[B]``) to clean data; samples already at
    ``s = 0`` stay (the network is evaluated at ``t_eps`` there and the result discarded, so
    no infinite network time enters the graph)."""
    at_zero = s <= 0
    s_eval = torch.where(at_zero, torch.full_like(s, max(target_model.schedule.t_eps, 1e-5)), s)
    mapped = target_model.evaluate(x_s, s_eval, **cond).x0()
    return tree_map(lambda m, v: torch.where(per_sample(at_zero, v), v, m), mapped, x_s)


class ConsistencyTraining(ConsistencyDistillation):
    """Consistency training without a teacher, with improved consistency training's defaults
    (pseudo-Huber distance, ``steps=(10, 1280)`` doubling over ``total_steps``, log-normal
    levels, ``1 / delta-sigma`` weighting, the student itself as target).

    Example:
        >>> recipe = ConsistencyTraining(total_steps=1000)
        >>> recipe.current_steps()
        10
    """

    def __init__(self, *, steps: int | tuple[int, int] = (10, 1280),
                 total_steps: int | None = None, spacing: str | None = "karras",
                 target_decay: float | None = 0.0, distance: str = "pseudo_huber",
                 weighting: str = "ict", level_sampler: str = "lognormal", **options: Any):
        if not isinstance(steps, int) and total_steps is None:
            raise InputError("ConsistencyTraining's curriculum steps=(start, end) needs "
                             "total_steps (the training length), or give steps as an integer")
        super().__init__(None, steps=steps, total_steps=total_steps, spacing=spacing,
                         target_decay=target_decay, distance=distance, weighting=weighting,
                         level_sampler=level_sampler, **options)


# -- progressive distillation ---------------------------------------------------------------------
class ProgressiveDistillation(_Recipe):
    """One round of progressive distillation: one DDIM step of the student over
    ``[t_i, t_{i+1}]`` of its grid lands where two teacher solver steps (through the midpoint)
    land, so the student samples in half the teacher's steps.

    The grids nest: the teacher's grid of ``2 N`` steps is ``base[::stride]`` and the
    student's ``base[::2 stride]`` of one base grid of ``base_steps`` steps (default
    ``2 N``), so successive rounds halve the same grid; sample the student with
    ``pydiff.sample(student, x_T, "ddim", grid=recipe.student_grid(schedule))``.

    The loss is Salimans & Ho's: squared error on the student's x0 against the x0 that makes
    its DDIM step hit the teacher's result, weighted by ``max(alpha^2 / sigma^2, 1)``
    ("truncated SNR").

    Args:
        teacher: the previous round's model (any :class:`pydiff.Model`).
        student_steps: ``N``, the student's steps this round.
        base_steps: steps of the base grid (a multiple of ``2 N``; default ``2 N``).
        spacing: the base grid's spacing (default: the schedule's, else ``"time"``).
        solver: the teacher's stepper (default DDIM, as in the paper).
        data_key, cond_keys: how batches split into data and conditioning.

    Example:
        >>> import torch, pydiff
        >>> teacher = pydiff.Denoiser(torch.nn.Linear(2, 2), pydiff.VPSchedule())
        >>> ProgressiveDistillation(teacher, 4).student_grid(teacher.schedule).shape
        torch.Size([5])
    """

    def __init__(self, teacher: Model, student_steps: int, *, base_steps: int | None = None,
                 spacing: str | None = None, solver: str | Solver = "ddim",
                 data_key: str | None = None, cond_keys: tuple[str, ...] | None = None,
                 **solver_options: Any):
        super().__init__(None, data_key, cond_keys)
        if not isinstance(teacher, Model):
            raise TypeError(f"teacher must be a pydiff.Model, got {type(teacher).__name__}")
        if student_steps < 1:
            raise InputError(f"student_steps={student_steps}: expected an integer >= 1")
        base_steps = 2 * student_steps if base_steps is None else int(base_steps)
        if base_steps % (2 * student_steps):
            raise InputError(f"base_steps={base_steps} must be a multiple of 2 * student_steps "
                             f"= {2 * student_steps}")
        self.teacher, self.student_steps, self.base_steps = teacher, int(student_steps), base_steps
        if isinstance(getattr(teacher, "net", None), torch.nn.Module):
            teacher.net.eval()
        self.spacing = spacing
        self.solver = get_solver(solver, **solver_options)

    def base_grid(self, schedule: Schedule, device: torch.device | str | None = None) -> Tensor:
        spacing = self.spacing or schedule.default_spacing or "time"
        return timesteps(schedule, self.base_steps, spacing, device=device)

    def teacher_grid(self, schedule: Schedule, device: torch.device | str | None = None) -> Tensor:
        """The teacher's ``2 N``-step grid."""
        return self.base_grid(schedule, device)[::self.base_steps // (2 * self.student_steps)]

    def student_grid(self, schedule: Schedule, device: torch.device | str | None = None) -> Tensor:
        """The student's ``N``-step grid (every other point of the teacher's)."""
        return self.base_grid(schedule, device)[::self.base_steps // self.student_steps]

    def __call__(self, model: Denoiser, batch: Any, generator: torch.Generator | None
                 ) -> Tensor:
        x0, cond = self.split(batch)
        sched = model.schedule
        ref = leaves(x0)[0]
        fine = self.teacher_grid(sched, ref.device)
        b = batch_size(x0)
        i = (_time_draw(generator, b, ref.device) * self.student_steps).long()
        i = i.clamp(max=self.student_steps - 1)
        t, mid, nxt = fine[2 * i], fine[2 * i + 1], fine[2 * i + 2]
        z = randn_like(x0, generator)
        x_t = add_noise(sched, x0, t, z)
        with torch.no_grad():
            bound = self.teacher.bind(**cond) if cond else self.teacher
            x_nxt = sample(bound, x_t, self.solver, grid=torch.stack([t, mid, nxt]),
                           generator=generator, check_finite=False)
            a_t, s_t = sched.alpha(t), sched.sigma(t)
            a_n, s_n = sched.alpha(nxt), sched.sigma(nxt)
            ratio = s_n / s_t
            # DDIM from t to nxt: x_nxt = a_n x0 + s_n (x_t - a_t x0) / s_t; solve for x0
            denom = a_n - ratio * a_t
            target = tree_map(lambda xn, xt: (xn - per_sample(ratio, xt) * xt)
                              / per_sample(denom, xt), x_nxt, x_t)
            weight = (a_t**2 / s_t**2).clamp(min=1.0).float()
        pred = model.x0(x_t, t, **cond)
        return (weight * _distance(pred, target, "l2", None)).mean()

    def __repr__(self) -> str:
        return (f"ProgressiveDistillation(student_steps={self.student_steps}, "
                f"base_steps={self.base_steps}, solver={self.solver!r})")


# -- rectified-flow reflow ------------------------------------------------------------------------
@torch.no_grad()
def reflow_pairs(teacher: Model, n: int, shape: Sequence[int], *, solver: str | Solver = "heun",
                 steps: int = 20, cond: Mapping[str, Tensor] | None = None,
                 batch_size: int = 1024, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, **solver_options: Any
                 ) -> dict[str, Tensor]:
    """``n`` pairs ``(noise z, teacher sample from z)`` for reflow and one-step distillation.

    Args:
        teacher: any :class:`pydiff.Model`; it samples from ``prior(schedule, noise=z)``.
        n: number of pairs.
        shape: one sample's shape (without the batch dimension).
        solver, steps, **solver_options: how the teacher samples.
        cond: per-sample conditioning tensors (first dimension ``n``), passed to the teacher
            and returned with the pairs (a policy's observations).
        batch_size: samples per teacher call.
        generator: draws the noise (and a stochastic solver's noise).
        device: where the pairs are made (default CPU).

    Returns:
        ``{"x0": samples, "noise": z, **cond}``, batches for :class:`ReflowLoss` and
        :class:`OneStepDistillation` (e.g. through :class:`~pydiff.training.BatchLoader`).

    Example:
        >>> import torch, pydiff
        >>> teacher = pydiff.Denoiser(lambda x, t: torch.zeros_like(x), pydiff.FlowSchedule(),
        ...                           prediction="velocity")
        >>> pairs = reflow_pairs(teacher, 6, (2,), steps=2, batch_size=4)
        >>> sorted(pairs), tuple(pairs["x0"].shape)
        (['noise', 'x0'], (6, 2))
    """
    if n < 1 or batch_size < 1:
        raise InputError(f"reflow_pairs needs n >= 1 and batch_size >= 1, got {n}, {batch_size}")
    cond = dict(cond or {})
    for key, value in cond.items():
        if not torch.is_tensor(value) or value.shape[0] != n:
            raise InputError(f"cond[{key!r}] must be a tensor with n={n} rows, got "
                             f"{getattr(value, 'shape', type(value).__name__)}")
    solver = get_solver(solver, **solver_options)
    xs, zs = [], []
    for start in range(0, n, batch_size):
        rows = min(batch_size, n - start)
        z = randn((rows, *shape), generator, device=device)
        x_T = prior(teacher.schedule, z.shape, noise=z)
        part = {k: v[start:start + rows].to(z.device) for k, v in cond.items()}
        model = teacher.bind(**part) if part else teacher
        xs.append(sample(model, x_T, solver, steps, generator=generator).float())
        zs.append(z)
    return {"x0": torch.cat(xs), "noise": torch.cat(zs), **cond}


def _split_pair(split: tuple[State, dict[str, Any]], noise_key: str
                ) -> tuple[State, State, dict[str, Any]]:
    """``(x0, noise, cond)`` of a batch of :func:`reflow_pairs`."""
    x0, cond = split
    noise = cond.pop(noise_key, None)
    if noise is None:
        raise KeyError(f"a batch of pairs needs its noise under {noise_key!r}; got the keys "
                       f"{sorted(cond)} besides the data")
    return x0, noise, cond


class ReflowLoss(DiffusionLoss):
    """The denoising loss on a fixed coupling: each batch's ``x0`` is noised with its paired
    ``noise`` (``x_t = alpha x0 + sigma z``) instead of fresh noise. On pairs from
    :func:`reflow_pairs` this is the reflow of rectified flow (the retrained flow's paths are
    straighter, so fewer steps suffice); any schedule and parameterization works, the
    original uses :class:`pydiff.FlowSchedule` with velocity prediction.

    Example:
        >>> import torch, pydiff
        >>> model = pydiff.Denoiser(lambda x, t: x, pydiff.FlowSchedule(), prediction="velocity")
        >>> batch = {"x0": torch.zeros(4, 2), "noise": torch.ones(4, 2)}
        >>> float(ReflowLoss()(model, batch, torch.Generator().manual_seed(0))) >= 0
        True
    """

    def __init__(self, noise_key: str = "noise", data_key: str = "x0",
                 cond_keys: tuple[str, ...] | None = None, **loss_options: Any):
        super().__init__(data_key, cond_keys, **loss_options)
        self.noise_key = noise_key

    def __call__(self, model: Denoiser, batch: Any, generator: torch.Generator | None) -> Tensor:
        x0, noise, cond = _split_pair(self.split(batch), self.noise_key)
        return diffusion_loss(model, x0, generator=generator, cond=cond, noise=noise,
                              **self.options).loss


class OneStepDistillation(_Recipe):
    """Regress the student's one-step output on teacher pairs (InstaFlow's distillation step):
    ``d(f_student(x_T, t_max), x0)`` with ``x_T = prior(schedule, noise=z)`` and ``f`` the
    Denoiser's x0, so ``pydiff.sample(student, x_T, "ddim", steps=1)`` (or any one-step
    solver) returns it.

    Args:
        distance: ``"l2"`` or ``"pseudo_huber"``.
        noise_key, data_key, cond_keys: how batches (from :func:`reflow_pairs`) split.

    Example:
        >>> import torch, pydiff
        >>> model = pydiff.Denoiser(lambda x, t: x, pydiff.FlowSchedule(), prediction="velocity")
        >>> batch = {"x0": torch.zeros(4, 2), "noise": torch.ones(4, 2)}
        >>> float(OneStepDistillation()(model, batch, None))
        0.0
    """

    def __init__(self, distance: str = "l2", huber_c: float | None = None,
                 noise_key: str = "noise", data_key: str = "x0",
                 cond_keys: tuple[str, ...] | None = None):
        super().__init__(None, data_key, cond_keys)
        self.distance, self.huber_c = _check_distance(distance), huber_c
        self.noise_key = noise_key

    def __call__(self, model: Denoiser, batch: Any, generator: torch.Generator | None) -> Tensor:
        x0, noise, cond = _split_pair(self.split(batch), self.noise_key)
        sched = model.schedule
        x_T = prior(sched, noise.shape, noise=noise)
        pred = model.x0(x_T, sched.t_max, **cond)
        return _distance(pred, x0, self.distance, self.huber_c).mean()


__all__ = [
    "student_from", "ConsistencyDistillation", "ConsistencyTraining", "ProgressiveDistillation",
    "reflow_pairs", "ReflowLoss", "OneStepDistillation", "DISTANCES",
]
