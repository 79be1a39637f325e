"""pydiff.domains.medical: classical baselines, coil maps, MONAI masks, Reconstructor methods."""

from __future__ import annotations

import pytest
import torch
from pydiff.domains.medical import (
    CTProjector,
    GaussianNoise,
    MRIMask,
    MRIOperator,
    Reconstructor,
    cg_sense,
    estimate_sensitivities,
    shepp_logan,
    tv_reconstruct,
)
from pydiff.domains.medical.classical import divergence2d, gradient2d

from pydiff.errors import InputError


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / (a - b).pow(2).mean()))


@pytest.fixture(scope="module")
def phantom():
    return shepp_logan(32)[None, None]


def test_divergence_is_minus_adjoint_of_gradient():
    g = torch.Generator().manual_seed(0)
    x, q = torch.randn(2, 1, 7, 9, generator=g), torch.randn(2, 1, 2, 7, 9, generator=g)
    assert torch.allclose((gradient2d(x) * q).sum(), -(x * divergence2d(q)).sum(), rtol=1e-5)


def test_tv_beats_fbp_at_sparse_views(phantom):
    ct = CTProjector(angles=8, size=32)
    y = ct.A(phantom)
    tv = tv_reconstruct(ct, y, weight=0.003, iterations=200)
    assert psnr(tv, phantom) > psnr(ct.fbp(y), phantom) + 1.5


def test_cs_tv_and_cg_sense_beat_zero_filled(phantom):
    mask = MRIMask(4, pattern="equispaced")(32, 32, torch.Generator().manual_seed(0))
    mri = MRIOperator(mask, sensitivities=4)
    k = mri.A(phantom)
    zf = psnr(mri.A_adjoint(k).abs(), phantom)
    assert psnr(cg_sense(mri, k, iterations=20).abs(), phantom) > zf + 2
    assert psnr(tv_reconstruct(mri, k, weight=0.003, iterations=150), phantom) > zf + 5
    # full sampling: CG-SENSE is exact
    full = MRIOperator(torch.ones(32, 32, dtype=torch.bool), sensitivities=4)
    assert psnr(cg_sense(full, full.A(phantom), iterations=5).abs(), phantom) > 60


def test_estimated_coil_maps_match_the_simulated_ones():
    x = shepp_logan(64)[None, None]
    mask = MRIMask(4, center_fraction=0.16)(64, 64, torch.Generator().manual_seed(0))
    mri = MRIOperator(mask, sensitivities=8)
    maps = estimate_sensitivities(mri.A(x), mask)
    inside = x[0, 0] > 0.1
    err = (maps - mri.sensitivities).abs()[:, inside].mean()
    assert err < 0.15 * mri.sensitivities.abs()[:, inside].mean()
    assert torch.allclose(maps.abs().pow(2).sum(0)[inside], torch.ones(int(inside.sum())),
                          atol=1e-4)
    with pytest.raises(InputError, match="centre"):
        estimate_sensitivities(mri.A(x), torch.zeros(64, 64, dtype=torch.bool))


def test_monai_masks_have_the_requested_rate():
    for pattern in ("random", "equispaced"):
        mask = MRIMask(8, center_fraction=0.04, pattern=pattern)(128, 128,
                                                                torch.Generator().manual_seed(3))
        assert abs(float(mask.float().mean()) - 1 / 8) < 0.05
        centre = mask[0, 62:66]
        assert bool(centre.all())


@pytest.mark.parametrize("method", ["dds", "projection", "dps", "red_diff"])
def test_ct_diffusion_methods_use_the_measurement(phantom, method):
    ct = CTProjector(angles=8, size=32)
    y = GaussianNoise(0.01)(ct.A(phantom), torch.Generator().manual_seed(0))
    rec = Reconstructor.from_pretrained("ct")
    out = rec.reconstruct(y, operator=ct, method=method, steps=4, n_samples=2,
                          value_range=(0.0, 1.0))
    assert out.image.shape == phantom.shape and out.std.shape == phantom.shape
    assert out.nfe == 4 and bool((out.std > 0).any())
    if method == "dps":  # a few DPS steps do not beat FBP; the guidance must still help
        free = rec.reconstruct(y, operator=ct, method=method, steps=4, n_samples=2,
                               value_range=(0.0, 1.0), scale=0.0, damping=0.0)
        assert psnr(out.image, phantom) > psnr(free.image, phantom) + 1
    else:
        assert psnr(out.image, phantom) > psnr(ct.fbp(y), phantom)
    # the same seed gives the same reconstruction
    again = rec.reconstruct(y, operator=ct, method=method, steps=4, n_samples=2,
                            value_range=(0.0, 1.0))
    assert torch.equal(out.image, again.image)


