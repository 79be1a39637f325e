"""``pydiff timeseries``: probabilistic forecasts of CSV series with TSDiff, and training.

Example:
    $ pydiff timeseries forecast data.csv --horizon 24 -n 100 -o forecast.csv --plot fan.png
    $ pydiff timeseries train data.csv --out model/ --context 96 --horizon 24
    $ pydiff timeseries train --mixture --out model/ --time-budget 900
    $ pydiff timeseries evaluate data.csv --horizon 24 --baselines seasonal_naive,deepar
"""

from __future__ import annotations

import argparse
import json
import os

from pydiff.errors import InputError
from pydiff.files import check_input_dir, check_input_file, check_output, write_json

from .cli import int_at_least, nonnegative_float, positive_float, positive_int


def _horizon(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 (steps ahead), got {text!r}")
    return value


def register(subparsers, help_text: str) -> None:
    p = subparsers.add_parser("timeseries", help=help_text,
                              description="Probabilistic time-series forecasting (TSDiff).")
    cmds = p.add_subparsers(dest="timeseries_command", metavar="COMMAND", required=True)

    f = cmds.add_parser("forecast", help="forecast each series of a CSV file")
    f.add_argument("input", help="CSV with a date column and numeric columns")
    f.add_argument("--horizon", type=_horizon, required=True, help="steps ahead")
    f.add_argument("-n", "--num-samples", type=positive_int, default=100,
                   help="sample paths per series (default 100)")
    f.add_argument("-o", "--output", required=True, help="forecast CSV to write")
    f.add_argument("--column", default=None, help="forecast only this column")
    f.add_argument("--freq", default=None,
                   help="pandas frequency (default: inferred from the dates), e.g. h, D, MS")
    f.add_argument("--plot", default=None, help="write a fan chart (PNG) here")
    f.add_argument("--guidance", default="quantile", choices=("quantile", "mse"),
                   help="TSDiff-Q (quantile, default) or TSDiff-MS (mse) self-guidance")
    f.add_argument("--scale", type=nonnegative_float, default=None, help="guidance scale")
    f.add_argument("--solver", default=None, help="core solver (default: the checkpoint's)")
    f.add_argument("--steps", type=positive_int, default=None, help="solver steps")
    f.add_argument("--seed", type=int_at_least(0), default=0)
    f.add_argument("--checkpoint", default=None, help="a TSDiff folder (default: shipped)")
    f.add_argument("--threads", type=positive_int, default=None)
    f.set_defaults(func=run_forecast)

    t = cmds.add_parser("train", help="train a TSDiff model on the series of a CSV file")
    t.add_argument("input", nargs="?", default=None,
                   help="CSV with a date column and numeric columns (optional with --mixture)")
    t.add_argument("--out", required=True, help="checkpoint folder to write")
    t.add_argument("--context", type=positive_int, default=96)
    t.add_argument("--horizon", type=_horizon, default=24)
    t.add_argument("--column", default=None, help="train only on this column")
    t.add_argument("--freq", default=None, help="pandas frequency (default: inferred)")
    t.add_argument("--mixture", action="store_true",
                   help="also train on the built-in mixture (statsmodels' series and "
                        "synthetic seasonal series, less their last 3 horizons, which stay "
                        "held out; the shipped checkpoint's data)")
    t.add_argument("--kind", default="tsdiff", choices=("tsdiff", "csdi"),
                   help="tsdiff: the unconditional window model (forecast); csdi: the "
                        "conditional model (impute)")
    t.add_argument("--no-residual", dest="residual", action="store_false", default=None,
                   help="csdi: diffuse the standardized values themselves, not their residual "
                        "over the linear interpolation of the observed ones")
    t.add_argument("--steps", type=positive_int, default=None)
    t.add_argument("--time-budget", type=positive_float, default=None,
                   help="seconds of training at most")
    t.add_argument("--batch-size", type=positive_int, default=None)
    t.add_argument("--channels", type=positive_int, default=None)
    t.add_argument("--blocks", type=positive_int, default=None)
    t.add_argument("--lr", type=positive_float, default=None)
    t.add_argument("--seed", type=int_at_least(0), default=None)
    t.add_argument("--threads", type=positive_int, default=None)
    t.add_argument("--balance", default=None, choices=("series", "windows"),
                   help="batch rows: each series alike (default) or each window alike")
    t.add_argument("--stride", type=positive_int, default=None,
                   help="points between the starts of consecutive training windows (default 2)")
    t.set_defaults(func=run_train)

    e = cmds.add_parser("evaluate", help="rolling-origin backtest of TSDiff against baselines "
                                         "(CRPS, MASE, interval coverage)")
    e.add_argument("input", help="CSV with a date column and numeric columns")
    e.add_argument("--horizon", type=_horizon, required=True, help="steps ahead")
    e.add_argument("--baselines", default="seasonal_naive,deepar",
                   help="comma-separated baselines: seasonal_naive, deepar (GluonTS's torch "
                        "DeepAR, trained here for --deepar-budget seconds); '' for none")
    e.add_argument("--windows", type=positive_int, default=3,
                   help="rolling forecast origins per series, a horizon apart (default 3)")
    e.add_argument("-n", "--num-samples", type=positive_int, default=100,
                   help="sample paths per forecast (default 100)")
    e.add_argument("--guidance", default="quantile",
                   help="TSDiff self-guidance: quantile (TSDiff-Q), mse (TSDiff-MS) or "
                        "quantile,mse (default quantile)")
    e.add_argument("--deepar-budget", type=positive_float, default=60.0,
                   help="seconds of DeepAR training (default 60)")
    e.add_argument("--json", default=None, help="also write the rows to this JSON file")
    e.add_argument("--column", default=None, help="evaluate only this column")
    e.add_argument("--freq", default=None, help="pandas frequency (default: inferred)")
    e.add_argument("--scale", type=nonnegative_float, default=None, help="guidance scale")
    e.add_argument("--solver", default=None, help="core solver (default: the checkpoint's)")
    e.add_argument("--steps", type=positive_int, default=None, help="solver steps")
    e.add_argument("--seed", type=int_at_least(0), default=0)
    e.add_argument("--checkpoint", default=None, help="a TSDiff folder (default: shipped)")
    e.add_argument("--threads", type=positive_int, default=None)
    e.set_defaults(func=run_evaluate)

    m = cmds.add_parser("impute", help="fill the gaps (NaN, skipped dates) of each series of "
                                       "a CSV file with the conditional (CSDI-style) model")
    m.add_argument("input", help="CSV with a date column and numeric columns")
    m.add_argument("-o", "--output", required=True,
                   help="CSV to write: the input's columns on the regular date grid, gaps "
                        "filled with the median of the samples")
    m.add_argument("--plot", default=None, help="write a plot of the gaps (PNG) here")
    m.add_argument("-n", "--num-samples", type=positive_int, default=50,
                   help="sample paths per gap (default 50)")
    m.add_argument("--column", default=None, help="impute only this column")
    m.add_argument("--freq", default=None, help="pandas frequency (default: inferred)")
    m.add_argument("--solver", default=None, help="core solver (default: the checkpoint's)")
    m.add_argument("--steps", type=positive_int, default=None, help="solver steps")
    m.add_argument("--seed", type=int_at_least(0), default=0)
    m.add_argument("--checkpoint", default=None,
                   help="a conditional model folder (default: the shipped one)")
    m.add_argument("--threads", type=positive_int, default=None)
    m.set_defaults(func=run_impute)


def _threads(n: int | None) -> None:
    if n is not None:
        import torch

        torch.set_num_threads(n)


def _check_sampler(args: argparse.Namespace) -> None:
    if args.checkpoint is not None:
        check_input_dir(args.checkpoint, "--checkpoint")
    import pydiff

    if args.solver is not None and args.solver not in pydiff.available_solvers():
        raise InputError(f"--solver {args.solver!r} is not a pydiff solver; expected one of "
                         f"{pydiff.available_solvers()}")


def _check_csv_to_csv(args: argparse.Namespace) -> None:
    """The checks of forecast and impute before any work: input, outputs, sampler, threads."""
    check_input_file(args.input, "input CSV")
    check_output(args.output, "output (-o)")
    if args.plot is not None:
        check_output(args.plot, "--plot")
    _check_sampler(args)
    _threads(args.threads)


def run_forecast(args: argparse.Namespace) -> int:
    _check_csv_to_csv(args)
    from pydiff.domains.timeseries import TSDiff
    from pydiff.domains.timeseries.tabular import (
        forecast_table,
        plot_fan,
        read_series_csv,
        write_table,
    )

    date_name, freq, series = read_series_csv(args.input, args.column, args.freq)
    model = TSDiff.from_pretrained(args.checkpoint)
    table = forecast_table(model, series, date_name, freq, args.horizon, args.num_samples,
                           guidance=args.guidance, scale=args.scale, solver=args.solver,
                           steps=args.steps, seed=args.seed)
    write_table(table, args.output)
    print(f"wrote {args.output} ({len(series)} series x {args.horizon} steps, {freq})")
    if args.plot is not None:
        print(f"wrote {plot_fan(series, table, date_name, args.plot)}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    if args.input is None and not args.mixture:
        raise InputError("give a CSV file to train on, or --mixture for the built-in series")
    if args.input is not None:
        check_input_file(args.input, "input CSV")
    check_output(args.out, "--out", folder=True)
    from pydiff.domains.timeseries.data import HOLDOUT_WINDOWS, holdout_split, training_mixture
    from pydiff.domains.timeseries.tabular import read_series_csv
    from pydiff.domains.timeseries.train import TrainConfig, train

    series = {}
    if args.input is not None:
        series.update(read_series_csv(args.input, args.column, args.freq)[2])
    if args.mixture:
        # without the last windows of each series: they stay held out for evaluation
        series.update(holdout_split(training_mixture(), args.horizon, HOLDOUT_WINDOWS)[0])
    config = TrainConfig(kind=args.kind, context=args.context, horizon=args.horizon)
    for name in ("steps", "time_budget", "batch_size", "channels", "blocks", "lr", "seed",
                 "threads", "balance", "stride", "residual"):
        value = getattr(args, name)
        if value is not None:
            setattr(config, name, value)
    model = train(series, config, args.out)
    print(json.dumps(model.metadata, indent=2))
    print(f"saved to {args.out}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    check_input_file(args.input, "input CSV")
    if args.json is not None:
        check_output(args.json, "--json")
    _check_sampler(args)
    from pydiff.domains.timeseries.evaluate import (
        TSDIFF_METHODS,
        check_backtest_lengths,
        evaluate,
        format_table,
        parse_baselines,
    )

    baselines = parse_baselines(args.baselines)
    guidances = [g.strip() for g in args.guidance.split(",") if g.strip()]
    bad = [g for g in guidances if g not in TSDIFF_METHODS]
    if bad or not guidances:
        raise InputError(f"--guidance {args.guidance!r}: expected quantile, mse or "
                         "quantile,mse")
    _threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")  # GluonTS's Evaluator bar, once per method
    from pydiff.domains.timeseries import TSDiff
    from pydiff.domains.timeseries.tabular import read_series_csv

    _, freq, series = read_series_csv(args.input, args.column, args.freq)
    check_backtest_lengths(series, args.horizon, args.windows)  # before any training
    model = TSDiff.from_pretrained(args.checkpoint)
    print(f"{len(series)} series ({freq}), {args.windows} origin(s) x horizon {args.horizon}",
          flush=True)
    rows = evaluate(series, args.horizon, args.windows, baselines, model, guidances,
                    args.num_samples, args.deepar_budget, args.seed, solver=args.solver,
                    steps=args.steps, scale=args.scale)
    print(format_table(rows))
    if args.json is not None:
        write_json(args.json, {"input": args.input, "freq": freq, "horizon": args.horizon,
                               "windows": args.windows, "num_samples": args.num_samples,
                               "series": list(series), "rows": rows}, "--json")
        print(f"wrote {args.json}")
    return 0


def run_impute(args: argparse.Namespace) -> int:
    _check_csv_to_csv(args)
    from pydiff.domains.timeseries.conditional import CSDI
    from pydiff.domains.timeseries.tabular import (
        impute_table,
        plot_gaps,
        read_series_csv,
        write_table,
    )

    date_name, freq, series = read_series_csv(args.input, args.column, args.freq)
    model = CSDI.from_pretrained(args.checkpoint)
    table, bands = impute_table(model, series, date_name, args.num_samples, solver=args.solver,
                                steps=args.steps, seed=args.seed)
    write_table(table, args.output)
    gaps = sum(int(s.isna().sum()) for s in series.values())
    print(f"wrote {args.output} ({len(series)} series, {gaps} missing values filled, {freq})")
    if args.plot is not None:
        print(f"wrote {plot_gaps(series, bands, args.plot)}")
    return 0
