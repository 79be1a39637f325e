"""Exponential moving average of a model's weights.

Two decay rules:

- a plain constant ``decay`` (``EMA(net, decay=0.999)``);
- the warmup/power schedule of Diffusion Policy's ``EMAModel`` (the default):
  ``decay = 1 - (1 + step / inv_gamma) ** -power`` clamped to ``[min_decay, max_decay]``, 0 for
  the first ``update_after_step + 1`` updates, so early averages follow the weights closely.

Buffers (e.g. normalization statistics) and parameters that do not train are copied, not
averaged. The averaged copy is ``ema.module`` (eval mode, no gradients); ``state_dict`` holds it
and the update counter, so checkpoints resume exactly.

Example:
    >>> import torch
    >>> from pydiff.training import EMA
    >>> net = torch.nn.Linear(2, 2)
    >>> ema = EMA(net, power=0.75)
    >>> with torch.no_grad():
    ...     _ = net.weight.add_(1.0)
    >>> ema.update(net)                      # first update: decay 0, copies the weights
    >>> torch.equal(ema.module.weight, net.weight)
    True
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """An averaged copy of ``module`` (see the module docstring).

    Args:
        module: the model being trained (copied at construction).
        decay: a constant decay; when given, the warmup schedule is off.
        power, inv_gamma, min_decay, max_decay, update_after_step: the warmup schedule of
            Diffusion Policy's ``EMAModel`` (defaults as there: power 3/4, max 0.9999).
    """

    def __init__(self, module: nn.Module, decay: float | None = None, *, power: float = 0.75,
                 inv_gamma: float = 1.0, min_decay: float = 0.0, max_decay: float = 0.9999,
                 update_after_step: int = 0):
        if not isinstance(module, nn.Module):
            raise TypeError(f"EMA averages an nn.Module, got {type(module).__name__}")
        if decay is not None and not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        if not 0.0 <= min_decay <= max_decay < 1.0:
            raise ValueError(f"EMA needs 0 <= min_decay <= max_decay < 1, got min_decay="
                             f"{min_decay}, max_decay={max_decay}")
        if inv_gamma <= 0 or power <= 0:
            raise ValueError(f"EMA inv_gamma and power must be > 0, got {inv_gamma}, {power}")
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay, self.power, self.inv_gamma = decay, float(power), float(inv_gamma)
        self.min_decay, self.max_decay = float(min_decay), float(max_decay)
        self.update_after_step = int(update_after_step)
        self.step = 0  # number of updates so far

    def current_decay(self) -> float:
        """The decay the next :meth:`update` applies."""
        if self.decay is not None:
            return self.decay
        step = max(0, self.step - self.update_after_step - 1)
        if step <= 0:
            return 0.0
        value = 1 - (1 + step / self.inv_gamma) ** -self.power
        return max(self.min_decay, min(value, self.max_decay))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the average towards ``module``'s current weights."""
        decay = self.current_decay()
        avg, cur = [], []
        for (name, p_ema), (name_cur, p) in zip(self.module.named_parameters(),
                                                module.named_parameters()):
            if name != name_cur:
                raise ValueError(f"EMA parameters do not match the model ({name!r} vs "
                                 f"{name_cur!r}): update with the module the EMA was made from")
            if p.requires_grad:
                avg.append(p_ema)
                cur.append(p.detach().to(p_ema.dtype))
            else:
                p_ema.copy_(p)
        if avg:
            torch._foreach_mul_(avg, decay)
            torch._foreach_add_(avg, cur, alpha=1 - decay)
        for b_ema, b in zip(self.module.buffers(), module.buffers()):
            b_ema.copy_(b)
        self.step += 1

    def copy_to(self, module: nn.Module) -> None:
        """Load the averaged weights into ``module``."""
        module.load_state_dict(self.module.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.step = int(state["step"])

    def __repr__(self) -> str:
        rule = (f"decay={self.decay}" if self.decay is not None else
                f"power={self.power}, inv_gamma={self.inv_gamma}, max_decay={self.max_decay}")
        return f"EMA({rule}, step={self.step})"


__all__ = ["EMA"]
