"""Networks of the speech domain: the SGMSE+ score network and StoRM's predictive network.

- :class:`ScoreNet`: a small NCSN++-style :class:`pydiff.nn.UNet2D` on real-view spectrograms,
  the raw network ``F`` of an x0 prediction with EDM preconditioning. Besides the state it sees
  the process mean ``y`` and the noisy spectrogram ``noisy``. For SGMSE+ the mean is the noisy
  spectrogram itself; for StoRM it is the predictive network's estimate, so one network serves
  both.

  Parameterization. In the shifted coordinate ``s = x - y`` the process is
  ``s / alpha = (x0 - y) + (sigma / alpha) z``, a variance-exploding process with
  ``sigma~ = sigma / alpha`` from 0.04 (``t_eps``) to 1.2 (``t = 1``) and data ``x0 - y`` of rms
  ~0.07 (compressed, peak-normalized spectrograms; 0.13 under the training's loudness weighting,
  which the shipped checkpoint uses as ``sigma_data``). Karras et al.'s (EDM) preconditioning in
  that coordinate (a skip connection plus a scaled network ``F`` of the scaled input and
  ``ln(sigma~) / 4``, conditioned on ``y`` and the noisy input) makes even an untrained ``F``
  give the linear (Wiener) estimate and gives ``F``'s target unit scale at every noise level.
  The core applies it: :func:`make_denoiser` wraps the network in
  ``pydiff.Denoiser(precond="edm")``, which preconditions mean-reverting processes in exactly
  this shifted coordinate.

  Why not SGMSE+'s ``-sigma * score`` (eps) output: here the noise never falls far below the
  data, and at ``t = 1`` ``x0 = (x - sigma eps) / alpha`` multiplies eps errors by 1.25. A
  first checkpoint trained with the eps loss reached an x0 error several times the signal, and
  every sampler lost SI-SDR (docs/speech.md). The Denoiser converts the x0 output to eps and to
  the score for the solvers (the PC corrector uses ``(alpha x0 - x) / sigma^2``).
- :class:`PredictiveNet`: a UNet2D that maps the noisy spectrogram to a clean estimate (a
  residual correction), trained with MSE; StoRM starts its short diffusion from it.
- :func:`make_denoiser`: the :class:`pydiff.Denoiser` that solvers and losses use.

Example:
    >>> import torch
    >>> from pydiff.domains.speech.model import ScoreNet, make_denoiser
    >>> net = ScoreNet(base_channels=8, channel_mult=(1, 2))
    >>> model = make_denoiser(net)
    >>> y = torch.randn(1, 2, 256, 16)
    >>> model.x0(torch.zeros_like(y), 0.5, y=y, noisy=y).shape
    torch.Size([1, 2, 256, 16])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pydiff import Denoiser
from pydiff.nn import UNet2D
from pydiff.schedules import schedule_from_config

from .stft import sgmse_schedule

Tensor = torch.Tensor


def _unet(in_channels: int, cond_channels: int, base_channels: int,
          channel_mult: Sequence[int], num_res_blocks: int,
          attn_levels: Sequence[int] | None) -> UNet2D:
    # column (time-frame) local normalization and no global middle attention: the output at a
    # frame depends only on frames within the receptive field, so overlapping chunks agree with
    # whole-file processing
    return UNet2D(in_channels=in_channels, out_channels=2, cond_channels=cond_channels,
                  base_channels=base_channels, channel_mult=tuple(channel_mult),
                  num_res_blocks=num_res_blocks,
                  attn_levels=None if attn_levels is None else tuple(attn_levels),
                  time_embedding="fourier", norm_axes="h", mid_attention=False)


class ScoreNet(nn.Module):
    """The raw network ``F`` of the speech Denoiser (EDM preconditioning by the core; module docs).

    ``forward(x, t, y, noisy=None) -> F``: the preconditioned shifted state ``x = c_in (x - y) /
    alpha`` and the other spectrograms ``[B, 2, F, T]``, and EDM's noise input ``t =
    ln(sigma~) / 4`` (``[B]``), as ``pydiff.Denoiser(precond="edm")`` calls it; ``noisy``
    defaults to ``y`` (SGMSE+). ``schedule`` is the config of the diffusion schedule (default
    SGMSE+'s); ``sigma_data`` the rms of ``x0 - y``; ``cond_scale`` scales ``y`` and ``noisy``
    to about unit rms. ``config`` holds the constructor kwargs.
    """

    def __init__(self, base_channels: int = 12, channel_mult: Sequence[int] = (1, 2, 2, 2),
                 num_res_blocks: int = 1, attn_levels: Sequence[int] | None = (),
                 sigma_data: float = 0.07, cond_scale: float = 10.0,
                 schedule: dict[str, Any] | None = None):
        super().__init__()
        if sigma_data <= 0 or cond_scale <= 0:
            raise ValueError(f"sigma_data and cond_scale must be > 0, got {sigma_data}, "
                             f"{cond_scale}")
        self.schedule = schedule_from_config(schedule or sgmse_schedule().config())
        if not self.schedule.mean_reverting:
            raise ValueError(f"ScoreNet needs a mean-reverting schedule, got {schedule}")
        self.sigma_data, self.cond_scale = float(sigma_data), float(cond_scale)
        self.config: dict[str, Any] = dict(base_channels=base_channels,
                                           channel_mult=list(channel_mult),
                                           num_res_blocks=num_res_blocks,
                                           attn_levels=None if attn_levels is None
                                           else list(attn_levels),
                                           sigma_data=self.sigma_data,
                                           cond_scale=self.cond_scale,
                                           schedule=self.schedule.config())
        self.unet = _unet(2, 4, base_channels, channel_mult, num_res_blocks, attn_levels)

    def forward(self, x: Tensor, t: Tensor, y: Tensor, noisy: Tensor | None = None) -> Tensor:
        noisy = y if noisy is None else noisy
        cond = torch.cat([y, noisy], dim=1) * self.cond_scale
        return self.unet(x, t.to(x.dtype), cond=cond)


class PredictiveNet(nn.Module):
    """StoRM's predictive stage: ``estimate = noisy + UNet(noisy)`` (one pass, no noise).

    ``forward(noisy)`` with ``noisy [B, 2, F, T]``. ``config`` holds the constructor kwargs.
    """

    def __init__(self, base_channels: int = 16, channel_mult: Sequence[int] = (1, 2, 2, 2),
                 num_res_blocks: int = 1, attn_levels: Sequence[int] | None = ()):
        super().__init__()
        self.config: dict[str, Any] = dict(base_channels=base_channels,
                                           channel_mult=list(channel_mult),
                                           num_res_blocks=num_res_blocks,
                                           attn_levels=None if attn_levels is None
                                           else list(attn_levels))
        self.unet = _unet(2, 0, base_channels, channel_mult, num_res_blocks, attn_levels)

    def forward(self, noisy: Tensor) -> Tensor:
        # the UNet needs a time input; the predictive map has none, so it always sees t = 0
        t = torch.zeros(noisy.shape[0], dtype=noisy.dtype, device=noisy.device)
        return noisy + self.unet(noisy, t)


def make_denoiser(net: ScoreNet) -> Denoiser:
    """The Denoiser of a :class:`ScoreNet`: x0 prediction with EDM preconditioning.

    The schedule is the network's (default :func:`pydiff.domains.speech.stft.sgmse_schedule`,
    SGMSE+'s OUVE in real-view units), ``sigma_data`` the network's. Pass ``y`` (the process
    mean) and ``noisy`` as conditioning.
    """
    return Denoiser(net, net.schedule, prediction="x0", precond="edm", time_input="log_sigma",
                    sigma_data=net.sigma_data)
