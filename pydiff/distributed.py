"""Process groups over :mod:`torch.distributed` (gloo on CPU, NCCL on CUDA), shared by every
multi-process part of pydiff: data-parallel training, patch-parallel sampling, batch jobs.

- :func:`init_distributed` joins the group that ``torchrun`` describes in the environment, or
  one given explicitly (``rank``, ``world_size``, ``master_addr``, ``master_port``), with a
  timeout (default :data:`DEFAULT_TIMEOUT` = 60 s) after which a collective waiting on a dead
  or hung rank raises instead of hanging.
- :func:`process_group` is the same as a context manager that destroys the group on exit
  (also when the body raises), so a failed job leaves no half-open group behind.
- :func:`shard` splits a work list across ranks, deterministically (round-robin over the
  list's own order: give every rank the same order, e.g. sorted file names).
- :func:`launch` starts ``nproc`` local worker processes itself (no ``torchrun`` needed), runs
  ``fn(*args)`` in each inside a process group and returns every rank's result; when a rank
  fails, dies or hangs, it waits at most the timeout for the others to notice and raises one
  :class:`DistributedError` naming each rank's fate.
- :func:`collective_errors` turns a failed collective into a :class:`DistributedError` that
  names the rank, the operation and the timeout.
- Data-parallel helpers: :func:`broadcast_module`, :func:`all_reduce_gradients`,
  :func:`all_reduce_mean`, :func:`barrier` (also importable from :mod:`pydiff.training`).

Example:
    >>> from pydiff.distributed import dist_info, shard
    >>> dist_info().world_size          # 1 outside torchrun
    1
    >>> shard(["a.dcm", "b.dcm", "c.dcm", "d.dcm", "e.dcm"], rank=1, world_size=2)
    ['b.dcm', 'd.dcm']
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import queue as queue_module
import socket
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import Any, NamedTuple, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .errors import InputError

Tensor = torch.Tensor
T = TypeVar("T")

DEFAULT_TIMEOUT = 60.0
"""Seconds a collective waits for the other ranks before it raises (a dead or hung rank)."""
BUCKET_ELEMENTS = 1 << 22  # 16 MB of float32 per all-reduce
# What launch() gives the surviving ranks beyond the timeout to report their own error.
_LAUNCH_GRACE = 5.0

# the timeout of the group this process joined (for error messages)
_timeout_s: float | None = None


class DistributedError(RuntimeError):
    """A process group failed: a rank died, hung past the timeout, or raised."""


class DistInfo(NamedTuple):
    rank: int
    world_size: int
    local_rank: int


def dist_info() -> DistInfo:
    """Rank, world size and local rank (0, 1, 0 when not distributed).

    Example:
        >>> dist_info()
        DistInfo(rank=0, world_size=1, local_rank=0)
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(),
                        int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return DistInfo(0, 1, 0)


def _check_timeout(timeout: float) -> float:
    timeout = float(timeout)
    if not timeout > 0 or timeout == float("inf"):
        raise InputError(f"timeout={timeout}: expected a finite number of seconds > 0")
    return timeout


