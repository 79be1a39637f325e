"""CSV in, forecast table out: the pandas flow behind ``pydiff timeseries forecast``.

- :func:`read_series_csv`: a CSV with a date column (the first column that parses as dates)
  and numeric columns (each one a series, or the one ``column`` names); the frequency is
  ``freq`` or the one pandas infers from the dates.
- :func:`forecast_table`: the forecast contract: ``horizon`` rows per series; the future
  timestamps (named as the input's date column), ``mean``, the quantile columns
  :data:`QUANTILE_COLUMNS` and, with several series, ``series``.
- :func:`plot_fan`: a fan chart of the history and the forecast quantiles.

Example:
    >>> import numpy as np, pandas as pd
    >>> from pydiff.domains.timeseries import TSDiff
    >>> from pydiff.domains.timeseries.tabular import forecast_table
    >>> idx = pd.date_range("2024-01-01", periods=48, freq="h")
    >>> s = pd.Series(10 + np.sin(np.arange(48) / 3), index=idx)
    >>> t = forecast_table(TSDiff.from_pretrained(), {"y": s}, "date", "h", horizon=3,
    ...                    num_samples=8, steps=3)
    >>> list(t.columns)[:3], len(t)
    (['date', 'mean', 'q0.05'], 3)
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pydiff.errors import InputError
from pydiff.files import atomic_output

from .forecaster import MIN_OBSERVATIONS, TSDiff

QUANTILES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
QUANTILE_COLUMNS = tuple(f"q{q:g}" for q in QUANTILES)


def _date_column(frame: pd.DataFrame, path: str) -> tuple[str, pd.DatetimeIndex]:
    for name in frame.columns:
        col = frame[name]
        if pd.api.types.is_numeric_dtype(col):
            continue  # numbers are values, not dates (pandas would read them as epochs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dates = pd.to_datetime(col, errors="coerce")
        if dates.notna().all():
            return str(name), pd.DatetimeIndex(dates)
    raise InputError(f"{path!r} has no date column: no column parses as dates throughout "
                     f"(columns: {list(map(str, frame.columns))})")


def _infer_freq(dates: pd.DatetimeIndex) -> str | None:
    """pandas' inferred frequency; with gaps in the dates, the one of the longest regular
    stretch (calendar frequencies such as MS) or else the most common step."""
    if len(dates) < 3:
        return None
    freq = pd.infer_freq(dates)
    if freq is not None:
        return freq
    steps = np.diff(dates.values)
    breaks = np.flatnonzero(steps[1:] != steps[:-1]) + 1
    bounds = np.concatenate([[0], breaks, [len(steps)]])
    longest = int(np.argmax(np.diff(bounds)))
    run = dates[bounds[longest]:bounds[longest + 1] + 1]
    if len(run) >= 3 and pd.infer_freq(run) is not None:
        return pd.infer_freq(run)
    values, counts = np.unique(steps, return_counts=True)
    step = pd.Timedelta(values[np.argmax(counts)])
    return pd.tseries.frequencies.to_offset(step).freqstr if step > pd.Timedelta(0) else None


def read_series_csv(path: str | Path, column: str | None = None, freq: str | None = None
                    ) -> tuple[str, str, dict[str, pd.Series]]:
    """``(date column name, frequency, {name: series})`` of a CSV (see the module docs).

    Bad input (no date column, no numeric column, an unknown ``column``, an unknown or
    uninferable frequency, an all-missing or too short series) raises :class:`InputError`.
    """
    path = str(path)
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"{path!r} is not a readable CSV file: {' '.join(str(err).split())}"
                         ) from None
    if frame.empty:
        raise InputError(f"{path!r} has no data rows")
    date_name, dates = _date_column(frame, path)
    numeric = [c for c in frame.columns if c != date_name
               and pd.api.types.is_numeric_dtype(frame[c])]
    if column is not None:
        if column not in frame.columns or column == date_name:
            raise InputError(f"--column {column!r} is not a value column of {path!r} "
                             f"(numeric columns: {list(map(str, numeric))})")
        if column not in numeric:
            raise InputError(f"--column {column!r} of {path!r} is not numeric")
        numeric = [column]
    if not numeric:
        raise InputError(f"{path!r} has no numeric column to forecast (columns: "
                         f"{list(map(str, frame.columns))})")
    if dates.has_duplicates or not dates.is_monotonic_increasing:
        order = np.argsort(dates.values, kind="stable")
        frame, dates = frame.iloc[order], dates[order]
        if dates.has_duplicates:
            raise InputError(f"{path!r}: the date column {date_name!r} repeats dates")
    if freq is None:
        freq = _infer_freq(dates)
        if freq is None:
            raise InputError(f"cannot infer the frequency of {path!r} from its dates; pass "
                             "--freq (e.g. h, D, W, MS, QS, YS)")
    try:
        # pandas' deprecated upper-case aliases (H, T, S: the issue's `--freq H`) still parse;
        # the offset's freqstr is the current alias (h), so the warning would only be noise
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            offset = pd.tseries.frequencies.to_offset(freq)
    except ValueError:
        raise InputError(f"--freq {freq!r} is not a pandas frequency (e.g. h, D, W, MS, QS, "
                         "YS)") from None
    # the regular grid from the first to the last date: dates the file skips become NaN
    grid = pd.date_range(dates[0], dates[-1], freq=offset)
    if len(grid) == 0 or grid[0] != dates[0]:
        raise InputError(f"the dates of {path!r} do not fall on the frequency {freq!r}")
    series = {}
    for name in numeric:
        s = pd.Series(frame[name].to_numpy(dtype=np.float64), index=dates).reindex(grid)
        if s.notna().sum() == 0:
            raise InputError(f"column {name!r} of {path!r} is all missing (NaN)")
        if s.notna().sum() < MIN_OBSERVATIONS:
            raise InputError(f"column {name!r} of {path!r} has {int(s.notna().sum())} "
                             f"observed values; forecasting needs at least {MIN_OBSERVATIONS}")
        series[str(name)] = s
    return date_name, offset.freqstr, series


def forecast_table(model: TSDiff, series: dict[str, pd.Series], date_name: str, freq: str,
                   horizon: int, num_samples: int = 100, **options: Any) -> pd.DataFrame:
    """The forecast contract as a DataFrame (module docs); ``options`` go to
    :meth:`TSDiff.forecast_many`."""
    paths = model.forecast_many([s.to_numpy() for s in series.values()], horizon,
                                num_samples, **options)
    frames = []
    for (name, s), samples in zip(series.items(), paths):
        future = pd.date_range(s.index[-1], periods=horizon + 1, freq=freq)[1:]
        table = {date_name: future, "mean": samples.mean(0)}
        for q, col in zip(QUANTILES, QUANTILE_COLUMNS):
            table[col] = np.quantile(samples, q, axis=0)
        frame = pd.DataFrame(table)
        if len(series) > 1:
            frame.insert(1, "series", name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def plot_fan(series: dict[str, pd.Series], table: pd.DataFrame, date_name: str,
             path: str | Path, history: int = 200) -> Path:
    """A fan chart (history, median, 50% and 90% bands) per series, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(series), 1, figsize=(9, 2.6 * len(series)), squeeze=False)
    for ax, (name, s) in zip(axes[:, 0], series.items()):
        part = table[table["series"] == name] if "series" in table else table
        tail = s.iloc[-history:]
        ax.plot(tail.index, tail.to_numpy(), color="k", lw=1, label="history")
        x = part[date_name]
        ax.fill_between(x, part["q0.05"], part["q0.95"], alpha=0.25, color="C0", label="90%")
        ax.fill_between(x, part["q0.3"], part["q0.7"], alpha=0.4, color="C0", label="40%")
        ax.plot(x, part["q0.5"], color="C0", lw=1.5, label="median")
        ax.set_title(name)
        ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    return _save_figure(fig, path)


