"""Data-parallel helpers over :mod:`torch.distributed` (gloo on CPU, NCCL on GPUs).

Launch with ``torchrun --nproc_per_node N script.py`` (or ``python -m torch.distributed.run``);
:func:`init_distributed` reads the environment torchrun sets. The trainer averages gradients
with one all-reduce per bucket of flattened gradients (:func:`all_reduce_gradients`) instead of
wrapping the model in ``DistributedDataParallel``, so a loss function receives the model itself
(a Denoiser, a policy with its own methods) and not a wrapper.

Example:
    >>> from pydiff.training import dist_info
    >>> dist_info().world_size          # 1 outside torchrun
    1
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

Tensor = torch.Tensor
BUCKET_ELEMENTS = 1 << 22  # 16 MB of float32 per all-reduce


class DistInfo(NamedTuple):
    rank: int
    world_size: int
    local_rank: int


def dist_info() -> DistInfo:
    """Rank, world size and local rank (0, 1, 0 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(),
                        int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return DistInfo(0, 1, 0)


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (no-op for a single process).

    ``backend`` defaults to NCCL when CUDA is available, else gloo.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist_info()


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy ``src``'s parameters and buffers to every rank (same start on all ranks)."""
    if dist_info().world_size == 1:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src)


@torch.no_grad()
def all_reduce_gradients(params: Iterable[nn.Parameter]) -> None:
    """Average the gradients of ``params`` across ranks (bucketed flat all-reduce).

    A parameter without a gradient on one rank takes part with zeros, so every rank issues the
    same collectives.
    """
    world = dist_info().world_size
    if world == 1:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    buckets: list[list[nn.Parameter]] = []
    size = BUCKET_ELEMENTS + 1  # forces a first bucket
    for p in params:
        # one dtype/device per bucket: flatten needs it
        if (size + p.numel() > BUCKET_ELEMENTS or buckets[-1][0].grad.dtype != p.grad.dtype
                or buckets[-1][0].grad.device != p.grad.device):
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += p.numel()
    for bucket in buckets:
        flat = torch.cat([p.grad.reshape(-1) for p in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world
        offset = 0
        for p in bucket:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n


def all_reduce_mean(value: Tensor) -> Tensor:
    """The mean of ``value`` over ranks (for logging losses)."""
    if dist_info().world_size == 1:
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist_info().world_size


def barrier() -> None:
    if dist_info().world_size > 1:
        dist.barrier()


__all__ = ["DistInfo", "dist_info", "init_distributed", "broadcast_module",
           "all_reduce_gradients", "all_reduce_mean", "barrier"]
