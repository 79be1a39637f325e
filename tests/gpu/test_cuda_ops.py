"""Every CUDA op against the pure-torch reference (same semantics as the CPU tests).

Build with a GPU: ``PYDIFF_CUDA=1 TORCH_CUDA_ARCH_LIST=<your arch> pip install
--no-build-isolation --no-deps .`` into an environment with a CUDA build of torch, then
``pytest tests/gpu``.
"""

from __future__ import annotations

import math

import pytest
import torch

import pydiff.ops as ops
from pydiff.ops import _reference as ref

DEV = "cuda"
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
TOL = {
    torch.float32: dict(atol=3e-5, rtol=3e-5),
    torch.float64: dict(atol=1e-12, rtol=1e-12),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
    torch.float16: dict(atol=3e-3, rtol=3e-3),
}


def test_cuda_kernels_are_registered():
    assert ops.backend() == "extension"
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("pydiff::")]
    assert len(names) == 6, names
    for name in names:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA"), name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("coef", ["float", "0dim_cpu", "0dim_dev", "batch", "position"])
@pytest.mark.parametrize("layout", ["contig", "strided", "mixed_dtype", "odd_size"])
def test_lincomb_cuda_matches_reference(dtype, coef, layout):
    g = torch.Generator(device=DEV).manual_seed(0)
    shape = (3, 5, 37) if layout == "odd_size" else (4, 8, 64)

    def rnd(dt=dtype):
        return torch.randn(shape, generator=g, device=DEV).to(dt)

    x, d1, d2, z = rnd(), rnd(), rnd(), rnd()
    if layout == "strided":
        d1 = torch.randn(shape[::-1], generator=g, device=DEV).to(dtype).permute(2, 1, 0)
    if layout == "mixed_dtype":
        x, z = x.float(), z.float()

    def c(i):
        v = 0.3 * (i + 1)
        if coef == "float":
            return v
        if coef == "0dim_cpu":
            return torch.tensor(v, dtype=torch.float64)
        if coef == "0dim_dev":
            return torch.tensor(v, dtype=torch.float64, device=DEV)
        if coef == "batch":
            return torch.rand(shape[0], dtype=torch.float64, device=DEV)
        return torch.rand(1, shape[1], shape[2], dtype=torch.float64, device=DEV)

    cs = [c(i) for i in range(4)]
    y = ops.lincomb([x, d1, d2], cs[:3], z, cs[3])
    args_t = [x, d1, d2, z]
    tens, index = [], []
    for cc in cs:
        if torch.is_tensor(cc):
            cc = cc.reshape(-1, 1, 1) if cc.dim() == 1 else cc
            index.append(len(tens))
            tens.append(cc)
        else:
            index.append(-1)
    scales = [1.0 if torch.is_tensor(cc) else cc for cc in cs]
    want = ref.lincomb(args_t, tens, index, scales)
    torch.testing.assert_close(y, want, **TOL[x.dtype])
    xx = x.clone()
    ops.lincomb([xx, d1, d2], cs[:3], z, cs[3], out=xx)  # in place
    torch.testing.assert_close(xx, want, **TOL[x.dtype])


def test_lincomb_cuda_autograd_and_compile():
    x = torch.randn(4, 6, device=DEV, dtype=torch.float64, requires_grad=True)
    h = torch.rand(4, device=DEV, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h: ops.lincomb([x, x * 2], [0.5, h]), (x, h))
    # 12 steps with coefficients from a float64 device table: one compilation, eager's result
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    table = torch.rand(12, 2, device=DEV, dtype=torch.float64)

    def step(x, c):
        return ops.lincomb([x, x.sin()], [c[0], c[1]])

    cnt = CompileCounterWithBackend("inductor")
    f = torch.compile(step, backend=cnt, fullgraph=True)
    y = y_eager = x.detach().float()
    for i in range(12):
        y, y_eager = f(y, table[i]), step(y_eager, table[i])
    assert cnt.frame_count == 1
    torch.testing.assert_close(y, y_eager)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D,Dv", [(40, 40), (64, 64), (80, 80), (160, 128), (8, 24)])
@pytest.mark.parametrize("masked", [False, True])
def test_attention_cuda_matches_reference(dtype, D, Dv, masked):
    g = torch.Generator(device=DEV).manual_seed(1)
    B, H, Lq, Lk = 2, 3, 133, 257
    q = torch.randn(B, H, Lq, D, generator=g, device=DEV).to(dtype)
    k = torch.randn(B, H, Lk, D, generator=g, device=DEV).to(dtype)
    v = torch.randn(B, H, Lk, Dv, generator=g, device=DEV).to(dtype)
    mask = None
    if masked:
        mask = torch.rand(B, Lk, generator=g, device=DEV) > 0.3
        mask[1] = False  # an all-masked batch entry: output 0, lse -inf
    scale = 1 / math.sqrt(D)
    out, lse = torch.ops.pydiff.attention.default(q, k, v, scale, mask)
    rout, rlse = ref.attention_with_lse(q, k, v, scale, mask)
    torch.testing.assert_close(out, rout, **TOL[dtype])
    torch.testing.assert_close(
        lse, rlse, **TOL[torch.float64 if dtype == torch.float64 else torch.float32]
    )
    if dtype in (torch.float32, torch.float64):
        ins = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        rins = [t.detach().double().requires_grad_() for t in (q, k, v)]
        gr = torch.randn_like(rout)
        ops.attention(*ins, scale=scale, mask=mask).backward(gr)
        ref.attention(*rins, scale=scale, mask=mask).backward(gr.double())
        for a, b in zip(ins, rins):
            torch.testing.assert_close(a.grad.double(), b.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_attention_cuda_matches_reference(dtype):
    g = torch.Generator(device=DEV).manual_seed(2)
    q = torch.rand(2, 4, 1000, 32, generator=g, device=DEV).to(dtype)
    k = torch.rand(2, 4, 700, 32, generator=g, device=DEV).to(dtype)
    v = torch.randn(2, 4, 700, 48, generator=g, device=DEV).to(dtype)
    torch.testing.assert_close(
        ops.linear_attention(q, k, v), ref.linear_attention(q, k, v), **TOL[dtype]
    )
    ins = [t.detach().double()[:, :, :50].clone().requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(lambda q, k, v: ops.linear_attention(q, k, v), ins)
