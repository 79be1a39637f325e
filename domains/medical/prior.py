"""The medical image prior: a small fully convolutional 2D diffusion model, and its training.

One network class serves both modalities: :func:`prior_network` builds a
:class:`pydiff.nn.UNet2D` without attention (so any image size works, padded to a multiple of
its stride), wrapped in a :class:`pydiff.Denoiser` with EDM preconditioning. The prior's range
is ``[-1, 1]`` (``-1`` = background, ``1`` = the brightest tissue); :class:`Reconstructor`
maps measured units into it and back.

:func:`train_prior` trains it on :mod:`pydiff.training.procedural` images only (never on the
evaluation images: Shepp-Logan, pydicom's and nibabel's test files), with random crops and
downscaled whole images so the network sees organs at several scales, flips and 90 degree
turns, and a wall-clock budget, so it can run briefly here and for hours on a GPU with the same
code (``pydiff medical train``).

Example:
    >>> import torch
    >>> from pydiff.domains.medical.prior import PriorConfig, prior_model
    >>> model = prior_model(PriorConfig(base_channels=8))
    >>> model.x0(torch.zeros(1, 1, 20, 27), 1.0).shape
    torch.Size([1, 1, 20, 27])
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

import pydiff
from pydiff.nn import UNet2D
from pydiff.training import DiffusionLoss, Trainer
from pydiff.training.procedural import ProceduralImages

Tensor = torch.Tensor

MODALITIES = ("ct", "mri")


@dataclass
class PriorConfig:
    """Training recipe of the shipped priors (``pydiff medical train`` flags override it).

    Attributes:
        modality: ``"ct"`` or ``"mri"`` (recorded in the checkpoint's metadata).
        minutes: wall-clock training budget.
        max_steps: optimizer steps at most (whichever of the two ends first).
        pool: procedural images generated up front (``pool_size`` pixels square).
        crop: training patch side (whole images are downscaled to it, or cropped).
        batch_size, lr, ema: optimisation.
        base_channels, channel_mult, num_res_blocks: the UNet (no attention: fully convolutional).
        seed: the data set's and the trainer's seed.
        threads: torch intra-op threads while training.
    """

    modality: str = "ct"
    minutes: float = 25.0
    max_steps: int = 1_000_000
    pool: int = 1024
    pool_size: int = 128
    crop: int = 48
    batch_size: int = 12
    lr: float = 1e-3
    ema: float = 0.998
    base_channels: int = 16
    channel_mult: tuple[int, ...] = field(default=(1, 2, 2, 2))
    num_res_blocks: int = 1
    seed: int = 0
    threads: int = 1


def prior_model(config: PriorConfig | None = None) -> pydiff.Denoiser:
    """A fresh (untrained) prior: ``UNet2D`` + EDM schedule and preconditioning, x0 prediction."""
    config = config or PriorConfig()
    net = UNet2D(in_channels=1, base_channels=config.base_channels,
                 channel_mult=tuple(config.channel_mult), num_res_blocks=config.num_res_blocks,
                 attn_levels=(), mid_attention=False)
    schedule = pydiff.EDMSchedule(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5)
    return pydiff.Denoiser(net, schedule, prediction="x0", precond="edm", sigma_data=0.5)


class _Augmented:
    """Endless batches from an image pool: random crops or 2x-downscaled whole images, flips,
    90 degree turns; values mapped from ``[0, 1]`` to the prior's ``[-1, 1]``."""

    def __init__(self, pool: Tensor, crop: int, batch_size: int, seed: int):
        self.pool, self.crop, self.batch_size = pool, crop, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def _one(self, img: Tensor, g: torch.Generator) -> Tensor:
        side = img.shape[-1]
        if float(torch.rand((), generator=g)) < 0.5:  # the whole image, downscaled
            scaled = F.interpolate(img[None], size=(self.crop, self.crop), mode="area")[0]
        else:
            oy, ox = (int(torch.randint(0, side - self.crop + 1, (), generator=g))
                      for _ in range(2))
            scaled = img[:, oy:oy + self.crop, ox:ox + self.crop]
        scaled = torch.rot90(scaled, int(torch.randint(0, 4, (), generator=g)), (1, 2))
        if float(torch.rand((), generator=g)) < 0.5:
            scaled = scaled.flip(-1)
        return scaled

    def __iter__(self):
        g = self.generator
        while True:
            idx = torch.randint(0, self.pool.shape[0], (self.batch_size,), generator=g)
            yield torch.stack([self._one(self.pool[i], g) for i in idx.tolist()]) * 2 - 1

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])


def train_prior(config: PriorConfig, output: str | os.PathLike, *,
                progress: bool = True, device: str | None = None) -> pydiff.Denoiser:
    """Train a prior on procedural images within ``config.minutes`` and save it to ``output``.

    ``device="cuda"`` trains on a GPU (the same recipe, longer budgets). Returns the EMA model.
    The checkpoint is a :func:`pydiff.training.save_pretrained` folder
    whose metadata records the recipe, the steps done and the final loss.
    """
    if config.modality not in MODALITIES:
        raise pydiff.InputError(f"modality={config.modality!r}; expected one of {MODALITIES}")
    if config.crop > config.pool_size:
        raise pydiff.InputError(f"--crop {config.crop} must be at most the procedural image "
                                f"size {config.pool_size}")
    before = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        torch.manual_seed(config.seed)
        model = prior_model(config)
        pool = ProceduralImages(config.pool, size=config.pool_size, seed=config.seed).tensor()
        data = _Augmented(pool, config.crop, config.batch_size, config.seed)
        trainer = Trainer(model, data, loss_fn=DiffusionLoss(t_sampler="lognormal"),
                          max_steps=config.max_steps, lr=config.lr, ema=config.ema,
                          lr_scheduler="constant", warmup_steps=200, grad_clip=1.0,
                          seed=config.seed, progress=progress, log_every=50, device=device)
        deadline = time.monotonic() + 60 * config.minutes
        start = time.monotonic()
        while trainer.step < config.max_steps and time.monotonic() < deadline:
            trainer.fit(steps=min(50, config.max_steps - trainer.step))
        losses = [h["loss"] for h in trainer.history if "loss" in h][-10:]
        meta = {"modality": config.modality, "recipe": asdict(config), "steps": trainer.step,
                "train_seconds": round(time.monotonic() - start, 1),
                "final_loss": sum(losses) / max(1, len(losses)) if losses else math.nan,
                "data": "pydiff.training.procedural (no evaluation images)",
                "range": [-1.0, 1.0]}
        trainer.save_pretrained(Path(output), metadata=meta)
        return trainer.ema_model()
    finally:
        torch.set_num_threads(before)


__all__ = ["PriorConfig", "prior_model", "train_prior", "MODALITIES"]
