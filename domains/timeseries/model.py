"""The TSDiff backbone: a residual network of dilated convolutions over time, and its Denoiser.

:class:`TSDiffNet` maps a window ``[B, 1, L]`` (mean-scaled values, ``L = context + horizon``)
and a noise level to the network output ``F``. Its input features are the state and lagged
copies of it (TSDiff's lag features, taken inside the window: position ``i`` also sees
``x[i - lag]``, zeros before the start). Each residual block is a WaveNet/DiffWave-style
gated dilated convolution whose input is FiLM-modulated by the time embedding
(:class:`pydiff.nn.TimeEmbedding`, :class:`pydiff.nn.FiLM`); dilations double per block, so six
blocks of kernel 3 see 127 positions. The network has no normalization over time and no
positional input, so it runs on windows of any length (any horizon, any context).

Per-position noise levels: ``t`` may be ``[B]`` or per position ``[B, L]`` / ``[B, 1, L]``;
the time embedding and FiLM then act per position (what a CSDI-style or streaming use needs).

:func:`make_denoiser` wraps the network in ``pydiff.Denoiser`` with x0 prediction and EDM
preconditioning on a cosine VP schedule (the core owns the alpha/sigma formulas and the
scalings). x0 prediction keeps the x0-hat that self-guidance differentiates accurate at every
noise level. ``sigma_data = 1``: mean-scaled windows have a mean absolute value of about 1.

Example:
    >>> import torch
    >>> from pydiff.domains.timeseries.model import TSDiffNet, make_denoiser
    >>> model = make_denoiser(TSDiffNet(channels=16, blocks=2))
    >>> model.x0(torch.zeros(2, 1, 30), 0.5).shape
    torch.Size([2, 1, 30])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pydiff import CosineSchedule, Denoiser
from pydiff.nn import FiLM, TimeEmbedding, normalize_time

Tensor = torch.Tensor


class ResidualBlock(nn.Module):
    """FiLM(time) -> gated dilated conv -> (residual, skip) 1x1 convolutions."""

    def __init__(self, channels: int, cond_dim: int, kernel_size: int, dilation: int):
        super().__init__()
        self.film = FiLM(cond_dim, channels, act="silu")
        self.conv = nn.Conv1d(channels, 2 * channels, kernel_size, dilation=dilation,
                              padding=dilation * (kernel_size // 2))
        self.out = nn.Conv1d(channels, 2 * channels, 1)

    def forward(self, h: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        gate, filt = self.conv(self.film(h, cond)).chunk(2, dim=1)
        residual, skip = self.out(torch.sigmoid(gate) * torch.tanh(filt)).chunk(2, dim=1)
        return (h + residual) * 2**-0.5, skip


class TSDiffNet(nn.Module):
    """The raw network ``F(x, t)`` of the time-series Denoiser (see the module docs).

    Args:
        channels: width of the residual blocks.
        blocks: residual blocks; block ``k`` has dilation ``2 ** (k % dilation_cycle)``.
        kernel_size: odd kernel size of the dilated convolutions.
        lags: lag features (positions back within the window).
        time_embed_dim: size of the time embedding.
        dilation_cycle: dilations restart at 1 after this many blocks.

    ``forward(x [B, 1, L], t) -> [B, 1, L]`` with ``t`` EDM's ``ln(sigma) / 4`` as
    :func:`make_denoiser` feeds it: ``[B]``, ``[B, L]`` or ``[B, 1, L]``. ``config`` holds the
    constructor kwargs (what ``save_pretrained`` stores).
    """

    def __init__(self, channels: int = 64, blocks: int = 6, kernel_size: int = 3,
                 lags: Sequence[int] = (7, 12, 24, 52), time_embed_dim: int = 64,
                 dilation_cycle: int = 6):
        super().__init__()
        if kernel_size % 2 == 0 or kernel_size < 1:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        if any(int(lag) < 1 for lag in lags):
            raise ValueError(f"lags must be >= 1, got {list(lags)}")
        if channels < 1 or blocks < 1 or dilation_cycle < 1:
            raise ValueError(f"channels, blocks and dilation_cycle must be >= 1, got "
                             f"{channels}, {blocks}, {dilation_cycle}")
        self.lags = [int(lag) for lag in lags]
        self.config: dict[str, Any] = dict(channels=channels, blocks=blocks,
                                           kernel_size=kernel_size, lags=self.lags,
                                           time_embed_dim=time_embed_dim,
                                           dilation_cycle=dilation_cycle)
        self.time_embed = TimeEmbedding(time_embed_dim, time_embed_dim, kind="fourier",
                                        fourier_scale=1.0, act="silu")
        self.input = nn.Conv1d(1 + len(self.lags), channels, 1)
        self.blocks = nn.ModuleList(
            ResidualBlock(channels, time_embed_dim, kernel_size, 2 ** (k % dilation_cycle))
            for k in range(blocks))
        self.skip_out = nn.Conv1d(channels, channels, 1)
        self.output = nn.Conv1d(channels, 1, 1)
        nn.init.zeros_(self.output.weight)  # an untrained F is 0: EDM's skip-only estimate
        nn.init.zeros_(self.output.bias)

    def features(self, x: Tensor) -> Tensor:
        """The state and its lagged copies ``[B, 1 + len(lags), L]``."""
        length = x.shape[-1]
        feats = [x]
        for lag in self.lags:
            shifted = F.pad(x, (lag, 0))[..., :length] if lag < length else torch.zeros_like(x)
            feats.append(shifted)
        return torch.cat(feats, dim=1)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        _check_window(x, "x")
        return self.trunk(self.input(self.features(x)), t)

    def trunk(self, h: Tensor, t: Tensor | float) -> Tensor:
        """The residual blocks and the output head on input features ``h [B, C, L]``."""
        b, _, length = h.shape
        t = normalize_time(t, b, length, owner=type(self).__name__).to(h.device)
        cond = self.time_embed(t).to(h.dtype)  # [B, D] or [B, L, D]
        if cond.dim() == 3:
            cond = cond.transpose(1, 2)  # per position, channel-first for FiLM
        skips = 0
        for block in self.blocks:
            h, skip = block(h, cond)
            skips = skips + skip
        h = F.silu(self.skip_out(skips * len(self.blocks) ** -0.5))
        return self.output(h)


def _check_window(x: Tensor, name: str) -> None:
    if x.dim() != 3 or x.shape[1] != 1:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected [B, 1, L]")


class CSDINet(TSDiffNet):
    """The conditional (CSDI-style) network ``F(x, t, observed, cond_mask)``.

    The same trunk as :class:`TSDiffNet`; its input features are the noisy state, the observed
    values where ``cond_mask`` is 1 (0 elsewhere) and the mask, each with its lagged copies. So
    the network sees what is known at every position and fills in the rest. Without
    ``observed`` it is an unconditional model (everything missing).

    ``residual=True``: the state is the residual over the linear interpolation of the observed
    values (:mod:`~pydiff.domains.timeseries.conditional` builds it), and ``observed`` is that
    interpolation at every position, so the gaps' input is the interpolation rather than 0
    (``observed`` is then not multiplied by the mask).

    Example:
        >>> import torch
        >>> net = CSDINet(channels=8, blocks=2)
        >>> x = torch.zeros(2, 1, 30)
        >>> net(x, torch.zeros(2), observed=x, cond_mask=torch.ones_like(x)).shape
        torch.Size([2, 1, 30])
    """

    def __init__(self, channels: int = 64, blocks: int = 6, kernel_size: int = 3,
                 lags: Sequence[int] = (7, 12, 24, 52), time_embed_dim: int = 64,
                 dilation_cycle: int = 6, residual: bool = False):
        super().__init__(channels, blocks, kernel_size, lags, time_embed_dim, dilation_cycle)
        self.residual = bool(residual)
        if self.residual:  # older checkpoints' configs lack the key: they load as before
            self.config["residual"] = True
        self.input = nn.Conv1d(3 * (1 + len(self.lags)), channels, 1)

    def forward(self, x: Tensor, t: Tensor | float, observed: Tensor | None = None,
                cond_mask: Tensor | None = None) -> Tensor:
        _check_window(x, "x")
        if cond_mask is None:
            cond_mask = torch.zeros_like(x)
        if observed is None:
            known = torch.zeros_like(x)
        else:
            known = observed.to(x.dtype)
            if not self.residual:
                known = known * cond_mask
        cond_mask = cond_mask.to(x.dtype).expand_as(x)
        feats = torch.cat([self.features(x), self.features(known), self.features(cond_mask)], 1)
        return self.trunk(self.input(feats), t)


def default_schedule() -> CosineSchedule:
    """The diffusion schedule of the time-series models (cosine VP)."""
    return CosineSchedule()


def make_denoiser(net: TSDiffNet, schedule: Any | None = None) -> Denoiser:
    """The Denoiser of a :class:`TSDiffNet`: x0 prediction, EDM preconditioning, ``sigma_data``
    1, on :func:`default_schedule` (or ``schedule``)."""
    return Denoiser(net, schedule or default_schedule(), prediction="x0", precond="edm",
                    time_input="log_sigma", sigma_data=1.0)


__all__ = ["TSDiffNet", "CSDINet", "ResidualBlock", "make_denoiser", "default_schedule"]
