"""Inpainting a correlated Gaussian: replacement, RePaint, DPS and the exact likelihood.

Data ``N(m, S)`` in 2D with correlation ``rho``; coordinate 0 is observed (``x_0 = y``) and the
exact conditional of coordinate 1 is ``N(m_1 + rho (y - m_0), 1 - rho^2)``. Each method samples
``n`` points from the exact prior denoiser and the table reports the error of the conditional
mean (in units of its standard error), the variance ratio, network evaluations and wall time.

Methods: ``InpaintReplace`` with DDPM and DDIM; RePaint (:class:`pydiff.guidance.Resampling`)
with ``jump_length`` 1 and 5; :class:`pydiff.guidance.MeasurementGuidance` with DPS steps and
with the exact Gaussian likelihood (``noise_std(t)^2 = Var[x_0 | x_t]`` + a tiny measurement
noise), which is exact up to discretisation.

    PYDIFF_NO_EXT=1 python benchmarks/guidance_inpainting.py [--n 4000] [--threads 1]

Writes benchmarks/results/guidance_inpainting.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import pydiff
from pydiff.guidance import MeasurementGuidance, Resampling
from pydiff.schedules import as_time

F64 = torch.float64


def make_model(sched: pydiff.Schedule, mean: torch.Tensor, cov: torch.Tensor) -> pydiff.Denoiser:
    eye = torch.eye(2, dtype=F64)

    def net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = as_time(t[0])
        a, s = sched.alpha(tt), sched.sigma(tt)
        gain = a * cov @ torch.linalg.inv(a**2 * cov + s**2 * eye)
        x0 = mean + (x - a * mean) @ gain.T
        return (x - a * x0) / s

    return pydiff.Denoiser(net, sched, prediction="eps", time_input="t")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--rho", type=float, default=0.8)
    parser.add_argument("--y", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    sched = pydiff.VPSchedule()
    mean = torch.tensor([0.5, -0.3], dtype=F64)
    cov = torch.tensor([[1.0, args.rho], [args.rho, 1.0]], dtype=F64)
    model = make_model(sched, mean, cov)
    n, y = args.n, args.y
    cond_mean = float(mean[1] + args.rho * (y - mean[0]))
    cond_var = 1 - args.rho**2

    known = torch.tensor([[y, 0.0]], dtype=F64).expand(n, 2)
    mask = torch.tensor([1.0, 0.0], dtype=F64)
    replace = [pydiff.hooks.InpaintReplace(known, mask)]
    measure = torch.full((n, 1), y, dtype=F64)

    def observed(x0: torch.Tensor) -> torch.Tensor:
        return x0[:, :1]

    def std_exact(t: torch.Tensor) -> torch.Tensor:
        # Var[x_0-coordinate | x_t] of the prior plus a tiny measurement noise
        a, s = sched.alpha(t), sched.sigma(t)
        inv = torch.linalg.inv(a**2 * cov + s**2 * torch.eye(2, dtype=F64))
        post = cov - a**2 * cov @ inv @ cov
        return (post[0, 0] + 1e-4).sqrt()

    exact = MeasurementGuidance(model, observed, measure, step="likelihood", noise_std=std_exact)
    dps = MeasurementGuidance(model, observed, measure, step="dps", scale=2.0)
    methods = [
        ("replace + ddpm", model, "ddpm", 100, replace),
        ("replace + ddpm", model, "ddpm", 400, replace),
        ("replace + ddim", model, "ddim", 100, replace),
        ("RePaint r=10 j=1 (ddpm)", model, Resampling("ddpm", 10, 1), 50, replace),
        ("RePaint r=10 j=5 (ddpm)", model, Resampling("ddpm", 10, 5), 50, replace),
        ("DPS zeta=2 (ddim)", dps, "ddim", 100, []),
        ("exact likelihood (dpmpp_2m)", exact, "dpmpp_2m", 50, []),
        ("exact likelihood (ddpm)", exact, "ddpm", 200, []),
    ]
    rows = []
    for name, mdl, solver, steps, hooks in methods:
        g = torch.Generator().manual_seed(0)
        x_T = pydiff.prior(sched, (n, 2), generator=g).to(F64)
        start = time.perf_counter()
        state = pydiff.sample(mdl, x_T, solver, steps=steps, generator=g, hooks=hooks,
                              return_state=True)
        seconds = time.perf_counter() - start
        u = state.x[:, 1]
        se = math.sqrt(cond_var / n)
        rows.append({
            "method": name, "steps": steps, "nfe": state.nfe,
            "mean_error_in_se": (float(u.mean()) - cond_mean) / se,
            "variance_ratio": float(u.var()) / cond_var,
            "known_error": float((state.x[:, 0] - y).abs().mean()),
            "seconds": seconds,
        })
    print(f"conditional N({cond_mean:.3f}, {cond_var:.3f}); n={n}; standard error of the mean "
          f"{math.sqrt(cond_var / n):.4f}")
    print(f"{'method':32s} {'steps':>5s} {'NFE':>5s} {'mean err/se':>11s} {'var ratio':>9s} "
          f"{'|x0-y|':>8s} {'s':>6s}")
    for r in rows:
        print(f"{r['method']:32s} {r['steps']:5d} {r['nfe']:5d} {r['mean_error_in_se']:11.1f} "
              f"{r['variance_ratio']:9.3f} {r['known_error']:8.4f} {r['seconds']:6.2f}")
    out = Path(__file__).parent / "results" / "guidance_inpainting.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"n": n, "rho": args.rho, "y": y, "conditional_mean": cond_mean,
                               "conditional_variance": cond_var, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
