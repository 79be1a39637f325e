"""Time-series domain: data, backbone, self-guided forecasts, GluonTS face, CSV flow, CLI."""

from __future__ import annotations

import importlib.util
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

TS_DEPS = ("gluonts", "pandas", "statsmodels")
_missing = [m for m in TS_DEPS if importlib.util.find_spec(m) is None]
if _missing:
    pytest.skip(f"timeseries dependencies missing: {_missing} (pip install 'pydiff[timeseries]')",
                allow_module_level=True)

from pydiff.domains.timeseries import TSDiff, TSDiffNet, check_context  # noqa: E402
from pydiff.domains.timeseries.data import (  # noqa: E402
    backtest,
    holdout_split,
    make_windows,
    mean_scale,
    statsmodels_series,
    synthetic_series,
    to_gluonts,
    to_pandas_dataset,
    training_mixture,
)
from pydiff.domains.timeseries.forecaster import PRETRAINED_DIR  # noqa: E402
from pydiff.domains.timeseries.gluonts_api import TSDiffEstimator, TSDiffPredictor  # noqa: E402
from pydiff.domains.timeseries.metrics import (  # noqa: E402
    backtest_metrics,
    forecast_metrics,
    seasonal_naive,
)
from pydiff.domains.timeseries.tabular import (  # noqa: E402
    QUANTILE_COLUMNS,
    forecast_table,
    read_series_csv,
)
from pydiff.domains.timeseries.train import TrainConfig, train  # noqa: E402

from pydiff import InputError  # noqa: E402

warnings.filterwarnings("ignore", module="gluonts")


@pytest.fixture(scope="module")
def tiny() -> TSDiff:
    series = [s.to_numpy() for s in synthetic_series(3).values()]
    return train(series, TrainConfig(context=24, horizon=8, steps=3, channels=8, blocks=2,
                                     batch_size=8, progress=False))


def test_time_budget_stops_training_early():
    series = [s.to_numpy() for s in synthetic_series(2).values()]
    started = time.time()
    model = train(series, TrainConfig(context=24, horizon=8, steps=10**6, channels=8, blocks=2,
                                      batch_size=4, progress=False, time_budget=1.0))
    assert 1 <= model.metadata["steps_done"] < 10**6
    assert time.time() - started < 30  # the budget, not a million steps


# -- data ---------------------------------------------------------------------------------
def test_statsmodels_series_are_regular_and_real():
    s = statsmodels_series()
    assert s["co2"].index.freqstr == "W-SAT" and s["co2"].isna().sum() > 0  # real gaps
    assert s["elnino"].index.freqstr == "MS" and len(s["elnino"]) == 61 * 12
    assert all(v.index.freq is not None for v in s.values())


def test_synthetic_series_are_reproducible_and_seasonal():
    a, b = synthetic_series(3, seed=5), synthetic_series(3, seed=5)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    hourly = next(v for v in a.values() if v.index.freqstr == "h").to_numpy()
    day = np.corrcoef(hourly[:-24], hourly[24:])[0, 1]
    assert day > 0.5  # a daily cycle


def test_windows_are_mean_scaled_and_mask_missing_values():
    x = np.arange(1.0, 41.0)
    x[5] = np.nan
    w = make_windows([x], context=8, horizon=4, stride=1)
    assert w["values"].shape == (29, 1, 12)
    ctx, m = w["values"][:, 0, :8], w["mask"][:, 0, :8].bool()
    means = (ctx.abs() * m).sum(1) / m.sum(1)
    torch.testing.assert_close(means, torch.ones_like(means))
    assert w["mask"][0, 0, 5] == 0 and torch.isfinite(w["values"]).all()
    assert float(mean_scale(np.zeros(5))) == 1.0
    # each window knows its series (what balanced training draws by); too short gives none
    w = make_windows([x, np.ones(5), np.arange(1.0, 15.0)], context=8, horizon=4, stride=1)
    assert w["series"].tolist() == [0] * 29 + [2] * 3


def test_training_balance_is_checked_and_recorded():
    series = [s.to_numpy() for s in synthetic_series(2).values()]
    with pytest.raises(InputError, match="balance"):
        train(series, TrainConfig(balance="rows", progress=False))
    model = train(series, TrainConfig(context=24, horizon=8, steps=2, channels=8, blocks=2,
                                      batch_size=4, balance="windows", progress=False))
    assert model.metadata["recipe"]["balance"] == "windows"


