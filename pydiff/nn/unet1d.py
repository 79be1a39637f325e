"""1D temporal UNet in the style of Diffusion Policy (Chi et al. 2023, ``ConditionalUnet1D``).

Denoises action (or state-action, or time-series) sequences ``[B, C, L]``: Conv1d-GroupNorm-Mish
blocks, residual blocks FiLM-conditioned on ``time embedding ++ global condition``, strided-conv
downsampling and transposed-conv upsampling with skip connections.

Beyond the original: ``t`` may be per position (``[B, L]`` or ``[B, 1, L]``), as streaming
diffusion policies need (the noise level rises along the action horizon). The conditioning is
then a per-position feature map, average-pooled along with the features at each downsampling,
and FiLM modulates every position with its own scale and bias. A per-position ``t`` that is
constant along ``L`` gives the same output as the global ``t``.

Example:
    >>> import torch
    >>> from pydiff.nn import UNet1D
    >>> net = UNet1D(in_channels=2, global_cond_dim=10, down_dims=(32, 64))
    >>> x = torch.randn(4, 2, 16)                     # [B, action_dim, horizon]
    >>> net(x, torch.rand(4), global_cond=torch.randn(4, 10)).shape
    torch.Size([4, 2, 16])
    >>> net(x, torch.rand(4, 16), global_cond=torch.randn(4, 10)).shape   # per-position t
    torch.Size([4, 2, 16])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .embeddings import TimeEmbedding, normalize_time
from .film import FiLM

__all__ = ["UNet1D", "Conv1dBlock", "ConditionalResidualBlock1D"]


class Conv1dBlock(nn.Sequential):
    """``Conv1d -> GroupNorm -> Mish`` ("same" padding, so the length is kept)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int = 8
    ) -> None:
        super().__init__(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )


