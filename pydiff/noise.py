"""Randomness only through ``torch.Generator``: one generator, or a list with one per sample.

With a list, sample ``b`` draws from ``generators[b]`` only, so a sample's result does not depend
on what else is in the batch.

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

from .tree import State

Generators = Union[torch.Generator, Sequence[torch.Generator], None]  # noqa: UP007


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
        raise ValueError(f"generator is a list of {len(gens)} generators but the batch size is "
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
        raise ValueError(f"generator is a list of {len(list(generator))} generators but the "
                         f"batch size is {batch}: give one generator per sample")


__all__ = ["randn", "randn_like", "check_generator"]
