"""Every distillation recipe applied to the shipped 2D ring teacher, in seconds.

:func:`distill_ring` distils :func:`~pydiff.training.toy.ring_flow_teacher` (a rectified flow,
velocity prediction) with each recipe of :mod:`pydiff.training.distill` and returns the
students as :class:`ToyStudent` rows (a model, how it samples, its network evaluations, what
it cost), which ``pydiff demo``, ``benchmarks/distill_toy.py`` and ``docs/distillation.md``
put beside the teacher's solvers:

- ``"cd"``: consistency distillation (Heun teacher steps), sampled by the multistep
  consistency solver at each NFE of ``nfes``.
- ``"cd-solve"``: consistency distillation on the teacher's ODE solution (``target="solve"``:
  each level's target is the teacher's Heun solve to clean data, no target network), sampled
  like ``"cd"``.
- ``"ct"``: consistency training from a freshly initialized network of the same size (no
  teacher), sampled like ``"cd"``.
- ``"pd"``: progressive distillation from the teacher's ``2 max(nfes)``-step Euler grid,
  halving each round down to one step; one student per round.
- ``"reflow"``: reflow on teacher pairs (sampled by Euler at each NFE), then one-step
  distillation of the reflowed flow on the same pairs (``"reflow+1"``).

Example:
    >>> import torch, pydiff
    >>> from pydiff.training.toy_distill import distill_ring
    >>> students = distill_ring(recipes=("cd",), steps=20, nfes=(1, 2))
    >>> [(s.recipe, s.nfe) for s in students]
    [('cd', 1), ('cd', 2)]
    >>> x_T = pydiff.prior(students[0].model.schedule, (8, 2))
    >>> students[0].sample(x_T).shape
    torch.Size([8, 2])
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..denoiser import Denoiser
from ..errors import InputError
from ..sampling import sample
from ..testing import GaussianMixture
from .data import BatchLoader, SampledBatches
from .distill import (
    ConsistencyDistillation,
    ConsistencyTraining,
    OneStepDistillation,
    ProgressiveDistillation,
    ReflowLoss,
    reflow_pairs,
    student_from,
)
from .toy import ToyMLP, ring_flow_teacher
from .trainer import Trainer

TOY_RECIPES = ("cd", "cd-solve", "ct", "pd", "reflow")
RECIPE_NAMES = {"cd": "consistency distillation",
                "cd-solve": "consistency distillation on the teacher's solution",
                "ct": "consistency training",
                "pd": "progressive distillation", "reflow": "reflow",
                "reflow+1": "reflow + one-step distillation"}


@dataclass
class ToyStudent:
    """A distilled model and how it samples.

    Attributes:
        recipe: ``"cd"``, ``"cd-solve"``, ``"ct"``, ``"pd"``, ``"reflow"`` or ``"reflow+1"``.
        model: the student Denoiser.
        solver: the solver it samples with; ``options`` its ``steps=`` or ``grid=``.
        nfe: network evaluations per sample.
        minutes: wall-clock cost of the recipe up to this student (teacher pairs included).
        optimizer_steps: the recipe's optimizer steps up to this student.
    """

    recipe: str
    model: Denoiser
    solver: str
    nfe: int
    minutes: float
    optimizer_steps: int
    options: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def sample(self, x_T: torch.Tensor, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """Samples from the prior draw ``x_T`` (``pydiff.prior(model.schedule, ...)``)."""
        return sample(self.model, x_T, self.solver, generator=generator, **self.options)


def _fit(student: Denoiser, data: Any, loss_fn: Any, steps: int, seed: int, progress: bool
         ) -> Denoiser:
    trainer = Trainer(student, data, loss_fn=loss_fn, max_steps=steps, lr=1e-3, ema=0.99,
                      lr_scheduler="cosine", warmup_steps=max(1, steps // 20), seed=seed,
                      progress=progress, log_every=max(1, steps // 10))
    trained = trainer.fit().ema_model()
    trained.net.eval()
    return trained


def distill_ring(teacher: Denoiser | None = None, *, recipes: Sequence[str] = TOY_RECIPES,
                 steps: int = 600, batch_size: int = 256, nfes: Sequence[int] = (1, 2, 4),
                 pairs: int = 8192, seed: int = 0, progress: bool = False
                 ) -> list[ToyStudent]:
    """Distil ``teacher`` (default: the shipped ring flow) with each recipe.

    Args:
        teacher: a Denoiser of the 2D ring (the data the recipes without pairs draw).
        recipes: a subset of :data:`TOY_RECIPES`.
        steps: optimizer steps per recipe (``"pd"``: split over its rounds; ``"reflow"``:
            this many for the reflow and as many for the one-step distillation; ``"ct"``:
            twice this many, as it starts from scratch).
        batch_size: samples per step.
        nfes: network evaluations to sample the consistency and reflowed students at (the
            largest also sets progressive distillation's first teacher grid, ``2 max``).
        pairs: teacher pairs of the reflow recipe.
        seed: data, noise, initialization.

    Returns:
        One :class:`ToyStudent` per (recipe, NFE).
    """
    unknown = [r for r in recipes if r not in TOY_RECIPES]
    if unknown:
        raise InputError(f"unknown toy recipes {unknown}; expected some of {TOY_RECIPES}")
    if steps < 1 or batch_size < 1 or not nfes or min(nfes) < 1:
        raise InputError(f"distill_ring needs steps, batch_size and nfes >= 1, got {steps}, "
                         f"{batch_size}, {tuple(nfes)}")
    teacher = ring_flow_teacher() if teacher is None else teacher
    ring = GaussianMixture.ring()
    nfes = sorted(set(int(n) for n in nfes))
    rows: list[ToyStudent] = []

    def data() -> SampledBatches:
        return SampledBatches(lambda n, g: ring.sample(n, g).float(), batch_size, seed=seed)

    for recipe in recipes:
        start = time.perf_counter()
        torch.manual_seed(seed)
        if recipe in ("cd", "cd-solve", "ct"):
            if recipe == "cd":
                loss = ConsistencyDistillation(teacher, steps=18, solver="heun")
                student, n_steps = student_from(teacher), steps
            elif recipe == "cd-solve":  # 8 levels, each solved by 5 Heun steps (10 NFE)
                loss = ConsistencyDistillation(teacher, steps=8, solver="heun", solver_steps=5,
                                               target="solve")
                student, n_steps = student_from(teacher), steps
            else:
                n_steps = 2 * steps
                loss = ConsistencyTraining(steps=(10, 160), total_steps=n_steps)
                student = student_from(teacher, net=ToyMLP(**teacher.net.config))
            student = _fit(student, data(), loss, n_steps, seed, progress)
            cost = (time.perf_counter() - start) / 60
            rows += [ToyStudent(recipe, student, "consistency", n, cost, n_steps,
                                {"steps": n}) for n in nfes]
        elif recipe == "pd":
            current, used = teacher, 0
            rounds = max(1, (2 * nfes[-1]).bit_length() - 1)  # 2 max -> max -> ... -> 1
            per_round = max(1, steps // rounds)
            for k in range(rounds - 1, -1, -1):
                loss = ProgressiveDistillation(current, 2**k, solver="euler" if current is
                                               teacher else "ddim")
                current = _fit(student_from(current), data(), loss, per_round, seed, progress)
                used += per_round
                rows.append(ToyStudent("pd", current, "ddim", 2**k,
                                       (time.perf_counter() - start) / 60, used,
                                       {"grid": loss.student_grid(current.schedule)}))
        else:
            coupling = reflow_pairs(teacher, pairs, (2,), solver="heun", steps=10,
                                    generator=torch.Generator().manual_seed(seed))
            loader = BatchLoader(coupling, batch_size, seed=seed)
            flow = _fit(student_from(teacher), loader, ReflowLoss(), steps, seed, progress)
            rows += [ToyStudent("reflow", flow, "euler", n, (time.perf_counter() - start) / 60,
                                steps, {"steps": n}) for n in nfes]
            loader = BatchLoader(coupling, batch_size, seed=seed + 1)
            one = _fit(student_from(flow), loader, OneStepDistillation(), steps, seed, progress)
            rows.append(ToyStudent("reflow+1", one, "ddim", 1,
                                   (time.perf_counter() - start) / 60, 2 * steps,
                                   {"steps": 1}))
    return rows


__all__ = ["ToyStudent", "distill_ring", "TOY_RECIPES", "RECIPE_NAMES"]
