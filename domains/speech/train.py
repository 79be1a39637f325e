"""The speech training recipe, on :mod:`pydiff.training`.

Two stages, both run by :class:`pydiff.training.Trainer` (no loop here):

1. StoRM's predictive network: MSE between ``PredictiveNet(noisy)`` and the clean spectrogram.
2. The score network with the denoising loss (:func:`pydiff.training.diffusion_loss`, x0
   target, EDM weighting, ``t ~ U(t_eps, 1)``) in the shifted coordinate ``x - mean`` (see
   :mod:`pydiff.domains.speech.model` for why x0 rather than SGMSE+'s eps/score). For half
   of each batch the mean is the noisy spectrogram (SGMSE+), for the other half the frozen
   predictive network's estimate (StoRM), so one score network serves both samplers.

Loudness weighting (``bin_weighting="loudness"``, the default). Both losses are squared errors
in the compressed domain ``c = 0.15 |X|^0.5``, where an error ``dc`` costs ``|dX| ~ c dc`` in
the waveform: a plain MSE gives a loud bin (c ~ 0.4) ~1/25 of the weight the waveform metrics
(SI-SDR, PESQ) give it. Each element is therefore weighted by ``1 + |y|^2 / mean |y|^2`` of
the *noisy* spectrogram ``y`` (per sample). The weight depends only on what the network sees,
so the optimal estimate (the posterior mean per element) is unchanged; capacity moves to loud
bins (measured effect: BENCHMARKS.md, "Speech").

Segments are cut from :func:`pydiff.domains.speech.data.make_pairs` waveforms and turned into
states inside the loss (an STFT per batch is cheap), normalized by the noisy segment's peak.

Example:
    >>> from pydiff.domains.speech.train import TrainConfig, train
    >>> enhancer = train(TrainConfig(utterances=2, predictive_steps=1, score_steps=1,
    ...                              base_channels=4, batch_size=2, progress=False))
    >>> type(enhancer).__name__
    'SpeechEnhancer'
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pydiff.errors import InputError
from pydiff.files import check_output
from pydiff.training import BatchLoader, EDMWeight, Every, Trainer, diffusion_loss

from .data import make_pairs
from .enhancer import SpeechEnhancer
from .model import PredictiveNet, ScoreNet, make_denoiser
from .stft import Spectrogram, peak_normalizer

Tensor = torch.Tensor


@dataclass
class TrainConfig:
    """Recipe knobs.

    The defaults are the one-run form of the shipped checkpoint's recipe (10000 score steps and
    2000 predictive steps; never run in one piece). The shipped checkpoint itself was trained
    in five warm-started stages, recorded under ``metadata["warm_start"]`` and listed with their
    commands and times in BENCHMARKS.md.
    """

    utterances: int = 800
    segment_frames: int = 48
    batch_size: int = 6
    predictive_steps: int = 2000
    score_steps: int = 10000
    lr: float = 2e-3
    base_channels: int = 12
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 1
    storm_fraction: float = 0.5
    seed: int = 0
    threads: int = 1
    progress: bool = True
    snapshot_every: int | None = None  # score steps between EMA snapshots in output/snapshots
    bin_weighting: str = "loudness"  # or "none" (see the module docs)
    sigma_data: float = 0.13  # ScoreNet's EDM data scale: rms of x0 - y under the weighting
    init_from: str | None = None  # a SpeechEnhancer folder to fine-tune (same architecture)
    # the score network's input perturbation gamma, per-sample uniform in the range
    # (pydiff.training.diffusion_loss): robustness to states noisier than their level, which
    # the PC sampler produces (docs/speech.md)
    input_perturbation: float | tuple[float, float] = (0.0, 1.0)


def segments(config: TrainConfig) -> dict[str, Tensor]:
    """Fixed-length (clean, noisy) waveform segments ``[M, L]`` cut from the training split."""
    spec = Spectrogram()
    length = spec.samples(config.segment_frames)
    clean, noisy = [], []
    for pair in make_pairs("train", config.utterances, seed=config.seed):
        n = len(pair.clean)
        # half-overlapping windows; a short utterance becomes one zero-padded segment
        starts = range(0, max(n - length, 0) + 1, length // 2)
        for s in starts:
            c, y = pair.clean[s:s + length], pair.noisy[s:s + length]
            pad = length - len(c)
            clean.append(np.pad(c, (0, pad)))
            noisy.append(np.pad(y, (0, pad)))
    return {"clean": torch.from_numpy(np.stack(clean)), "noisy": torch.from_numpy(np.stack(noisy))}


def batch_states(spec: Spectrogram, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """``(clean, noisy)`` real-view states of a waveform batch, normalized by the noisy peak."""
    norm = peak_normalizer(batch["noisy"])
    return spec.forward(batch["clean"] / norm), spec.forward(batch["noisy"] / norm)


BIN_WEIGHTINGS = ("loudness", "none")


def bin_weights(y: Tensor, kind: str) -> Tensor | None:
    """Per-element loss weights ``[B, 1, F, T]`` of real-view states ``y`` (module docs)."""
    if kind == "none":
        return None
    if kind != "loudness":
        raise InputError(f"bin_weighting must be one of {BIN_WEIGHTINGS}, got {kind!r}")
    power = (y**2).sum(dim=1, keepdim=True)  # |y|^2 of each complex bin
    return 1 + power / power.mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)


class PredictiveLoss:
    """``loss_fn`` of stage 1: (weighted) MSE of the predictive estimate, compressed domain."""

    def __init__(self, spec: Spectrogram, bin_weighting: str = "loudness"):
        self.spec, self.bin_weighting = spec, bin_weighting

    def __call__(self, net: torch.nn.Module, batch: dict[str, Tensor],
                 generator: torch.Generator) -> Tensor:
        x, y = batch_states(self.spec, batch)
        err = (net(y) - x) ** 2
        w = bin_weights(y, self.bin_weighting)
        if w is None:
            return err.mean()
        # a weighted mean per sample, then over the batch, as the core's diffusion_loss does with
        # fractional masks (bin_weights have the same sum in every sample, so this equals the
        # global weighted mean the shipped predictive network was trained with)
        dims = tuple(range(1, err.ndim))
        return ((err * w).sum(dims) / (w.sum(dims) * err.shape[1])).mean()


class ScoreLoss:
    """``loss_fn`` of stage 2: SGMSE+'s denoising loss, mean = noisy or StoRM estimate."""

    def __init__(self, spec: Spectrogram, predictive: torch.nn.Module | None,
                 storm_fraction: float, bin_weighting: str = "loudness",
                 input_perturbation: float | tuple[float, float] = 0.0):
        self.spec, self.predictive, self.storm_fraction = spec, predictive, storm_fraction
        self.bin_weighting, self.input_perturbation = bin_weighting, input_perturbation

    def __call__(self, model: Any, batch: dict[str, Tensor],
                 generator: torch.Generator) -> Tensor:
        x, y = batch_states(self.spec, batch)
        mean = y
        if self.predictive is not None and self.storm_fraction > 0:
            with torch.no_grad():
                estimate = self.predictive(y)
            use = torch.rand(y.shape[0], generator=generator) < self.storm_fraction
            mean = torch.where(use[:, None, None, None], estimate, y)
        # EDM's weighting: with the network's preconditioning, a unit-weight loss on F
        weighting = EDMWeight(model.sigma_data)
        return diffusion_loss(model, x, generator=generator, weighting=weighting,
                              cond={"y": mean, "noisy": y},
                              mask=bin_weights(y, self.bin_weighting),
                              input_perturbation=self.input_perturbation).loss


