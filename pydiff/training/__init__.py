"""Training: losses, timestep samplers, weightings, EMA, the Trainer, checkpoints, pretrained.

- :func:`diffusion_loss` / :class:`DiffusionLoss`: the denoising loss through a
  :class:`pydiff.Denoiser` (targets eps, x0, v, score, velocity; EDM preconditioning;
  mean-reverting schedules; per-position times; dict states).
- :func:`immiscible_noise` (``diffusion_loss(immiscible=True)``): Immiscible Diffusion's
  assignment of a batch's noise to its data by a linear assignment.
- Time samplers: :class:`Uniform`, :class:`LogitNormal`, :class:`LogNormal` (EDM),
  :class:`DiscreteUniform` (DDPM indices), :class:`PerPosition` (independent or ramp).
- Weightings: ``"none"``, ``"snr"``, ``"sigma2"``, ``"min_snr"`` (:class:`MinSNR`), ``"edm"``.
- :class:`EMA` (Diffusion Policy's warmup schedule or a constant decay).
- :class:`Trainer`: any model, any iterable of batches, any ``loss_fn(model, batch,
  generator)``; LR schedules, clipping, bf16 autocast, torchrun data parallelism, exact resume.
- :class:`BatchLoader`, :class:`SampledBatches`, :class:`WeightedBatches`: resumable, per-rank
  sharded batch sources.
- :func:`save_pretrained` / :func:`from_pretrained` (safetensors + versioned JSON config).
- :mod:`pydiff.training.toy`: :class:`~pydiff.training.toy.ToyMLP` and
  :func:`~pydiff.training.toy.train_toy` for demos and tests.
- :mod:`pydiff.training.procedural`: anatomy-like 2D images made from fixed seeds
  (:class:`~pydiff.training.procedural.ProceduralImages`) to train image priors on.
- :mod:`pydiff.training.image_prior`: the one recipe for small 2D image priors on those images
  (:func:`~pydiff.training.image_prior.train_image_prior`; the medical prior and the
  patch-parallel model are its two presets).

Example:
    >>> import torch, pydiff
    >>> from pydiff.testing import GaussianMixture
    >>> from pydiff.training import Trainer, SampledBatches, DiffusionLoss
    >>> from pydiff.training.toy import ToyMLP
    >>> ring = GaussianMixture.ring()
    >>> model = pydiff.Denoiser(ToyMLP(hidden=32), pydiff.FlowSchedule(), prediction="velocity")
    >>> batches = SampledBatches(lambda n, g: ring.sample(n, g).float(), 64)
    >>> trainer = Trainer(model, batches, loss_fn=DiffusionLoss(t_sampler="logit_normal"),
    ...                   max_steps=10, progress=False)
    >>> trainer.fit().step
    10
"""

from ..pretrained import CheckpointError, from_pretrained, load_config, save_pretrained
from .data import BatchLoader, SampledBatches, WeightedBatches
from .distributed import (
    all_reduce_gradients,
    all_reduce_mean,
    broadcast_module,
    dist_info,
    init_distributed,
)
from .ema import EMA
from .immiscible import immiscible_noise
from .losses import DiffusionLoss, LossOutput, diffusion_loss, targets
from .lr import WarmupConstant, WarmupCosine, constant_with_warmup, cosine_with_warmup
from .time_samplers import (
    DiscreteUniform,
    LogitNormal,
    LogNormal,
    PerPosition,
    TimeSampler,
    Uniform,
    default_time_sampler,
    get_time_sampler,
)
from .trainer import BudgetSchedule, Callback, Every, Trainer
from .weighting import EDMWeight, MinSNR, get_weighting, x0_factor

__all__ = [
    "diffusion_loss", "DiffusionLoss", "LossOutput", "targets", "immiscible_noise",
    "TimeSampler", "Uniform", "LogitNormal", "LogNormal", "DiscreteUniform", "PerPosition",
    "default_time_sampler", "get_time_sampler",
    "get_weighting", "MinSNR", "EDMWeight", "x0_factor",
    "EMA", "Trainer", "Callback", "Every", "BudgetSchedule",
    "BatchLoader", "SampledBatches", "WeightedBatches",
    "cosine_with_warmup", "constant_with_warmup", "WarmupCosine", "WarmupConstant",
    "init_distributed", "dist_info", "broadcast_module", "all_reduce_gradients",
    "all_reduce_mean",
    "save_pretrained", "from_pretrained", "load_config", "CheckpointError",
]
