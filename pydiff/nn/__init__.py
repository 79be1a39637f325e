"""Neural-network building blocks for diffusion models.

Time embeddings (global and per-position), FiLM, a 1D temporal UNet (Diffusion Policy), a
small 2D UNet (NCSN++ options), DiT blocks, a DiT and an image (patch) DiT, and EGNN layers
for molecules.
Attention goes through :func:`pydiff.nn.attention`, which calls ``pydiff.ops.attention``.

Top-level networks (:class:`UNet1D`, :class:`UNet2D`, :class:`DiT`, :class:`EGNN`) keep their
constructor kwargs in a JSON-serializable ``config`` dict: ``type(net)(**net.config)``
rebuilds the architecture (what ``save_pretrained`` stores).

Example:
    >>> import torch
    >>> from pydiff.nn import UNet1D
    >>> net = UNet1D(in_channels=2, down_dims=(16, 32))
    >>> net(torch.randn(1, 2, 9), 10).shape
    torch.Size([1, 2, 9])
"""

from .attention import MultiHeadAttention, attention
from .dit import DiT, DiTBlock, ImageDiT
from .egnn import EGNN, EGNNLayer
from .embeddings import (
    GaussianFourierEmbedding,
    SinusoidalEmbedding,
    TimeEmbedding,
    TimestepMLP,
    get_activation,
    normalize_time,
)
from .film import FiLM
from .unet1d import ConditionalResidualBlock1D, Conv1dBlock, UNet1D
from .unet2d import AttnBlock2D, ResBlock2D, UNet2D

__all__ = [
    "attention",
    "MultiHeadAttention",
    "SinusoidalEmbedding",
    "GaussianFourierEmbedding",
    "TimestepMLP",
    "TimeEmbedding",
    "get_activation",
    "normalize_time",
    "FiLM",
    "Conv1dBlock",
    "ConditionalResidualBlock1D",
    "UNet1D",
    "ResBlock2D",
    "AttnBlock2D",
    "UNet2D",
    "DiTBlock",
    "DiT",
    "ImageDiT",
    "EGNNLayer",
    "EGNN",
]
