"""``pydiff parallel-sample``: one image sampled with patch parallelism over N processes.

The command launches its own workers (or runs as one rank under ``torchrun``), samples a
``--size`` x ``--size`` image with :class:`pydiff.parallel.PatchParallel` and DDIM, compares it
with a single-process run of the same seed and prints seconds per step, bytes sent per rank
per step and the PSNR against the single-process image (``null`` in ``--json`` when identical).

Examples:
    $ pydiff parallel-sample --nproc 2 --mode sync --size 64 --steps 4 --seed 0 -o out.png
    $ torchrun --nproc_per_node 2 -m pydiff.apps.cli parallel-sample --mode sync --size 64 \\
        --steps 4 --seed 0 -o out.png --json out.json

Under torchrun, ``--nproc`` may be left out (it is the world size): torchrun's own parser
takes ``--nproc`` for an ambiguous abbreviation of its ``--nproc-per-node`` and refuses it.

The network is a small UNet2D with seeded random weights (the same on every rank); the
figures are about the distribution, not the image.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from .cli import positive_float, positive_int

MODES = ("sync", "displaced", "partial")
# test hook: "RANK:die" or "RANK:hang" makes that rank fail at its first step
FAULT_ENV = "PYDIFF_PARALLEL_FAULT"


def register(sub: argparse._SubParsersAction, help_text: str) -> None:
    p = sub.add_parser("parallel-sample", help=help_text, description=help_text)
    p.add_argument("--nproc", type=positive_int, default=None,
                   help="processes (ranks); required unless run under torchrun")
    p.add_argument("--mode", choices=MODES, default="sync")
    p.add_argument("--size", type=positive_int, default=64,
                   help="image size, a multiple of 8 x nproc (default 64)")
    p.add_argument("--steps", type=positive_int, default=4, help="DDIM steps (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="PNG of the sample")
    p.add_argument("--json", default=None, help="also write the figures as JSON")
    p.add_argument("--timeout", type=positive_float, default=60.0,
                   help="seconds a rank waits for a dead or hung rank before failing (60)")
    p.set_defaults(func=run)


def _model():
    from pydiff.testing.distributed import random_unet2d

    return random_unet2d(seed=0, base_channels=16, channel_mult=(1, 2, 2), attn_levels=[2])


def _sample(net, size: int, steps: int, seed: int, mode: str | None):
    """(sample, seconds per step, bytes sent per step); mode None = the plain model."""
    import torch

    import pydiff
    from pydiff.parallel import PatchParallel

    model = net if mode is None else PatchParallel(net, mode=mode)
    denoiser = pydiff.Denoiser(model, pydiff.VPSchedule(), prediction="eps")
    x_T = torch.randn(1, 1, size, size, generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    with torch.no_grad():
        x = pydiff.sample(denoiser, x_T, "ddim", steps=steps)
    seconds = (time.perf_counter() - start) / steps
    sent = model.bytes_sent / max(model.calls, 1) if mode is not None else 0.0
    return x, seconds, sent


def _fault(rank: int) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if spec and int(spec.split(":")[0]) == rank:
        if spec.endswith(":die"):
            os.kill(os.getpid(), 9)
        time.sleep(3600)


def _worker(size: int, steps: int, seed: int, mode: str) -> dict:
    """One rank: the patch-parallel sample (rank 0 returns the image)."""
    from pydiff.distributed import dist_info

    rank = dist_info().rank
    net = _model()
    _fault(rank)
    x, seconds, sent = _sample(net, size, steps, seed, mode)
    return {"rank": rank, "sample": x if rank == 0 else None, "seconds_per_step": seconds,
            "bytes_per_step": sent}


def _check(args: argparse.Namespace, world: int) -> None:
    from pydiff import InputError
    from pydiff.files import check_output

    if args.mode != "sync":
        raise InputError(f"--mode {args.mode}: not implemented yet (only sync so far)")
    unit = 8 * world
    if args.size % unit:
        raise InputError(f"--size {args.size} does not split across {world} ranks: expected a "
                         f"multiple of {unit} (8 x --nproc)")
    check_output(args.output, "--output")
    if args.json:
        check_output(args.json, "--json")


def _psnr(x, ref) -> float | None:
    mse = float(((x.double() - ref.double()) ** 2).mean())
    if mse == 0.0:
        return None
    peak = float(ref.max() - ref.min())
    return 10.0 * math.log10(peak * peak / mse)


def _report(args: argparse.Namespace, results: list[dict], world: int) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from pydiff.files import atomic_output, write_json

    sample = results[0]["sample"]
    single, single_seconds, _ = _sample(_model(), args.size, args.steps, args.seed, None)
    figures = {
        "bytes_per_rank_per_step": float(sum(r["bytes_per_step"] for r in results) / world),
        "psnr_vs_single": _psnr(sample, single),
        "seconds_per_step": float(max(r["seconds_per_step"] for r in results)),
        "mode": args.mode,
        "nproc": world,
    }
    img = sample[0, 0]
    img = ((img - img.min()) / (img.max() - img.min()).clamp_min(1e-12) * 255).round()
    with atomic_output(args.output, "--output") as tmp:
        Image.fromarray(img.to(torch.uint8).numpy().astype(np.uint8)).save(tmp, format="PNG")
    psnr = figures["psnr_vs_single"]
    print(f"parallel-sample: {world} ranks, mode {args.mode}, {args.size}x{args.size}, "
          f"{args.steps} DDIM steps, 1 torch thread per rank")
    print(f"  time per step:            {figures['seconds_per_step']:.4f} s "
          f"(single process: {single_seconds:.4f} s)")
    print(f"  bytes per rank per step:  {figures['bytes_per_rank_per_step']:.0f}")
    print("  PSNR vs single process:   " + ("identical" if psnr is None else f"{psnr:.1f} dB"))
    print(f"  image: {args.output}")
    if args.json:
        write_json(args.json, figures, "--json")


def run(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist

    from pydiff import InputError
    from pydiff.distributed import (
        DistributedError,
        collective_errors,
        dist_info,
        launch,
        process_group,
    )

    torch.set_num_threads(1)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # one rank of a torchrun launch
        world = int(os.environ["WORLD_SIZE"])
        if args.nproc not in (None, world):
            raise InputError(f"--nproc {args.nproc} but torchrun started {world} processes")
        _check(args, world)
        with process_group("gloo", timeout=args.timeout):
            result = _worker(args.size, args.steps, args.seed, args.mode)
            gathered = [None] * world
            with collective_errors("the figures"):
                dist.all_gather_object(gathered, result)
            rank = dist_info().rank
        if rank == 0:
            _report(args, gathered, world)
        return 0
    if args.nproc is None:
        raise InputError("--nproc is required (the number of processes to launch)")
    _check(args, args.nproc)
    try:
        results = launch(_worker, args.nproc, args.size, args.steps, args.seed, args.mode,
                         timeout=args.timeout)
    except DistributedError as err:
        # not a bug in pydiff and not the user's input: say what happened to each rank
        print(f"pydiff parallel-sample: {err}", file=sys.stderr)
        return 1
    _report(args, results, args.nproc)
    return 0
