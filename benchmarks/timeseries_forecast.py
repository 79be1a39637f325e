"""Time-series forecasts: CRPS, MASE and coverage on rolling-origin held-out windows, and speed.

Methods: GluonTS's seasonal naive, GluonTS's torch DeepAR trained here on the same training
windows as the checkpoint (the mixture less its last 3 horizons) for the same budget (the
checkpoint's ``train_cpu_seconds`` of CPU time where it has them, ``--deepar-cpu-budget``: on a
shared machine wall-clock seconds buy very different amounts of compute; else its wall-clock
``train_seconds``, ``--deepar-budget``), the shipped TSDiff checkpoint with quantile
self-guidance (TSDiff-Q) and mean-squared self-guidance (TSDiff-MS), and TSDiff's energy-based
refinement of seasonal naive (``refine_sn``) and of DeepAR (``refine_deepar``), and the
conditional CSDI-style model forecasting the future as a gap (``csdi``, the shipped
``pretrained_csdi`` or ``--csdi-checkpoint``), all through
GluonTS predictors and its ``Evaluator`` (CRPS = mean_wQuantileLoss over the quantiles
0.1 ... 0.9). ``--methods`` picks a subset. ``--deepar-dir`` keeps the trained DeepAR
(GluonTS's ``serialize``) so later runs reuse the same model. ``--deepar-seeds 0,1,2`` trains
one DeepAR per seed (same data and budget; ``refine_deepar`` refines the first) and prints the
mean and standard deviation of its metrics over the seeds.

Data:
- ``heldout``: the training mixture's series (statsmodels' and synthetic), on the last
  ``--windows`` horizons of each, which ``pydiff timeseries train --mixture`` never trains on;
- ``zeroshot``: series the checkpoint never saw at all (El Nino, Nile, US unemployment, German
  interest rates, Danish money demand, fresh synthetic seeds), where long enough.

Speed: seconds per forecast of ``--samples`` paths of one series (context 96, horizon 24) by
solver and step count, with ``torch.set_num_threads(--threads)``: wall clock and CPU seconds
(median of ``--repeats``), and the 1-minute load average before and after each row.

Writes benchmarks/results/timeseries_forecast.json.

Example:
    python benchmarks/timeseries_forecast.py --quality-samples 32 --windows 1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results" / "timeseries_forecast.json"


def datasets(horizon: int, windows: int, validation: bool = False) -> dict[str, list[dict]]:
    from pydiff.domains.timeseries.data import to_gluonts, training_mixture, zero_shot_series

    out = {}
    for name, series in (("heldout", training_mixture()), ("zeroshot", zero_shot_series())):
        if validation:  # the origins just before the test ones: for choosing settings
            series = {k: v.iloc[:-horizon * windows] for k, v in series.items()}
        keep = {k: v for k, v in series.items() if len(v) >= (windows + 2) * horizon}
        out[name] = list(to_gluonts(keep))
    return out


def deepar(args: argparse.Namespace, model, heldout: list[dict], seed: int = 0):
    """DeepAR on the checkpoint's training windows, for its training budget (module docs)."""
    from gluonts.model.predictor import Predictor
    from pydiff.domains.timeseries.data import backtest
    from pydiff.domains.timeseries.evaluate import deepar_predictor

    folder = None
    if args.deepar_dir:  # seed 0 in the folder itself (as before seeds), others below it
        folder = Path(args.deepar_dir) / (f"seed{seed}" if seed else "")
    if folder and (folder / "gluonts-config.json").is_file():
        print(f"deepar loaded from {folder}", flush=True)
        return Predictor.deserialize(folder)
    cpu = args.deepar_cpu_budget or model.metadata.get("train_cpu_seconds")
    budget = args.deepar_budget or (10 * cpu if cpu else
                                    model.metadata.get("train_seconds", 600.0))
    train, _ = backtest(heldout, args.horizon, args.windows)
    freqs = [e["start"].freqstr for e in heldout]
    started, cpu_started = time.perf_counter(), time.process_time()
    predictor = deepar_predictor(train, args.horizon, model.context_length, budget, seed=seed,
                                 frequencies=freqs, num_samples=args.quality_samples,
                                 cpu_budget=cpu)
    print(f"deepar (seed {seed}) trained for {time.perf_counter() - started:.0f} s wall, "
          f"{time.process_time() - cpu_started:.0f} s CPU (budget: {budget:.0f} s wall, "
          f"{cpu or 0:.0f} s CPU)", flush=True)
    if folder:
        folder.mkdir(parents=True, exist_ok=True)
        predictor.serialize(folder)
    return predictor


