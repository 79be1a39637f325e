"""Medical reconstruction quality: diffusion methods vs FBP / TV (CT) and zero-filled / CG-SENSE /
CS-TV (MRI) on images the prior never saw.

Images (local, none downloaded, used at their own sizes; the prior is size-agnostic): the
modified Shepp-Logan phantom (``--size``, default 128), pydicom's CT_small.dcm (128x128, raw
stored values) and MR_small.dcm (64x64). CT: parallel beam with 8 and 4 views, fan beam with 60
views over 360 degrees, and limited angle (60 parallel views over 0-90 degrees); Gaussian noise of
0.5% of the sinogram's maximum. MRI: 8 simulated coils, equispaced masks at 4x and 8x (8% and 4%
centre), Gaussian k-space noise. Each method reconstructs with its default parameters and the
value range estimated from the measurement (nothing is tuned on the evaluation images); PSNR and
SSIM are MONAI's metrics with the data range of the reference image, seconds are wall time per
slice on this CPU (``--threads``).

    python benchmarks/medical_recon.py [--size 128] [--threads 2] [--samples 1]
        [--settings ct8,ct4,fan60,limited90,mri4,mri8] [--methods dds,red_diff,...]
        [--images shepp_logan,CT_small,MR_small] [--procedural 3] [--steps dds=10,...]
        [--option dps.scale=0.3] [--option projection.tv_refine=0.03]
        [--prior CHECKPOINT_DIR]

With the option ``tv_refine`` a row also reports the diffusion image before the TV refinement
(``psnr_unrefined``, ``ssim_unrefined``). With ``--samples K > 1`` each row also reports the
Pearson correlation between the per-pixel posterior std and the actual |error| of the mean
(``std_error_corr``).

Writes benchmarks/results/medical_recon.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import pydicom
import torch
from monai.metrics import PSNRMetric, SSIMMetric
from pydicom.data import get_testdata_file
from pydiff.domains.medical import (
    CTProjector,
    GaussianNoise,
    MRIMask,
    MRIOperator,
    Reconstructor,
    shepp_logan,
)

from pydiff.training.procedural import ProceduralImages

TUNING_SEED = 777  # the shipped prior trained on seed 0's images
CT_METHODS = ["fbp", "tv", "dds", "projection", "dps", "red_diff"]
MRI_METHODS = ["zero_filled", "cg_sense", "tv", "dds", "projection", "dps", "red_diff"]
STEPS = {"dds": 20, "projection": 30, "dps": 50, "red_diff": 50}
# name: (modality, label, operator arguments or acceleration)
SETTINGS = {
    "ct8": ("ct", "CT 8 views", {"angles": 8}),
    "ct4": ("ct", "CT 4 views", {"angles": 4}),
    "fan60": ("ct", "CT fan beam 60 views", {"angles": 60, "geometry": "fan"}),
    "limited90": ("ct", "CT limited angle 90 deg (60 views)",
                  {"angles": [math.pi / 2 * i / 60 for i in range(60)]}),
    "mri4": ("mri", "MRI 4x", 4),
    "mri8": ("mri", "MRI 8x", 8),
}


def dicom(name: str) -> torch.Tensor:
    return torch.from_numpy(pydicom.dcmread(get_testdata_file(name)).pixel_array.astype("float32"))


def metrics(image: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    span = float(ref.max() - ref.min())
    p = PSNRMetric(max_val=span)(image, ref)
    s = SSIMMetric(spatial_dims=2, data_range=span)(image, ref)
    return float(p.mean()), float(s.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--methods", default=None, help="comma-separated subset")
    ap.add_argument("--settings", default="ct8,ct4,mri4,mri8",
                    help=f"comma-separated subset of {','.join(SETTINGS)}")
    ap.add_argument("--images", default="shepp_logan,CT_small,MR_small",
                    help="comma-separated subset of the evaluation images, or 'procedural' "
                         "(a held-out procedural image, for tuning a method's options)")
    ap.add_argument("--procedural", type=int, default=1,
                    help="how many held-out procedural images 'procedural' means (default 1)")
    ap.add_argument("--steps", default="",
                    help="NFE per method, e.g. dds=10,projection=20 (default: the table's)")
    ap.add_argument("--option", action="append", default=[],
                    help="a method option, e.g. dps.scale=0.3 or dds.cg=10 (repeatable)")
    ap.add_argument("--noise", type=float, default=0.005,
                    help="Gaussian noise std relative to the CT sinogram's maximum (0.005); "
                         "MRI gets 0.4 of it relative to the k-space maximum (0.002)")
    ap.add_argument("--oracle-range", action="store_true",
                    help="diagnostic: give the methods the true image's (min, max) instead of "
                         "the range estimated from the measurement")
    ap.add_argument("--prior", default=None,
                    help="a checkpoint folder of `pydiff medical train` (default: the shipped)")
    ap.add_argument("--out", default="benchmarks/results/medical_recon.json")
    args = ap.parse_args()
    steps = dict(STEPS, **{k: int(v) for k, v in (kv.split("=") for kv in args.steps.split(",")
                                                  if kv)})
    options: dict[str, dict[str, float | int | str]] = {}
    for item in args.option:
        key, value = item.split("=")
        method, name = key.split(".")
        parsed: float | int | str = value  # a name, e.g. dds.warm_start=tv
        for kind in (int, float):  # 3 -> int, 1e-4 and 0.5 -> float
            try:
                parsed = kind(value)
                break
            except ValueError:
                pass
        options.setdefault(method, {})[name] = parsed
    torch.set_num_threads(args.threads)
    pick = set(args.methods.split(",")) if args.methods else None
    wanted = set(args.images.split(","))
    images = {f"shepp_logan_{args.size}": shepp_logan(args.size),
              "CT_small": dicom("CT_small.dcm"), "MR_small": dicom("MR_small.dcm")}
    images = {k: v for k, v in images.items() if k.rsplit("_", 1)[0] in wanted or k in wanted}
    if "procedural" in wanted:  # for tuning: images of a seed the prior's training never drew
        held_out = ProceduralImages(args.procedural, args.size, seed=TUNING_SEED)
        for k in range(args.procedural):
            images[f"procedural_{args.size}" + (f"_{k}" if k else "")] = held_out[k][0]
    rows = []
    for key in args.settings.split(","):
        modality, label, setting = SETTINGS[key]
        rec = Reconstructor.from_pretrained(args.prior or modality)
        for name, img in images.items():
            if modality == "ct" and name == "MR_small" or modality == "mri" and \
                    name == "CT_small" or name.startswith("procedural") and "procedural" \
                    not in wanted:
                continue
            x = img[None, None]
            n = x.shape[-1]
            g = torch.Generator().manual_seed(0)
            if modality == "ct":
                op = CTProjector(size=n, **setting)
                clean = op.A(x)
                y = GaussianNoise(args.noise * float(clean.abs().max()))(clean, g)
                methods = CT_METHODS
            else:
                frac = 0.08 if setting == 4 else 0.04
                mask = MRIMask(setting, center_fraction=frac, pattern="equispaced")(
                    n, n, torch.Generator().manual_seed(1))
                op = MRIOperator(mask, sensitivities=8)
                clean = op.A(x)
                y = GaussianNoise(args.noise * 0.4 * float(clean.abs().max()))(clean, g)
                methods = MRI_METHODS
            for method in methods:
                if pick and method not in pick:
                    continue
                start, cpu = time.perf_counter(), time.process_time()
                out = rec.reconstruct(y, operator=op, method=method,
                                      steps=steps.get(method), n_samples=args.samples,
                                      value_range=(float(x.min()), float(x.max()))
                                      if args.oracle_range else None,
                                      **options.get(method, {}))
                seconds = time.perf_counter() - start
                # CPU seconds of this process (all threads): what contention on a shared
                # machine does not inflate; cpu / threads bounds the wall time on idle cores
                cpu = time.process_time() - cpu
                p, s = metrics(out.image, x)
                row = {"setting": label, "image": name, "size": n, "method": method,
                       "psnr": round(p, 2), "ssim": round(s, 4), "nfe": out.nfe,
                       "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
                       "samples": args.samples,
                       "options": options.get(method, {}), "oracle_range": args.oracle_range,
                       "load": round(os.getloadavg()[0], 1)}
                if "unrefined" in out.extra:  # tv_refine: the diffusion image before TV
                    pu, su = metrics(out.extra["unrefined"], x)
                    row["psnr_unrefined"], row["ssim_unrefined"] = round(pu, 2), round(su, 4)
                if args.samples > 1:
                    err = (out.image - x).abs().flatten()
                    row["std_error_corr"] = round(float(torch.corrcoef(
                        torch.stack([out.std.flatten(), err]))[0, 1]), 3)
                    # the same over 8x8-pixel blocks: does the map find the regions with errors
                    # (pixel-level correlation also scores where inside a region they sit)
                    blocks = [torch.nn.functional.avg_pool2d(v, 8, ceil_mode=True).flatten()
                              for v in (out.std, (out.image - x).abs())]
                    row["std_error_corr_8px"] = round(float(torch.corrcoef(
                        torch.stack(blocks))[0, 1]), 3)
                rows.append(row)
                print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "threads": args.threads, "rows": rows},
                              indent=1))
    corr = args.samples > 1
    print("\n| setting | image | method | PSNR | SSIM | NFE | s/slice | CPU s/slice |"
          + (" std/|error| corr | 8x8 blocks |" if corr else ""))
    print("|---|---|---|---|---|---|---|---|" + ("---|---|" if corr else ""))
    for r in rows:
        print(f"| {r['setting']} | {r['image']} ({r['size']}px) | {r['method']} | {r['psnr']} "
              f"| {r['ssim']} | {r['nfe']} | {r['seconds']} | {r['cpu_seconds']} |"
              + (f" {r.get('std_error_corr', '')} | {r.get('std_error_corr_8px', '')} |"
                 if corr else ""))


if __name__ == "__main__":
    main()
