"""``TSDiff``: probabilistic forecasts from an unconditional window model by self-guidance.

TSDiff (Kollovieh et al. 2023) trains one unconditional diffusion model over windows
``context + horizon`` and conditions it only at inference: the observed context enters through
:class:`pydiff.guidance.SelfGuidance`, which adds the gradient of an observation objective of
x0-hat to the model's score. Two objectives:

- ``"quantile"`` (TSDiff-Q): sample ``k`` of ``n`` is guided by the pinball loss at level
  ``k / (n + 1)``, so the ensemble spreads over the conditional quantiles;
- ``"mse"`` (TSDiff-MS): every sample is guided by the squared error.

Everything else is the core: the schedule and preconditioning (the Denoiser), the prior, any
solver (``solver=``, ``steps=``), and the guidance wrapper. No sampling loop lives here.

Context handling: the last ``context_length`` values are used; a shorter series is padded on
the left and the padding masked, as is every NaN; the window is mean-scaled by the observed
context (any level, any unit). The network is a convolution over time, so any horizon works:
the window is ``context_length + horizon`` long.

Example:
    >>> import numpy as np
    >>> from pydiff.domains.timeseries import TSDiff
    >>> model = TSDiff.from_pretrained()
    >>> y = 10 + np.sin(np.arange(200) * 2 * np.pi / 24)
    >>> model.forecast(y, horizon=24, num_samples=8, steps=4).shape
    (8, 24)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import pydiff
from pydiff.errors import InputError
from pydiff.files import atomic_output_dir
from pydiff.guidance import SelfGuidance, pinball_energy, refine
from pydiff.pretrained import from_pretrained, save_pretrained

from .data import mean_scale
from .model import TSDiffNet, make_denoiser

Tensor = torch.Tensor
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
CONFIG_NAME = "timeseries.json"
GUIDANCES = ("quantile", "mse")
MIN_OBSERVATIONS = 8
# defaults of the shipped sampler; a checkpoint may override them in its "sampling" entry
DEFAULT_SAMPLING: dict[str, Any] = {"solver": "ddpm", "steps": 20,
                                    "scale": {"quantile": 8.0, "mse": 8.0}}
# TSDiff's refinement (their configs: 20 Langevin steps of 0.1, noise 0.1, the prior's loss at
# step 20 of 100 of their linear schedule, where alpha^2 ~ 0.8: t = 0.3 of the cosine schedule)
DEFAULT_REFINEMENT: dict[str, Any] = {"steps": 20, "step_size": 0.1, "noise_scale": 0.1,
                                      "level": 0.3, "scale": 1.0}


def check_context(values: Any, name: str = "context") -> np.ndarray:
    """A 1-D float64 array of a series' history; bad input raises :class:`InputError`.

    NaN marks a missing value; at least :data:`MIN_OBSERVATIONS` values must be observed.

    Example:
        >>> check_context([1, 2, float("nan")] + [3] * 8).shape
        (11,)
    """
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name} must be a sequence of numbers: {err}") from None
    if arr.ndim != 1:
        raise InputError(f"{name} must be one series (1-D), got shape {arr.shape}")
    if np.isinf(arr).any():
        raise InputError(f"{name} holds infinite values; use NaN for missing ones")
    observed = int((~np.isnan(arr)).sum())
    if observed == 0:
        raise InputError(f"{name} is all missing (NaN): nothing to forecast from")
    if observed < MIN_OBSERVATIONS:
        raise InputError(f"{name} has {observed} observed values; forecasting needs at least "
                         f"{MIN_OBSERVATIONS}")
    return arr


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


class TSDiff:
    """An unconditional window model and its self-guided forecaster (see the module docs).

    Args:
        model: a :class:`~pydiff.domains.timeseries.model.TSDiffNet` or a Denoiser around one.
        context_length: history points the model conditions on.
        prediction_length: the horizon it was trained for (any horizon works at inference).
        metadata: facts stored with the checkpoint (training recipe, sampling defaults under
            ``"sampling"``).
    """

    def __init__(self, model: torch.nn.Module | pydiff.Denoiser, context_length: int,
                 prediction_length: int, metadata: dict[str, Any] | None = None):
        self.model = model if isinstance(model, pydiff.Denoiser) else make_denoiser(model)
        self.model.net.eval()
        self.context_length = _positive(context_length, "context_length")
        self.prediction_length = _positive(prediction_length, "prediction_length")
        self.metadata = dict(metadata or {})

    @property
    def sampling(self) -> dict[str, Any]:
        """The default solver, steps and guidance scales (the checkpoint's, else the module's)."""
        return {**DEFAULT_SAMPLING, **self.metadata.get("sampling", {})}

    # -- checkpoints -----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path | None = None) -> TSDiff:
        """Load a folder written by :meth:`save_pretrained` (default: the shipped model)."""
        path = Path(path) if path is not None else PRETRAINED_DIR
        cfg_file = path / CONFIG_NAME
        if not cfg_file.is_file():
            raise InputError(f"{str(path)!r} is not a TSDiff checkpoint: no {CONFIG_NAME}")
        try:
            cfg = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"{str(cfg_file)!r} is not valid JSON: {err}") from None
        return cls(from_pretrained(path / "model"), cfg["context_length"],
                   cfg["prediction_length"], cfg.get("metadata"))

    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``model/`` (a pydiff checkpoint) and ``timeseries.json`` atomically."""
        path = Path(path)
        cfg = {"context_length": self.context_length,
               "prediction_length": self.prediction_length, "metadata": self.metadata}
        with atomic_output_dir(path, "checkpoint folder") as tmp:
            save_pretrained(self.model, tmp / "model")
            (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2))
        return path

    def solver_and_steps(self, solver: str | None, steps: int | None) -> tuple[str, int]:
        """The checked solver name and step count (``None``: the checkpoint's default)."""
        defaults = self.sampling
        solver = defaults["solver"] if solver is None else solver
        if solver not in pydiff.available_solvers():
            raise InputError(f"solver {solver!r} is not a pydiff solver; expected one of "
                             f"{pydiff.available_solvers()}")
        return solver, defaults["steps"] if steps is None else _positive(steps, "steps")

    # -- forecasting -----------------------------------------------------------------------
    def windows(self, contexts: Sequence[np.ndarray], horizon: int
                ) -> tuple[Tensor, Tensor, np.ndarray]:
        """Scaled observations ``[S, 1, C + H]`` (0 where unknown), their mask, and the scales
        ``[S]`` of checked contexts (the last ``context_length`` values, left-padded)."""
        c = self.context_length
        rows = np.full((len(contexts), c), np.nan)
        for i, ctx in enumerate(contexts):
            tail = ctx[-c:]
            rows[i, c - len(tail):] = tail
        scale = mean_scale(rows)
        scaled = rows / scale[:, None]
        observed = np.zeros((len(contexts), 1, c + horizon), np.float32)
        mask = np.zeros_like(observed)
        observed[:, 0, :c] = np.nan_to_num(scaled)
        mask[:, 0, :c] = ~np.isnan(scaled)
        return torch.from_numpy(observed), torch.from_numpy(mask), scale

    @torch.no_grad()
    def forecast_many(self, contexts: Sequence[Any], horizon: int | None = None,
                      num_samples: int = 100, *, guidance: str = "quantile",
                      scale: float | None = None, solver: str | None = None,
                      steps: int | None = None, seed: int = 0, batch_series: int = 8,
                      **solver_options: Any) -> list[np.ndarray]:
        """Sample paths ``[num_samples, horizon]`` for each context (see :meth:`forecast`)."""
        horizon = self.prediction_length if horizon is None else _positive(horizon, "horizon")
        n = _positive(num_samples, "num_samples")
        if guidance not in GUIDANCES:
            raise InputError(f"guidance must be one of {GUIDANCES}, got {guidance!r}")
        defaults = self.sampling
        solver, steps = self.solver_and_steps(solver, steps)
        s = float(defaults["scale"][guidance] if scale is None else scale)
        if not np.isfinite(s) or s < 0:
            raise InputError(f"scale must be a finite number >= 0, got {scale!r}")
        checked = [check_context(ctx, f"contexts[{i}]") for i, ctx in enumerate(contexts)]
        generator = torch.Generator().manual_seed(int(seed))
        out: list[np.ndarray] = []
        for first in range(0, len(checked), max(1, int(batch_series))):
            chunk = checked[first:first + max(1, int(batch_series))]
            observed, mask, scales = self.windows(chunk, horizon)
            observed = observed.repeat_interleave(n, 0)
            mask = mask.repeat_interleave(n, 0)
            guided = SelfGuidance(self.model, observed, mask, loss=guidance, scale=s,
                                  quantiles=n if guidance == "quantile" else None)
            x = pydiff.prior(self.model.schedule, observed.shape, generator=generator)
            x = pydiff.sample(guided, x, solver, steps, generator=generator, **solver_options)
            paths = x[:, 0, self.context_length:].double().numpy().reshape(len(chunk), n, horizon)
            out += [p * sc for p, sc in zip(paths, scales)]
        return out

    def forecast(self, context: Any, horizon: int | None = None, num_samples: int = 100,
                 **options: Any) -> np.ndarray:
        """Sample paths ``[num_samples, horizon]`` that continue ``context`` (1-D, NaN missing).

        Args:
            context: the history (at least 8 observed values; the last ``context_length``
                are used).
            horizon: steps ahead (default the model's ``prediction_length``).
            num_samples: sample paths.
            guidance: ``"quantile"`` (TSDiff-Q) or ``"mse"`` (TSDiff-MS).
            scale: guidance scale (default the checkpoint's).
            solver, steps: any core solver and its steps (default the checkpoint's).
            seed: the seed of the prior and of stochastic solvers.
        """
        return self.forecast_many([context], horizon, num_samples, **options)[0]

    def refine_many(self, contexts: Sequence[Any], initial: Sequence[Any], *,
                    num_samples: int | None = None, guidance: str = "quantile",
                    scale: float | None = None, steps: int | None = None,
                    step_size: float | None = None, noise_scale: float | None = None,
                    level: float | None = None, seed: int = 0) -> list[np.ndarray]:
        """Refine another forecaster's sample paths (TSDiff's energy-based refinement).

        Each context's window is its (scaled) history followed by the initial paths
        ``initial[i]`` ``[k, H]``, sorted per time step so that path ``j`` of ``n`` is a quantile
        path, as in TSDiff (``k != n``: the ``(j + 1/2) / n`` quantiles of the ``k`` paths; a
        point forecast, ``k = 1``, is repeated). Then
        :func:`pydiff.guidance.refine` runs Langevin dynamics on the model's denoising energy at
        level ``level`` plus ``scale`` times the observation energy: ``"quantile"``, the
        pinball loss at path ``j``'s level against the history and the initial forecast;
        ``"mse"``, the squared error to the history. Returns paths ``[n, H]`` per context
        (``n`` = ``num_samples``, default ``k``).
        """
        if guidance not in GUIDANCES:
            raise InputError(f"guidance must be one of {GUIDANCES}, got {guidance!r}")
        if len(initial) != len(contexts):
            raise InputError(f"initial has {len(initial)} forecasts for {len(contexts)} "
                             "contexts")
        opts = {**DEFAULT_REFINEMENT, **{k: v for k, v in dict(
            scale=scale, steps=steps, step_size=step_size, noise_scale=noise_scale,
            level=level).items() if v is not None}}
        if not 0 < float(opts["level"]) < 1:
            raise InputError(f"level must lie in (0, 1), got {opts['level']!r}")
        checked = [check_context(c, f"contexts[{i}]") for i, c in enumerate(contexts)]
        paths = []
        for i, p in enumerate(initial):
            arr = np.asarray(p, dtype=np.float64)
            arr = arr[None] if arr.ndim == 1 else arr
            if arr.ndim != 2 or arr.shape[1] < 1 or not np.isfinite(arr).all():
                raise InputError(f"initial[{i}] must be finite sample paths [k, horizon], got "
                                 f"shape {arr.shape}")
            paths.append(arr)
        horizon = paths[0].shape[1] if paths else 1
        if any(p.shape[1] != horizon for p in paths):
            raise InputError("initial forecasts must share one horizon")
        n = _positive(num_samples or max(p.shape[0] for p in paths), "num_samples")
        generator = torch.Generator().manual_seed(int(seed))
        observed, mask, scales = self.windows(checked, horizon)
        c = self.context_length
        for i, p in enumerate(paths):  # n quantile paths per series (a point forecast repeated)
            pick = (np.sort(p, 0) if p.shape[0] == n else
                    np.quantile(p, (np.arange(n) + 0.5) / n, axis=0))
            paths[i] = pick / scales[i]
        start = observed.repeat_interleave(n, 0)
        start[:, 0, c:] = torch.from_numpy(np.concatenate(paths)).float()
        mask = mask.repeat_interleave(n, 0)
        if guidance == "quantile":
            levels = (torch.arange(1, n + 1, dtype=torch.float64) / (n + 1)).repeat(len(checked))
            energy = pinball_energy(start.clone(), levels)  # history and initial forecast
        else:
            target = start.clone()

            def energy(x: Tensor) -> Tensor:
                return (mask * (x - target) ** 2).flatten(1).sum(1)

        x = refine(self.model, start, energy, steps=int(opts["steps"]),
                   step_size=float(opts["step_size"]), noise_scale=float(opts["noise_scale"]),
                   t=float(opts["level"]), scale=float(opts["scale"]), generator=generator)
        out = x[:, 0, c:].double().numpy().reshape(len(checked), n, horizon)
        return [o * sc for o, sc in zip(out, scales)]

    @torch.no_grad()
    def sample(self, num_samples: int, length: int | None = None, *, solver: str | None = None,
               steps: int | None = None, seed: int = 0) -> np.ndarray:
        """Unconditional mean-scaled windows ``[num_samples, length]`` (the learned prior)."""
        length = self.context_length + self.prediction_length if length is None else length
        defaults = self.sampling
        generator = torch.Generator().manual_seed(int(seed))
        x = pydiff.prior(self.model.schedule, (_positive(num_samples, "num_samples"), 1,
                                               _positive(length, "length")),
                         generator=generator)
        x = pydiff.sample(self.model, x, solver or defaults["solver"],
                          steps or defaults["steps"], generator=generator)
        return x[:, 0].double().numpy()

    def __repr__(self) -> str:
        net = self.model.net
        return (f"TSDiff(context_length={self.context_length}, prediction_length="
                f"{self.prediction_length}, net={type(net).__name__}({net.config}))")


def new_model(context_length: int, prediction_length: int, **net_kwargs: Any) -> TSDiff:
    """An untrained :class:`TSDiff` with a :class:`TSDiffNet` of ``net_kwargs``."""
    return TSDiff(TSDiffNet(**net_kwargs), context_length, prediction_length)


__all__ = ["TSDiff", "GUIDANCES", "DEFAULT_REFINEMENT", "MIN_OBSERVATIONS", "check_context",
           "new_model", "PRETRAINED_DIR"]
