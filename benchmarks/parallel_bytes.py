"""Patch parallelism (issue 19): bytes per rank per step, PSNR against one process, seams and
wall time, for sync / displaced / partial, naive tiling without exchange, and splitting a CFG
pair across two ranks.

Every figure comes from real gloo ranks started by :func:`pydiff.distributed.launch` (one
torch thread each) on the shipped procedural-image model (:mod:`pydiff.parallel.model`),
batch 1, float32, DPM-Solver++(2M).

- Bytes: counted by the wrapper (a point-to-point message once, a rank's share of an
  all-gather once per other rank), for a synchronous step and for a steady stale step (the
  third call: two synchronous warm-up calls, the second of which also sends the stale
  messages). They depend only on the shapes, not on the machine.
- Quality: PSNR of the whole sample against the single-process sample of the same seed, and
  the seam step: the mean absolute jump between the rows on either side of each band
  boundary, divided by the same in the single-process image (1 = no visible seam).
- Time: seconds per step and the share spent waiting in exchanges, per rank count. On a
  2-core machine shared with other jobs, 4 ranks oversubscribe the cores: read the bytes.

Run:
    nice -n 10 .venv/bin/python benchmarks/parallel_bytes.py \\
        --json benchmarks/results/parallel_bytes.json
    nice -n 10 .venv/bin/python benchmarks/parallel_bytes.py --arch dit --bytes-sizes 64 \\
        --quality-size 64 --steps 20 --variants default --extrapolate --skip-cfg \\
        --json benchmarks/results/parallel_dit_20.json
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.distributed as dist

from pydiff.distributed import collective_errors, dist_info, launch
from pydiff.parallel import PatchParallel
from pydiff.parallel.model import SHIPPED, SHIPPED_DIT, load_patch_model, psnr, sample_image

PARTIAL_TARGET = 0.35  # partial's stale-step bytes at most this share of displaced's (issue 19)


class Tiled(torch.nn.Module):
    """Naive tiling: every rank runs the plain network on its band alone (no exchange at all:
    zero padding at the band edges, band-local GroupNorm and attention); outputs all-gathered."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net, self.bytes_sent, self.calls, self.wait_seconds = net, 0, 0, 0.0

    @torch.no_grad()
    def forward(self, x: torch.Tensor, t, cond=None) -> torch.Tensor:
        info = dist_info()
        rows = x.shape[2] // info.world_size
        out = self.net(x[:, :, info.rank * rows:(info.rank + 1) * rows], t).contiguous()
        parts = [torch.empty_like(out) for _ in range(info.world_size)]
        start = time.perf_counter()
        with collective_errors("tiles"):
            dist.all_gather(parts, out)
        self.wait_seconds += time.perf_counter() - start
        self.bytes_sent += out.numel() * out.element_size() * (info.world_size - 1)
        self.calls += 1
        return torch.cat(parts, dim=2)


WIRES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.int8,
         "model": None}  # partial on a DiT: its tokens' dtype on the wire


def _bytes_worker(sizes: list[int], fraction: float, path: str | None = None,
                  wire: str = "float16") -> list[dict]:
    net = load_patch_model(path).net
    rows = []
    for size in sizes:
        for mode in ("sync", "displaced", "partial"):
            model = PatchParallel(net, mode=mode, fraction=fraction, wire=WIRES[wire])
            per_call: list[int] = []
            model.register_forward_hook(lambda m, i, o, log=per_call: log.append(m.bytes_sent))
            sample_image(model, size, 3, seed=0)
            steps = [b - a for a, b in zip([0] + per_call, per_call)]
            rows.append({"size": size, "mode": mode, "rank": dist_info().rank,
                         "sync_step": steps[0], "stale_step": steps[-1]})
    return rows


