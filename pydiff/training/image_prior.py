"""One recipe for small 2D image priors trained on procedural images.

A :class:`pydiff.nn.UNet2D` (optionally with attention) inside a :class:`pydiff.Denoiser` with
the EDM schedule and preconditioning (x0 prediction, ``sigma_data = 0.5``), trained by the
:class:`~pydiff.training.Trainer` on :mod:`pydiff.training.procedural` images mapped to
``[-1, 1]``, within a wall-clock budget, and saved with :func:`pydiff.training.save_pretrained`
(the recipe, steps, seconds and final loss in the checkpoint's metadata).

Its users keep their own defaults as a subclass of :class:`ImagePriorRecipe`: the medical
reconstruction prior (no attention, so any image size works; whole images downscaled as well as
crops, and 90 degree turns, so organs appear at several scales and orientations) and the
patch-parallel test model (attention at its two coarsest levels and in the middle). The same
code runs for minutes on a CPU and for hours on a GPU (``device="cuda"``).

- :class:`ImagePriorRecipe`: the network, data, augmentation and optimisation settings.
- :func:`image_prior`: a fresh (untrained) model for a recipe.
- :func:`edm_image_denoiser`: the Denoiser (schedule, preconditioning) around a network.
- :class:`ProceduralCrops`: endless resumable augmented batches from an image pool.
- :func:`train_image_prior`: train within the budget and save.

Example:
    >>> import torch
    >>> from pydiff.training.image_prior import ImagePriorRecipe, image_prior
    >>> model = image_prior(ImagePriorRecipe(base_channels=8))
    >>> model.x0(torch.zeros(1, 1, 20, 27), 1.0).shape
    torch.Size([1, 1, 20, 27])
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..denoiser import Denoiser
from ..errors import InputError
from ..nn import ImageDiT, UNet2D
from ..schedules import EDMSchedule
from .losses import DiffusionLoss
from .procedural import ProceduralImages
from .trainer import Trainer

Tensor = torch.Tensor

SIGMA_DATA = 0.5
"""The data's standard deviation the EDM preconditioning assumes (images in ``[-1, 1]``)."""


@dataclass
class ImagePriorRecipe:
    """How an image prior is built and trained (subclass it to change the defaults).

    Attributes:
        minutes: wall-clock training budget; max_steps: optimizer steps at most (whichever
            ends first).
        pool, pool_size: procedural images drawn up front, and their side in pixels.
        crop: training patch side.
        whole: share of training patches that are whole pool images downscaled to ``crop``
            (the rest are random ``crop`` crops).
        turns: random 90 degree turns (besides the left-right flips every patch gets).
        batch_size, lr, warmup_steps, ema, grad_clip: optimisation (AdamW, constant rate
            after a linear warm-up, EMA decay of the saved weights).
        arch: ``"unet"`` (a :class:`~pydiff.nn.UNet2D`) or ``"dit"`` (a
            :class:`~pydiff.nn.ImageDiT` over ``crop`` x ``crop`` images: sample at that size).
        base_channels, channel_mult, num_res_blocks, attn_levels, mid_attention: the UNet2D.
        patch, hidden_dim, depth, num_heads: the ImageDiT.
        seed: the image pool's, the crops' and the trainer's seed.
        threads: torch intra-op threads while training (CPU).
        max_megabytes: the largest checkpoint (float32 weights) the recipe may make; a network
            over it is refused before training starts.
    """

    minutes: float = 25.0
    max_steps: int = 1_000_000
    pool: int = 1024
    pool_size: int = 128
    crop: int = 48
    whole: float = 0.5
    turns: bool = True
    batch_size: int = 12
    lr: float = 1e-3
    warmup_steps: int = 200
    ema: float = 0.998
    grad_clip: float = 1.0
    base_channels: int = 16
    channel_mult: tuple[int, ...] = field(default=(1, 2, 2, 2))
    num_res_blocks: int = 1
    attn_levels: tuple[int, ...] = field(default=())
    mid_attention: bool = False
    arch: str = "unet"
    patch: int = 4
    hidden_dim: int = 96
    depth: int = 4
    num_heads: int = 4
    seed: int = 0
    threads: int = 1
    max_megabytes: float = 16.0

    def check(self) -> None:
        """Raise :class:`pydiff.InputError` naming the first setting out of range."""
        if not self.minutes > 0:
            raise InputError(f"--minutes {self.minutes}: expected > 0")
        if self.crop > self.pool_size:
            raise InputError(f"--crop {self.crop} must be at most the procedural image size "
                             f"{self.pool_size}")
        if not 0.0 <= self.whole <= 1.0:
            raise InputError(f"whole={self.whole}: expected a share in [0, 1]")
        if not 0.0 <= self.ema < 1.0:
            raise InputError(f"--ema {self.ema}: expected a decay in [0, 1)")
        if self.arch not in ("unet", "dit"):
            raise InputError(f"--arch {self.arch!r}: expected 'unet' or 'dit'")
        if self.arch == "dit" and self.crop % self.patch:
            raise InputError(f"--crop {self.crop} must be a multiple of the patch {self.patch}")
        for name in ("max_steps", "pool", "batch_size", "base_channels", "num_res_blocks",
                     "patch", "hidden_dim", "depth", "num_heads"):
            if getattr(self, name) < 1:
                raise InputError(f"{name}={getattr(self, name)}: expected >= 1")


