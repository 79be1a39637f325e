"""The shipped patch-parallel test model: a small UNet2D with attention, trained on procedural
images, and its training recipe (``pydiff parallel-train``).

The stale-activation modes (``displaced``, ``partial``) approximate the network; how close they
come is only meaningful on a trained network (a random one has no smooth denoising
trajectory for the previous step's activations to stay close to). The medical prior has no
attention, which leaves the K/V exchanges untested, so this model has self-attention at its two
coarsest levels and in the middle: the exchange a patch-parallel attention model pays for.

Example:
    >>> from pydiff.parallel.model import load_patch_model
    >>> model = load_patch_model()
    >>> type(model.net).__name__, model.prediction
    ('UNet2D', 'x0')
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..denoiser import Denoiser
from ..pretrained import from_pretrained
from ..sampling import prior, sample
from ..training.image_prior import (
    ImagePriorRecipe,
    edm_image_denoiser,
    image_prior,
    train_image_prior,
)

_PRETRAINED = Path(__file__).resolve().parent.parent / "training" / "pretrained"
SHIPPED = _PRETRAINED / "procedural_attn"
"""The shipped UNet2D checkpoint (trained by ``pydiff parallel-train``)."""
SHIPPED_DIT = _PRETRAINED / "procedural_dit"
"""The shipped ImageDiT checkpoint (trained by ``pydiff parallel-train --arch dit``), for
64 x 64 samples (its training crops: a DiT's 1D positions fix the width)."""


@dataclass
class PatchModelConfig(ImagePriorRecipe):
    """Training recipe of the shipped model (``pydiff parallel-train`` flags override it): the
    core's :class:`~pydiff.training.image_prior.ImagePriorRecipe` with attention at the two
    coarsest levels and in the middle, plain crops with flips (no downscaled whole images, no
    turns), a smaller pool and larger crops."""

    minutes: float = 12.0
    pool: int = 512
    pool_size: int = 96
    crop: int = 64
    whole: float = 0.0
    turns: bool = False
    batch_size: int = 8
    warmup_steps: int = 100
    ema: float = 0.995
    attn_levels: tuple[int, ...] = field(default=(2, 3))
    mid_attention: bool = True


@dataclass
class PatchDiTConfig(PatchModelConfig):
    """Training recipe of the shipped DiT (``pydiff parallel-train --arch dit``): the same
    images and crops as :class:`PatchModelConfig`, a :class:`~pydiff.nn.ImageDiT` over 4 x 4
    patches (256 tokens per 64 x 64 crop), a lower learning rate and a longer warm-up (a
    transformer)."""

    arch: str = "dit"
    patch: int = 4
    hidden_dim: int = 96
    depth: int = 4
    num_heads: int = 4
    lr: float = 5e-4
    warmup_steps: int = 200


SOLVER = "dpmpp_2m"
"""The solver the parallel command, tests and benchmarks sample the model with."""


def denoiser_for(net: torch.nn.Module) -> Denoiser:
    """The model's Denoiser (EDM schedule and preconditioning, x0 prediction) around ``net``:
    the UNet2D itself or a :class:`~pydiff.parallel.PatchParallel` wrapping it."""
    return edm_image_denoiser(net)


def sample_image(net: torch.nn.Module, size: int, steps: int, seed: int,
                 solver: str = SOLVER, device: str | torch.device = "cpu") -> torch.Tensor:
    """One ``[1, 1, size, size]`` sample of the model around ``net``, noise drawn full-size
    from ``seed`` on the CPU (the same on every rank and device), then moved to ``device``. A
    :class:`~pydiff.parallel.PatchParallel` is reset before and after, so every sampling is
    reproducible.

    Example:
        >>> net = load_patch_model().net
        >>> sample_image(net, 16, 2, seed=0).shape
        torch.Size([1, 1, 16, 16])
    """
    model = denoiser_for(net)
    x_T = prior(model.schedule, (1, 1, size, size), generator=torch.Generator().manual_seed(seed))
    x_T = x_T.to(device)  # drawn on the CPU: the same noise on every device
    reset = getattr(net, "reset", None)
    if reset is not None:
        reset()
    with torch.no_grad():
        x = sample(model, x_T, solver, steps=steps)
    if reset is not None:
        reset()
    return x


def psnr(x: torch.Tensor, reference: torch.Tensor) -> float | None:
    """PSNR of ``x`` against ``reference`` in dB, the peak being the reference's range;
    ``None`` when they are identical.

    Example:
        >>> psnr(torch.ones(4), torch.ones(4)) is None
        True
    """
    mse = float(((x.double() - reference.double()) ** 2).mean())
    if mse == 0.0:
        return None
    peak = float(reference.max() - reference.min())
    return 10.0 * math.log10(peak * peak / mse)


def patch_model(config: PatchModelConfig | None = None) -> Denoiser:
    """A fresh (untrained) model: UNet2D (or, with :class:`PatchDiTConfig`, ImageDiT) + EDM
    schedule and preconditioning, x0 prediction.

    Example:
        >>> patch_model(PatchModelConfig(base_channels=8)).net.config["attn_levels"]
        [2, 3]
    """
    return image_prior(config or PatchModelConfig())


def train_patch_model(config: PatchModelConfig, output: str | os.PathLike, *,
                      progress: bool = True) -> Denoiser:
    """Train the model on procedural images within ``config.minutes`` (the core recipe,
    :func:`pydiff.training.image_prior.train_image_prior`); save it to ``output`` (a
    :func:`pydiff.training.save_pretrained` folder recording the recipe). Returns the EMA
    model."""
    return train_image_prior(config, output, progress=progress)


def load_patch_model(path: str | os.PathLike | None = None) -> Denoiser:
    """The shipped UNet2D model (or the checkpoint at ``path``: ``SHIPPED_DIT`` for the
    shipped DiT), in eval mode."""
    model = from_pretrained(SHIPPED if path is None else path)
    model.net.eval()
    return model


__all__ = ["PatchModelConfig", "PatchDiTConfig", "SHIPPED_DIT", "patch_model",
           "train_patch_model", "load_patch_model", "SHIPPED", "denoiser_for", "sample_image",
           "psnr", "SOLVER"]
