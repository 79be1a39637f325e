"""Where the medical reconstructions lose against TV: the value-range estimate and the prior.

Two diagnostics per image (the held-out procedural image and the evaluation images):

- **range**: the value range :class:`Reconstructor` estimates from the measurement (the 0.5% /
  99.5% quantiles of a short TV reconstruction for CT, of CG-SENSE for MRI) against the image's
  true (min, max), as a share of the true span;
- **denoise**: the prior alone, no measurement: the image normalised with its true range into
  ``[-1, 1]``, noised to sigma, and the prior's x0 prediction's PSNR (data range 2) against the
  clean image, beside the noisy input's. If the prior knew an image's content as well as a
  held-out procedural image's, the two would match; the gap says how far that image is from
  the prior's data.

    python benchmarks/medical_diagnose.py [--images procedural,CT_small,MR_small,shepp_logan]
        [--sigmas 0.02,0.05,0.1,0.2,0.5] [--prior DIR] [--threads 1]

Prints markdown tables; writes benchmarks/results/medical_diagnose.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pydicom
import torch
from pydicom.data import get_testdata_file
from pydiff.domains.medical import (
    CTProjector,
    GaussianNoise,
    MRIMask,
    MRIOperator,
    Reconstructor,
    shepp_logan,
)
from pydiff.domains.medical.classical import cg_sense, zero_filled

from pydiff.training.procedural import ProceduralImages

TUNING_SEED = 777  # as benchmarks/medical_recon.py: a seed the shipped prior never trained on


def images(names: list[str], size: int, procedural: int) -> dict[str, torch.Tensor]:
    found = {}
    for name in names:
        if name == "procedural":
            for k in range(procedural):  # held-out images
                found[f"procedural_{k}"] = ProceduralImages(procedural, size,
                                                            seed=TUNING_SEED)[k][0]
        elif name == "shepp_logan":
            found[f"shepp_logan_{size}"] = shepp_logan(size)
        else:
            found[name] = torch.from_numpy(pydicom.dcmread(get_testdata_file(
                f"{name}.dcm")).pixel_array.astype("float32"))
    return found


def psnr(a: torch.Tensor, b: torch.Tensor, span: float) -> float:
    return float(10 * torch.log10(span ** 2 / (a - b).pow(2).mean()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default="procedural,shepp_logan,CT_small,MR_small")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--procedural", type=int, default=3, help="held-out procedural images")
    ap.add_argument("--sigmas", default="0.02,0.05,0.1,0.2,0.5")
    ap.add_argument("--noise", type=float, default=0.005,
                    help="as benchmarks/medical_recon.py: CT sinogram noise relative to its max; "
                         "MRI gets 0.4 of it relative to the k-space max")
    ap.add_argument("--prior", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/medical_diagnose.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rec = Reconstructor.from_pretrained(args.prior or "ct")
    sigmas = [float(s) for s in args.sigmas.split(",")]
    rows = []
    for name, img in images(args.images.split(","), args.size,
                                    args.procedural).items():
        x = img[None, None]
        n = x.shape[-1]
        lo, hi = float(x.min()), float(x.max())
        row: dict = {"image": name, "size": n, "true_range": [lo, hi]}
        for modality in ("ct", "mri"):
            if name == "CT_small" and modality == "mri" or name == "MR_small" and \
                    modality == "ct":
                continue
            g = torch.Generator().manual_seed(0)
            if modality == "ct":
                op = CTProjector(angles=8, size=n)
                clean = op.A(x)
                y = GaussianNoise(args.noise * float(clean.abs().max()))(clean, g)
                baseline = op.fbp(y)
            else:
                mask = MRIMask(4, center_fraction=0.08, pattern="equispaced")(
                    n, n, torch.Generator().manual_seed(1))
                op = MRIOperator(mask, sensitivities=8)
                clean = op.A(x)
                y = GaussianNoise(args.noise * 0.4 * float(clean.abs().max()))(clean, g)
                y = y * mask
                baseline = zero_filled(op, y)
            elo, ehi = rec._estimate_range(y, op, baseline, modality)
            row[f"{modality}_estimated_range"] = [round(elo, 4), round(ehi, 4)]
            row[f"{modality}_range_error"] = [round((elo - lo) / (hi - lo), 3),
                                              round((ehi - hi) / (hi - lo), 3)]
            if modality == "mri":  # the earlier estimate: CG-SENSE's 99.5% quantile, lo = 0
                old = float(torch.quantile(cg_sense(op, y, iterations=10).abs().flatten(),
                                           0.995))
                row["mri_old_range_error"] = [round(-lo / (hi - lo), 3),
                                              round((old - hi) / (hi - lo), 3)]
        u = (x - (lo + hi) / 2) / ((hi - lo) / 2)
        g = torch.Generator().manual_seed(1)
        eps = torch.randn(u.shape, generator=g)
        row["denoise"] = {}
        with torch.no_grad():
            for s in sigmas:
                x0 = rec.model.x0(u + s * eps, s).clamp(-1, 1)
                row["denoise"][str(s)] = {"noisy": round(psnr(u + s * eps, u, 2.0), 2),
                                          "prior": round(psnr(x0, u, 2.0), 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print("\n| image | true range | CT 8-view estimate (lo, hi error / span) | "
          "MRI 4x estimate | MRI 4x, CG-SENSE 99.5% (earlier) |")
    print("|---|---|---|---|---|")
    for r in rows:
        ct, mr = r.get("ct_range_error", ""), r.get("mri_range_error", "")
        print(f"| {r['image']} | {[round(v, 3) for v in r['true_range']]} | {ct} | {mr} | "
              f"{r.get('mri_old_range_error', '')} |")
    print("\n| image | " + " | ".join(f"sigma {s}: noisy / prior" for s in sigmas) + " |")
    print("|---|" + "---|" * len(sigmas))
    for r in rows:
        cells = [f"{r['denoise'][str(s)]['noisy']} / {r['denoise'][str(s)]['prior']}"
                 for s in sigmas]
        print(f"| {r['image']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
