"""Thread-safety check: work run from several threads at once equals the sequential runs.

Shared objects (one solver instance, one Denoiser with its cache) must give every thread the
result it would get alone; :func:`assert_threads_match_sequential` checks that bit for bit.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["assert_threads_match_sequential"]


def assert_threads_match_sequential(run: Callable[..., Any], jobs: Sequence[tuple],
                                     repeats: int = 2) -> None:
    """Raise unless ``run(*job)`` gives bit-identical tensors run sequentially and from one
    thread per job at once (each thread ``repeats`` times, released together by a barrier,
    with a tiny interpreter switch interval so that threads interleave inside steps).

    Example:
        >>> import torch
        >>> assert_threads_match_sequential(lambda n: torch.arange(n) * 2, [(3,), (5,)])
    """
    sequential = [run(*job) for job in jobs]
    results: list = [None] * len(jobs)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(jobs))

    def worker(k):
        try:
            barrier.wait()
            for _ in range(repeats):
                out = run(*jobs[k])
                if results[k] is None or torch.equal(results[k], out):
                    results[k] = out
                else:
                    raise AssertionError(f"job {k}: repeated runs differ")
        except BaseException as err:  # reported in the main thread
            errors.append(err)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(jobs))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        sys.setswitchinterval(interval)
    if errors:
        raise errors[0]
    for k, (a, b) in enumerate(zip(sequential, results)):
        assert torch.equal(a, b), f"job {jobs[k]}: threaded result differs from sequential"