def init_distributed(
    backend: str | None = None,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> DistInfo:
    """Join a process group: the one ``torchrun`` describes, or an explicit one.

    Without ``rank``/``world_size`` the group comes from the environment torchrun sets
    (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); a world of one process
    creates no group. With them, the group is ``tcp://master_addr:master_port`` (defaults: the
    environment's, else ``127.0.0.1`` and 29500). Joining a group that is already initialized
    is a no-op.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; default NCCL when CUDA is available, else gloo.
            With NCCL the process's CUDA device becomes ``LOCAL_RANK`` (default: ``rank``).
        timeout: seconds a collective (and the rendezvous) waits for the other ranks before
            raising, so a dead or hung rank gives an error rather than a hang.

    Example:
        >>> init_distributed().world_size   # plain `python`, no torchrun
        1
    """
    global _timeout_s
    timeout = _check_timeout(timeout)
    explicit = rank is not None or world_size is not None
    if explicit:
        if rank is None or world_size is None:
            raise InputError("init_distributed: give both rank and world_size (or neither)")
        if not 0 <= int(rank) < int(world_size):
            raise InputError(f"rank={rank}, world_size={world_size}: expected 0 <= rank < "
                             "world_size")
        rank, world_size = int(rank), int(world_size)
    else:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or dist.is_initialized():
        return dist_info()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise InputError(f"backend={backend!r}: expected 'gloo' or 'nccl'")
    kwargs: dict[str, Any] = {"timeout": timedelta(seconds=timeout)}
    if explicit:
        addr = master_addr or os.environ.get("MASTER_ADDR", "127.0.0.1")
        port = int(master_port or os.environ.get("MASTER_PORT", "29500"))
        kwargs.update(init_method=f"tcp://{addr}:{port}", rank=rank, world_size=world_size)
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", rank if explicit else 0))
        torch.cuda.set_device(local)
    dist.init_process_group(backend, **kwargs)
    _timeout_s = timeout
    return dist_info()


def side_group(ranks: list[int] | None = None):
    """A second process group over the same ranks (default: all; same timeout), so exchanges
    left in flight across calls (the stale-activation messages of patch parallelism) never
    interleave with the main group's collectives. Call it on every rank of ``ranks`` (default:
    every rank), in the same order.

    Example:
        >>> side_group() is None     # not distributed: nothing to create
        True
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    timeout = _timeout_s if _timeout_s is not None else DEFAULT_TIMEOUT
    # over some ranks only those call it (a subgroup's wrapper creates its side group lazily,
    # while the other ranks are busy elsewhere)
    return dist.new_group(ranks=ranks, timeout=timedelta(seconds=timeout),
                          use_local_synchronization=ranks is not None)


_IN_FLIGHT: list[list] = []


def track_in_flight(works: list) -> None:
    """Note asynchronous work handles (``async_op=True``, ``batch_isend_irecv``) left in flight
    across calls; :func:`destroy` waits for them first (also for those whose owner is gone):
    gloo work still running when a group is destroyed waits for peers that have already left,
    the whole timeout long. Call :func:`untrack_in_flight` after waiting for them."""
    _IN_FLIGHT.append(works)


def untrack_in_flight(works: list) -> None:
    """The handles given to :func:`track_in_flight` are complete."""
    _IN_FLIGHT[:] = [w for w in _IN_FLIGHT if w is not works]


def destroy() -> None:
    """Destroy this process's group (no-op when none is initialized), after waiting for the
    work still in flight (:func:`track_in_flight`)."""
    global _timeout_s
    for works in _IN_FLIGHT:
        for work in works:
            with contextlib.suppress(Exception):  # a failed peer: the group is going anyway
                work.wait()
    _IN_FLIGHT.clear()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _timeout_s = None


@contextlib.contextmanager
def process_group(backend: str | None = None, **options: Any) -> Iterator[DistInfo]:
    """:func:`init_distributed` as a context manager: the group it created is destroyed on exit.

    ``options`` are those of :func:`init_distributed` (``rank``, ``world_size``,
    ``master_addr``, ``master_port``, ``timeout``). A group that already existed on entry is
    left alone (its owner destroys it).

    Example:
        >>> with process_group() as info:     # no torchrun: a world of one, no group
        ...     info.world_size
        1
    """
    created = not (dist.is_available() and dist.is_initialized())
    info = init_distributed(backend, **options)
    try:
        yield info
    finally:
        if created:
            destroy()


def shard(items: Iterable[T], rank: int | None = None, world_size: int | None = None) -> list[T]:
    """This rank's share of ``items``: every ``world_size``-th item starting at ``rank``.

    Deterministic: it depends only on the order of ``items`` (give every rank the same order,
    e.g. sorted paths), and the shards of all ranks partition the list, sizes differing by at
    most one. ``rank``/``world_size`` default to this process's group.

    Example:
        >>> shard(range(7), rank=0, world_size=3)
        [0, 3, 6]
    """
    info = dist_info()
    rank = info.rank if rank is None else int(rank)
    world_size = info.world_size if world_size is None else int(world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise InputError(f"rank={rank}, world_size={world_size}: expected 0 <= rank < world_size")
    return list(items)[rank::world_size]


@contextlib.contextmanager
def collective_errors(what: str) -> Iterator[None]:
    """Raise a failed collective as a :class:`DistributedError` naming the rank, ``what`` was
    being exchanged and the group's timeout (the likely cause: a rank that died or hung).

    Example:
        >>> with collective_errors("halo rows"):
        ...     pass
    """
    try:
        yield
    except DistributedError:
        raise
    except RuntimeError as err:  # DistBackendError, gloo's timeouts and closed connections
        info = dist_info()
        timeout = f"{_timeout_s:g} s" if _timeout_s is not None else "the group's timeout"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DistributedError(
            f"rank {info.rank} of {info.world_size}: exchanging {what} failed: another rank "
            f"died, hung past the timeout ({timeout}) or raised ({first})"
        ) from err


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy ``src``'s parameters and buffers to every rank (same start on all ranks)."""
    if dist_info().world_size == 1:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src)


