"""Diagnostics behind the speech checkpoint's numbers (BENCHMARKS.md, "Speech").

1. ``sigma_data``: the rms of ``x0 - y`` (compressed real-view spectrograms) over training
   examples, plain and under the training's loudness weighting.
2. The network's x0 estimate against the noisy state on the *true* forward process, SI-SDR at
   several ``t`` (does the network help at every noise level?).
3. SGMSE+'s PC sampler with different corrector SNRs (and none), and the MR Sampler with
   different time grids.
4. The PC sampler's trajectory on the first test example: after each step, the rms of the
   state's deviation from the true process mean ``y + alpha (x0 - y)`` over the level's sigma
   (1 where the state is as noisy as its level says), with SGMSE+'s corrector and without.

    python benchmarks/speech_diagnostics.py [--checkpoint DIR] [--count 4] [--pc-count 2]
        [--sections scale estimate pc mr trajectory] [--json F]

Writes benchmarks/results/speech_diagnostics.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from pydiff.domains.speech import SpeechEnhancer
from pydiff.domains.speech import enhancer as enhancer_module
from pydiff.domains.speech.data import make_pair
from pydiff.domains.speech.metrics import all_metrics, si_sdr
from pydiff.domains.speech.stft import Spectrogram, peak_normalizer
from pydiff.domains.speech.train import bin_weights

import pydiff

RESULTS = Path(__file__).parent / "results" / "speech_diagnostics.json"


def states(spec: Spectrogram, split: str, index: int):
    pair = make_pair(split, index)
    noisy, clean = torch.from_numpy(pair.noisy)[None], torch.from_numpy(pair.clean)[None]
    norm = peak_normalizer(noisy)
    return pair, norm, spec.forward(noisy / norm), spec.forward(clean / norm)


def data_scale(count: int) -> dict:
    spec = Spectrogram()
    num = den = plain = n = 0.0
    for i in range(count):
        _, _, y, x = states(spec, "train", i)
        w, d2 = bin_weights(y, "loudness"), (x - y) ** 2
        num += float((d2 * w).sum())
        den += float(w.sum()) * 2
        plain += float(d2.sum())
        n += d2.numel()
    return {"examples": count, "rms_plain": (plain / n) ** 0.5, "rms_loudness": (num / den) ** 0.5}


def estimate_vs_state(enh: SpeechEnhancer, count: int, times: list[float]) -> dict:
    spec, sched = enh.spectrogram, enh.schedule
    rows: dict[float, list] = {t: [] for t in times}
    for i in range(count):
        pair, norm, y, x = states(spec, "test", i)
        g = torch.Generator().manual_seed(i)
        length = len(pair.noisy)

        def wave(s, length=length, norm=norm):
            return (spec.inverse(s, length) * norm)[0].numpy()

        for t in times:
            tt = torch.tensor([t], dtype=torch.float64)
            a, s = float(sched.alpha(tt)), float(sched.sigma(tt))
            # the forward process in the shifted coordinate: x_t - y = a (x0 - y) + s z
            shifted = a * (x - y) + s * torch.randn(x.shape, generator=g)
            with torch.no_grad():
                est = y + enh.model.x0(shifted, t, y=y, noisy=y)
            rows[t].append((si_sdr(pair.clean, wave(y + shifted)), si_sdr(pair.clean, wave(est))))
    return {str(t): {"state_si_sdr": float(np.mean([r[0] for r in v])),
                     "estimate_si_sdr": float(np.mean([r[1] for r in v]))}
            for t, v in rows.items()}


def pc_trajectory(enh: SpeechEnhancer, **options) -> list[dict]:
    """Per PC step: t, sigma, rms(x - y - alpha (x0 - y)) / sigma and rms(x - x0)."""
    _, _, y, x0 = states(enh.spectrogram, "test", 0)
    sched = enh.schedule
    g = torch.Generator().manual_seed(0)
    x_start = y + float(sched.sigma(sched.t_max)) * torch.randn(y.shape, generator=g)
    rows = []

    def record(x, ctx):
        # hooks see the solver's state in the shifted coordinate x - y
        a, s = float(ctx.alpha), float(ctx.sigma)
        dev = float((x - a * (x0 - y)).pow(2).mean().sqrt())
        rows.append({"step": ctx.step, "t": float(ctx.t), "sigma": s,
                     "excess": dev / s if s > 0 else None,
                     "rms_error": float((x + y - x0).pow(2).mean().sqrt())})
        return x

    pc = enhancer_module.SAMPLERS["pc"]
    with torch.no_grad():
        pydiff.sample(enh.model.bind(y=y, noisy=y), x_start, solver="pc", steps=pc.steps,
                      generator=torch.Generator().manual_seed(1), hooks=[record],
                      **{**pc.options, **options})
    return rows


@contextlib.contextmanager
def sampler_options(name: str, **options):
    base = enhancer_module.SAMPLERS[name]
    enhancer_module.SAMPLERS[name] = dataclasses.replace(base, options={**base.options, **options})
    try:
        yield
    finally:
        enhancer_module.SAMPLERS[name] = base


def run(enh: SpeechEnhancer, solver: str, count: int, steps: int | None = None, **options) -> dict:
    with sampler_options(solver, **options):
        ms = [all_metrics(p.clean, enh.enhance(p.noisy, 16000, solver=solver, steps=steps,
                                               chunk_seconds=None))
              for p in (make_pair("test", i) for i in range(count))]
    return {k: float(np.mean([m[k] for m in ms])) for k in ("pesq", "si_sdr")}


SECTIONS = ("scale", "estimate", "pc", "mr", "trajectory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--pc-count", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    enh = SpeechEnhancer.from_pretrained(args.checkpoint)
    out: dict = {}
    if "scale" in args.sections:
        out["data_scale"] = data_scale(40)
        print("rms(x0 - y):", out["data_scale"], flush=True)
    if "estimate" in args.sections:
        out["estimate_vs_state"] = estimate_vs_state(enh, args.count, [0.03, 0.1, 0.3, 0.6, 1.0])
        for t, r in out["estimate_vs_state"].items():
            print(f"t={t}: state {r['state_si_sdr']:.2f} dB -> estimate "
                  f"{r['estimate_si_sdr']:.2f} dB", flush=True)
    if "pc" in args.sections:
        out["pc_snr"] = {}
        for label, opts in [("0.5", {}), ("0.4", {"snr": 0.4}), ("0.3", {"snr": 0.3}),
                            ("0.2", {"snr": 0.2}), ("none", {"corrector_steps": 0})]:
            out["pc_snr"][label] = run(enh, "pc", args.pc_count, **opts)
            print(f"PC snr {label}: {out['pc_snr'][label]}", flush=True)
    if "mr" in args.sections:
        out["mr_spacing"] = {}
        for spacing in ("logsnr", "time", "karras"):
            for steps in (5, 10):
                key = f"{spacing}-{steps}"
                out["mr_spacing"][key] = run(enh, "mr", args.count, steps, spacing=spacing)
                print(f"MR {key}: {out['mr_spacing'][key]}", flush=True)
    if "trajectory" in args.sections:
        _, _, y, x0 = states(enh.spectrogram, "test", 0)
        out["pc_trajectory_input_error"] = float((y - x0).pow(2).mean().sqrt())
        out["pc_trajectory"] = {}
        for label, opts in [("snr 0.5", {}), ("no corrector", {"corrector_steps": 0})]:
            rows = pc_trajectory(enh, **opts)
            out["pc_trajectory"][label] = rows
            print(f"PC trajectory, {label}: excess noise (rms deviation / sigma) at t = "
                  + ", ".join(f"{r['t']:.2f}: {r['excess']:.2f}" for r in rows[:-1:4])
                  + f"; final rms error {rows[-1]['rms_error']:.4f} (noisy input "
                  f"{out['pc_trajectory_input_error']:.4f})", flush=True)
    out.update(count=args.count, pc_count=args.pc_count, checkpoint=args.checkpoint or "shipped")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
