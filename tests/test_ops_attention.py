"""pydiff.ops.attention and pydiff.ops.linear_attention: compiled kernels vs reference."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import pydiff.ops as ops
from pydiff.ops import _reference as ref

EXT = ops.backend() == "extension"
REQUIRE_EXT = os.environ.get("PYDIFF_REQUIRE_EXT") == "1"
needs_ext = pytest.mark.skipif(not EXT and not REQUIRE_EXT, reason="pydiff._C not loaded")


def kernel_attention(*args, **kw):
    """pydiff's own attention op (compiled kernel, or the reference where switched off),
    whatever ``impl="auto"`` would choose: these tests are about the kernel."""
    return ops.attention(*args, impl="kernel", **kw)


TOL = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float64: dict(atol=1e-12, rtol=1e-12),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
    torch.float16: dict(atol=3e-3, rtol=3e-3),
}


def _qkv(B, H, Lq, Lk, D, Dv, dtype, layout="contig", seed=0, positive=False):
    g = torch.Generator().manual_seed(seed)

    def make(L, d):
        if layout == "blhd":  # projections reshaped to [B, L, H, D] then transposed: no copy
            t = torch.randn(B, L, H, d, generator=g).transpose(1, 2)
        else:
            t = torch.randn(B, H, L, d, generator=g)
        t = t.abs() if positive else t
        return t.to(dtype)

    return make(Lq, D), make(Lk, D), make(Lk, Dv)


# --------------------------------------------------------------------------------------------
# softmax attention


@needs_ext
@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 2),
    H=st.integers(1, 3),
    Lq=st.integers(1, 300),
    Lk=st.integers(1, 600),
    D=st.sampled_from([1, 8, 40, 64]),
    Dv=st.sampled_from([8, 24, 64]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
    layout=st.sampled_from(["contig", "blhd"]),
    masked=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_attention_matches_reference(B, H, Lq, Lk, D, Dv, dtype, layout, masked, seed):
    q, k, v = _qkv(B, H, Lq, Lk, D, Dv, dtype, layout, seed)
    mask = None
    if masked:
        mask = torch.rand(B, Lk, generator=torch.Generator().manual_seed(seed)) > 0.3
        mask[0, 0] = True
    scale = 0.7 / math.sqrt(D)
    out, lse = torch.ops.pydiff.attention.default(q, k, v, scale, mask)
    rout, rlse = ref.attention_with_lse(q, k, v, scale, mask)
    assert out.dtype == dtype and out.shape == (B, H, Lq, Dv)
    torch.testing.assert_close(out, rout, **TOL[dtype])
    torch.testing.assert_close(
        lse, rlse, **TOL[torch.float64 if dtype == torch.float64 else torch.float32]
    )


def test_attention_all_masked_row_is_zero_not_nan():
    q, k, v = _qkv(2, 2, 5, 7, 8, 8, torch.float32)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1] = False
    out = kernel_attention(q, k, v, mask=mask)
    assert torch.isfinite(out).all() and (out[1] == 0).all()
    torch.testing.assert_close(out[0], kernel_attention(q[:1], k[:1], v[:1])[0])


def test_attention_agrees_with_sdpa():
    q, k, v = _qkv(2, 4, 77, 130, 32, 32, torch.float32, "blhd")
    mask = torch.rand(2, 130) > 0.2
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    torch.testing.assert_close(kernel_attention(q, k, v, mask=mask), want, atol=2e-5, rtol=2e-5)


@needs_ext
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("num_threads", [1, 5], indirect=True)
def test_attention_grads_match_reference(masked, num_threads):
    # long enough for several key and query tiles in the backward kernel; with 5 threads and
    # 2 (batch, head) pairs the backward splits each pair's 3 key blocks into 3 parallel parts
    q, k, v = _qkv(1, 2, 150, 300, 16, 12, torch.float32, "blhd")
    mask = (torch.rand(1, 300) > 0.5) if masked else None
    ins = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    rins = [t.detach().double().requires_grad_() for t in (q, k, v)]
    g = torch.randn(1, 2, 150, 12)
    kernel_attention(*ins, mask=mask).backward(g)
    ref.attention(*rins, mask=mask).backward(g.double())
    for a, b in zip(ins, rins):
        torch.testing.assert_close(a.grad, b.grad.float(), atol=5e-5, rtol=5e-5)


@needs_ext
def test_attention_gradcheck_float64_with_lse_grad():
    q, k, v = _qkv(1, 2, 5, 9, 4, 3, torch.float64, seed=1)
    mask = torch.tensor([[True] * 7 + [False] * 2])

    def f(q, k, v):
        out, lse = torch.ops.pydiff.attention.default(q, k, v, 0.5, mask)
        return out, lse

    assert torch.autograd.gradcheck(f, [t.requires_grad_() for t in (q, k, v)])


@needs_ext
def test_attention_opcheck():
    q, k, v = _qkv(1, 2, 33, 65, 8, 8, torch.float32, "blhd")
    mask = torch.rand(1, 65) > 0.3
    for args in [(q, k, v, 0.3, None), (q, k, v, 0.3, mask)]:
        torch.library.opcheck(torch.ops.pydiff.attention.default, args)
    qd, kd, vd = [t.double().requires_grad_() for t in (q, k, v)]
    torch.library.opcheck(torch.ops.pydiff.attention.default, (qd, kd, vd, 0.3, mask))
    # the backward op on its own (schema, fake kernel), with and without a gradient of lse
    out, lse = torch.ops.pydiff.attention(q, k, v, 0.3, mask)
    g = torch.randn_like(out)
    for grad_lse in (None, torch.randn_like(lse)):
        torch.library.opcheck(
            torch.ops.pydiff.attention_backward.default,
            (g, grad_lse, q, k, v, out, lse, 0.3, mask),
        )


def test_attention_bad_arguments():
    q, k, v = _qkv(1, 2, 4, 5, 8, 8, torch.float32)
    with pytest.raises(ValueError, match="mask must be a bool key-padding mask"):
        kernel_attention(q, k, v, mask=torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="k has Lk=5 keys but v has 4"):
        kernel_attention(q, k, v[:, :, :4])
    with pytest.raises(ValueError, match=r"must be \[B, H, L, D\]"):
        kernel_attention(q[0], k, v)
    with pytest.raises(ValueError, match="share a dtype"):
        kernel_attention(q.double(), k, v)


# --------------------------------------------------------------------------------------------
# linear attention


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contig", "blhd"])
def test_linear_attention_matches_reference(dtype, layout):
    q, k, v = _qkv(2, 3, 1500, 257, 16, 24, dtype, layout, positive=True)
    torch.testing.assert_close(
        ops.linear_attention(q, k, v), ref.linear_attention(q, k, v), **TOL[dtype]
    )


@needs_ext
@settings(max_examples=30, deadline=None)
@given(
    B=st.integers(1, 2),
    H=st.integers(1, 3),
    Lq=st.integers(1, 400),
    Lk=st.integers(1, 2500),  # past the kernel's 2048-key chunk
    D=st.sampled_from([1, 8, 40, 64]),
    Dv=st.sampled_from([1, 8, 24, 64]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
    layout=st.sampled_from(["contig", "blhd"]),
    seed=st.integers(0, 1000),
)
def test_linear_attention_matches_reference_random_shapes(B, H, Lq, Lk, D, Dv, dtype, layout,
                                                          seed):
    q, k, v = _qkv(B, H, Lq, Lk, D, Dv, dtype, layout, seed, positive=True)
    out = torch.ops.pydiff.linear_attention.default(q, k, v, 1e-6)
    assert out.dtype == dtype and out.shape == (B, H, Lq, Dv)
    torch.testing.assert_close(out, ref.linear_attention(q, k, v), **TOL[dtype])


@needs_ext
def test_linear_attention_long_keys_large_output():
    # keys over several of the kernel's key chunks, and an output large enough (8 MB) for the
    # huge-page hint
    q, k, v = _qkv(1, 2, 16384, 5000, 64, 64, torch.float32, "blhd", positive=True)
    want = ref.linear_attention(q.double(), k.double(), v.double())
    torch.testing.assert_close(ops.linear_attention(q, k, v).double(), want, atol=1e-5, rtol=1e-5)


@needs_ext
def test_attention_grads_of_fully_masked_batch_are_zero():
    q, k, v = _qkv(2, 2, 70, 140, 8, 8, torch.float32)
    mask = torch.ones(2, 140, dtype=torch.bool)
    mask[1] = False
    ins = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    kernel_attention(*ins, mask=mask).sum().backward()
    for t in ins:
        assert torch.isfinite(t.grad).all() and (t.grad[1] == 0).all()


@needs_ext
@pytest.mark.parametrize("num_threads", [1, 2], indirect=True)
def test_linear_attention_grads_with_fewer_heads_than_threads(num_threads):
    # B * H = 1: at 2 threads the kernels run the head's GEMMs on BLAS's threads instead
    q, k, v = _qkv(1, 1, 2100, 700, 16, 12, torch.float32, "blhd", positive=True)
    ins = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    rins = [t.detach().double().requires_grad_() for t in (q, k, v)]
    g = torch.randn(1, 1, 2100, 12)
    out = ops.linear_attention(*ins)
    want = ref.linear_attention(*rins)
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-5)
    out.backward(g)
    want.backward(g.double())
    for a, b in zip(ins, rins):
        torch.testing.assert_close(a.grad.double(), b.grad, atol=1e-4, rtol=1e-4)


def test_linear_attention_is_normalized():
    # with v constant the output is that constant: the weights of each query sum to one
    q, k, _ = _qkv(1, 2, 50, 40, 8, 8, torch.float32, positive=True)
    v = torch.full((1, 2, 40, 3), 2.5)
    torch.testing.assert_close(ops.linear_attention(q, k, v), torch.full((1, 2, 50, 3), 2.5))


@needs_ext
def test_linear_attention_gradcheck_and_opcheck():
    q, k, v = _qkv(1, 2, 20, 7, 3, 5, torch.float64, "blhd", positive=True)
    ins = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(lambda q, k, v: ops.linear_attention(q, k, v), ins)
    torch.library.opcheck(torch.ops.pydiff.linear_attention.default, (*ins, 1e-6))
    torch.library.opcheck(
        torch.ops.pydiff.linear_attention.default, (q.float(), k.float(), v.float(), 1e-3)
    )
    g = torch.randn(1, 2, 20, 5, dtype=torch.float64)
    torch.library.opcheck(torch.ops.pydiff.linear_attention_backward.default, (g, q, k, v, 1e-6))


@pytest.mark.parametrize("use_ext", [True, False])
def test_attention_lse_merges_key_splits_exactly(use_ext, monkeypatch):
    # return_lse is what sequence/patch parallelism needs: attention over key parts, merged by
    # their log-sum-exps, is attention over all keys, in value and in gradient (masks included:
    # a part whose keys are all masked has lse -inf and weight 0)
    if use_ext and ops.backend() != "extension":
        pytest.skip("pydiff._C not loaded")
    monkeypatch.setattr(ops, "_EXT", use_ext and ops._EXT)
    q, k, v = _qkv(2, 2, 9, 12, 8, 6, torch.float64, seed=3)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 6:] = False  # batch entry 1: its second part is all masked
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]

    def merged(q, k, v):
        parts = [
            kernel_attention(q, kp, vp, mask=mp, return_lse=True)
            for kp, vp, mp in zip(k.split(6, 2), v.split(6, 2), mask.split(6, 1))
        ]
        lse = torch.logsumexp(torch.stack([lp for _, lp in parts]), dim=0)
        return sum((lp - lse).exp()[..., None] * op for op, lp in parts), lse

    out, lse = merged(*leaves)
    want, want_lse = kernel_attention(q, k, v, mask=mask, return_lse=True)
    torch.testing.assert_close(out, want)
    s = ((q @ k.transpose(-1, -2)) / math.sqrt(8)).masked_fill(~mask[:, None, None], -math.inf)
    torch.testing.assert_close(lse, torch.logsumexp(s, -1))
    torch.testing.assert_close(want_lse, lse)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    full = [t.clone().requires_grad_() for t in (q, k, v)]
    (kernel_attention(*full, mask=mask) * g).sum().backward()
    for a, b in zip(leaves, full):
        torch.testing.assert_close(a.grad, b.grad)


@needs_ext
def test_double_backward_through_the_kernels_raises():
    # second-order terms would otherwise come back as zeros with a warning
    q, k, v = (t.requires_grad_() for t in _qkv(1, 2, 6, 7, 4, 4, torch.float32))
    for f in (kernel_attention, ops.linear_attention):
        args = (q, k, v) if f is kernel_attention else tuple(t.abs() for t in (q, k, v))
        (g,) = torch.autograd.grad(f(*args).sum(), q, create_graph=True)
        with pytest.raises(RuntimeError, match="double backward"):
            g.sum().backward()
