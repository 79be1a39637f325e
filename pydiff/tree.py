"""States are a tensor or a dict of tensors (positions, types, masks); helpers over both."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Union

import torch

from .errors import InputError

Tensor = torch.Tensor
State = Union[Tensor, dict[str, Tensor]]  # noqa: UP007 (a runtime alias)


def tree_map(fn: Callable[..., Any], tree: State, *rest: State) -> State:
    """Apply ``fn`` leafwise to a tensor or to matching dicts of tensors."""
    if isinstance(tree, dict):
        for other in rest:
            if not isinstance(other, dict) or other.keys() != tree.keys():
                raise InputError(f"dict states must share keys: {sorted(tree)} vs "
                                 f"{sorted(other) if isinstance(other, dict) else type(other)}")
        return {k: fn(v, *(o[k] for o in rest)) for k, v in tree.items()}
    return fn(tree, *rest)


def leaves(tree: State) -> list[Tensor]:
    """The tensors of a state, in key order for dicts."""
    return list(tree.values()) if isinstance(tree, dict) else [tree]


def batch_size(tree: State) -> int:
    """Leading (batch) dimension of a state."""
    first = leaves(tree)[0]
    if first.dim() == 0:
        raise InputError("states must be batch-first tensors with at least one dimension")
    return first.shape[0]


def per_sample(c: Tensor, like: Tensor) -> Tensor:
    """Shape a coefficient to broadcast against ``like``.

    A 0-dim coefficient stays as is; a ``[B]`` coefficient (B = batch size) becomes
    ``[B, 1, ..., 1]``; anything else must already broadcast to ``like``.
    """
    if c.dim() == 0:
        return c
    if c.dim() == 1 and like.dim() >= 1 and c.shape[0] == like.shape[0]:
        return c.reshape(-1, *([1] * (like.dim() - 1)))
    try:
        shape = torch.broadcast_shapes(c.shape, like.shape)
    except RuntimeError:
        shape = None
    if shape != like.shape:
        raise InputError(
            f"a time/coefficient of shape {tuple(c.shape)} does not broadcast to the state of "
            f"shape {tuple(like.shape)}: expected a scalar, [B]=[{like.shape[0]}], or a shape "
            f"broadcastable to the state"
        )
    return c
