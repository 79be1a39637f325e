"""The GluonTS face: a ``Predictor`` that yields ``SampleForecast`` and an Estimator-style trainer.

:class:`TSDiffPredictor` is a ``gluonts.model.predictor.Predictor``: ``predict(dataset)`` takes
any GluonTS dataset (``ListDataset``, ``PandasDataset``, a list of entries with ``start`` and
``target``; NaN in the target is a missing value) and yields one ``SampleForecast`` per entry,
starting right after the entry's last point. So GluonTS's own evaluation runs unchanged:
``make_evaluation_predictions``, ``Evaluator``, ``backtest_metrics`` and comparisons with its
models on the same data. ``serialize(path)`` writes GluonTS's ``gluonts-config.json`` plus the
model as a pydiff checkpoint (:meth:`TSDiff.save_pretrained`) and the predictor's settings;
``Predictor.deserialize(path)`` (GluonTS's generic loader) gets it back.

:class:`TSDiffEstimator` is a ``gluonts.model.estimator.Estimator``: ``train(dataset)`` trains a
TSDiff model on the dataset's windows (:func:`pydiff.domains.timeseries.train.train`) and
returns the predictor.

:class:`TSDiffRefiner` is a predictor around another predictor (seasonal naive, DeepAR, ...):
it refines that forecaster's sample paths under the TSDiff model's prior
(:meth:`TSDiff.refine_many`, TSDiff's energy-based refinement) and yields the refined
``SampleForecast``.

Example:
    >>> from gluonts.evaluation import make_evaluation_predictions
    >>> from pydiff.domains.timeseries.data import synthetic_series, to_gluonts
    >>> from pydiff.domains.timeseries.gluonts_api import TSDiffPredictor
    >>> ds = to_gluonts(dict(list(synthetic_series(1).items())))
    >>> predictor = TSDiffPredictor.from_pretrained(prediction_length=24, num_samples=4, steps=3)
    >>> forecasts, series = make_evaluation_predictions(ds, predictor)
    >>> next(forecasts).samples.shape
    (4, 24)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from gluonts.model.estimator import Estimator
from gluonts.model.forecast import SampleForecast
from gluonts.model.predictor import Predictor

from pydiff.errors import InputError
from pydiff.files import atomic_output_dir

from .forecaster import TSDiff
from .train import TrainConfig, train

PREDICTOR_NAME = "predictor.json"


class TSDiffPredictor(Predictor):
    """GluonTS predictor around a :class:`TSDiff` model.

    Args:
        model: the TSDiff model.
        prediction_length: the forecast horizon (any; default the model's).
        num_samples: sample paths per forecast.
        guidance: ``"quantile"`` (TSDiff-Q) or ``"mse"`` (TSDiff-MS).
        scale, solver, steps: guidance scale and core solver (default the checkpoint's).
        seed: seed of the sampler (each ``predict`` call starts from it).
        batch_series: series sampled together in one batch.
    """

    def __init__(self, model: TSDiff, prediction_length: int | None = None,
                 num_samples: int = 100, guidance: str = "quantile",
                 scale: float | None = None, solver: str | None = None,
                 steps: int | None = None, seed: int = 0, batch_series: int = 8):
        super().__init__(prediction_length=prediction_length or model.prediction_length)
        self.model = model
        self.settings: dict[str, Any] = dict(num_samples=num_samples, guidance=guidance,
                                             scale=scale, solver=solver, steps=steps,
                                             seed=seed, batch_series=batch_series)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, **kwargs: Any) -> TSDiffPredictor:
        """A predictor around :meth:`TSDiff.from_pretrained` (default: the shipped model)."""
        return cls(TSDiff.from_pretrained(path), **kwargs)

    def predict(self, dataset: Iterable[dict[str, Any]], num_samples: int | None = None,
                **kwargs: Any) -> Iterator[SampleForecast]:
        """One ``SampleForecast`` ``[num_samples, prediction_length]`` per dataset entry."""
        settings = {**self.settings, **kwargs}
        if num_samples is not None:
            settings["num_samples"] = num_samples
        batch = max(1, int(settings["batch_series"]))
        pending: list[dict[str, Any]] = []
        for i, entry in enumerate(dataset):
            pending.append(entry)
            if len(pending) == batch:
                yield from self._forecasts(pending, settings, i)
                pending = []
        if pending:
            yield from self._forecasts(pending, settings, -1)

    def _forecasts(self, entries: list[dict[str, Any]], settings: dict[str, Any],
                   index: int) -> Iterator[SampleForecast]:
        contexts = []
        for entry in entries:
            target = np.asarray(entry["target"], dtype=np.float64)
            if target.ndim != 1:
                raise InputError(f"entry {entry.get('item_id', index)!r}: TSDiff forecasts "
                                 f"univariate series, got a target of shape {target.shape}")
            contexts.append(target)
        options = {k: v for k, v in settings.items() if k != "num_samples"}
        paths = self.model.forecast_many(contexts, self.prediction_length,
                                         settings["num_samples"], **options)
        for entry, target, samples in zip(entries, contexts, paths):
            yield SampleForecast(samples=samples.astype(np.float32),
                                 start_date=entry["start"] + len(target),
                                 item_id=entry.get("item_id"))

    def serialize(self, path: Path) -> None:
        """GluonTS's ``gluonts-config.json``, the model (``tsdiff/``) and ``predictor.json``."""
        path = Path(path)
        with atomic_output_dir(path, "predictor folder") as tmp:
            super().serialize(tmp)
            self.model.save_pretrained(tmp / "tsdiff")
            (tmp / PREDICTOR_NAME).write_text(json.dumps(
                {"prediction_length": self.prediction_length, **self.settings}, indent=2))

    @classmethod
    def deserialize(cls, path: Path, **kwargs: Any) -> TSDiffPredictor:
        """Load a folder written by :meth:`serialize` (``kwargs`` override its settings)."""
        path = Path(path)
        settings_file = path / PREDICTOR_NAME
        if not settings_file.is_file():
            raise InputError(f"{str(path)!r} is not a TSDiff predictor: no {PREDICTOR_NAME}")
        settings = {**json.loads(settings_file.read_text()), **kwargs}
        return cls(TSDiff.from_pretrained(path / "tsdiff"), **settings)


class TSDiffRefiner(Predictor):
    """GluonTS predictor that refines another predictor's forecasts with a :class:`TSDiff` prior.

    Args:
        model: the TSDiff model (its unconditional prior).
        base: the GluonTS predictor whose forecasts are refined (same prediction length).
        num_samples: paths per refined forecast (default: the base forecast's).
        guidance: ``"quantile"`` or ``"mse"`` observation energy.
        refinement: :meth:`TSDiff.refine_many` options (``scale``, ``steps``, ``step_size``,
            ``noise_scale``, ``level``, ``seed``).

    Example:
        >>> from pydiff.domains.timeseries.data import synthetic_series, to_gluonts
        >>> from pydiff.domains.timeseries.metrics import seasonal_naive
        >>> ds = list(to_gluonts(synthetic_series(1)))
        >>> refiner = TSDiffRefiner(TSDiff.from_pretrained(), seasonal_naive(24),
        ...                         num_samples=4, steps=2)
        >>> next(iter(refiner.predict(ds))).samples.shape
        (4, 24)
    """

    def __init__(self, model: TSDiff, base: Predictor, num_samples: int | None = None,
                 guidance: str = "quantile", batch_series: int = 8, **refinement: Any):
        super().__init__(prediction_length=base.prediction_length)
        self.model, self.base = model, base
        self.settings: dict[str, Any] = dict(num_samples=num_samples, guidance=guidance,
                                             **refinement)
        self.batch_series = max(1, int(batch_series))

    def predict(self, dataset: Iterable[dict[str, Any]], **kwargs: Any
                ) -> Iterator[SampleForecast]:
        """One refined ``SampleForecast`` per dataset entry."""
        entries = list(dataset)
        forecasts = list(self.base.predict(entries, **kwargs))
        for first in range(0, len(entries), self.batch_series):
            chunk = entries[first:first + self.batch_series]
            base = forecasts[first:first + self.batch_series]
            contexts = [np.asarray(e["target"], dtype=np.float64) for e in chunk]
            paths = self.model.refine_many(contexts, [f.samples for f in base], **self.settings)
            for entry, f, samples in zip(chunk, base, paths):
                yield SampleForecast(samples=samples.astype(np.float32),
                                     start_date=f.start_date, item_id=entry.get("item_id"))


class TSDiffEstimator(Estimator):
    """Estimator-style trainer: ``TSDiffEstimator(24).train(dataset) -> TSDiffPredictor``.

    Args:
        prediction_length: the forecast horizon.
        context_length: history points (default ``4 * prediction_length``).
        config: the training recipe (``context``/``horizon`` are set from the lengths).
        predictor_kwargs: settings of the returned :class:`TSDiffPredictor`.
    """

    def __init__(self, prediction_length: int, context_length: int | None = None,
                 config: TrainConfig | None = None, **predictor_kwargs: Any):
        super().__init__()
        self.prediction_length = int(prediction_length)
        self.context_length = int(context_length or 4 * prediction_length)
        self.config = config or TrainConfig()
        self.config.context, self.config.horizon = self.context_length, self.prediction_length
        self.predictor_kwargs = predictor_kwargs

    def train(self, training_data: Iterable[dict[str, Any]],
              validation_data: Iterable[dict[str, Any]] | None = None,
              **kwargs: Any) -> TSDiffPredictor:
        """Train on the dataset's targets and return the predictor."""
        model = train([np.asarray(e["target"], dtype=np.float64) for e in training_data],
                      self.config)
        return TSDiffPredictor(model, self.prediction_length, **self.predictor_kwargs)


__all__ = ["TSDiffPredictor", "TSDiffRefiner", "TSDiffEstimator"]
