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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..denoiser import Denoiser
from ..errors import InputError
from ..nn import UNet2D
from ..pretrained import from_pretrained
from ..sampling import prior, sample
from ..schedules import EDMSchedule
from ..training.losses import DiffusionLoss
from ..training.procedural import ProceduralImages
from ..training.trainer import Trainer

SHIPPED = Path(__file__).resolve().parent.parent / "training" / "pretrained" / "procedural_attn"
"""The shipped checkpoint (trained by ``pydiff parallel-train``)."""


@dataclass
class PatchModelConfig:
    """Training recipe of the shipped model (``pydiff parallel-train`` flags override it).

    Attributes:
        minutes: wall-clock training budget; max_steps: optimizer steps at most.
        pool, pool_size: procedural images drawn up front, and their side.
        crop: training patch side (random crops of the pool).
        batch_size, lr, ema: optimisation.
        base_channels, channel_mult, attn_levels: the UNet (one residual block per level).
        seed: data and trainer seed; threads: torch threads while training.
    """

    minutes: float = 12.0
    max_steps: int = 1_000_000
    pool: int = 512
    pool_size: int = 96
    crop: int = 64
    batch_size: int = 8
    lr: float = 1e-3
    ema: float = 0.995
    base_channels: int = 16
    channel_mult: tuple[int, ...] = field(default=(1, 2, 2, 2))
    attn_levels: tuple[int, ...] = field(default=(2, 3))
    seed: int = 0
    threads: int = 1


SOLVER = "dpmpp_2m"
"""The solver the parallel command, tests and benchmarks sample the model with."""


def denoiser_for(net: torch.nn.Module) -> Denoiser:
    """The model's Denoiser (EDM schedule and preconditioning, x0 prediction) around ``net``:
    the UNet2D itself or a :class:`~pydiff.parallel.PatchParallel` wrapping it."""
    schedule = EDMSchedule(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5)
    return Denoiser(net, schedule, prediction="x0", precond="edm", sigma_data=0.5)


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
    """A fresh (untrained) model: UNet2D + EDM schedule and preconditioning, x0 prediction.

    Example:
        >>> patch_model(PatchModelConfig(base_channels=8)).net.config["attn_levels"]
        [2, 3]
    """
    config = config or PatchModelConfig()
    net = UNet2D(in_channels=1, base_channels=config.base_channels,
                 channel_mult=tuple(config.channel_mult), num_res_blocks=1,
                 attn_levels=tuple(config.attn_levels))
    return denoiser_for(net)


class _Crops:
    """Endless batches of random crops with flips from a pool, mapped to ``[-1, 1]``
    (resumable: the generator state is the whole iterator state)."""

    def __init__(self, pool: torch.Tensor, crop: int, batch_size: int, seed: int):
        self.pool, self.crop, self.batch_size = pool, crop, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        g, side = self.generator, self.pool.shape[-1]
        while True:
            idx = torch.randint(0, self.pool.shape[0], (self.batch_size,), generator=g)
            offs = torch.randint(0, side - self.crop + 1, (self.batch_size, 2), generator=g)
            flips = torch.rand(self.batch_size, generator=g) < 0.5
            crops = []
            for i, (oy, ox), flip in zip(idx.tolist(), offs.tolist(), flips.tolist()):
                img = self.pool[i, :, oy:oy + self.crop, ox:ox + self.crop]
                crops.append(img.flip(-1) if flip else img)
            yield torch.stack(crops) * 2 - 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


def train_patch_model(config: PatchModelConfig, output: str | os.PathLike, *,
                      progress: bool = True) -> Denoiser:
    """Train the model on procedural images within ``config.minutes``; save it to ``output``
    (a :func:`pydiff.training.save_pretrained` folder recording the recipe). Returns the EMA
    model."""
    if config.crop > config.pool_size:
        raise InputError(f"--crop {config.crop} must be at most the pool image size "
                         f"{config.pool_size}")
    if config.minutes <= 0:
        raise InputError(f"--minutes {config.minutes}: expected > 0")
    before = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        torch.manual_seed(config.seed)
        model = patch_model(config)
        pool = ProceduralImages(config.pool, size=config.pool_size, seed=config.seed).tensor()
        data = _Crops(pool, config.crop, config.batch_size, config.seed)
        trainer = Trainer(model, data, loss_fn=DiffusionLoss(t_sampler="lognormal"),
                          max_steps=config.max_steps, lr=config.lr, ema=config.ema,
                          lr_scheduler="constant", warmup_steps=100, grad_clip=1.0,
                          seed=config.seed, progress=progress, log_every=50)
        start = time.monotonic()
        deadline = start + 60 * config.minutes
        while trainer.step < config.max_steps and time.monotonic() < deadline:
            trainer.fit(steps=min(50, config.max_steps - trainer.step))
        losses = [h["loss"] for h in trainer.history if "loss" in h][-10:]
        meta = {"recipe": asdict(config), "steps": trainer.step,
                "train_seconds": round(time.monotonic() - start, 1),
                "final_loss": sum(losses) / max(1, len(losses)) if losses else math.nan,
                "data": "pydiff.training.procedural", "range": [-1.0, 1.0]}
        trainer.save_pretrained(Path(output), metadata=meta)
        return trainer.ema_model()
    finally:
        torch.set_num_threads(before)


def load_patch_model(path: str | os.PathLike | None = None) -> Denoiser:
    """The shipped model (or the checkpoint at ``path``), in eval mode."""
    model = from_pretrained(SHIPPED if path is None else path)
    model.net.eval()
    return model


__all__ = ["PatchModelConfig", "patch_model", "train_patch_model", "load_patch_model", "SHIPPED",
           "denoiser_for", "sample_image", "psnr", "SOLVER"]
