"""pydiff.ops.halo_pack / halo_unpack: compiled kernels against the pure-torch reference."""

from __future__ import annotations

import os

import pytest
import torch

import pydiff.ops as ops
from pydiff.ops import _reference as ref
from pydiff.testing.distributed import halo_test_maps

EXT = ops.backend() == "extension"
needs_ext = pytest.mark.skipif(not EXT and os.environ.get("PYDIFF_REQUIRE_EXT") != "1",
                               reason="pydiff._C not loaded")
# int8: the packed tokens of a DiT's partial mode with wire=torch.int8 (1-byte elements)
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int8]


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("side", ["top", "bottom"])
@pytest.mark.parametrize("num_threads", [1, 2], indirect=True)
def test_pack_and_unpack_match_the_reference(dtype, side, num_threads):
    maps = halo_test_maps(dtype)
    rows = [2, 1, 3, 0, 1, 2]
    top = side == "top"
    buffer = ops.halo_pack(maps, rows, side)
    want = ref.halo_pack(maps, rows, top)
    assert buffer.is_contiguous() and buffer.dtype == dtype and buffer.dim() == 1
    assert torch.equal(buffer, want)  # a copy: bit-exact
    # unpack into fresh destinations (strided ones too) gives the same rows as the reference
    dests = [torch.zeros_like(m) for m in maps]
    dests[2] = torch.zeros(2, 2, 12, 5, dtype=dtype)[:, :, 2:10]
    dests_ref = [d.clone() for d in dests]
    ops.halo_unpack(buffer, dests, rows, side)
    ref.halo_unpack(want, dests_ref, rows, top)
    for d, r in zip(dests, dests_ref):
        assert torch.equal(d, r)
    # the round trip puts the halo rows back where they came from
    for d, m, n in zip(dests, maps, rows):
        sl = slice(0, n) if top else slice(m.shape[2] - n, m.shape[2])
        assert torch.equal(d[:, :, sl], m[:, :, sl])


@needs_ext
def test_large_map_parallel_path():
    torch.manual_seed(0)
    maps = [torch.randn(2, 64, 40, 256), torch.randn(2, 128, 20, 128)]
    assert torch.equal(ops.halo_pack(maps, [3, 1], "bottom"), ref.halo_pack(maps, [3, 1], False))


def test_reference_backend_gives_the_same(monkeypatch):
    maps = halo_test_maps(torch.float32, seed=1)
    with_ext = ops.halo_pack(maps, 1, "top")
    monkeypatch.setattr(ops, "_EXT", False)
    assert torch.equal(ops.halo_pack(maps, 1, "top"), with_ext)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda m: ops.halo_pack([], 1, "top"), "non-empty list"),
        (lambda m: ops.halo_pack(m, [1, 2], "top"), "2 maps but 1 row counts|1 maps but 2"),
        (lambda m: ops.halo_pack([m[0]], 10, "top"), r"rows\[0\] = 10; expected 0 <= rows <= H"),
        (lambda m: ops.halo_pack([m[0], m[0].double()], 1, "top"), "one dtype and device"),
        (lambda m: ops.halo_pack([m[0][0]], 1, "top"), r"expected a \[B, C, H, W\]"),
        (lambda m: ops.halo_pack([m[0]], 1, "left"), "side='left'"),
        (lambda m: ops.halo_unpack(torch.zeros(5), [m[0]], 1, "top"), "1-D tensor of 42"),
        (lambda m: ops.halo_unpack(torch.zeros(42).double(), [m[0]], 1, "top"), "float64"),
    ],
)
def test_bad_arguments_name_the_argument(call, match):
    maps = [torch.zeros(2, 3, 4, 7)]
    with pytest.raises(ValueError, match=match):
        call(maps)


@needs_ext
def test_direct_op_call_checks_arguments():
    with pytest.raises(RuntimeError, match=r"rows\[0\] = 5 must be in \[0, H = 4\]"):
        torch.ops.pydiff.halo_pack.default([torch.zeros(1, 1, 4, 2)], [5], True)
    with pytest.raises(RuntimeError, match="contiguous 1-D tensor of 2"):
        torch.ops.pydiff.halo_unpack.default(torch.zeros(3), [torch.zeros(1, 1, 4, 2)], [1], True)


@needs_ext
def test_opcheck():
    maps = halo_test_maps(torch.float32)[:3]
    torch.library.opcheck(torch.ops.pydiff.halo_pack.default, (maps, [1, 2, 1], False))
    buffer = ref.halo_pack(maps, [1, 2, 1], False)
    dests = [torch.zeros_like(m) for m in maps]
    torch.library.opcheck(torch.ops.pydiff.halo_unpack.default, (buffer, dests, [1, 2, 1], False))
