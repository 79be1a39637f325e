"""Patch parallelism on GPUs (NCCL), one rank per GPU, under torchrun (see parallel_gpu.sh):
sync against one GPU (max difference), displaced / partial PSNR against one GPU, bytes per
rank per step and seconds per step, on the shipped procedural-image model; a random DiT in sync
mode against one GPU; the shipped (trained) DiT's three modes against one GPU at 64 px.

    torchrun --nproc_per_node 2 benchmarks/parallel_gpu.py --size 512 --steps 10 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from pydiff.distributed import dist_info, process_group
from pydiff.parallel import PatchParallel
from pydiff.parallel.model import load_patch_model, psnr, sample_image


def _dit_sync(device: torch.device, world: int) -> dict:
    """A random DiT in sync mode against one GPU: its attention merged band by band through
    the log-sum-exp (SDPA's CUDA path with ``return_lse``), a key mask across the bands."""
    from pydiff.testing.distributed import random_dit

    net = random_dit().to(device)
    g = torch.Generator().manual_seed(1)
    length = 256 * world
    x, t = torch.randn(2, 2, length, generator=g), torch.rand(2, length, generator=g)
    cond = {"global_cond": torch.randn(2, 3, generator=g).to(device),
            "mask": torch.ones(2, length, dtype=torch.bool, device=device)}
    cond["mask"][1, length // 3:] = False
    with torch.no_grad():
        ref = net(x.to(device), t.to(device), **cond)
        out = PatchParallel(net, mode="sync")(x.to(device), t.to(device), **cond)
    diff = float((out - ref).abs().max()) / max(1.0, float(ref.abs().max()))
    if diff > 1e-4:
        raise SystemExit(f"parallel_gpu: DiT sync differs from one GPU by {diff:.2e}")
    return {"model": "dit", "length": length, "nproc": world, "mode": "sync", "max_diff": diff}


def _trained_dit(device: torch.device, world: int, steps: int = 20) -> list[dict]:
    """The shipped DiT (64 x 64, its training size) in the stale modes against one GPU."""
    from pydiff.parallel.model import SHIPPED_DIT

    net = load_patch_model(SHIPPED_DIT).net.to(device)
    single = sample_image(net, 64, steps, 0, device=device)
    rows = []
    # partial on a DiT: every band's normalized block inputs in float16 (or int8), K/V rebuilt
    for mode, extrapolate, wire in (("sync", False, None), ("displaced", False, None),
                                    ("partial", False, torch.float16),
                                    ("partial", False, torch.int8),
                                    ("displaced", True, None), ("partial", True, torch.float16)):
        model = PatchParallel(net, mode=mode, extrapolate=extrapolate, wire=wire)
        x = sample_image(model, 64, steps, 0, device=device)
        rows.append({"model": "dit (trained)", "size": 64, "steps": steps, "nproc": world,
                     "mode": mode + (" extrapolated" if extrapolate else "") +
                     (" int8" if wire == torch.int8 else ""),
                     "psnr": psnr(x, single),
                     "max_diff": float((x - single).abs().max()),
                     "bytes_per_step": model.bytes_sent / model.calls})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    with process_group("nccl", timeout=120):
        info = dist_info()
        if info.world_size > torch.cuda.device_count():
            raise SystemExit(f"parallel_gpu: {info.world_size} ranks but "
                             f"{torch.cuda.device_count()} GPUs: one rank per GPU")
        device = torch.device("cuda", torch.cuda.current_device())
        net = load_patch_model().net.to(device)
        rows = []
        for size in args.sizes:
            torch.cuda.synchronize()
            start = time.perf_counter()
            single = sample_image(net, size, args.steps, 0, device=device)
            torch.cuda.synchronize()
            single_s = (time.perf_counter() - start) / args.steps
            for mode in ("sync", "displaced", "partial"):
                model = PatchParallel(net, mode=mode)
                sample_image(model, size, 2, 0, device=device)  # warm the kernels and NCCL
                model.bytes_sent, model.calls = 0, 0
                torch.cuda.synchronize()
                start = time.perf_counter()
                x = sample_image(model, size, args.steps, 0, device=device)
                torch.cuda.synchronize()
                value = psnr(x, single)
                rows.append({"size": size, "nproc": info.world_size, "mode": mode,
                             "psnr": value, "max_diff": float((x - single).abs().max()),
                             "bytes_per_step": model.bytes_sent / model.calls,
                             "seconds_per_step": (time.perf_counter() - start) / args.steps,
                             "single_seconds_per_step": single_s})
                if info.rank == 0:
                    r = rows[-1]
                    print(f"{size} px, {info.world_size} GPUs, {mode}: PSNR "
                          f"{'identical' if value is None else f'{value:.1f} dB'}, max diff "
                          f"{r['max_diff']:.2e}, {r['bytes_per_step']:,.0f} B/rank/step, "
                          f"{r['seconds_per_step'] * 1e3:.1f} ms/step (1 GPU "
                          f"{single_s * 1e3:.1f} ms/step)", flush=True)
        rows.append(_dit_sync(device, info.world_size))
        if info.rank == 0:
            print(f"DiT, {info.world_size} GPUs, sync: max diff {rows[-1]['max_diff']:.2e} "
                  "(relative to the output's scale)", flush=True)
        rows += _trained_dit(device, info.world_size)
        if info.rank == 0:
            for r in rows[-6:]:
                value = r["psnr"]
                print(f"trained DiT 64 px, {info.world_size} GPUs, {r['mode']}: PSNR "
                      f"{'identical' if value is None else f'{value:.1f} dB'}, "
                      f"{r['bytes_per_step']:,.0f} B/rank/step", flush=True)
        if info.rank == 0 and args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