@torch.no_grad()
def all_reduce_gradients(params: Iterable[nn.Parameter]) -> None:
    """Average the gradients of ``params`` across ranks (bucketed flat all-reduce).

    A parameter without a gradient on one rank takes part with zeros, so every rank issues the
    same collectives.
    """
    world = dist_info().world_size
    if world == 1:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    buckets: list[list[nn.Parameter]] = []
    size = BUCKET_ELEMENTS + 1  # forces a first bucket
    for p in params:
        # one dtype/device per bucket: flatten needs it
        if (size + p.numel() > BUCKET_ELEMENTS or buckets[-1][0].grad.dtype != p.grad.dtype
                or buckets[-1][0].grad.device != p.grad.device):
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += p.numel()
    for bucket in buckets:
        flat = torch.cat([p.grad.reshape(-1) for p in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world
        offset = 0
        for p in bucket:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n


def all_reduce_mean(value: Tensor) -> Tensor:
    """The mean of ``value`` over ranks (for logging losses)."""
    if dist_info().world_size == 1:
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist_info().world_size


def barrier() -> None:
    """Wait for every rank (no-op for a single process)."""
    if dist_info().world_size > 1:
        dist.barrier()


# ------------------------------------------------------------------------------------------
# launching local workers


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for a local rendezvous)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, backend: str | None, timeout: float,
            threads: int, fn: Callable[..., Any], args: tuple, results: Any,
            environ: dict[str, str]) -> None:
    torch.set_num_threads(threads)
    # the fork server started with the launcher's environment of that moment: use today's
    os.environ.clear()
    os.environ.update(environ)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    try:
        with process_group(backend, rank=rank, world_size=world_size, master_addr="127.0.0.1",
                           master_port=port, timeout=timeout):
            result = fn(*args)
        buf = io.BytesIO()
        torch.save(result, buf)  # bytes, not shared memory: this process exits right away
        results.put((rank, True, buf.getvalue()))
    except BaseException as err:  # reported to the launcher, which raises for all ranks
        short = f"{type(err).__name__}: {err}"
        results.put((rank, False, (isinstance(err, InputError), short, traceback.format_exc())))
        raise SystemExit(1) from None


