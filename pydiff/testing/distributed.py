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
    return _randomized(UNet2D(**config))


def random_dit(seed: int = 0, **config):
    """A small :class:`~pydiff.nn.DiT` with every weight random (its zero-initialized adaLN and
    output layers too) and a global condition."""
    from ..nn import DiT

    torch.manual_seed(seed)
    config = {"in_channels": 2, "hidden_dim": 32, "depth": 2, "num_heads": 4,
              "global_cond_dim": 3, **config}
    return _randomized(DiT(**config))


def random_image_dit(seed: int = 0, **config):
    """A small :class:`~pydiff.nn.ImageDiT` (2 x 2 patches) with every weight random."""
    from ..nn import ImageDiT

    torch.manual_seed(seed)
    config = {"in_channels": 1, "patch": 2, "hidden_dim": 32, "depth": 2, "num_heads": 4,
              **config}
    return _randomized(ImageDiT(**config))


def _randomized(net: torch.nn.Module) -> torch.nn.Module:
    net.eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 1.0 / p[0].numel() ** 0.5)
            else:
                p.normal_(0.0, 0.1)
    return net


def patch_parallel_vs_single(size: int, steps: int, mode: str = "sync",
                             norm_axes: str = "hw", group=None) -> dict:
    """Run a random UNet2D patch-parallel (over ``group``, default the world) and on one
    process (locally, on every rank): one network call and a short DDIM sampling; returns the
    largest differences and byte counts."""
    import pydiff

    from ..parallel import PatchParallel

    net = random_unet2d(norm_axes=norm_axes)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, size, size + 8, generator=g)
    t = torch.tensor([0.3, 0.8])
    parallel = PatchParallel(net, mode=mode, group=group)
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


def stale_plumbing(size: int, norm_axes: str = "hw", group=None) -> dict:
    """The stale modes on a repeated input, whose previous-call activations are exact: each
    variant's largest difference from the single-process output over a synchronous call and
    three stale ones (it must be rounding: which layer's rows, statistics and K/V go where).
    Displaced with each GroupNorm treatment; partial (all of each neighbour's rows, GroupNorm
    statistics along the chain) only over two ranks, where the neighbours are everyone."""
    from ..parallel import PatchParallel

    net = random_unet2d(norm_axes=norm_axes)
    x = torch.randn(2, 1, size, size, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.5, 2.0])
    world = dist.get_world_size(group)
    variants = {f"displaced/{gn}": ("displaced", {"gn": gn})
                for gn in ("sync", "corrected", "shifted")}
    if world == 2:
        variants.update({f"partial/{gn}": ("partial", {"gn": gn, "fraction": 1.0})
                         for gn in ("sync", "corrected")})
    out: dict = {}
    with torch.no_grad():
        ref = net(x, t)
        scale = max(1.0, float(ref.abs().max()))
        for name, (mode, options) in variants.items():
            parallel = PatchParallel(net, mode=mode, group=group, warmup=1, **options)
            out[name] = max(float((parallel(x, t) - ref).abs().max()) / scale for _ in range(4))
    return out


def _single_process_sample(net: torch.nn.Module, size: int, steps: int, seed: int,
                           group=None) -> torch.Tensor:
    """The reference sample of ``net`` on one process, made once on the group's first rank and
    broadcast: every rank making it too would multiply the reference's cost by the world size
    on shared cores."""
    from ..parallel.model import sample_image

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return sample_image(net, size, steps, seed)
    first = dist.get_global_rank(group, 0) if group is not None else 0
    single = torch.empty(1, 1, size, size)
    if dist.get_rank() == first:
        single = sample_image(net, size, steps, seed)
    dist.broadcast(single, src=first, group=group)
    return single


def patch_modes_vs_single(size: int, steps: int, modes: tuple[str, ...] = ("displaced",
                          "partial"), seed: int = 0, path: str | None = None, group=None,
                          **options) -> dict:
    """Sample the shipped patch-parallel model (or the checkpoint at ``path``) in each stale
    mode over ``group`` (default the world) and on one process (on the group's first rank,
    broadcast); returns the PSNR of each mode against the single-process sample and its bytes
    per call."""
    from ..parallel import PatchParallel
    from ..parallel.model import load_patch_model, psnr, sample_image

    net = load_patch_model(path).net
    single = _single_process_sample(net, size, steps, seed, group)
    out: dict = {"rank": dist_info().rank}
    for mode in modes:
        parallel = PatchParallel(net, mode=mode, group=group, **options)
        x = sample_image(parallel, size, steps, seed)
        out[mode] = {"psnr": psnr(x, single), "bytes_per_call": parallel.bytes_sent /
                     max(parallel.calls, 1), "calls": parallel.calls}
    return out


