"""Noising: ``pydiff.add_noise`` / ``pydiff.noise.noised`` and ``pydiff.prior(noise=...)``."""

import pytest
import torch

import pydiff
from pydiff.noise import noised

F64 = torch.float64
VP = pydiff.VPSchedule()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("t", [0.3, torch.tensor([0.1, 0.5, 0.9]),
                               torch.linspace(0.1, 0.9, 12).reshape(3, 4)],
                         ids=["scalar", "per-sample", "per-position"])
def test_add_noise_is_the_forward_marginal(t):
    x0 = torch.randn(3, 4, generator=_gen(0), dtype=F64)
    z = torch.randn(3, 4, generator=_gen(1), dtype=F64)
    tt = torch.as_tensor(t, dtype=F64)
    a, s = VP.alpha(tt), VP.sigma(tt)
    if tt.dim() == 1:
        a, s = a[:, None], s[:, None]
    out = pydiff.add_noise(VP, x0, t, z)
    assert out.dtype == F64
    torch.testing.assert_close(out, a * x0 + s * z, rtol=1e-12, atol=1e-12)


def test_add_noise_draws_from_the_generator():
    x0 = torch.randn(4, 3, generator=_gen(0))
    drawn = pydiff.add_noise(VP, x0, 0.5, generator=_gen(7))
    given = pydiff.add_noise(VP, x0, 0.5, torch.randn(4, 3, generator=_gen(7)))
    assert torch.equal(drawn, given)
    assert not torch.equal(drawn, pydiff.add_noise(VP, x0, 0.5, generator=_gen(8)))


def test_add_noise_on_dict_states_and_its_gradient():
    x0 = {"pos": torch.randn(2, 5, 3, generator=_gen(0)), "h": torch.randn(2, 5, generator=_gen(1))}
    z = {k: torch.randn(v.shape, generator=_gen(2)) for k, v in x0.items()}
    out = pydiff.add_noise(VP, x0, torch.tensor([0.2, 0.8]), z)
    a, s = VP.alpha(torch.tensor([0.2, 0.8], dtype=F64)), VP.sigma(torch.tensor([0.2, 0.8]))
    for k in x0:
        shape = (2,) + (1,) * (x0[k].dim() - 1)
        expect = a.float().reshape(shape) * x0[k] + s.float().reshape(shape) * z[k]
        torch.testing.assert_close(out[k], expect)
    leaf = torch.randn(2, 3, requires_grad=True)
    pydiff.add_noise(VP, leaf, 0.4, torch.zeros(2, 3)).sum().backward()
    torch.testing.assert_close(leaf.grad, torch.full((2, 3), float(VP.alpha(0.4))))


def test_add_noise_in_a_known_region_keeps_the_rest():
    known = torch.randn(2, 3, 8, generator=_gen(0))
    x = torch.randn(2, 3, 8, generator=_gen(1))
    z = torch.randn(2, 3, 8, generator=_gen(2))
    mask = torch.zeros(3, 8)
    mask[:, :2] = 1  # the first two positions of every channel (a planner's start states)
    t = torch.tensor([0.3, 0.7])
    out = pydiff.add_noise(VP, known, t, z, mask=mask, x=x)
    assert torch.equal(out[..., 2:], x[..., 2:])
    a, s = VP.alpha(t.double()).float()[:, None, None], VP.sigma(t.double()).float()[:, None, None]
    torch.testing.assert_close(out[..., :2], (a * known + s * z)[..., :2])
    # the coefficient form, as hooks use it (no noise: the known values at their level)
    pasted = noised(known, VP.alpha(t.double()), VP.sigma(t.double()), None, mask=mask, x=x)
    torch.testing.assert_close(pasted[..., :2], (a * known)[..., :2])
    assert torch.equal(pasted[..., 2:], x[..., 2:])


def test_add_noise_rejects_bad_arguments():
    x0 = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="mask and x go together"):
        pydiff.add_noise(VP, x0, 0.5, mask=torch.ones(3))
    with pytest.raises(TypeError, match="schedule must be a pydiff Schedule"):
        pydiff.add_noise("vp", x0, 0.5)
    with pytest.raises(ValueError, match="does not broadcast"):
        pydiff.add_noise(VP, x0, torch.full((5,), 0.5), mask=torch.ones(3), x=x0)


def test_inpaint_hook_noises_the_known_region_to_the_step_level():
    known, mask = torch.ones(4, 2), torch.tensor([1.0, 0.0])
    x = torch.full((4, 2), 5.0)
    t = torch.tensor(0.4, dtype=F64)
    ctx = pydiff.hooks.StepContext(0, t, VP.alpha(t), VP.sigma(t), _gen(3))
    out = pydiff.hooks.InpaintReplace(known, mask)(x, ctx)
    z = torch.randn(4, 2, generator=_gen(3))
    torch.testing.assert_close(out[:, 0], (VP.alpha(t) * known + VP.sigma(t) * z)[:, 0].float())
    assert torch.equal(out[:, 1], x[:, 1])
    final = pydiff.hooks.StepContext(1, t * 0, VP.alpha(t * 0), VP.sigma(t * 0), final=True)
    assert torch.equal(pydiff.hooks.InpaintReplace(known, mask)(x, final)[:, 0], known[:, 0])


def test_prior_takes_its_noise():
    z = torch.randn(3, 4, generator=_gen(0))
    y = torch.randn(3, 4, generator=_gen(1))
    mr = pydiff.MeanRevertingSchedule()
    # mean-reverting (SGMSE+ / StoRM): the mean plus sigma(t) z, at any start level
    for t in (None, 0.5):
        tt = mr.t_max if t is None else t
        torch.testing.assert_close(pydiff.prior(mr, y.shape, t=t, mean=y, noise=z),
                                   y + float(mr.sigma(tt)) * z)
    torch.testing.assert_close(pydiff.prior(VP, z.shape, t=0.5, mean=y, noise=z),
                               float(VP.alpha(0.5)) * y + float(VP.sigma(0.5)) * z)
    # the same noise drawn here or passed in gives the same prior
    assert torch.equal(pydiff.prior(VP, (3, 4), generator=_gen(0)),
                       pydiff.prior(VP, (3, 4), noise=z))
    with pytest.raises(ValueError, match=r"noise must be a tensor of the prior's shape \(3, 5\)"):
        pydiff.prior(VP, (3, 5), noise=z)

