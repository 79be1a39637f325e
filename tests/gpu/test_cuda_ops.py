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
    assert len(names) == 9, names
    for name in names:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA"), name


def _coef(kind: str, i: int, shape: tuple[int, ...]):
    """A solver coefficient of the given kind: a number, 0-dim (host or device), per sample
    or per position (random, so draw once per comparison)."""
    v = 0.3 * (i + 1)
    if kind == "float":
        return v
    if kind == "0dim_cpu":
        return torch.tensor(v, dtype=torch.float64)
    if kind == "0dim_dev":
        return torch.tensor(v, dtype=torch.float64, device=DEV)
    if kind == "batch":
        return torch.rand(shape[0], dtype=torch.float64, device=DEV)
    return torch.rand(1, shape[1], shape[2], dtype=torch.float64, device=DEV)


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
        return _coef(coef, i, shape)

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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("coef", ["float", "0dim_cpu", "0dim_dev", "batch", "position"])
@pytest.mark.parametrize("out_dtype", ["same", "half_output"])
def test_lincomb_multi_cuda_matches_reference(dtype, coef, out_dtype):
    # a solver step with an eps network: x0 = a x + b out (kept), x_next = c x + d x0 + e m1
    g = torch.Generator(device=DEV).manual_seed(2)
    shape = (4, 8, 67)

    def rnd(dt=dtype):
        return torch.randn(shape, generator=g, device=DEV).to(dt)

    x, m1 = rnd(), rnd()
    out = rnd(torch.float16 if out_dtype == "half_output" else dtype)

    def c(i):
        return _coef(coef, i, shape)

    rows = [[c(0), c(1)], [c(2), None, c(3), c(4)]]
    for keep in ([True, True], [False, True]):
        got = ops.lincomb_multi([x, out, m1], rows, keep)
        want = ops.lincomb_multi([x.cpu(), out.cpu(), m1.cpu()],
                                 [[v.cpu() if torch.is_tensor(v) else v for v in r] for r in rows],
                                 keep)
        assert len(got) == sum(keep)
        for a, b in zip(got, want):
            assert a.dtype == x.dtype and a.is_contiguous()
            torch.testing.assert_close(a.cpu(), b, **TOL[dtype])
    # strided terms and a wide state (the generic plan with several dims)
    xs = torch.randn(shape[::-1], generator=g, device=DEV).to(dtype).permute(2, 1, 0)
    rows = [[c(0), c(1)], [c(2), None, c(3)]]  # drawn once: c() is random for tensor kinds
    got = ops.lincomb_multi([xs, out], rows)
    want = ops.lincomb_multi([xs.cpu(), out.cpu()],
                             [[v.cpu() if torch.is_tensor(v) else v for v in r] for r in rows])
    for a, b in zip(got, want):
        torch.testing.assert_close(a.cpu(), b, **TOL[dtype])


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("solver", ["dpmpp_2m", "ddim", "unipc"])
def test_fused_solver_steps_cuda_match_cpu(prediction, solver):
    # eps/v networks reach the solver as the output plus the map (lincomb_multi on the GPU)
    import pydiff

    sched = pydiff.DiscreteSchedule.scaled_linear()
    model = pydiff.Denoiser(lambda x, t: 0.1 * x, sched, prediction=prediction)
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    on_gpu = pydiff.sample(model, x_T.to(DEV), solver, steps=8).cpu()
    on_cpu = pydiff.sample(model, x_T, solver, steps=8)
    torch.testing.assert_close(on_gpu, on_cpu, atol=1e-4, rtol=1e-4)


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
        ops.attention(*ins, scale=scale, mask=mask, impl="kernel").backward(gr)
        ref.attention(*rins, scale=scale, mask=mask).backward(gr.double())
        for a, b in zip(ins, rins):
            torch.testing.assert_close(a.grad.double(), b.grad, atol=1e-4, rtol=1e-4)


