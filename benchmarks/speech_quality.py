"""Speech enhancement quality and speed on the held-out split.

For the first ``--count`` examples of the ``"test"`` split (held-out voices, noises and rooms)
this enhances each utterance with the noisy input (no processing), noisereduce's spectral
gating, SGMSE+'s predictor-corrector (30 steps, 60 NFE), the MR Sampler (5 and 10 NFE) and
StoRM, using the shipped checkpoint, and reports mean PESQ (wide-band), ESTOI, SI-SDR, their
gains over the noisy input, network evaluations and the real-time factor (processing seconds per
second of audio, whole utterances, on this machine with ``--threads`` torch threads).

    python benchmarks/speech_quality.py [--count 16] [--threads 1] [--checkpoint DIR] [--json F]

Writes benchmarks/results/speech_quality.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from pydiff.domains.speech import SpeechEnhancer
from pydiff.domains.speech.evaluate import DEFAULT_METHODS, evaluate, format_table

RESULTS = Path(__file__).parent / "results" / "speech_quality.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    enhancer = SpeechEnhancer.from_pretrained(args.checkpoint)
    started = time.time()
    table = evaluate(enhancer, count=args.count, methods=args.methods.split(","), progress=True)
    print(format_table(table))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "count": args.count, "threads": args.threads, "split": "test",
        "seconds": round(time.time() - started, 1), "cpu": platform.processor() or "cpu",
        "load_average": os.getloadavg(), "methods": table,
        "checkpoint": enhancer.metadata.get("recipe"),
    }, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
