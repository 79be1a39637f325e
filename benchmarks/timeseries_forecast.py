"""Time-series forecasts: CRPS, MASE and coverage on rolling-origin held-out windows, and speed.

Methods: GluonTS's seasonal naive, and the shipped TSDiff checkpoint with quantile self-guidance
(TSDiff-Q) and mean-squared self-guidance (TSDiff-MS), all through GluonTS predictors and its
``Evaluator`` (CRPS = mean_wQuantileLoss over the quantiles 0.1 ... 0.9).

Data:
- ``heldout``: the training mixture's series (statsmodels' and synthetic), on the last
  ``--windows`` horizons of each, which ``pydiff timeseries train --mixture`` never trains on;
- ``zeroshot``: series the checkpoint never saw at all (El Nino, Nile, US unemployment, German
  interest rates, Danish money demand, fresh synthetic seeds), where long enough.

Speed: seconds per forecast of ``--samples`` paths of one series (context 96, horizon 24) by
solver and step count, with ``torch.set_num_threads(--threads)``.

Writes benchmarks/results/timeseries_forecast.json.

Example:
    python benchmarks/timeseries_forecast.py --quality-samples 32 --windows 1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results" / "timeseries_forecast.json"


def datasets(horizon: int, windows: int) -> dict[str, list[dict]]:
    from pydiff.domains.timeseries.data import to_gluonts, training_mixture, zero_shot_series

    out = {}
    for name, series in (("heldout", training_mixture()), ("zeroshot", zero_shot_series())):
        keep = {k: v for k, v in series.items() if len(v) >= (windows + 2) * horizon}
        out[name] = list(to_gluonts(keep))
    return out


def quality(args: argparse.Namespace) -> list[dict]:
    from pydiff.domains.timeseries import TSDiff
    from pydiff.domains.timeseries.gluonts_api import TSDiffPredictor
    from pydiff.domains.timeseries.metrics import backtest_metrics, seasonal_naive

    model = TSDiff.from_pretrained(args.checkpoint)
    methods = {
        "seasonal_naive": seasonal_naive(args.horizon),
        "tsdiff_q": TSDiffPredictor(model, args.horizon, num_samples=args.quality_samples,
                                    guidance="quantile"),
        "tsdiff_ms": TSDiffPredictor(model, args.horizon, num_samples=args.quality_samples,
                                     guidance="mse"),
    }
    rows = []
    for data_name, ds in datasets(args.horizon, args.windows).items():
        if data_name not in args.data.split(","):
            continue
        for method, predictor in methods.items():
            m = backtest_metrics(predictor, ds, args.horizon, args.windows)
            rows.append({"data": data_name, "method": method, "series": len(ds), **m})
            print(f"{data_name:9s} {method:15s} CRPS {m['crps']:.4f} MASE {m['mase']:.3f} "
                  f"cov50 {m['coverage_50']:.2f} cov90 {m['coverage_90']:.2f} "
                  f"({m['seconds']:.0f} s)", flush=True)
    return rows


def speed(args: argparse.Namespace) -> list[dict]:
    from pydiff.domains.timeseries import TSDiff

    model = TSDiff.from_pretrained(args.checkpoint)
    y = 100 + 10 * np.sin(np.arange(200) * 2 * np.pi / 24)
    rows = []
    for config in args.speed.split(","):
        solver, steps = config.split(":")[0], int(config.split(":")[1])
        model.forecast(y, args.horizon, args.samples, solver=solver, steps=2)  # warm-up
        times = []
        for rep in range(args.repeats):
            start = time.perf_counter()
            model.forecast(y, args.horizon, args.samples, solver=solver, steps=steps, seed=rep)
            times.append(time.perf_counter() - start)
        nfe = steps * (2 if solver == "heun" else 1)
        rows.append({"solver": solver, "steps": steps, "nfe": nfe,
                     "seconds": float(np.median(times))})
        print(f"{solver:9s} steps {steps:3d} (NFE ~{nfe}): {np.median(times):.2f} s per "
              f"forecast of {args.samples} samples", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None, help="TSDiff folder (default: shipped)")
    p.add_argument("--horizon", type=int, default=24)
    p.add_argument("--windows", type=int, default=3, help="rolling origins per series")
    p.add_argument("--samples", type=int, default=100, help="sample paths in the speed table")
    p.add_argument("--quality-samples", type=int, default=100,
                   help="sample paths per forecast in the quality table")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data", default="heldout,zeroshot", help="data sets of the quality table")
    p.add_argument("--speed", default="ddpm:20,ddpm:50,ddim:10,ddim:20,dpmpp_2m:10,heun:10",
                   help="solver:steps pairs of the speed table")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    result = {"args": vars(args)}
    if not args.skip_quality:
        result["quality"] = quality(args)
    if not args.skip_speed:
        result["speed"] = speed(args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