def _quality_worker(size: int, steps: int, fraction: float, variants: str = "all",
                    path: str | None = None, extrapolate: bool = False,
                    wire: str = "float16") -> list[dict]:
    net = load_patch_model(path).net
    rows = []
    if variants == "all":
        variants = [("sync", {})] + [(mode, {"gn": gn}) for mode in ("displaced", "partial")
                                     for gn in ("corrected", "shifted", "sync")] + [("tiled", {})]
    else:  # the defaults only (sync's PSNR is float32 rounding at every size)
        variants = [("displaced", {"gn": "sync"}), ("partial", {"gn": "sync"}), ("tiled", {})]
    if extrapolate:  # the stale modes also with their halos and K/V extrapolated
        variants += [(m, {**o, "extrapolate": True}) for m, o in variants if m != "tiled"
                     and o.get("gn") == "sync"]
    for mode, options in variants:
        if mode == "tiled":
            model = Tiled(net)
        else:
            model = PatchParallel(net, mode=mode, fraction=fraction, wire=WIRES[wire],
                                  **options)
        dist.barrier()
        start = time.perf_counter()
        x = sample_image(model, size, steps, seed=0)
        seconds = time.perf_counter() - start
        rows.append({"mode": mode + (" extrapolated" if options.get("extrapolate") else ""),
            "gn": options.get("gn"), "rank": dist_info().rank,
            "sample": x if dist_info().rank == 0 else None, "seconds_per_step": seconds / steps,
            "wait_share": model.wait_seconds / seconds,
            "bytes_per_step": model.bytes_sent / max(model.calls, 1)})
    return rows


def _cfg_worker(size: int, steps: int, path: str | None = None) -> dict:
    """A CFG pair split across two ranks: each evaluates one member, the outputs are
    all-gathered (the model is unconditional: the pair is two evaluations, what the split
    costs does not depend on the conditioning)."""
    net = load_patch_model(path).net
    x = torch.randn(1, 1, size, size, generator=torch.Generator().manual_seed(0))
    sent, waited = 0, 0.0
    dist.barrier()
    start = time.perf_counter()
    with torch.no_grad():
        for step in range(steps):
            out = net(x, torch.full((1,), 1.0 - step / steps)).contiguous()
            parts = [torch.empty_like(out) for _ in range(2)]
            t0 = time.perf_counter()
            dist.all_gather(parts, out)
            waited += time.perf_counter() - t0
            sent += out.numel() * out.element_size()
    seconds = time.perf_counter() - start
    return {"seconds_per_step": seconds / steps, "wait_share": waited / seconds,
            "bytes_per_step": sent / steps}