def edm_image_denoiser(net: torch.nn.Module) -> Denoiser:
    """The image priors' Denoiser around ``net``: EDM schedule and preconditioning, x0
    prediction, ``sigma_data = 0.5``.

    Example:
        >>> edm_image_denoiser(torch.nn.Identity()).prediction
        'x0'
    """
    schedule = EDMSchedule(sigma_min=0.002, sigma_max=80.0, sigma_data=SIGMA_DATA)
    return Denoiser(net, schedule, prediction="x0", precond="edm", sigma_data=SIGMA_DATA)


def image_prior(recipe: ImagePriorRecipe | None = None) -> Denoiser:
    """A fresh (untrained) prior for ``recipe``: its UNet2D (or ImageDiT) in
    :func:`edm_image_denoiser`.

    Example:
        >>> image_prior(ImagePriorRecipe(base_channels=8, attn_levels=(3,))).net.config[
        ...     "attn_levels"]
        [3]
    """
    recipe = recipe or ImagePriorRecipe()
    if recipe.arch == "dit":
        return edm_image_denoiser(ImageDiT(1, patch=recipe.patch, hidden_dim=recipe.hidden_dim,
                                           depth=recipe.depth, num_heads=recipe.num_heads))
    net = UNet2D(in_channels=1, base_channels=recipe.base_channels,
                 channel_mult=tuple(recipe.channel_mult), num_res_blocks=recipe.num_res_blocks,
                 attn_levels=tuple(recipe.attn_levels), mid_attention=recipe.mid_attention)
    return edm_image_denoiser(net)


def checkpoint_megabytes(model: Denoiser | torch.nn.Module) -> float:
    """The size of ``model``'s weights as a float32 checkpoint, in MB (10^6 bytes).

    Example:
        >>> round(checkpoint_megabytes(torch.nn.Linear(1000, 1000)), 2)
        4.0
    """
    net = model.net if isinstance(model, Denoiser) else model
    return 4 * sum(t.numel() for t in net.state_dict().values()) / 1e6


class ProceduralCrops:
    """Endless batches of augmented patches from an image pool ``[N, 1, S, S]`` in ``[0, 1]``,
    mapped to ``[-1, 1]``.

    Each patch is, with probability ``whole``, a whole pool image downscaled to ``crop``
    (area averaging), else a random ``crop`` crop; then a random 90 degree turn (``turns``)
    and a left-right flip with probability 1/2. Resumable: the generator state is the whole
    iterator state (:meth:`state_dict`).

    Example:
        >>> pool = torch.rand(4, 1, 32, 32)
        >>> next(iter(ProceduralCrops(pool, crop=16, batch_size=3, seed=0))).shape
        torch.Size([3, 1, 16, 16])
    """

    def __init__(self, pool: Tensor, crop: int, batch_size: int, seed: int, *,
                 whole: float = 0.5, turns: bool = True):
        self.pool, self.crop, self.batch_size = pool, crop, batch_size
        self.whole, self.turns = whole, turns
        self.generator = torch.Generator().manual_seed(seed)

    def _one(self, img: Tensor, g: torch.Generator) -> Tensor:
        side = img.shape[-1]
        if self.whole > 0 and float(torch.rand((), generator=g)) < self.whole:
            patch = F.interpolate(img[None], size=(self.crop, self.crop), mode="area")[0]
        else:
            oy, ox = (int(torch.randint(0, side - self.crop + 1, (), generator=g))
                      for _ in range(2))
            patch = img[:, oy:oy + self.crop, ox:ox + self.crop]
        if self.turns:
            patch = torch.rot90(patch, int(torch.randint(0, 4, (), generator=g)), (1, 2))
        if float(torch.rand((), generator=g)) < 0.5:
            patch = patch.flip(-1)
        return patch

    def __iter__(self):
        g = self.generator
        while True:
            idx = torch.randint(0, self.pool.shape[0], (self.batch_size,), generator=g)
            yield torch.stack([self._one(self.pool[i], g) for i in idx.tolist()]) * 2 - 1

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])


