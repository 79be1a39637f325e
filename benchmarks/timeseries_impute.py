"""Imputation: CRPS of the conditional (CSDI-style) model on held-out gaps vs linear interpolation.

Windows: the last ``window`` points of each series (``heldout``: the training mixture's series,
whose last 3 horizons the checkpoint never trained on; gaps are placed only in those last
``--gap-region`` points; ``zeroshot``: series the checkpoint never saw). Gaps at a fixed seed:

- ``random``: each point of the gap region missing with probability ``--random-rate``;
- ``block``: one contiguous gap of ``--block`` points inside the gap region.

``--draws`` masks each window that many times (independent gap draws from the same seeded
generator; 1 reproduces the single-draw tables), for more hidden points per series.

CRPS is GluonTS's: the weighted quantile losses (``gluonts.evaluation.metrics.quantile_loss``)
over the quantiles 0.1 ... 0.9, summed over all missing points of all windows and divided by the
sum of their ``|target|``, averaged over the quantiles. Linear interpolation is a point
forecast (all its quantiles equal), so its CRPS is its weighted absolute error.

Writes benchmarks/results/timeseries_impute.json.

Example:
    python benchmarks/timeseries_impute.py --samples 32 --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results" / "timeseries_impute.json"
QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def windows(window: int) -> dict[str, dict[str, np.ndarray]]:
    from pydiff.domains.timeseries.data import training_mixture, zero_shot_series

    out = {}
    for name, series in (("heldout", training_mixture()), ("zeroshot", zero_shot_series())):
        out[name] = {k: v.to_numpy()[-window:] for k, v in series.items()
                     if len(v) >= window and v.iloc[-window:].notna().mean() > 0.9}
    return out


def gaps(y: np.ndarray, kind: str, region: int, rng: np.random.Generator,
         args: argparse.Namespace) -> np.ndarray:
    """A boolean mask of the points to hide (observed points of the gap region only)."""
    hide = np.zeros(len(y), bool)
    start = len(y) - region
    if kind == "random":
        hide[start:] = rng.random(region) < args.random_rate
    else:
        first = start + int(rng.integers(0, region - args.block + 1))
        hide[first:first + args.block] = True
    return hide & ~np.isnan(y)


def crps(truth: np.ndarray, samples: list[np.ndarray]) -> float:
    """GluonTS's mean weighted quantile loss over all hidden points (module docs)."""
    from gluonts.evaluation.metrics import quantile_loss

    y = np.concatenate(truth)
    s = np.concatenate(samples, axis=1)
    losses = [quantile_loss(y, np.quantile(s, q, axis=0), q) for q in QUANTILES]
    return float(np.mean(losses) / np.abs(y).sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None, help="CSDI folder (default: shipped)")
    p.add_argument("--window", type=int, default=120)
    p.add_argument("--gap-region", type=int, default=72)
    p.add_argument("--random-rate", type=float, default=0.3)
    p.add_argument("--block", type=int, default=12)
    p.add_argument("--draws", type=int, default=1, help="gap draws per window")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--solver", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=str(RESULTS))
    args = p.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    from pydiff.domains.timeseries.conditional import CSDI
    from pydiff.domains.timeseries.data import fill_missing

    model = CSDI.from_pretrained(args.checkpoint)
    rows = []
    for data_name, series in windows(args.window).items():
        for kind in ("random", "block"):
            rng = np.random.default_rng(args.seed)
            masked, truth, hidden = [], [], []
            for _ in range(args.draws):
                for y in series.values():
                    hide = gaps(y, kind, args.gap_region, rng, args)
                    masked.append(np.where(hide, np.nan, y))
                    truth.append(y[hide])
                    hidden.append(hide)
            started = time.perf_counter()
            diffusion = [model.impute(m, args.samples, steps=args.steps, solver=args.solver,
                                      seed=args.seed)[:, h] for m, h in zip(masked, hidden)]
            seconds = time.perf_counter() - started
            linear = [fill_missing(m)[h][None] for m, h in zip(masked, hidden)]
            row = {"data": data_name, "gaps": kind, "series": len(series), "draws": args.draws,
                   "points": int(sum(h.sum() for h in hidden)),
                   "crps_csdi": crps(truth, diffusion), "crps_linear": crps(truth, linear),
                   "seconds_csdi": seconds}
            rows.append(row)
            print(f"{data_name:9s} {kind:6s} {row['points']:5d} points  CSDI CRPS "
                  f"{row['crps_csdi']:.4f}  linear {row['crps_linear']:.4f}  "
                  f"({seconds:.0f} s)", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
