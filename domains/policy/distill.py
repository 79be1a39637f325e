"""Consistency policies: a trained diffusion policy distilled into a one- or two-step student.

The student is a :class:`~.policy.DiffusionPolicy` of the teacher's architecture, started from
the teacher's weights and normalizers, with ``prediction="v"``: its clean-action estimate at the
noisiest level is the network output itself (the teacher's eps parameterization divides by
``alpha(1) ~ 5e-4`` there, which no one-step map survives), and as the noise level goes to 0
its estimate becomes the input, the boundary condition of a consistency model. It is trained by
the core's :class:`pydiff.training.distill.ConsistencyDistillation` on the teacher's own
training windows, with the teacher's inference model (x0 clipped to the action range) solved
by DDIM as the target, and sampled by the multistep consistency solver: preset ``cp1`` (one
network call per chunk) or ``cp2`` (two).

Example:
    >>> from pydiff.domains.policy import load
    >>> load("pointmass", preset="cp1").config.solver
    'consistency'
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch

from pydiff.errors import InputError

from .policy import DiffusionPolicy

Tensor = torch.Tensor

# Presets that need a consistency student (``load`` picks the shipped ``<env>_consistency``).
CONSISTENCY_PRESETS = ("cp1", "cp2")


def consistency_student(teacher: DiffusionPolicy) -> DiffusionPolicy:
    """An untrained student: the teacher's architecture, weights and normalizers, ``v``
    prediction, consistency sampling in one step.

    Example:
        >>> from pydiff.domains.policy import load
        >>> consistency_student(load("pointmass")).config.prediction
        'v'
    """
    if not isinstance(teacher, DiffusionPolicy):
        raise InputError(f"the teacher must be a DiffusionPolicy, got {type(teacher).__name__}")
    cfg = dataclasses.replace(teacher.config, prediction="v", consistency=True, mode="full",
                              solver="consistency", steps=1)
    student = DiffusionPolicy(cfg, copy.deepcopy(teacher.obs_normalizer),
                              copy.deepcopy(teacher.action_normalizer))
    student.load_state_dict(teacher.state_dict())
    return student


def distill_consistency(teacher: DiffusionPolicy, windows: dict[str, Tensor], *,
                        steps: int = 2000, minutes: float | None = None,
                        batch_size: int = 128, lr: float = 1e-3, consistency_steps: int = 4,
                        target: str = "solve", solver_steps: int = 10,
                        target_decay: float = 0.95, seed: int = 0, progress: bool = True,
                        ) -> tuple[DiffusionPolicy, list[dict[str, float]]]:
    """Distil ``teacher`` into a consistency student on its training ``windows``.

    The default recipe regresses the student's clean-action map at each level of a
    ``consistency_steps``-interval grid (uniform in time on the 100-level table, so 4 intervals
    hold ``t = 1`` and ``t = 0.505``, the levels ``cp1`` and ``cp2`` sample at) on the teacher's
    own DDIM solution from there (``target="solve"``, ``solver_steps`` teacher steps): the
    consistency function by its definition, which a teacher this small computes for every batch.
    ``target="step"`` is the bootstrapped consistency distillation (one teacher step and an EMA
    target network), which needed far more steps than a time budget here allows (BENCHMARKS.md).

    Args:
        teacher: a trained diffusion policy (any prediction; its inference model is the
            teacher, so its ``clip_sample`` applies).
        windows: ``{"observation": [N, To, obs_dim], "action": [N, Tp, A]}`` (unnormalized,
            as ``DiffusionPolicy.for_demonstrations`` returns them).
        steps: optimizer steps at most; ``minutes`` bounds the wall clock.
        batch_size, lr: the optimization (AdamW, constant rate after 100 warm-up steps, so
            stopping at the time budget leaves a usable model).
        consistency_steps: intervals ``N`` of the consistency discretization.
        target: ``"solve"`` or ``"step"`` (see above and
            :class:`pydiff.training.distill.ConsistencyDistillation`).
        solver_steps: the teacher's DDIM steps per target (``"solve"``: from the level to
            clean data; ``"step"``: per interval).
        target_decay: EMA decay of the target network (``target="step"`` only).
        seed: batches, noise and levels.

    Returns:
        The student (eval mode; the EMA of its weights) and the trainer's history.
    """
    from pydiff.training import BatchLoader, Trainer
    from pydiff.training.distill import ConsistencyDistillation

    if minutes is not None and not minutes > 0:
        raise InputError(f"minutes={minutes}: expected a positive time budget")
    teacher = teacher.eval()
    student = consistency_student(teacher)
    with torch.no_grad():
        data = {
            "x0": teacher.action_normalizer.normalize(windows["action"].float())
            .transpose(1, 2).contiguous(),
            "global_cond": teacher._condition(windows["observation"].float()),
        }
    loader = BatchLoader(data, min(batch_size, len(data["x0"])), seed=seed)
    recipe = ConsistencyDistillation(teacher.inference_model(), steps=consistency_steps,
                                     solver="ddim", solver_steps=solver_steps, target=target,
                                     target_decay=target_decay, data_key="x0")
    trainer = Trainer(student.denoiser, loader, loss_fn=recipe, max_steps=steps, lr=lr,
                      weight_decay=1e-6, lr_scheduler="constant",
                      warmup_steps=min(100, steps // 10), ema=True, seed=seed,
                      progress=progress, log_every=50)
    trainer.fit(time_budget=None if minutes is None else 60.0 * minutes)
    student.net.load_state_dict(trainer.ema_model().net.state_dict())
    student.eval().reset()
    return student, trainer.history


def check_student(policy: Any, preset: str, where: Any) -> None:
    """Refuse a consistency preset on a policy that is not a consistency student."""
    if preset in CONSISTENCY_PRESETS and not getattr(policy.config, "consistency", False):
        raise InputError(f"preset {preset!r} samples a consistency student in "
                         f"{preset[-1]} step(s); {where} holds a diffusion policy (make a "
                         "student with `pydiff policy distill`)")


__all__ = ["CONSISTENCY_PRESETS", "consistency_student", "distill_consistency",
           "check_student"]
