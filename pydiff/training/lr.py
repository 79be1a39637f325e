"""Learning-rate schedules as picklable ``LambdaLR`` factors (their state goes into checkpoints).

Example:
    >>> import torch
    >>> from pydiff.training import cosine_with_warmup
    >>> opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    >>> sched = cosine_with_warmup(opt, warmup_steps=10, total_steps=110)
    >>> [round(sched.get_last_lr()[0], 3) for _ in range(1)]
    [0.0]
    >>> for _ in range(10):
    ...     opt.step(); sched.step()
    >>> sched.get_last_lr()
    [1.0]
"""

from __future__ import annotations

import math

import torch


class WarmupCosine:
    """Factor of the base LR: linear warmup from 0, then cosine decay to ``min_ratio``."""

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float = 0.0):
        if warmup_steps < 0 or total_steps <= warmup_steps:
            raise ValueError(f"need 0 <= warmup_steps < total_steps, got warmup_steps="
                             f"{warmup_steps}, total_steps={total_steps}")
        if not 0.0 <= min_ratio <= 1.0:
            raise ValueError(f"min_ratio must lie in [0, 1], got {min_ratio}")
        self.warmup_steps, self.total_steps, self.min_ratio = warmup_steps, total_steps, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        frac = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))


class WarmupConstant:
    """Factor of the base LR: linear warmup from 0, then constant."""

    def __init__(self, warmup_steps: int = 0):
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        return 1.0 if step >= self.warmup_steps else step / self.warmup_steps


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                       min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup then cosine decay (Diffusion Policy's default ``cosine`` scheduler)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer,
                                             WarmupCosine(warmup_steps, total_steps, min_ratio))


def constant_with_warmup(optimizer: torch.optim.Optimizer,
                         warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup then a constant learning rate."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupConstant(warmup_steps))


__all__ = ["WarmupCosine", "WarmupConstant", "cosine_with_warmup", "constant_with_warmup"]
