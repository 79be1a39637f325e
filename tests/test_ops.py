"""pydiff.ops.lincomb: compiled kernel vs pure-torch reference vs float64 ground truth.

The compiled tests need the installed extension (``make test`` installs it and sets
PYDIFF_REQUIRE_EXT=1, which turns "extension missing" from a skip into a failure).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pydiff.ops as ops

EXT = ops.backend() == "extension"
REQUIRE_EXT = os.environ.get("PYDIFF_REQUIRE_EXT") == "1"
needs_ext = pytest.mark.skipif(not EXT and not REQUIRE_EXT, reason="pydiff._C not loaded")

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
EPS = {torch.float32: 2e-7, torch.float64: 1e-15, torch.bfloat16: 8e-3, torch.float16: 1e-3}


@pytest.fixture(params=["extension", "reference"])
def backend(request, monkeypatch):
    """Run a test through the public API once per backend."""
    if request.param == "extension":
        if not EXT:
            if REQUIRE_EXT:
                pytest.fail("PYDIFF_REQUIRE_EXT=1 but pydiff._C is not loaded")
            pytest.skip("pydiff._C not loaded")
    else:
        monkeypatch.setattr(ops, "_EXT", False)
    return request.param


def test_backend_is_extension_when_required():
    # `make test` (and so CI) sets PYDIFF_REQUIRE_EXT=1: the compiled kernels must be in use.
    if REQUIRE_EXT:
        assert ops.backend() == "extension"
    assert ops.backend() in ("extension", "reference")


@needs_ext
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF check")
def test_extension_is_built_with_openmp():
    # at::parallel_for is `#pragma omp parallel` in a header: a build without -fopenmp still
    # works, silently on one thread (the first build did: BENCHMARKS.md, Kernels). The library
    # must link libgomp (torch's copy at run time).
    with open(ops._C.__file__, "rb") as f:
        assert b"libgomp.so" in f.read()


@needs_ext
@pytest.mark.skipif(
    not os.path.exists("/proc/cpuinfo") or not getattr(ops._C, "cpu_isa_auto", False),
    reason="needs /proc/cpuinfo and a build whose instruction set setup.py chose",
)
def test_extension_is_vectorized_for_this_cpu():
    # ATen's Vectorized<T> is scalar code unless compiled with the CPU_CAPABILITY defines and -m
    # flags; setup.py picks the widest set of the build machine (this one, for pip install .)
    with open("/proc/cpuinfo") as f:
        flags = set(f.read().split())
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma", "f16c"} <= flags:
        want = "AVX512"
    elif {"avx2", "fma", "f16c"} <= flags:
        want = "AVX2"
    else:
        want = "DEFAULT"
    assert ops.cpu_capability() == want


def test_docstring_examples():
    import doctest

    from pydiff.ops import _reference, _register

    for mod in (ops, _reference, _register):
        res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert res.failed == 0 and res.attempted > 0, mod.__name__


def test_no_ext_env_forces_reference():
    import subprocess

    code = "import pydiff.ops as o; print(o.backend())"
    env = {**os.environ, "PYDIFF_NO_EXT": "1"}
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd="/", check=True
    )
    assert res.stdout.strip() == "reference"


# --------------------------------------------------------------------------------------------
# ground truth


def _coef64(c, x: torch.Tensor) -> torch.Tensor | float:
    if not torch.is_tensor(c):
        return float(c)
    c = c.to(torch.float64)
    if c.dim() == 1 and x.dim() > 1 and c.shape[0] == x.shape[0]:
        c = c.reshape(-1, *([1] * (x.dim() - 1)))
    return c


def _truth(terms, coeffs, noise=None, noise_coeff=None):
    """float64 result and the float64 sum of |c_k T_k| (the scale of rounding errors)."""
    res = 0.0
    mag = 0.0
    pairs = list(zip(terms, coeffs))
    if noise is not None:
        pairs.append((noise, noise_coeff))
    for t, c in pairs:
        part = _coef64(c, terms[0]) * t.to(torch.float64)
        res = res + part
        mag = mag + part.abs()
    return res, mag


def _assert_close_to_truth(y, terms, coeffs, noise=None, noise_coeff=None, out_dtype=None):
    truth, mag = _truth(terms, coeffs, noise, noise_coeff)
    out_dtype = out_dtype or terms[0].dtype
    assert y.dtype == out_dtype
    assert y.shape == terms[0].shape
    # float32 accumulation (float64 for float64 results) plus the final rounding to out_dtype
    acc_eps = EPS[torch.float64] if out_dtype == torch.float64 else EPS[torch.float32]
    # (+ a floor for results in out_dtype's subnormal range, where spacing is absolute)
    tol = (
        4 * EPS[out_dtype] * truth.abs()
        + 8 * acc_eps * (mag + 1e-30) * len(terms)
        + 4 * EPS[out_dtype] * torch.finfo(out_dtype).tiny
    )
    # the inputs themselves were rounded before we computed the truth, so no tolerance for that
    err = (y.to(torch.float64) - truth).abs()
    bad = err > tol + 1e-300
    assert not bad.any(), f"max err {err.max().item():.3g}, max tol {tol.max().item():.3g}"


# --------------------------------------------------------------------------------------------
# hypothesis: random shapes, dtypes, strides, coefficient kinds


@st.composite
def lincomb_case(draw):
    ndim = draw(st.integers(1, 4))
    shape = draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim))
    if draw(st.booleans()):  # a long inner dim: crosses the kernel's 1024-element chunks
        shape[-1] = draw(st.sampled_from([1023, 1025, 2100]))
    out_dtype = draw(st.sampled_from(DTYPES))
    n_terms = draw(st.integers(1, 5))
    layouts = draw(
        st.lists(
            st.sampled_from(["contig", "transposed", "sliced", "expanded"]),
            min_size=n_terms + 1,
            max_size=n_terms + 1,
        )
    )
    term_dtypes = [out_dtype] + draw(
        st.lists(st.sampled_from(DTYPES), min_size=n_terms, max_size=n_terms)
    )
    kinds = draw(
        st.lists(
            st.sampled_from(
                ["float", "int", "0dim", "batch", "position", "lastdim", "position_strided"]
            ),
            min_size=n_terms + 1,
            max_size=n_terms + 1,
        )
    )
    coef_dtypes = draw(
        st.lists(st.sampled_from(DTYPES), min_size=n_terms + 1, max_size=n_terms + 1)
    )
    noise = draw(st.booleans())
    out_mode = draw(st.sampled_from(["none", "alias0", "fresh"]))
    seed = draw(st.integers(0, 2**31 - 1))
    return dict(
        shape=tuple(shape),
        out_dtype=out_dtype,
        n_terms=n_terms,
        layouts=layouts,
        term_dtypes=term_dtypes,
        kinds=kinds,
        coef_dtypes=coef_dtypes,
        noise=noise,
        out_mode=out_mode,
        seed=seed,
    )


def _make_tensor(shape, dtype, layout, g):
    if layout == "transposed" and len(shape) >= 2:
        t = torch.randn(shape[::-1], generator=g).to(dtype).permute(*reversed(range(len(shape))))
    elif layout == "sliced":
        big = torch.randn(*shape[:-1], shape[-1] * 2, generator=g).to(dtype)
        t = big[..., ::2]
    elif layout == "expanded" and len(shape) >= 2:
        t = torch.randn(1, *shape[1:], generator=g).to(dtype).expand(shape)
    else:
        t = torch.randn(shape, generator=g).to(dtype)
    assert t.shape == shape
    return t


def _make_coef(kind, shape, dtype, g):
    if kind == "float":
        return float(torch.randn((), generator=g))
    if kind == "int":
        return int(torch.randint(-3, 4, (), generator=g))
    if kind == "0dim":
        return torch.randn((), generator=g, dtype=torch.float64).to(dtype)
    if kind == "batch":
        return torch.randn(shape[0], generator=g, dtype=torch.float64).to(dtype)
    if kind == "position":  # broadcastable, some dims of size 1
        cs = tuple(s if i % 2 == 0 else 1 for i, s in enumerate(shape))
        return torch.randn(cs, generator=g, dtype=torch.float64).to(dtype)
    if kind == "lastdim":
        return torch.randn(shape[-1], generator=g, dtype=torch.float64).to(dtype)
    # full shape, non-contiguous
    return torch.randn(*shape, 2, generator=g, dtype=torch.float64).to(dtype)[..., 0]


def _build(case):
    g = torch.Generator().manual_seed(case["seed"])
    shape = case["shape"]
    n = case["n_terms"]
    terms = [_make_tensor(shape, case["term_dtypes"][k], case["layouts"][k], g) for k in range(n)]
    coeffs = [_make_coef(case["kinds"][k], shape, case["coef_dtypes"][k], g) for k in range(n)]
    noise = noise_coeff = None
    if case["noise"]:
        noise = torch.randn(shape, generator=g).to(case["term_dtypes"][n])
        noise_coeff = _make_coef(case["kinds"][n], shape, case["coef_dtypes"][n], g)
    return terms, coeffs, noise, noise_coeff


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=lincomb_case())
def test_lincomb_matches_truth_and_reference(case):
    terms, coeffs, noise, noise_coeff = _build(case)
    expanded0 = case["layouts"][0] == "expanded" and len(case["shape"]) >= 2
    backends = ["extension", "reference"] if EXT else ["reference"]
    results = {}
    for b in backends:
        saved = ops._EXT
        ops._EXT = b == "extension"
        try:
            if case["out_mode"] == "alias0" and not expanded0:
                x = terms[0].clone()  # keep the layout (clone preserves strides of dense tensors)
                args_terms = [x, *terms[1:]]
                y = ops.lincomb(args_terms, coeffs, noise, noise_coeff, out=x)
                assert y is x
            elif case["out_mode"] == "fresh":
                o = torch.empty(case["shape"], dtype=case["out_dtype"])
                y = ops.lincomb(terms, coeffs, noise, noise_coeff, out=o)
                assert y is o
            else:
                y = ops.lincomb(terms, coeffs, noise, noise_coeff)
                assert y.is_contiguous()
        finally:
            ops._EXT = saved
        _assert_close_to_truth(y, terms, coeffs, noise, noise_coeff)
        results[b] = y
    if len(results) == 2:
        a, r = results["extension"].double(), results["reference"].double()
        # both accumulate in the same precision; they may differ by the rounding of one FMA
        # and so by one ulp of the output dtype
        tol = 2 * EPS[case["out_dtype"]] * r.abs() + 1e-6
        assert ((a - r).abs() <= tol).all()


# --------------------------------------------------------------------------------------------
# specific cases


@pytest.mark.parametrize("dtype", DTYPES)
def test_solver_stage_float32_state_half_outputs(backend, dtype):
    # DESIGN: the solver state stays float32 while the model runs in half precision.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 33, generator=g)
    d1 = torch.randn(3, 4, 33, generator=g).to(dtype)
    d2 = torch.randn(3, 4, 33, generator=g).to(dtype)
    z = torch.randn(3, 4, 33, generator=g)
    table = torch.rand(12, 4, dtype=torch.float64)  # a solver's coefficient table
    c = table[5]
    y = ops.lincomb([x, d1, d2], [c[0], c[1], c[2]], z, c[3])
    assert y.dtype == torch.float32
    _assert_close_to_truth(y, [x, d1, d2], [c[0], c[1], c[2]], z, c[3])


@pytest.mark.parametrize("num_threads", [1, 2], indirect=True)
def test_large_tensor_parallel_path(backend, num_threads):
    # above the single-thread threshold, with a per-position coefficient and a strided term
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 256, 300, generator=g)
    e = torch.randn(4, 300, 256, generator=g).transpose(1, 2)
    c = torch.rand(1, 256, 300, generator=g, dtype=torch.float64)
    h = torch.rand(4, dtype=torch.float64)
    y = ops.lincomb([x, e], [h, c])
    _assert_close_to_truth(y, [x, e], [h, c])
    xx = x.clone()
    ops.lincomb([xx, e], [h, c], out=xx)
    assert torch.equal(xx, y)


@pytest.mark.parametrize("num_threads", [1, 2], indirect=True)
@pytest.mark.parametrize("where", ["new", "in_place", "misaligned"])
def test_large_solver_stage(backend, where, num_threads):
    # a 36 MB float32 solver stage (parallel chunks; >= 32 MB takes the CPU kernel's
    # non-temporal stores, a 16-byte-offset out the normal ones), into a new, an aliased and a
    # misaligned out
    g = torch.Generator().manual_seed(2)
    n = 9 << 20
    x, d1, d2, z = (torch.randn(n, generator=g) for _ in range(4))
    c = [0.9, torch.tensor(-0.3, dtype=torch.float64), 0.2, 0.05]
    if where == "new":
        y = ops.lincomb([x, d1, d2], c[:3], z, c[3])
    elif where == "in_place":
        y = x.clone()
        ops.lincomb([y, d1, d2], c[:3], z, c[3], out=y)
    else:
        y = torch.empty(n + 4)[4:]
        ops.lincomb([x, d1, d2], c[:3], z, c[3], out=y)
    _assert_close_to_truth(y, [x, d1, d2], c[:3], z, c[3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("switch", ["PYDIFF_LINCOMB_STREAM_STORES", "PYDIFF_LINCOMB_PREFETCH"])
@pytest.mark.parametrize("num_threads", [2], indirect=True)
@needs_ext  # the reference has no memory paths to switch
def test_memory_path_switches_give_identical_results(monkeypatch, dtype, switch, num_threads):
    # the kernel's streaming-store and prefetch switches change only how bytes move, not the
    # numbers (sizes just over the 32 MB streaming threshold, with a ragged tail)
    n = (33 << 20) // (torch.finfo(dtype).bits // 8) + 37
    g = torch.Generator().manual_seed(3)
    x, d1, z = (torch.randn(n, generator=g).to(dtype) for _ in range(3))
    streamed = ops.lincomb([x, d1], [0.7, -0.2], z, 0.1)
    _assert_close_to_truth(streamed, [x, d1], [0.7, -0.2], z, 0.1)
    monkeypatch.setenv(switch, "0")
    assert torch.equal(ops.lincomb([x, d1], [0.7, -0.2], z, 0.1), streamed)


def test_out_partial_overlap_is_correct(backend):
    # out overlaps a term at an offset: the kernel must not read elements it already wrote
    buf = torch.arange(10.0)
    src = buf[:-1].clone()
    ops.lincomb([buf[:-1]], [2.0], out=buf[1:])
    assert torch.equal(buf[1:], 2 * src)


def test_zero_size_and_single_element(backend):
    e = torch.empty(0, 3)
    assert ops.lincomb([e, e], [1.0, torch.ones(0)]).shape == (0, 3)
    s = torch.tensor(2.0)
    assert ops.lincomb([s, s], [0.5, torch.tensor(3.0)]).item() == 7.0


def test_nonfinite_values_propagate(backend):
    x = torch.tensor([1.0, float("inf"), float("nan"), 2.0])
    y = ops.lincomb([x], [2.0])
    assert y[0] == 2 and torch.isinf(y[1]) and torch.isnan(y[2]) and y[3] == 4


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x: ops.lincomb([x, torch.zeros(3, 5)], [1.0, 1.0]), r"terms\[1\] has shape"),
        (lambda x: ops.lincomb([x], [torch.ones(4)]), r"coeffs\[0\] has shape \(4,\)"),
        (lambda x: ops.lincomb([x], [1.0, 2.0]), "1 terms but 2 coeffs"),
        (lambda x: ops.lincomb([x.long()], [1.0]), r"terms\[0\] has dtype torch.int64"),
        (lambda x: ops.lincomb([x], [1.0], x, None), "noise was given without noise_coeff"),
        (lambda x: ops.lincomb([x], [1.0], x, torch.ones(7)), r"noise_coeff has shape"),
        (lambda x: ops.lincomb([x], ["a"]), r"coeffs\[0\] is str"),
        (lambda x: ops.lincomb([x], [1.0], out=torch.empty(2)), "out must be a float tensor"),
        (lambda x: ops.lincomb([], []), "non-empty"),
    ],
)
def test_bad_arguments_name_the_argument(backend, call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(torch.zeros(2, 3))


@needs_ext
def test_direct_op_call_checks_arguments():
    with pytest.raises(RuntimeError, match=r"coeffs\[0\] has shape"):
        torch.ops.pydiff.lincomb.default([torch.zeros(2, 3)], [torch.ones(4)], [0], [1.0])
    with pytest.raises(RuntimeError, match="one coefficient per term"):
        torch.ops.pydiff.lincomb.default([torch.zeros(2, 3)], [], [], [])
    with pytest.raises(RuntimeError, match="only 0 coefficient tensors"):
        torch.ops.pydiff.lincomb.default([torch.zeros(2, 3)], [], [0], [1.0])


# --------------------------------------------------------------------------------------------
# autograd, opcheck, torch.compile


def _grad_inputs():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    e = torch.randn(3, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(3, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    h = torch.rand(3, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.rand(2, 1, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.rand((), generator=g, dtype=torch.float64, requires_grad=True)
    return x, e, z, h, p, s


def test_gradcheck(backend):
    x, e, z, h, p, s = _grad_inputs()

    def f(x, e, z, h, p, s):
        return ops.lincomb([x, e, x], [0.7, h, p], z, s)

    assert torch.autograd.gradcheck(f, (x, e, z, h, p, s))
    assert torch.autograd.gradgradcheck(f, (x, e, z, h, p, s))


def test_grad_mixed_dtypes_and_out(backend):
    x = torch.randn(2, 5, requires_grad=True)
    d = torch.randn(2, 5, dtype=torch.bfloat16, requires_grad=True)
    h = torch.rand(2, dtype=torch.float64, requires_grad=True)
    y = ops.lincomb([x, d], [1.0, h])
    y.sum().backward()
    assert d.grad.dtype == torch.bfloat16 and h.grad.dtype == torch.float64
    torch.testing.assert_close(h.grad, d.detach().double().sum(1), atol=1e-5, rtol=1e-5)
    # out= under autograd goes through the functional op and records the copy
    o = torch.zeros(2, 5)
    x2 = x.detach().requires_grad_()
    ops.lincomb([x2, d.detach()], [2.0, 1.0], out=o).sum().backward()
    torch.testing.assert_close(x2.grad, torch.full((2, 5), 2.0))


def _opcheck_samples():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 4, 5, generator=g)
    e = torch.randn(3, 4, 5, generator=g).to(torch.bfloat16)
    h = torch.rand(3, 1, 1, generator=g, dtype=torch.float64)
    p = torch.rand(4, 5, generator=g)
    s = torch.tensor(0.25, dtype=torch.float64)
    xd = x.double().requires_grad_()
    return [
        ([x, e, x], [h, p], [-1, 0, 1], [0.5, 1.0, 1.0]),
        ([x.transpose(0, 2)], [s], [0], [2.0]),
        ([xd, xd.detach() * 2], [h.clone().requires_grad_()], [0, -1], [1.0, -1.0]),
        ([xd, xd.detach() * 2], [], [-1, -1], [1.0, -1.0]),
    ]


@needs_ext
def test_opcheck_lincomb():
    for args in _opcheck_samples():
        torch.library.opcheck(torch.ops.pydiff.lincomb.default, args)


@needs_ext
def test_opcheck_lincomb_out():
    for terms, coeffs, index, scales in _opcheck_samples():
        terms = [t.detach() for t in terms]
        coeffs = [c.detach() for c in coeffs]
        out = torch.empty(terms[0].shape, dtype=terms[0].dtype)
        torch.library.opcheck(
            torch.ops.pydiff.lincomb_out.default, (terms, coeffs, index, scales, out)
        )


@needs_ext
@pytest.mark.parametrize(
    "use_out,backend_name", [(False, "aot_eager"), (True, "aot_eager"), (True, "inductor")]
)
def test_compiled_sampling_loop_compiles_once(use_out, backend_name):
    # A 12-step loop whose coefficients come from a float64 table (as the solvers keep them):
    # the coefficients are tensors, so the compiled step does not guard on their values and
    # compiles once; fake kernels let dynamo/AOT trace the op (and lincomb_out's mutation).
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    g = torch.Generator().manual_seed(5)
    table = torch.rand(12, 3, generator=g, dtype=torch.float64)
    w = torch.randn(6, 6, generator=g)
    noises = torch.randn(12, 4, 6, generator=g)

    def step(x, c, z):
        d = torch.tanh(x @ w)  # stands in for the model
        if use_out:
            return ops.lincomb([x, d], [c[0], c[1]], z, c[2], out=x)
        return ops.lincomb([x, d], [c[0], c[1]], z, c[2])

    cnt = CompileCounterWithBackend(backend_name)  # inductor: the real compiler, C++ codegen
    compiled = torch.compile(step, backend=cnt, fullgraph=True)
    x_eager = torch.randn(4, 6, generator=g)
    x_comp = x_eager.clone()
    for i in range(12):
        x_eager = step(x_eager, table[i], noises[i])
        x_comp = compiled(x_comp, table[i], noises[i])
    assert cnt.frame_count == 1
    torch.testing.assert_close(x_comp, x_eager)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fast_path_takes_a_coefficient_row(dtype):
    # a solver table's row as one 1-D tensor: the C++ path reads it (no per-element views) and
    # gives bit-for-bit what a list of its elements gives; a strided row too
    g = torch.Generator().manual_seed(7)
    x, d, z = (torch.randn(5, 33, generator=g) for _ in range(3))
    table = torch.rand(4, 6, generator=g, dtype=dtype)
    row = table[:, 2]  # stride 6
    assert ops._lincomb_fast([x, d, z], row[:3], None, None, None) is not None
    got = ops.lincomb([x, d, z], row[:3])
    assert torch.equal(got, ops.lincomb([x, d, z], list(row[:3])))
    _assert_close_to_truth(got, [x, d, z], list(row[:3]))
    assert ops._lincomb_fast([x, d], row[:3], None, None, None) is None  # 3 values, 2 terms
    assert ops._lincomb_fast([x, d], table[:2, :2], None, None, None) is None  # 2-D: Python
    r = row[:2].clone().requires_grad_()
    assert ops._lincomb_fast([x, d], r, None, None, None) is None  # autograd: Python path
    got = ops.lincomb([x, d], r)
    got.sum().backward()
    torch.testing.assert_close(r.grad, torch.stack([x.sum(), d.sum()]).to(dtype))


@needs_ext
def test_eager_fast_path_hands_over_what_it_cannot_do():
    # The C++ fast path (csrc/python.cpp) must decline, not mishandle, anything unusual.
    fast = ops._lincomb_fast
    x = torch.randn(3, 4)
    h = torch.rand(3, dtype=torch.float64)
    assert fast([x, x], [1.0, h], None, None, None) is not None
    assert fast([x.requires_grad_(), x], [1.0, h], None, None, None) is None  # autograd
    x = x.detach()
    assert fast([x], [torch.ones(4, 1)], None, None, None) is None  # bad shape: Python errors
    assert fast([x], [True], None, None, None) is None  # bool is no coefficient
    assert fast([x.long()], [1.0], None, None, None) is None

    class Sub(torch.Tensor):
        pass

    assert fast([x.as_subclass(Sub)], [1.0], None, None, None) is None
    from torch.utils._python_dispatch import TorchDispatchMode

    class Log(TorchDispatchMode):
        seen: list = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Log.seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Log():
        assert fast([x], [2.0], None, None, None) is None
        y = ops.lincomb([x], [2.0])
    assert any("pydiff.lincomb" in s for s in Log.seen)
    torch.testing.assert_close(y, 2 * x)
    # both paths run the same kernel: bitwise equal
    a = ops.lincomb([x, x], [0.3, h])
    b = torch.ops.pydiff.lincomb.default([x, x], [h.reshape(3, 1)], [-1, 0], [0.3, 1.0])
    assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------
# lincomb_multi: several outputs in one pass


def _multi_truth(terms, rows):
    """float64 ground truth of lincomb_multi (every output, kept or not)."""
    values = [t.double() for t in terms]
    outs = []
    for row in rows:
        acc = torch.zeros(terms[0].shape, dtype=torch.float64)
        for k, c in enumerate(row):
            if c is None:
                continue
            if torch.is_tensor(c) and c.dim() == 1 and terms[0].dim() > 1:
                c = c.reshape(-1, *([1] * (terms[0].dim() - 1)))
            cv = c.double() if torch.is_tensor(c) else c
            acc = acc + cv * values[k]
        outs.append(acc)
        values.append(acc)
    return outs


MULTI_COEFS = ["float", "0dim", "batch", "position"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("coef", MULTI_COEFS)
@pytest.mark.parametrize("keep", [[True, True], [False, True], [True, False]])
def test_lincomb_multi_matches_truth(backend, dtype, coef, keep):
    # a DPM-Solver++(2M) step with an eps network, the output in half precision or not
    g = torch.Generator().manual_seed(5)
    shape = (3, 5, 71)
    x = torch.randn(shape, generator=g).to(dtype)
    out = torch.randn(shape, generator=g).to(torch.float16 if dtype == torch.float32 else dtype)
    m1 = torch.randn(shape, generator=g).to(dtype)

    def c(i):
        v = 0.3 * (i + 1) - 0.7
        if coef == "float":
            return v
        if coef == "0dim":
            return torch.tensor(v, dtype=torch.float64)
        if coef == "batch":
            return torch.rand(shape[0], generator=g, dtype=torch.float64)
        return torch.rand(1, shape[1], shape[2], generator=g, dtype=torch.float64)

    rows = [[c(0), c(1)], [c(2), None, c(3), c(4)]]
    got = ops.lincomb_multi([x, out, m1], rows, keep)
    truth = _multi_truth([x, out, m1], rows)
    want = [t for t, k in zip(truth, keep) if k]
    assert len(got) == len(want)
    for a, t in zip(got, want):
        assert a.dtype == dtype and a.shape == shape and a.is_contiguous()
        # three rounding steps at most: the half output, the kept x0, the result
        tol = 4 * EPS[dtype] * (t.abs() + 1) + 1e-6
        assert ((a.double() - t).abs() <= tol).all(), (a.double() - t).abs().max()


@pytest.mark.parametrize("num_threads", [1, 2], indirect=True)
def test_lincomb_multi_large_strided_and_parallel(backend, num_threads):
    # above the single-thread threshold; a transposed term, per-position and [B] coefficients,
    # an output that reads two earlier ones, four outputs
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, 256, 300, generator=g)
    e = torch.randn(4, 300, 256, generator=g).transpose(1, 2)
    p = torch.rand(1, 256, 300, generator=g, dtype=torch.float64)
    h = torch.rand(4, dtype=torch.float64)
    rows = [[0.5, h], [p, None, 2.0], [None, 1.0, -1.0, h], [1.0, None, None, None, 0.5]]
    got = ops.lincomb_multi([x, e], rows, [True, False, True, True])
    truth = _multi_truth([x, e], rows)
    for a, t in zip(got, [truth[0], truth[2], truth[3]]):
        torch.testing.assert_close(a.double(), t, atol=1e-5, rtol=1e-5)


def test_lincomb_multi_gradients_flow_through_terms_and_coefficients(backend):
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    out = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    a = torch.rand(3, dtype=torch.float64, requires_grad=True)

    def f(x, out, a):
        x0, nxt = ops.lincomb_multi([x, out], [[a, -0.5], [0.3, None, 2.0]])
        return x0.sin() + nxt

    assert torch.autograd.gradcheck(f, (x, out, a))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda x: ops.lincomb_multi([x], [[1.0, 2.0]]), r"rows\[0\] has 2 entries"),
        (lambda x: ops.lincomb_multi([x], [[1.0]] * 5), "1 to 4"),
        (lambda x: ops.lincomb_multi([x], [[1.0]], [True, False]), "keep has 2"),
        (lambda x: ops.lincomb_multi([x, x[:1]], [[1.0, 1.0]]), r"terms\[1\] has shape"),
        (lambda x: ops.lincomb_multi([x], [[torch.ones(7)]]), r"rows\[0\]\[0\] has shape"),
    ],
)
def test_lincomb_multi_bad_arguments_name_the_argument(backend, call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(torch.zeros(3, 4))


@needs_ext
def test_lincomb_multi_direct_op_checks_and_opcheck():
    x, e = torch.randn(3, 4), torch.randn(3, 4)
    h = torch.rand(3, 1, dtype=torch.float64)
    args = ([x, e], [h], [-1, 0, -1, -1], [0.5, 1.0, 2.0, 1.0], [0, 1, 0, 2], [2, 2], [1, 1])
    torch.library.opcheck(torch.ops.pydiff.lincomb_multi.default, args)
    with pytest.raises(RuntimeError, match="earlier output"):
        torch.ops.pydiff.lincomb_multi.default([x], [], [-1], [1.0], [1], [1], [1])
    with pytest.raises(RuntimeError, match="counts add up"):
        torch.ops.pydiff.lincomb_multi.default([x], [], [-1], [1.0], [0], [2], [1])


@needs_ext
def test_lincomb_multi_fast_path_agrees_with_the_python_path(monkeypatch):
    g = torch.Generator().manual_seed(7)
    x, e, m = (torch.randn(2, 9, generator=g) for _ in range(3))
    row = torch.rand(3, dtype=torch.float64)
    rows = [[row[0], row[1]], [row[2], None, 0.5, 1.5]]
    fast = ops.lincomb_multi([x, e, m], rows, [True, True])
    monkeypatch.setattr(ops, "_lincomb_multi_fast", None)
    slow = ops.lincomb_multi([x, e, m], rows, [True, True])
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------
# the CPU output cache (csrc/cpu/output_cache.cpp)


@needs_ext
def test_output_cache_hands_a_freed_result_to_the_next_step():
    ops.empty_cache()
    a, b = torch.randn(3, 1 << 15), torch.randn(3, 1 << 15)
    first = ops.lincomb([a, b], [0.5, 2.0])
    ptr = first.data_ptr()
    del first  # a sampler drops the result of a step or two before
    assert ops._C.output_cache_bytes() == a.numel() * 4
    again = ops.lincomb([a, b], [1.0, -1.0])
    assert again.data_ptr() == ptr and ops._C.output_cache_bytes() == 0
    torch.testing.assert_close(again, a - b, rtol=0, atol=0)
    # lincomb_multi's results come from the same cache
    outs = ops.lincomb_multi([a, b], [[1.0, 1.0], [2.0, 0.0]], [True, True])
    torch.testing.assert_close(outs[0], a + b, rtol=0, atol=0)
    torch.testing.assert_close(outs[1], 2 * a, rtol=0, atol=0)
    del outs
    assert ops._C.output_cache_bytes() == 2 * a.numel() * 4
    assert ops.empty_cache() == 2 * a.numel() * 4 and ops._C.output_cache_bytes() == 0
    # small results are left to the system allocator
    small = ops.lincomb([a[:, :8], b[:, :8]], [1.0, 1.0])
    del small
    assert ops._C.output_cache_bytes() == 0


@needs_ext
def test_output_cache_tensors_behave_as_any_tensor():
    a = torch.randn(1 << 16)
    out = ops.lincomb([a], [2.0])
    out.resize_(1 << 17)  # a larger storage: allocated by the same allocator, data kept
    torch.testing.assert_close(out[:1 << 16], 2 * a, rtol=0, atol=0)
    out[1 << 16:] = 0.0  # the new tail is uninitialized, as with torch's own allocator
    view = out.numpy()  # shares the block
    view[0] = 7.0
    assert out[0].item() == 7.0
    c = out.clone()
    assert torch.equal(c, out)
    loaded = torch.load(__import__("io").BytesIO(_saved(out)), weights_only=True)
    assert torch.equal(loaded, out)
    del out, view, c
    ops.empty_cache()


def _saved(t):
    import io

    buf = io.BytesIO()
    torch.save(t, buf)
    return buf.getvalue()


@needs_ext
def test_output_cache_is_bounded_and_can_be_turned_off():
    import subprocess

    code = ("import torch, pydiff.ops as o; a = torch.randn(1 << 20); "
            "r = [o.lincomb([a], [1.0]) for _ in range(3)]; del r; "
            "print(o._C.output_cache_limit(), o._C.output_cache_bytes())")
    for mb, expect in (("0", "0 0"), ("8", f"{8 << 20} {2 * (4 << 20)}")):
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "PYDIFF_CPU_CACHE_MB": mb}, cwd="/", check=True)
        assert res.stdout.split() == expect.split()


@needs_ext
def test_output_cache_is_thread_safe():
    from concurrent.futures import ThreadPoolExecutor

    xs = [torch.randn(1 << 15) for _ in range(8)]

    def work(i):
        x = xs[i]
        for _ in range(200):
            y = ops.lincomb([x, x], [1.0, 1.0])
            torch.testing.assert_close(y, 2 * x, rtol=0, atol=0)
        return True

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(8)))
