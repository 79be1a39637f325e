"""Resumable batch sources for the :class:`pydiff.training.Trainer`.

The trainer accepts any iterable of batches. These two keep their position in a
``state_dict`` so checkpoints resume the exact data order, and shard data across data-parallel
ranks:

- :class:`BatchLoader`: shuffled minibatches over in-memory tensors (a tensor, a tuple, or a
  dict of tensors, nested). Epoch ``e`` uses the permutation of ``seed + e``; each global
  batch of ``batch_size * world_size`` rows is split into per-rank slices, so the union of the
  ranks' batches is exactly the batch a single process with ``batch_size * world_size`` sees.
- :class:`SampledBatches`: batches drawn by a function ``fn(n, generator)`` (toy
  distributions, simulators), each rank with its own generator.
- :class:`WeightedBatches`: rows of in-memory tensors drawn with replacement in proportion to
  per-row weights (e.g. ``1 / rows of its group``: every group, such as the windows of one
  time series, equally likely however many rows it has).

Example:
    >>> import torch
    >>> from pydiff.training import BatchLoader
    >>> loader = BatchLoader(torch.arange(10.0)[:, None], batch_size=4, seed=0)
    >>> it = iter(loader)
    >>> first = next(it)
    >>> state = loader.state_dict()
    >>> second = next(it)
    >>> loader2 = BatchLoader(torch.arange(10.0)[:, None], batch_size=4, seed=0)
    >>> loader2.load_state_dict(state)
    >>> torch.equal(next(iter(loader2)), second)
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from .distributed import dist_info

Tensor = torch.Tensor


def _rows(data: Any) -> int:
    if torch.is_tensor(data):
        return data.shape[0]
    if isinstance(data, dict):
        return _rows(next(iter(data.values())))
    if isinstance(data, (tuple, list)):
        return _rows(data[0])
    raise TypeError(f"data must be a tensor or a (nested) tuple/dict of tensors, got "
                    f"{type(data).__name__}")


def _index(data: Any, idx: Tensor) -> Any:
    if torch.is_tensor(data):
        return data[idx.to(data.device)]
    if isinstance(data, dict):
        return {k: _index(v, idx) for k, v in data.items()}
    return type(data)(_index(v, idx) for v in data)


def _check_rows(data: Any, n: int, path: str = "data") -> None:
    if torch.is_tensor(data):
        if data.dim() == 0 or data.shape[0] != n:
            raise ValueError(f"{path} has shape {tuple(data.shape)}; every tensor needs the same "
                             f"first dimension {n}")
    elif isinstance(data, dict):
        for k, v in data.items():
            _check_rows(v, n, f"{path}[{k!r}]")
    elif isinstance(data, (tuple, list)):
        for i, v in enumerate(data):
            _check_rows(v, n, f"{path}[{i}]")
    else:
        raise TypeError(f"{path} is a {type(data).__name__}; expected tensors in tuples/dicts")


class BatchLoader:
    """Endless shuffled minibatches of in-memory tensors, resumable and sharded per rank.

    Args:
        data: a tensor or a (nested) tuple/dict of tensors sharing the first dimension.
        batch_size: rows per batch on each rank.
        shuffle: permute every epoch (permutation seeded by ``seed + epoch``).
        seed: the data-order seed (the same on every rank).
        rank, world_size: the shard (default: from :mod:`torch.distributed` if initialized).
    """

    def __init__(self, data: Any, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None):
        self.n = _rows(data)
        _check_rows(data, self.n)
        info = dist_info()
        self.rank = info.rank if rank is None else int(rank)
        self.world_size = info.world_size if world_size is None else int(world_size)
        if batch_size < 1 or batch_size * self.world_size > self.n:
            raise ValueError(f"batch_size={batch_size} (x world_size={self.world_size}) must be "
                             f">= 1 and at most the {self.n} rows of data")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank={self.rank} must lie in [0, world_size={self.world_size})")
        self.data, self.batch_size, self.shuffle, self.seed = data, batch_size, shuffle, seed
        self.epoch, self.position = 0, 0  # the next batch to produce
        self._perm: tuple[int, Tensor] | None = None

    @property
    def batches_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world_size)  # the ragged tail is dropped

    def _permutation(self) -> Tensor:
        if self._perm is None or self._perm[0] != self.epoch:
            perm = (torch.randperm(self.n, generator=torch.Generator().manual_seed(
                self.seed + self.epoch)) if self.shuffle else torch.arange(self.n))
            self._perm = (self.epoch, perm)
        return self._perm[1]

    def __iter__(self) -> Iterator[Any]:
        while True:
            if self.position >= self.batches_per_epoch:
                self.epoch, self.position = self.epoch + 1, 0
            global_bs = self.batch_size * self.world_size
            start = self.position * global_bs + self.rank * self.batch_size
            idx = self._permutation()[start:start + self.batch_size]
            self.position += 1
            yield _index(self.data, idx)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"the checkpoint's data seed {state['seed']} differs from this "
                             f"loader's seed {self.seed}: the data order would not resume")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class SampledBatches:
    """Endless batches ``fn(batch_size, generator)`` from a per-rank generator (resumable).

    Example:
        >>> import torch
        >>> from pydiff.testing import GaussianMixture
        >>> ring = GaussianMixture.ring()
        >>> batches = SampledBatches(lambda n, g: ring.sample(n, g).float(), 16, seed=0)
        >>> next(iter(batches)).shape
        torch.Size([16, 2])
    """

    def __init__(self, fn: Callable[[int, torch.Generator], Any], batch_size: int, *,
                 seed: int = 0, rank: int | None = None):
        if not callable(fn):
            raise TypeError(f"fn must be callable as fn(n, generator), got {type(fn).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rank = dist_info().rank if rank is None else int(rank)
        self.fn, self.batch_size = fn, batch_size
        # distinct streams per rank: the rank enters the seed
        self.generator = torch.Generator().manual_seed(seed + 104729 * rank)

    def __iter__(self) -> Iterator[Any]:
        while True:
            yield self.fn(self.batch_size, self.generator)

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])


class WeightedBatches(SampledBatches):
    """Endless batches of rows of ``data`` drawn with replacement, row ``i`` with probability
    ``weights[i] / sum(weights)`` (resumable; each rank draws its own rows).

    Use it where rows come in groups of very different sizes and each group should count
    alike, as GluonTS's instance samplers weigh each series alike:
    :meth:`group_weights` gives ``1 / size of the row's group``.

    Args:
        data: a tensor or a (nested) tuple/dict of tensors sharing the first dimension.
        weights: ``[N]`` non-negative weights, not all zero.
        batch_size: rows per batch on each rank.
        seed, rank: as :class:`SampledBatches`.

    Example:
        >>> import torch
        >>> groups = torch.tensor([0, 0, 0, 1])  # row 3 alone is as likely as rows 0-2 together
        >>> batches = WeightedBatches(torch.arange(4.0), WeightedBatches.group_weights(groups),
        ...                           batch_size=1000, seed=0)
        >>> round(float((next(iter(batches)) == 3).float().mean()), 1)
        0.5
    """

    def __init__(self, data: Any, weights: Tensor, batch_size: int, *, seed: int = 0,
                 rank: int | None = None):
        n = _rows(data)
        _check_rows(data, n)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (n,):
            raise ValueError(f"weights has shape {tuple(weights.shape)}; expected one per row "
                             f"of data: ({n},)")
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()) \
                or float(weights.sum()) <= 0:
            raise ValueError("weights must be finite, >= 0 and not all 0")
        self.data, self.weights = data, weights

        def draw(size: int, generator: torch.Generator) -> Any:
            idx = torch.multinomial(self.weights, size, replacement=True, generator=generator)
            return _index(self.data, idx)

        super().__init__(draw, batch_size, seed=seed, rank=rank)

    @staticmethod
    def group_weights(groups: Tensor) -> Tensor:
        """``1 / (rows sharing the row's group)`` for integer group labels ``[N]``: every
        group gets the same total weight."""
        groups = torch.as_tensor(groups)
        if groups.dim() != 1 or groups.dtype.is_floating_point:
            raise ValueError(f"groups must be integer labels [N], got {groups.dtype} "
                             f"{tuple(groups.shape)}")
        _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
        return 1.0 / counts[inverse].double()


__all__ = ["BatchLoader", "SampledBatches", "WeightedBatches"]
