"""Forecast metrics as GluonTS computes them, plus interval coverage and rolling backtests.

- CRPS: GluonTS's ``Evaluator`` ``mean_wQuantileLoss`` over its default quantiles 0.1 ... 0.9
  (the weighted quantile losses summed over all series and windows, divided by the sum of
  ``|target|``, averaged over the quantiles).
- MASE: the ``Evaluator``'s (season length ``gluonts.time_feature.get_seasonality`` of the
  frequency), averaged over series as GluonTS aggregates it.
- Coverage of the central 50% and 90% intervals: the share of true values inside
  ``[q0.25, q0.75]`` and ``[q0.05, q0.95]`` of the forecast.
- :func:`backtest_metrics`: rolling-origin evaluation of any GluonTS predictor (several forecast
  origins per series, ``gluonts.dataset.split``), with the seconds it took.

Example:
    >>> import numpy as np, pandas as pd
    >>> from gluonts.model.forecast import SampleForecast
    >>> start = pd.Period("2020-01", freq="M")
    >>> truth = pd.Series(np.arange(1.0, 13.0), index=pd.period_range(start, periods=12))
    >>> f = SampleForecast(np.tile(np.arange(9.0, 13.0), (50, 1)), start + 8)
    >>> round(forecast_metrics([f], [truth])["crps"], 6)
    0.0
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

DEFAULT_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
INTERVALS = {"coverage_50": (0.25, 0.75), "coverage_90": (0.05, 0.95)}


def _truth_frame(ts: pd.Series | pd.DataFrame) -> pd.DataFrame:
    return ts.to_frame() if isinstance(ts, pd.Series) else ts


def forecast_metrics(forecasts: Sequence[Any], series: Sequence[pd.Series | pd.DataFrame]
                     ) -> dict[str, float]:
    """``{"crps", "mase", "coverage_50", "coverage_90", "forecasts"}`` of GluonTS forecasts
    against the true series (``PeriodIndex``, covering each forecast's span and its history)."""
    import warnings

    from gluonts.evaluation import Evaluator

    forecasts, series = list(forecasts), [_truth_frame(s) for s in series]
    if len(forecasts) != len(series):
        raise ValueError(f"{len(forecasts)} forecasts for {len(series)} series")
    with warnings.catch_warnings():  # GluonTS warns about its own pandas idioms
        warnings.simplefilter("ignore")
        agg, _ = Evaluator(quantiles=DEFAULT_QUANTILES, num_workers=0)(
            iter(series), iter(forecasts), num_series=len(series))
    out = {"crps": float(agg["mean_wQuantileLoss"]), "mase": float(agg["MASE"])}
    for name, (lo, hi) in INTERVALS.items():
        inside = total = 0
        for f, ts in zip(forecasts, series):
            y = ts.iloc[:, 0].reindex(f.index).to_numpy(dtype=np.float64)
            ok = ~np.isnan(y)
            low, high = f.quantile(lo), f.quantile(hi)
            inside += int(((y >= low) & (y <= high) & ok).sum())
            total += int(ok.sum())
        out[name] = inside / max(total, 1)
    out["forecasts"] = len(forecasts)
    return out


def entry_series(entry: dict[str, Any], label: dict[str, Any] | None = None) -> pd.Series:
    """A GluonTS entry (and the label that continues it) as one ``pd.Series`` with a
    ``PeriodIndex``."""
    target = np.asarray(entry["target"], dtype=np.float64)
    if label is not None:
        target = np.concatenate([target, np.asarray(label["target"], dtype=np.float64)])
    return pd.Series(target, index=pd.period_range(entry["start"], periods=len(target)))


def backtest_metrics(predictor: Any, dataset: Iterable[dict[str, Any]], horizon: int,
                     windows: int = 1) -> dict[str, float]:
    """Metrics of ``predictor`` on ``windows`` rolling origins at the end of each series.

    The predictor sees each window's history only; ``seconds`` is the time its ``predict``
    took over all windows, ``seconds_per_forecast`` per series and origin.
    """
    from .data import backtest

    _, pairs = backtest(dataset, horizon, windows)
    pairs = list(pairs)
    inputs = [p[0] for p in pairs]
    started = time.perf_counter()
    forecasts = list(predictor.predict(inputs))
    seconds = time.perf_counter() - started
    truth = [entry_series(inp, label) for inp, label in pairs]
    out = forecast_metrics(forecasts, truth)
    out["seconds"] = seconds
    out["seconds_per_forecast"] = seconds / max(len(forecasts), 1)
    return out


def seasonal_naive(prediction_length: int, season_length: int | None = None):
    """GluonTS's seasonal naive predictor (season: ``get_seasonality`` of each entry's
    frequency by default)."""
    from gluonts.model.seasonal_naive import SeasonalNaivePredictor
    from gluonts.time_feature import get_seasonality

    return SeasonalNaivePredictor(prediction_length=prediction_length,
                                  season_length=season_length or get_seasonality)


__all__ = ["forecast_metrics", "backtest_metrics", "entry_series", "seasonal_naive",
           "DEFAULT_QUANTILES", "INTERVALS"]
