"""The conditional (CSDI-style) model: observed values and a mask in, the missing values out.

CSDI (Tashiro et al. 2021) trains a diffusion model of the *missing* part of a window given its
observed part. Here the network is :class:`~pydiff.domains.timeseries.model.CSDINet` (the
TSDiff trunk with the observed values and the mask as extra inputs) wrapped in the same
:class:`pydiff.Denoiser`; the conditioning travels through the core's model protocol
(``model.bind(observed=..., cond_mask=...)``), and sampling is ``pydiff.sample`` with any core
solver plus the core's :class:`pydiff.hooks.InpaintReplace` hook, which keeps the known
positions at their noised observed values (as in training) and pastes them exactly at the end.

Training (:class:`ConditionalLoss`, run by :func:`pydiff.domains.timeseries.train.train` with
``TrainConfig(kind="csdi")`` on :class:`pydiff.training.Trainer`): every window draws one of
three conditioning masks over its observed points:

- ``random``: each observed point is hidden with a probability drawn uniformly in [0.1, 0.9];
- ``block``: one to three contiguous gaps of 2 to ``L / 4`` points;
- ``forecast``: the last ``horizon`` points hidden (the future);

the window is standardized by its *conditioning* values (their mean and standard deviation:
what inference knows; :func:`standardization`), and the core's denoising loss counts only the
hidden observed points.

Residual models (``CSDINet(residual=True)``, ``TrainConfig(residual=True)``, the default
recipe): the diffusion runs over the residual ``(x - interp) / step`` of the window over the
linear interpolation ``interp`` of its conditioning values (held flat before the first and after
the last; :func:`interpolate`), ``step`` the mean absolute change per time step between
consecutive conditioning values (at least a tenth of their standard deviation;
:func:`step_scale`), and the network sees the standardized interpolation at every position. The
model starts from what interpolation gives and learns what it misses: on a smooth, trending
series (GDP in the thousands) the residual of a gap is a few per mille of the window's spread
after standardization alone, below what the sampler's last noise level resolves, but of order
one in units of the series' own step. :func:`frame` builds both kinds of coordinates.

:class:`CSDI` imputes the NaN of whole series (windows of the trained length cover the series;
each is standardized by its own observed values) and forecasts (the future is a gap at the end).

Example:
    >>> import numpy as np
    >>> from pydiff.domains.timeseries.conditional import CSDI
    >>> from pydiff.domains.timeseries.train import TrainConfig, train
    >>> from pydiff.domains.timeseries.data import synthetic_series
    >>> series = [s.to_numpy() for s in synthetic_series(2).values()]
    >>> model = train(series, TrainConfig(kind="csdi", context=24, horizon=8, steps=2,
    ...                                   channels=8, blocks=2, batch_size=4, progress=False))
    >>> y = series[0][:60].copy(); y[20:25] = np.nan
    >>> model.impute(y, num_samples=3, steps=2).shape
    (3, 60)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import pydiff
from pydiff.errors import InputError
from pydiff.hooks import InpaintReplace
from pydiff.training import diffusion_loss

from .data import SCALE_FLOOR, interpolate, mean_scale
from .forecaster import TSDiff, _positive, check_context
from .model import CSDINet

Tensor = torch.Tensor
MASK_KINDS = ("random", "block", "forecast")
CSDI_PRETRAINED_DIR = Path(__file__).parent / "pretrained_csdi"


def _uniform(generator: torch.Generator, shape: Sequence[int] = ()) -> Tensor:
    return torch.rand(tuple(shape), generator=generator)


def conditioning_masks(observed: Tensor, horizon: int, generator: torch.Generator,
                       kinds: Sequence[str] = MASK_KINDS) -> Tensor:
    """A conditioning mask ``[B, 1, L]`` (1: given to the model) per window, a subset of
    ``observed``: each window draws one of ``kinds`` (module docs).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> m = conditioning_masks(torch.ones(4, 1, 40), 8, g, kinds=("forecast",))
        >>> m[:, 0, -8:].sum().item(), m[:, 0, :-8].mean().item()
        (0.0, 1.0)
    """
    b, _, length = observed.shape
    keep = torch.ones(b, length)
    kind = (_uniform(generator, (b,)) * len(kinds)).long()
    positions = torch.arange(length)
    for i in range(b):
        name = kinds[int(kind[i])]
        if name == "random":
            rate = 0.1 + 0.8 * _uniform(generator)
            keep[i] = (_uniform(generator, (length,)) >= rate).float()
        elif name == "block":
            for _ in range(1 + int(_uniform(generator) * 3)):
                size = 2 + int(_uniform(generator) * max(1, length // 4 - 1))
                start = int(_uniform(generator) * max(1, length - size))
                keep[i, start:start + size] = 0
        else:
            keep[i] = (positions < length - horizon).float()
    return observed * keep[:, None].to(observed)


def standardization(values: Any) -> tuple[Any, Any]:
    """``(loc, scale)`` over the last axis: the mean and standard deviation of the observed
    (non-NaN) values, the scale at least 1% of their mean ``|x|`` (a flat window keeps a
    finite scale). NumPy arrays or tensors.

    Unlike TSDiff's mean scaling, the variation of a window becomes unit-sized: a smooth
    series at a high level (GDP in the thousands) otherwise varies by a few hundredths of its
    scale, below what the sampler resolves.

    Example:
        >>> [float(v) for v in standardization(np.array([1.0, 3.0, np.nan]))]
        [2.0, 1.0]
    """
    if torch.is_tensor(values):
        loc = torch.nan_to_num(values.nanmean(-1))
        std = ((values - loc[..., None]) ** 2).nanmean(-1).sqrt().nan_to_num()
        floor = (0.01 * mean_scale(values)).clamp_min(SCALE_FLOOR)
        return loc, torch.maximum(std, floor)
    values = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(values)
    count = np.maximum(ok.sum(-1), 1)
    loc = np.where(ok, values, 0).sum(-1) / count
    std = np.sqrt((np.where(ok, values - loc[..., None], 0) ** 2).sum(-1) / count)
    return loc, np.maximum(std, np.maximum(0.01 * mean_scale(values), SCALE_FLOOR))


def step_scale(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The mean of ``|x[j] - x[i]| / (j - i)`` over consecutive known points ``i < j`` of the
    last axis, and whether a row has such a pair (the scale of the residual coordinates).

    Example:
        >>> step_scale(torch.tensor([0.0, 9.0, 2.0, 5.0]), torch.tensor([1, 0, 1, 1]))[0].item()
        2.0
    """
    length = values.shape[-1]
    known = mask.bool().expand_as(values)
    idx = torch.arange(length, device=values.device).expand_as(values)
    prev = torch.where(known, idx, -1).cummax(-1).values
    before = torch.cat([torch.full_like(prev[..., :1], -1), prev[..., :-1]], -1)
    pair = known & (before >= 0)
    change = (values - values.gather(-1, before.clamp_min(0))).abs() / (idx - before)
    total = torch.where(pair, change, torch.zeros_like(change)).sum(-1)
    return total / pair.sum(-1).clamp_min(1), pair.any(-1)


