"""Batch throughput of ``pydiff medical recon``: cases per minute at 1 and 2 processes.

The folder holds ``--cases`` 2D NIfTI cases made from scikit-image's Shepp-Logan phantom at
``--size`` pixels (turned by 90 degrees and mirrored, so no two are equal). The command runs as
users run it: ``python -m pydiff.apps.cli medical recon`` for one process and
``torchrun --standalone --nproc_per_node 2`` for two, one torch thread per process, into fresh
output folders; wall time includes start-up (importing torch and MONAI, loading the prior). The
two runs' reconstructions are compared (they must be bit-identical).

    python benchmarks/medical_batch.py [--cases 8] [--size 64] [--method dds] [--steps 10]

Writes benchmarks/results/medical_batch.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--method", default="dds")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--out", default="benchmarks/results/medical_batch.json")
    args = ap.parse_args()
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    root = Path(tempfile.mkdtemp())
    scans = root / "scans"
    scans.mkdir()
    base = resize(shepp_logan_phantom(), (args.size, args.size), anti_aliasing=True)
    for i in range(args.cases):
        image = np.rot90(base, i % 4)
        image = image[:, ::-1] if i // 4 % 2 else image
        nib.save(nib.Nifti1Image(np.ascontiguousarray(image, np.float32)[..., None], np.eye(4)),
                 scans / f"case{i:03d}.nii.gz")
    common = ["-m", "pydiff.apps.cli", "medical", "recon", str(scans)]
    flags = ["--modality", "ct", "--views", str(args.views), "--method", args.method,
             "--steps", str(args.steps), "--threads", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rows = []
    outputs = {}
    for procs in (1, 2):
        out = root / f"out{procs}"
        launcher = [sys.executable] if procs == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(procs)]
        start = time.perf_counter()
        subprocess.run([*launcher, *common, str(out), *flags], check=True, env=env,
                       cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        outputs[procs] = {p.name: np.asarray(nib.load(p).dataobj)
                          for p in sorted(out.glob("*.nii.gz"))}
        row = {"processes": procs, "cases": args.cases, "seconds": round(seconds, 1),
               "cases_per_minute": round(60 * args.cases / seconds, 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    same = outputs[1].keys() == outputs[2].keys() and all(
        np.array_equal(outputs[1][k], outputs[2][k]) for k in outputs[1])
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"args": vars(args), "identical_outputs": same, "rows": rows},
                               indent=1))
    print(f"\n{args.cases} cases of {args.size}x{args.size}, {args.method} {args.steps} steps, "
          f"{args.views} views; outputs identical across 1 and 2 processes: {same}")
    print("| processes | seconds | cases per minute |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['processes']} | {r['seconds']} | {r['cases_per_minute']} |")


if __name__ == "__main__":
    main()