GRAD_TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=6e-2, rtol=6e-2),
    torch.float16: dict(atol=1e-2, rtol=1e-2),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D,Dv", [(64, 64), (40, 40), (128, 72)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("return_lse", [False, True])
def test_attention_dispatch_matches_reference(dtype, D, Dv, masked, return_lse):
    # what impl="auto" runs on CUDA (SDPA; float64 with the lse: the kernel) keeps pydiff's
    # semantics: all-masked rows give 0 (and lse -inf), Lq != Lk, head dims that are no
    # multiple of 8, and gradients through the lse
    g = torch.Generator(device=DEV).manual_seed(3)
    B, H, Lq, Lk = 2, 3, 100, 77
    q = torch.randn(B, H, Lq, D, generator=g, device=DEV).to(dtype)
    k = torch.randn(B, H, Lk, D, generator=g, device=DEV).to(dtype)
    v = torch.randn(B, H, Lk, Dv, generator=g, device=DEV).to(dtype)
    mask = None
    if masked:
        mask = torch.rand(B, Lk, generator=g, device=DEV) > 0.3
        mask[1] = False
    kernel = dtype == torch.float64 and return_lse
    assert ops.attention_backend(q, k, v, mask, return_lse=return_lse) == (
        "kernel" if kernel else "sdpa"
    )
    ins = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    rins = [t.detach().double().requires_grad_() for t in (q, k, v)]
    got = ops.attention(*ins, mask=mask, return_lse=return_lse)
    want = ref.attention_with_lse(*rins, 1 / math.sqrt(D), mask)
    if return_lse:
        lse_tol = GRAD_TOL[torch.float64 if dtype == torch.float64 else torch.float32]
        torch.testing.assert_close(got[1].double(), want[1], **lse_tol)
    else:
        got, want = (got,), want[:1]
    assert torch.isfinite(got[0]).all()
    torch.testing.assert_close(got[0].double(), want[0].double(), **TOL[dtype])
    go = torch.randn(B, H, Lq, Dv, generator=g, device=DEV, dtype=torch.float64)
    gl = torch.randn(B, H, Lq, generator=g, device=DEV, dtype=torch.float64)

    def loss(outs):
        total = (outs[0].double() * go).sum()
        if len(outs) > 1:  # all-masked rows have lse -inf: no gradient goes through those
            lse = outs[1].double()
            total = total + (torch.where(torch.isfinite(lse), lse, 0.0) * gl).sum()
        return total

    loss(got).backward()
    loss(want).backward()
    for a, b in zip(ins, rins):
        torch.testing.assert_close(a.grad.double(), b.grad, **GRAD_TOL[dtype])


def test_attention_float64_dispatch_and_sdpa_impl_raises_for_lse():
    q = torch.randn(1, 2, 8, 16, device=DEV, dtype=torch.float64)
    assert ops.attention_backend(q, q, q) == "sdpa"  # SDPA's math backend: faster while it fits
    assert ops.attention_backend(q, q, q, return_lse=True) == "kernel"
    big = q[:1, :1, :1].expand(64, 16, 8192, 16)  # scores too large to materialize: O(L) kernel
    assert ops.attention_backend(big, big, big) == "kernel"
    with pytest.raises(ValueError, match="return_lse"):
        ops.attention(q, q, q, return_lse=True, impl="sdpa")


def test_attention_module_compiles_on_cuda():
    # a network using pydiff.nn attention (masked and unmasked) under torch.compile
    from pydiff.nn import MultiHeadAttention

    torch._dynamo.reset()
    mha = MultiHeadAttention(64, num_heads=4).to(DEV)
    x = torch.randn(2, 33, 64, device=DEV)
    keep = torch.ones(2, 33, dtype=torch.bool, device=DEV)
    keep[1, 20:] = False
    compiled = torch.compile(mha)
    for mask in (None, keep):
        torch.testing.assert_close(compiled(x, mask=mask), mha(x, mask=mask), atol=1e-4,
                                   rtol=1e-4)
    out = compiled(x, mask=keep)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mha.parameters())