def _context(fn: Callable[..., Any]):
    """The workers' start method: a fork server. It is a fresh process (forking the launcher
    itself is unsafe once it has run a parallel torch operation) that imports torch, pydiff
    and ``fn``'s module once, and forks every worker of this and later launches from that
    state, where spawning would import torch again in every worker (seconds of CPU each)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    preload = ["torch", "torch.distributed", __name__]
    module = getattr(fn, "__module__", None)
    if module and module != "__main__" and module not in preload:
        preload.append(module)
    ctx.set_forkserver_preload(preload)  # takes effect when the server starts
    return ctx


def launch(
    fn: Callable[..., T],
    nproc: int,
    *args: Any,
    backend: str | None = "gloo",
    timeout: float = DEFAULT_TIMEOUT,
    threads: int = 1,
) -> list[T]:
    """Run ``fn(*args)`` in ``nproc`` new local processes joined in one process group.

    Workers are forked from a fork server that has imported torch once (started at the first
    launch of a process; ``spawn`` where there is no fork server). Every worker takes the
    launcher's environment, sets ``threads`` torch threads, joins the group (``RANK`` etc. are
    set as torchrun sets them), calls ``fn`` and destroys the group. ``fn`` and ``args`` must be
    picklable (``fn`` a module-level function). Returns the ranks' results in rank order.

    Failure: when a rank raises, dies or hangs, the others fail in their next collective
    within ``timeout`` seconds; the launcher waits for them that long (plus a grace), then
    terminates what is left and raises one :class:`DistributedError` listing every rank's
    fate, or :class:`~pydiff.InputError` when every failed rank raised one (a bad argument
    every rank found).

    Example:
        >>> import operator
        >>> launch(operator.add, 2, 1, 2)   # doctest: +SKIP
        [3, 3]
    """
    nproc = int(nproc)
    if nproc < 1:
        raise InputError(f"nproc={nproc}: expected at least 1 process")
    timeout = _check_timeout(timeout)
    ctx = _context(fn)
    results = ctx.Queue()
    port = free_port()
    environ = dict(os.environ)
    procs = [ctx.Process(target=_worker, name=f"pydiff-rank{rank}", daemon=True,
                         args=(rank, nproc, port, backend, timeout, threads, fn, args, results,
                               environ))
             for rank in range(nproc)]
    reports: dict[int, tuple[bool, Any]] = {}
    terminated: set[int] = set()

    def drain(block_s: float = 0.0) -> None:
        try:
            while True:
                rank, ok, payload = results.get(timeout=block_s) if block_s else \
                    results.get_nowait()
                reports[rank] = (ok, payload)
                block_s = 0.0
        except queue_module.Empty:
            pass

    try:
        for p in procs:
            p.start()
        deadline = None
        while any(p.is_alive() for p in procs):
            drain(0.05)
            failed = any(not ok for ok, _ in reports.values()) or any(
                p.exitcode not in (None, 0) for p in procs)
            if failed and deadline is None:
                deadline = time.monotonic() + timeout + _LAUNCH_GRACE
            if deadline is not None and time.monotonic() > deadline:
                for rank, p in enumerate(procs):
                    if p.is_alive():
                        p.terminate()
                        terminated.add(rank)
                break
        for p in procs:
            p.join(5.0)
            if p.is_alive():
                p.kill()
                p.join()
        # a rank that exited through _worker (status 0 or 1) reported before it exited
        reported = {rank for rank, p in enumerate(procs) if p.exitcode in (0, 1)}
        end = time.monotonic() + 5.0
        while not reported <= reports.keys() and time.monotonic() < end:
            drain(0.1)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        results.close()

    if all(reports.get(rank, (False,))[0] for rank in range(nproc)):
        return [torch.load(io.BytesIO(reports[rank][1]), weights_only=False)
                for rank in range(nproc)]
    fates = []
    input_errors = []
    for rank, p in enumerate(procs):
        ok, payload = reports.get(rank, (None, None))
        if ok:
            fates.append(f"rank {rank}: finished")
        elif ok is False:
            is_input, short, _ = payload
            fates.append(f"rank {rank}: {short}")
            if is_input:
                input_errors.append(short.split(": ", 1)[1])
        elif rank in terminated:
            fates.append(f"rank {rank}: hung (terminated {timeout:g} s after the first "
                         "failure)")
        else:
            code = p.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else \
                f"exit status {code}"
            fates.append(f"rank {rank}: died ({how})")
    failed = [f for f in fates if not f.endswith(": finished")]
    if input_errors and len(input_errors) == len(failed):
        raise InputError(input_errors[0])
    details = "\n".join(payload[2] for ok, payload in reports.values() if ok is False
                        and not payload[0])
    message = f"{len(failed)} of {nproc} ranks failed:\n  " + "\n  ".join(fates)
    err = DistributedError(message)
    if details:
        err.add_note("worker tracebacks:\n" + details)
    raise err


__all__ = [
    "DEFAULT_TIMEOUT", "DistInfo", "DistributedError", "dist_info", "init_distributed",
    "destroy", "process_group", "shard", "collective_errors", "launch", "free_port",
    "broadcast_module", "all_reduce_gradients", "all_reduce_mean", "barrier",
]