def _seam_step(x: torch.Tensor, ref: torch.Tensor, bands: int) -> float:
    """Mean |jump| across the band boundaries of ``x`` over the same in ``ref``."""
    h = x.shape[2]
    seams = [h * b // bands for b in range(1, bands)]

    def jump(img: torch.Tensor) -> float:
        return float(sum((img[0, 0, r] - img[0, 0, r - 1]).abs().mean() for r in seams))

    return jump(x) / max(jump(ref), 1e-12)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nprocs", type=int, nargs="+", default=[2, 4])
    p.add_argument("--bytes-sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--quality-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--fraction", type=float, default=0.125)
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-bytes", action="store_true")
    p.add_argument("--skip-cfg", action="store_true")
    p.add_argument("--variants", choices=("all", "default"), default="all",
                   help="quality: every mode x GroupNorm treatment, or the stale modes' "
                        "defaults and naive tiling only (large sizes)")
    p.add_argument("--extrapolate", action="store_true",
                   help="quality: also the stale modes with extrapolated halos and K/V")
    p.add_argument("--arch", choices=("unet", "dit"), default="unet",
                   help="the shipped UNet2D or the shipped DiT (trained at 64x64: sample it there)")
    p.add_argument("--wire", choices=tuple(WIRES), default="float16",
                   help="partial on the DiT: the dtype of its tokens on the wire (model: the "
                        "model's dtype)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    path = str(SHIPPED_DIT if args.arch == "dit" else SHIPPED)
    torch.set_num_threads(1)
    report: dict = {"bytes": [], "quality": [], "cfg": None, "single": None}

    print("| size | ranks | sync B/step | displaced B/stale step | partial B/stale step | "
          "partial / displaced |", flush=True)
    print("|---|---|---|---|---|---|")
    for nproc in [] if args.skip_bytes else args.nprocs:
        per_rank = launch(_bytes_worker, nproc, args.bytes_sizes, args.fraction, path,
                          args.wire, timeout=600)
        for size in args.bytes_sizes:
            mean = {}
            for mode in ("sync", "displaced", "partial"):
                rows = [r for ranks in per_rank for r in ranks if r["size"] == size and
                        r["mode"] == mode]
                key = "sync_step" if mode == "sync" else "stale_step"
                mean[mode] = sum(r[key] for r in rows) / len(rows)
            ratio = mean["partial"] / mean["displaced"]
            report["bytes"].append({"size": size, "nproc": nproc, **mean, "ratio": ratio,
                                    "target_met": ratio <= PARTIAL_TARGET})
            print(f"| {size} | {nproc} | {mean['sync']:,.0f} | {mean['displaced']:,.0f} | "
                  f"{mean['partial']:,.0f} | {ratio:.0%} |", flush=True)

    if not args.skip_quality:
        size, steps = args.quality_size, args.steps
        net = load_patch_model(path).net
        start = time.perf_counter()
        single = sample_image(net, size, steps, seed=0)
        single_seconds = (time.perf_counter() - start) / steps
        report["single"] = {"size": size, "steps": steps, "seconds_per_step": single_seconds}
        print(f"\n{size}x{size}, {steps} steps; 1 process: {single_seconds:.3f} s/step\n")
        print("| ranks | mode | GroupNorm | PSNR vs 1 process | seam step | B/rank/step | "
              "s/step | waiting |")
        print("|---|---|---|---|---|---|---|---|")
        for nproc in args.nprocs:
            per_rank = launch(_quality_worker, nproc, size, steps, args.fraction, args.variants,
                              path, args.extrapolate, args.wire, timeout=1800)
            for i, row in enumerate(per_rank[0]):
                x = row["sample"]
                ranks = [r[i] for r in per_rank]
                value = psnr(x, single)
                entry = {"nproc": nproc, "mode": row["mode"], "gn": row["gn"],
                         "psnr": math.inf if value is None else value,
                         "seam_step": _seam_step(x, single, nproc),
                         "bytes_per_step": sum(r["bytes_per_step"] for r in ranks) / nproc,
                         "seconds_per_step": max(r["seconds_per_step"] for r in ranks),
                         "wait_share": sum(r["wait_share"] for r in ranks) / nproc}
                report["quality"].append(entry)
                print(f"| {nproc} | {entry['mode']} | {entry['gn'] or '-'} | "
                      f"{entry['psnr']:.1f} dB | {entry['seam_step']:.2f} | "
                      f"{entry['bytes_per_step']:,.0f} | {entry['seconds_per_step']:.3f} | "
                      f"{entry['wait_share']:.0%} |", flush=True)
    if not (args.skip_quality or args.skip_cfg):
        cfg = launch(_cfg_worker, 2, size, steps, path, timeout=600)
        report["cfg"] = {"nproc": 2, "size": size,
                         "bytes_per_step": cfg[0]["bytes_per_step"],
                         "seconds_per_step": max(r["seconds_per_step"] for r in cfg),
                         "wait_share": sum(r["wait_share"] for r in cfg) / 2,
                         "single_pair_seconds_per_step": 2 * single_seconds}
        print(f"\nCFG pair split over 2 ranks: {cfg[0]['bytes_per_step']:,.0f} B/rank/step, "
              f"{report['cfg']['seconds_per_step']:.3f} s/step (one process runs the pair in "
              f"about {2 * single_seconds:.3f} s/step)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
