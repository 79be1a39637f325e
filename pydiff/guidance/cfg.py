"""Classifier-free guidance (Ho & Salimans 2022) in one batched forward, with rescaling.

The conditional and unconditional inputs are stacked into one batch of ``2B`` and the wrapped
model runs once. With guidance scale ``w`` (per sample allowed)::

    x0 = x0_u + w (x0_c - x0_u),   eps = eps_u + w (eps_c - eps_u)

which is the score of the tilted density ``p_u^(1 - w) p_c^w`` (``w = 1``: conditional only,
``w = 0``: unconditional). Both predictions are combined with the same weights, so
``x = alpha x0 + sigma eps`` still holds (and nothing divides by ``alpha`` or ``sigma``).

Rescaled CFG (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed",
Sec. 3.4) pulls the per-sample standard deviation of the guided prediction back towards the
conditional one: ``g <- phi (std(p_c) / std(g)) g + (1 - phi) g``, applied to ``eps`` (as
diffusers' ``guidance_rescale``) or to ``x0`` (``rescale_on="x0"``); the other prediction is
recomputed from it.

Conditioning: the call's (and bound) conditioning is the conditional branch. ``uncond`` gives the
values of the unconditional branch for the keys that change (a null text embedding, a null class
label); a value with batch size 1 is broadcast. Other batch-sized tensors are shared by both
branches; non-batched values are passed unchanged. Nested dicts (SDXL's ``added_cond_kwargs``)
are handled key by key.

Example:
    >>> import torch, pydiff
    >>> from pydiff.guidance import ClassifierFreeGuidance
    >>> sched = pydiff.schedules.VPSchedule()
    >>> net = lambda x, t, label: x * 0 + label[:, None]  # eps = the label
    >>> base = pydiff.Denoiser(net, sched, prediction="eps")
    >>> cfg = ClassifierFreeGuidance(base, scale=3.0, uncond={"label": torch.zeros(1)})
    >>> cfg.eps(torch.zeros(2, 2), 0.5, label=torch.ones(2))  # 0 + 3 (1 - 0)
    tensor([[3., 3.],
            [3., 3.]])
"""

from __future__ import annotations

from typing import Any

import torch

from ..model import Model, Prediction
from ..tree import State, batch_size, per_sample, tree_map
from .base import Guided, Scale, resolve_scale

Tensor = torch.Tensor
RESCALE_ON = ("eps", "x0")


