"""``select_action`` over action chunks, once for every policy type.

A chunked policy predicts several future steps at once and executes them one control tick at a
time. The bookkeeping around that is the same for the diffusion policy and the planner: check
the observation, keep the last ``n_obs_steps`` of them, refill a queue when the policy says a
new chunk is due, and send every action through the clipper. :class:`ChunkedPolicy` holds it;
a policy type supplies :meth:`~ChunkedPolicy._next_chunk` (and optionally
:meth:`~ChunkedPolicy._chunk_due` and :meth:`~ChunkedPolicy._to_action`).

Nothing here measures time: the control loop does (:mod:`.control`), from ``chunk_count``.

Example:
    >>> import torch
    >>> class Hold(ChunkedPolicy):
    ...     def _next_chunk(self, history, obs, generator):
    ...         return [obs[:, :1] * k for k in range(3)]
    >>> p = Hold(obs_dim=2, n_obs_steps=1, action_low=[-9.0], action_high=[9.0])
    >>> [float(p.select_action(torch.tensor([2.0, 0.0]))[0]) for _ in range(4)]
    [0.0, 2.0, 4.0, 0.0]
    >>> p.chunk_count
    2
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pydiff.errors import InputError

from .validation import ActionClipper, check_observation

Tensor = torch.Tensor


class ChunkedPolicy:
    """The policy interface's ``reset`` / ``select_action`` over a queue of chunk items.

    Attributes:
        chunk_count: chunks predicted since :meth:`reset` (the control loop times the calls
            in which it grows).
        last_chunk: the latest predicted chunk ``[B, steps, action_dim]`` (for plots).
        clipper: the :class:`~.validation.ActionClipper` every action leaves through.
    """

    def __init__(self, *, obs_dim: int, n_obs_steps: int, action_low: Sequence[float],
                 action_high: Sequence[float]):
        self._obs_dim, self._n_obs_steps = obs_dim, n_obs_steps
        self.clipper = ActionClipper(action_low, action_high)
        self.reset()

    def reset(self) -> None:
        """Forget the observation history, the queue and the chunk count."""
        self._obs_history: deque[Tensor] = deque(maxlen=self._n_obs_steps)
        self._queue: deque[Tensor] = deque()
        self.chunk_count = 0
        self.last_chunk: Tensor | None = None
        self.clipper.reset_counts()

    # -- what a policy type supplies ---------------------------------------------------------
    def _next_chunk(self, history: Tensor, obs: Tensor, generator: Any) -> list[Tensor]:
        """Queue items ``[B, ...]`` for the coming ticks, from ``history [B, To, obs_dim]``."""
        raise NotImplementedError

    def _chunk_due(self) -> bool:
        """Whether this tick predicts a new chunk (default: when the queue ran out)."""
        return not self._queue

    def _to_action(self, obs: Tensor, item: Tensor) -> Tensor:
        """The action ``[B, action_dim]`` for a queue item (default: the item is the action)."""
        return item

    # -- the interface -----------------------------------------------------------------------
    @torch.no_grad()
    def select_action(self, obs: Any, *, generator: torch.Generator | list | None = None
                      ) -> Tensor:
        """The next action for observation ``obs`` (``[obs_dim]`` or ``[B, obs_dim]``).

        Keeps the last ``n_obs_steps`` observations (the first one repeated after
        :meth:`reset`) and predicts a chunk when one is due; the action is clipped to the
        action space (counted in ``self.clipper``).

        Raises:
            ObservationError: wrong shape or NaN/inf in ``obs``.
        """
        x = check_observation(obs, self._obs_dim)
        if self._obs_history and self._obs_history[-1].shape[0] != x.shape[0]:
            raise InputError(f"observation batch size changed from "
                             f"{self._obs_history[-1].shape[0]} to {x.shape[0]}; call reset()")
        while len(self._obs_history) < self._n_obs_steps - 1:
            self._obs_history.append(x)
        self._obs_history.append(x)
        if self._chunk_due():
            items = self._next_chunk(torch.stack(list(self._obs_history), dim=1), x, generator)
            self.chunk_count += 1
            self._queue.clear()
            self._queue.extend(items)
        action = self.clipper(self._to_action(x, self._queue.popleft()))
        return action[0] if len(np.shape(obs)) == 1 else action


__all__ = ["ChunkedPolicy"]