class ConditionalResidualBlock1D(nn.Module):
    """Two :class:`Conv1dBlock` with FiLM in between and a (1x1 conv) residual connection.

    ``forward(x [B, C_in, L], cond)`` with ``cond [B, cond_dim]`` or per position
    ``[B, cond_dim, L]``; returns ``[B, C_out, L]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cond_dim: int,
        kernel_size: int = 5,
        n_groups: int = 8,
    ) -> None:
        super().__init__()
        self.block1 = Conv1dBlock(in_channels, out_channels, kernel_size, n_groups)
        self.film = FiLM(cond_dim, out_channels, act="mish")
        self.block2 = Conv1dBlock(out_channels, out_channels, kernel_size, n_groups)
        self.residual = (
            nn.Conv1d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = self.block2(self.film(self.block1(x), cond))
        return h + self.residual(x)


class UNet1D(nn.Module):
    """Diffusion Policy's conditional 1D UNet, with optional per-position time.

    Args:
        in_channels: channels of the sample (e.g. the action dimension).
        out_channels: output channels (default ``in_channels``).
        global_cond_dim: size of the global condition vector (e.g. flattened observations);
            0 for none. It is concatenated to the time embedding before every FiLM.
        time_embed_dim: size of the time embedding (Diffusion Policy: 256).
        down_dims: channels at each resolution; the sequence is downsampled
            ``len(down_dims) - 1`` times.
        kernel_size: convolution kernel size (odd).
        n_groups: GroupNorm groups; every entry of ``down_dims`` must be divisible by it.
        time_embedding: ``"sinusoidal"`` (Diffusion Policy; feed it e.g. integer steps or
            ``999 * t``) or ``"fourier"`` (feed it e.g. ``log sigma``).

    ``forward(x, t, global_cond=None)``:
        ``x [B, in_channels, L]`` (channel-first: a caller holding ``[B, T, action_dim]``
        passes ``x.transpose(1, 2)``); ``t``: ``[]``, ``[B]``, ``[B, 1, 1]``, or per position
        ``[B, L]`` / ``[B, 1, L]``; ``global_cond [B, global_cond_dim]``. Any ``L >= 1`` works:
        the sequence is padded internally to a multiple of ``2 ** (len(down_dims) - 1)``
        (zeros for ``x``, edge values for per-position ``t``) and the output cropped back.
        Returns ``[B, out_channels, L]``.

    ``config`` holds the constructor kwargs (JSON-serializable): ``UNet1D(**net.config)``
    rebuilds the architecture.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        global_cond_dim: int = 0,
        time_embed_dim: int = 128,
        down_dims: Sequence[int] = (64, 128, 256),
        kernel_size: int = 5,
        n_groups: int = 8,
        time_embedding: str = "sinusoidal",
    ) -> None:
        super().__init__()
        down_dims = [int(d) for d in down_dims]
        if not down_dims:
            raise ValueError("down_dims must have at least one entry")
        bad = [d for d in down_dims if d % n_groups]
        if bad:
            raise ValueError(
                f"down_dims={down_dims}: every entry must be divisible by n_groups={n_groups}"
            )
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size} must be odd (same-length convolutions)")
        self.config: dict[str, Any] = dict(
            in_channels=in_channels,
            out_channels=out_channels,
            global_cond_dim=global_cond_dim,
            time_embed_dim=time_embed_dim,
            down_dims=down_dims,
            kernel_size=kernel_size,
            n_groups=n_groups,
            time_embedding=time_embedding,
        )
        out_channels = out_channels or in_channels
        self.global_cond_dim = global_cond_dim
        self.n_down = len(down_dims) - 1

        self.time_embed = TimeEmbedding(
            time_embed_dim, time_embed_dim, kind=time_embedding, act="mish"
        )
        cond_dim = time_embed_dim + global_cond_dim

        def block(cin: int, cout: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(cin, cout, cond_dim, kernel_size, n_groups)

        dims = [in_channels, *down_dims]
        self.down = nn.ModuleList()
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(down_dims) - 1
            self.down.append(
                nn.ModuleList(
                    [
                        block(cin, cout),
                        block(cout, cout),
                        nn.Identity() if last else nn.Conv1d(cout, cout, 3, stride=2, padding=1),
                    ]
                )
            )
        self.mid = nn.ModuleList(
            [block(down_dims[-1], down_dims[-1]), block(down_dims[-1], down_dims[-1])]
        )
        self.up = nn.ModuleList()
        for cin, cout in reversed(list(zip(down_dims[:-1], down_dims[1:]))):
            # cout channels come up from below, cout more from the skip connection.
            self.up.append(
                nn.ModuleList(
                    [
                        block(2 * cout, cin),
                        block(cin, cin),
                        nn.ConvTranspose1d(cin, cin, 4, stride=2, padding=1),
                    ]
                )
            )
        self.final = nn.Sequential(
            Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
            nn.Conv1d(down_dims[0], out_channels, 1),
        )

    def forward(self, x: Tensor, t: Tensor | float, global_cond: Tensor | None = None) -> Tensor:
        length = x.shape[-1]
        h, cond, per_position = self._inputs(x, t, global_cond)
        # Same wiring as Diffusion Policy: the up path concatenates the skip saved at the
        # resolution it is currently at (starting with the deepest one), then upsamples; the
        # finest level's skip is never consumed (as in the original).
        skips: list[tuple[Tensor, Tensor]] = []
        for res1, res2, downsample in self.down:
            h = res2(res1(h, cond), cond)
            skips.append((h, cond))
            h = downsample(h)
            if per_position and not isinstance(downsample, nn.Identity):
                # Follow the features to the coarser grid: average the per-position conditioning
                # over each pair of positions (exact for a constant t, so constant == global).
                cond = F.avg_pool1d(cond, 2)
        for res in self.mid:
            h = res(h, cond)
        for res1, res2, upsample in self.up:
            skip, cond = skips.pop()
            h = torch.cat([h, skip], dim=1)
            h = upsample(res2(res1(h, cond), cond))
        h = self.final(h)
        return h[..., :length]

    def _inputs(self, x: Tensor, t: Tensor | float, global_cond: Tensor | None
                ) -> tuple[Tensor, Tensor, bool]:
        """The checked input zero-padded to a multiple of ``2 ** n_down``, the FiLM
        conditioning (time embedding ++ global condition; per position for a per-position
        ``t``) and whether it is per position (shared with the feature-caching forward of
        :mod:`pydiff.accel`)."""
        if x.dim() != 3 or x.shape[1] != self.config["in_channels"]:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; expected "
                f"[B, in_channels={self.config['in_channels']}, L] "
                "(channel-first: transpose a [B, T, action_dim] tensor with x.transpose(1, 2))"
            )
        b, _, length = x.shape
        t = normalize_time(t, b, length, owner="UNet1D").to(x.device)
        per_position = t.dim() == 2

        # Pad to a multiple of 2**n_down so every downsampling halves exactly and the skip
        # connections line up; crop at the end.
        mult = 2**self.n_down
        pad = (-length) % mult
        if pad:
            x = F.pad(x, (0, pad))
            if per_position:
                t = torch.cat([t, t[:, -1:].expand(b, pad)], dim=1)

        temb = self.time_embed(t).to(x.dtype)  # [B, D] or [B, L', D]
        if per_position:
            temb = temb.transpose(1, 2)  # channel-first [B, D, L']
        cond = temb
        if self.global_cond_dim:
            if global_cond is None or global_cond.shape != (b, self.global_cond_dim):
                got = None if global_cond is None else tuple(global_cond.shape)
                raise ValueError(
                    f"global_cond has shape {got}; expected [B, {self.global_cond_dim}]"
                )
            g = global_cond.to(x.dtype)
            if per_position:
                g = g.unsqueeze(-1).expand(-1, -1, temb.shape[-1])
            cond = torch.cat([temb, g], dim=1)
        elif global_cond is not None:
            raise ValueError(
                "global_cond was given but the network was built with global_cond_dim=0"
            )

        return x, cond, per_position
