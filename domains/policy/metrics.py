"""Metrics robotics users report: latency percentiles, chunk-boundary jumps, success, modes.

Example:
    >>> latency_summary([1.0, 2.0, 3.0, 100.0])["max"]
    100.0
    >>> jump_summary([0.1, 0.3])["mean"]
    0.2
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def latency_summary(ms: Sequence[float]) -> dict[str, float]:
    """``{"p50", "p99", "max", "mean", "n"}`` of latencies in milliseconds (NaN when empty)."""
    a = np.asarray(list(ms), dtype=np.float64)
    if a.size == 0:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan"),
                "mean": float("nan"), "n": 0}
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
            "max": float(a.max()), "mean": float(a.mean()), "n": int(a.size)}


def jump_summary(jumps: Sequence[float]) -> dict[str, float]:
    """Mean and max of the action jumps at chunk boundaries (L2 norm, action units)."""
    a = np.asarray(list(jumps), dtype=np.float64)
    if a.size == 0:
        return {"mean": float("nan"), "max": float("nan"), "n": 0}
    return {"mean": float(a.mean()), "max": float(a.max()), "n": int(a.size)}


def side_share(sides: Sequence[int]) -> dict[str, float]:
    """Share of episodes that passed left (-1), right (+1) or neither (0)."""
    a = np.asarray(list(sides))
    n = max(a.size, 1)
    return {"left": float((a == -1).sum() / n), "right": float((a == 1).sum() / n),
            "none": float((a == 0).sum() / n)}


def action_smoothness(actions: np.ndarray) -> float:
    """Mean L2 norm of consecutive action differences of one episode ``[T, action_dim]``."""
    actions = np.asarray(actions, dtype=np.float64)
    if len(actions) < 2:
        return 0.0
    return float(np.linalg.norm(np.diff(actions, axis=0), axis=-1).mean())


__all__ = ["latency_summary", "jump_summary", "side_share", "action_smoothness"]
