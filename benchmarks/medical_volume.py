"""3D reconstruction: slice-wise diffusion (``dds``) vs the whole volume with TV along z
(``mbir_tv``, DiffusionMBIR), against FBP and TV-PDHG per slice, on nibabel's anatomical.nii.

The volume (33 x 41 x 25 voxels of 2 mm, read through MONAI's NibabelReader; used at its own
size, padded to 41 x 41 for CT and cropped back) is measured slice by slice as the batch job
does it (:func:`pydiff.domains.medical.batch.measure`: parallel-beam CT, ``--views`` views,
Gaussian noise ``--noise-level`` of the sinogram RMS, seeded by the case name). PSNR over the
volume and SSIM (mean over slices) are MONAI's, with the volume's max - min as data range.

    python benchmarks/medical_volume.py [--views 8] [--steps 20] [--threads 1]
        [--weights 0.02,0.05,0.1] [--volume anatomical|procedural]

``--weights``: one ``mbir_tv`` row per z-TV weight (in the prior's [-1, 1] units).
``--volume procedural``: instead of anatomical.nii, a held-out smooth procedural volume for
tuning (25 slices of 48 x 48 blending along z between procedural images of a seed the prior
never saw: anatomy that changes slowly from slice to slice).

Writes benchmarks/results/medical_volume.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from pydiff.domains.medical import Reconstructor
from pydiff.domains.medical.batch import (
    BatchSettings,
    _quality,
    find_cases,
    measure,
    read_case,
    reconstruct_case,
)

from pydiff.training.procedural import ProceduralImages

ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"


def procedural_volume(slices: int = 25, size: int = 48, seed: int = 777) -> torch.Tensor:
    """``[size, size, slices]``: linear blends along z between consecutive procedural images
    (seed ``seed``; the shipped prior trained on seed 0's), one key image every 8 slices."""
    keys = ProceduralImages(slices // 8 + 2, size, seed=seed).tensor()[:, 0]
    z = torch.arange(slices, dtype=torch.float32) / 8
    i = z.floor().long()
    f = (z - i)[:, None, None]
    return ((1 - f) * keys[i] + f * keys[i + 1]).permute(1, 2, 0).contiguous()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--noise-level", type=float, default=0.005)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default="fbp,tv,dds,mbir_tv")
    ap.add_argument("--weights", default="0.05", help="z-TV weights of mbir_tv rows")
    ap.add_argument("--volume", choices=["anatomical", "procedural"], default="anatomical")
    ap.add_argument("--out", default="benchmarks/results/medical_volume.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp())
    if args.volume == "anatomical":
        shutil.copy(ANATOMICAL, folder / "anatomical.nii")
    else:
        nib.save(nib.Nifti1Image(procedural_volume().numpy(), np.eye(4)),
                 folder / "procedural.nii.gz")
    case = find_cases(folder)[0]
    volume = read_case(case)
    reference = torch.from_numpy(volume.data).float()
    rec = Reconstructor.from_pretrained("ct")
    rows = []
    runs = [(m, {"weight": float(w)}) if m == "mbir_tv" else (m, {})
            for m in args.methods.split(",")
            for w in (args.weights.split(",") if m == "mbir_tv" else [None])]
    for method, options in runs:
        settings = BatchSettings("ct", method, views=args.views, steps=args.steps,
                                 noise_level=args.noise_level, threads=args.threads,
                                 options=options)
        measurement = measure(case, volume, settings)
        start, cpu = time.perf_counter(), time.process_time()
        image, _, _, nfe = reconstruct_case(rec, case, volume, measurement, settings)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        psnr, ssim, data_range = _quality(image, reference)
        row = {"method": method, **options, "volume": args.volume, "psnr": round(psnr, 2),
               "ssim": round(ssim, 4), "nfe": nfe,
               "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
               "load": round(os.getloadavg()[0], 1), "slices": int(reference.shape[0]),
               "views": args.views}
        rows.append(row)
        print(json.dumps(row), flush=True)
    shutil.rmtree(folder)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "shape": list(volume.shape),
                               "rows": rows}, indent=1))
    print(f"\n| method ({args.views} views, {reference.shape[0]} slices) | PSNR (dB) | SSIM "
          "| NFE (all slices) | seconds (volume) | CPU seconds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        name = r["method"] + (f" (z-TV weight {r['weight']})" if "weight" in r else "")
        print(f"| {name} | {r['psnr']} | {r['ssim']} | {r['nfe']} | {r['seconds']} "
              f"| {r['cpu_seconds']} |")


if __name__ == "__main__":
    main()
