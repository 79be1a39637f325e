"""The medical image prior: the core's procedural-image prior with the medical defaults.

One network serves both modalities: :func:`prior_model` builds the core's
:func:`pydiff.training.image_prior.image_prior` (a :class:`pydiff.nn.UNet2D` without attention,
so any image size works, padded to a multiple of its stride, in a :class:`pydiff.Denoiser` with
EDM preconditioning). The prior's range is ``[-1, 1]`` (``-1`` = background, ``1`` = the
brightest tissue); :class:`Reconstructor` maps measured units into it and back.

:func:`train_prior` runs the core recipe
(:func:`pydiff.training.image_prior.train_image_prior`) on :mod:`pydiff.training.procedural`
images only (never on the evaluation images: Shepp-Logan, pydicom's and nibabel's test files),
with random crops and downscaled whole images so the network sees organs at several scales,
flips and 90 degree turns, and a wall-clock budget, so it can run briefly here and for hours on
a GPU with the same code (``pydiff medical train``).

Example:
    >>> import torch
    >>> from pydiff.domains.medical.prior import PriorConfig, prior_model
    >>> model = prior_model(PriorConfig(base_channels=8))
    >>> model.x0(torch.zeros(1, 1, 20, 27), 1.0).shape
    torch.Size([1, 1, 20, 27])
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pydiff
from pydiff.training.image_prior import ImagePriorRecipe, image_prior, train_image_prior

MODALITIES = ("ct", "mri")


@dataclass
class PriorConfig(ImagePriorRecipe):
    """Training recipe of the shipped priors (``pydiff medical train`` flags override it): the
    core's :class:`~pydiff.training.image_prior.ImagePriorRecipe` defaults (no attention, half
    the patches whole downscaled images, 90 degree turns) plus the modality.

    Attributes:
        modality: ``"ct"`` or ``"mri"`` (recorded in the checkpoint's metadata).
    """

    modality: str = "ct"


def prior_model(config: PriorConfig | None = None) -> pydiff.Denoiser:
    """A fresh (untrained) prior: ``UNet2D`` + EDM schedule and preconditioning, x0 prediction."""
    return image_prior(config or PriorConfig())


def train_prior(config: PriorConfig, output: str | os.PathLike, *,
                progress: bool = True, device: str | None = None,
                init: str | os.PathLike | None = None) -> pydiff.Denoiser:
    """Train a prior on procedural images within ``config.minutes`` and save it to ``output``.

    ``device="cuda"`` trains on a GPU (the same recipe, longer budgets); ``init`` (a checkpoint
    folder of the same network, e.g. the shipped prior) continues from its weights. Returns the
    EMA model.
    The checkpoint is a :func:`pydiff.training.save_pretrained` folder whose metadata records
    the modality, the recipe, the steps done and the final loss.
    """
    if config.modality not in MODALITIES:
        raise pydiff.InputError(f"modality={config.modality!r}; expected one of {MODALITIES}")
    return train_image_prior(config, output, progress=progress, device=device, init=init,
                             metadata={"modality": config.modality,
                                       "evaluation_images_seen": False})


__all__ = ["PriorConfig", "prior_model", "train_prior", "MODALITIES"]