def quality(args: argparse.Namespace) -> list[dict]:
    from pydiff.domains.timeseries import CSDI, TSDiff
    from pydiff.domains.timeseries.gluonts_api import TSDiffPredictor, TSDiffRefiner
    from pydiff.domains.timeseries.metrics import backtest_metrics, seasonal_naive

    model = TSDiff.from_pretrained(args.checkpoint)
    data = datasets(args.horizon, args.windows, args.validation)
    cache: dict = {}
    seeds = [int(s) for s in str(args.deepar_seeds).split(",")]

    def trained_deepar(seed: int = seeds[0]):
        if seed not in cache:
            cache[seed] = deepar(args, model, data["heldout"], seed)
        return cache[seed]

    methods = {
        "seasonal_naive": lambda: seasonal_naive(args.horizon),
        "deepar": trained_deepar,
        "refine_sn": lambda: TSDiffRefiner(model, seasonal_naive(args.horizon),
                                           num_samples=args.quality_samples),
        "refine_deepar": lambda: TSDiffRefiner(model, trained_deepar()),
        "tsdiff_q": lambda: TSDiffPredictor(model, args.horizon,
                                            num_samples=args.quality_samples,
                                            guidance="quantile", scale=args.scale),
        "tsdiff_ms": lambda: TSDiffPredictor(model, args.horizon,
                                             num_samples=args.quality_samples, guidance="mse",
                                             scale=args.scale),
        # CSDI.forecast_many: the future as a gap after the context (no guidance)
        "csdi": lambda: TSDiffPredictor(CSDI.from_pretrained(args.csdi_checkpoint), args.horizon,
                                        num_samples=args.quality_samples),
    }
    chosen: dict = {}
    for name in args.methods.split(","):
        if name == "deepar":
            chosen.update({("deepar", seed): trained_deepar(seed) for seed in seeds})
        else:
            chosen[(name, None)] = methods[name]()
    rows = []
    for data_name, ds in data.items():
        if data_name not in args.data.split(","):
            continue
        for (method, seed), predictor in chosen.items():
            m = backtest_metrics(predictor, ds, args.horizon, args.windows)
            rows.append({"data": data_name, "method": method, "seed": seed, "series": len(ds),
                         **m})
            label = method if seed is None or len(seeds) == 1 else f"{method} seed {seed}"
            print(f"{data_name:9s} {label:15s} CRPS {m['crps']:.4f} MASE {m['mase']:.3f} "
                  f"cov50 {m['coverage_50']:.2f} cov90 {m['coverage_90']:.2f} "
                  f"({m['seconds']:.0f} s)", flush=True)
        runs = [r for r in rows if r["data"] == data_name and r["method"] == "deepar"]
        if len(runs) > 1:  # spread over the seeds
            spread = {k: (float(np.mean([r[k] for r in runs])), float(np.std([r[k] for r in runs])))
                      for k in ("crps", "mase", "coverage_50", "coverage_90")}
            rows.append({"data": data_name, "method": "deepar_seeds", "seeds": seeds,
                         **{k: v[0] for k, v in spread.items()},
                         **{f"{k}_std": v[1] for k, v in spread.items()}})
            print(f"{data_name:9s} deepar over {len(runs)} seeds: " + " ".join(
                f"{k} {m:.4f} +- {sd:.4f}" for k, (m, sd) in spread.items()), flush=True)
    return rows


def speed(args: argparse.Namespace) -> list[dict]:
    from pydiff.domains.timeseries import TSDiff

    model = TSDiff.from_pretrained(args.checkpoint)
    y = 100 + 10 * np.sin(np.arange(200) * 2 * np.pi / 24)
    rows = []
    for config in args.speed.split(","):
        solver, steps = config.split(":")[0], int(config.split(":")[1])
        model.forecast(y, args.horizon, args.samples, solver=solver, steps=2)  # warm-up
        times, cpu = [], []
        load = os.getloadavg()[0]
        for rep in range(args.repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            model.forecast(y, args.horizon, args.samples, solver=solver, steps=steps, seed=rep)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu_start)
        nfe = steps * (2 if solver == "heun" else 1)
        # CPU seconds (all threads): what other jobs on a shared machine do not inflate; with
        # one thread they are the wall clock of the forecast on one idle core
        rows.append({"solver": solver, "steps": steps, "nfe": nfe,
                     "seconds": float(np.median(times)), "cpu_seconds": float(np.median(cpu)),
                     "load_before": load, "load_after": os.getloadavg()[0]})
        print(f"{solver:9s} steps {steps:3d} (NFE ~{nfe}): {np.median(times):.2f} s per "
              f"forecast of {args.samples} samples ({np.median(cpu):.2f} s CPU; load "
              f"{load:.1f} -> {os.getloadavg()[0]:.1f})", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None, help="TSDiff folder (default: shipped)")
    p.add_argument("--csdi-checkpoint", default=None,
                   help="CSDI folder of the csdi method (default: shipped)")
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
    p.add_argument("--methods", default="seasonal_naive,deepar,tsdiff_q,tsdiff_ms")
    p.add_argument("--deepar-budget", type=float, default=None,
                   help="DeepAR's wall-clock training seconds at most (default: the "
                        "checkpoint's train_seconds, or 10x the CPU budget)")
    p.add_argument("--deepar-cpu-budget", type=float, default=None,
                   help="DeepAR's CPU seconds of training (default: the checkpoint's "
                        "train_cpu_seconds where it has them)")
    p.add_argument("--deepar-seeds", default="0",
                   help="comma-separated DeepAR seeds: one model per seed (default 0)")
    p.add_argument("--deepar-dir", default=None,
                   help="serialize the trained DeepAR here, or load it from here if present")
    p.add_argument("--scale", type=float, default=None,
                   help="TSDiff guidance scale (default: the checkpoint's)")
    p.add_argument("--validation", action="store_true",
                   help="score the --windows origins before the test ones (to choose settings)")
    p.add_argument("--json", default=str(RESULTS), help="results file")
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
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
