"""Data-parallel helpers for training (re-exported from :mod:`pydiff.distributed`).

Launch with ``torchrun --nproc_per_node N script.py`` (or ``python -m torch.distributed.run``);
:func:`init_distributed` reads the environment torchrun sets. The trainer averages gradients
with one all-reduce per bucket of flattened gradients (:func:`all_reduce_gradients`) instead of
wrapping the model in ``DistributedDataParallel``, so a loss function receives the model itself
(a Denoiser, a policy with its own methods) and not a wrapper.

The process-group set-up, timeouts, sharding and launching live in :mod:`pydiff.distributed`,
shared with patch-parallel sampling and batch jobs; this module keeps the names training code
has always imported from here.

Example:
    >>> from pydiff.training import dist_info
    >>> dist_info().world_size          # 1 outside torchrun
    1
"""

from __future__ import annotations

from ..distributed import (
    BUCKET_ELEMENTS,
    DistInfo,
    all_reduce_gradients,
    all_reduce_mean,
    barrier,
    broadcast_module,
    dist_info,
    init_distributed,
)

__all__ = ["DistInfo", "dist_info", "init_distributed", "broadcast_module",
           "all_reduce_gradients", "all_reduce_mean", "barrier", "BUCKET_ELEMENTS"]