def frame(values: Tensor, cond_mask: Tensor, residual: bool,
          standard: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The diffusion coordinates of windows ``values [..., L]`` given their conditioning mask:
    ``(offset, scale, observed)`` with state ``(values - offset) / scale`` and ``observed`` the
    network's conditioning input.

    Plain: offset and scale are :func:`standardization` of the conditioning values (``[..., 1]``),
    ``observed`` the standardized values (0 where not conditioning). ``residual``: the offset is
    the :func:`interpolate` of the conditioning values, the scale their :func:`step_scale` (at
    least a tenth of their standard deviation; the standard deviation without a pair), and
    ``observed`` the standardized interpolation. ``standard = (loc, std)`` replaces the
    standardization.

    Example:
        >>> v = torch.tensor([[0.0, 1.0, 2.0, 3.0]]); m = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
        >>> offset, scale, _ = frame(v, m, residual=True)
        >>> ((v - offset) / scale).tolist()
        [[0.0, 0.0, 0.0, 0.0]]
    """
    known = cond_mask.bool().expand_as(values)
    if standard is None:
        loc, std = standardization(torch.where(known, values, torch.nan))
    else:
        loc, std = standard
    loc, std = loc[..., None].to(values), std[..., None].to(values)
    if not residual:
        return loc, std, torch.where(known, (values - loc) / std, torch.zeros_like(values))
    interp = interpolate(values, known)
    interp = torch.where(known.any(-1, keepdim=True), interp, loc.expand_as(interp))
    step, has_pair = step_scale(values, known)
    scale = torch.where(has_pair[..., None], torch.maximum(step[..., None], 0.1 * std), std)
    return interp, scale, (interp - loc) / std


def is_residual(model: Any) -> bool:
    """Whether a conditional model (net or Denoiser) is a residual one (module docs)."""
    return bool(getattr(getattr(model, "net", model), "residual", False))


class ConditionalLoss:
    """``loss_fn`` of the Trainer for the conditional model (module docs)."""

    def __init__(self, horizon: int, kinds: Sequence[str] = MASK_KINDS):
        self.horizon, self.kinds = int(horizon), tuple(kinds)

    def __call__(self, model: Any, batch: dict[str, Tensor],
                 generator: torch.Generator) -> Tensor:
        observed = batch["mask"]
        cond_mask = conditioning_masks(observed, self.horizon, generator, self.kinds)
        # coordinates from the conditioning values only: inference knows only those
        offset, scale, cond_input = frame(batch["values"], cond_mask, is_residual(model))
        values = (batch["values"] - offset) / scale
        target = observed * (1 - cond_mask)
        return diffusion_loss(model, values, generator=generator, mask=target,
                              cond={"observed": cond_input, "cond_mask": cond_mask}).loss


class CSDI(TSDiff):
    """The conditional model: :meth:`impute` gaps, :meth:`forecast` by imputing the future.

    The checkpoint format is :class:`TSDiff`'s; the window the model was trained on is
    ``context_length + prediction_length`` points.
    """

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None) -> CSDI:
        """Load a conditional checkpoint (default: the shipped one)."""
        model = super().from_pretrained(CSDI_PRETRAINED_DIR if path is None else path)
        if not isinstance(model.model.net, CSDINet):
            raise InputError(f"{str(path)!r} holds an unconditional TSDiff model, not a "
                             "conditional one (train it with --kind csdi)")
        return model

    @property
    def window_length(self) -> int:
        return self.context_length + self.prediction_length

    @torch.no_grad()
    def impute_windows(self, values: np.ndarray, num_samples: int, *, solver: str | None = None,
                       steps: int | None = None, seed: int = 0,
                       standard: tuple[np.ndarray, np.ndarray] | None = None,
                       **solver_options: Any) -> np.ndarray:
        """Samples ``[W, num_samples, L]`` of windows ``values [W, L]`` (NaN: to fill), each
        standardized by its observed values (or by ``standard = (loc [W], scale [W])``)."""
        n = _positive(num_samples, "num_samples")
        solver, steps = self.solver_and_steps(solver, steps)
        raw = torch.from_numpy(np.asarray(values, dtype=np.float64))
        known = ~raw.isnan()
        offset, scale, cond_input = frame(
            raw, known, is_residual(self.model),
            None if standard is None else tuple(torch.as_tensor(v) for v in standard))
        scaled = torch.nan_to_num((raw - offset) / scale)

        def rows(a: Tensor) -> Tensor:  # [W, L] -> [W * n, 1, L]
            return a[:, None].float().repeat_interleave(n, 0)

        obs, mask = rows(scaled), rows(known)
        generator = torch.Generator().manual_seed(int(seed))
        bound = self.model.bind(observed=rows(cond_input), cond_mask=mask)
        x = pydiff.prior(self.model.schedule, obs.shape, generator=generator)
        x = pydiff.sample(bound, x, solver, steps, generator=generator,
                          hooks=[InpaintReplace(obs, mask, noise="fresh")], **solver_options)
        out = x[:, 0].double().reshape(len(values), n, -1)
        return (out * scale[:, None] + offset[:, None]).numpy()

    def impute(self, series: Any, num_samples: int = 100, **options: Any) -> np.ndarray:
        """Samples ``[num_samples, len(series)]`` of a series with its NaN filled in (the
        observed values are kept exactly).

        Windows of :attr:`window_length` cover the series (the last one ends at its end); only
        windows with a gap are sampled. A series shorter than a window is one shorter window.
        """
        values = check_context(series, "series")
        n = _positive(num_samples, "num_samples")
        out = np.repeat(values[None], n, 0)
        gaps = np.isnan(values)
        if not gaps.any():
            return out
        w = min(self.window_length, len(values))
        starts = sorted({*range(0, len(values) - w + 1, w), len(values) - w})
        starts = [s for s in starts if gaps[s:s + w].any()]
        windows = np.stack([values[s:s + w] for s in starts])
        # a window with (almost) nothing observed takes the series' level
        few = (~np.isnan(windows)).sum(1) < 2
        own, whole = standardization(windows), standardization(values)
        standard = tuple(np.where(few, w, o) for o, w in zip(own, whole))
        samples = self.impute_windows(windows, n, standard=standard, **options)
        for s, paths in zip(starts, samples):
            fill = gaps[s:s + w]
            out[:, s:s + w][:, fill] = paths[:, fill]
        return out

    def forecast_many(self, contexts: Sequence[Any], horizon: int | None = None,
                      num_samples: int = 100, *, guidance: str | None = None,
                      scale: float | None = None, batch_series: int = 8,
                      **options: Any) -> list[np.ndarray]:
        """Sample paths ``[num_samples, horizon]`` per context: the future as a gap after the
        last ``context_length`` values (``guidance``/``scale`` do not apply)."""
        horizon = self.prediction_length if horizon is None else _positive(horizon, "horizon")
        checked = [check_context(c, f"contexts[{i}]") for i, c in enumerate(contexts)]
        c = self.context_length
        rows = np.full((len(checked), c + horizon), np.nan)
        for i, ctx in enumerate(checked):
            tail = ctx[-c:]
            rows[i, c - len(tail):c] = tail
        samples = self.impute_windows(rows, num_samples, **options)
        return [s[:, c:] for s in samples]


__all__ = ["CSDI", "ConditionalLoss", "standardization", "conditioning_masks", "interpolate",
           "step_scale", "frame", "is_residual", "MASK_KINDS", "CSDI_PRETRAINED_DIR"]
