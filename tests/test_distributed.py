"""pydiff.distributed: process groups with real gloo processes, sharding, failure within the
timeout (a rank that dies, hangs or raises), groups destroyed on exit."""

from __future__ import annotations

import time

import pytest
import torch.distributed as dist

import pydiff
from pydiff.distributed import (
    DistributedError,
    dist_info,
    launch,
    process_group,
    shard,
)
from pydiff.testing import distributed as workers


def test_shard_partitions_deterministically():
    items = [f"scan{i:02d}.dcm" for i in range(11)]
    shards = [shard(items, rank, 3) for rank in range(3)]
    assert sorted(sum(shards, [])) == items
    assert [len(s) for s in shards] == [4, 4, 3]
    assert shards == [shard(items, rank, 3) for rank in range(3)]
    assert shard(items) == items  # a single process does everything
    with pytest.raises(pydiff.InputError, match="rank=3, world_size=3"):
        shard(items, 3, 3)


def test_single_process_group_is_a_no_op():
    with process_group() as info:
        assert info == (0, 1, 0) and not dist.is_initialized()
    assert dist_info().world_size == 1
    with pytest.raises(pydiff.InputError, match="timeout"):
        with process_group(timeout=0):
            pass


def test_launch_two_gloo_ranks_all_reduce_and_shard():
    results = launch(workers.all_reduce_and_shard, 2, list(range(5)))
    assert results == [(0, 2, 1.0, [0, 2, 4], True), (1, 2, 1.0, [1, 3], True)]
    assert not dist.is_initialized()  # the launcher itself joins no group


@pytest.mark.parametrize("how", ["die", "hang"])
def test_a_failed_rank_is_reported_within_the_timeout(how):
    timeout = 2.0
    start = time.monotonic()
    with pytest.raises(DistributedError) as err:
        launch(workers.one_rank_fails, 2, 1, how, timeout=timeout)
    elapsed = time.monotonic() - start
    message = str(err.value)
    assert "rank 1:" in message and "rank 0:" in message, message
    # the survivor saw a clear error naming itself and the exchange, not a hang
    assert "rank 0: DistributedError: rank 0 of 2: exchanging a test value failed" in message
    expected = {"die": "rank 1: died (killed by signal 9)", "hang": "rank 1: hung"}[how]
    assert expected in message, message
    assert elapsed < timeout + 30, elapsed


def test_bad_launch_arguments():
    with pytest.raises(pydiff.InputError, match="nproc=0"):
        launch(workers.all_reduce_and_shard, 0)
    with pytest.raises(pydiff.InputError, match="timeout=-1"):
        launch(workers.all_reduce_and_shard, 2, timeout=-1)