def test_holdout_and_rolling_backtest():
    s = {"a": synthetic_series(1)["synthetic_h_0"]}
    train_part, full = holdout_split(s, horizon=24, windows=3)
    assert len(full["a"]) - len(train_part["a"]) == 72
    _, pairs = backtest(to_gluonts(s), 24, 3)
    pairs = list(pairs)
    assert [len(inp["target"]) for inp, _ in pairs] == [len(s["a"]) - 72 + 24 * k
                                                       for k in range(3)]
    assert next(iter(to_pandas_dataset(s)))["start"].freqstr == "h"
    mix = training_mixture(synthetic=2)
    assert "elnino" not in mix and "co2" in mix  # zero-shot series stay out


# -- backbone -----------------------------------------------------------------------------
def test_net_any_length_and_per_position_time():
    net = TSDiffNet(channels=8, blocks=2, lags=(3,))
    x = torch.randn(2, 1, 17)
    torch.nn.init.normal_(net.output.weight)  # not the zero init, so outputs differ
    glob = net(x, torch.tensor([0.3, -0.2]))
    per = net(x, torch.tensor([0.3, -0.2])[:, None].expand(2, 17))
    torch.testing.assert_close(glob, per)
    assert net(torch.randn(1, 1, 50), 0.1).shape == (1, 1, 50)


# -- forecasting --------------------------------------------------------------------------
def test_check_context_rejects_bad_series():
    with pytest.raises(InputError, match="all missing"):
        check_context([np.nan] * 20)
    with pytest.raises(InputError, match="at least 8"):
        check_context([1.0] * 7 + [np.nan] * 10)
    with pytest.raises(InputError, match="1-D"):
        check_context(np.ones((3, 10)))


def test_forecast_shapes_nan_and_short_context(tiny):
    ctx = 100 + np.sin(np.arange(40.0))
    ctx[[3, 17]] = np.nan
    for guidance in ("quantile", "mse"):
        f = tiny.forecast(ctx, horizon=5, num_samples=3, guidance=guidance, steps=2,
                          solver="ddim")
        assert f.shape == (3, 5) and np.isfinite(f).all()
    short = tiny.forecast(ctx[-10:], horizon=30, num_samples=2, steps=2, solver="euler")
    assert short.shape == (2, 30)  # shorter than the context, longer than the horizon
    again = tiny.forecast(ctx[-10:], horizon=30, num_samples=2, steps=2, solver="euler")
    np.testing.assert_array_equal(short, again)  # seeded
    with pytest.raises(InputError, match="solver"):
        tiny.forecast(ctx, solver="nosuch")


def test_self_guidance_pulls_samples_to_the_context(tiny):
    """The observed positions of the guided samples follow the context; unguided ones don't."""
    ctx = 50 + 10 * np.sin(np.arange(24) * 2 * np.pi / 8)
    obs, mask, scale = tiny.windows([ctx], 8)
    assert mask[0, 0, :24].all() and not mask[0, 0, 24:].any()

    def fit(s: float) -> float:
        import pydiff
        from pydiff.guidance import SelfGuidance

        g = torch.Generator().manual_seed(0)
        model = SelfGuidance(tiny.model, obs.repeat(4, 1, 1), mask.repeat(4, 1, 1), "mse",
                             scale=s)
        x = pydiff.sample(model, pydiff.prior(tiny.model.schedule, (4, 1, 32), generator=g),
                          "ddim", 20)
        return float(((x - obs)[..., :24] ** 2).mean())

    assert fit(20.0) < 0.25 * fit(0.0)


# -- GluonTS face -------------------------------------------------------------------------
def test_predictor_yields_sample_forecasts_and_round_trips(tiny, tmp_path):
    from gluonts.model.forecast import SampleForecast
    from gluonts.model.predictor import Predictor

    ds = to_gluonts({k: v for k, v in synthetic_series(2).items()})
    predictor = TSDiffPredictor(tiny, 6, num_samples=4, steps=2, solver="ddim")
    forecasts = list(predictor.predict(ds))
    entries = list(ds)
    assert all(isinstance(f, SampleForecast) for f in forecasts)
    for f, e in zip(forecasts, entries):
        assert f.samples.shape == (4, 6) and f.start_date == e["start"] + len(e["target"])
        assert f.item_id == e["item_id"]
    predictor.serialize(tmp_path / "p")
    loaded = Predictor.deserialize(tmp_path / "p")
    assert isinstance(loaded, TSDiffPredictor)
    np.testing.assert_allclose(next(iter(loaded.predict(ds))).samples, forecasts[0].samples,
                               rtol=1e-5, atol=1e-5)


