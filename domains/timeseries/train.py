"""The TSDiff training recipe, on :mod:`pydiff.training` (no loop here).

Windows of ``context + horizon`` points are cut from every training series
(:func:`pydiff.domains.timeseries.data.make_windows`: mean scaling by the context, NaN filled
for the input and masked out of the loss) and the unconditional model learns them with the
core's denoising loss (:func:`pydiff.training.diffusion_loss`: x0 target, EDM weighting) under
:class:`pydiff.training.Trainer` (AdamW, warmup, gradient clipping, EMA).

``balance``: ``"series"`` (the default) draws every batch row from a series chosen uniformly,
then a window of it (:class:`pydiff.training.WeightedBatches`), as GluonTS's instance sampler
weighs each series alike; ``"windows"`` shuffles all windows alike, so long series dominate
(a 1300-point hourly series has a hundred times the windows of a 130-quarter macro series).

``time_budget`` bounds the wall clock (window preparation included): the trainer stops after the
step that crosses it (the learning rate is constant after warmup, so stopping early leaves a
consistent model; the EMA weights are the ones returned).

Example:
    >>> from pydiff.domains.timeseries.data import synthetic_series
    >>> from pydiff.domains.timeseries.train import TrainConfig, train
    >>> series = [s.to_numpy() for s in synthetic_series(2).values()]
    >>> model = train(series, TrainConfig(context=24, horizon=8, steps=2, channels=8, blocks=2,
    ...                                   batch_size=4, progress=False))
    >>> model.context_length, model.prediction_length
    (24, 8)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pydiff.errors import InputError
from pydiff.files import check_output
from pydiff.training import BatchLoader, Trainer, WeightedBatches, diffusion_loss

from .conditional import CSDI, ConditionalLoss
from .data import make_windows
from .forecaster import TSDiff
from .model import CSDINet, TSDiffNet, make_denoiser

Tensor = torch.Tensor
KINDS = ("tsdiff", "csdi")
BALANCES = ("series", "windows")


@dataclass
class TrainConfig:
    """Recipe knobs (the shipped checkpoint's recipe is stored in its metadata).

    ``kind``: ``"tsdiff"`` (the unconditional window model, :class:`TSDiff`) or ``"csdi"``
    (the conditional model, :class:`~pydiff.domains.timeseries.conditional.CSDI`);
    ``residual`` (csdi only): the model learns the residual over the linear interpolation of
    the observed values (:func:`~pydiff.domains.timeseries.conditional.frame`).
    """

    kind: str = "tsdiff"
    context: int = 96
    horizon: int = 24
    stride: int = 2
    steps: int = 4000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    channels: int = 64
    blocks: int = 6
    lags: tuple[int, ...] = (7, 12, 24, 52)
    balance: str = "series"  # "series": each series alike; "windows": each window alike
    # csdi: diffuse the residual over the linear interpolation of the conditioning values
    residual: bool = True
    seed: int = 0
    threads: int = 1
    time_budget: float | None = None  # seconds of training (None: all steps)
    progress: bool = True
    sampling: dict[str, Any] = field(default_factory=dict)  # stored sampling defaults


class WindowLoss:
    """``loss_fn`` of the Trainer: the denoising loss on observed window positions."""

    def __call__(self, model: Any, batch: dict[str, Tensor],
                 generator: torch.Generator) -> Tensor:
        return diffusion_loss(model, batch["values"], generator=generator,
                              mask=batch["mask"]).loss


def _arrays(series: Iterable[Any] | Mapping[str, Any]) -> list[np.ndarray]:
    items = series.values() if isinstance(series, Mapping) else series
    out = []
    for s in items:
        if isinstance(s, dict):  # a GluonTS entry
            s = s["target"]
        out.append(np.asarray(s.to_numpy() if isinstance(s, pd.Series) else s,
                              dtype=np.float64))
    return out


def train(series: Iterable[Any] | Mapping[str, Any], config: TrainConfig | None = None,
          output: str | Path | None = None) -> TSDiff:
    """Train a :class:`TSDiff` on ``series`` (arrays, ``pd.Series``, GluonTS entries, or a
    dict of them) and return it (saved to ``output`` when given)."""
    config = config or TrainConfig()
    if output is not None:
        check_output(output, "output", folder=True)  # before training, not after
    if config.kind not in KINDS:
        raise InputError(f"kind must be one of {KINDS}, got {config.kind!r}")
    if config.balance not in BALANCES:
        raise InputError(f"balance must be one of {BALANCES}, got {config.balance!r}")
    if config.time_budget is not None and not config.time_budget > 0:
        raise InputError(f"time_budget must be > 0 seconds, got {config.time_budget}")
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)  # initial weights
    started, cpu_started = time.time(), time.process_time()
    data = make_windows(_arrays(series), config.context, config.horizon, config.stride)
    windows = int(data["values"].shape[0])
    batch = min(config.batch_size, windows)
    conditional = config.kind == "csdi"
    net = (CSDINet(channels=config.channels, blocks=config.blocks, lags=config.lags,
                   residual=config.residual) if conditional
           else TSDiffNet(channels=config.channels, blocks=config.blocks, lags=config.lags))
    model = make_denoiser(net)
    rows = {"values": data["values"], "mask": data["mask"]}
    batches = (WeightedBatches(rows, WeightedBatches.group_weights(data["series"]), batch,
                               seed=config.seed) if config.balance == "series"
               else BatchLoader(rows, batch, seed=config.seed))
    trainer = Trainer(model, batches,
                      loss_fn=ConditionalLoss(config.horizon) if conditional else WindowLoss(),
                      max_steps=config.steps, lr=config.lr,
                      lr_scheduler="constant", warmup_steps=config.warmup_steps, ema=True,
                      grad_clip=1.0, seed=config.seed, progress=config.progress)
    budget = None  # what the window preparation left of the budget (at least one step runs)
    if config.time_budget is not None:
        budget = max(config.time_budget - (time.time() - started), 1e-3)
    trainer.fit(time_budget=budget)
    losses = [row["loss"] for row in trainer.history if "loss" in row]
    recipe = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()
              if k != "sampling"}
    metadata: dict[str, Any] = {"recipe": recipe, "windows": windows, "series": len(
        _arrays(series)), "steps_done": trainer.step,
        "train_seconds": round(time.time() - started, 1),
        # CPU seconds of this process: what a shared machine's load does not change
        "train_cpu_seconds": round(time.process_time() - cpu_started, 1),
        "final_loss": round(float(np.mean(losses[-10:])), 5) if losses else None}
    if config.sampling:
        metadata["sampling"] = dict(config.sampling)
    result = (CSDI if conditional else TSDiff)(trainer.ema_model(), config.context,
                                               config.horizon, metadata)
    if output is not None:
        result.save_pretrained(output)
    return result


__all__ = ["TrainConfig", "WindowLoss", "train", "BALANCES"]
