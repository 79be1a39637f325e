"""``pydiff parallel-sample``: one image sampled with patch parallelism over N processes;
``pydiff parallel-train``: train the model it samples.

``parallel-sample`` launches its own workers (or runs as one rank under ``torchrun``), samples
a ``--size`` x ``--size`` image of the shipped procedural-image model
(:mod:`pydiff.parallel.model`) with :class:`pydiff.parallel.PatchParallel` and DPM-Solver++(2M),
compares it with a single-process run of the same seed and prints seconds per step, bytes
sent per rank per step and the PSNR against the single-process image (``null`` in ``--json``
when identical).

Examples:
    $ pydiff parallel-sample --nproc 2 --mode displaced --size 64 --steps 10 --seed 0 -o out.png
    $ torchrun --nproc_per_node 2 -m pydiff.apps.cli parallel-sample --mode sync --size 64 \\
        --steps 4 --seed 0 -o out.png --json out.json
    $ pydiff parallel-train --minutes 14 -o pydiff/training/pretrained/procedural_attn

Under torchrun, ``--nproc`` may be left out (it is the world size): torchrun's own parser
takes ``--nproc`` for an ambiguous abbreviation of its ``--nproc-per-node`` and refuses it.
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--steps", type=positive_int, default=10,
                   help="DPM-Solver++(2M) steps (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="PNG of the sample")
    p.add_argument("--json", default=None, help="also write the figures as JSON")
    p.add_argument("--timeout", type=positive_float, default=60.0,
                   help="seconds a rank waits for a dead or hung rank before failing (60)")
    p.add_argument("--warmup", type=positive_int, default=2,
                   help="synchronous steps before displaced/partial use stale activations (2)")
    p.add_argument("--fraction", type=positive_float, default=0.125,
                   help="partial on the UNet2D: share of a neighbouring band's rows whose "
                        "attention K/V is exchanged (0.125; partial on the DiT sends every "
                        "band's normalized attention inputs in float16 instead)")
    p.add_argument("--gn", choices=("sync", "corrected", "shifted"), default="sync",
                   help="GroupNorm statistics in stale steps: exchanged synchronously (default; "
                        "a few bytes per layer), DistriFusion's corrected stale ones, or those "
                        "shifted by this band's own change")
    p.add_argument("--extrapolate", action="store_true",
                   help="displaced/partial: move the stale halos and K/V on along the line "
                        "through the last two received (no extra bytes)")
    p.add_argument("--model", default=None,
                   help="checkpoint folder (default: the shipped procedural-image model of "
                        "--arch)")
    p.add_argument("--arch", choices=("unet", "dit"), default="unet",
                   help="which shipped model: the UNet2D (default) or the DiT (64 x 64 only)")
    p.set_defaults(func=run)

    t = sub.add_parser("parallel-train", help="train the procedural-image model that "
                       "parallel-sample uses", description="train the procedural-image model "
                       "that parallel-sample uses (a UNet2D with attention at its two coarsest "
                       "levels) on pydiff.training.procedural images, within a time budget")
    t.add_argument("-o", "--output", required=True, help="checkpoint folder to write")
    t.add_argument("--minutes", type=positive_float, default=12.0,
                   help="wall-clock budget (default 12)")
    t.add_argument("--max-steps", type=positive_int, default=1_000_000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=positive_int, default=1, help="torch threads (1)")
    t.add_argument("--arch", choices=("unet", "dit"), default="unet",
                   help="a UNet2D with attention (default) or a DiT over 4 x 4 patches")
    t.set_defaults(func=train)


def train(args: argparse.Namespace) -> int:
    from pydiff.files import check_output
    from pydiff.parallel.model import PatchDiTConfig, PatchModelConfig, train_patch_model

    check_output(args.output, "--output")
    recipe = PatchDiTConfig if args.arch == "dit" else PatchModelConfig
    config = recipe(minutes=args.minutes, max_steps=args.max_steps, seed=args.seed,
                              threads=args.threads)
    train_patch_model(config, args.output, progress=sys.stderr.isatty())
    print(f"parallel-train: wrote {args.output}")
    return 0


def _sample(net, args: argparse.Namespace, mode: str | None):
    """(sample, seconds per step, bytes sent per step); mode None = the plain model."""
    from pydiff.parallel import PatchParallel
    from pydiff.parallel.model import sample_image

    model = net if mode is None else PatchParallel(net, mode=mode, warmup=args.warmup,
                                                   fraction=args.fraction, gn=args.gn,
                                                   extrapolate=args.extrapolate)
    start = time.perf_counter()
    x = sample_image(model, args.size, args.steps, args.seed)
    seconds = (time.perf_counter() - start) / args.steps
    sent = model.bytes_sent / max(model.calls, 1) if mode is not None else 0.0
    return x, seconds, sent


def _net(args: argparse.Namespace):
    from pydiff.parallel.model import SHIPPED_DIT, load_patch_model

    path = args.model if args.model is not None or args.arch == "unet" else SHIPPED_DIT
    return load_patch_model(path).net


def _fault(rank: int) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if spec and int(spec.split(":")[0]) == rank:
        if spec.endswith(":die"):
            os.kill(os.getpid(), 9)
        time.sleep(3600)


def _worker(args: argparse.Namespace) -> dict:
    """One rank: the patch-parallel sample (rank 0 returns the image)."""
    from pydiff.distributed import dist_info

    rank = dist_info().rank
    net = _net(args)
    _fault(rank)
    x, seconds, sent = _sample(net, args, args.mode)
    return {"rank": rank, "sample": x if rank == 0 else None, "seconds_per_step": seconds,
            "bytes_per_step": sent}


def _check(args: argparse.Namespace, world: int) -> None:
    from pydiff import InputError
    from pydiff.files import check_output

    if args.fraction > 1:
        raise InputError(f"--fraction {args.fraction}: expected a share of the rows, at most 1")
    if args.model is not None:
        from pydiff.training import load_config

        load_config(args.model)  # a clear error for a folder that is not a checkpoint
    unit = 8 * world
    if args.size % unit:
        raise InputError(f"--size {args.size} does not split across {world} ranks: expected a "
                         f"multiple of {unit} (8 x --nproc)")
    check_output(args.output, "--output")
    if args.json:
        check_output(args.json, "--json")


def _report(args: argparse.Namespace, results: list[dict], world: int) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from pydiff.files import atomic_output, write_json
    from pydiff.parallel.model import psnr

    sample = results[0]["sample"]
    single, single_seconds, _ = _sample(_net(args), args, None)
    figures = {
        "bytes_per_rank_per_step": float(sum(r["bytes_per_step"] for r in results) / world),
        "psnr_vs_single": psnr(sample, single),
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
          f"{args.steps} DPM-Solver++(2M) steps, 1 torch thread per rank")
    print(f"  time per step:            {figures['seconds_per_step']:.4f} s "
          f"(single process: {single_seconds:.4f} s)")
    print(f"  bytes per rank per step:  {figures['bytes_per_rank_per_step']:.0f}")
    print("  PSNR vs single process:   " + ("identical" if psnr is None else f"{psnr:.1f} dB"))
    print(f"  image: {args.output}")
    if args.json:
        write_json(args.json, figures, "--json")


def _plain(args: argparse.Namespace) -> argparse.Namespace:
    """The parsed arguments without the ``func`` callables (a worker gets them pickled)."""
    return argparse.Namespace(**{k: v for k, v in vars(args).items() if not callable(v)})


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
            result = _worker(args)
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
        results = launch(_worker, args.nproc, _plain(args), timeout=args.timeout)
    except DistributedError as err:
        # not a bug in pydiff and not the user's input: say what happened to each rank
        print(f"pydiff parallel-sample: {err}", file=sys.stderr)
        return 1
    _report(args, results, args.nproc)
    return 0