def test_estimator_trains_a_predictor():
    ds = to_gluonts(synthetic_series(1))
    est = TSDiffEstimator(4, context_length=12, config=TrainConfig(steps=2, channels=8,
                                                                   blocks=1, batch_size=4,
                                                                   progress=False),
                          num_samples=2, steps=1)
    predictor = est.train(ds)
    assert next(iter(predictor.predict(ds))).samples.shape == (2, 4)


def test_refinement_starts_from_quantile_paths_and_refines_a_gluonts_predictor(tiny):
    from pydiff.domains.timeseries.gluonts_api import TSDiffRefiner

    ctx = 50 + 10 * np.sin(np.arange(40) * 2 * np.pi / 8)
    rng = np.random.default_rng(0)
    initial = 50 + rng.normal(size=(7, 6))
    # no Langevin step: the start itself, the paths sorted per step (quantile paths)
    start = tiny.refine_many([ctx], [initial], steps=0)[0]
    np.testing.assert_allclose(start, np.sort(initial, 0), rtol=1e-5)
    # a point forecast becomes n equal paths; fewer paths are the initial ones' quantiles
    point = tiny.refine_many([ctx], [initial[0]], num_samples=3, steps=0)[0]
    np.testing.assert_allclose(point, np.tile(initial[0], (3, 1)), rtol=1e-5)
    fewer = tiny.refine_many([ctx], [initial], num_samples=2, steps=0)[0]
    np.testing.assert_allclose(fewer, np.quantile(initial, [0.25, 0.75], axis=0), rtol=1e-5)
    moved = tiny.refine_many([ctx, ctx[:20]], [initial, initial], steps=3, guidance="mse")
    assert all(m.shape == (7, 6) and np.isfinite(m).all() for m in moved)
    assert np.abs(moved[0] - start).max() > 0  # the model and the noise moved the paths
    with pytest.raises(InputError, match="initial"):
        tiny.refine_many([ctx], [initial, initial])
    with pytest.raises(InputError, match="finite"):
        tiny.refine_many([ctx], [np.full((2, 6), np.nan)])
    with pytest.raises(InputError, match="level"):
        tiny.refine_many([ctx], [initial], level=1.0)
    ds = list(to_gluonts(synthetic_series(2)))
    refiner = TSDiffRefiner(tiny, seasonal_naive(6), num_samples=4, steps=2)
    forecasts = list(refiner.predict(ds))
    for f, e in zip(forecasts, ds):
        assert f.samples.shape == (4, 6) and f.start_date == e["start"] + len(e["target"])


def test_metrics_match_gluonts_definitions():
    from gluonts.model.forecast import SampleForecast

    start = pd.Period("2020-01", freq="M")
    truth = pd.Series(np.arange(1.0, 25.0), index=pd.period_range(start, periods=24))
    exact = SampleForecast(np.tile(np.arange(21.0, 25.0), (20, 1)), start + 20)
    wide = SampleForecast(np.linspace(-100, 200, 50)[:, None].repeat(4, 1), start + 20)
    perfect, broad = forecast_metrics([exact], [truth]), forecast_metrics([wide], [truth])
    assert perfect["crps"] == 0 and perfect["mase"] == 0
    assert broad["coverage_90"] == 1.0 and broad["crps"] > 0
    naive = backtest_metrics(seasonal_naive(4), to_gluonts(synthetic_series(1)), 4, 2)
    assert naive["forecasts"] == 2 and naive["crps"] > 0


# -- CSV flow and the shipped model --------------------------------------------------------
def test_read_series_csv_and_forecast_table(tiny, tmp_path):
    idx = pd.date_range("2024-03-01", periods=40, freq="D")
    frame = pd.DataFrame({"day": idx.strftime("%Y-%m-%d"), "a": np.arange(40.0),
                          "b": 5 + np.arange(40.0) % 7})
    frame = frame.drop(index=[10])  # a skipped day becomes a missing value
    frame.to_csv(tmp_path / "d.csv", index=False)
    name, freq, series = read_series_csv(tmp_path / "d.csv")
    assert (name, freq, list(series)) == ("day", "D", ["a", "b"])
    assert np.isnan(series["a"].iloc[10]) and len(series["a"]) == 40
    table = forecast_table(tiny, series, name, freq, 3, num_samples=4, steps=1, solver="ddim")
    assert list(table.columns) == ["day", "series", "mean", *QUANTILE_COLUMNS]
    assert len(table) == 6 and table["day"].iloc[0] == pd.Timestamp("2024-04-10")
    q = table[list(QUANTILE_COLUMNS)].to_numpy()
    assert (np.diff(q, axis=1) >= -1e-9).all()


