"""Patch parallelism: one sample's network evaluation split across processes.

:class:`PatchParallel` wraps a :class:`pydiff.nn.UNet2D` (or a DiT, below): every rank computes
one band of rows of every activation, convolutions exchange halo rows with the neighbouring ranks
(:func:`pydiff.ops.halo_pack` / ``halo_unpack``), GroupNorm merges per-band (count, mean, M2)
statistics across ranks (Welford's parallel merge), self-attention attends over the K/V of all
bands, and the output bands are all-gathered. The solver runs unchanged on the full sample,
replicated on every rank (draw noise full-size from the same generator on every rank), so any
solver, guidance wrapper or hook behaves as on one process.

Mode ``"sync"`` exchanges everything when it is needed; its result equals the single-process
model to float32 rounding whatever the number of ranks. ``"displaced"`` (DistriFusion) and
``"partial"`` (Partially Conditioned Patch Parallelism) use the previous call's activations of
the other bands, sent asynchronously in one packed message per neighbour per call; call
``reset()`` before each sampling. :mod:`pydiff.parallel.model` holds the trained test model.

A :class:`pydiff.nn.DiT` is split the same way into bands of tokens (``x [B, C, L]``, an image
in row-major order: bands of rows); only its self-attention exchanges anything: every band's
K/V, attended band by band and merged exactly through the log-sum-exps that
``pydiff.ops.attention(..., return_lse=True)`` returns. ``partial`` on a DiT sends every band's
normalized attention inputs in half precision, from which the receiver rebuilds their K/V with
the current call's time modulation.

Example (under ``torchrun --nproc_per_node 2`` or :func:`pydiff.distributed.launch`):
    >>> import torch, pydiff
    >>> from pydiff.nn import UNet2D
    >>> from pydiff.parallel import PatchParallel
    >>> net = UNet2D(1, base_channels=8, channel_mult=(1, 2)).eval()
    >>> model = pydiff.Denoiser(PatchParallel(net), pydiff.VPSchedule(), prediction="eps")
    >>> x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> pydiff.sample(model, x, "ddim", steps=2).shape    # one process: plain model
    torch.Size([1, 1, 16, 16])
"""

from .patch import GN_CORRECTIONS, MODES, PatchParallel, PatchState

__all__ = ["PatchParallel", "PatchState", "MODES", "GN_CORRECTIONS"]
