"""Brownian-tree noise for SDE solvers (``noise="brownian"``), through ``torchsde``.

A step from ``t_i`` to ``t_{i+1}`` draws its noise as the normalized increment
``(W(t_i) - W(t_{i+1})) / sqrt(t_i - t_{i+1})`` of one Brownian path ``W`` over the run's time
range. Refining the grid splits increments instead of drawing new noise, so an SDE solve
converges pathwise as the step count grows, and runs with different step counts on the same
seed give nearby samples (as k-diffusion's ``BrownianTreeNoiseSampler``).

The tree is a halfway tree (values resolved by bisection to
``tol`` in time, so they do not depend on which intervals were queried before), seeded at
``init`` from the run's generator (one tree per generator in a list, so
each sample keeps its own path). Querying the tree is host-driven by nature: the step times are
host floats decided at ``init``; the increments themselves are computed on the state's device.

Example:
    >>> import torch, pydiff
    >>> sched = pydiff.schedules.VPSchedule()
    >>> x = torch.zeros(2, 3)
    >>> grid = pydiff.timesteps(sched, 4, "time")
    >>> src = BrownianNoise(x, grid, torch.Generator().manual_seed(0))
    >>> src.increment(0).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import torch

from ..noise import Generators
from ..tree import State, leaves

Tensor = torch.Tensor


def _seed(generator: torch.Generator | None) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator,
                             device=generator.device if generator is not None else "cpu"))


class BrownianNoise:
    """One Brownian path per generator (or per run) over the grid's time range."""

    def __init__(self, x: State, grid: Tensor, generator: Generators, tol: float = 1e-7):
        try:
            import torchsde
        except ImportError as err:  # pragma: no cover - torchsde is a dependency
            raise ImportError("noise='brownian' needs torchsde (pip install torchsde)") from err
        if grid.dim() != 1:
            raise ValueError(f"noise='brownian' needs one grid for the whole batch (shape "
                             f"[steps + 1]), got a grid of shape {tuple(grid.shape)}")
        self.times = [float(v) for v in grid.tolist()]  # host floats, decided once
        lo, hi = min(self.times), max(self.times)
        self.keys = list(x.keys()) if isinstance(x, dict) else None
        gens = (list(generator) if generator is not None
                and not isinstance(generator, torch.Generator) else None)
        self.per_sample = gens is not None
        self.trees: list[list] = []  # [leaf][sample, or a single tree for the batch]
        for leaf in leaves(x):
            if gens is None:
                self.trees.append([torchsde.BrownianInterval(
                    lo, hi, size=tuple(leaf.shape), dtype=leaf.dtype, device=leaf.device,
                    entropy=_seed(generator), tol=tol * (hi - lo), halfway_tree=True)])
            else:
                self.trees.append([torchsde.BrownianInterval(
                    lo, hi, size=tuple(leaf.shape[1:]), dtype=leaf.dtype, device=leaf.device,
                    entropy=_seed(g), tol=tol * (hi - lo), halfway_tree=True) for g in gens])

    def increment(self, i: int) -> State:
        """The normalized increment over step ``i`` (standard normal, like fresh noise)."""
        a, b = self.times[i], self.times[i + 1]
        lo, hi = min(a, b), max(a, b)
        scale = (hi - lo) ** -0.5
        out = []
        for trees in self.trees:
            if self.per_sample:
                out.append(torch.stack([tree(lo, hi) for tree in trees]) * scale)
            else:
                out.append(trees[0](lo, hi) * scale)
        if self.keys is None:
            return out[0]
        return dict(zip(self.keys, out))


__all__ = ["BrownianNoise"]
