"""3D reconstruction: slice-wise diffusion (``dds``) vs the whole volume with TV along z
(``mbir_tv``, DiffusionMBIR), against FBP and TV-PDHG per slice, on nibabel's anatomical.nii.

The volume (33 x 41 x 25 voxels of 2 mm, read through MONAI's NibabelReader; used at its own
size, padded to 41 x 41 for CT and cropped back) is measured slice by slice as the batch job
does it (:func:`pydiff.domains.medical.batch.measure`: parallel-beam CT, ``--views`` views,
Gaussian noise ``--noise-level`` of the sinogram RMS, seeded by the case name). PSNR over the
volume and SSIM (mean over slices) are MONAI's, with the volume's max - min as data range.

    python benchmarks/medical_volume.py [--views 8] [--steps 20] [--threads 1]

Writes benchmarks/results/medical_volume.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import nibabel as nib
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

ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--noise-level", type=float, default=0.005)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default="fbp,tv,dds,mbir_tv")
    ap.add_argument("--out", default="benchmarks/results/medical_volume.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp())
    shutil.copy(ANATOMICAL, folder / "anatomical.nii")
    case = find_cases(folder)[0]
    volume = read_case(case)
    reference = torch.from_numpy(volume.data).float()
    rec = Reconstructor.from_pretrained("ct")
    rows = []
    for method in args.methods.split(","):
        settings = BatchSettings("ct", method, views=args.views, steps=args.steps,
                                 noise_level=args.noise_level, threads=args.threads)
        measurement = measure(case, volume, settings)
        start = time.perf_counter()
        image, _, _, nfe = reconstruct_case(rec, case, volume, measurement, settings)
        seconds = time.perf_counter() - start
        psnr, ssim, data_range = _quality(image, reference)
        row = {"method": method, "psnr": round(psnr, 2), "ssim": round(ssim, 4), "nfe": nfe,
               "seconds": round(seconds, 1), "slices": int(reference.shape[0]),
               "views": args.views}
        rows.append(row)
        print(json.dumps(row), flush=True)
    shutil.rmtree(folder)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "shape": list(volume.shape),
                               "rows": rows}, indent=1))
    print(f"\n| method ({args.views} views, {reference.shape[0]} slices) | PSNR (dB) | SSIM "
          "| NFE (all slices) | seconds (volume) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['psnr']} | {r['ssim']} | {r['nfe']} | {r['seconds']} |")


if __name__ == "__main__":
    main()
