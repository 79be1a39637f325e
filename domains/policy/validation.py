"""Guards between the world and the motors: observation checks and action clipping.

Bad input never becomes a motor command: an observation of the wrong shape or with NaN/inf
raises :class:`ObservationError` (a :class:`pydiff.InputError`, so a ``ValueError``) naming
what was received and what is expected, and every action leaves through
:class:`ActionClipper`, which clips it to the action space and counts the clipped entries.

Example:
    >>> import torch
    >>> clip = ActionClipper([-2.0], [2.0])
    >>> clip(torch.tensor([[3.0], [1.0]]))
    tensor([[2.],
            [1.]])
    >>> clip.clipped_entries, clip.clipped_actions, clip.total_actions
    (1, 1, 2)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pydiff.errors import InputError

Tensor = torch.Tensor


class ObservationError(InputError):
    """An observation that must not reach the policy (wrong shape, NaN or inf)."""


def check_observation(obs: object, obs_dim: int, name: str = "observation") -> Tensor:
    """``obs`` as a float32 tensor ``[B, obs_dim]`` (a single ``[obs_dim]`` gets ``B = 1``).

    Raises:
        ObservationError: wrong type, shape, or non-finite values (the message names the
            offending entries).
    """
    try:
        x = torch.as_tensor(np.asarray(obs) if not torch.is_tensor(obs) else obs)
    except (TypeError, ValueError) as err:
        raise ObservationError(f"{name} must be an array of {obs_dim} numbers, got "
                               f"{type(obs).__name__}: {err}") from None
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64, torch.int16)):
        raise ObservationError(f"{name} must hold real numbers, got dtype {x.dtype}")
    x = x.to(torch.float32)
    if x.dim() == 1:
        x = x.unsqueeze(0)
    if x.dim() != 2 or x.shape[-1] != obs_dim:
        raise ObservationError(f"{name} has shape {tuple(np.shape(obs))}; expected "
                               f"[{obs_dim}] or [batch, {obs_dim}]")
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        where = bad.nonzero().tolist()[:4]
        raise ObservationError(f"{name} contains NaN/inf at [batch, dim] = {where}: refusing to "
                               "compute a motor command from it")
    return x


class ActionClipper:
    """Clip actions to ``[low, high]`` per dimension and count what was clipped.

    Attributes:
        clipped_entries: action entries that were outside the bounds.
        clipped_actions: actions (rows) with at least one clipped entry.
        total_actions: actions seen.
        last_clipped_rows: bool ``[rows]`` of the latest call (which rows were clipped).
    """

    def __init__(self, low: Sequence[float] | Tensor, high: Sequence[float] | Tensor):
        self.low = torch.as_tensor(low, dtype=torch.float32).flatten()
        self.high = torch.as_tensor(high, dtype=torch.float32).flatten()
        if self.low.shape != self.high.shape or not bool((self.low <= self.high).all()):
            raise InputError(f"action bounds must have equal shapes and low <= high, got "
                             f"low={self.low.tolist()}, high={self.high.tolist()}")
        self.reset_counts()

    def reset_counts(self) -> None:
        self.clipped_entries = self.clipped_actions = self.total_actions = 0
        self.last_clipped_rows = torch.zeros(0, dtype=torch.bool)

    def __call__(self, action: Tensor) -> Tensor:
        """Clip ``action [..., action_dim]`` (NaN actions raise: they are a model failure)."""
        if action.shape[-1] != self.low.numel():
            raise InputError(f"action has shape {tuple(action.shape)}; expected last dim "
                             f"{self.low.numel()}")
        if not bool(torch.isfinite(action).all()):
            raise FloatingPointError("the policy produced a NaN/inf action; refusing to send it")
        low, high = self.low.to(action), self.high.to(action)
        outside = (action < low) | (action > high)
        self.last_clipped_rows = outside.reshape(-1, action.shape[-1]).any(-1)
        self.clipped_entries += int(outside.sum())
        self.clipped_actions += int(outside.reshape(-1, action.shape[-1]).any(-1).sum())
        self.total_actions += action.numel() // action.shape[-1]
        return torch.minimum(torch.maximum(action, low), high)


__all__ = ["ObservationError", "check_observation", "ActionClipper"]