def impute_table(model: Any, series: dict[str, pd.Series], date_name: str,
                 num_samples: int = 50, **options: Any
                 ) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """``(table, bands)``: the series on their date grid with every gap filled by the median
    of ``num_samples`` imputations of ``model`` (a
    :class:`~pydiff.domains.timeseries.conditional.CSDI`), one column per series as in the
    input; ``bands[name]`` holds the 5%, 50% and 95% quantiles ``[3, T]`` (observed values
    stay exact)."""
    first = next(iter(series.values()))
    table = pd.DataFrame({date_name: first.index})
    bands = {}
    for name, s in series.items():
        samples = model.impute(s.to_numpy(), num_samples, **options)
        bands[name] = np.quantile(samples, [0.05, 0.5, 0.95], axis=0)
        table[name] = bands[name][1]
    return table, bands


def plot_gaps(series: dict[str, pd.Series], bands: dict[str, np.ndarray], path: str | Path
              ) -> Path:
    """Observed values, the imputed median and its 90% band in the gaps, per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(series), 1, figsize=(9, 2.6 * len(series)), squeeze=False)
    for ax, (name, s) in zip(axes[:, 0], series.items()):
        lo, mid, hi = bands[name]
        gap = s.isna().to_numpy()
        ax.plot(s.index, s.to_numpy(), color="k", lw=1, label="observed")
        ax.fill_between(s.index, np.where(gap, lo, np.nan), np.where(gap, hi, np.nan),
                        alpha=0.3, color="C1", label="90%")
        ax.plot(s.index, np.where(gap, mid, np.nan), color="C1", lw=1.5, marker=".", ms=3,
                label="imputed median")
        ax.set_title(f"{name} ({int(gap.sum())} missing)")
        ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    return _save_figure(fig, path)


def _save_figure(fig: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=100)
    plt.close(fig)
    return path


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the forecast table as CSV, atomically."""
    path = Path(path)
    with atomic_output(path) as tmp:
        table.to_csv(tmp, index=False)
    return path


__all__ = ["read_series_csv", "forecast_table", "plot_fan", "write_table", "impute_table",
           "plot_gaps", "QUANTILES",
           "QUANTILE_COLUMNS"]
