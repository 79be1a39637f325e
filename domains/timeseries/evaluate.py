"""Rolling-origin evaluation of TSDiff against baselines: what ``pydiff timeseries evaluate`` runs.

The last ``windows`` horizons of each series are the test windows (``gluonts.dataset.split``:
origins ``horizon`` apart, each forecast sees only the history before its origin). Every method
is a GluonTS predictor scored by GluonTS's ``Evaluator`` (:mod:`.metrics`): CRPS (mean weighted
quantile loss over 0.1 ... 0.9), MASE (season from ``get_seasonality``), and the coverage of the
central 50% and 90% intervals.

Methods:

- ``tsdiff_q`` / ``tsdiff_ms``: a TSDiff checkpoint with quantile or mean-squared self-guidance;
- ``seasonal_naive``: GluonTS's ``SeasonalNaivePredictor``;
- ``deepar``: GluonTS's ``gluonts.torch`` ``DeepAREstimator`` (lightning, CPU) trained here on
  the history before the first test origin (the windows TSDiff's training would see), for a
  wall-clock budget (``deepar_budget`` seconds, lightning's ``max_time``), with TSDiff's
  context length. Series of several frequencies train one model with explicit lags and no
  calendar features (what TSDiff sees too); one frequency gets GluonTS's defaults for it.

Example:
    >>> from pydiff.domains.timeseries.data import synthetic_series
    >>> from pydiff.domains.timeseries.evaluate import evaluate
    >>> series = dict(list(synthetic_series(1).items()))
    >>> rows = evaluate(series, horizon=12, windows=1, baselines=["seasonal_naive"],
    ...                 num_samples=4, steps=2)
    >>> [r["method"] for r in rows]
    ['tsdiff_q', 'seasonal_naive']
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pydiff.errors import InputError

from .data import backtest, to_gluonts
from .forecaster import MIN_OBSERVATIONS, TSDiff
from .metrics import backtest_metrics, seasonal_naive

BASELINES = ("seasonal_naive", "deepar")
TSDIFF_METHODS = {"quantile": "tsdiff_q", "mse": "tsdiff_ms"}
# DeepAR's lags where the series mix frequencies (the TSDiff backbone's lags plus the recent
# past that an autoregressive model needs)
MIXED_FREQUENCY_LAGS = (1, 2, 3, 4, 5, 6, 7, 12, 24, 52)


def parse_baselines(text: str | Sequence[str]) -> list[str]:
    """Baseline names from ``"seasonal_naive,deepar"`` (or a list); unknown ones raise.

    Example:
        >>> parse_baselines("deepar, seasonal_naive")
        ['deepar', 'seasonal_naive']
    """
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise InputError(f"--baselines: unknown baseline {unknown[0]!r}; expected a "
                         f"comma-separated subset of {', '.join(BASELINES)}")
    return list(dict.fromkeys(names))


def check_backtest_lengths(series: Mapping[str, pd.Series], horizon: int, windows: int) -> None:
    """Each series must keep :data:`MIN_OBSERVATIONS` observed values before its first test
    origin; else :class:`InputError` naming the series."""
    cut = horizon * windows
    for name, s in series.items():
        history = int(s.iloc[:-cut].notna().sum()) if len(s) > cut else 0
        if history < MIN_OBSERVATIONS:
            raise InputError(f"series {name!r} has {len(s)} points: {windows} test window(s) "
                             f"of --horizon {horizon} leave {history} observed values before "
                             f"the first origin (at least {MIN_OBSERVATIONS} needed); use a "
                             "shorter --horizon or fewer --windows")


def _quiet_lightning() -> None:
    # lightning sets its loggers to INFO when imported; GluonTS's checkpoint callback is verbose
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _cpu_budget_callback(seconds: float):
    """A lightning callback that stops training once this process has used ``seconds`` of CPU
    time (all its threads): a budget that other jobs on a shared machine do not shrink."""
    import lightning.pytorch as pl

    class CPUBudget(pl.Callback):
        def __init__(self) -> None:
            self.start = time.process_time()
            self.steps = 0

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            self.steps = trainer.global_step
            if time.process_time() - self.start >= seconds:
                trainer.should_stop = True

    return CPUBudget()


def deepar_predictor(train_dataset: Any, horizon: int, context_length: int, time_budget: float,
                     seed: int = 0, frequencies: Sequence[str] = (), num_samples: int = 100,
                     cpu_budget: float | None = None):
    """GluonTS's torch DeepAR trained on ``train_dataset`` for ``time_budget`` seconds (CPU).

    ``frequencies``: the series' pandas frequencies; one gives GluonTS's lags and calendar
    features for it, several give :data:`MIXED_FREQUENCY_LAGS` and no calendar features.
    ``cpu_budget``: also stop after this many seconds of CPU time of this process (comparable
    with a TSDiff checkpoint's ``train_cpu_seconds`` whatever the machine's load).
    """
    import lightning.pytorch as pl
    from gluonts.torch.model.deepar import DeepAREstimator

    _quiet_lightning()
    callbacks = [] if cpu_budget is None else [_cpu_budget_callback(float(cpu_budget))]
    pl.seed_everything(seed, verbose=False)
    freqs = sorted(set(frequencies))
    mixed = len(freqs) != 1
    with tempfile.TemporaryDirectory(prefix="pydiff-deepar-") as root:
        estimator = DeepAREstimator(
            freq=freqs[0] if not mixed else "h", prediction_length=horizon,
            context_length=context_length,
            lags_seq=list(MIXED_FREQUENCY_LAGS) if mixed else None,
            time_features=[] if mixed else None, num_parallel_samples=num_samples,
            trainer_kwargs=dict(max_time={"seconds": float(time_budget)}, max_epochs=100_000,
                                accelerator="cpu", devices=1, enable_progress_bar=False,
                                enable_model_summary=False, logger=False,
                                default_root_dir=root, callbacks=callbacks))
        _quiet_lightning()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return estimator.train(train_dataset)


def evaluate(series: Mapping[str, pd.Series], horizon: int, windows: int = 3,
             baselines: Sequence[str] = BASELINES, model: TSDiff | None = None,
             guidances: Sequence[str] = ("quantile",), num_samples: int = 100,
             deepar_budget: float = 60.0, seed: int = 0, progress: Any = None,
             **sampling: Any) -> list[dict[str, Any]]:
    """Backtest metrics per method (module docs), TSDiff rows first.

    Args:
        series: ``{name: pd.Series}`` with a regular ``DatetimeIndex`` (a frequency).
        horizon: steps ahead of each forecast.
        windows: rolling origins per series, ``horizon`` apart, at the end.
        baselines: a subset of :data:`BASELINES`.
        model: the TSDiff model (default the shipped checkpoint).
        guidances: ``"quantile"`` (TSDiff-Q) and/or ``"mse"`` (TSDiff-MS).
        num_samples: sample paths per forecast (TSDiff and DeepAR).
        deepar_budget: DeepAR's training wall-clock seconds.
        progress: called with one line per finished method (e.g. ``print``).
        sampling: ``solver``, ``steps``, ``scale`` of TSDiff.

    Each row: ``method``, ``crps``, ``mase``, ``coverage_50``, ``coverage_90``, ``forecasts``
    (series x origins), ``seconds`` (predicting) and ``train_seconds`` (DeepAR).
    """
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise InputError(f"horizon must be an integer >= 1, got {horizon!r}")
    if isinstance(windows, bool) or not isinstance(windows, (int, np.integer)) or windows < 1:
        raise InputError(f"windows must be an integer >= 1, got {windows!r}")
    baselines = parse_baselines(baselines)
    unknown = [g for g in guidances if g not in TSDIFF_METHODS]
    if unknown or not guidances:
        raise InputError(f"guidance must be one or more of {tuple(TSDIFF_METHODS)}, got "
                         f"{list(guidances)}")
    if not series:
        raise InputError("no series to evaluate")
    check_backtest_lengths(series, horizon, windows)
    from .gluonts_api import TSDiffPredictor

    model = model if model is not None else TSDiff.from_pretrained()
    dataset = list(to_gluonts(series))
    predictors: list[tuple[str, Any, float | None]] = []
    for g in guidances:
        predictors.append((TSDIFF_METHODS[g], TSDiffPredictor(
            model, horizon, num_samples=num_samples, guidance=g, seed=seed, **sampling), None))
    for name in baselines:
        if name == "seasonal_naive":
            predictors.append((name, seasonal_naive(horizon), None))
        else:  # deepar: trained now, on the history before the first test origin
            train_ds, _ = backtest(dataset, horizon, windows)
            started = time.perf_counter()
            freqs = [s.index.freqstr for s in series.values()]
            predictor = deepar_predictor(train_ds, horizon, model.context_length,
                                         deepar_budget, seed, freqs, num_samples)
            predictors.append((name, predictor, time.perf_counter() - started))
    rows = []
    for name, predictor, train_seconds in predictors:
        m = backtest_metrics(predictor, dataset, horizon, windows)
        row = {"method": name, **m, "train_seconds": train_seconds}
        rows.append(row)
        if progress is not None:
            progress(format_row(row))
    return rows


COLUMNS = (("method", "{:<15s}"), ("crps", "{:>8.4f}"), ("mase", "{:>8.3f}"),
           ("coverage_50", "{:>6.2f}"), ("coverage_90", "{:>6.2f}"),
           ("forecasts", "{:>9d}"), ("seconds", "{:>8.1f}"))
HEADER = "{:<15s} {:>8s} {:>8s} {:>6s} {:>6s} {:>9s} {:>8s}".format(
    "method", "CRPS", "MASE", "cov50", "cov90", "forecasts", "seconds")


def format_row(row: Mapping[str, Any]) -> str:
    """One table line of an :func:`evaluate` row."""
    return " ".join(fmt.format(row[key]) for key, fmt in COLUMNS)


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The table ``pydiff timeseries evaluate`` prints.

    Example:
        >>> row = dict(method="seasonal_naive", crps=0.1, mase=1.0, coverage_50=0.0,
        ...            coverage_90=0.0, forecasts=3, seconds=0.01)
        >>> print(format_table([row]).splitlines()[0].split())
        ['method', 'CRPS', 'MASE', 'cov50', 'cov90', 'forecasts', 'seconds']
    """
    return "\n".join([HEADER, *map(format_row, rows)])


__all__ = ["evaluate", "deepar_predictor", "parse_baselines", "check_backtest_lengths",
           "format_table", "format_row", "BASELINES", "TSDIFF_METHODS"]