class ClassifierFreeGuidance(Guided):
    """Classifier-free guidance in one forward of batch ``2B``.

    Args:
        model: a conditional Denoiser (or wrapper) that also handles the null conditioning.
        scale: the guidance scale ``w``: a float, ``[B]`` per-sample scales, or ``scale(t)``.
        uncond: conditioning of the unconditional branch, for the keys that differ.
        rescale: ``phi`` of rescaled CFG (0 disables it; Lin et al. use 0.7).
        rescale_on: ``"eps"`` (diffusers' ``guidance_rescale``) or ``"x0"``.
    """

    def __init__(self, model: Model, scale: Scale = 1.0, uncond: dict[str, Any] | None = None,
                 rescale: float = 0.0, rescale_on: str = "eps"):
        super().__init__(model)
        if not uncond:
            raise ValueError("uncond must name the conditioning of the unconditional branch, "
                             "e.g. uncond={'context': null_embedding}")
        if not 0 <= rescale <= 1:
            raise ValueError(f"rescale must lie in [0, 1], got {rescale}")
        if rescale_on not in RESCALE_ON:
            raise ValueError(f"rescale_on must be one of {RESCALE_ON}, got {rescale_on!r}")
        self.scale, self.uncond = scale, dict(uncond)
        self.rescale, self.rescale_on = float(rescale), rescale_on

    def evaluate(self, x: State, t: float | Tensor, **cond: Any) -> Prediction:
        tt, alpha, sigma = self.coefficients(x, t)
        bsz = batch_size(x)
        if isinstance(self.scale, int | float) and self.scale == 1 and self.rescale == 0:
            return self.inner(x, tt, **cond)  # w = 1 is the conditional model: one half suffices
        full = {**self.cond, **cond}
        missing = sorted(set(self.uncond) - set(full))
        if missing:
            raise ValueError(f"uncond sets {missing}, which the conditional branch lacks; pass "
                             "them as conditioning (or bind them)")
        cond2 = {k: _pair(v, self.uncond[k] if k in self.uncond else None, bsz, k)
                 for k, v in full.items()}
        x2 = tree_map(lambda v: torch.cat([v, v]), x)
        p2 = self.model.evaluate(x2, _pair_time(tt, x, bsz), **cond2)
        x0_c, x0_u = _halves(p2.x0(), bsz)
        eps_c, eps_u = _halves(p2.eps(), bsz)

        w = resolve_scale(self.scale, tt, bsz)

        def mix(c: Tensor, u: Tensor) -> Tensor:
            wv = per_sample(w, c).to(c.dtype)
            return u + wv * (c - u)

        guided = Prediction.of(tree_map(mix, x0_c, x0_u), tree_map(mix, eps_c, eps_u))
        if self.rescale > 0:
            if self.rescale_on == "eps":
                eps = tree_map(self._rescale, guided.eps(), eps_c)
                return guided.with_eps(x, eps, alpha, sigma)
            x0 = tree_map(self._rescale, guided.x0(), x0_c)
            return guided.with_x0(x, x0, alpha, sigma)
        return guided

    def _rescale(self, guided: Tensor, conditional: Tensor) -> Tensor:
        dims = tuple(range(1, guided.dim()))
        std_c = conditional.std(dim=dims, keepdim=True)
        std_g = guided.std(dim=dims, keepdim=True).clamp_min(torch.finfo(guided.dtype).tiny)
        return self.rescale * guided * (std_c / std_g) + (1 - self.rescale) * guided

    def __repr__(self) -> str:
        return (f"ClassifierFreeGuidance({self.model!r}, scale={self.scale!r}, "
                f"uncond={sorted(self.uncond)}, rescale={self.rescale})")


def _pair(c: Any, u: Any, bsz: int, key: str) -> Any:
    """The ``2B`` conditioning for one key: ``[cond; uncond]`` (or ``[cond; cond]`` if shared)."""
    if isinstance(c, dict):
        if u is not None and not isinstance(u, dict):
            raise TypeError(f"uncond[{key!r}] must be a dict like the conditioning, "
                            f"got {type(u).__name__}")
        u = u or {}
        return {k: _pair(v, u.get(k), bsz, f"{key}.{k}") for k, v in c.items()}
    if u is None:
        if torch.is_tensor(c) and c.dim() > 0 and c.shape[0] == bsz:
            return torch.cat([c, c])
        return c  # not batched: both halves see the same value
    if not (torch.is_tensor(c) and torch.is_tensor(u)):
        raise TypeError(f"conditioning {key!r}: classifier-free guidance batches tensors; got "
                        f"{type(c).__name__} (cond) and {type(u).__name__} (uncond)")
    if c.dim() == 0 or c.shape[0] != bsz:
        raise ValueError(f"conditioning {key!r} has shape {tuple(c.shape)}; expected batch size "
                         f"{bsz} first to pair it with its unconditional value")
    u = u.to(device=c.device, dtype=c.dtype)
    try:
        u = u.expand_as(c) if u.shape != c.shape else u
    except RuntimeError:
        raise ValueError(f"uncond[{key!r}] has shape {tuple(u.shape)}, which does not broadcast "
                         f"to the conditional value's {tuple(c.shape)}") from None
    return torch.cat([c, u])


def _pair_time(t: Tensor, x: State, bsz: int) -> Tensor:
    ref = x if torch.is_tensor(x) else next(iter(x.values()))
    if t.dim() == 0:
        return t
    if (t.dim() == 1 and t.shape[0] == bsz) or (t.dim() == ref.dim() and t.shape[0] == bsz):
        return torch.cat([t, t])
    return t  # broadcast over the batch already


def _halves(v: State, bsz: int) -> tuple[State, State]:
    return tree_map(lambda u: u[:bsz], v), tree_map(lambda u: u[bsz:], v)


__all__ = ["ClassifierFreeGuidance"]
