"""Medical forward operators: FBP accuracy on the modified Shepp-Logan phantom and operator cost.

For each setting (parallel beam with 720, 180, 60 and 8 views, limited angle 0-90 degrees, fan
beam with 60 views) it projects the 256x256 modified Shepp-Logan phantom, reconstructs by FBP
(three filters) and reports PSNR inside the reconstruction circle (data range
1), the seconds of one ``A`` and one ``A_adjoint``, and the dot-product test's relative error.
MRI rows: 4x and 8x masks, single and 8-coil, with the zero-filled PSNR on the whole image.

    python benchmarks/medical_operators.py [--size 256] [--threads 2]

Writes benchmarks/results/medical_operators.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from pydiff.domains.medical import CTProjector, MRIMask, MRIOperator, shepp_logan


def psnr(image: torch.Tensor, reference: torch.Tensor, circle: bool) -> float:
    n = reference.shape[-1]
    c = torch.arange(n) - (n - 1) / 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    inside = (xx ** 2 + yy ** 2 <= (n / 2) ** 2) if circle else torch.ones(n, n, dtype=torch.bool)
    mse = ((image - reference)[..., inside] ** 2).mean()
    return float(10 * torch.log10(1.0 / mse))


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def dot_error(op, x: torch.Tensor) -> float:
    y = op.A(x)
    r = torch.randn_like(y)
    lhs = torch.vdot(y.flatten().to(torch.complex128), r.flatten().to(torch.complex128))
    back = op.A_adjoint(r)
    rhs = torch.vdot(x.flatten().to(torch.complex128), back.flatten().to(torch.complex128))
    return float(abs(lhs - rhs) / abs(lhs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"
                                              / "medical_operators.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = args.size
    phantom = shepp_logan(n)[None, None]
    settings = [
        ("parallel 720 views", dict(angles=720)),
        ("parallel 180 views", dict(angles=180)),
        ("parallel 60 views", dict(angles=60)),
        ("parallel 8 views", dict(angles=8)),
        ("limited angle 0-90 deg, 90 views",
         dict(angles=torch.arange(90) * (math.pi / 2 / 90))),
        ("fan 60 views (360 deg)", dict(angles=60, geometry="fan")),
        ("fan 720 views (360 deg)", dict(angles=720, geometry="fan")),
    ]
    rows = []
    print(f"| CT setting ({n}x{n}) | detectors | A s | A_adjoint s | dot err | "
          "FBP ramp dB | shepp-logan dB | hann dB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, kw in settings:
        ct = CTProjector(size=n, **kw)
        y, t_a = timed(ct.A, phantom)
        _, t_at = timed(ct.A_adjoint, y)
        row = dict(setting=name, detectors=ct.detectors, views=ct.angles.numel(),
                   seconds_A=t_a, seconds_A_adjoint=t_at, dot_error=dot_error(ct, phantom))
        for f in ("ramp", "shepp-logan", "hann"):
            row[f"fbp_{f}_psnr"] = psnr(ct.fbp(y, filter=f), phantom, circle=True)
        rows.append(row)
        fmt = [f"{row[f'fbp_{f}_psnr']:.2f}" for f in ("ramp", "shepp-logan", "hann")]
        print(f"| {name} | {ct.detectors} | {t_a:.3f} | {t_at:.3f} | {row['dot_error']:.1e} | "
              + " | ".join(fmt) + " |")
    print()
    print(f"| MRI setting ({n}x{n}) | coils | A s | A_adjoint s | dot err | zero-filled dB |")
    print("|---|---|---|---|---|---|")
    for accel, pattern, coils in ((4, "random", None), (4, "equispaced", 8), (8, "random", 8)):
        mask = MRIMask(accel, pattern=pattern)(n, n, generator=torch.Generator().manual_seed(0))
        mri = MRIOperator(mask, sensitivities=coils)
        y, t_a = timed(mri.A, phantom)
        zf, t_at = timed(mri.zero_filled, y)
        name = f"{accel}x {pattern}"
        row = dict(setting=name, coils=mri.coils, seconds_A=t_a, seconds_A_adjoint=t_at,
                   dot_error=dot_error(mri, phantom), zero_filled_psnr=psnr(zf, phantom, False))
        rows.append(row)
        print(f"| {name} | {mri.coils} | {t_a:.3f} | {t_at:.3f} | {row['dot_error']:.1e} | "
              f"{row['zero_filled_psnr']:.2f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(dict(size=n, threads=args.threads,
                                              torch=torch.__version__, rows=rows), indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