def train(config: TrainConfig | None = None, output: str | Path | None = None) -> SpeechEnhancer:
    """Train both stages and return (and optionally save) a :class:`SpeechEnhancer`."""
    config = config or TrainConfig()
    if config.bin_weighting not in BIN_WEIGHTINGS:
        raise InputError(f"bin_weighting must be one of {BIN_WEIGHTINGS}, got "
                         f"{config.bin_weighting!r}")
    if output is not None:
        check_output(output, "output", folder=True)  # before training, not after
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)  # initial weights
    spec = Spectrogram()
    started = time.time()
    data = segments(config)
    data_seconds = time.time() - started
    arch = dict(base_channels=config.base_channels, channel_mult=config.channel_mult,
                num_res_blocks=config.num_res_blocks)
    loader = BatchLoader(data, config.batch_size, seed=config.seed)

    predictive = PredictiveNet(**arch)
    score_net = ScoreNet(**arch, sigma_data=config.sigma_data)
    start_metadata = None
    if config.init_from is not None:
        start_metadata = _warm_start(predictive, score_net, config.init_from)
    stage1 = Trainer(predictive, loader, loss_fn=PredictiveLoss(spec, config.bin_weighting),
                     max_steps=config.predictive_steps, lr=config.lr, lr_scheduler="cosine",
                     warmup_steps=10, ema=True, grad_clip=1.0, seed=config.seed,
                     progress=config.progress).fit()
    predictive_ema = stage1.ema_model().eval()

    model = make_denoiser(score_net)
    recipe = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
    callbacks = []
    if config.snapshot_every:
        if output is None:
            raise InputError("snapshot_every needs an output folder")

        def snapshot(trainer: Trainer) -> None:
            # a usable enhancer at intermediate steps: long CPU runs can be judged (and
            # stopped) early with `pydiff speech evaluate --checkpoint output/snapshots/...`
            facts = {"recipe": recipe, "score_steps_done": trainer.step}
            if start_metadata is not None:
                facts["warm_start"] = start_metadata
            SpeechEnhancer(trainer.ema_model().net, predictive_ema, model.schedule, spec,
                           facts).save_pretrained(
                Path(output) / "snapshots" / f"step_{trainer.step:06d}")

        callbacks.append(Every(config.snapshot_every, snapshot, final=False))
    stage2 = Trainer(model, BatchLoader(data, config.batch_size, seed=config.seed + 1),
                     loss_fn=ScoreLoss(spec, predictive_ema, config.storm_fraction,
                                       config.bin_weighting, config.input_perturbation),
                     max_steps=config.score_steps, lr=config.lr, lr_scheduler="cosine",
                     warmup_steps=10, ema=True, grad_clip=1.0, seed=config.seed + 1,
                     callbacks=callbacks, progress=config.progress).fit()
    seconds = time.time() - started
    metadata = {"recipe": recipe, "segments": int(data["clean"].shape[0]),
                "data_seconds": round(data_seconds, 1), "train_seconds": round(seconds, 1),
                "final_loss": {"predictive": _last_loss(stage1), "score": _last_loss(stage2)}}
    if start_metadata is not None:
        metadata["warm_start"] = start_metadata  # provenance: the recipe chain, newest first
    enhancer = SpeechEnhancer(stage2.ema_model().net, predictive_ema, model.schedule, spec,
                              metadata)
    if output is not None:
        enhancer.save_pretrained(output)
    return enhancer


def _warm_start(predictive: torch.nn.Module, score_net: torch.nn.Module,
                path: str) -> dict[str, Any]:
    """Load both networks from the checkpoint at ``path``; returns its metadata."""
    start = SpeechEnhancer.from_pretrained(path)
    if start.predictive_net is None:
        raise InputError(f"init_from={path!r} has no predictive network")
    for name, net, src in [("predictive", predictive, start.predictive_net),
                           ("score", score_net, start.model.net)]:
        try:
            net.load_state_dict(src.state_dict())
        except RuntimeError as err:
            raise InputError(f"init_from={path!r}: its {name} network does not match the "
                             f"recipe's architecture ({err})") from None
    return dict(start.metadata or {})


def _last_loss(trainer: Trainer) -> float | None:
    losses = [row["loss"] for row in trainer.history if "loss" in row]
    return round(losses[-1], 5) if losses else None
