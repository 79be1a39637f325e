"""Denoiser: parameterizations, preconditioning, time inputs, time shapes, states."""

import pytest
import torch

import pydiff
from pydiff.testing import GaussianMixture

F64 = torch.float64
DATA = GaussianMixture([[1.0, -1.0], [-2.0, 0.5]], [0.3, 0.8], [0.3, 0.7])
SCHEDULES = [pydiff.VPSchedule(), pydiff.DiscreteSchedule.scaled_linear(), pydiff.EDMSchedule(),
             pydiff.FlowSchedule(), pydiff.VESchedule()]


@pytest.mark.parametrize("sched", SCHEDULES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score", "velocity"])
def test_every_parameterization_answers_every_other(sched, prediction):
    g = torch.Generator().manual_seed(0)
    t = torch.tensor(0.37 * sched.t_max, dtype=F64)
    x = DATA.marginal_sample(sched, t, 16, g)
    model = DATA.denoiser(sched, prediction)
    x0_exact = DATA.posterior_mean(sched, x, t)
    a, s = sched.alpha(t), sched.sigma(t)
    eps_exact = (x - a * x0_exact) / s
    x0, eps = model.predict(x, t)
    assert torch.allclose(x0, x0_exact, atol=1e-9)
    assert torch.allclose(eps, eps_exact, atol=1e-9)
    assert torch.allclose(model.score(x, t), -eps_exact / s, atol=1e-8)
    assert torch.allclose(model.v(x, t), a * eps_exact - s * x0_exact, atol=1e-9)
    da, ds = sched.derivatives(t)
    assert torch.allclose(model.velocity(x, t), da * x0_exact + ds * eps_exact, atol=1e-8)


def test_edm_preconditioning():
    sched = pydiff.EDMSchedule(sigma_data=0.5)
    sd = 0.5

    def net(x_in, c_noise):  # returns F such that c_skip x + c_out F is the exact x0
        sigma = torch.exp(4 * c_noise).reshape(-1, 1)
        x = x_in * torch.sqrt(sigma**2 + sd**2)
        x0 = DATA.posterior_mean(sched, x, sigma.flatten())
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / torch.sqrt(sigma**2 + sd**2)
        return (x0 - c_skip * x) / c_out

    model = pydiff.Denoiser(net, sched, precond="edm")
    assert model.time_input == "log_sigma" and model.prediction == "x0"
    x = DATA.marginal_sample(sched, 3.0, 8, torch.Generator().manual_seed(1))
    assert torch.allclose(model.x0(x, 3.0), DATA.posterior_mean(sched, x, 3.0), atol=1e-9)


def test_time_inputs():
    seen = {}

    def net(x, t):
        seen["t"] = t
        return torch.zeros_like(x)

    x = torch.zeros(3, 2)
    disc = pydiff.DiscreteSchedule.linear()
    pydiff.Denoiser(net, disc).x0(x, 981 / 1000)
    assert seen["t"].tolist() == [980.0] * 3  # index t N - 1, one per sample
    pydiff.Denoiser(net, pydiff.VPSchedule(), time_input="scaled").x0(x, 0.5)
    assert torch.allclose(seen["t"], torch.full((3,), 499.5))
    pydiff.Denoiser(net, pydiff.EDMSchedule(), time_input="sigma").x0(x, 2.0)
    assert torch.allclose(seen["t"], torch.full((3,), 2.0))
    pydiff.Denoiser(net, pydiff.VPSchedule(), time_input=lambda t: 7 * t).x0(x, 0.5)
    assert torch.allclose(seen["t"], torch.full((3,), 3.5))
    t_b = torch.tensor([0.1, 0.2, 0.3], dtype=F64)
    pydiff.Denoiser(net, pydiff.VPSchedule()).x0(x, t_b)
    assert torch.allclose(seen["t"], t_b.float())


def test_per_sample_and_per_position_time_match_separate_calls():
    sched = pydiff.VPSchedule()
    gauss = GaussianMixture.gaussian([0.5, -1.0, 2.0], [0.5, 1.5, 0.2])  # element-wise exact
    model = gauss.denoiser(sched, "eps")
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    t_b = torch.tensor([0.1, 0.4, 0.7, 0.95], dtype=F64)
    joint = model.x0(x, t_b)
    for b in range(4):
        assert torch.allclose(joint[b], model.x0(x[b:b + 1], t_b[b])[0], atol=1e-12)
    t_pos = torch.rand(4, 3, generator=torch.Generator().manual_seed(3), dtype=F64) * 0.9 + 0.05
    joint = model.x0(x, t_pos)
    for b in range(4):
        for d in range(3):
            alone = model.x0(x[b:b + 1], t_pos[b, d])[0, d]
            assert torch.allclose(joint[b, d], alone, atol=1e-12)


def test_bad_inputs_name_the_argument():
    sched = pydiff.VPSchedule()
    net = lambda x, t: torch.zeros_like(x)
    with pytest.raises(ValueError, match="prediction='noise'"):
        pydiff.Denoiser(net, sched, prediction="noise")
    with pytest.raises(ValueError, match="time_input='index' needs a DiscreteSchedule"):
        pydiff.Denoiser(net, sched, time_input="index")
    with pytest.raises(TypeError, match="net must be callable"):
        pydiff.Denoiser(3, sched)
    model = pydiff.Denoiser(net, sched)
    with pytest.raises(ValueError, match=r"shape \(3,\) does not broadcast .* \(4, 2\)"):
        model.x0(torch.zeros(4, 2), torch.full((3,), 0.5))
    wrong = pydiff.Denoiser(lambda x, t: x[:, :1], sched)
    with pytest.raises(ValueError, match="must return a tensor of the input's shape"):
        wrong.x0(torch.zeros(4, 2), 0.5)


def test_half_precision_network_keeps_float32_outputs():
    sched = pydiff.VPSchedule()
    seen = {}

    def net(x, t):
        seen["dtype"] = x.dtype
        return torch.zeros_like(x)

    model = pydiff.Denoiser(net, sched, dtype=torch.bfloat16)
    out = model.x0(torch.randn(2, 3), 0.5)
    assert seen["dtype"] == torch.bfloat16 and out.dtype == torch.float32


def test_dict_states():
    sched = pydiff.VPSchedule()

    def net(x, t):
        return {k: 0.5 * v for k, v in x.items()}

    model = pydiff.Denoiser(net, sched, prediction="x0")
    x = {"pos": torch.randn(2, 5, 3), "h": torch.randn(2, 5, 4)}
    x0 = model.x0(x, torch.tensor([0.2, 0.8], dtype=F64))
    assert torch.allclose(x0["pos"], 0.5 * x["pos"]) and x0["h"].shape == (2, 5, 4)


def test_mean_reverting_shift():
    sched = pydiff.MeanRevertingSchedule()
    y = torch.randn(3, 4, generator=torch.Generator().manual_seed(5), dtype=F64)
    gauss = GaussianMixture.gaussian([0.0] * 4, [0.3] * 4)  # law of x0 - y
    model = gauss.denoiser(sched, "x0").bind(y=y)
    assert torch.equal(model.shift, y)
    u = torch.randn(3, 4, dtype=F64)  # shifted state
    assert torch.allclose(model.x0(u, 0.5), gauss.posterior_mean(sched, u, 0.5), atol=1e-12)
    with pytest.raises(ValueError, match="needs its mean"):
        gauss.denoiser(sched, "x0").x0(u, 0.5)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score", "velocity"])
def test_levels_cached_per_grid_row_equal_direct_computation(prediction):
    sched = pydiff.VPSchedule()
    model = DATA.denoiser(sched, prediction)
    x = DATA.marginal_sample(sched, 0.5, 6, torch.Generator().manual_seed(9))
    grids = [pydiff.timesteps(sched, 7), pydiff.timesteps(sched, 7, t_start=torch.linspace(
        0.3, 1.0, 6, dtype=F64))]
    for grid in grids:
        for i in (0, 3, 6):  # rows of the grid (cached) and a fresh copy (computed directly)
            for via_row, fresh in ((grid[i], grid[i].clone()), (grid.unbind(0)[i], grid[i] + 0)):
                a, b = model.predict(x, via_row), model.predict(x, fresh)
                assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert len(model._levels) <= 2  # one entry per grid, not per step


def test_edm_preconditioning_on_a_mean_reverting_schedule_works_in_the_shifted_coordinate():
    sched = pydiff.MeanRevertingSchedule()
    sd = 0.3
    gauss = GaussianMixture.gaussian([0.2, -0.1], [0.3, 0.3])  # law of x0 - y
    y = torch.randn(5, 2, generator=torch.Generator().manual_seed(11), dtype=F64)
    t = torch.tensor(0.6, dtype=F64)
    a, s = sched.alpha(t), sched.sigma(t)
    sig = s / a
    c_in = 1 / torch.sqrt(sig**2 + sd**2) / a
    c_skip = sd**2 / (sig**2 + sd**2) / a
    c_out = sig * sd / torch.sqrt(sig**2 + sd**2)

    def net(x_in, t_net, y):  # sees c_in (x - y): returns F with c_skip u + c_out F exact
        u = x_in / c_in
        return (gauss.posterior_mean(sched, u, t) - c_skip * u) / c_out

    model = pydiff.Denoiser(net, sched, precond="edm", sigma_data=sd).bind(y=y)
    u = gauss.marginal_sample(sched, t, 5, torch.Generator().manual_seed(12))
    assert torch.allclose(model.x0(u, t), gauss.posterior_mean(sched, u, t), atol=1e-10)