def test_attention_kernel_launch_fits_every_head_dim():
    # the float64 backward once asked for more than 48 KB of shared memory at D = 64 and 80
    for D in (8, 64, 80, 128, 256):
        q = torch.randn(1, 2, 19, D, device=DEV, dtype=torch.float64, requires_grad=True)
        ops.attention(q, q, q, impl="kernel").sum().backward()
        assert torch.isfinite(q.grad).all()


LINEAR_PATHS = [("kernel", "gemm"), ("gemm", "gemm"), ("kernel", "fused"), ("gemm", "fused")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape", [(2, 4, 1000, 700, 32, 48), (1, 3, 300, 4100, 130, 70), (1, 2, 77, 50, 64, 143)]
)
@pytest.mark.parametrize("paths", LINEAR_PATHS)
def test_linear_attention_cuda_matches_reference(dtype, shape, paths, monkeypatch):
    # every implementation of each step (PYDIFF_LINEAR_KV / PYDIFF_LINEAR_APPLY, read per call)
    monkeypatch.setenv("PYDIFF_LINEAR_KV", paths[0])
    monkeypatch.setenv("PYDIFF_LINEAR_APPLY", paths[1])
    B, H, Lq, Lk, D, Dv = shape
    g = torch.Generator(device=DEV).manual_seed(2)
    q = torch.rand(B, H, Lq, D, generator=g, device=DEV).to(dtype)
    k = torch.rand(B, H, Lk, D, generator=g, device=DEV).to(dtype)
    v = torch.randn(B, H, Lk, Dv, generator=g, device=DEV).to(dtype)
    want = ref.linear_attention(q.double(), k.double(), v.double())
    torch.testing.assert_close(ops.linear_attention(q, k, v).double(), want, **TOL[dtype])
    # non-contiguous inputs ([B, L, H, D] projections viewed as [B, H, L, D])
    qt, kt, vt = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    torch.testing.assert_close(ops.linear_attention(qt, kt, vt).double(), want, **TOL[dtype])


@pytest.mark.parametrize("kv_path", ["kernel", "gemm"])
def test_linear_attention_cuda_gradcheck(kv_path, monkeypatch):
    monkeypatch.setenv("PYDIFF_LINEAR_KV", kv_path)
    g = torch.Generator(device=DEV).manual_seed(4)
    ins = [torch.rand(1, 2, n, d, generator=g, device=DEV, dtype=torch.float64).requires_grad_()
           for n, d in ((5, 3), (6, 3), (6, 2))]
    assert torch.autograd.gradcheck(lambda q, k, v: ops.linear_attention(q, k, v), ins)


@pytest.mark.parametrize("dtype", DTYPES + [torch.int8])  # int8: a DiT partial's wire
@pytest.mark.parametrize("side", ["top", "bottom"])
def test_halo_pack_unpack_cuda_match_reference(dtype, side):
    from pydiff.testing.distributed import halo_test_maps

    maps = halo_test_maps(dtype, DEV)
    # more maps than one launch groups (24), to cover the grouping
    maps = maps + [torch.randn(1, 3, 4, 5, device=DEV).to(dtype) for _ in range(25)]
    rows = [(i % 3) if m.shape[2] >= 2 else 1 for i, m in enumerate(maps)]
    top = side == "top"
    buffer = ops.halo_pack(maps, rows, side)
    assert torch.equal(buffer, ref.halo_pack(maps, rows, top))
    dests = [torch.zeros_like(m) for m in maps]
    dests_ref = [d.clone() for d in dests]
    ops.halo_unpack(buffer, dests, rows, side)
    ref.halo_unpack(buffer, dests_ref, rows, top)
    for d, r in zip(dests, dests_ref):
        assert torch.equal(d, r)
