"""pydiff.parallel.PatchParallel with real gloo processes: sync equals one process."""

from __future__ import annotations

import pytest
import torch

import pydiff
from pydiff.distributed import launch
from pydiff.parallel import PatchParallel
from pydiff.testing import distributed as workers


@pytest.mark.parametrize("nproc,norm_axes", [(2, "h"), (4, "hw")])
def test_sync_equals_single_process(nproc, norm_axes):
    results = launch(workers.patch_parallel_vs_single, nproc, 64, 3, "sync", norm_axes)
    for r in results:
        assert r["out_scale"] > 0.1  # a real output, not the zero-initialized one
        assert r["call_diff"] < 1e-5 * max(1.0, r["out_scale"]), r
        # relative: an untrained eps model's x0 estimates are large (divided by alpha)
        assert r["sample_diff"] < 1e-5 * max(1.0, r["sample_scale"]), r
        assert r["bytes_sent"] > 0 and r["calls"] == 4  # 1 call + 3 sampling steps
    # every rank sends the same amount (interior ranks have two neighbours, but the
    # all-gathers dominate) -- and the bands' results are the same everywhere
    assert len({r["call_diff"] for r in results}) == 1


def test_one_process_is_the_plain_model_and_bad_input():
    net = workers.random_unet2d()
    x, t = torch.randn(1, 1, 16, 16), torch.rand(1)
    with torch.no_grad():
        assert torch.equal(PatchParallel(net)(x, t), net(x, t))
    with pytest.raises(pydiff.InputError, match="mode='fast'"):
        PatchParallel(net, mode="fast")
    with pytest.raises(TypeError, match="expected a pydiff.nn.UNet2D"):
        PatchParallel(torch.nn.Conv2d(1, 1, 3))
    with pytest.raises(pydiff.InputError, match="height 18 does not split across 1 ranks"):
        PatchParallel(net).check_size(18)
