"""Diffusion training losses, computed through the :class:`pydiff.Denoiser`.

The loss noises clean data with the Denoiser's own schedule, asks the Denoiser for its
prediction (``predict`` -> ``(x0_hat, eps_hat)``, the same call the solvers make) and compares it
with the truth in a *target* space: ``"eps"``, ``"x0"``, ``"v"``, ``"score"`` or ``"velocity"``
(default: what the network predicts, so the loss is the plain MSE on the network output). The
same network, schedule, parameterization and preconditioning therefore train and sample.

- EDM preconditioning (``precond="edm"``) trains on x0 with EDM's weighting by default, which
  is the unit-weight MSE on the raw network output ``F``.
- Mean-reverting schedules (SGMSE+): pass the observation ``y`` as conditioning; the data is
  noised in the shifted coordinate, ``x_t - y = alpha (x0 - y) + sigma z``.
- Per-position times: a :class:`pydiff.training.PerPosition` sampler (or an explicit ``t``)
  gives ``t`` of shape ``[B, 1, L]``; weights then vary per position too.
- Dict states: every leaf is noised independently; the per-sample loss sums the leaves'
  means (times ``leaf_weights``).

Example:
    >>> import torch, pydiff
    >>> from pydiff.training import diffusion_loss
    >>> net = torch.nn.Linear(2, 2)
    >>> model = pydiff.Denoiser(lambda x, t: net(x), pydiff.FlowSchedule(), prediction="velocity")
    >>> out = diffusion_loss(model, torch.randn(8, 2), generator=torch.Generator().manual_seed(0))
    >>> out.per_sample.shape, out.loss.dim()
    (torch.Size([8]), 0)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from ..denoiser import Denoiser
from ..noise import add_noise, randn_like
from ..schedules import Schedule, as_time
from ..tree import State, batch_size, leaves, per_sample, tree_map
from .immiscible import immiscible_noise
from .time_samplers import TimeSampler, default_time_sampler, get_time_sampler
from .weighting import TARGETS, WeightFn, get_weighting

Tensor = torch.Tensor


class LossOutput(NamedTuple):
    """``loss`` (scalar mean), ``per_sample`` (``[B]``) and the sampled times ``t``."""

    loss: Tensor
    per_sample: Tensor
    t: Tensor


def targets(schedule: Schedule, x0: State, eps: State, t: Tensor, target: str) -> State:
    """The quantity ``target`` for clean data ``x0`` and noise ``eps`` at time ``t``."""
    if target not in TARGETS:
        raise ValueError(f"unknown target={target!r}; expected one of {TARGETS}")
    a, s = schedule.alpha(t), schedule.sigma(t)
    if target == "velocity":
        da, ds = schedule.derivatives(t)

    def one(u: Tensor, e: Tensor) -> Tensor:
        def c(v: Tensor) -> Tensor:
            return per_sample(v, u).to(u.dtype)

        if target == "x0":
            return u
        if target == "eps":
            return e
        if target == "v":
            return c(a) * e - c(s) * u
        if target == "score":
            return -e / c(s)
        return c(da) * u + c(ds) * e

    return tree_map(one, x0, eps)


def diffusion_loss(
    denoiser: Denoiser,
    x0: State,
    *,
    generator: torch.Generator | None = None,
    t_sampler: TimeSampler | str | None = None,
    weighting: str | WeightFn | None = None,
    target: str | None = None,
    cond: Mapping[str, Any] | None = None,
    t: Tensor | float | None = None,
    noise: State | None = None,
    mask: State | None = None,
    leaf_weights: Mapping[str, float] | None = None,
    min_snr_gamma: float = 5.0,
    input_perturbation: float | tuple[float, float] = 0.0,
    immiscible: bool = False,
) -> LossOutput:
    """Denoising loss of ``denoiser`` on clean data ``x0`` (see the module docstring).

    Args:
        denoiser: the model (its ``net`` is what trains).
        x0: clean data, a batch-first tensor or dict of tensors (unshifted, also for
            mean-reverting schedules).
        generator: draws ``t`` (first) and the noise.
        t_sampler: a :class:`TimeSampler` or its name; default :func:`default_time_sampler`.
        weighting: see :mod:`pydiff.training.weighting`; default ``"edm"`` with EDM
            preconditioning, ``"sigma2"`` for score targets, else ``"none"``.
        target: ``"eps" | "x0" | "v" | "score" | "velocity"``; default the network's prediction.
        cond: conditioning passed to the network (``y`` for mean-reverting schedules).
        t: explicit times (scalar, ``[B]`` or broadcastable to ``x0``) instead of sampling.
        noise: explicit noise instead of drawing it (same structure as ``x0``).
        mask: 1 where the loss counts (e.g. not on padding); broadcastable to each leaf.
            Fractional values weight elements (a weighted mean per sample); weights that
            depend only on what the network sees leave the optimal denoiser unchanged.
        leaf_weights: per-key weights of dict states (default 1).
        min_snr_gamma: gamma of ``weighting="min_snr"``.
        input_perturbation: gamma of input perturbation (Ning et al. 2023, "Input Perturbation
            Reduces Exposure Bias in Diffusion Models"): the network sees
            ``alpha x0 + sigma (eps + gamma xi)`` while the targets keep ``eps``, so it learns
            to remove somewhat more noise than the level claims, as sampling trajectories
            carry (discretization and network errors). 0 (default) is the plain loss;
            the paper uses 0.1. A pair ``(low, high)`` draws each sample's gamma uniformly
            from that range (after the noise), so the network sees a range of excess noise
            and must judge it from its input.
        immiscible: assign the drawn noise to the batch's samples by a linear assignment that
            minimises the data-noise distances (Immiscible Diffusion, Li et al. 2024; see
            :func:`pydiff.training.immiscible.immiscible_noise`). Ignored with explicit ``noise``.
    """
    if not isinstance(denoiser, Denoiser):
        raise TypeError(f"denoiser must be a pydiff.Denoiser, got {type(denoiser).__name__}")
    schedule = denoiser.schedule
    cond = dict(cond or {})
    ref = leaves(x0)[0]
    bsz = batch_size(x0)
    target = target or denoiser.prediction
    if target not in TARGETS:
        raise ValueError(f"unknown target={target!r}; expected one of {TARGETS}")
    if weighting is None:
        weighting = ("edm" if denoiser.precond == "edm" else
                     "sigma2" if target == "score" else "none")
    weight_fn = get_weighting(weighting, sigma_data=denoiser.sigma_data, gamma=min_snr_gamma)

    if t is None:
        sampler = (default_time_sampler(schedule, denoiser.precond) if t_sampler is None
                   else get_time_sampler(t_sampler))
        t = sampler(schedule, ref.shape, generator, device=ref.device)
    else:
        t = as_time(t, ref.device)
        if t.dim() == 0:
            t = t.expand(bsz)
    tree_map(lambda leaf: per_sample(t, leaf), x0)  # validates t's shape against every leaf
    noise_given = noise is not None
    if noise is None:
        noise = randn_like(x0, generator)

    shift = None
    if schedule.mean_reverting:
        merged = {**denoiser.cond, **cond}
        if denoiser.mean_key not in merged:
            raise ValueError(f"a mean-reverting schedule trains in the shifted coordinate x - y: "
                             f"pass cond={{'{denoiser.mean_key}': y}} (the observation)")
        shift = merged[denoiser.mean_key]
        x0 = tree_map(torch.sub, x0, shift)
    if immiscible and not noise_given:
        noise = immiscible_noise(x0, noise)

    low, high = (input_perturbation if isinstance(input_perturbation, (tuple, list))
                 else (input_perturbation, input_perturbation))
    if not 0 <= low <= high:
        raise ValueError(f"input_perturbation must be >= 0 (or a pair 0 <= low <= high), got "
                         f"{input_perturbation}")
    seen = noise
    if high > 0:
        extra = randn_like(x0, generator)
        gdev = generator.device if generator is not None else None  # draw where it lives
        gamma = (torch.full((bsz,), float(low), dtype=torch.float64) if low == high else
                 low + (high - low) * torch.rand(bsz, generator=generator, dtype=torch.float64,
                                                 device=gdev))
        gamma = gamma.to(ref.device)
        seen = tree_map(lambda z, e: z + per_sample(gamma, e).to(e.dtype) * e, noise, extra)
    x_t = add_noise(schedule, x0, t, seen)
    x0_hat, eps_hat = denoiser.predict(x_t, t, **cond)
    pred = targets(schedule, x0_hat, eps_hat, t, target)
    true = targets(schedule, x0, noise, t, target)
    weight = weight_fn(schedule, t, target)

    per_leaf = tree_map(lambda p, y: _per_sample_mse(p, y, weight), pred, true) if mask is None \
        else tree_map(lambda p, y, m: _per_sample_mse(p, y, weight, m), pred, true, mask)
    if isinstance(per_leaf, dict):
        lw = dict(leaf_weights or {})
        unknown = set(lw) - set(per_leaf)
        if unknown:
            raise ValueError(f"leaf_weights has keys {sorted(unknown)} that the state lacks "
                             f"(state keys: {sorted(per_leaf)})")
        per_sample_loss = sum(lw.get(k, 1.0) * v for k, v in per_leaf.items())
    else:
        per_sample_loss = per_leaf
    return LossOutput(per_sample_loss.mean(), per_sample_loss, t)


def _per_sample_mse(pred: Tensor, true: Tensor, weight: Tensor,
                    mask: Tensor | None = None) -> Tensor:
    # at least float32 (bfloat16 autocast outputs), float64 stays float64
    dtype = torch.promote_types(torch.promote_types(pred.dtype, true.dtype), torch.float32)
    err = (pred.to(dtype) - true.to(dtype)) ** 2 * per_sample(weight, pred).to(dtype)
    dims = tuple(range(1, err.dim()))
    if mask is None:
        return err.mean(dim=dims) if dims else err
    m = torch.broadcast_to(mask.to(err.dtype), err.shape)
    return (err * m).sum(dim=dims) / m.sum(dim=dims).clamp(min=1)


class DiffusionLoss:
    """The default ``loss_fn(model, batch, generator)`` of :class:`pydiff.training.Trainer`.

    Batches may be a state (tensor or dict of tensors: the clean data), a tuple
    ``(x0, cond_dict)``, or a dict with the data under ``data_key`` (default ``"x0"`` when
    present) and conditioning under the other keys (or only ``cond_keys``). Keyword arguments go
    to :func:`diffusion_loss`.

    Example:
        >>> import torch, pydiff
        >>> model = pydiff.Denoiser(lambda x, t: x, pydiff.VPSchedule())
        >>> loss_fn = DiffusionLoss(weighting="min_snr")
        >>> float(loss_fn(model, torch.zeros(4, 2), torch.Generator().manual_seed(0))) >= 0
        True
    """

    def __init__(self, data_key: str | None = None, cond_keys: tuple[str, ...] | None = None,
                 **loss_options: Any):
        self.data_key, self.cond_keys, self.options = data_key, cond_keys, loss_options

    def split(self, batch: Any) -> tuple[State, dict[str, Any]]:
        """``(x0, cond)`` of a batch."""
        if isinstance(batch, (tuple, list)):
            if len(batch) != 2 or not isinstance(batch[1], Mapping):
                raise ValueError("a tuple batch must be (x0, cond_dict), got a "
                                 f"{type(batch).__name__} of length {len(batch)}")
            return batch[0], dict(batch[1])
        key = self.data_key or ("x0" if isinstance(batch, Mapping) and "x0" in batch else None)
        if key is None:
            return batch, {}
        if key not in batch:
            raise KeyError(f"batch has no data_key={key!r}; keys: {sorted(batch)}")
        keys = self.cond_keys if self.cond_keys is not None else [k for k in batch if k != key]
        return batch[key], {k: batch[k] for k in keys}

    def __call__(self, model: Denoiser, batch: Any, generator: torch.Generator | None) -> Tensor:
        x0, cond = self.split(batch)
        return diffusion_loss(model, x0, generator=generator, cond=cond, **self.options).loss

    def __repr__(self) -> str:
        return f"DiffusionLoss(data_key={self.data_key!r}, options={self.options!r})"


__all__ = ["diffusion_loss", "DiffusionLoss", "LossOutput", "targets"]
