"""Peak memory and real-time factor of file enhancement for 10 s and 60 s inputs.

Each length runs in a fresh process (``ru_maxrss`` is a per-process high-water mark): it writes
a noisy 44.1 kHz stereo WAV made of held-out test utterances, streams it through
``SpeechEnhancer.enhance_file`` (4 s chunks, 0.5 s overlap, the MR Sampler at ``--steps``) and
reports peak resident memory before and after enhancing and the real-time factor. Flat memory
means the 60 s file peaks where the 10 s file does.

    python benchmarks/speech_memory.py [--seconds 10 60] [--steps 10] [--threads 1]

Writes benchmarks/results/speech_memory.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "speech_memory.json"


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(seconds: float, steps: int, threads: int, solver: str) -> dict:
    import numpy as np
    import torch
    from pydiff.domains.speech import SpeechEnhancer, resample, write_audio
    from pydiff.domains.speech.data import make_pair

    torch.set_num_threads(threads)
    rate = 44100
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.wav", Path(tmp) / "out.wav"
        pieces, total, i = [], 0, 0
        while total < seconds * 16000:
            noisy = make_pair("test", i).noisy
            pieces.append(noisy)
            total += len(noisy)
            i += 1
        mono = np.concatenate(pieces)[:int(seconds * 16000)]
        stereo = resample(np.stack([mono, mono[::-1]]), 16000, rate)
        write_audio(src, stereo, rate)
        del pieces, mono, stereo
        enhancer = SpeechEnhancer.from_pretrained()
        before = _maxrss_mb()
        started = time.perf_counter()
        enhancer.enhance_file(src, dst, solver=solver, steps=steps)
        elapsed = time.perf_counter() - started
    return {"seconds": seconds, "channels": 2, "rate": rate, "solver": solver, "steps": steps,
            "rss_before_mb": round(before, 1), "peak_rss_mb": round(_maxrss_mb(), 1),
            "rtf": round(elapsed / seconds, 3), "rtf_per_channel": round(elapsed / seconds / 2, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 60.0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--solver", default="mr")
    parser.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.steps, args.threads, args.solver)))
        return
    rows = []
    for seconds in args.seconds:
        out = subprocess.run([sys.executable, __file__, "--child", str(seconds), "--steps",
                              str(args.steps), "--threads", str(args.threads), "--solver",
                              args.solver], check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'seconds':>8} {'peak MB':>8} {'before MB':>9} {'RTF':>6} {'RTF/ch':>7}")
    for r in rows:
        print(f"{r['seconds']:>8.0f} {r['peak_rss_mb']:>8.1f} {r['rss_before_mb']:>9.1f} "
              f"{r['rtf']:>6.2f} {r['rtf_per_channel']:>7.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
