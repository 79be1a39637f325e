"""pydiff.domains.medical.operators: exact adjoints, FBP accuracy, MRI identity, masks, noise."""

from __future__ import annotations

import math

import pytest
import torch
from pydiff.domains.medical import (
    CTProjector,
    GaussianNoise,
    MRIMask,
    MRIOperator,
    PoissonNoise,
    coil_sensitivities,
    operators,
    shepp_logan,
)

from pydiff.errors import InputError


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Real inner product <a, b> (for complex tensors: Re sum conj(a) b)."""
    if a.is_complex() or b.is_complex():
        return torch.vdot(a.to(torch.complex128).flatten(), b.to(torch.complex128).flatten())
    return (a.double() * b.double()).sum()


def _dot_test(op, x: torch.Tensor, generator: torch.Generator) -> float:
    y = op.A(x)
    if y.is_complex():
        r = torch.view_as_complex(torch.randn((*y.shape, 2), generator=generator)).to(y.dtype)
    else:
        r = torch.randn(y.shape, generator=generator, dtype=y.dtype)
    lhs = _inner(y, r)
    rhs = _inner(x.to(r.dtype) if r.is_complex() else x, op.A_adjoint(r))
    return float(abs(lhs - rhs) / abs(lhs))


CT_CASES = {
    "parallel": dict(angles=45),
    "fan": dict(angles=40, geometry="fan"),
    "fan_custom": dict(angles=24, geometry="fan", source_distance=100.0, detector_distance=30.0,
                       detectors=70),
    "sparse_view": dict(angles=8),
    "limited_angle": dict(angles=torch.linspace(0, math.pi / 2, 30)),
    "explicit_list": dict(angles=[0.0, 0.3, 1.1, 2.9]),
    "fan_limited": dict(angles=torch.linspace(0, math.pi, 25), geometry="fan"),
}


@pytest.mark.parametrize("path", ["sparse", "grid"])
@pytest.mark.parametrize("case", sorted(CT_CASES))
def test_ct_adjoint_dot_product(case, path, monkeypatch):
    # small CPU geometries run as a sparse matrix; CUDA and large ones through grid_sample
    if path == "grid":
        monkeypatch.setattr(operators, "_SPARSE_SAMPLES", 0)
    g = torch.Generator().manual_seed(0)
    ct = CTProjector(size=48, **CT_CASES[case])
    x = torch.randn(2, 3, 48, 48, generator=g)   # batch of 2, three slices each
    assert _dot_test(ct, x, g) < 1e-4
    assert (ct._sparse(x.dtype, x.device) is None) == (path == "grid")


@pytest.mark.parametrize("case", ["fan_custom", "limited_angle"])
def test_ct_sparse_matrix_is_the_grid_sample_operator(case, monkeypatch):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 1, 40, 40, generator=g, dtype=torch.float64)
    sparse = CTProjector(size=40, **CT_CASES[case])
    y = sparse.A(x)
    r = torch.randn(y.shape, generator=g, dtype=torch.float64)
    back = sparse.A_adjoint(r)
    monkeypatch.setattr(operators, "_SPARSE_SAMPLES", 0)
    grid = CTProjector(size=40, **CT_CASES[case])
    assert grid._sparse(x.dtype, x.device) is None and sparse._grids
    assert torch.allclose(grid.A(x), y, rtol=0, atol=1e-10 * float(y.abs().max()))
    assert torch.allclose(grid.A_adjoint(r), back, rtol=0, atol=1e-10 * float(back.abs().max()))


@pytest.mark.parametrize("pattern", ["random", "equispaced"])
@pytest.mark.parametrize("coils", [None, 8])
@pytest.mark.parametrize("complex_image", [False, True])
def test_mri_adjoint_dot_product(pattern, coils, complex_image):
    g = torch.Generator().manual_seed(1)
    mask = MRIMask(acceleration=4, pattern=pattern)(32, 32, generator=g)
    mri = MRIOperator(mask, sensitivities=coils)
    x = torch.randn(3, 1, 32, 32, generator=g)
    if complex_image:
        x = torch.complex(x, torch.randn(3, 1, 32, 32, generator=g))
    assert _dot_test(mri, x, g) < 1e-4


def _psnr_in_circle(image: torch.Tensor, reference: torch.Tensor) -> float:
    n = reference.shape[-1]
    c = torch.arange(n) - (n - 1) / 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    inside = xx ** 2 + yy ** 2 <= (n / 2) ** 2
    mse = ((image - reference)[..., inside] ** 2).mean()
    data_range = float(reference.max() - reference.min())
    return float(10 * torch.log10(data_range ** 2 / mse))


def test_fbp_720_views_shepp_logan_psnr():
    phantom = shepp_logan(256)[None, None]
    ct = CTProjector(angles=720, size=256)
    sinogram = ct.A(phantom)
    recon = ct.fbp(sinogram, filter="ramp")
    assert recon.shape == phantom.shape
    assert _psnr_in_circle(recon, phantom) >= 28.0
    # Apodised filters trade resolution for noise: still a faithful image, never sharper.
    for name in ("shepp-logan", "hann"):
        psnr = _psnr_in_circle(ct.fbp(sinogram, filter=name), phantom)
        assert 24.0 <= psnr <= _psnr_in_circle(recon, phantom)


@pytest.mark.parametrize("distances", [(None, None), (384.0, 64.0)])
def test_fan_beam_fbp_matches_parallel_quality(distances):
    phantom = shepp_logan(128)[None, None]
    source, detector = distances
    fan = CTProjector(angles=360, size=128, geometry="fan", source_distance=source,
                      detector_distance=detector)
    parallel = CTProjector(angles=180, size=128)
    fan_psnr = _psnr_in_circle(fan.fbp(fan.A(phantom)), phantom)
    assert fan_psnr >= 26.0
    assert abs(fan_psnr - _psnr_in_circle(parallel.fbp(parallel.A(phantom)), phantom)) < 1.0


def test_fbp_sparse_view_is_worse_than_dense():
    phantom = shepp_logan(64)[None, None]
    dense, sparse = CTProjector(180, 64), CTProjector(8, 64)
    assert (_psnr_in_circle(sparse.fbp(sparse.A(phantom)), phantom) + 5
            < _psnr_in_circle(dense.fbp(dense.A(phantom)), phantom))


def test_ct_geometry_basics():
    ct = CTProjector(angles=4, size=32)
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 16, 10] = 1.0    # one pixel left of centre, on the middle row
    y = ct.A(x)
    assert y.shape == (1, 1, 4, ct.detectors)
    # Every view sees the whole mass of a pixel (rays of unit spacing; bilinear sampling of
    # diagonal rays is within 2%).
    assert torch.allclose(y.sum(dim=-1), torch.ones(1, 1, 4), atol=0.02)
    # A uniform disc projects, from every angle, to its chord lengths 2 sqrt(r^2 - u^2).
    ct = CTProjector(angles=12, size=32)
    disc = _disc(32, 10)
    profile = ct.A(disc[None, None])[0, 0]
    assert torch.allclose(profile.sum(-1), disc.sum().expand(12), rtol=0.01)
    radius = math.sqrt(float(disc.sum()) / math.pi)     # the pixelated disc's equivalent radius
    u = torch.arange(ct.detectors) - (ct.detectors - 1) / 2
    chord = 2 * torch.sqrt((radius ** 2 - u ** 2).clamp_min(0))
    assert float((profile - chord).abs().sum(-1).max() / chord.sum()) < 0.08


def _disc(n: int, radius: float) -> torch.Tensor:
    c = torch.arange(n) - (n - 1) / 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return (xx ** 2 + yy ** 2 <= radius ** 2).float()


def test_ct_batched_matches_per_image_and_autograd_is_the_adjoint():
    g = torch.Generator().manual_seed(2)
    ct = CTProjector(angles=16, size=24, geometry="fan")
    x = torch.randn(3, 2, 24, 24, generator=g)
    y = ct.A(x)
    for b in range(3):
        assert torch.allclose(ct.A(x[b:b + 1]), y[b:b + 1], atol=1e-5)
    target = torch.randn(y.shape, generator=g)
    x.requires_grad_(True)
    loss = 0.5 * ((ct.A(x) - target) ** 2).sum()
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.allclose(grad, ct.A_adjoint(ct.A(x.detach()) - target), atol=1e-4)
    # The adjoint is differentiable too (its gradient is A).
    r = torch.randn(y.shape, generator=g, requires_grad=True)
    (grad_r,) = torch.autograd.grad((ct.A_adjoint(r) * x.detach()).sum(), r)
    assert torch.allclose(grad_r, ct.A(x.detach()), atol=1e-4)


def test_ct_float64():
    ct = CTProjector(angles=10, size=16)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 1, 16, 16, generator=g, dtype=torch.float64)
    assert ct.A(x).dtype == torch.float64
    assert _dot_test(ct, x, g) < 1e-10


def test_mri_full_mask_is_identity():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 1, 32, 32, generator=g)
    full = MRIMask(acceleration=1)(32, 32, generator=g)
    assert bool(full.all())
    for coils in (None, 8):
        mri = MRIOperator(full, sensitivities=coils)
        back = mri.A_adjoint(mri.A(x))
        assert torch.allclose(back.real, x, atol=1e-5)
        assert float(back.imag.abs().max()) < 1e-5
        assert torch.allclose(mri.zero_filled(mri.A(x.abs())), x.abs(), atol=1e-5)


def test_mri_masks():
    g = torch.Generator().manual_seed(5)
    for pattern in ("random", "equispaced"):
        spec = MRIMask(acceleration=4, center_fraction=0.08, pattern=pattern)
        mask = spec(256, 256, generator=torch.Generator().manual_seed(7))
        again = spec(256, 256, generator=torch.Generator().manual_seed(7))
        assert torch.equal(mask, again)
        lines = mask[0]
        assert bool((mask == lines).all())                 # Cartesian: whole columns
        assert bool(lines[128 - 10:128 + 10].all())       # 20 = round(0.08 * 256) centre lines
        assert 0.18 < float(lines.float().mean()) < 0.33  # about 1/4 of the lines
    maps = coil_sensitivities(32)
    assert maps.shape == (8, 32, 32)
    assert torch.allclose((maps.abs() ** 2).sum(0), torch.ones(32, 32), atol=1e-5)
    del g


def test_noise_models_are_seeded():
    y = torch.linspace(0, 3, 20000)
    noisy = GaussianNoise(0.5)(y, torch.Generator().manual_seed(0))
    assert torch.equal(noisy, GaussianNoise(0.5)(y, torch.Generator().manual_seed(0)))
    assert abs(float((noisy - y).std()) - 0.5) < 0.02
    k = torch.zeros(20000, dtype=torch.complex64)
    assert abs(float(GaussianNoise(2.0)(k, torch.Generator().manual_seed(0)).abs().pow(2)
                     .mean()) - 4.0) < 0.2
    counts = PoissonNoise(photons=1e5)(y, torch.Generator().manual_seed(1))
    assert torch.equal(counts, PoissonNoise(photons=1e5)(y, torch.Generator().manual_seed(1)))
    assert abs(float((counts - y).mean())) < 0.01
    # Fewer photons: noisier, and more so along longer (more attenuated) rays.
    few = PoissonNoise(photons=1e3)(y, torch.Generator().manual_seed(1)) - y
    assert float(few[:2000].std()) < float(few[-2000:].std())


def test_bad_inputs_name_the_argument():
    with pytest.raises(InputError, match="angles"):
        CTProjector(angles=0, size=32)
    with pytest.raises(InputError, match="angles"):
        CTProjector(angles=[], size=32)
    with pytest.raises(InputError, match="angles"):
        CTProjector(angles=[0.0, float("nan")], size=32)
    with pytest.raises(InputError, match="size"):
        CTProjector(angles=8, size=0)
    with pytest.raises(InputError, match="geometry"):
        CTProjector(angles=8, size=32, geometry="cone")
    with pytest.raises(InputError, match="source_distance"):
        CTProjector(angles=8, size=32, geometry="fan", source_distance=10.0)
    with pytest.raises(InputError, match="source_distance"):
        CTProjector(angles=8, size=32, source_distance=100.0)
    with pytest.raises(InputError, match="detectors"):
        CTProjector(angles=8, size=32, detectors=0)
    ct = CTProjector(angles=8, size=32)
    with pytest.raises(InputError, match="x must be"):
        ct.A(torch.zeros(1, 1, 16, 16))
    with pytest.raises(InputError, match="y must be"):
        ct.A_adjoint(torch.zeros(1, 1, 9, ct.detectors))
    with pytest.raises(InputError, match="filter"):
        ct.fbp(ct.A(torch.zeros(1, 1, 32, 32)), filter="cosine")
    with pytest.raises(InputError, match="acceleration"):
        MRIMask(acceleration=0.5)
    with pytest.raises(InputError, match="center_fraction"):
        MRIMask(center_fraction=1.5)
    with pytest.raises(InputError, match="pattern"):
        MRIMask(pattern="radial")
    with pytest.raises(InputError, match="mask"):
        MRIOperator(torch.ones(32))
    with pytest.raises(InputError, match="sensitivities"):
        MRIOperator(torch.ones(32, 32), sensitivities=torch.ones(4, 16, 16))
    with pytest.raises(InputError, match="coils"):
        MRIOperator(torch.ones(32, 32), sensitivities=0)
    mri = MRIOperator(torch.ones(32, 32), sensitivities=4)
    with pytest.raises(InputError, match="x must"):
        mri.A(torch.zeros(1, 2, 32, 32))
    with pytest.raises(InputError, match="y must"):
        mri.A_adjoint(torch.zeros(1, 1, 32, 32, dtype=torch.complex64))
    with pytest.raises(InputError, match="sigma"):
        GaussianNoise(-1.0)
    with pytest.raises(InputError, match="photons"):
        PoissonNoise(photons=0)


def test_docstring_examples_and_docs_example():
    import doctest
    import importlib
    import pathlib
    import re

    for name in ("pydiff.domains.medical", "pydiff.domains.medical.operators",
                 "pydiff.domains.medical.classical", "pydiff.domains.medical.reconstructor",
                 "pydiff.domains.medical.prior", "pydiff.domains.medical.batch"):
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0
    docs = pathlib.Path(__file__).resolve().parents[1] / "docs" / "medical.md"
    if docs.exists():   # the source tree's docs; absent when only the package is installed
        blocks = re.findall(r"```python\n(.*?)```", docs.read_text(), flags=re.S)
        assert blocks
        for block in blocks:
            exec(compile(block, str(docs), "exec"), {})