def test_tv_refine_anchors_tv_at_the_diffusion_reconstruction(phantom):
    """``tv_refine``: the mean image refined by TV anchored at it: a large anchor weight keeps
    the diffusion image, a small one moves it towards the TV reconstruction (whether the mix
    beats both is measured by the benchmarks on larger images: at 32 px TV over-smooths)."""
    ct = CTProjector(angles=8, size=32)
    y = GaussianNoise(0.01)(ct.A(phantom), torch.Generator().manual_seed(0))
    rec = Reconstructor.from_pretrained("ct")
    common = dict(operator=ct, method="dds", steps=3, value_range=(0.0, 1.0))
    plain = rec.reconstruct(y, **common)
    refined = rec.reconstruct(y, tv_refine=0.01, **common)
    torch.testing.assert_close(refined.extra["unrefined"], plain.image)
    assert float((refined.image - plain.image).abs().mean()) > 1e-3
    stiff = rec.reconstruct(y, tv_refine=1e4, refine_iterations=50, **common).image
    assert (stiff - plain.image).abs().max() < 1e-2
    tv = rec.reconstruct(y, operator=ct, method="tv", value_range=(0.0, 1.0)).image
    assert (refined.image - tv).abs().mean() < (plain.image - tv).abs().mean()


def test_dds_warm_started_from_tv(phantom):
    """``warm_start="tv"``: the TV reconstruction noised to ``t_start`` is where DDS starts; at a
    tiny ``t_start`` the result stays nearer TV than a start from noise, and from a moderate one
    the prior's steps improve on both (the benchmarks measure the gain on larger images)."""
    ct = CTProjector(angles=8, size=32)
    y = GaussianNoise(0.01)(ct.A(phantom), torch.Generator().manual_seed(0))
    rec = Reconstructor.from_pretrained("ct")
    common = dict(operator=ct, method="dds", steps=3, value_range=(0.0, 1.0))
    tv = rec.reconstruct(y, operator=ct, method="tv", value_range=(0.0, 1.0)).image
    near = rec.reconstruct(y, warm_start="tv", t_start=0.003, **common).image
    cold = rec.reconstruct(y, **common).image
    assert (near - tv).abs().mean() < (cold - tv).abs().mean()
    warm = rec.reconstruct(y, warm_start="tv", t_start=0.3, **common).image
    assert psnr(warm, phantom) > psnr(cold, phantom) and psnr(warm, phantom) > psnr(tv, phantom)
    with pytest.raises(InputError, match="warm_start"):
        rec.reconstruct(y, warm_start="fbp", **common)


def test_mbir_tv_volume_uses_the_z_prior():
    """Slices that share their content along z: the z-TV weight pulls the slices together, and
    the measurement keeps each one close to the truth."""
    ct = CTProjector(angles=8, size=32)
    vol = shepp_logan(32)[None, None].repeat(4, 1, 1, 1)
    y = GaussianNoise(0.02)(ct.A(vol), torch.Generator().manual_seed(0))
    rec = Reconstructor.from_pretrained("ct")
    fbp = psnr(ct.fbp(y), vol)
    spread = {}
    for weight in (0.0, 0.5):
        out = rec.reconstruct_volume(y, ct, steps=4, value_range=(0.0, 1.0), weight=weight,
                                     admm=3)
        assert out.image.shape == (1, 4, 32, 32) and out.nfe == 4
        assert psnr(out.image[0, :, None], vol) > fbp
        spread[weight] = float(out.image[0].diff(dim=0).abs().mean())
    assert spread[0.5] < 0.7 * spread[0.0]


def test_admm_tv_z_weight_acts_from_the_first_round():
    """One ADMM round (mbir_tv's default): a larger z-TV weight gives smaller z-differences."""
    from pydiff.domains.medical.classical import admm_tv_z

    ct = CTProjector(angles=8, size=16)
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(1, 1, 16, 16, generator=g).repeat(1, 3, 1, 1)
    y = ct.A(truth.reshape(3, 1, 16, 16))
    start = truth + 0.2 * torch.randn(1, 3, 16, 16, generator=g)
    spread = {w: float(admm_tv_z(ct.A, ct.A_adjoint, y, start, w, iterations=1).diff(dim=1)
                       .abs().mean()) for w in (0.0, 0.5)}
    assert spread[0.5] < 0.8 * spread[0.0]


def test_mri_dds_beats_zero_filled_and_outputs_input_units(phantom):
    mask = MRIMask(4, pattern="equispaced")(32, 32, torch.Generator().manual_seed(0))
    mri = MRIOperator(mask, sensitivities=4)
    scale = 1000.0  # raw stored values: the output comes back in the same units
    k = mri.A(phantom * scale)
    out = Reconstructor.from_pretrained("mri").reconstruct(k, operator=mri, method="dds",
                                                           steps=6)
    zf = mri.A_adjoint(k).abs()
    assert psnr(out.image / scale, phantom) > psnr(zf / scale, phantom) + 3
    assert out.value_range[1] > 0.5 * scale


def test_bad_arguments(phantom):
    ct = CTProjector(angles=8, size=32)
    y = ct.A(phantom)
    rec = Reconstructor.from_pretrained("ct")
    with pytest.raises(InputError, match="method"):
        rec.reconstruct(y, operator=ct, method="zero_filled")
    with pytest.raises(InputError, match="n_samples"):
        rec.reconstruct(y, operator=ct, n_samples=0)
    with pytest.raises(InputError, match="NaN"):
        rec.reconstruct(y * float("nan"), operator=ct)
    with pytest.raises(InputError, match="operator"):
        rec.reconstruct(y, operator=lambda x: x)
