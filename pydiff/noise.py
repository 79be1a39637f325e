"""Randomness only through ``torch.Generator``, and the forward process's noising.

With a list of generators, sample ``b`` draws from ``generators[b]`` only, so a sample's result
does not depend on what else is in the batch.

:func:`add_noise` brings data to a noise level, ``x_t = alpha(t) x0 + sigma(t) z``, optionally
only inside a known region (inpainting, planning with known states); :func:`noised` is the same
with the coefficients given (post-step hooks know ``alpha`` and ``sigma``, not the schedule).
Training losses, :func:`pydiff.prior`, the inpainting hook and the analytic harness all noise
through these two, in one fused :func:`pydiff.ops.lincomb` pass.

Example:
    >>> import torch, pydiff
    >>> gs = [torch.Generator().manual_seed(s) for s in (1, 2)]
    >>> z = pydiff.noise.randn((2, 3), gs)
    >>> torch.equal(z[1], torch.randn(3, generator=torch.Generator().manual_seed(2)))
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch

from . import ops
from .errors import InputError
from .schedules import F64, Schedule, as_time
from .tree import State, per_sample

Generators = Union[torch.Generator, Sequence[torch.Generator], None]  # noqa: UP007
Tensor = torch.Tensor


def randn(
    shape: Sequence[int],
    generator: Generators = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise of ``shape`` drawn from ``generator`` (or a list, one per sample)."""
    shape = tuple(shape)
    if generator is None or isinstance(generator, torch.Generator):
        gdev = generator.device if generator is not None else device
        z = torch.randn(shape, generator=generator, device=gdev, dtype=dtype)
        return z.to(device) if device is not None else z
    gens = list(generator)
    if not shape or len(gens) != shape[0]:
        raise InputError(f"generator is a list of {len(gens)} generators but the batch size is "
                         f"{shape[0] if shape else 'undefined'}: give one generator per sample")
    zs = [torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in gens]
    z = torch.stack(zs)
    return z.to(device) if device is not None else z


def randn_like(x: State, generator: Generators = None) -> State:
    """Noise with the structure, shape, dtype and device of the state ``x``."""
    if isinstance(x, dict):
        # one draw per leaf, in key order, so dict states stay reproducible
        return {k: randn(v.shape, generator, device=v.device, dtype=v.dtype) for k, v in x.items()}
    return randn(x.shape, generator, device=x.device, dtype=x.dtype)


def check_generator(generator: Generators, batch: int) -> None:
    """Fail early on a generator list of the wrong length."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if len(list(generator)) != batch:
        raise InputError(f"generator is a list of {len(list(generator))} generators but the "
                         f"batch size is {batch}: give one generator per sample")


def add_noise(schedule: Schedule, x0: State, t: float | Tensor, noise: State | None = None, *,
              generator: Generators = None, mask: State | None = None,
              x: State | None = None) -> State:
    """``x0`` brought to the noise level ``t``: ``alpha(t) x0 + sigma(t) z``.

    Args:
        schedule: the forward process (its coefficients are computed in float64).
        x0: the data (a tensor or a dict state). For a mean-reverting schedule pass it in the
            shifted coordinate ``x0 - y``, where the process has these marginals.
        t: scalar, ``[B]`` or a tensor broadcastable to the state (per-position levels).
        noise: the standard normal ``z`` (same structure as ``x0``); drawn from ``generator``
            when None.
        mask, x: noise only the known region: ``mask`` (1 = known, 0 = not; broadcastable to
            the state) and the state ``x`` to keep where ``mask`` is 0, giving
            ``mask * (alpha x0 + sigma z) + (1 - mask) * x`` (RePaint's replacement; a planner's
            known start and goal states at the start level).

    Example:
        >>> import torch, pydiff
        >>> sched = pydiff.VPSchedule()
        >>> x0, z = torch.ones(2, 3), torch.zeros(2, 3)
        >>> torch.allclose(pydiff.add_noise(sched, x0, 0.5, z), sched.alpha(0.5).float() * x0)
        True
        >>> x = torch.full((2, 3), 7.0)
        >>> mask = torch.tensor([1.0, 0.0, 0.0])  # the first feature is known
        >>> pydiff.add_noise(sched, x0, 0.5, z, mask=mask, x=x)[0, 1:].tolist()
        [7.0, 7.0]
    """
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a pydiff Schedule, got {type(schedule).__name__}")
    ref = x0[next(iter(x0))] if isinstance(x0, dict) else x0
    tt = as_time(t, ref.device)
    if noise is None:
        noise = randn_like(x0, generator)
    return noised(x0, schedule.alpha(tt), schedule.sigma(tt), noise, mask=mask, x=x)


def noised(x0: State, alpha: float | Tensor, sigma: float | Tensor, noise: State | None = None,
           *, mask: State | None = None, x: State | None = None) -> State:
    """``alpha x0 + sigma noise`` with given coefficients (see :func:`add_noise`).

    ``alpha`` and ``sigma`` are numbers or (float64) tensors: 0-dim, ``[B]`` or broadcastable to
    the state. ``noise=None`` leaves the noise term out (``alpha x0``: a known region pasted at
    the last step). ``mask`` and ``x`` as in :func:`add_noise`. The result has ``x``'s dtype
    with a mask, else ``x0``'s.

    Example:
        >>> import torch, pydiff
        >>> pydiff.noise.noised(torch.ones(2), 0.5, 2.0, torch.ones(2)).tolist()
        [2.5, 2.5]
    """
    if (mask is None) != (x is None):
        raise InputError("mask and x go together: mask selects where the noised x0 replaces x; "
                         f"got mask={'None' if mask is None else 'a tensor'} and "
                         f"x={'None' if x is None else 'a state'}")

    def coefficient(c: float | Tensor, like: Tensor) -> Tensor:
        return per_sample(torch.as_tensor(c, dtype=F64, device=like.device), like)

    def one(u: Tensor, z: Tensor | None, m: Tensor | None, keep: Tensor | None) -> Tensor:
        terms, coeffs = [u], [alpha]
        if z is not None:
            terms.append(z)
            coeffs.append(sigma)
        if m is None:
            return ops.lincomb(terms, coeffs)
        m = m.to(device=keep.device, dtype=F64)
        coeffs = [coefficient(c, keep) * m for c in coeffs]
        return ops.lincomb([keep, *terms], [1 - m, *coeffs])

    if not isinstance(x0, dict):
        return one(x0, noise, mask, x)
    return {k: one(x0[k], None if noise is None else noise[k],
                   None if mask is None else (mask[k] if isinstance(mask, dict) else mask),
                   None if x is None else x[k]) for k in x0}


__all__ = ["randn", "randn_like", "check_generator", "add_noise", "noised"]
