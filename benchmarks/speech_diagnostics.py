"""Diagnostics behind the speech checkpoint's numbers (BENCHMARKS.md, "Speech").

1. ``sigma_data``: the rms of ``x0 - y`` (compressed real-view spectrograms) over training
   examples, plain and under the training's loudness weighting.
2. The network's x0 estimate against the noisy state on the *true* forward process, SI-SDR at
   several ``t`` (does the network help at every noise level?).
3. SGMSE+'s PC sampler with different corrector SNRs (and none), and the MR Sampler with
   different time grids.

    python benchmarks/speech_diagnostics.py [--checkpoint DIR] [--count 4] [--pc-count 2]

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--pc-count", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    enh = SpeechEnhancer.from_pretrained(args.checkpoint)
    out = {"data_scale": data_scale(40)}
    print("rms(x0 - y):", out["data_scale"], flush=True)
    out["estimate_vs_state"] = estimate_vs_state(enh, args.count, [0.03, 0.1, 0.3, 0.6, 1.0])
    for t, r in out["estimate_vs_state"].items():
        print(f"t={t}: state {r['state_si_sdr']:.2f} dB -> estimate {r['estimate_si_sdr']:.2f} dB",
              flush=True)
    out["pc_snr"] = {}
    for label, opts in [("0.5", {}), ("0.4", {"snr": 0.4}), ("0.3", {"snr": 0.3}),
                        ("0.2", {"snr": 0.2}), ("none", {"corrector_steps": 0})]:
        out["pc_snr"][label] = run(enh, "pc", args.pc_count, **opts)
        print(f"PC snr {label}: {out['pc_snr'][label]}", flush=True)
    out["mr_spacing"] = {}
    for spacing in ("logsnr", "time", "karras"):
        for steps in (5, 10):
            key = f"{spacing}-{steps}"
            out["mr_spacing"][key] = run(enh, "mr", args.count, steps, spacing=spacing)
            print(f"MR {key}: {out['mr_spacing'][key]}", flush=True)
    out.update(count=args.count, pc_count=args.pc_count, checkpoint=args.checkpoint or "shipped")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
