"""Time (noise-level) embeddings: sinusoidal, Gaussian Fourier features, and an MLP head.

Every embedding here is *elementwise* in ``t``: an input of shape ``S`` gives an output of
shape ``S + (dim,)``. So the same module serves a scalar time (``[] -> [dim]``), one time per
sample (``[B] -> [B, dim]``) and per-position times (``[B, L] -> [B, L, dim]``). A channel-first
per-position time ``[B, 1, L]`` (the shape a Denoiser passes when ``t`` broadcasts to a
``[B, C, L]`` sample) drops its singleton channel axis and also gives ``[B, L, dim]``.

Networks first bring whatever ``t`` they receive into a canonical ``[B]`` or ``[B, L]`` with
:func:`normalize_time`, so the shape rules live in one place.

Example:
    >>> import torch
    >>> from pydiff.nn import SinusoidalEmbedding, TimeEmbedding
    >>> SinusoidalEmbedding(16)(torch.rand(4)).shape
    torch.Size([4, 16])
    >>> SinusoidalEmbedding(16)(torch.rand(4, 1, 10)).shape
    torch.Size([4, 10, 16])
    >>> TimeEmbedding(32, kind="fourier")(torch.rand(2)).shape
    torch.Size([2, 32])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "SinusoidalEmbedding",
    "GaussianFourierEmbedding",
    "TimestepMLP",
    "TimeEmbedding",
    "get_activation",
    "normalize_time",
]

_ACTIVATIONS = {
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
}


def get_activation(name: str) -> nn.Module:
    """Build an activation module from its name (``silu``, ``mish``, ``gelu``, ``relu``, ``tanh``).

    Networks take activations by *name* so that their constructor kwargs stay JSON-serializable.

    Example:
        >>> get_activation("mish")
        Mish()
    """
    try:
        return _ACTIVATIONS[name.lower()]()
    except (KeyError, AttributeError):
        raise ValueError(
            f"act={name!r} is not a known activation; expected one of {sorted(_ACTIVATIONS)}"
        ) from None


def _prepare_t(t: Tensor | float) -> Tensor:
    """Tensor-ize ``t`` (ints become floats) and drop the channel axis of ``[B, 1, L]``."""
    t = torch.as_tensor(t)
    if not t.is_floating_point():
        # Integer DDPM indices are common inputs; the embedding math needs floats.
        t = t.to(torch.get_default_dtype())
    if t.dim() == 3 and t.shape[1] == 1:
        t = t[:, 0]
    return t


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding of a (continuous or integer) time.

    ``emb = [sin(t * f_k), cos(t * f_k)]`` with ``f_k = max_period ** (-k / (half - 1))``,
    the form used by DDPM and Diffusion Policy (``SinusoidalPosEmb``). The network sees
    whatever scale of ``t`` the Denoiser feeds it (e.g. ``999 * t`` or integer indices); the
    frequencies are designed for inputs of order 1..1000.

    Args:
        dim: embedding size (even, >= 4).
        max_period: the slowest period, in units of ``t``.

    Shapes: ``t`` of shape ``S`` -> ``S + (dim,)`` (``[B, 1, L]`` -> ``[B, L, dim]``).

    Example:
        >>> SinusoidalEmbedding(8)(torch.tensor(3.0)).shape
        torch.Size([8])
    """

    def __init__(self, dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"dim={dim} must be an even number >= 4")
        self.dim = dim
        self.max_period = float(max_period)
        half = dim // 2
        freqs = torch.exp(
            -math.log(max_period) * torch.arange(half, dtype=torch.float64) / (half - 1)
        )
        # A plain attribute, not a buffer: it is a pure function of the constructor args (so
        # it need not be in checkpoints), and `model.to(torch.bfloat16)` must not round it.
        self._freqs64 = freqs
        self._freqs_cache: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def _freqs(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (device, dtype)
        if key not in self._freqs_cache:
            self._freqs_cache[key] = self._freqs64.to(device=device, dtype=dtype)
        return self._freqs_cache[key]

    def forward(self, t: Tensor | float) -> Tensor:
        t = _prepare_t(t)
        # Compute in at least float32: half-precision phases of t~1000 lose all precision.
        dtype = torch.promote_types(t.dtype, torch.float32)
        args = t.to(dtype).unsqueeze(-1) * self._freqs(t.device, dtype)
        return torch.cat([args.sin(), args.cos()], dim=-1)


class GaussianFourierEmbedding(nn.Module):
    """Random Fourier features of a time / noise level (NCSN++, Song et al. 2021).

    ``emb = [sin(2 pi W t), cos(2 pi W t)]`` with fixed ``W ~ N(0, scale^2)``. NCSN++ feeds it
    ``log(sigma)``; ``scale=16`` is its default. ``W`` is drawn from a private generator seeded
    with ``seed``, so building a model never touches the global RNG for it and the same config
    always gives the same features. It is stored as a (persistent) buffer so checkpoints carry it.

    Args:
        dim: embedding size (even).
        scale: standard deviation of the frequencies.
        seed: seed of the frequencies.

    Shapes: ``t`` of shape ``S`` -> ``S + (dim,)`` (``[B, 1, L]`` -> ``[B, L, dim]``).

    Example:
        >>> GaussianFourierEmbedding(8)(torch.zeros(2, 5)).shape
        torch.Size([2, 5, 8])
    """

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"dim={dim} must be an even number >= 2")
        self.dim = dim
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("W", torch.randn(dim // 2, generator=g) * scale)

    def forward(self, t: Tensor | float) -> Tensor:
        t = _prepare_t(t)
        dtype = torch.promote_types(t.dtype, torch.float32)
        args = 2 * math.pi * t.to(dtype).unsqueeze(-1) * self.W.to(device=t.device, dtype=dtype)
        return torch.cat([args.sin(), args.cos()], dim=-1)


class TimestepMLP(nn.Sequential):
    """The MLP head that follows a time embedding: ``Linear -> act -> Linear``.

    Acts on the last axis, so it also maps per-position embeddings ``[B, L, in_dim]``.

    Args:
        in_dim: input size.
        out_dim: output size.
        hidden_dim: hidden size (default ``4 * in_dim``, as in DDPM / Diffusion Policy).
        act: ``"silu"`` (DDPM, NCSN++) or ``"mish"`` (Diffusion Policy), see :func:`get_activation`.

    Example:
        >>> TimestepMLP(16, 32, act="mish")(torch.zeros(3, 16)).shape
        torch.Size([3, 32])
    """

    def __init__(
        self, in_dim: int, out_dim: int, hidden_dim: int | None = None, act: str = "silu"
    ) -> None:
        hidden_dim = hidden_dim or 4 * in_dim
        super().__init__(
            nn.Linear(in_dim, hidden_dim), get_activation(act), nn.Linear(hidden_dim, out_dim)
        )


class TimeEmbedding(nn.Module):
    """A time embedding followed by its MLP head: what every network in ``pydiff.nn`` uses.

    Args:
        dim: size of the raw (sinusoidal / Fourier) features.
        out_dim: output size (default ``dim``).
        kind: ``"sinusoidal"`` or ``"fourier"``.
        hidden_dim: MLP hidden size (default ``4 * dim``).
        act: MLP activation name.
        fourier_scale: ``scale`` of :class:`GaussianFourierEmbedding`.
        max_period: ``max_period`` of :class:`SinusoidalEmbedding`.

    Shapes: ``t`` of shape ``S`` -> ``S + (out_dim,)`` (``[B, 1, L]`` -> ``[B, L, out_dim]``).

    Example:
        >>> TimeEmbedding(16, 64, act="mish")(torch.rand(2, 7)).shape
        torch.Size([2, 7, 64])
    """

    def __init__(
        self,
        dim: int,
        out_dim: int | None = None,
        kind: str = "sinusoidal",
        hidden_dim: int | None = None,
        act: str = "silu",
        fourier_scale: float = 16.0,
        max_period: float = 10000.0,
    ) -> None:
        super().__init__()
        if kind == "sinusoidal":
            self.embed: nn.Module = SinusoidalEmbedding(dim, max_period=max_period)
        elif kind == "fourier":
            self.embed = GaussianFourierEmbedding(dim, scale=fourier_scale)
        else:
            raise ValueError(f"time_embedding={kind!r}; expected 'sinusoidal' or 'fourier'")
        self.out_dim = out_dim or dim
        self.mlp = TimestepMLP(dim, self.out_dim, hidden_dim=hidden_dim, act=act)

    def forward(self, t: Tensor | float) -> Tensor:
        emb = self.embed(t)
        # The MLP runs in the parameters' dtype (e.g. bfloat16 autocast or .double()).
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


def normalize_time(
    t: Tensor | float,
    batch_size: int,
    length: int | None = None,
    *,
    name: str = "t",
    owner: str = "this network",
) -> Tensor:
    """Bring a time argument into canonical shape: ``[B]`` (global) or ``[B, L]`` (per-position).

    Accepted inputs:

    * a Python number or a 0-d tensor: one time for the whole batch;
    * ``[B]`` or ``[1]``: one time per sample;
    * any tensor whose non-batch axes are all 1 (e.g. ``[B, 1, 1]``, what a Denoiser passes
      when ``t`` broadcasts to ``x``): one time per sample;
    * only if ``length`` is given (the network supports per-position time): ``[B, L]`` or the
      channel-first ``[B, 1, L]``, with batch axis ``B`` or 1.

    Anything else raises a ``ValueError`` that names ``name``, the shape and what was expected.

    Example:
        >>> normalize_time(0.5, 3).shape
        torch.Size([3])
        >>> normalize_time(torch.rand(3, 1, 8), 3, length=8).shape
        torch.Size([3, 8])
    """
    t = torch.as_tensor(t)
    shape = tuple(t.shape)
    if t.dim() == 0:
        return t.expand(batch_size)
    if t.shape[0] not in (1, batch_size):
        raise ValueError(
            f"{name} has shape {shape}: its first (batch) axis must be 1 or the batch size "
            f"{batch_size}"
        )
    if t.dim() == 1 or all(s == 1 for s in t.shape[1:]):
        return t.reshape(t.shape[0]).expand(batch_size)
    if length is None:
        raise ValueError(
            f"{name} has shape {shape}, but {owner} takes one time per sample "
            f"([], [B] or [B, 1, ...]); per-position time is not supported"
        )
    if t.dim() == 3 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dim() != 2 or t.shape[1] != length:
        raise ValueError(
            f"{name} has shape {shape}; expected [], [B], [B, {length}] or [B, 1, {length}] "
            f"(per-position time must match the sequence length {length})"
        )
    return t.expand(batch_size, length)
