"""Probabilistic time-series forecasting with diffusion: TSDiff on pydiff, GluonTS-compatible.

- :mod:`.data`: statsmodels' bundled series, synthetic seasonal series (fixed seeds), mean
  scaling, training windows, held-out windows, GluonTS datasets.
- :mod:`.model`: the backbone (dilated residual convolutions with lag features, per-position
  time embedding) and its :class:`pydiff.Denoiser`.
- :mod:`.forecaster`: :class:`TSDiff`, forecasts by self-guidance (TSDiff-Q quantile guidance,
  TSDiff-MS) with any core solver.
- :mod:`.conditional`: :class:`CSDI`, the conditional (CSDI-style) model: imputation of gaps
  and forecasting with missing values.
- :mod:`.evaluate`: rolling-origin backtests against seasonal naive and GluonTS's DeepAR.
- :mod:`.train`: the training recipe on :class:`pydiff.training.Trainer` (both models).

Example:
    >>> import numpy as np
    >>> from pydiff.domains.timeseries import TSDiff
    >>> y = 5 + np.sin(np.arange(120) * 2 * np.pi / 12)
    >>> TSDiff.from_pretrained().forecast(y, horizon=6, num_samples=4, steps=3).shape
    (4, 6)
"""

from .conditional import CSDI
from .data import make_windows, mean_scale, statsmodels_series, synthetic_series, to_gluonts
from .forecaster import GUIDANCES, MIN_OBSERVATIONS, TSDiff, check_context
from .model import CSDINet, TSDiffNet, make_denoiser
from .train import TrainConfig, train

__all__ = ["TSDiff", "CSDI", "TSDiffNet", "CSDINet", "make_denoiser", "TrainConfig", "train",
           "GUIDANCES",
           "MIN_OBSERVATIONS", "check_context", "statsmodels_series", "synthetic_series",
           "make_windows", "mean_scale", "to_gluonts"]
