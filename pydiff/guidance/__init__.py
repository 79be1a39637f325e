"""Guidance: wrappers that turn a model into another model, and consistency hooks.

Wrappers (each is a :class:`pydiff.Model` wrapping a Model, so they nest and every solver
accepts them; see :mod:`pydiff.guidance.base`):

- :class:`ClassifierFreeGuidance` (one batched forward, per-sample scales, rescaled CFG);
- :class:`DynamicThresholding`, :class:`ClipX0`, :class:`ProjectX0` (projections of x0-hat);
- :class:`GradientGuidance`, :class:`MeasurementGuidance` (DPS), :class:`RewardGuidance`
  (value guidance), :class:`SelfGuidance` (TSDiff): gradients of an objective of x0-hat.

Variational: :func:`red_diff` (RED-diff: the image fitted by Adam with the denoiser's noise
residual as the regulariser's gradient; no backpropagation through the network).

Total variation (:mod:`pydiff.guidance.tv`): :func:`tv_pdhg`, TV-regularised least squares by
PDHG for a linear operator, optionally anchored at an image (a TV refinement of a diffusion
reconstruction).

Refinement: :func:`refine` (TSDiff's energy-based refinement: Langevin dynamics on the
denoising loss at one level plus an observation energy such as :func:`pinball_energy`, started
from another model's samples).

Joint models (continuous and categorical entries): :class:`JointGradientGuidance` (gradient
guidance of the continuous entries by an objective of the whole clean estimate).

Derivative-free guidance: :class:`SVDD` (a solver wrapper: each step's candidate next states
resampled by a reward of their clean estimates, no gradient needed).

Model superposition: :class:`SuperDiff` (a solver wrapper: AND / OR of several models'
densities, with per-sample weights from the Itô density estimator) around the models of a
:class:`Superposition`.

Post-step hooks: :class:`DataConsistency` (hard data consistency),
:class:`pydiff.hooks.InpaintReplace` (replacement); RePaint's jumps are a solver,
:class:`pydiff.solvers.Resampling` (also importable from here).

Composition is nesting; gradient guidance goes outermost (it needs the batch of B samples that
classifier-free guidance doubles internally)::

    model = MeasurementGuidance(
        ClassifierFreeGuidance(DynamicThresholding(base), scale=4.0, uncond={"label": null}),
        operator=A, measurement=y, step="dps", scale=1.0).bind(label=labels)
    x = pydiff.sample(model, x_T, "ddim", steps=50)

Example:
    >>> import torch, pydiff
    >>> from pydiff.guidance import ClassifierFreeGuidance, DynamicThresholding, RewardGuidance
    >>> sched = pydiff.schedules.DiscreteSchedule.linear()
    >>> net = lambda x, t, label: 0.1 * x + label[:, None]
    >>> base = pydiff.Denoiser(net, sched, prediction="eps")
    >>> cfg = ClassifierFreeGuidance(DynamicThresholding(base), 2.0, {"label": torch.zeros(1)})
    >>> model = RewardGuidance(cfg, lambda x0: -x0.pow(2).sum(1), scale=0.1).bind(
    ...     label=torch.ones(4))
    >>> with torch.no_grad():
    ...     x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    ...     x = pydiff.sample(model, x_T, "ddim", steps=10)
    >>> x.shape
    torch.Size([4, 2])
"""

from __future__ import annotations

from ..solvers.resampling import Resampling
from .base import Guided
from .cfg import ClassifierFreeGuidance
from .consistency import DataConsistency
from .gradient import (
    GradientGuidance,
    MeasurementGuidance,
    RewardGuidance,
    SelfGuidance,
    gaussian_posterior_variance,
)
from .joint import JointGradientGuidance
from .refine import diffusion_energy, pinball_energy, refine
from .superdiff import SuperDiff, Superposition
from .svdd import SVDD
from .thresholding import ClipX0, DynamicThresholding, ProjectX0
from .tv import tv_pdhg
from .variational import red_diff

__all__ = ["Guided", "ClassifierFreeGuidance", "DynamicThresholding", "ClipX0", "ProjectX0",
           "GradientGuidance", "MeasurementGuidance", "RewardGuidance", "SelfGuidance",
           "gaussian_posterior_variance", "DataConsistency", "Resampling", "red_diff", "SVDD",
           "refine", "diffusion_energy", "pinball_energy", "JointGradientGuidance", "SuperDiff",
           "Superposition", "tv_pdhg"]