def test_read_series_csv_takes_the_issues_upper_case_freq_quietly(tmp_path):
    """`--freq H` (the issue's spelling, deprecated in pandas 2.2) means hourly, no warning."""
    idx = pd.date_range("2024-03-01", periods=30, freq="h")
    pd.DataFrame({"t": idx, "y": np.arange(30.0)}).to_csv(tmp_path / "h.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, freq, series = read_series_csv(tmp_path / "h.csv", freq="H")
    assert freq == "h" and len(series["y"]) == 30


@pytest.mark.skipif(not (PRETRAINED_DIR / "timeseries.json").is_file(),
                    reason="no shipped checkpoint")
def test_shipped_model_forecasts_a_new_series_sensibly():
    """Zero-shot: a level-1000 seasonal series it never saw gets forecasts at its level (with
    the checkpoint's sampler: 10 guided ddpm steps are too coarse for the balanced model)."""
    model = TSDiff.from_pretrained()
    t = np.arange(150)
    y = 1000 + 100 * np.sin(2 * np.pi * t / 12)
    f = model.forecast(y, horizon=12, num_samples=16)
    truth = 1000 + 100 * np.sin(2 * np.pi * np.arange(150, 162) / 12)
    assert np.abs(np.median(f, 0) - truth).mean() < 60  # vs 100 for the series' mean


def test_cli_forecast_contract(tmp_path):
    from pydiff.apps.cli import main

    idx = pd.date_range("2024-01-01", periods=60, freq="h")
    pd.DataFrame({"timestamp": idx, "load": 20 + np.sin(np.arange(60) / 4)}).to_csv(
        tmp_path / "in.csv", index=False)
    code = main(["timeseries", "forecast", str(tmp_path / "in.csv"), "--horizon", "5", "-n",
                 "4", "--steps", "2", "-o", str(tmp_path / "f.csv"), "--plot",
                 str(tmp_path / "fan.png")])
    assert code == 0
    out = pd.read_csv(tmp_path / "f.csv")
    assert list(out.columns) == ["timestamp", "mean", *QUANTILE_COLUMNS]
    assert len(out) == 5 and out["timestamp"].iloc[0] == "2024-01-03 12:00:00"
    assert (tmp_path / "fan.png").stat().st_size > 1000


def test_deepar_stops_at_its_cpu_budget():
    """A CPU-seconds budget ends DeepAR's training long before its (generous) wall budget."""
    from pydiff.domains.timeseries.evaluate import deepar_predictor

    train_ds, _ = backtest(to_gluonts(synthetic_series(1)), 8, 1)
    started = time.process_time()
    predictor = deepar_predictor(train_ds, 8, 24, time_budget=300.0, cpu_budget=1.0,
                                 frequencies=["h"], num_samples=4)
    used = time.process_time() - started
    assert 1.0 <= used < 30, used
    assert predictor.prediction_length == 8


def test_evaluate_backtests_tsdiff_and_baselines(tiny):
    """Every method is scored on the same rolling origins; DeepAR trains within its budget."""
    from pydiff.domains.timeseries.evaluate import evaluate, format_table

    series = {k: v.iloc[-200:] for k, v in synthetic_series(2).items()}
    started = time.perf_counter()
    rows = evaluate(series, horizon=8, windows=2, baselines=["seasonal_naive", "deepar"],
                    model=tiny, guidances=["quantile", "mse"], num_samples=8, steps=2,
                    deepar_budget=2.0)
    assert time.perf_counter() - started < 40
    assert [r["method"] for r in rows] == ["tsdiff_q", "tsdiff_ms", "seasonal_naive", "deepar"]
    assert all(r["forecasts"] == 4 and np.isfinite(r["crps"]) and r["crps"] > 0 for r in rows)
    assert rows[2]["coverage_90"] < 0.2  # a point forecast covers (almost) nothing
    assert rows[3]["train_seconds"] < 20 and 0 < rows[3]["coverage_90"] <= 1
    assert format_table(rows).count("\n") == 4
    with pytest.raises(InputError, match="fewer --windows"):
        evaluate(series, horizon=8, windows=30, baselines=[], model=tiny)
    with pytest.raises(InputError, match="unknown baseline 'arima'"):
        evaluate(series, horizon=8, baselines=["arima"], model=tiny)


def test_cli_evaluate_contract(tmp_path, capsys):
    import json

    from pydiff.apps.cli import main

    idx = pd.date_range("2024-01-01", periods=80, freq="h")
    pd.DataFrame({"timestamp": idx, "load": 20 + np.sin(np.arange(80) / 4)}).to_csv(
        tmp_path / "in.csv", index=False)
    code = main(["timeseries", "evaluate", str(tmp_path / "in.csv"), "--horizon", "6",
                 "--windows", "2", "--baselines", "seasonal_naive", "-n", "4", "--steps", "2",
                 "--json", str(tmp_path / "e.json")])
    assert code == 0
    table = capsys.readouterr().out
    assert "CRPS" in table and "MASE" in table and "seasonal_naive" in table
    result = json.loads((tmp_path / "e.json").read_text())
    assert [r["method"] for r in result["rows"]] == ["tsdiff_q", "seasonal_naive"]
    assert set(result["rows"][0]) >= {"crps", "mase", "coverage_50", "coverage_90"}


# -- the conditional (CSDI-style) model ----------------------------------------------------
@pytest.fixture(scope="module")
def tiny_csdi():
    series = [s.to_numpy() for s in synthetic_series(3).values()]
    return train(series, TrainConfig(kind="csdi", context=24, horizon=8, steps=3, channels=8,
                                     blocks=2, batch_size=8, progress=False))


def test_conditioning_masks_hide_only_observed_points():
    from pydiff.domains.timeseries.conditional import conditioning_masks

    g = torch.Generator().manual_seed(0)
    observed = torch.ones(64, 1, 48)
    observed[:, :, 5] = 0
    m = conditioning_masks(observed, 8, g)
    assert (m <= observed).all() and (m[:, :, 5] == 0).all()
    hidden = (observed - m).sum((1, 2))
    assert (hidden > 0).all()  # every window has something to learn
    future_only = ((m[:, 0, -8:] == 0).all(1) & (m[:, 0, :-8].sum(1) == 39)).sum()
    assert 5 < future_only < 40  # forecast masks are one of three kinds


def test_residual_frame_starts_from_the_linear_interpolation():
    from pydiff.domains.timeseries.conditional import frame, interpolate, standardization

    nan = float("nan")
    v = torch.tensor([[nan, 2.0, nan, nan, 8.0, nan], [5.0, nan, nan, nan, nan, nan]])
    known = ~v.isnan()
    assert interpolate(v, known).tolist() == [[2.0, 2.0, 4.0, 6.0, 8.0, 8.0], [5.0] * 6]
    assert interpolate(v, torch.zeros_like(known)).abs().sum() == 0
    # a line with gaps: its residual is 0 everywhere, in units of its slope
    line = 1000 + 3.0 * torch.arange(12.0)
    mask = torch.tensor([1, 0, 1, 1, 0, 0, 0, 1, 0, 1, 0, 1]).bool()  # ends known: no flat part
    offset, scale, observed = frame(line[None], mask[None], residual=True)
    torch.testing.assert_close(offset[0], line)
    assert scale.item() == pytest.approx(3.0)
    loc, std = standardization(torch.where(mask, line, nan))
    torch.testing.assert_close(observed[0], (line - loc) / std)  # everywhere, gaps included
    # plain coordinates: the standardization, 0 where not conditioning
    offset, scale, observed = frame(line[None], mask[None], residual=False)
    assert offset.item() == pytest.approx(loc.item()) and scale.item() == pytest.approx(std.item())
    assert (observed[0][~mask] == 0).all()
    # a flat stretch keeps a finite scale (a tenth of the standard deviation)
    step = torch.tensor([[0.0, 0.0, 0.0, 10.0, 10.0, 10.0]])
    assert frame(step, torch.ones_like(step), residual=True)[1].item() == pytest.approx(2.0)


def test_plain_csdi_still_trains_and_imputes():
    series = [s.to_numpy() for s in synthetic_series(2).values()]
    model = train(series, TrainConfig(kind="csdi", context=24, horizon=8, steps=2, channels=8,
                                      blocks=2, batch_size=4, residual=False, progress=False))
    assert not model.model.net.residual and "residual" not in model.model.net.config
    y = series[0][:40].copy()
    y[10:15] = np.nan
    paths = model.impute(y, num_samples=3, steps=2)
    assert np.isfinite(paths).all() and np.array_equal(paths[:, :10], np.tile(y[:10], (3, 1)))


def test_csdi_imputes_gaps_keeps_observations_and_round_trips(tiny_csdi, tmp_path):
    from pydiff.domains.timeseries.conditional import CSDI

    y = 10 + np.sin(np.arange(70) / 3)
    y[[3, 30, 31, 32, 69]] = np.nan
    paths = tiny_csdi.impute(y, num_samples=4, steps=2, solver="ddim")
    assert paths.shape == (4, 70) and np.isfinite(paths).all()
    ok = ~np.isnan(y)
    assert np.array_equal(paths[:, ok], np.broadcast_to(y[ok], (4, ok.sum())))
    assert paths[:, 30].std() > 0  # samples differ in the gaps
    f = tiny_csdi.forecast(y, horizon=5, num_samples=3, steps=2)
    assert f.shape == (3, 5) and np.isfinite(f).all()
    tiny_csdi.save_pretrained(tmp_path / "c")
    again = CSDI.from_pretrained(tmp_path / "c")
    assert again.model.net.residual  # the default recipe, kept by the checkpoint
    np.testing.assert_allclose(again.impute(y, 4, steps=2, solver="ddim"), paths, rtol=1e-5)
    with pytest.raises(InputError, match="not a conditional"):
        CSDI.from_pretrained(PRETRAINED_DIR)


def test_csdi_gaps_follow_the_observed_level_after_training():
    """A few hundred steps on one seasonal series: block-gap samples track the series."""
    from pydiff.domains.timeseries.conditional import CSDI

    t = np.arange(400)
    y = 50 + 10 * np.sin(2 * np.pi * t / 12)
    model = train([y], TrainConfig(kind="csdi", context=36, horizon=12, steps=150, channels=16,
                                   blocks=3, batch_size=32, lr=3e-3, warmup_steps=10,
                                   lags=(12,), progress=False))
    assert isinstance(model, CSDI)
    gap = y[:48].copy()
    gap[20:28] = np.nan
    paths = model.impute(gap, num_samples=8, steps=10)
    err = np.abs(np.median(paths[:, 20:28], 0) - y[20:28]).mean()
    assert err < 4  # vs 10 * 2 / pi = 6.4 for the series' level


@pytest.mark.skipif(not (PRETRAINED_DIR.parent / "pretrained_csdi" / "timeseries.json").is_file(),
                    reason="no shipped conditional checkpoint")
def test_shipped_csdi_fills_a_gap_of_a_new_series_at_its_level():
    from pydiff.domains.timeseries.conditional import CSDI

    t = np.arange(150)
    y = 1000 + 100 * np.sin(2 * np.pi * t / 12)
    gap = y.copy()
    gap[100:110] = np.nan
    paths = CSDI.from_pretrained().impute(gap, num_samples=8, steps=10)
    assert np.abs(np.median(paths[:, 100:110], 0) - y[100:110]).mean() < 60  # mean: 100 away


def test_cli_impute_contract(tiny_csdi, tmp_path):
    from pydiff.apps.cli import main

    idx = pd.date_range("2024-01-01", periods=60, freq="h")
    frame = pd.DataFrame({"timestamp": idx, "load": 20 + np.sin(np.arange(60) / 4),
                          "temp": 5 + np.cos(np.arange(60) / 5)})
    frame.loc[10:14, "load"] = np.nan
    frame = frame.drop(index=[40])  # a skipped hour is a gap too
    frame.to_csv(tmp_path / "in.csv", index=False)
    tiny_csdi.save_pretrained(tmp_path / "csdi")
    code = main(["timeseries", "impute", str(tmp_path / "in.csv"), "-o",
                 str(tmp_path / "filled.csv"), "--plot", str(tmp_path / "gaps.png"), "-n", "4",
                 "--steps", "2", "--checkpoint", str(tmp_path / "csdi")])
    assert code == 0
    out = pd.read_csv(tmp_path / "filled.csv")
    assert list(out.columns) == ["timestamp", "load", "temp"] and len(out) == 60
    assert out.notna().all().all() and out["load"].iloc[0] == frame["load"].iloc[0]
    assert (tmp_path / "gaps.png").stat().st_size > 1000


@pytest.mark.parametrize("module", ["data", "model", "metrics", "train", "evaluate",
                                    "conditional"])
def test_docstring_examples(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"pydiff.domains.timeseries.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
