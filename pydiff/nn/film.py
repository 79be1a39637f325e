"""FiLM: feature-wise linear modulation (Perez et al. 2018) from a conditioning vector.

Example:
    >>> import torch
    >>> from pydiff.nn import FiLM
    >>> film = FiLM(cond_dim=10, channels=32)
    >>> x = torch.randn(4, 32, 16)
    >>> film(x, torch.randn(4, 10)).shape            # one condition per sample
    torch.Size([4, 32, 16])
    >>> film(x, torch.randn(4, 10, 16)).shape        # one condition per position
    torch.Size([4, 32, 16])
"""

from __future__ import annotations

from torch import Tensor, nn

from .embeddings import get_activation

__all__ = ["FiLM"]


class FiLM(nn.Module):
    """Per-channel scale and bias predicted from a condition: ``x * (1 + scale) + bias``.

    The ``1 +`` makes a freshly initialized layer close to the identity (Diffusion Policy
    writes ``scale * x + bias``; that starts by multiplying features by ~0 +- small noise,
    which only slows early training). With ``scale=False`` only the bias is predicted
    (an additive time embedding, as in DDPM residual blocks).

    Args:
        cond_dim: size of the condition vector.
        channels: number of channels of ``x`` to modulate.
        act: optional activation applied to the condition first (``"mish"`` in Diffusion
            Policy's ``cond_encoder``, ``"silu"`` in DDPM / DiT).
        scale: predict a scale as well as a bias.

    Shapes:
        ``x``: ``[B, C, *spatial]`` (channel-first).
        ``cond``: ``[B, cond_dim]`` (the same modulation at every position), or per position
        ``[B, cond_dim, *spatial]`` channel-first, matching ``x``'s spatial shape (used for
        per-position time in streaming diffusion policies).
    """

    def __init__(
        self, cond_dim: int, channels: int, act: str | None = None, scale: bool = True
    ) -> None:
        super().__init__()
        self.channels = channels
        self.scale = scale
        self.act = get_activation(act) if act else nn.Identity()
        self.proj = nn.Linear(cond_dim, channels * (2 if scale else 1))

    def params(self, cond: Tensor, spatial_dims: int) -> tuple[Tensor | None, Tensor]:
        """Return ``(scale, bias)`` shaped to broadcast against ``[B, C, *spatial]``."""
        if cond.dim() == 2:
            p = self.proj(self.act(cond))
            p = p.reshape(*p.shape, *([1] * spatial_dims))
        elif cond.dim() == 2 + spatial_dims:
            # Per-position: a Linear over the channel axis (equivalent to a 1x1 conv).
            p = self.proj(self.act(cond.movedim(1, -1))).movedim(-1, 1)
        else:
            raise ValueError(
                f"cond has shape {tuple(cond.shape)}; expected [B, cond_dim] or "
                f"[B, cond_dim, *spatial] with {spatial_dims} spatial axes"
            )
        if self.scale:
            scale, bias = p.chunk(2, dim=1)
            return scale, bias
        return None, p

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        scale, bias = self.params(cond, x.dim() - 2)
        if scale is None:
            return x + bias
        return x * (1 + scale) + bias
