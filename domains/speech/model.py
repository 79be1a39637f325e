"""Networks of the speech domain: the SGMSE+ score network and StoRM's predictive network.

- :class:`ScoreNet`: a small NCSN++-style :class:`pydiff.nn.UNet2D` on real-view spectrograms.
  It sees the current state ``x`` (unshifted), the process mean ``y`` and the noisy
  spectrogram ``noisy`` (both as extra input channels) and predicts the noise ``eps``, which is
  SGMSE+'s ``-sigma * score`` parameterization. For SGMSE+ the mean is the noisy spectrogram
  itself; for StoRM it is the predictive network's estimate, so one network serves both.
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
from pydiff.schedules import Schedule

from .stft import sgmse_schedule

Tensor = torch.Tensor


def _unet(in_channels: int, cond_channels: int, base_channels: int,
          channel_mult: Sequence[int], num_res_blocks: int,
          attn_levels: Sequence[int] | None) -> UNet2D:
    return UNet2D(in_channels=in_channels, out_channels=2, cond_channels=cond_channels,
                  base_channels=base_channels, channel_mult=tuple(channel_mult),
                  num_res_blocks=num_res_blocks,
                  attn_levels=None if attn_levels is None else tuple(attn_levels),
                  time_embedding="fourier")


class ScoreNet(nn.Module):
    """``eps``-predicting UNet2D conditioned on the process mean ``y`` and the noisy input.

    ``forward(x, t, y, noisy=None)``: all spectrogram tensors ``[B, 2, F, T]``; ``noisy``
    defaults to ``y`` (SGMSE+). ``config`` holds the constructor kwargs.
    """

    def __init__(self, base_channels: int = 16, channel_mult: Sequence[int] = (1, 2, 2, 2),
                 num_res_blocks: int = 1, attn_levels: Sequence[int] | None = ()):
        super().__init__()
        self.config: dict[str, Any] = dict(base_channels=base_channels,
                                           channel_mult=list(channel_mult),
                                           num_res_blocks=num_res_blocks,
                                           attn_levels=None if attn_levels is None
                                           else list(attn_levels))
        self.unet = _unet(2, 4, base_channels, channel_mult, num_res_blocks, attn_levels)

    def forward(self, x: Tensor, t: Tensor, y: Tensor, noisy: Tensor | None = None) -> Tensor:
        noisy = y if noisy is None else noisy
        return self.unet(x, t, cond=torch.cat([y, noisy], dim=1))


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


def make_denoiser(net: nn.Module, schedule: Schedule | None = None) -> Denoiser:
    """The Denoiser of a :class:`ScoreNet`: eps prediction, ``log sigma`` time input.

    The schedule defaults to :func:`pydiff.domains.speech.stft.sgmse_schedule` (SGMSE+'s OUVE in
    real-view units). Pass ``y`` (the process mean) and ``noisy`` as conditioning.
    """
    return Denoiser(net, schedule or sgmse_schedule(), prediction="eps",
                    time_input="log_sigma")
