"""Local time series (no downloads), mean scaling, training windows and GluonTS datasets.

- :func:`statsmodels_series`: the real series that ship with statsmodels (weekly CO2 at Mauna
  Loa, yearly sunspots, quarterly US macro data, monthly El Nino sea temperatures, yearly Nile
  flow, Danish money demand, German interest rates), as ``pd.Series`` with a regular
  ``DatetimeIndex`` (pandas' current frequency aliases: ``"W-SAT"``, ``"YS"``, ``"QS"``, ``"MS"``).
- :func:`synthetic_series`: seasonal series with a trend, one or two seasonalities, level shifts
  and noise, at fixed seeds (hourly with daily and weekly cycles, daily with a weekly cycle,
  monthly with a yearly cycle).
- :func:`training_mixture` / :func:`zero_shot_series`: what the shipped checkpoint trains on and
  the series it never sees.
- :func:`mean_scale` and :func:`make_windows`: TSDiff's mean scaling (the mean absolute observed
  value of the context) and fixed-length windows ``context + horizon`` of many series, with an
  observed mask (NaN stays missing: the loss and the guidance skip it).
- :func:`holdout_split`: the last ``windows * horizon`` points of each series are held out;
  :func:`to_gluonts` / :func:`to_pandas_dataset` make GluonTS datasets, and
  :func:`backtest` the rolling-origin test instances (``gluonts.dataset.split``).

Example:
    >>> from pydiff.domains.timeseries.data import statsmodels_series, make_windows
    >>> series = statsmodels_series()
    >>> series["co2"].index.freqstr
    'W-SAT'
    >>> w = make_windows([series["co2"].to_numpy()], context=96, horizon=24, stride=100)
    >>> w["values"].shape[1:], w["mask"].shape[1:]
    (torch.Size([1, 120]), torch.Size([1, 120]))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from pydiff.errors import InputError

Tensor = torch.Tensor
SCALE_FLOOR = 1e-8  # a context of zeros keeps the scale 1 instead of dividing by 0


# -- real series ------------------------------------------------------------------------------
def _yearly(values: Sequence[float], first_year: int) -> pd.Series:
    index = pd.date_range(f"{first_year}-01-01", periods=len(values), freq="YS")
    return pd.Series(np.asarray(values, dtype=np.float64), index=index)


def _quarterly(values: Sequence[float], year: int, quarter: int) -> pd.Series:
    start = pd.Timestamp(year=year, month=3 * (quarter - 1) + 1, day=1)
    index = pd.date_range(start, periods=len(values), freq="QS")
    return pd.Series(np.asarray(values, dtype=np.float64), index=index)


MACRO_COLUMNS = ("realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1",
                 "tbilrate", "unemp", "pop")


def statsmodels_series() -> dict[str, pd.Series]:
    """The time series bundled with statsmodels, by name (see the module docs).

    Example:
        >>> s = statsmodels_series()
        >>> s["sunspots"].index.freqstr, len(s["sunspots"])
        ('YS-JAN', 309)
    """
    import statsmodels.api as sm

    d = sm.datasets
    out: dict[str, pd.Series] = {}
    co2 = d.co2.load_pandas().data["co2"]  # weekly, with missing weeks (NaN)
    co2.index = pd.DatetimeIndex(co2.index, freq="W-SAT")
    out["co2"] = co2.astype(np.float64)
    sun = d.sunspots.load_pandas().data
    out["sunspots"] = _yearly(sun["SUNACTIVITY"], int(sun["YEAR"].iloc[0]))
    macro = d.macrodata.load_pandas().data
    year, quarter = int(macro["year"].iloc[0]), int(macro["quarter"].iloc[0])
    for col in MACRO_COLUMNS:
        out[f"macro_{col}"] = _quarterly(macro[col], year, quarter)
    nino = d.elnino.load_pandas().data
    monthly = nino.drop(columns="YEAR").to_numpy(dtype=np.float64).reshape(-1)
    out["elnino"] = pd.Series(monthly, index=pd.date_range(
        f"{int(nino['YEAR'].iloc[0])}-01-01", periods=len(monthly), freq="MS"))
    nile = d.nile.load_pandas().data
    out["nile"] = _yearly(nile["volume"], int(nile["year"].iloc[0]))
    danish = d.danish_data.load_pandas().data
    for col in ("lrm", "lry"):
        out[f"danish_{col}"] = _quarterly(danish[col], 1974, 1)
    rates = d.interest_inflation.load_pandas().data
    out["interest_rate"] = _quarterly(rates["R"], int(rates["year"].iloc[0]),
                                      int(rates["quarter"].iloc[0]))
    return out


# -- synthetic series -------------------------------------------------------------------------
# (pandas frequency, periods of its seasonalities, length)
SYNTHETIC_KINDS: tuple[tuple[str, tuple[int, ...], int], ...] = (
    ("h", (24, 168), 24 * 7 * 8),
    ("D", (7, 365), 3 * 365),
    ("MS", (12,), 480),
)


def synthetic_series(count: int = 24, seed: int = 0) -> dict[str, pd.Series]:
    """``count`` seasonal series at fixed seeds (``seed + i`` for the ``i``-th), by name.

    Each is ``level * (1 + trend + seasonal + shifts) + noise`` with random phases and
    amplitudes of its kind's seasonalities (one kind per series, cycling through
    :data:`SYNTHETIC_KINDS`), 0-2 level shifts, and Gaussian noise. All values are positive.

    Example:
        >>> s = synthetic_series(3, seed=0)
        >>> sorted(x.index.freqstr for x in s.values())
        ['D', 'MS', 'h']
    """
    out = {}
    for i in range(count):
        freq, periods, length = SYNTHETIC_KINDS[i % len(SYNTHETIC_KINDS)]
        rng = np.random.default_rng(seed + i)
        t = np.arange(length, dtype=np.float64)
        shape = rng.uniform(-0.3, 0.3) * t / length
        for k, period in enumerate(periods):
            amp = rng.uniform(0.1, 0.4) / (k + 1)
            phase = rng.uniform(0, 2 * np.pi)
            shape += amp * np.sin(2 * np.pi * t / period + phase)
            # a second harmonic makes the cycles non-sinusoidal (peaks, plateaus)
            shape += 0.4 * amp * rng.uniform(-1, 1) * np.sin(4 * np.pi * t / period + phase)
        for _ in range(rng.integers(0, 3)):
            shape += rng.uniform(-0.2, 0.2) * (t >= rng.integers(length // 5, length))
        noise = rng.uniform(0.02, 0.08) * rng.standard_normal(length)
        level = float(np.exp(rng.uniform(0, 6)))
        values = level * np.maximum(1.5 + shape + noise, 0.05)
        start = pd.Timestamp("2020-01-01") + pd.Timedelta(days=int(rng.integers(0, 365)))
        index = pd.date_range(start.normalize() if freq != "MS" else "2000-01-01",
                              periods=length, freq=freq)
        out[f"synthetic_{freq}_{seed + i}"] = pd.Series(values, index=index)
    return out


HOLDOUT_WINDOWS = 3  # horizons at the end of each mixture series that training never sees
ZERO_SHOT = ("elnino", "nile", "macro_unemp", "interest_rate", "danish_lrm")


def training_mixture(seed: int = 0, synthetic: int = 24) -> dict[str, pd.Series]:
    """The shipped checkpoint's training series: synthetic ones and statsmodels' series except
    :data:`ZERO_SHOT` (held out whole for the zero-shot test)."""
    real = {k: v for k, v in statsmodels_series().items() if k not in ZERO_SHOT}
    return {**synthetic_series(synthetic, seed), **real}


def zero_shot_series(seed: int = 1000, synthetic: int = 3) -> dict[str, pd.Series]:
    """Series the shipped checkpoint never saw: :data:`ZERO_SHOT` and fresh synthetic seeds."""
    real = statsmodels_series()
    return {**{k: real[k] for k in ZERO_SHOT}, **synthetic_series(synthetic, seed)}


# -- scaling and windows ----------------------------------------------------------------------
def mean_scale(context: np.ndarray | Tensor, mask: np.ndarray | Tensor | None = None) -> Any:
    """TSDiff's mean scale over the last axis: mean ``|x|`` of the observed values (1 where
    there is none or it is 0).

    Example:
        >>> float(mean_scale(np.array([2.0, -4.0, np.nan])))
        3.0
    """
    if torch.is_tensor(context):
        m = ~torch.isnan(context) if mask is None else mask.bool() & ~torch.isnan(context)
        total = torch.where(m, context.abs(), 0).sum(-1)
        scale = total / m.sum(-1).clamp_min(1)
        return torch.where(scale > SCALE_FLOOR, scale, torch.ones_like(scale))
    context = np.asarray(context, dtype=np.float64)
    m = ~np.isnan(context) if mask is None else np.asarray(mask, bool) & ~np.isnan(context)
    total = np.where(m, np.abs(np.nan_to_num(context)), 0).sum(-1)
    scale = total / np.maximum(m.sum(-1), 1)
    return np.where(scale > SCALE_FLOOR, scale, 1.0)


def interpolate(values: Tensor, mask: Tensor) -> Tensor:
    """Linear interpolation over the last axis of ``values`` where ``mask`` is 1 (other
    entries are ignored, NaN allowed), held flat before the first and after the last known
    point; 0 in a row with none known.

    Example:
        >>> interpolate(torch.tensor([1.0, 0.0, 3.0, 0.0]), torch.tensor([1, 0, 1, 0])).tolist()
        [1.0, 2.0, 3.0, 3.0]
    """
    length = values.shape[-1]
    known = mask.bool().expand_as(values)
    idx = torch.arange(length, device=values.device).expand_as(values)
    prev = torch.where(known, idx, -1).cummax(-1).values
    nxt = torch.where(known, idx, length).flip(-1).cummin(-1).values.flip(-1)
    has_prev, has_next = prev >= 0, nxt < length
    v_prev = values.gather(-1, prev.clamp(0, length - 1))
    v_next = values.gather(-1, nxt.clamp(0, length - 1))
    w = (idx - prev).to(values.dtype) / (nxt - prev).clamp_min(1).to(values.dtype)
    inside = torch.where(has_next, v_prev + w * (v_next - v_prev), v_prev)
    out = torch.where(has_prev, inside, v_next)
    return torch.where(has_prev | has_next, out, torch.zeros_like(out))


def fill_missing(values: np.ndarray) -> np.ndarray:
    """Linear interpolation over NaN (edges: the nearest observed value); all-NaN stays NaN."""
    values = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(values)
    if ok.all() or not ok.any():
        return values.copy()
    return interpolate(torch.from_numpy(values), torch.from_numpy(ok)).numpy()


def make_windows(series: Iterable[np.ndarray], context: int, horizon: int,
                 stride: int = 1) -> dict[str, Tensor]:
    """Windows of ``context + horizon`` points from each series, mean-scaled by their context.

    Series shorter than a window give none. Missing values (NaN) are filled by
    :func:`fill_missing` (so the network sees a plausible input) and marked 0 in ``mask``
    (so the loss skips them); windows whose context is mostly missing are dropped.

    Returns ``{"values": [N, 1, L] float32, "mask": [N, 1, L] float32, "scale": [N] float32,
    "series": [N] int64}`` (``series``: the position of each window's series in ``series``).
    """
    if context < 1 or horizon < 1 or stride < 1:
        raise InputError(f"context, horizon and stride must be >= 1, got {context}, {horizon}, "
                         f"{stride}")
    length = context + horizon
    values, masks, owners = [], [], []
    for i, s in enumerate(series):
        s = np.asarray(s, dtype=np.float64)
        if len(s) < length:
            continue
        observed = ~np.isnan(s)
        filled = fill_missing(s)
        view = np.lib.stride_tricks.sliding_window_view
        values.append(view(filled, length)[::stride])
        masks.append(view(observed, length)[::stride])
        owners.append(np.full(len(values[-1]), i))
    if not values:
        raise InputError(f"no series has the {length} points of a window (context {context} + "
                         f"horizon {horizon})")
    v, m, owner = np.concatenate(values), np.concatenate(masks), np.concatenate(owners)
    keep = m[:, :context].mean(1) >= 0.5
    v, m, owner = v[keep], m[keep], owner[keep]
    scale = mean_scale(np.where(m[:, :context], v[:, :context], np.nan))
    return {"values": torch.from_numpy((v / scale[:, None])[:, None]).float(),
            "mask": torch.from_numpy(m[:, None].astype(np.float32)),
            "scale": torch.from_numpy(scale).float(),
            "series": torch.from_numpy(owner.astype(np.int64))}


# -- held-out windows and GluonTS datasets ----------------------------------------------------
def holdout_split(series: Mapping[str, pd.Series], horizon: int, windows: int = 1
                  ) -> tuple[dict[str, pd.Series], dict[str, pd.Series]]:
    """``(train, full)``: each series without its last ``windows * horizon`` points, and whole.

    Series that would keep fewer than ``2 * horizon`` training points are left out of both.

    Example:
        >>> train, full = holdout_split(statsmodels_series(), horizon=8, windows=2)
        >>> len(full["co2"]) - len(train["co2"])
        16
    """
    cut = horizon * windows
    train, full = {}, {}
    for name, s in series.items():
        if len(s) - cut >= 2 * horizon:
            train[name], full[name] = s.iloc[:-cut], s
    return train, full


def _entry(name: str, s: pd.Series) -> dict[str, Any]:
    if not isinstance(s.index, pd.DatetimeIndex) or s.index.freq is None:
        raise InputError(f"series {name!r} needs a DatetimeIndex with a frequency")
    # a Period of the matching period frequency ("MS" -> "M", "QS-JAN" -> "Q-DEC", ...)
    return {"start": s.index[:1].to_period()[0],
            "target": s.to_numpy(dtype=np.float32), "item_id": name}


def to_gluonts(series: Mapping[str, pd.Series]):
    """A GluonTS dataset of the series: a ``ListDataset`` when they share one frequency, else
    a list of entries (``start`` a ``pd.Period`` of each series' own frequency).

    Example:
        >>> ds = to_gluonts(synthetic_series(1))
        >>> next(iter(ds))["start"].freqstr
        'h'
    """
    from gluonts.dataset.common import ListDataset

    entries = [_entry(name, s) for name, s in series.items()]
    freqs = {e["start"].freqstr for e in entries}
    if len(freqs) == 1:
        return ListDataset(entries, freq=freqs.pop())
    return entries


def to_pandas_dataset(series: Mapping[str, pd.Series]):
    """A GluonTS ``PandasDataset`` of series that share one frequency."""
    from gluonts.dataset.pandas import PandasDataset

    freqs = {s.index[:1].to_period().freqstr for s in series.values()}
    if len(freqs) != 1:
        raise InputError(f"a PandasDataset needs one frequency, got {sorted(freqs)}")
    return PandasDataset(dict(series), freq=freqs.pop())


def backtest(dataset: Iterable[dict[str, Any]], horizon: int, windows: int = 1):
    """Rolling-origin test instances: ``windows`` origins ``horizon`` apart at the end of each
    series (``gluonts.dataset.split``). Returns ``(train_dataset, test_pairs)``; each pair is
    ``(input entry, label entry)``.
    """
    from gluonts.dataset.split import split

    train, template = split(dataset, offset=-horizon * windows)
    return train, template.generate_instances(prediction_length=horizon, windows=windows,
                                              distance=horizon)


__all__ = ["statsmodels_series", "synthetic_series", "training_mixture", "zero_shot_series",
           "ZERO_SHOT", "HOLDOUT_WINDOWS", "mean_scale", "fill_missing", "interpolate",
           "make_windows", "holdout_split", "to_gluonts", "to_pandas_dataset", "backtest",
           "SYNTHETIC_KINDS"]