def _warm_start(model: Denoiser, init: str | os.PathLike) -> None:
    """Copy a checkpoint's weights into ``model``; the networks must have the same shapes."""
    from ..pretrained import from_pretrained

    if not Path(init).is_dir():
        raise InputError(f"init={str(init)!r} is not a checkpoint folder")
    start = from_pretrained(init).net.state_dict()
    own = model.net.state_dict()
    if {k: tuple(v.shape) for k, v in start.items()} != {k: tuple(v.shape)
                                                        for k, v in own.items()}:
        raise InputError(f"init={str(init)!r} holds another network than the recipe's: pass "
                         "the same --base-channels (and channel multipliers)")
    model.net.load_state_dict(start)


def train_image_prior(recipe: ImagePriorRecipe, output: str | os.PathLike, *,
                      progress: bool = True, device: str | torch.device | None = None,
                      metadata: dict[str, Any] | None = None,
                      init: str | os.PathLike | None = None) -> Denoiser:
    """Train :func:`image_prior` on procedural images within ``recipe.minutes`` and save it
    to ``output`` (a :func:`pydiff.training.save_pretrained` folder).

    The checkpoint's metadata holds ``metadata`` and the recipe, the steps done, the seconds
    spent, the mean loss of the last logged steps, the data and the range ``[-1, 1]``.
    ``device="cuda"`` trains on a GPU (the pool is still drawn on the CPU). ``init`` (a
    checkpoint folder of the same network) warm-starts from its weights, so training can go on
    in several budgets. Returns the EMA model (on ``device``).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     model = train_image_prior(ImagePriorRecipe(max_steps=2, pool=2, pool_size=16,
        ...                               crop=8, batch_size=2, base_channels=8), d,
        ...                               progress=False)
        >>> type(model.net).__name__
        'UNet2D'
    """
    recipe.check()
    before = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        torch.manual_seed(recipe.seed)
        model = image_prior(recipe)
        if init is not None:
            _warm_start(model, init)
        megabytes = checkpoint_megabytes(model)
        if megabytes > recipe.max_megabytes:
            raise InputError(f"the network's checkpoint would be {megabytes:.1f} MB, over the "
                             f"limit of {recipe.max_megabytes:g} MB: lower --base-channels")
        pool = ProceduralImages(recipe.pool, size=recipe.pool_size, seed=recipe.seed).tensor()
        data = ProceduralCrops(pool, recipe.crop, recipe.batch_size, recipe.seed,
                               whole=recipe.whole, turns=recipe.turns)
        trainer = Trainer(model, data, loss_fn=DiffusionLoss(t_sampler="lognormal"),
                          max_steps=recipe.max_steps, lr=recipe.lr, ema=recipe.ema,
                          lr_scheduler="constant", warmup_steps=recipe.warmup_steps,
                          grad_clip=recipe.grad_clip, seed=recipe.seed, progress=progress,
                          log_every=50, device=device)
        start = time.monotonic()
        trainer.fit(time_budget=60 * recipe.minutes)
        losses = [h["loss"] for h in trainer.history if "loss" in h][-10:]
        meta = {**(metadata or {}), "recipe": asdict(recipe), "steps": trainer.step,
                **({"init": str(init)} if init is not None else {}),
                "train_seconds": round(time.monotonic() - start, 1),
                "final_loss": sum(losses) / len(losses) if losses else None,
                "data": "pydiff.training.procedural", "range": [-1.0, 1.0]}
        trainer.save_pretrained(Path(output), metadata=meta)
        return trainer.ema_model()
    finally:
        torch.set_num_threads(before)


__all__ = ["ImagePriorRecipe", "image_prior", "edm_image_denoiser", "checkpoint_megabytes",
           "ProceduralCrops", "train_image_prior", "SIGMA_DATA"]