def patch_parallel_suite(size: int, steps: int, quality_size: int, quality_steps: int) -> dict:
    """The patch-parallel checks of tests/test_parallel.py in one launch of four ranks (a
    launch costs seconds of process start-up per rank): first two pairs of ranks, each its
    own two-rank group, then all four. On each group: ``sync`` against one process on a random
    UNet2D (GroupNorm over rows and columns on the first pair and at four ranks, per column on
    the second pair) and a random DiT (and image DiT), the stale modes' plumbing
    (:func:`stale_plumbing`, the DiT's too); displaced on the trained DiT over each pair, and
    at four ranks the stale modes on the trained UNet2D (:func:`patch_modes_vs_single`)."""
    from ..parallel.model import SHIPPED_DIT

    rank = dist.get_rank()
    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]  # every rank creates both
    pair = pairs[rank // 2]
    norm_axes = "hw" if rank < 2 else "h"
    out: dict = {"rank": rank}
    for world, group in ((2, pair), (4, None)):
        out[world] = {"norm_axes": norm_axes if world == 2 else "hw",
                      "sync": patch_parallel_vs_single(size, steps, "sync",
                                                       norm_axes if world == 2 else "hw", group),
                      "plumbing": stale_plumbing(size, norm_axes if world == 2 else "hw", group),
                      "dit": dit_patch_vs_single(6 * world, steps, group)}
    # the DiT's stale K/V (every layer attends to the other bands' previous K/V) need more,
    # closer steps than the UNet2D's stale halos: displaced over each pair at 20 steps
    out[2]["quality_dit"] = patch_modes_vs_single(quality_size, 20, path=str(SHIPPED_DIT),
                                                  group=pair)
    out[2]["quality_dit_extrapolated"] = patch_modes_vs_single(
        quality_size, 20, path=str(SHIPPED_DIT), group=pair, extrapolate=True)
    out[4]["quality"] = patch_modes_vs_single(quality_size, quality_steps)
    out[4]["quality_dit"] = patch_modes_vs_single(quality_size, 20, modes=("partial",),
                                                  path=str(SHIPPED_DIT))
    return out


def dit_patch_vs_single(length: int, steps: int, group=None) -> dict:
    """A random DiT over sequences of ``length`` tokens, patch-parallel and on one process:
    ``sync`` calls with per-sample and per-position times, a global condition and a key mask
    cutting across the bands, and a short DDIM sampling; ``displaced`` and ``partial`` (its
    tokens sent in the model's dtype, in half precision: ``partial_half``, and as int8 with
    a scale per token: ``partial_int8``) on a repeated input, whose stale K/V are exact.
    Returns the largest differences from the single-process outputs, relative to the output's
    scale, and the bytes each mode sent per call."""
    import pydiff

    from ..parallel import PatchParallel

    net = random_dit()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, length, generator=g)
    inputs = {"global_cond": torch.randn(2, 3, generator=g),
              "mask": torch.ones(2, length, dtype=torch.bool)}
    inputs["mask"][1, length // 3:] = False  # keys of some bands partly, of others all masked
    times = [torch.tensor([0.3, 0.8]), torch.rand(2, length, generator=g)]
    out: dict = {"rank": dist_info().rank}

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))

    with torch.no_grad():
        refs = [net(x, t, **inputs) for t in times]
        sync = PatchParallel(net, mode="sync", group=group)
        out["scale"] = min(float(r.abs().max()) for r in refs)
        out["sync_call"] = max(rel(sync(x, t, **inputs), r) for t, r in zip(times, refs))
        out["sync_bytes_per_call"] = sync.bytes_sent / sync.calls
        schedule = pydiff.VPSchedule()
        x_T = torch.randn(1, 2, length, generator=g)
        cond = {"global_cond": inputs["global_cond"][:1]}
        samples = [pydiff.sample(pydiff.Denoiser(m, schedule, prediction="eps", cond=cond), x_T,
                                 "ddim", steps=steps) for m in (net, sync)]
        out["sync_sample"] = rel(samples[1], samples[0])
        # partial on a DiT: every band's normalized block inputs, K/V rebuilt by the receiver
        # (exact in the model's dtype on a repeated input; half precision on the wire)
        modes = [("displaced", {}), ("partial", {"wire": None}), ("partial_half", {}),
                 ("partial_int8", {"wire": torch.int8})]
        for name, options in modes:
            mode = name.split("_")[0]
            stale = PatchParallel(net, mode=mode, group=group, warmup=1, **options)
            calls = [stale(x, times[1], **inputs) for _ in range(3)]  # sync, then two stale
            out[name] = max(rel(c, refs[1]) for c in calls)
            out[name + "_bytes_per_call"] = stale.bytes_sent / stale.calls
            before = stale.bytes_sent
            stale(x, times[1], **inputs)
            out[name + "_stale_bytes"] = stale.bytes_sent - before
        # an image DiT: bands of patch rows (patchify, the DiT's bands, unpatchify)
        image_net = random_image_dit()
        image = torch.randn(2, 1, 4 * dist.get_world_size(group), 6, generator=g)
        out["image_sync"] = rel(PatchParallel(image_net, group=group)(image, times[0]),
                                image_net(image, times[0]))
    return out
