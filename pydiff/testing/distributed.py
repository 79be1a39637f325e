"""Worker functions for testing process groups with :func:`pydiff.distributed.launch`.

They live in the package (not in a test file) because a spawned worker imports its function
by module name, and pytest's importlib mode does not make test files importable.

Example:
    >>> from pydiff.distributed import launch
    >>> from pydiff.testing.distributed import all_reduce_and_shard
    >>> launch(all_reduce_and_shard, 2, [1, 2, 3])      # doctest: +SKIP
    [(0, 2, 1.0, [1, 3], True), (1, 2, 1.0, [2], True)]
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

from ..distributed import collective_errors, dist_info, shard


def all_reduce_and_shard(items: list) -> tuple[int, int, float, list, bool]:
    """(rank, world size, sum of all ranks through one all-reduce, this rank's
    :func:`~pydiff.distributed.shard` of ``items``, whether a group is set)."""
    info = dist_info()
    value = torch.tensor([float(info.rank)])
    with collective_errors("a test value"):
        dist.all_reduce(value)
    return info.rank, info.world_size, float(value), shard(items), dist.is_initialized()


def one_rank_fails(bad_rank: int, how: str) -> float:
    """Rank ``bad_rank`` dies (``"die"``: killed by SIGKILL), hangs (``"hang"``) or raises
    (``"raise"``); the others wait for it in an all-reduce, which must fail within the timeout.
    """
    if dist_info().rank == bad_rank:
        if how == "die":
            os.kill(os.getpid(), 9)
        elif how == "hang":
            time.sleep(3600)
        elif how == "raise":
            raise RuntimeError("this rank failed on purpose")
        else:
            raise ValueError(f"how={how!r}")
    value = torch.ones(1)
    with collective_errors("a test value"):
        dist.all_reduce(value)
    return float(value)


def halo_test_maps(dtype: torch.dtype, device: str = "cpu", seed: int = 0) -> list[torch.Tensor]:
    """Feature maps for testing :func:`pydiff.ops.halo_pack` / ``halo_unpack`` on any device:
    contiguous, channels-last, a row slice, a column slice (W stride != 1), one row, and a
    map with an empty batch."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dtype=dtype, device=device)

    return [
        rand(2, 3, 9, 7),
        rand(1, 5, 6, 4).to(memory_format=torch.channels_last),
        rand(2, 2, 12, 5)[:, :, 2:10],
        rand(1, 2, 5, 11)[..., ::2],
        rand(1, 4, 1, 3),
        rand(0, 2, 3, 3),
    ]


def random_unet2d(seed: int = 0, **config):
    """A small :class:`~pydiff.nn.UNet2D` with every weight random (its zero-initialized output
    layers too, so an equality test on its output cannot pass trivially)."""
    from ..nn import UNet2D

    torch.manual_seed(seed)
    config = {"in_channels": 1, "base_channels": 8, "channel_mult": (1, 2, 2),
              "num_res_blocks": 1, "attn_levels": [1], **config}
    net = UNet2D(**config).eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 1.0 / p[0].numel() ** 0.5)
            else:
                p.normal_(0.0, 0.1)
    return net


def patch_parallel_vs_single(size: int, steps: int, mode: str = "sync",
                             norm_axes: str = "hw") -> dict:
    """Run a random UNet2D patch-parallel and on one process (locally, on every rank): one
    network call and a short DDIM sampling; returns the largest differences and byte counts."""
    import pydiff

    from ..parallel import PatchParallel

    net = random_unet2d(norm_axes=norm_axes)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, size, size + 8, generator=g)
    t = torch.tensor([0.3, 0.8])
    parallel = PatchParallel(net, mode=mode)
    with torch.no_grad():
        single_out = net(x, t)
        parallel_out = parallel(x, t)
    schedule = pydiff.VPSchedule()
    x_T = torch.randn(1, 1, size, size, generator=g)
    with torch.no_grad():
        samples = [pydiff.sample(pydiff.Denoiser(m, schedule, prediction="eps"), x_T, "ddim",
                                 steps=steps) for m in (net, parallel)]
    return {"rank": dist_info().rank, "call_diff": float((single_out - parallel_out).abs().max()),
            "out_scale": float(single_out.abs().max()),
            "sample_diff": float((samples[0] - samples[1]).abs().max()),
            "sample_scale": float(samples[0].abs().max()),
            "bytes_sent": parallel.bytes_sent, "calls": parallel.calls}


def _single_process_sample(net: torch.nn.Module, size: int, steps: int, seed: int
                           ) -> torch.Tensor:
    """The reference sample of ``net`` on one process, made once on rank 0 and broadcast: every
    rank making it too would multiply the reference's cost by the world size on shared cores."""
    from ..parallel.model import sample_image

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return sample_image(net, size, steps, seed)
    single = torch.empty(1, 1, size, size)
    if dist.get_rank() == 0:
        single = sample_image(net, size, steps, seed)
    dist.broadcast(single, src=0)
    return single


def patch_modes_vs_single(size: int, steps: int, modes: tuple[str, ...] = ("displaced",
                          "partial"), seed: int = 0, path: str | None = None, **options) -> dict:
    """Sample the shipped patch-parallel model (or the checkpoint at ``path``) in each stale
    mode and on one process (on rank 0, broadcast); returns the PSNR of each mode against the
    single-process sample, its bytes per call, and (the exchange's plumbing) the largest
    difference of a displaced call on a repeated input, whose stale activations are exact,
    from the single-process output."""
    from ..parallel import PatchParallel
    from ..parallel.model import load_patch_model, psnr, sample_image

    net = load_patch_model(path).net
    single = _single_process_sample(net, size, steps, seed)
    out: dict = {"rank": dist_info().rank}
    for mode in modes:
        parallel = PatchParallel(net, mode=mode, **options)
        x = sample_image(parallel, size, steps, seed)
        out[mode] = {"psnr": psnr(x, single), "bytes_per_call": parallel.bytes_sent /
                     max(parallel.calls, 1), "calls": parallel.calls}
    parallel = PatchParallel(net, mode="displaced", warmup=1)
    g = torch.Generator().manual_seed(seed + 1)
    x, t = torch.randn(2, 1, size, size, generator=g), torch.tensor([0.5, 2.0])
    with torch.no_grad():
        ref = net(x, t)
        calls = [parallel(x, t) for _ in range(3)]  # sync, then two stale calls
    out["repeat_diff"] = max(float((c - ref).abs().max()) for c in calls)
    out["repeat_scale"] = float(ref.abs().max())
    return out


def all_patch_modes(size: int, steps: int, norm_axes: str) -> dict:
    """One rank's whole patch-parallel check in one launch: ``sync`` against one process on a
    random net (:func:`patch_parallel_vs_single`), then the stale modes on the trained model
    (:func:`patch_modes_vs_single`)."""
    sync = patch_parallel_vs_single(size, 3, "sync", norm_axes)
    return {"sync": sync, **patch_modes_vs_single(size, steps)}
